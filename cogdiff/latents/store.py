"""On-disk format of an extracted latent set: a JSON manifest plus a few large ``.npy`` shards.

Directory layout::

    manifest.json          everything below + the extraction settings ("plan") + "complete"
    labels.npy             int32 (N,) class label of every example, in example order
    files.txt              relative image path of every example, one per line, in example order
    latents_00000.npy ...  float16 (count, 2, 2, C, H, W): [example, flip, stat, C, H, W]
                           flip 0 = the image, 1 = its horizontal mirror; stat 0 = mean, 1 = std

Every file is written through :mod:`cogdiff.io` (a temporary name, fsync, ``os.replace``), so a shard
is either complete or absent; an interrupted extraction resumes by encoding the absent shards only.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..io import atomic_write_text, remove_stale_temporaries

MANIFEST = "manifest.json"
LABELS = "labels.npy"
FILES = "files.txt"
FORMAT = "cogdiff-latents"
FORMAT_VERSION = 1
STORE_DTYPE = np.float16
LAYOUT = "[example, flip (0 image, 1 mirrored), stat (0 mean, 1 std), C, H, W]"


def shard_name(index: int) -> str:
    return f"latents_{index:05d}.npy"


def shard_ranges(num_examples: int, shard_size: int) -> List[Dict[str, Any]]:
    """Fixed-size shards covering examples 0..num_examples-1 in order (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        {"file": shard_name(i), "start": start, "count": min(shard_size, num_examples - start)}
        for i, start in enumerate(range(0, num_examples, shard_size))
    ]


def write_manifest(root: str, manifest: Dict[str, Any]) -> None:
    atomic_write_text(os.path.join(root, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(root: str) -> Optional[Dict[str, Any]]:
    """The manifest in ``root``, or None when there is none. Raises on a foreign/unknown format."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest: "
            "point to a directory made by `python -m cogdiff.latents extract`"
        )
    return manifest


def remove_stale_files(root: str, manifest: Dict[str, Any]) -> List[str]:
    """Delete temporaries of this latent set's own files (shards, manifest, labels, file list) left by a
    killed run; complete files and anything else in ``root`` are left alone. Returns the names removed."""
    stems = [s["file"] for s in manifest["shards"]] + [MANIFEST, LABELS, FILES]
    return remove_stale_temporaries(root, stems=stems)


def sha256_lines(lines: List[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()

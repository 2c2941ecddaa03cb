"""On-disk format of an extracted latent set: a JSON manifest plus a few large ``.npy`` shards.

Directory layout::

    manifest.json          everything below + the extraction settings ("plan") + "complete"
    labels.npy             int32 (N,) class label of every example, in example order
    files.txt              relative image path of every example, one per line, in example order
    latents_00000.npy ...  float16 (count, 2, 2, C, H, W): [example, flip, stat, C, H, W]
                           flip 0 = the image, 1 = its horizontal mirror; stat 0 = mean, 1 = std

Every file is written to a temporary name and renamed (``os.replace``), so a shard is either
complete or absent; an interrupted extraction resumes by encoding the absent shards only.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

MANIFEST = "manifest.json"
LABELS = "labels.npy"
FILES = "files.txt"
FORMAT = "cogdiff-latents"
FORMAT_VERSION = 1
STORE_DTYPE = np.float16
LAYOUT = "[example, flip (0 image, 1 mirrored), stat (0 mean, 1 std), C, H, W]"
TMP_MARK = ".tmp-"


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


def _tmp_path(path: str) -> str:
    return f"{path}{TMP_MARK}{os.getpid()}"


def _commit(tmp: str, path: str, f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    tmp = _tmp_path(path)
    f = open(tmp, "wb")
    try:
        np.save(f, array, allow_pickle=False)
        _commit(tmp, path, f)
    except BaseException:
        f.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    tmp = _tmp_path(path)
    f = open(tmp, "w", encoding="utf-8")
    try:
        f.write(text)
        _commit(tmp, path, f)
    except BaseException:
        f.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def remove_stale_temporaries(root: str) -> List[str]:
    """Delete temporaries of our own files left by a killed run (never complete files)."""
    removed = []
    for name in os.listdir(root):
        stem = name.split(TMP_MARK)[0]
        if TMP_MARK in name and (stem.startswith("latents_") or stem in (MANIFEST, LABELS, FILES)):
            os.remove(os.path.join(root, name))
            removed.append(name)
    return removed


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_lines(lines: List[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def diff_plans(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Keys whose values differ between two extraction plans (JSON round-trip normalised)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))

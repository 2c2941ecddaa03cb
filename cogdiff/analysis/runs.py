"""Read a training run's folder for plotting.

Layout (written by the training script; the names come from :mod:`cogdiff.training.runlog` and
:data:`cogdiff.sampling.PIPELINE_SUBDIR`): ``<run>/metrics.jsonl`` (one JSON object per line with
``step`` and ``loss``, maybe more), ``<run>/fid.jsonl`` (``step`` and ``fid``), ``<run>/pipeline/``
(a saved ``UViTPipeline``) and ``<run>/samples/`` (image files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..latents.images import IMAGE_EXTENSIONS
from ..sampling import PIPELINE_SUBDIR
from ..training.runlog import FID_FILE, METRICS_FILE, SAMPLES_DIR


def read_jsonl(path) -> List[dict]:
    """All JSON objects of a .jsonl file (blank lines skipped); [] when the file is missing."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: List[dict], key: str, x: str = "step") -> Tuple[List[float], List[float]]:
    """(xs, ys) of the rows that have both ``x`` and a finite number under ``key``."""
    pts = [(r[x], r[key]) for r in rows if x in r and isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    return [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class Run:
    """One run folder: its metric rows, FID rows, pipeline folder (or None) and sample files (sorted)."""

    path: str
    name: str
    metrics: List[dict] = field(default_factory=list)
    fid: List[dict] = field(default_factory=list)
    pipeline_dir: Optional[str] = None
    samples: List[str] = field(default_factory=list)

    def curve(self, key: str = "loss") -> Tuple[List[float], List[float]]:
        """``loss`` (or any metrics key) vs step; ``fid`` reads fid.jsonl."""
        return series(self.fid if key == "fid" else self.metrics, key)


def run_dir_of(path) -> Optional[str]:
    """The training run folder of ``path``: ``path`` itself if it holds ``pipeline/``, its parent if
    ``path`` is a run's ``pipeline/`` folder, else None (e.g. a pipeline saved on its own)."""
    path = os.path.normpath(os.fspath(path))
    if os.path.isdir(os.path.join(path, PIPELINE_SUBDIR)):
        return path
    if os.path.basename(path) == PIPELINE_SUBDIR:
        return os.path.dirname(path)
    return None


def load_run(path, name: Optional[str] = None) -> Run:
    """A run folder (or its ``pipeline/`` subfolder, which resolves to the run)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run folder {path!r} does not exist")
    if os.path.basename(os.path.normpath(path)) == PIPELINE_SUBDIR:
        path = os.path.dirname(os.path.normpath(path))
    pipe = os.path.join(path, PIPELINE_SUBDIR)
    sample_dir = os.path.join(path, SAMPLES_DIR)
    samples = []
    if os.path.isdir(sample_dir):
        for root, _, files in os.walk(sample_dir):
            samples += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return Run(
        path=path,
        name=name or os.path.basename(os.path.normpath(path)),
        metrics=read_jsonl(os.path.join(path, METRICS_FILE)),
        fid=read_jsonl(os.path.join(path, FID_FILE)),
        pipeline_dir=pipe if os.path.isfile(os.path.join(pipe, "model_index.json")) else None,
        samples=sorted(samples),
    )


def load_runs(paths: Dict[str, str]) -> Dict[str, Run]:
    """``{label: run folder}`` -> ``{label: Run}``."""
    return {label: load_run(p, label) for label, p in paths.items()}


def repo_root() -> Path:
    """The source checkout holding ``train.py`` and ``configs/`` (cogdiff installed editable)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "train.py").is_file():
        raise FileNotFoundError(f"train.py not found in {root}: run from a source checkout (pip install -e .)")
    return root


def run_train_script(config: str, output_dir, overrides: Sequence[str] = (), threads: Optional[int] = 1) -> str:
    """Run ``python train.py --config <config> train.output_dir=<output_dir> <overrides>`` from the
    checkout (``config`` relative to it, e.g. ``configs/tiny.yaml``) in a subprocess and return the
    run folder. ``threads`` sets OMP_NUM_THREADS for it (None: inherit; 1 is the robust choice on a
    small shared CPU). Raises RuntimeError with the end of the script's output if it fails."""
    root = repo_root()
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(root / "train.py"), "--config", str(root / config),
           f"train.output_dir={os.fspath(output_dir)}", *overrides]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"train.py failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return os.fspath(output_dir)

"""Read training run folders for plotting (the folder itself is :class:`cogdiff.rundir.RunDir`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..rundir import PIPELINE_SUBDIR, RunDir


def series(rows: List[dict], key: str, x: str = "step") -> Tuple[List[float], List[float]]:
    """(xs, ys) of the rows that have both ``x`` and a finite number under ``key``."""
    pts = [(r[x], r[key]) for r in rows if x in r and isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    return [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class Run:
    """One run folder: its metric rows, FID rows (EMA; ``fid_raw``: the raw weights', with ``train.fid_raw``),
    pipeline folder (or None) and sample files (sorted)."""

    path: str
    name: str
    metrics: List[dict] = field(default_factory=list)
    fid: List[dict] = field(default_factory=list)
    fid_raw: List[dict] = field(default_factory=list)
    pipeline_dir: Optional[str] = None
    samples: List[str] = field(default_factory=list)

    def curve(self, key: str = "loss") -> Tuple[List[float], List[float]]:
        """``loss`` (or any metrics key) vs step; ``fid`` reads fid.jsonl, ``fid_raw`` fid_raw.jsonl."""
        if key == "fid_raw":
            return series(self.fid_raw, "fid")
        return series(self.fid if key == "fid" else self.metrics, key)


def load_run(path, name: Optional[str] = None) -> Run:
    """A run folder (or its ``pipeline/`` subfolder, which resolves to the run)."""
    path = os.path.normpath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run folder {path!r} does not exist")
    run = RunDir(os.path.dirname(path) if os.path.basename(path) == PIPELINE_SUBDIR else path)
    return Run(path=os.fspath(run.path), name=name or run.name, metrics=run.metrics(), fid=run.fid(),
               fid_raw=run.fid(raw=True), samples=run.sample_grids(),
               pipeline_dir=os.fspath(run.pipeline_dir) if run.has_pipeline() else None)


def load_runs(paths: Dict[str, str]) -> Dict[str, Run]:
    """``{label: run folder}`` -> ``{label: Run}``."""
    return {label: load_run(p, label) for label, p in paths.items()}

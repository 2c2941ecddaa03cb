"""One owner for a training run's folder: its file names, its logs, its provenance and the resume check.

A run folder (``train.output_dir``, default ``runs/<config name>``)::

    config.yaml              the resolved configuration (loadable with --config)
    provenance.json          what produced the run: config, code commit, package versions, command, host
    metrics.jsonl            one JSON object per logged step: step, loss, lr, grad_norm, images_per_s, time (unix s)
                             (+ gpu_mem_gb on CUDA); loss = mean over the steps since the last row
    fid.jsonl                one object per FID evaluation: step, fid, kid_mean, kid_std, num_images,
                             num_inference_steps, scheduler, ema (true)
    fid_raw.jsonl            the same for the raw (non-EMA) weights, ema (false); only with train.fid_raw
    diagnostics.jsonl        one object per diagnostics evaluation on a fixed probe batch
    tb/                      TensorBoard scalars (train/*, eval/*) and sample grids
    samples/step_0001000.png EMA sample grids through UViTPipeline
    checkpoints/step_0001000/  pipeline folder (EMA weights; raw weights as variant "raw") + training state
    pipeline/                final export: UViTPipeline.from_pretrained(dir) gives the EMA model,
                             from_pretrained(dir, variant="raw") the raw weights

:func:`read_jsonl` is the one reader of these logs; :func:`resolve_pipeline_dir` the one answer to "is this a
run folder or a pipeline folder?"; :func:`changed_settings` / :func:`refuse_changed` the one "same settings or
refuse to resume" check (training, sampling, latent extraction). This module imports no torch.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml

from .io import atomic_write_json, atomic_write_text, list_image_files

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
FID_FILE = "fid.jsonl"
FID_RAW_FILE = "fid_raw.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
TB_DIR = "tb"
SAMPLES_DIR = "samples"
GRID_NAME = "step_{:07d}.png"
CHECKPOINTS_DIR = "checkpoints"
PIPELINE_SUBDIR = "pipeline"
PIPELINE_INDEX = "model_index.json"
LOG_FILES = (METRICS_FILE, FID_FILE, FID_RAW_FILE, DIAGNOSTICS_FILE)
VERSIONED_PACKAGES = ("torch", "diffusers", "accelerate", "torchmetrics", "numpy")


# ------------------------------------------------------------------------------------ JSON lines


def parse_jsonl(text: str, where: str = "log") -> List[Tuple[str, dict]]:
    """(line, row) for each non-blank line of JSON-lines ``text``. A last line that does not parse (half-written
    when a run was killed mid-append) is left out; a bad line anywhere else raises ValueError naming it."""
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{where} line {i + 1} is not JSON ({line[:40]!r}): fix or delete that line") from None
    return out


def read_jsonl(path, required: bool = False) -> List[dict]:
    """The rows of a JSON-lines log without a half-written last line. A missing file gives [] or, with
    ``required``, a FileNotFoundError that says so."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} not found: is {path.parent} a finished training run folder?")
        return []
    return [row for _, row in parse_jsonl(path.read_text(), str(path))]


def truncate_jsonl(path, last_step: int) -> None:
    """Drop rows with ``step > last_step`` (logged by a run killed after its last checkpoint) and a
    half-written last line; the file is rewritten atomically, only when something is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text()
    keep = "".join(line + "\n" for line, row in parse_jsonl(text, str(path)) if row["step"] <= last_step)
    if keep != text:
        atomic_write_text(path, keep)


def append_jsonl(path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


# --------------------------------------------------------------------------- settings check


def _same(old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str):  # paths written differently
        return Path(old).resolve() == Path(new).resolve()
    return json.loads(json.dumps(old)) == json.loads(json.dumps(new))  # tuples vs lists


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any], keys: Optional[Iterable[str]] = None,
                     prefix: str = "") -> List[str]:
    """``"<prefix>key (old -> new)"`` for each key (default: all keys of both) whose values differ."""
    keys = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [f"{prefix}{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys if not _same(old.get(k), new.get(k))]


def refuse_changed(changes: List[str], where, fix: str, error: Callable[[str], Exception] = ValueError) -> None:
    """The shared "same settings or refuse to resume" rule: raise ``error`` naming what changed and the fix."""
    if changes:
        raise error(f"cannot resume: {', '.join(changes)} differ from {where}; {fix}")


# ------------------------------------------------------------------------------- provenance


def git_commit(path=None) -> str:
    """HEAD of the repository holding ``path`` (default: this package) + '-dirty' if tracked files changed;
    outside git (an installed package, a copied tree) ``$COGDIFF_COMMIT`` if set, else 'unknown'."""
    here = os.fspath(path) if path is not None else os.path.dirname(os.path.abspath(__file__))
    try:
        git = dict(cwd=here, capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    if not head:
        return os.environ.get("COGDIFF_COMMIT") or "unknown"
    return head + ("-dirty" if dirty else "")


def package_versions() -> Dict[str, str]:
    """Python and the versions of the packages that decide the numbers (a loaded module's ``__version__``, e.g.
    torch's with its build tag, else the installed distribution's, without importing it)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = getattr(sys.modules.get(name), "__version__", None) or metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(config: Optional[dict] = None, command: Optional[List[str]] = None, **extra) -> Dict[str, Any]:
    """What produced a result: config, code commit, package versions, command line and host."""
    return {"config": config, "commit": git_commit(), "versions": package_versions(),
            "command": list(sys.argv if command is None else command), "host": socket.gethostname(), **extra}


# ----------------------------------------------------------------------------------- RunDir


def resolve_pipeline_dir(path) -> str:
    """A pipeline folder (with model_index.json) or a training run folder holding ``pipeline/``."""
    path = os.fspath(path)
    for cand in (path, os.path.join(path, PIPELINE_SUBDIR)):
        if os.path.isfile(os.path.join(cand, PIPELINE_INDEX)):
            return cand
    raise FileNotFoundError(f"{path!r} is neither a pipeline folder ({PIPELINE_INDEX}) nor a run folder with "
                            f"{PIPELINE_SUBDIR}/; export one with UViTPipeline.save_pretrained or let train.py finish")


class RunDir:
    """A training run folder (see the module docstring for its files)."""

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def of(cls, path) -> Optional["RunDir"]:
        """The run owning ``path``: ``path`` itself if it holds ``pipeline/`` or ``config.yaml``, its parent if
        ``path`` is a run's ``pipeline/`` folder, else None (e.g. a pipeline saved on its own)."""
        p = Path(os.path.normpath(os.fspath(path)))
        if (p / PIPELINE_SUBDIR).is_dir() or (p / CONFIG_FILE).is_file():
            return cls(p)
        if p.name == PIPELINE_SUBDIR:
            return cls(p.parent)
        return None

    def __repr__(self) -> str:
        return f"RunDir({os.fspath(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # --- names
    config_file = property(lambda self: self.path / CONFIG_FILE)
    provenance_file = property(lambda self: self.path / PROVENANCE_FILE)
    metrics_file = property(lambda self: self.path / METRICS_FILE)
    fid_file = property(lambda self: self.path / FID_FILE)
    fid_raw_file = property(lambda self: self.path / FID_RAW_FILE)
    diagnostics_file = property(lambda self: self.path / DIAGNOSTICS_FILE)
    tb_dir = property(lambda self: self.path / TB_DIR)
    samples_dir = property(lambda self: self.path / SAMPLES_DIR)
    checkpoints_dir = property(lambda self: self.path / CHECKPOINTS_DIR)
    pipeline_dir = property(lambda self: self.path / PIPELINE_SUBDIR)

    def grid_path(self, step: int) -> Path:
        return self.samples_dir / GRID_NAME.format(step)

    # --- contents
    def metrics(self, required: bool = False) -> List[dict]:
        return read_jsonl(self.metrics_file, required)

    def fid(self, raw: bool = False) -> List[dict]:
        """FID rows of the EMA weights (fid.jsonl), or of the raw weights with ``raw`` (fid_raw.jsonl)."""
        return read_jsonl(self.fid_raw_file if raw else self.fid_file)

    def diagnostics(self) -> List[dict]:
        return read_jsonl(self.diagnostics_file)

    def config(self, required: bool = False) -> Optional[dict]:
        """The saved configuration as a plain mapping (None if there is none and it is not ``required``)."""
        if not self.config_file.is_file():
            if required:
                raise FileNotFoundError(f"{self.config_file} not found: {self.path} is not a training run folder")
            return None
        return yaml.safe_load(self.config_file.read_text()) or {}

    def guidance_scale(self) -> float:
        """The classifier-free guidance scale the run samples with (its config's ``sample.guidance_scale``; 1 = none,
        also without a saved config)."""
        return float(((self.config() or {}).get("sample") or {}).get("guidance_scale", 1.0))

    def provenance(self) -> Optional[dict]:
        if not self.provenance_file.is_file():
            return None
        return json.loads(self.provenance_file.read_text())

    def has_pipeline(self) -> bool:
        return (self.pipeline_dir / PIPELINE_INDEX).is_file()

    def sample_grids(self) -> List[str]:
        return list_image_files(self.samples_dir) if self.samples_dir.is_dir() else []

    def is_training_run(self) -> bool:
        return self.metrics_file.is_file()

    # --- writing (main process)
    def write_config(
        self, config_yaml: str, config: Optional[dict] = None, command: Optional[List[str]] = None
    ) -> None:
        """``config.yaml`` and ``provenance.json`` (config, commit, versions, command), both atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, config_yaml)
        atomic_write_json(self.provenance_file, provenance(config, command))

    def truncate_logs(self, last_step: int) -> None:
        for name in LOG_FILES:
            truncate_jsonl(self.path / name, last_step)

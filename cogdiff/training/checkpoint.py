"""Checkpoints that are also pipelines, written atomically.

``<output_dir>/checkpoints/step_0001000/`` is a complete ``UViTPipeline`` folder whose ``transformer/``
holds the EMA weights (default file) and the raw weights (``variant="raw"``), plus
``training_state.pt`` (optimizer, LR schedule, grad scaler, EMA update count, step) and one
``rng_state_<rank>.pt`` per process. Both ``.pt`` files load with ``torch.load(weights_only=True)``.
A checkpoint is built under ``.tmp_step_*`` and renamed into place, so a crash mid-write leaves
the previous checkpoints untouched and no half-written ``step_*`` folder.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from ..io import atomic_replace_dir, give_usual_permissions, remove_dir
from ..models import UViTModel
from ..pipelines import UViTPipeline

STEP_DIR = "step_{:07d}"
STEP_RE = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp_"
TRAINING_STATE = "training_state.pt"
RNG_STATE = "rng_state_{}.pt"
RAW_VARIANT = "raw"  # raw (non-EMA) weights: transformer/diffusion_pytorch_model.raw.safetensors


def write_pipeline(directory: Path, ema_model, raw_model, scheduler, vae=None) -> None:
    """Save a ``UViTPipeline`` (EMA weights) and add the raw weights as the ``raw`` variant."""
    UViTPipeline(transformer=ema_model, scheduler=scheduler, vae=vae).save_pretrained(directory)
    raw_model.save_pretrained(Path(directory) / "transformer", variant=RAW_VARIANT)
    give_usual_permissions(directory)  # safetensors writes 0600 files


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and (p / TRAINING_STATE).is_file()
    ]
    return [p for _, p in sorted(found)]


def step_of(checkpoint: Path) -> int:
    m = STEP_RE.match(Path(checkpoint).name)
    if not m:
        raise ValueError(f"{checkpoint} is not a checkpoint folder (expected a name like step_0001000)")
    return int(m.group(1))


def capture_rng() -> dict:
    """Global RNG states of this process (python, numpy, torch, CUDA), as weights-only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *[float(v) if isinstance(v, float) else int(v) for v in np_state[2:]],
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, root: Path, step: int, write_main: Callable[[Path], None], keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically. Every process saves its RNG state; the main process calls
    ``write_main(tmp_dir)`` for the rest, renames the folder into place and prunes to ``keep_last``."""
    final = root / STEP_DIR.format(step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        torch.save(capture_rng(), tmp / RNG_STATE.format(accelerator.process_index))
        if accelerator.is_main_process:
            write_main(tmp)
    except (OSError, RuntimeError) as e:  # disk full (torch.save reports it as a stream-writer RuntimeError)
        if not isinstance(e, OSError) and "PytorchStreamWriter" not in str(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing checkpoint step {step} failed ({e}); removed {tmp}; free disk space and resume "
                      f"with train.resume=latest") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_replace_dir(tmp, final, TMP_PREFIX)
        if keep_last > 0:
            for old in list_checkpoints(root)[:-keep_last]:
                remove_dir(old, TMP_PREFIX)
    accelerator.wait_for_everyone()
    return final


def clean_stale(root: Path) -> None:
    """Remove temporary folders a killed run left behind (never a complete checkpoint)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def resolve_resume(resume: Optional[str], root: Path) -> Optional[Path]:
    """``None`` -> None; ``"latest"`` -> newest complete checkpoint under ``root`` (None if there is none);
    otherwise the given folder, which must be a complete checkpoint."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint (no {TRAINING_STATE}); "
                                f"use train.resume=latest or a folder like {root / STEP_DIR.format(1000)}")
    return path


def load_weights(checkpoint: Path, model: torch.nn.Module, raw: bool) -> None:
    """Copy the checkpoint's raw (``raw=True``) or EMA weights into ``model`` (strict)."""
    saved = UViTModel.from_pretrained(Path(checkpoint) / "transformer", variant=RAW_VARIANT if raw else None)
    model.load_state_dict(saved.state_dict())


def _load_state_file(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        earlier = [c for c in list_checkpoints(path.parent.parent) if c != path.parent]
        hint = f"train.resume={earlier[-1]}" if earlier else "a new train.output_dir (no earlier checkpoint)"
        raise ValueError(f"{path} is unreadable or truncated ({type(e).__name__}); resume from the previous "
                         f"checkpoint with {hint}") from None


def check_model_config(checkpoint: Path, model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose stored model config (``transformer/config.json``) differs from ``model``'s."""
    path = Path(checkpoint) / "transformer" / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path} is missing or unreadable: {checkpoint} does not carry its model config, so it "
                         "cannot be checked against this run's model; resume from a complete checkpoint") from None
    now = dict(model.config)
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if not k.startswith("_") and saved.get(k) != _jsonable(now.get(k))]
    if diff:
        raise ValueError(f"{checkpoint} holds a different model ({'; '.join(diff)}); resume it with the same "
                         "model.* settings, or start a new run")


def _jsonable(value):
    return json.loads(json.dumps(value))


def load_training_state(checkpoint: Path, rank: int) -> tuple:
    """(training_state dict, this process's RNG state or None if the checkpoint had fewer processes)."""
    state = _load_state_file(Path(checkpoint) / TRAINING_STATE)
    rng_path = Path(checkpoint) / RNG_STATE.format(rank)
    rng = _load_state_file(rng_path) if rng_path.is_file() else None
    return state, rng


def export_pipeline(checkpoint: Path, out_dir: Path) -> Path:
    """Copy a checkpoint's pipeline files (no training state) to ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{TMP_PREFIX}{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(TRAINING_STATE, "rng_state_*.pt"))
    atomic_replace_dir(tmp, out_dir, TMP_PREFIX)
    return out_dir

"""Train a U-ViT (softmax) or U-ViC (Cog attention) diffusion model, in pixel or latent space.

    python -m cogdiff.workflows.train --config configs/tiny.yaml [section.key=value ...]   # = python train.py ...
    python train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=/data/cifar10 --dry-run
    accelerate launch --num_processes 2 train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=...
    python train.py --config configs/tiny.yaml train.resume=latest        # continue a killed run
    python train.py --config configs/tiny.yaml --export latest            # checkpoint -> <run>/pipeline

From Python: ``run_training(load_config("configs/tiny.yaml", ["train.steps=100"]))`` returns the run folder.
The loop is described in :mod:`cogdiff.workflows.trainer`, the run folder in :mod:`cogdiff.rundir`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..cli import run_cli
from ..config import Config, ConfigError, load_config
from ..data import DataError, build_dataset
from ..latents.extract import vae_dir
from ..models import UViTModel
from ..rundir import RunDir
from ..training import export_pipeline, list_checkpoints, resolve_resume
from ..training.checkpoint import clean_stale, step_of
from .trainer import Hooks, build_trainer, fid_ref_cache, model_kwargs, resolve_model, train_step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the steps done, the newest complete checkpoint and how to continue.
    ``command`` (set by :func:`main`) is the command line that resumes the run."""

    def __init__(self, done: int, steps: int, checkpoint: Optional[Path], command: Optional[str] = None):
        super().__init__(done, steps, checkpoint)
        self.done, self.steps, self.checkpoint, self.command = done, steps, checkpoint, command

    def __str__(self) -> str:
        head = f"interrupted after step {self.done} of {self.steps}"
        if self.checkpoint is None:
            return f"{head}; no checkpoint written yet, so nothing to resume: run the same command again to start over"
        how = self.command or "the same config and train.output_dir plus train.resume=latest"
        return f"{head}; last checkpoint {self.checkpoint} (step {step_of(self.checkpoint)}); continue with: {how}"


def run_training(cfg: Config) -> Path:
    """Run (or continue) training as configured; returns the run folder. Ctrl-C raises :class:`TrainingInterrupted`
    (the checkpoints written so far are kept; a half-written one is removed)."""
    t = build_trainer(cfg)
    hooks = Hooks(t)
    n_params = sum(p.numel() for p in t.raw.parameters())
    tc = t.cfg.train
    t.accelerator.print(f"{cfg.name}: {n_params / 1e6:.2f}M parameters, {t.data.num_examples} examples "
                        f"{tuple(t.data.shape)}, {t.accelerator.num_processes} process(es) x {tc.grad_accum} x "
                        f"{t.plan.micro} per step, steps {t.start} -> {tc.steps}, run dir {t.run.path}")
    done = t.start
    try:
        for step in range(t.start, tc.steps):
            loss, grad_norm = train_step(t, step)
            done = step + 1
            hooks.after_step(done, loss, grad_norm)
        hooks.finish()
    except BaseException as e:
        hooks.close()  # the progress bar (so that the error starts a line of its own) and the logs
        if not isinstance(e, KeyboardInterrupt):
            raise
        if t.is_main:
            clean_stale(t.run.checkpoints_dir)  # a checkpoint Ctrl-C cut short
        found = list_checkpoints(t.run.checkpoints_dir)
        raise TrainingInterrupted(done, tc.steps, found[-1] if found else None) from None
    return t.run.path


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues the run ``argv`` started: the same arguments with ``train.resume=latest``
    (under ``accelerate launch`` with the same number of processes)."""
    wrapper = Path(sys.argv[0]).name == "train.py" and Path(sys.argv[0]).resolve() != Path(__file__).resolve()
    script = [sys.argv[0]] if wrapper else ["-m", "cogdiff.workflows.train"]  # python train.py / python -m ...
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["accelerate", "launch", "--num_processes", str(world)] if world > 1 else ["python"]
    args = [a for a in argv if not a.startswith("train.resume=")] + ["train.resume=latest"]
    return shlex.join([*launcher, *script, *args])


def dry_run(cfg: Config) -> None:
    """Print the resolved config, the data, the FID plan and the model size without training."""
    try:
        data = build_dataset(cfg.data, "cpu")
        cfg = resolve_model(cfg, data)
        data_line = f"{data.num_examples} examples of shape {tuple(data.shape)}, classes: {data.num_classes}"
    except DataError as e:  # still show the model when the data is not there yet
        if cfg.model.get("sample_size") is None or cfg.model.get("in_channels") is None:
            raise
        cfg = resolve_model(cfg, None)
        data_line = f"not loaded ({e})"
    with torch.device("meta"):
        model = UViTModel(**model_kwargs(cfg))
    n = sum(p.numel() for p in model.parameters())
    if cfg.model.get("vae"):
        vae_dir(cfg.model["vae"])  # FileNotFoundError (one line) when there is no VAE there
    fid_line, ref = "off (train.fid_every=0)", cfg.train.fid_ref
    if cfg.train.fid_every > 0:
        fid_line = f"every {cfg.train.fid_every} steps against {ref}"
        if not ref and cfg.data.kind == "latents":
            fid_line = f"every {cfg.train.fid_every} steps; training will stop: latent data needs train.fid_ref"
        elif not ref:
            fid_line = (f"every {cfg.train.fid_every} steps against statistics of the training data "
                        f"(built once, cached in {fid_ref_cache(cfg)})")
        elif not Path(ref).is_file():
            fid_line = f"every {cfg.train.fid_every} steps; training will stop: train.fid_ref={ref} not found"
    print(cfg.to_yaml(), end="")
    print(f"# data: {data_line}")
    print(f"# fid: {fid_line}")
    print(f"# model: UViTModel with {n:,} parameters ({n / 1e6:.2f}M); blocks: {model.attention_types()}")
    print(f"# output_dir: {cfg.output_dir}")


def export(cfg: Config, checkpoint: str) -> Path:
    """Copy a checkpoint (``latest`` or a folder) to ``<output_dir>/pipeline``."""
    run = RunDir(cfg.output_dir)
    ckpt = resolve_resume(checkpoint, run.checkpoints_dir)
    if ckpt is None:
        raise ConfigError(f"no checkpoint under {run.checkpoints_dir} to export")
    return export_pipeline(ckpt, run.pipeline_dir)


def run_training_process(config, output_dir, overrides: Sequence[str] = (), threads: Optional[int] = 1,
                         env: Optional[Mapping[str, str]] = None) -> str:
    """``python -m cogdiff.workflows.train --config CONFIG train.output_dir=OUT OVERRIDES`` in a subprocess (a fresh
    process per run, e.g. from a notebook); returns the run folder. ``threads`` sets OMP_NUM_THREADS for it (None:
    inherit); ``env`` adds or replaces environment variables (e.g. ``{"CUDA_VISIBLE_DEVICES": "1"}``). Raises
    RuntimeError with the end of the output if it fails."""
    env = {**os.environ, **(env or {})}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "cogdiff.workflows.train", "--config", os.fspath(config),
           f"train.output_dir={os.fspath(output_dir)}", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"training failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return os.fspath(output_dir)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description="Train a U-ViT / U-ViC diffusion model.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model size, then exit")
    p.add_argument("--export", metavar="CHECKPOINT",
                   help="copy a checkpoint ('latest' or a folder) to <output_dir>/pipeline and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=1000 model.attention_type=cog")
    return p.parse_args(argv)


def _main(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        dry_run(cfg)
    elif args.export:
        print(export(cfg, args.export))
    else:
        run_training(cfg)


def main(argv=None) -> int:
    """Bad input (ConfigError, DataError, a bad VAE or FID file): one line, exit 2; a non-finite loss: exit 1;
    Ctrl-C: one line with the step, the last checkpoint and the command that resumes the run, exit 130."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        try:
            _main(parse_args(argv))
        except TrainingInterrupted as e:
            e.command = resume_command(argv)
            raise

    return run_cli(body, (ValueError, OSError), fatal=(FloatingPointError,))


if __name__ == "__main__":
    sys.exit(main())

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
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..cli import run_cli
from ..config import Config, ConfigError, load_config
from ..data import DataError, build_dataset
from ..latents.extract import vae_dir
from ..models import UViTModel
from ..rundir import RunDir
from ..training import export_pipeline, resolve_resume
from .trainer import Hooks, build_trainer, model_kwargs, resolve_model, train_step


def run_training(cfg: Config) -> Path:
    """Run (or continue) training as configured; returns the run folder."""
    t = build_trainer(cfg)
    hooks = Hooks(t)
    n_params = sum(p.numel() for p in t.raw.parameters())
    tc = t.cfg.train
    t.accelerator.print(f"{cfg.name}: {n_params / 1e6:.2f}M parameters, {t.data.num_examples} examples "
                        f"{tuple(t.data.shape)}, {t.accelerator.num_processes} process(es) x {tc.grad_accum} x "
                        f"{t.plan.micro} per step, steps {t.start} -> {tc.steps}, run dir {t.run.path}")
    for step in range(t.start, tc.steps):
        loss, grad_norm = train_step(t, step)
        hooks.after_step(step + 1, loss, grad_norm)
    hooks.finish()
    return t.run.path


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
        if not ref:
            fid_line = f"every {cfg.train.fid_every} steps; training will stop: train.fid_ref is not set"
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


def run_training_process(config, output_dir, overrides: Sequence[str] = (), threads: Optional[int] = 1) -> str:
    """``python -m cogdiff.workflows.train --config CONFIG train.output_dir=OUT OVERRIDES`` in a subprocess (a fresh
    process per run, e.g. from a notebook); returns the run folder. ``threads`` sets OMP_NUM_THREADS for it (None:
    inherit). Raises RuntimeError with the end of the output if it fails."""
    env = dict(os.environ)
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
    """Bad input (ConfigError, DataError, a bad VAE or FID file): one line, exit 2; a non-finite loss: exit 1."""
    return run_cli(lambda: _main(parse_args(argv)), (ValueError, OSError), fatal=(FloatingPointError,))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train a U-ViT (softmax) or U-ViC (Cog attention) diffusion model, in pixel or latent space.

    python train.py --config configs/tiny.yaml [section.key=value ...]
    python train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=/data/cifar10 --dry-run
    accelerate launch --num_processes 8 train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=...
    python train.py --config configs/tiny.yaml train.resume=latest        # continue a killed run
    python train.py --config configs/tiny.yaml --export latest            # checkpoint -> <run>/pipeline

The loop: x0 from the data, t ~ U{0..T-1}, noise ~ N(0, I), x_t = DDPMScheduler.add_noise(x0, noise, t),
loss = MSE(model(x_t, t, y), noise) (or the velocity for v-prediction); AdamW with linear warm-up then a
constant LR; EMA of the weights after every optimizer step. The randomness of micro-batch slot k of step s
(timesteps, noise, flips, label dropout) comes from a generator seeded by (seed, s, k) and the data order
from a per-epoch seeded permutation, so a run resumed from a checkpoint repeats exactly what an
uninterrupted run would have done, and the split over processes x accumulation steps does not change
which examples and noise a step uses. The run directory
layout is described in ``cogdiff/training/__init__.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from cogdiff.config import Config, ConfigError, load_config
from cogdiff.data import DataError, build_dataset
from cogdiff.io import atomic_write_text
from cogdiff.models import UViTModel, uvit_config
from cogdiff.pipelines import UViTPipeline
from cogdiff.sampling import PIPELINE_SUBDIR, make_scheduler
from cogdiff.training import (
    EMA,
    BatchPlan,
    RunLog,
    derive_seed,
    diffusion_loss,
    drop_labels,
    export_pipeline,
    gpu_memory_gb,
    list_checkpoints,
    load_training_state,
    load_weights,
    make_noise_scheduler,
    resolve_resume,
    save_checkpoint,
    write_pipeline,
)
from cogdiff.training.checkpoint import TRAINING_STATE, clean_stale, restore_rng

STEP_STREAM = 2  # seed stream of the per-micro-batch generators (timesteps, noise, flips, label dropout)
# Settings besides model.* and diffusion.* that fix which examples, flips and noise each step uses: a resumed
# run that changes one of them is no longer the run it continues (refused unless train.resume_force=true).
RESUME_EXACT_KEYS = (("data", ("kind", "path", "split", "resolution", "limit", "random_flip")),
                     ("train", ("seed", "batch_size", "grad_accum")))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a U-ViT / U-ViC diffusion model.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model size, then exit")
    p.add_argument("--export", metavar="CHECKPOINT", help="copy a checkpoint ('latest' or a folder) to <output_dir>/pipeline and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=1000 model.attention_type=cog")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- set-up helpers


def resolve_model(cfg: Config, data) -> dict:
    """Fill ``model.sample_size``/``in_channels`` from the data (checking given ones) and return UViTModel kwargs.
    ``data=None`` skips the checks (dry runs without data)."""
    if data is not None:
        c, h, w = data.shape
        if h != w:
            raise ConfigError(f"the data is {h}x{w}; U-ViT needs square inputs: set data.resolution")
        for key, value in (("sample_size", h), ("in_channels", c)):
            if cfg.model.get(key) is None:
                cfg.model[key] = value
            elif cfg.model[key] != value:
                raise ConfigError(f"model.{key}={cfg.model[key]} but the data has {key}={value} (shape {data.shape}): "
                                  f"set model.{key}={value} or remove it from the config")
        num_classes = cfg.model.get("num_classes")
        if num_classes is not None and num_classes != data.num_classes:
            raise ConfigError(f"model.num_classes={num_classes} but the data has {data.num_classes} classes: "
                              f"set model.num_classes={data.num_classes} (or null for an unconditional model)")
    if cfg.model.get("vae") and cfg.data.kind != "latents":
        raise ConfigError(f"model.vae={cfg.model['vae']} is only for latent data (data.kind=latents); remove it")
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("preset", "vae")}
    try:
        kwargs = uvit_config(cfg.model["preset"], **kwargs) if cfg.model.get("preset") else kwargs
        with torch.device("meta"):  # checks every argument (heads, softmax_layers, ...) without allocating
            UViTModel(**kwargs)
    except ValueError as e:
        raise ConfigError(f"bad model settings: {e}") from None
    return kwargs


def dry_run(cfg: Config) -> None:
    try:
        data = build_dataset(cfg.data, "cpu")
        kwargs = resolve_model(cfg, data)
        data_line = f"{data.num_examples} examples of shape {tuple(data.shape)}, classes: {data.num_classes}"
    except DataError as e:  # still show the model when the data is not there yet
        if cfg.model.get("sample_size") is None or cfg.model.get("in_channels") is None:
            raise
        kwargs = resolve_model(cfg, None)
        data_line = f"not loaded ({e})"
    with torch.device("meta"):
        model = UViTModel(**kwargs)
    n = sum(p.numel() for p in model.parameters())
    if cfg.model.get("vae"):
        from cogdiff.latents.extract import vae_dir

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


def _same(old, new) -> bool:
    if old == new:
        return True
    return isinstance(old, str) and isinstance(new, str) and Path(old).resolve() == Path(new).resolve()  # paths


def check_resume_config(run_config: Path, cfg: Config) -> None:
    """A resumed run must train the same model on the same noise schedule as the run it continues, and (unless
    ``train.resume_force``) on the same data, seed and batch split, or it would not repeat what the run did."""
    if not run_config.is_file():
        return
    saved = yaml.safe_load(run_config.read_text()) or {}
    now = cfg.to_dict()

    def changed(section, keys=None):
        old, new = saved.get(section) or {}, now[section]
        keys = sorted(set(old) | set(new)) if keys is None else keys
        return [f"{section}.{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys if not _same(old.get(k), new.get(k))]

    fixed = changed("model") + changed("diffusion")
    if fixed:
        raise ConfigError(f"cannot resume: {', '.join(fixed)} differ from {run_config}; "
                          f"use the same settings or a new train.output_dir")
    exact = [d for section, keys in RESUME_EXACT_KEYS for d in changed(section, keys)]
    if exact and not cfg.train.resume_force:
        raise ConfigError(f"cannot resume: {', '.join(exact)} differ from {run_config}, so the resumed run would not "
                          f"repeat the original; use the same settings, a new train.output_dir, or "
                          f"train.resume_force=true to continue anyway")


def load_vae(cfg: Config, data, device):
    """The decoding VAE of a latent run: ``model.vae`` or else the one in the latent manifest, with the
    manifest's scaling/shift factors set in its config (what the pipeline divides/adds when decoding)."""
    if cfg.data.kind != "latents":
        return None  # resolve_model refuses model.vae for pixel data
    path = cfg.model.get("vae")
    try:
        return data.load_vae(device=device, path=path)
    except FileNotFoundError as e:
        if path:
            raise
        raise FileNotFoundError(f"{e} (the VAE recorded in the latent manifest; set model.vae=<its folder here>)") from None


def make_fid_evaluator(cfg: Config, device):
    if not cfg.train.fid_ref:
        raise ConfigError("train.fid_every > 0 needs train.fid_ref=<reference statistics file>")
    from cogdiff.metrics import FIDEvaluator  # lazy: only runs with FID need the Inception network

    return FIDEvaluator(cfg.train.fid_ref, device=device, weights=cfg.train.fid_weights)


def sample_images(pipeline, cfg: Config, num_classes: Optional[int]) -> torch.Tensor:
    """A fixed-seed batch of ``sample.grid_size`` images (N, C, H, W) in [0, 1]; labels cycle over the classes."""
    n = cfg.sample.grid_size
    labels = [i % num_classes for i in range(n)] if num_classes else None
    return pipeline(batch_size=n, num_inference_steps=cfg.sample.num_inference_steps,
                    generator=torch.Generator("cpu").manual_seed(cfg.sample.seed), class_labels=labels,
                    guidance_scale=cfg.sample.guidance_scale, output_type="pt").images


# ------------------------------------------------------------------------------------ training


def train(cfg: Config) -> Path:
    """Run (or continue) training as configured; returns the run directory."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    tc = cfg.train
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, dynamo_backend="inductor" if tc.compile else "no")
    device, rank, is_main = accelerator.device, accelerator.process_index, accelerator.is_main_process
    out = cfg.output_dir
    ckpt_root = out / "checkpoints"

    # --- data, model, EMA, noise schedule, optimizer
    data = build_dataset(cfg.data, device)
    model_kwargs = resolve_model(cfg, data)
    try:
        plan = BatchPlan(data.num_examples, tc.batch_size, accelerator.num_processes, tc.grad_accum, tc.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    resume_from = resolve_resume(tc.resume, ckpt_root)
    if resume_from is None and list_checkpoints(ckpt_root):
        raise ConfigError(f"{ckpt_root} already has checkpoints: continue with train.resume=latest or set another train.output_dir")
    if resume_from is not None:
        check_resume_config(out / "config.yaml", cfg)

    torch.manual_seed(tc.seed)
    model = UViTModel(**model_kwargs)
    try:
        model.set_cog_impl(tc.cog_impl)  # before the EMA copy, so both use it
    except ValueError as e:
        raise ConfigError(f"train.cog_impl: {e}") from None
    if tc.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device)
    num_classes = model.config.num_classes
    ema = EMA(model, tc.ema_decay, tc.ema_warmup)
    noise_scheduler = make_noise_scheduler(cfg.diffusion, latent=cfg.data.kind == "latents")
    sample_scheduler = make_scheduler(cfg.sample.scheduler, noise_scheduler.config)
    vae = load_vae(cfg, data, device)
    fid = make_fid_evaluator(cfg, device) if tc.fid_every > 0 else None  # every process scores its share
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=o.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the LR schedule is stepped by hand, once per step
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # the UViTModel itself (also under compile)

    start = 0
    if resume_from is not None:
        state, rng = load_training_state(resume_from, rank)
        load_weights(resume_from, raw, raw=True)
        load_weights(resume_from, ema.model, raw=False)
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_scheduler"])
        if accelerator.scaler is not None and state["scaler"] is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        ema.num_updates = state["ema_num_updates"]
        if rng is not None:
            restore_rng(rng)
        start = state["step"]

    # --- run directory, logging, sampling and FID hooks (main process)
    log = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        clean_stale(ckpt_root)
        log = RunLog(out, start)
    pipeline = UViTPipeline(transformer=ema.model, scheduler=sample_scheduler, vae=vae)
    pipeline.set_progress_bar_config(disable=True)
    can_sample = vae is not None or cfg.data.kind != "latents"
    if not can_sample:
        accelerator.print("note: latent data without a VAE (model.vae): no sample grids or FID")
    n_params = sum(p.numel() for p in raw.parameters())
    accelerator.print(f"{cfg.name}: {n_params / 1e6:.2f}M parameters, {data.num_examples} examples {tuple(data.shape)}, "
                      f"{accelerator.num_processes} process(es) x {tc.grad_accum} x {plan.micro} per step, "
                      f"steps {start} -> {tc.steps}, run dir {out}")

    def write_main(tmp: Path, step: int) -> None:
        write_pipeline(tmp, ema.model, raw, sample_scheduler, vae)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_schedule.state_dict(),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "ema_num_updates": ema.num_updates}, tmp / TRAINING_STATE)

    def every(n: int, step: int) -> bool:
        return n > 0 and step % n == 0

    # --- the loop
    pending, window = [], []  # per-step losses not yet checked / checked since the last log row
    t_last, step_last, paused = time.perf_counter(), start, 0.0
    bar = tqdm(total=tc.steps, initial=start, disable=not is_main, desc=cfg.name, dynamic_ncols=True)
    for step in range(start, tc.steps):
        model.train()
        step_loss = 0.0
        for micro, slot in enumerate(plan.slots(rank)):
            gen = torch.Generator(device).manual_seed(derive_seed(tc.seed, STEP_STREAM, step, slot))
            x0, y = data.get_batch(plan.indices(step, slot), gen)  # (b, C, H, W) in model space
            y = drop_labels(y, tc.p_uncond, num_classes, gen) if num_classes is not None else None
            last = micro == tc.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                loss = diffusion_loss(model, noise_scheduler, x0, y, gen)
                accelerator.backward(loss / tc.grad_accum)
            step_loss = step_loss + loss.detach() / tc.grad_accum
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else math.inf)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(raw)
        pending.append(step_loss)
        bar.update(1)

        done = step + 1
        final = done == tc.steps
        do_log = every(tc.log_every, done) or final
        do_ckpt = every(tc.checkpoint_every, done) or final
        do_sample = can_sample and (every(tc.sample_every, done) or final)
        do_fid = can_sample and every(tc.fid_every, done)
        if not (do_log or do_ckpt or do_sample or do_fid):
            continue

        # Non-finite loss: stop before anything is saved, naming the first bad step (same on every process).
        losses = accelerator.reduce(torch.stack(pending).float(), reduction="mean")
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            first = done - len(pending) + 1 + int(bad[0])
            raise FloatingPointError(f"loss is {losses[int(bad[0])].item()} at step {first}; stopped. The last good "
                                     f"checkpoint is kept in {ckpt_root} (lower optim.lr or set optim.grad_clip)")
        window.append(losses)
        pending = []

        if do_log:
            now = time.perf_counter()
            row = {"step": done, "loss": torch.cat(window).mean().item(), "lr": lr_schedule.get_last_lr()[0],
                   "grad_norm": float(grad_norm),
                   "images_per_s": (done - step_last) * tc.batch_size / max(now - t_last - paused, 1e-9)}
            mem = gpu_memory_gb(device)
            if mem is not None:
                row["gpu_mem_gb"] = mem
            if is_main:
                log.metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            window, t_last, step_last, paused = [], now, done, 0.0

        t_pause = time.perf_counter()
        if do_sample and is_main:
            with accelerator.autocast():
                log.grid(sample_images(pipeline, cfg, num_classes), done)
        if do_fid:
            result = fid.score_pipeline(pipeline, num_images=tc.fid_num_images, batch_size=cfg.sample.batch_size,
                                        num_inference_steps=cfg.sample.num_inference_steps, seed=cfg.sample.seed,
                                        guidance_scale=cfg.sample.guidance_scale, bf16=tc.mixed_precision == "bf16")
            if is_main:
                log.fid({"step": done, **{k: result[k] for k in ("fid", "kid_mean", "kid_std", "kid_subset_size", "num_images")},
                         "num_inference_steps": cfg.sample.num_inference_steps, "scheduler": cfg.sample.scheduler,
                         "ema": True})
        if do_sample or do_fid:
            accelerator.wait_for_everyone()
        if do_ckpt:
            save_checkpoint(accelerator, ckpt_root, done, lambda tmp: write_main(tmp, done), tc.keep_last)
        paused += time.perf_counter() - t_pause
    bar.close()

    # --- export the final pipeline (EMA weights + raw variant)
    if is_main:
        found = list_checkpoints(ckpt_root)
        if found:
            export_pipeline(found[-1], out / PIPELINE_SUBDIR)
        log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            dry_run(cfg)
            return 0
        if args.export:
            ckpt = resolve_resume(args.export, cfg.output_dir / "checkpoints")
            if ckpt is None:
                raise ConfigError(f"no checkpoint under {cfg.output_dir / 'checkpoints'} to export")
            print(export_pipeline(ckpt, cfg.output_dir / PIPELINE_SUBDIR))
            return 0
        train(cfg)
    except (ValueError, OSError) as e:  # bad input (ConfigError, DataError, a bad VAE or FID file): one line
        print("error: " + " ".join(line.strip() for line in str(e).splitlines() if line.strip()), file=sys.stderr)
        return 2
    except FloatingPointError as e:  # non-finite loss
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

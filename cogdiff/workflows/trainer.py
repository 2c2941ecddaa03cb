"""The pieces of a training run: set-up (:func:`build_trainer`), one optimizer step (:func:`train_step`) and what
happens between steps (:class:`Hooks`: log row, sample grid, FID, checkpoint). :func:`cogdiff.workflows.train.
run_training` strings them together.

The loop: x0 from the data, t ~ U{0..T-1}, noise ~ N(0, I), x_t = DDPMScheduler.add_noise(x0, noise, t),
loss = MSE(model(x_t, t, y), noise) (or the velocity for v-prediction); AdamW with linear warm-up then a
constant LR; EMA of the weights after every optimizer step. The randomness of micro-batch slot k of step s
(timesteps, noise, flips, label dropout) comes from a generator seeded by (seed, s, k) and the data order
from a per-epoch seeded permutation, so a run resumed from a checkpoint repeats exactly what an
uninterrupted run would have done, and the split over processes x accumulation steps does not change
which examples and noise a step uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .. import metrics
from ..analysis.diagnostics import diagnostics_row, make_probe
from ..config import Config, ConfigError
from ..data import build_dataset, user_cache_dir
from ..metrics.evaluator import DEFAULT_INCEPTION_BATCH
from ..models import UViTModel, uvit_config
from ..pipelines import UViTPipeline
from ..rundir import RunDir, changed_settings, refuse_changed
from ..sampling import make_scheduler, pipeline_batches
from ..sources import dataset_batches
from ..training import (
    EMA,
    BatchPlan,
    RunLog,
    check_model_config,
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
from ..training.checkpoint import TRAINING_STATE, clean_stale, restore_rng
from ..training.graphs import compile_for_graphs, mark_step_begin, resolve_cuda_graphs

STEP_STREAM = 2  # seed stream of the per-micro-batch generators (timesteps, noise, flips, label dropout)
DIAG_STREAM = 3  # seed stream of the diagnostics probe (its images, flips, noise and timesteps)
# Settings besides model.* and diffusion.* that fix which examples, flips and noise each step uses: a resumed
# run that changes one of them is no longer the run it continues (refused unless train.resume_force=true).
RESUME_EXACT_KEYS = (("data", ("kind", "path", "split", "resolution", "limit", "random_flip")),
                     ("train", ("seed", "batch_size", "grad_accum")))


# ----------------------------------------------------------------------------- checks


def resolve_model(cfg: Config, data) -> Config:
    """A copy of ``cfg`` whose ``model.sample_size``/``in_channels`` come from the data (checking given ones), after
    checking every model argument. ``data=None`` skips the data checks (dry runs without data)."""
    model = dict(cfg.model)
    if data is not None:
        c, h, w = data.shape
        if h != w:
            raise ConfigError(f"the data is {h}x{w}; U-ViT needs square inputs: set data.resolution")
        for key, value in (("sample_size", h), ("in_channels", c)):
            if model.get(key) is None:
                model[key] = value
            elif model[key] != value:
                raise ConfigError(f"model.{key}={model[key]} but the data has {key}={value} (shape {data.shape}): "
                                  f"set model.{key}={value} or remove it from the config")
        num_classes = model.get("num_classes")
        if num_classes is not None and num_classes != data.num_classes:
            raise ConfigError(f"model.num_classes={num_classes} but the data has {data.num_classes} classes: "
                              f"set model.num_classes={data.num_classes} (or null for an unconditional model)")
    if model.get("vae") and cfg.data.kind != "latents":
        raise ConfigError(f"model.vae={model['vae']} is only for latent data (data.kind=latents); remove it")
    resolved = dataclasses.replace(cfg, model=model)
    try:
        with torch.device("meta"):  # checks every argument (heads, softmax_layers, ...) without allocating
            UViTModel(**model_kwargs(resolved))
    except ValueError as e:
        raise ConfigError(f"bad model settings: {e}") from None
    return resolved


def model_kwargs(cfg: Config) -> dict:
    """UViTModel keyword arguments of a config's ``model`` section (its preset expanded)."""
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("preset", "vae")}
    return uvit_config(cfg.model["preset"], **kwargs) if cfg.model.get("preset") else kwargs


def check_resume_config(run: RunDir, cfg: Config) -> None:
    """A resumed run must train the same model on the same noise schedule as the run it continues, and (unless
    ``train.resume_force``) on the same data, seed and batch split, or it would not repeat what the run did."""
    saved = run.config()
    if saved is None:
        return
    now = cfg.to_dict()

    def changed(section, keys=None):
        return changed_settings(saved.get(section) or {}, now[section], keys, prefix=f"{section}.")

    refuse_changed(changed("model") + changed("diffusion"), run.config_file,
                   "use the same settings or a new train.output_dir", ConfigError)
    exact = [d for section, keys in RESUME_EXACT_KEYS for d in changed(section, keys)]
    if not cfg.train.resume_force:
        refuse_changed(exact, f"{run.config_file}, so the resumed run would not repeat the original",
                       "use the same settings, a new train.output_dir, or train.resume_force=true to continue anyway",
                       ConfigError)


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
        raise FileNotFoundError(
            f"{e} (the VAE recorded in the latent manifest; set model.vae=<its folder here>)"
        ) from None


def fid_ref_cache(cfg: Config) -> Path:
    """Where reference statistics of the training data are cached: ``data.cache_dir`` or the user cache."""
    return Path(cfg.data.cache_dir or user_cache_dir()) / "fid_ref"


def training_ref_stats(cfg: Config, data, accelerator) -> str:
    """``train.fid_ref`` left unset: statistics of the training images as stored (no flips), built once by the main
    process and cached under :func:`fid_ref_cache` by their fingerprint; returns the file's path."""
    if cfg.data.kind == "latents":
        raise ConfigError("train.fid_every > 0 on latent data needs train.fid_ref=<statistics of the real images>: "
                          "build them with python -m cogdiff.metrics ref IMAGE_FOLDER --out stats.npz")
    path = [None]
    if accelerator.is_main_process:
        extractor = metrics.InceptionFeatures(cfg.train.fid_weights, accelerator.device)
        path[0], stats, built = metrics.cached_ref_stats(
            fid_ref_cache(cfg), lambda: dataset_batches(data, DEFAULT_INCEPTION_BATCH), extractor,
            source=f"training data ({cfg.data.kind}, {cfg.data.path or 'default path'}, {cfg.data.split})")
        print(f"fid: reference statistics of the training data ({stats.count} images): "
              f"{'built' if built else 'reusing'} {path[0]} (set train.fid_ref to use others)")
    return broadcast_object_list(path)[0] if accelerator.num_processes > 1 else path[0]


def make_fid_evaluator(cfg: Config, data, accelerator):
    ref = cfg.train.fid_ref or training_ref_stats(cfg, data, accelerator)
    return metrics.FIDEvaluator(ref, device=accelerator.device, weights=cfg.train.fid_weights)


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Trainer:
    """Everything one training run holds: config, accelerator, run folder, data, batch plan, model (prepared;
    ``raw`` unwrapped), EMA, schedules, optimizer, optional VAE and FID evaluator, and the first step."""

    cfg: Config
    accelerator: Accelerator
    run: RunDir
    data: Any
    plan: BatchPlan
    model: torch.nn.Module
    raw: UViTModel
    ema: EMA
    noise_scheduler: Any
    sample_scheduler: Any
    vae: Any
    fid: Any
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    start: int = 0
    graphs: bool = False  # the model runs under CUDA graphs (torch.compile mode="reduce-overhead")

    device = property(lambda self: self.accelerator.device)
    rank = property(lambda self: self.accelerator.process_index)
    is_main = property(lambda self: self.accelerator.is_main_process)
    num_classes = property(lambda self: self.raw.config.num_classes)

    def training_state(self, step: int) -> dict:
        scaler = self.accelerator.scaler
        return {"step": step, "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "ema_num_updates": self.ema.num_updates}

    def write_checkpoint(self, tmp, step: int) -> None:
        """The main process's part of a checkpoint: the pipeline (EMA + raw weights) and the training state."""
        write_pipeline(tmp, self.ema.model, self.raw, self.sample_scheduler, self.vae)
        torch.save(self.training_state(step), tmp / TRAINING_STATE)

    def restore(self, checkpoint) -> None:
        check_model_config(checkpoint, self.raw)
        state, rng = load_training_state(checkpoint, self.rank)
        load_weights(checkpoint, self.raw, raw=True)
        load_weights(checkpoint, self.ema.model, raw=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_scheduler"])
        if self.accelerator.scaler is not None and state["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.ema.num_updates = state["ema_num_updates"]
        if rng is not None:
            restore_rng(rng)
        self.start = state["step"]


def build_model(cfg: Config, device) -> UViTModel:
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = UViTModel(**model_kwargs(cfg))
    try:
        model.set_cog_impl(tc.cog_impl)  # before the EMA copy, so both use it
    except ValueError as e:
        raise ConfigError(f"train.cog_impl: {e}") from None
    if tc.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model.to(device)


def build_trainer(cfg: Config) -> Trainer:
    """Data, model, EMA, noise schedule, optimizer and (with ``train.resume``) the state to continue from."""
    tc, o = cfg.train, cfg.optim
    # The device type decides the graphs setting, which the accelerator's compile setting depends on; asking
    # accelerate's PartialState here would set up its process state before the Accelerator's own arguments.
    device_type = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    main = os.environ.get("RANK", "0") == "0"
    graphs = resolve_cuda_graphs(tc, device_type, error=ConfigError, say=print if main else (lambda *_: None))
    accelerator = Accelerator(mixed_precision=tc.mixed_precision,
                              dynamo_backend="inductor" if tc.compile and not graphs else "no")
    run = RunDir(cfg.output_dir)
    data = build_dataset(cfg.data, accelerator.device)
    cfg = resolve_model(cfg, data)
    try:
        plan = BatchPlan(data.num_examples, tc.batch_size, accelerator.num_processes, tc.grad_accum, tc.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    resume_from = resolve_resume(tc.resume, run.checkpoints_dir)
    if resume_from is None and list_checkpoints(run.checkpoints_dir):
        raise ConfigError(f"{run.checkpoints_dir} already has checkpoints: continue with train.resume=latest "
                          f"or set another train.output_dir")
    if resume_from is not None:
        check_resume_config(run, cfg)

    model = build_model(cfg, accelerator.device)
    ema = EMA(model, tc.ema_decay, tc.ema_warmup)
    noise_scheduler = make_noise_scheduler(cfg.diffusion, latent=cfg.data.kind == "latents")
    sample_scheduler = make_scheduler(cfg.sample.scheduler, noise_scheduler.config)
    vae = load_vae(cfg, data, accelerator.device)
    fid = make_fid_evaluator(cfg, data, accelerator) if tc.fid_every > 0 else None  # every process scores its share
    if fid is not None and not tc.fid_ref:  # config.yaml records the statistics the run is scored against
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, fid_ref=fid.ref_path))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        **adamw_kernel(o.fused, device_type.type),
    )
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=o.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the LR schedule is stepped by hand, once per step
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # the UViTModel itself (also under compile)
    if graphs:
        model = compile_for_graphs(model)
    trainer = Trainer(cfg, accelerator, run, data, plan, model, raw, ema, noise_scheduler, sample_scheduler, vae, fid,
                      optimizer, lr_schedule, graphs=graphs)
    if resume_from is not None:
        trainer.restore(resume_from)
    return trainer


def adamw_kernel(fused: str, device_type: str) -> dict:
    """AdamW's update kernel for ``optim.fused``: one fused kernel on CUDA (auto/true), else torch's default."""
    if fused == "true" and device_type != "cuda":
        raise ConfigError(f"optim.fused=true needs a CUDA device (this run is on {device_type}); use optim.fused=auto")
    return {"fused": True} if fused == "true" or (fused == "auto" and device_type == "cuda") else {}


# ----------------------------------------------------------------------------- one step


def train_step(t: Trainer, step: int) -> tuple:
    """One optimizer step (all micro-batches of this process, clip, AdamW, LR schedule, EMA).
    Returns (mean loss of the step as a 0-d tensor, global grad norm before clipping)."""
    tc, acc = t.cfg.train, t.accelerator
    t.model.train()
    mark_step_begin(t.graphs)
    step_loss = 0.0
    for micro, slot in enumerate(t.plan.slots(t.rank)):
        gen = torch.Generator(t.device).manual_seed(derive_seed(tc.seed, STEP_STREAM, step, slot))
        x0, y = t.data.get_batch(t.plan.indices(step, slot), gen)  # (b, C, H, W) in model space
        y = drop_labels(y, tc.p_uncond, t.num_classes, gen) if t.num_classes is not None else None
        last = micro == tc.grad_accum - 1
        with contextlib.nullcontext() if last else acc.no_sync(t.model):
            loss = diffusion_loss(t.model, t.noise_scheduler, x0, y, gen)
            acc.backward(loss / tc.grad_accum)
        step_loss = step_loss + loss.detach() / tc.grad_accum
    clip = t.cfg.optim.grad_clip
    grad_norm = acc.clip_grad_norm_(t.model.parameters(), clip if clip > 0 else math.inf)
    t.optimizer.step()
    t.lr_schedule.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.ema.update(t.raw)
    return step_loss, grad_norm


def sample_images(pipeline, cfg: Config, num_classes: Optional[int]) -> torch.Tensor:
    """A fixed-seed batch of ``sample.grid_size`` images (N, C, H, W) in [0, 1]; labels cycle over the classes."""
    n = cfg.sample.grid_size
    labels = [i % num_classes for i in range(n)] if num_classes else None
    return pipeline(batch_size=n, num_inference_steps=cfg.sample.num_inference_steps,
                    generator=torch.Generator("cpu").manual_seed(cfg.sample.seed), class_labels=labels,
                    guidance_scale=cfg.sample.guidance_scale, output_type="pt").images


def build_probe(t: Trainer):
    """The fixed diagnostics probe: ``train.diag_probe_size`` training examples (chosen, flipped and noised by
    generators of their own, so the training RNG stream is untouched) at stratified timesteps. It depends on
    ``train.diag_probe_seed`` only, not on ``train.seed``: every run of a study is probed on the same samples."""
    tc = t.cfg.train
    n = min(tc.diag_probe_size, t.data.num_examples)
    seed = derive_seed(tc.diag_probe_seed, DIAG_STREAM)
    gen = torch.Generator(t.device).manual_seed(seed)
    idx = torch.randperm(t.data.num_examples, generator=torch.Generator().manual_seed(seed))[:n]
    x0, y = t.data.get_batch(idx, gen)
    y = y if t.num_classes is not None else None
    try:
        return make_probe(x0, y, t.noise_scheduler, seed)
    except ValueError as e:
        raise ConfigError(f"train.diag_probe_size: {e} (use at least 10 probe images)") from None


def every(n: int, step: int) -> bool:
    return n > 0 and step % n == 0


# ----------------------------------------------------------------------------- between steps


class Hooks:
    """What runs after optimizer steps: the non-finite check, log rows, sample grids, FID and checkpoints.
    Time spent in grids/FID/checkpoints is left out of the logged images_per_s."""

    def __init__(self, t: Trainer):
        self.t, cfg = t, t.cfg
        self.log = None
        if t.is_main:
            t.run.write_config(cfg.to_yaml(), cfg.to_dict())
            clean_stale(t.run.checkpoints_dir)
            self.log = RunLog(t.run, t.start)
        self.probe = build_probe(t) if cfg.train.diag_every > 0 and t.is_main else None
        self.pipeline = UViTPipeline(transformer=t.ema.model, scheduler=t.sample_scheduler, vae=t.vae)
        self.pipeline.set_progress_bar_config(disable=True)
        self.can_sample = t.vae is not None or cfg.data.kind != "latents"
        if not self.can_sample:
            t.accelerator.print("note: latent data without a VAE (model.vae): no sample grids or FID")
        self.pending, self.window = [], []  # per-step losses not yet checked / checked since the last log row
        self.t_last, self.step_last, self.paused = time.perf_counter(), t.start, 0.0
        self.bar = tqdm(
            total=cfg.train.steps, initial=t.start, disable=not t.is_main, desc=cfg.name, dynamic_ncols=True
        )

    def after_step(self, done: int, loss: torch.Tensor, grad_norm) -> None:
        tc = self.t.cfg.train
        self.pending.append(loss)
        self.bar.update(1)
        final = done == tc.steps
        do_log = every(tc.log_every, done) or final
        do_ckpt = every(tc.checkpoint_every, done) or final
        do_sample = self.can_sample and (every(tc.sample_every, done) or final)
        do_fid = self.can_sample and every(tc.fid_every, done)
        do_diag = every(tc.diag_every, done)
        if not (do_log or do_ckpt or do_sample or do_fid or do_diag):
            return
        self.check_finite(done)
        if do_log:
            self.log_row(done, grad_norm)
        t_pause = time.perf_counter()
        if do_diag and self.t.is_main:
            row = diagnostics_row(done, self.t.raw, self.t.ema.model, self.probe)
            self.log.diagnostics({**row, "seconds": round(time.perf_counter() - t_pause, 3)})
        if do_sample and self.t.is_main:
            self.sample_grid(done)
        if do_fid:
            self.score_fid(done)
        if do_sample or do_fid:
            self.t.accelerator.wait_for_everyone()
        if do_ckpt:
            save_checkpoint(self.t.accelerator, self.t.run.checkpoints_dir, done,
                            lambda tmp: self.t.write_checkpoint(tmp, done), tc.keep_last)
        self.paused += time.perf_counter() - t_pause

    def check_finite(self, done: int) -> None:
        """Non-finite loss: stop before anything is saved, naming the first bad step (same on every process)."""
        losses = self.t.accelerator.reduce(torch.stack(self.pending).float(), reduction="mean")
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            first = done - len(self.pending) + 1 + int(bad[0])
            raise FloatingPointError(f"loss is {losses[int(bad[0])].item()} at step {first}; stopped. The last good "
                                     f"checkpoint is kept in {self.t.run.checkpoints_dir} (lower optim.lr or set "
                                     f"optim.grad_clip)")
        self.window.append(losses)
        self.pending = []

    def log_row(self, done: int, grad_norm) -> None:
        now = time.perf_counter()
        row = {"step": done, "loss": torch.cat(self.window).mean().item(), "lr": self.t.lr_schedule.get_last_lr()[0],
               "grad_norm": float(grad_norm),
               "images_per_s": (done - self.step_last) * self.t.cfg.train.batch_size
               / max(now - self.t_last - self.paused, 1e-9), "time": round(time.time(), 2)}
        mem = gpu_memory_gb(self.t.device)
        if mem is not None:
            row["gpu_mem_gb"] = mem
        if self.t.is_main:
            self.log.metrics(row)
            self.bar.set_postfix(loss=f"{row['loss']:.4f}")
        self.window, self.t_last, self.step_last, self.paused = [], now, done, 0.0

    def sample_grid(self, done: int) -> None:
        with self.t.accelerator.autocast():
            self.log.grid(sample_images(self.pipeline, self.t.cfg, self.t.num_classes), done)

    def score_fid(self, done: int) -> None:
        """FID of ``train.fid_num_images`` EMA samples (fid.jsonl) and, with ``train.fid_raw``, of the raw weights
        loaded into the same sampling model (fid_raw.jsonl); every process samples its share of the batches."""
        self.score_fid_of(done, raw=False)
        if self.t.cfg.train.fid_raw:
            with self.t.ema.holding(self.t.raw):
                self.score_fid_of(done, raw=True)

    def score_fid_of(self, done: int, raw: bool) -> None:
        cfg, s, acc = self.t.cfg, self.t.cfg.sample, self.t.accelerator
        t0 = time.perf_counter()
        batches = pipeline_batches(self.pipeline, cfg.train.fid_num_images, s.batch_size, s.num_inference_steps, s.seed,
                                   rank=acc.process_index, world=acc.num_processes, guidance_scale=s.guidance_scale,
                                   bf16=cfg.train.mixed_precision == "bf16", cuda_graphs=self.t.graphs)
        result = self.t.fid.score_images(batches, gather=acc.num_processes > 1)
        if self.t.is_main:
            keep = ("fid", "kid_mean", "kid_std", "kid_subset_size", "num_images")
            ref = getattr(self.t.fid, "ref", None)
            color = {k: v for k, v in (("color", result.get("color")), ("color_ref", getattr(ref, "color", None)))
                     if v is not None}
            self.log.fid({"step": done, **{k: result[k] for k in keep}, "num_inference_steps": s.num_inference_steps,
                          "scheduler": s.scheduler, "ema": not raw, **color,
                          "seconds": round(time.perf_counter() - t0, 2)}, raw=raw)  # sampling + scoring

    def close(self) -> None:
        """After Ctrl-C or an error: close the progress bar and the logs (nothing exported)."""
        self.bar.close()
        if self.log is not None:
            self.log.close()

    def finish(self) -> None:
        """Export the final pipeline (EMA weights + raw variant) and close the logs."""
        self.bar.close()
        if self.t.is_main:
            found = list_checkpoints(self.t.run.checkpoints_dir)
            if found:
                export_pipeline(found[-1], self.t.run.pipeline_dir)
            self.log.close()
        self.t.accelerator.wait_for_everyone()
        self.t.accelerator.end_training()

"""Deterministic, resumable batch sampling from a :class:`~cogdiff.UViTPipeline`.

Image ``i`` of a run with seed ``s`` always starts from the same noise and takes the same sampler noise
(one CPU ``torch.Generator`` per image, seeded from ``(s, i)``), and gets the same class label, whatever
the batch size, the device, the process split or an interruption in between. Numerics can still
differ across devices and batch sizes (bf16 in particular).
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import diffusers
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .io import atomic_save_with, atomic_savez, atomic_write_json, remove_stale_temporaries
from .pipelines import UViTPipeline, to_uint8
from .rundir import changed_settings, refuse_changed, resolve_pipeline_dir
from .schedulers import SCHEDULERS, scheduler_name
from .seeds import image_seed


def make_scheduler(name: str, base_config):
    """A scheduler ``name`` (see ``SCHEDULERS``) built with ``from_config`` from a pipeline's scheduler config."""
    cls_name, extra = SCHEDULERS[scheduler_name(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def scheduler_label(pipeline) -> str:
    """The short name of the pipeline's current scheduler if it is one of ours, else its class name."""
    cfg = pipeline.scheduler.config
    for name, (cls_name, extra) in SCHEDULERS.items():
        if type(pipeline.scheduler).__name__ == cls_name and all(cfg.get(k) == v for k, v in extra.items()):
            return name
    return type(pipeline.scheduler).__name__


def with_scheduler(pipeline, name: Optional[str]):
    """The same components with scheduler ``name`` (a new pipeline object), or ``pipeline`` if name is None."""
    if name is None:
        return pipeline
    return type(pipeline)(
        transformer=pipeline.transformer, scheduler=make_scheduler(name, pipeline.scheduler.config), vae=pipeline.vae
    )


def check_pipeline(path: str, variant: Optional[str] = None) -> str:
    """The pipeline folder of ``path`` (see :func:`cogdiff.rundir.resolve_pipeline_dir`), checking that
    ``variant`` exists."""
    folder = resolve_pipeline_dir(path)
    tdir = os.path.join(folder, "transformer")
    if variant is not None and not any(f".{variant}." in f for f in os.listdir(tdir)):
        raise FileNotFoundError(
            f"{tdir} has no weights of variant {variant!r}; drop the variant or pick another folder"
        )
    return folder


def load_pipeline(path: str, device=None, scheduler: Optional[str] = None, variant: Optional[str] = None):
    """Load a pipeline folder / run folder; ``variant="raw"`` takes the raw (non-EMA) weights that
    training checkpoints store beside the EMA ones."""
    folder = check_pipeline(path, variant)
    pipe = UViTPipeline.from_pretrained(folder, variant=variant)
    pipe = with_scheduler(pipe, scheduler)
    if device is not None:
        pipe.to(device)
    return pipe


def image_labels(num_classes: int, seed: int, indices: Sequence[int]) -> List[int]:
    """Per-image class labels, uniform over the classes, from ``(seed, index, 1)``."""
    return [int(np.random.default_rng([seed, i, 1]).integers(num_classes)) for i in indices]


def batch_ranges(num_images: int, batch_size: int, rank: int = 0, world: int = 1) -> List[Tuple[int, int]]:
    """``[start, end)`` ranges of ``batch_size``; batch b belongs to process ``b % world``."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images}, {batch_size}")
    ranges = [(s, min(s + batch_size, num_images)) for s in range(0, num_images, batch_size)]
    return ranges[rank::world]


@contextlib.contextmanager
def bf16_autocast(pipeline, enabled: bool):
    """Run the denoiser under bf16 autocast (fp32 weights) and hand fp32 outputs to the scheduler, so the
    sampler's state never drops to bf16 (several diffusers schedulers cast to the model output's dtype)."""
    if not enabled:
        yield
        return
    device_type = pipeline._execution_device.type

    def to_fp32(module, args, output):
        if hasattr(output, "sample"):
            output.sample = output.sample.float()
            return output
        return (output[0].float(), *output[1:])

    handle = pipeline.transformer.register_forward_hook(to_fp32)
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        handle.remove()


_GRAPHED = weakref.WeakKeyDictionary()  # denoiser -> its forward compiled with CUDA graphs (compiled once)


def use_cuda_graphs(choice, device) -> bool:
    """``cuda_graphs`` of the sampling functions: ``"auto"`` = on CUDA devices; True/"true" on a non-CUDA device
    falls back to eager (graphs need CUDA); False/"false" = off."""
    choice = str(choice).lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"cuda_graphs must be auto, true or false, got {choice!r}")
    return choice != "false" and torch.device(device).type == "cuda"


@contextlib.contextmanager
def graphed_denoiser(pipeline, enabled: bool):
    """Run ``pipeline.transformer``'s forward compiled with ``mode="reduce-overhead"`` (CUDA graphs). Each call
    starts a new graph step and its output is copied out of the graph's memory pool, so multistep samplers
    can keep earlier outputs. Fixed shapes: callers pad the last batch (``sample_batch(pad_to=...)``)."""
    if not enabled:
        yield
        return
    model = pipeline.transformer
    if model not in _GRAPHED:
        _GRAPHED[model] = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
    compiled = _GRAPHED[model]

    def forward(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kwargs)
        if hasattr(out, "sample"):
            out.sample = out.sample.clone()
            return out
        return (out[0].clone(), *out[1:])

    model.forward = forward
    try:
        yield
    finally:
        del model.forward  # back to the class's eager forward


def sample_batch(pipeline, indices: Sequence[int], num_inference_steps: int, seed: int = 0, guidance_scale: float = 1.0,
                 bf16: bool = False, class_label: Optional[int] = None, cuda_graphs="false",
                 pad_to: Optional[int] = None) -> np.ndarray:
    """Images ``indices`` of the run ``seed`` as uint8 NHWC (see the module docstring). ``cuda_graphs``: see
    :func:`use_cuda_graphs`; under graphs a batch shorter than ``pad_to`` is padded with the following images
    (sampled, then dropped) so that every call has the same shape."""
    graphs = use_cuda_graphs(cuda_graphs, pipeline._execution_device)
    n = len(indices)
    indices = list(indices)
    if graphs and pad_to is not None and n < pad_to:
        indices += list(range(indices[-1] + 1, indices[-1] + 1 + pad_to - n))
    generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]
    num_classes = pipeline.transformer.config.num_classes
    labels = None
    if num_classes is not None:
        labels = [class_label] * len(indices) if class_label is not None else image_labels(num_classes, seed, indices)
    elif class_label is not None:
        raise ValueError("--class-label given but the model is unconditional")
    with bf16_autocast(pipeline, bf16), graphed_denoiser(pipeline, graphs):
        images = pipeline(batch_size=len(indices), num_inference_steps=num_inference_steps, generator=generators,
                          class_labels=labels, guidance_scale=guidance_scale, output_type="pt").images
    return to_uint8(images)[:n]


# ------------------------------------------------------------------------------ resumable runs


def _atomic_png(path: str, image: np.ndarray) -> None:
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    atomic_save_with(path, lambda tmp: im.save(tmp, format="PNG"), suffix=".png")


def part_path(out_dir: str, start: int, end: int) -> str:
    return os.path.join(out_dir, "parts", f"part_{start:08d}_{end:08d}.npz")


SETTINGS_FILE = "settings.json"


def check_settings(out_dir: str, settings: dict) -> bool:
    """Read-only: True if ``out_dir`` already holds ``settings.json`` with these settings, False if it has
    none; ValueError if it holds a run with other settings. Every process runs this before sampling."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        old = json.load(f)
    refuse_changed(changed_settings(old, settings, settings), f"{path} (a run with other settings)",
                   "use another --out or delete it")
    return True


def write_settings(out_dir: str, settings: dict) -> str:
    path = os.path.join(out_dir, SETTINGS_FILE)
    atomic_write_json(path, settings)
    return path


def sample_to_dir(pipeline, out_dir: str, num_images: int, batch_size: int, num_inference_steps: int, seed: int = 0,
                  guidance_scale: float = 1.0, bf16: bool = False, class_label: Optional[int] = None, png: bool = False,
                  rank: int = 0, world: int = 1, settings: Optional[dict] = None, progress: bool = True,
                  barrier: Optional[Callable[[], None]] = None, cuda_graphs="auto") -> List[str]:
    """Sample this process's batches into ``out_dir/parts/`` (one atomic .npz per batch; finished parts
    are skipped, so a rerun resumes) and, with ``png``, ``out_dir/png/{index:06d}.png``. Returns the part paths.

    With ``settings``, every process first checks ``out_dir/settings.json`` read-only (a folder from a
    run with other settings is an error on all processes, before anything is written), then rank 0
    writes it if absent, then ``barrier()`` (pass the launcher's barrier when ``world > 1``)."""
    if settings is not None:
        exists = check_settings(out_dir, settings)  # all ranks, read-only
        if rank == 0 and not exists:
            write_settings(out_dir, settings)
    subdirs = ["parts"] + (["png"] if png else [])
    for sub in subdirs:
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        if rank == 0 and (world == 1 or barrier is not None):  # no other process is writing yet
            remove_stale_temporaries(os.path.join(out_dir, sub))  # left by a killed run
    if barrier is not None:
        barrier()
    pipeline.set_progress_bar_config(disable=True)
    done = []
    todo = batch_ranges(num_images, batch_size, rank, world)
    for start, end in tqdm(todo, desc=f"sampling (rank {rank})", disable=not progress):
        path = part_path(out_dir, start, end)
        if not os.path.isfile(path):
            images = sample_batch(
                pipeline, range(start, end), num_inference_steps, seed, guidance_scale, bf16, class_label,
                cuda_graphs=cuda_graphs, pad_to=batch_size,
            )
            if png:
                for i, image in zip(range(start, end), images):
                    _atomic_png(os.path.join(out_dir, "png", f"{i:06d}.png"), image)
            atomic_savez(path, images=images)  # written last: a part marks its PNGs as complete too
        done.append(path)
    return done


def merge_parts(out_dir: str, num_images: int, batch_size: int, name: str = "images.npz") -> str:
    """Concatenate all parts (all processes) into ``out_dir/images.npz`` (key ``images``, uint8 NHWC)."""
    chunks = []
    for start, end in batch_ranges(num_images, batch_size):
        path = part_path(out_dir, start, end)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"part {path} is missing: rerun the same sample.py command to finish the run")
        with np.load(path) as z:
            chunks.append(z["images"])
    out = os.path.join(out_dir, name)
    atomic_savez(out, images=np.concatenate(chunks))
    return out


def pipeline_batches(pipeline, num_images: int, batch_size: int, num_inference_steps: int, seed: int = 0,
                     rank: int = 0, world: int = 1, cuda_graphs="auto", **kwargs) -> Iterator[np.ndarray]:
    """This process's uint8 NHWC batches of the run ``seed``, sampled in memory (e.g. to feed the metrics:
    ``FIDEvaluator.score_images(pipeline_batches(...), gather=world > 1)``)."""
    pipeline.set_progress_bar_config(disable=True)
    for start, end in batch_ranges(num_images, batch_size, rank, world):
        yield sample_batch(pipeline, range(start, end), num_inference_steps, seed, cuda_graphs=cuda_graphs,
                           pad_to=batch_size, **kwargs)

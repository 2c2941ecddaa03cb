"""Encode an ImageNet-layout ImageFolder into VAE latent shards (resumable, multi-GPU via accelerate).

Each example stores the posterior mean and std of the ADM-cropped image and of its mirror image, so
training can draw a fresh latent sample ``mean + std * eps`` and a random flip at every step.
Shards are assigned round-robin to accelerate processes (``accelerate launch -m cogdiff.latents ...``).
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_save_npy, atomic_write_text, sha256_file
from ..rundir import changed_settings, refuse_changed
from . import store
from .images import CroppedImages, class_to_index, scan_image_folder

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Manifest keys that may differ between the run that started an extraction and one that resumes it.
VOLATILE_KEYS = ("complete", "source_root", "vae_path")


def vae_dir(path: str) -> str:
    """The folder holding the VAE's config.json: ``path`` itself, or ``path/vae`` for a full pipeline folder."""
    for candidate in (path, os.path.join(path, "vae")):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(
        f"no VAE at {path!r}: pass a local diffusers AutoencoderKL folder (config.json + "
        "diffusion_pytorch_model.safetensors, as written by AutoencoderKL.save_pretrained) "
        "or a pipeline folder with vae/"
    )


def load_vae(path: str, precision: str = "fp32", device: Optional[torch.device] = None,
             scaling_factor: Optional[float] = None, shift_factor: Optional[float] = None):
    """``AutoencoderKL.from_pretrained`` of a local folder (safetensors weights only), in eval mode.

    The one VAE loader of cogdiff (extraction, ``LatentData.load_vae``, ``train.py``). ``scaling_factor`` /
    ``shift_factor`` (a latent manifest's) replace the folder's config values, so a pipeline holding this
    VAE decodes ``latents / scaling_factor + shift_factor`` with the factors the latents were made with;
    ``save_pretrained`` then writes them into ``vae/config.json``."""
    from diffusers import AutoencoderKL

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    vae = AutoencoderKL.from_pretrained(vae_dir(path), torch_dtype=PRECISIONS[precision], use_safetensors=True)
    factors = {
        k: float(v) for k, v in (("scaling_factor", scaling_factor), ("shift_factor", shift_factor)) if v is not None
    }
    if factors:
        vae.register_to_config(**factors)
    return vae.to(device or "cpu").eval().requires_grad_(False)


def vae_fingerprint(path: str) -> Dict[str, str]:
    """sha256 of the VAE's config.json and of its safetensors weights: identifies the encoder."""
    folder = vae_dir(path)
    weights = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not weights:
        raise FileNotFoundError(
            f"no .safetensors weights in {folder!r}: save the VAE with save_pretrained (safetensors)"
        )
    return {
        "config_sha256": sha256_file(os.path.join(folder, "config.json")),
        "weights_sha256": store.sha256_lines([sha256_file(w) for w in weights]),
    }


@torch.no_grad()
def encode_with_mirror(vae, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, 2, 2, C, h, w) float32: [example, flip, (mean, std)]."""
    b = images.shape[0]
    both = torch.cat([images, torch.flip(images, dims=[3])]).to(vae.dtype)  # (2B, 3, H, W)
    dist = vae.encode(both).latent_dist
    stats = torch.stack([dist.mean.float(), dist.std.float()], dim=1)  # (2B, 2, C, h, w)
    return torch.stack([stats[:b], stats[b:]], dim=1)  # (B, 2, 2, C, h, w)


def build_manifest(
    data_dir, vae_path, vae, image_size, shard_size, batch_size, precision, scaling_factor, shift_factor
):
    files, labels, classes = scan_image_folder(data_dir)
    cfg = vae.config
    downscale = 2 ** (len(cfg.block_out_channels) - 1)
    if image_size % downscale:
        raise ValueError(f"image_size {image_size} must be divisible by the VAE's downscale factor {downscale}")
    side = image_size // downscale
    if scaling_factor is None:
        scaling_factor = float(cfg.scaling_factor)
    if shift_factor is None:
        shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
    manifest = {
        "format": store.FORMAT,
        "version": store.FORMAT_VERSION,
        "layout": store.LAYOUT,
        "dtype": np.dtype(store.STORE_DTYPE).name,
        "num_examples": len(files),
        "shape": [int(cfg.latent_channels), side, side],
        "image_size": image_size,
        "crop": "ADM center crop (box-halve, bicubic resize of the short side, center square)",
        "num_classes": len(classes),
        "classes": classes,
        "class_to_idx": class_to_index(classes),
        "scaling_factor": float(scaling_factor),
        "shift_factor": float(shift_factor),
        "vae": {"class": type(vae).__name__, "downscale": downscale, **vae_fingerprint(vae_path)},
        "vae_path": os.path.abspath(vae_dir(vae_path)),
        "source_root": os.path.abspath(data_dir),
        "files_sha256": store.sha256_lines([f"{f}\t{y}" for f, y in zip(files, labels)]),
        "labels_file": store.LABELS,
        "files_file": store.FILES,
        "shard_size": shard_size,
        "shards": store.shard_ranges(len(files), shard_size),
        "encode": {"batch_size": batch_size, "precision": precision},
        "complete": False,
    }
    return manifest, files, labels


def _check_resume(out_dir: str, manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    old = store.read_manifest(out_dir)
    if old is None:
        return None
    keys = sorted((set(old) | set(manifest)) - set(VOLATILE_KEYS))
    # Key names only: values such as the class list or the shard table are too long for a one-line error.
    changed = [k for k in keys if changed_settings(old, manifest, [k])]
    refuse_changed(changed, os.path.join(out_dir, store.MANIFEST),
                   "resume with the original settings or choose a new --out directory")
    return old


def extract_latents(
    data_dir: str,
    out_dir: str,
    vae_path: str,
    image_size: int = 256,
    shard_size: int = 10_000,
    batch_size: int = 64,
    precision: str = "fp32",
    scaling_factor: Optional[float] = None,
    shift_factor: Optional[float] = None,
    num_workers: int = 4,
    device: Optional[str] = None,
    max_shards: Optional[int] = None,
    on_shard: Optional[Callable[[int, str], None]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Encode ``data_dir`` (``<wnid>/*.JPEG``) into ``out_dir``; resume if ``out_dir`` has a partial run.

    Args:
        batch_size: images per VAE call (each call encodes 2x this: images + mirrors).
        precision: VAE compute dtype, "fp32" | "bf16" | "fp16"; latents are stored as float16.
        scaling_factor / shift_factor: override the VAE config's (stored in the manifest, applied at read time).
        max_shards: encode at most this many missing shards in this call (per process), then return.
        on_shard: called as ``on_shard(shard_index, path)`` after each shard is committed.
    Returns the manifest (``complete`` is True once every shard exists).
    """
    from accelerate import PartialState

    state = PartialState()
    dev = torch.device(device) if device else state.device
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vae = load_vae(vae_path, precision, dev)
    manifest, files, labels = build_manifest(
        data_dir, vae_path, vae, image_size, shard_size, batch_size, precision, scaling_factor, shift_factor
    )
    old = _check_resume(out_dir, manifest) if os.path.isdir(out_dir) else None
    if state.is_main_process:
        _start_out_dir(out_dir, manifest, files, labels, resumed=old is not None)
    state.wait_for_everyone()

    shards = manifest["shards"]
    todo = _missing_shards(out_dir, shards, state.process_index, state.num_processes)
    todo = todo[:max_shards] if max_shards is not None else todo
    bar = tqdm(
        total=sum(shards[i]["count"] for i in todo), unit="img", desc="encode",
        disable=not (progress and state.is_main_process),
    )
    for i in todo:
        start, count = shards[i]["start"], shards[i]["count"]
        images = CroppedImages(data_dir, files[start : start + count], image_size)
        out = encode_shard(vae, images, manifest["shape"], batch_size, num_workers, dev, bar.update)
        if not np.isfinite(out).all():
            raise FloatingPointError(
                f"shard {i} has non-finite latents (fp16 overflow or a broken VAE): try --precision fp32"
            )
        path = os.path.join(out_dir, shards[i]["file"])
        atomic_save_npy(path, out)
        if on_shard is not None:
            on_shard(i, path)
    bar.close()

    state.wait_for_everyone()
    manifest["complete"] = all(os.path.isfile(os.path.join(out_dir, s["file"])) for s in shards)
    if state.is_main_process:
        store.write_manifest(out_dir, manifest)
    state.wait_for_everyone()
    return manifest


def _start_out_dir(out_dir: str, manifest: Dict[str, Any], files, labels, resumed: bool) -> None:
    """(Main process) create ``out_dir``, drop stale files, write labels + file list (once) and the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    store.remove_stale_files(out_dir, manifest)
    if not resumed or not os.path.isfile(os.path.join(out_dir, store.LABELS)):
        atomic_save_npy(os.path.join(out_dir, store.LABELS), np.asarray(labels, dtype=np.int32))
        atomic_write_text(os.path.join(out_dir, store.FILES), "".join(f + "\n" for f in files))
    store.write_manifest(out_dir, manifest)


def _missing_shards(out_dir: str, shards, process_index: int, num_processes: int) -> list:
    """This process's shards (round-robin over processes) whose file does not exist yet."""
    return [
        i for i in range(process_index, len(shards), num_processes)
        if not os.path.isfile(os.path.join(out_dir, shards[i]["file"]))
    ]


def encode_shard(vae, images: torch.utils.data.Dataset, shape, batch_size: int, num_workers: int,
                 device: torch.device, on_images: Callable[[int], Any] = lambda n: None) -> np.ndarray:
    """Encode one shard's images (and mirrors) into a (count, 2, 2, *shape) array of ``store.STORE_DTYPE``;
    ``on_images(n)`` is called after each batch of ``n`` images (a progress bar's update)."""
    loader = torch.utils.data.DataLoader(
        images, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    out = np.empty((len(images), 2, 2, *shape), dtype=store.STORE_DTYPE)
    pos = 0
    for batch in loader:
        stats = encode_with_mirror(vae, batch.to(device, non_blocking=True)).cpu().numpy()
        out[pos : pos + len(stats)] = stats
        pos += len(stats)
        on_images(len(stats))
    return out

"""Image sources named on command lines: a folder of image files, an .npz of uint8 images, or a cogdiff dataset
(``dataset:kind=cifar10,path=/data/cifar10,split=train``). Every source yields uint8 NHWC batches (C = 1 or 3)
in a fixed order, so its fingerprint is stable; the metrics take such batches from any caller.
"""

from __future__ import annotations

import os
import zipfile
from typing import Iterator, List, Optional

import numpy as np
import torch
from PIL import Image

from .config import data_config_from_spec
from .data import build_dataset
from .io import IMAGE_EXTENSIONS, load_npz
from .io import list_image_files as _all_image_files

DATASET_PREFIX = "dataset:"


def list_image_files(folder: str) -> List[str]:
    """All image files under ``folder`` (recursively), sorted by relative path; an error if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    files = _all_image_files(folder)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return files


def read_image(path: str) -> np.ndarray:
    """One image file -> uint8 HWC; grayscale stays 1 channel, anything else becomes RGB. A file PIL cannot
    decode (corrupt, truncated, not an image) is a one-line ``ValueError`` naming it."""
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "I;16", "I", "1") else im.convert("RGB")
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e}); remove or replace it") from None
    return a[..., None] if a.ndim == 2 else a


def _describe(shape: tuple) -> str:
    h, w, c = shape
    return f"{h}x{w} {'grayscale' if c == 1 else 'RGB'}"


def folder_batches(folder: str, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of every image under ``folder``; all must have the first image's size and mode, or a
    one-line error names two files that differ and the fix (resize, or convert to one mode)."""
    files = list_image_files(folder)
    first = None  # (file, shape) of the first image
    for start in range(0, len(files), batch_size):
        batch = []
        for f in files[start : start + batch_size]:
            a = read_image(f)
            first = first or (f, a.shape)
            if a.shape != first[1]:
                if a.shape[:2] == first[1][:2]:
                    fix = "convert them to one mode first (all RGB or all grayscale, e.g. PIL's Image.convert('RGB'))"
                else:
                    fix = "resize them to one size first"
                raise ValueError(f"images under {folder!r} differ: {f} is {_describe(a.shape)} but {first[0]} is "
                                 f"{_describe(first[1])}; {fix}")
            batch.append(a)
        yield np.stack(batch)


def load_npz_images(path: str) -> np.ndarray:
    """uint8 images from an .npz: the key ``images`` (what sample.py writes) or its only array."""
    arrays = load_npz(path)
    keys = list(arrays)
    key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise ValueError(f"{path} holds {keys}: expected an 'images' array (uint8 NHWC)")
    images = arrays[key]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{path}:{key} is {images.dtype} {images.shape}; expected uint8 (N, H, W[, C])")
    return images[..., None] if images.ndim == 3 else images


def parse_dataset_spec(spec: str) -> dict:
    """``dataset:kind=cifar10,path=/data/cifar10,split=train`` -> ``{"kind": "cifar10", ...}`` (text values; the keys
    are :class:`cogdiff.config.DataConfig` fields: kind, path, split, resolution, limit, ...)."""
    body = spec[len(DATASET_PREFIX) :]
    cfg = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad dataset spec {spec!r}: use dataset:kind=NAME,key=value,...")
        cfg[key.strip()] = value.strip()
    if "kind" not in cfg:
        raise ValueError(f"dataset spec {spec!r} needs kind=..., e.g. dataset:kind=cifar10,path=PATH,split=train")
    return cfg


def dataset_batches(dataset, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of a cogdiff dataset in index order: its stored uint8 images (``images``, NCHW) when it
    holds them, otherwise its [-1, 1] batches (no flips: ``generator=None``) rounded back to uint8."""
    n = dataset.num_examples
    stored = getattr(dataset, "images", None)
    if not (isinstance(stored, torch.Tensor) and stored.dtype == torch.uint8 and stored.dim() == 4):
        stored = None
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if stored is not None:
            x = stored[start:end].cpu()
        else:
            x, _ = dataset.get_batch(torch.arange(start, end), None)
            x = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        yield x.permute(0, 2, 3, 1).contiguous().numpy()


def _dataset_batches(spec: dict, batch_size: int) -> Iterator[np.ndarray]:
    """Reference images of ``dataset:...``: the images as stored (no random flips, on the CPU)."""
    cfg = data_config_from_spec(spec)
    cfg.random_flip, cfg.keep_on_device = False, False
    yield from dataset_batches(build_dataset(cfg, "cpu"), batch_size)


def check_dataset_spec(source: str) -> None:
    """A ``dataset:...`` source's keys and values checked up front (``limit=abc`` -> one-line error)."""
    if source.startswith(DATASET_PREFIX):
        data_config_from_spec(parse_dataset_spec(source))


def iter_source(source: str, batch_size: int = 256) -> Iterator[np.ndarray]:
    """uint8 NHWC batches from a folder, an .npz file or ``dataset:kind=...``."""
    if source.startswith(DATASET_PREFIX):
        yield from _dataset_batches(parse_dataset_spec(source), batch_size)
    elif os.path.isdir(source):
        yield from folder_batches(source, batch_size)
    elif source.endswith(".npz") and os.path.isfile(source):
        images = load_npz_images(source)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
    else:
        raise FileNotFoundError(
            f"image source {source!r} is not a folder, an existing .npz of uint8 images, or dataset:kind=..."
        )


def count_source(source: str) -> Optional[int]:
    """Number of images in a folder or .npz source without reading the pixels; None if unknown (datasets)."""
    try:
        if os.path.isdir(source):
            return len(list_image_files(source))
        if source.endswith(".npz") and os.path.isfile(source):
            with zipfile.ZipFile(source) as z:
                names = z.namelist()
                name = "images.npy" if "images.npy" in names else (names[0] if len(names) == 1 else None)
                if name is None:
                    return None
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape = read(f)[0]
                return int(shape[0]) if shape else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return None


def load_source(source: str, limit: Optional[int] = None) -> np.ndarray:
    """The whole source as one uint8 NHWC array (first ``limit`` images if given)."""
    out, n = [], 0
    for batch in iter_source(source):
        out.append(batch)
        n += len(batch)
        if limit is not None and n >= limit:
            break
    images = np.concatenate(out)
    return images[:limit] if limit is not None else images

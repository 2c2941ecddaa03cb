"""Training data: whole datasets as uint8 arrays, index-addressed batches in model space.

``build_dataset(cfg_data, device)`` returns a :class:`TrainData`: ``num_examples``, ``shape`` (C, H, W),
``num_classes`` (None when unlabeled) and ``get_batch(indices, generator) -> (x, y)`` with x float in
[-1, 1] on ``device`` (randomly flipped left-right, the coin drawn from ``generator``, when enabled) and y
long labels or None. Batches are addressed by index, so a run's data position is just its step.

Kinds: ``cifar10`` (an ImageFolder copy ``<path>/<split>/<class>/*.png`` or torchvision's
``cifar-10-batches-py``), ``imagefolder`` (any ``<path>[/<split>]/<class>/*`` images, resized and
center-cropped to ``resolution``), ``fashion_mnist`` (IDX .gz files, Debian package
``dataset-fashion-mnist``), ``synthetic`` (generated shapes, no files) and ``latents`` (see
``cogdiff.latents``). Image folders are decoded once into an ``.npz`` cache keyed by a hash of the
files' names and contents (plus the resolution and loader version), stored beside the data or, when
that folder is read-only, in ``data.cache_dir`` / ``$XDG_CACHE_HOME/cogdiff``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from .config import DATA_KINDS  # noqa: F401  (re-exported: the kinds build_dataset knows)
from .devices import to_device
from .io import IMAGE_EXTENSIONS, atomic_savez
from .latents.dataset import LatentData

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_DEFAULTS = dict(num_examples=512, resolution=16)
CACHE_VERSION = 1  # bump when the decoding changes, so old caches are not reused
SUBSET_SEED = 0  # fixed seed of the ``limit`` subset (the same examples in every run)


class DataError(ValueError):
    """Data missing or malformed; the message says where it should be and how to get it."""


class TrainData(Protocol):
    num_examples: int
    shape: Tuple[int, int, int]
    num_classes: Optional[int]

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...


class ArrayData:
    """A dataset held as one uint8 tensor (N, C, H, W) plus optional labels."""

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], device, keep_on_device: bool = False,
                 random_flip: bool = True, classes: Optional[Sequence[str]] = None):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
        self.device = torch.device(device)
        store = self.device if keep_on_device else torch.device("cpu")
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, C, H, W)
        self.images = torch.from_numpy(images if images.flags.writeable else images.copy()).to(store)
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(store)
        self.classes = list(classes) if classes is not None else None
        self.random_flip = random_flip
        self.num_examples = self.images.shape[0]
        self.shape = tuple(self.images.shape[1:])
        self.num_classes = len(self.classes) if (self.labels is not None and self.classes) else None

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator):
        idx = to_device(indices, self.images.device)  # no host-device sync: the host keeps queueing work
        x = to_device(self.images[idx], self.device).float().div_(127.5).sub_(1.0)  # (B, C, H, W)
        if self.random_flip:
            flip = torch.rand(len(indices), generator=generator, device=generator.device) < 0.5
            x = torch.where(to_device(flip, x.device)[:, None, None, None], x.flip(-1), x)
        y = to_device(self.labels[idx], self.device) if self.labels is not None else None
        return x, y


# ------------------------------------------------------------------------------------ entry


def build_dataset(cfg, device="cpu") -> TrainData:
    """The dataset described by a :class:`cogdiff.config.DataConfig` (or any object with its fields)."""
    if cfg.kind == "latents":
        if not cfg.path:
            raise DataError(
                "data.path is not set: point it at a latent folder written by the latent extraction command"
            )
        try:
            return LatentData(
                root=cfg.path, device=device, keep_on_device=cfg.keep_on_device, random_flip=cfg.random_flip
            )
        except (FileNotFoundError, ValueError) as e:  # missing or malformed latent folder: one line
            raise DataError(str(e)) from None
    loaders = {"cifar10": load_cifar10, "imagefolder": load_imagefolder, "fashion_mnist": load_fashion_mnist,
               "synthetic": make_synthetic}
    if cfg.kind not in loaders:
        raise DataError(f"unknown data.kind {cfg.kind!r}; use one of {', '.join(DATA_KINDS)}")
    if cfg.split not in ("train", "test"):
        raise DataError(f"data.split must be 'train' or 'test', got {cfg.split!r}")
    images, labels, classes = loaders[cfg.kind](cfg)
    if cfg.limit is not None:
        if not 0 < cfg.limit <= len(images):
            raise DataError(f"data.limit={cfg.limit} must be in 1..{len(images)} (the dataset's size)")
        keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(images))[: cfg.limit])
        images, labels = images[keep], (labels[keep] if labels is not None else None)
    return ArrayData(images, labels, device, cfg.keep_on_device, cfg.random_flip, classes)


# ------------------------------------------------------------------------------ Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (uint8 data only)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path} is not a uint8 IDX file; re-install it (sudo apt-get install --reinstall dataset-fashion-mnist)"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated ({data.size} of {int(np.prod(dims))} values); re-install or re-download it"
        )
    return data.reshape(dims)


def load_fashion_mnist(cfg):
    root = Path(cfg.path or FASHION_MNIST_DIR)
    prefix = "train" if cfg.split == "train" else "t10k"
    files = [root / f"{prefix}-{part}-idx{n}-ubyte.gz" for part, n in (("images", 3), ("labels", 1))]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found: {missing[0]} is missing; install it with "
            f"'sudo apt-get install dataset-fashion-mnist' (files go to {FASHION_MNIST_DIR}) or set data.path"
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not match; re-install the dataset")
    _check_resolution(cfg, images.shape[1], "fashion_mnist")
    return images[..., None], labels, FASHION_MNIST_CLASSES


# ----------------------------------------------------------------------------------- CIFAR-10


def load_cifar10(cfg):
    if not cfg.path:
        raise DataError("data.path is not set for CIFAR-10: set it to a folder with train/<class>/*.png "
                        "(unpack the PNG shards there) or to a torchvision root, adding data.download=true to fetch it")
    root = Path(cfg.path)
    _check_resolution(cfg, 32, "cifar10")
    if (root / cfg.split).is_dir():
        images, labels, classes = load_image_tree(root / cfg.split, None, cfg.cache_dir)
        unknown = sorted(set(classes) - set(CIFAR10_CLASSES))
        if unknown:
            raise DataError(
                f"{root / cfg.split} has class folders {unknown} that are not CIFAR-10's; use data.kind=imagefolder"
            )
        remap = np.array([CIFAR10_CLASSES.index(c) for c in classes], dtype=np.int64)
        if images.shape[1:] != (32, 32, 3):
            raise DataError(f"{root / cfg.split} holds {images.shape[1:]} images, not CIFAR-10's 32x32 RGB")
        return images, remap[labels], CIFAR10_CLASSES
    batches = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
    if batches.is_dir() or cfg.download:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(batches.parent), train=cfg.split == "train", download=cfg.download)
        return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64), CIFAR10_CLASSES
    hint = ""
    if list(root.glob("*.tar.gz")):
        hint = (f" {root} holds .tar.gz shards: unpack them (for f in {root}/*.tar.gz; do tar xzf $f -C DEST; done) "
                "and set data.path=DEST/cifar10.")
    raise DataError(f"CIFAR-10 not found at {root}: expected {root}/{cfg.split}/<class>/*.png or "
                    f"{root}/cifar-10-batches-py (data.download=true fetches it).{hint}")


# -------------------------------------------------------------------------------- ImageFolder


def load_imagefolder(cfg):
    if not cfg.path:
        raise DataError("data.path is not set: point it at a folder of <class>/<image> files (or <split>/<class>/...)")
    root = Path(cfg.path)
    if (root / cfg.split).is_dir():
        top = root / cfg.split
    elif cfg.split == "train":  # a folder of class folders without split level is the training set
        top = root
    else:
        raise DataError(
            f"no {cfg.split} split at {root / cfg.split}: expected {root}/{cfg.split}/<class>/<image> files"
        )
    return load_image_tree(top, cfg.resolution, cfg.cache_dir)


def load_image_tree(top: Path, resolution: Optional[int], cache_dir: Optional[str]):
    """Decode ``top/<class>/*`` into (N, H, W, 3) uint8, labels and class names, through the cache."""
    from torchvision.datasets.folder import find_classes, make_dataset

    if not top.is_dir():
        raise DataError(f"image folder {top} not found: expected {top}/<class>/<image> files")
    try:
        classes, class_to_idx = find_classes(str(top))
        samples = make_dataset(str(top), class_to_idx, extensions=IMAGE_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(
            f"no images under {top}: expected {top}/<class>/<image> files ({str(e).splitlines()[0]})"
        ) from None
    files = [Path(p) for p, _ in samples]
    labels = np.array([c for _, c in samples], dtype=np.int64)
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, resolution, classes]).encode())
    for p in files:  # content hash: names and bytes (reading 50k CIFAR PNGs takes about 2 s)
        digest.update(f"{p.relative_to(top)}\0".encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    name = f"{top.name}-{resolution or 'native'}-{digest.hexdigest()[:16]}.npz"
    places = _cache_dirs(top, cache_dir)
    for place in places:
        if (place / name).is_file():
            with np.load(place / name, allow_pickle=False) as z:
                return z["images"], z["labels"], [str(c) for c in z["classes"]]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, resolution), files))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DataError(
            f"images under {top} differ in size ({sorted(sizes)[:3]}...): set data.resolution to resize them"
        )
    images = np.stack(arrays)
    for place in places:  # the first place that takes the file
        try:
            atomic_savez(place / name, images=images, labels=labels, classes=np.array(classes))
            break
        except OSError:
            continue
    return images, labels, classes


def _decode(path: Path, resolution: Optional[int]) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if resolution is not None and im.size != (resolution, resolution):
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)  # resize + center crop
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # corrupt or truncated file (UnidentifiedImageError: OSError)
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e}); remove or replace it") from None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cogdiff`` (default ``~/.cache/cogdiff``): caches that are not kept beside the data."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cogdiff"


def _cache_dirs(data_dir: Path, cache_dir: Optional[str]) -> List[Path]:
    """Where the decoded cache may live, in order: ``cache_dir`` if set; else beside the data (unless that
    folder has no write bits, e.g. a shared read-only copy), then ``$XDG_CACHE_HOME/cogdiff``."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    user = user_cache_dir()
    parent = data_dir.parent
    writable = os.access(parent, os.W_OK) and parent.stat().st_mode & 0o222  # root ignores modes: read them too
    return [parent / ".cogdiff_cache", user] if writable else [user]


# ---------------------------------------------------------------------------------- synthetic


def make_synthetic(cfg):
    """512 images in four classes of coloured shapes on dark backgrounds: horizontal bar, vertical bar, square, disc."""
    n = SYNTHETIC_DEFAULTS["num_examples"]
    r = cfg.resolution or SYNTHETIC_DEFAULTS["resolution"]
    rng = np.random.default_rng(0 if cfg.split == "train" else 1)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:r, 0:r]
    images = np.empty((n, r, r, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        cy, cx = rng.integers(r // 4, r - r // 4, 2)
        size = rng.integers(max(1, r // 8), max(2, r // 4) + 1)
        masks = [np.abs(yy - cy) < max(1, size // 2), np.abs(xx - cx) < max(1, size // 2),
                 (np.abs(yy - cy) < size) & (np.abs(xx - cx) < size), (yy - cy) ** 2 + (xx - cx) ** 2 < size**2]
        images[i] = rng.integers(0, 40, 3, dtype=np.uint8)
        images[i][masks[c]] = rng.integers(120, 256, 3, dtype=np.uint8)
    return images, labels, ["hbar", "vbar", "square", "disc"]


def _check_resolution(cfg, native: int, kind: str) -> None:
    if cfg.resolution is not None and cfg.resolution != native:
        raise DataError(f"{kind} images are {native}x{native}; data.resolution={cfg.resolution} is only for "
                        f"imagefolder/synthetic data: remove it (or convert the data to an image folder)")

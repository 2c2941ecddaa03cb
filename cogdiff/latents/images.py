"""ImageNet-layout ImageFolder scanning and ADM-style center cropping for latent extraction.

Layout: ``<root>/<wnid>/<image>`` (e.g. ``train/n01440764/n01440764_10026.JPEG``). Classes are the
sorted sub-directory names; label = index in that sorted list (the torchvision / ADM convention).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from ..io import IMAGE_EXTENSIONS  # one list for every image-folder reader in cogdiff

__all__ = ["IMAGE_EXTENSIONS", "CroppedImages", "center_crop_adm", "class_to_index", "load_image", "scan_image_folder"]


def scan_image_folder(root: str) -> Tuple[List[str], List[int], List[str]]:
    """Return (relative file paths, labels, sorted class names) for ``root/<class>/<image>``.

    Files are sorted by (class, file name), so the order — and hence every shard — is reproducible.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"image folder {root!r} does not exist: pass the ImageNet train dir, e.g. /data/imagenet/train"
        )
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    hint = " (it has a 'train' sub-folder: pass that)" if os.path.isdir(os.path.join(root, "train")) else ""
    if not classes:
        raise ValueError(f"{root!r} has no class sub-folders{hint}: expected the layout <root>/<wnid>/*.JPEG")
    files, labels = [], []
    for label, name in enumerate(classes):
        names = sorted(
            e.name
            for e in os.scandir(os.path.join(root, name))
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        files.extend(f"{name}/{n}" for n in names)
        labels.extend([label] * len(names))
    if not files:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"no images ({exts}) under {root!r}/<class>/{hint}: expected <root>/<wnid>/*.JPEG")
    return files, labels, classes


def class_to_index(classes: List[str]) -> Dict[str, int]:
    return {name: i for i, name in enumerate(classes)}


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM's (Dhariwal & Nichol) center crop: halve with a box filter while the short side is at
    least twice ``size``, bicubic-resize the short side to ``size``, then crop the center square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: str, size: int) -> torch.Tensor:
    """Decode ``path`` to RGB, ADM-crop to ``size`` and return a (3, size, size) float tensor in [-1, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(center_crop_adm(im.convert("RGB"), size), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class CroppedImages(torch.utils.data.Dataset):
    """Files ``paths[i]`` (relative to ``root``) as ADM-cropped tensors; for a DataLoader over one shard."""

    def __init__(self, root: str, paths: List[str], size: int):
        self.root, self.paths, self.size = root, paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(os.path.join(self.root, self.paths[i]), self.size)

"""Image grids for run folders and reports, built with torchvision's ``make_grid`` (one implementation).

``image_grid`` takes float (N, C, H, W) images in [0, 1] or uint8 (N, H, W, C) arrays; ``labeled_rows``
puts one row per model with its name on the left; ``side_by_side`` puts finished images next to each
other under their names.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from .io import atomic_save_with


def _as_float_nchw(images) -> torch.Tensor:
    """float (N, 3, H, W) in [0, 1] from a float NCHW tensor or a uint8 NHWC array/tensor (1 channel -> 3)."""
    if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
        images = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    images = images.detach().float().cpu()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _to_pil(grid: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, rounding like :func:`cogdiff.pipelines.to_uint8`."""
    array = np.clip(np.rint(grid.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def image_grid(images, nrow: Optional[int] = None, padding: int = 1, scale: int = 1) -> Image.Image:
    """A square-ish grid (``nrow`` images per row, default ceil(sqrt(N))) on white, enlarged ``scale`` times
    (nearest neighbour)."""
    x = _as_float_nchw(images)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    return _to_pil(make_grid(x, nrow=nrow, padding=padding, pad_value=1.0))


def labeled_rows(
    rows: Mapping[str, np.ndarray], label_w: int = 80, min_cell: int = 64, padding: int = 2
) -> Image.Image:
    """One row per model (uint8 NHWC, same seeds per column), its name on the left; small images are
    enlarged (nearest neighbour) to at least ``min_cell`` pixels."""
    n = min(len(v) for v in rows.values())
    h = next(iter(rows.values())).shape[1]
    scale = max(1, min_cell // h)
    grid = image_grid(np.concatenate([v[:n] for v in rows.values()]), nrow=n, padding=padding, scale=scale)
    canvas = Image.new("RGB", (label_w + grid.width, grid.height), "white")
    canvas.paste(grid, (label_w, 0))
    draw, cell = ImageDraw.Draw(canvas), h * scale + padding
    for r, name in enumerate(rows):
        draw.text((4, padding + r * cell + (h * scale) // 2 - 5), name[:12], fill="black")
    return canvas


def side_by_side(images: Mapping[str, Image.Image], label_h: int = 16, gap: int = 8) -> Image.Image:
    """Finished images (any sizes) next to each other with a name above each."""
    width = sum(i.width for i in images.values()) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(i.height for i in images.values()) + label_h), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for name, im in images.items():
        draw.text((x + 4, 2), name, fill="black")
        canvas.paste(im.convert("RGB"), (x, label_h))
        x += im.width + gap
    return canvas


def save_png(image: Image.Image, path) -> str:
    """Write a PNG atomically; returns the path."""
    atomic_save_with(path, lambda tmp: image.save(tmp, format="PNG"), suffix=".png")
    return str(path)

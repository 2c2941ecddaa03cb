"""Colour statistics of uint8 image batches: per-channel mean and std, and mean saturation, streamed.

    acc = ColorStats()
    for batch in batches:          # uint8, (N, H, W, C) or (N, C, H, W), numpy or torch; C = 1 or 3
        acc.update(batch)
    acc.result()                   # {"num_images", "channel_mean", "channel_std", "saturation_mean"}

Values are on the 0-255 scale. ``saturation_mean`` is the mean over all pixels of (max - min over R, G, B),
0 for grayscale. ``channel_std`` is the standard deviation over all pixels of all images (population
std), merged exactly across batches (Chan et al.'s pairwise update), so 50k images can stream through.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Union

import numpy as np
import torch

Images = Union[np.ndarray, torch.Tensor]


def _channels_last(images: Images, layout: str) -> np.ndarray:
    """uint8 (N, H, W, C) numpy view of a batch given as NHWC, NCHW or (N, H, W) grayscale."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"colour statistics take uint8 images (0-255), got {x.dtype}; convert with "
                         "(x.clamp(0, 1) * 255).round().to(torch.uint8) or similar first")
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale
    if x.ndim != 4:
        raise ValueError(f"expected a batch (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
    if layout == "auto":
        last, second = x.shape[-1] in (1, 3), x.shape[1] in (1, 3)
        if last == second:
            raise ValueError(f"cannot tell the channel axis of shape {x.shape}: pass layout='NHWC' or 'NCHW'")
        layout = "NHWC" if last else "NCHW"
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    elif layout != "NHWC":
        raise ValueError(f"layout must be 'auto', 'NHWC' or 'NCHW', got {layout!r}")
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels, got {x.shape[-1]} in shape {x.shape}")
    return x


class ColorStats:
    """Streaming per-channel mean / std and mean saturation of uint8 images (see the module docstring).

    Parameters:
        layout (`str`, defaults to "auto"): ``"NHWC"``, ``"NCHW"`` or ``"auto"`` (the axis of size 1 or 3).
    """

    def __init__(self, layout: str = "auto"):
        self.layout = layout
        self.num_images = 0
        self.num_pixels = 0
        self.mean: Optional[np.ndarray] = None  # (C,) running mean
        self.m2: Optional[np.ndarray] = None  # (C,) running sum of squared deviations
        self.saturation_sum = 0.0

    def update(self, images: Images) -> "ColorStats":
        """Add a batch; returns self."""
        x = _channels_last(images, self.layout)
        if x.shape[0] == 0:
            return self
        c = x.shape[-1]
        if self.mean is not None and c != self.mean.shape[0]:
            raise ValueError(f"this accumulator holds {self.mean.shape[0]}-channel images; got a {c}-channel batch")
        pixels = x.reshape(-1, c).astype(np.float64)
        n = pixels.shape[0]
        mean = pixels.mean(0)
        m2 = np.square(pixels - mean).sum(0)
        if self.mean is None:
            self.mean, self.m2 = mean, m2
        else:  # merge two (count, mean, M2) summaries exactly
            total = self.num_pixels + n
            delta = mean - self.mean
            self.mean = self.mean + delta * n / total
            self.m2 = self.m2 + m2 + delta**2 * self.num_pixels * n / total
        if c == 3:
            self.saturation_sum += float((x.max(-1).astype(np.int64) - x.min(-1)).sum())
        self.num_pixels += n
        self.num_images += x.shape[0]
        return self

    def summary(self) -> np.ndarray:
        """This accumulator as one float64 row (num_images, num_pixels, saturation_sum, mean[3], m2[3]), e.g. to
        gather across processes; an empty accumulator gives a row of zeros."""
        mean = self.mean if self.mean is not None else np.zeros(3)
        m2 = self.m2 if self.m2 is not None else np.zeros(3)
        return np.concatenate([[self.num_images, self.num_pixels, self.saturation_sum],
                               np.resize(mean, 3), np.resize(m2, 3)]).astype(np.float64)

    def merge(self, row: np.ndarray) -> "ColorStats":
        """Add another accumulator's :meth:`summary` (3-channel images); returns self."""
        n_img, n, sat = int(row[0]), int(row[1]), float(row[2])
        if n == 0:
            return self
        mean, m2 = np.asarray(row[3:6], np.float64), np.asarray(row[6:9], np.float64)
        if self.mean is None:
            self.mean, self.m2 = mean, m2
        else:
            total = self.num_pixels + n
            delta = mean - self.mean
            self.mean = self.mean + delta * n / total
            self.m2 = self.m2 + m2 + delta**2 * self.num_pixels * n / total
        self.num_pixels += n
        self.num_images += n_img
        self.saturation_sum += sat
        return self

    def result(self) -> Dict[str, Union[int, float, List[float]]]:
        """``{"num_images", "channel_mean": [C floats], "channel_std": [C floats], "saturation_mean"}``."""
        if self.mean is None:
            raise ValueError("no images were added to these colour statistics")
        return {
            "num_images": self.num_images,
            "channel_mean": [float(v) for v in self.mean],
            "channel_std": [float(v) for v in np.sqrt(self.m2 / self.num_pixels)],
            "saturation_mean": self.saturation_sum / self.num_pixels,
        }


def color_stats(images: Images, layout: str = "auto") -> Dict[str, Union[int, float, List[float]]]:
    """:meth:`ColorStats.result` of one batch."""
    return ColorStats(layout).update(images).result()


def color_shift(color: Dict, ref: Dict) -> Dict[str, Union[float, List[float]]]:
    """How the colours ``color`` of generated images depart from the reference's ``ref`` (both
    :meth:`ColorStats.result`): ``mean_offset`` per channel and ``brightness_offset`` (their mean), on the 0-255
    scale; ``std_ratio`` per channel (contrast: > 1 is more contrast than the reference); ``saturation_offset``."""
    mean, ref_mean = np.asarray(color["channel_mean"], float), np.asarray(ref["channel_mean"], float)
    std, ref_std = np.asarray(color["channel_std"], float), np.asarray(ref["channel_std"], float)
    if mean.shape != ref_mean.shape:
        raise ValueError(f"colour statistics of {mean.size} channels cannot be compared with {ref_mean.size}")
    return {"mean_offset": [float(v) for v in mean - ref_mean], "brightness_offset": float((mean - ref_mean).mean()),
            "std_ratio": [float(v) for v in std / ref_std],
            "saturation_offset": float(color["saturation_mean"] - ref["saturation_mean"])}

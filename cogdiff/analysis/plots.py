"""Matplotlib figures for the analysis, saved as PNGs (Agg canvas per figure, no global backend switch).

Every ``plot_*`` function draws one figure, saves it to ``path`` (parent folders are created) and
returns the :class:`matplotlib.figure.Figure`, so notebooks can also display it.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .measures import NegativeStatsTable

DEFAULT_DPI = 60


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (independent of pyplot's backend)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path, dpi: int = DEFAULT_DPI) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _to_hwc(image) -> np.ndarray:
    """PIL image, (H, W), (H, W, C) in [0, 1] or uint8, or a (C, H, W) tensor -> float (H, W, C) in [0, 1]."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    a = np.asarray(image)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _block_labels(blocks: Sequence[int], types: Sequence[str]) -> list:
    return [f"{b}{'c' if t == 'cog' else 's'}" for b, t in zip(blocks, types)]


def plot_image_grid(
    images, path, nrow: Optional[int] = None, title: str = "", cell: float = 0.9, dpi: int = DEFAULT_DPI
) -> Figure:
    """A grid of images (list of PIL images or arrays, or an (N, H, W, C) array in [0, 1])."""
    images = [_to_hwc(im) for im in images]
    n = len(images)
    nrow = nrow or max(1, int(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    fig = new_figure(cell * ncol, cell * nrow + (0.3 if title else 0))
    for i in range(nrow * ncol):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.axis("off")
        if i < n:
            ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    save_figure(fig, path, dpi)
    return fig


def plot_negative_by_block(tables: Mapping[str, NegativeStatsTable], path, dpi: int = DEFAULT_DPI) -> Figure:
    """Four panels vs block (mean over timesteps): share of negative weights, mean |negative
    weight|, negative share of the attention mass and sign mixing per row; one line per model."""
    fig = new_figure(12, 2.8)
    panels = [("neg_share", "share of weights < 0"), ("mean_abs_neg", "mean |w| of w < 0"),
              ("neg_mass", "negative share of |w| mass"), ("sign_mixing", "sign mixing per row (0 = one sign)")]
    for j, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for name, tab in tables.items():
            ax.plot(tab.blocks, tab.block_means(key), marker="o", label=name)
        first = next(iter(tables.values()))
        ax.set_xticks(first.blocks)
        ax.set_xticklabels(_block_labels(first.blocks, first.attention_types), fontsize=7)
        ax.set_xlabel("block (s = softmax, c = cog)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return fig


def plot_negative_by_timestep(
    table: NegativeStatsTable, path, key: str = "neg_share", title: str = "", dpi: int = DEFAULT_DPI
) -> Figure:
    """Heatmap of ``key`` (``neg_share``, ``mean_abs_neg`` or ``neg_mass``) over (timestep, block)."""
    data = getattr(table, key)
    fig = new_figure(1.2 + 0.45 * len(table.blocks), 0.8 + 0.22 * len(table.timesteps))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(table.blocks)))
    ax.set_xticklabels(_block_labels(table.blocks, table.attention_types), fontsize=7)
    ax.set_yticks(range(len(table.timesteps)))
    ax.set_yticklabels([f"{t:g}" for t in table.timesteps], fontsize=7)
    ax.set_xlabel("block", fontsize=8)
    ax.set_ylabel("timestep (sampling order)", fontsize=8)
    ax.set_title(title or key, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return fig


def plot_attention_maps(
    image, maps: Mapping[str, np.ndarray], query_patch: int, path, alpha: float = 0.6, dpi: int = DEFAULT_DPI
) -> Figure:
    """The image, then each signed (grid, grid) map drawn over it (red > 0, blue < 0, one symmetric
    scale per panel); the query patch is outlined in green."""
    img = _to_hwc(image)
    h, w = img.shape[:2]
    fig = new_figure(1.9 * (len(maps) + 1), 2.1)
    ax = fig.add_subplot(1, len(maps) + 1, 1)
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_title("image", fontsize=8)
    ax.axis("off")
    for j, (name, m) in enumerate(maps.items()):
        grid = m.shape[0]
        ph, pw = h / grid, w / grid
        ax = fig.add_subplot(1, len(maps) + 1, j + 2)
        ax.imshow(np.clip(img.mean(-1), 0, 1), cmap="gray", interpolation="nearest")
        vmax = float(np.abs(m).max()) or 1.0
        im = ax.imshow(
            m,
            cmap="RdBu_r",
            vmin=-vmax,
            vmax=vmax,
            alpha=alpha,
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation="nearest",
        )
        r, c = divmod(query_patch, grid)
        ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor="lime", linewidth=1.5))
        ax.set_title(f"{name}\nmin {m.min():+.3f} max {m.max():+.3f}", fontsize=7)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return fig


def plot_similarity_by_depth(
    curves: Mapping[str, np.ndarray],
    path,
    block_types: Optional[Mapping[str, Sequence[str]]] = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Mean pairwise cosine similarity of patch tokens vs depth (0 = input, i + 1 = after block i);
    one line per model. Markers are hollow on Cog blocks when ``block_types`` is given."""
    fig = new_figure(4.5, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    for name, y in curves.items():
        y = np.asarray(y)
        y = y.mean(0) if y.ndim == 2 else y  # (timesteps, depth) -> mean over timesteps
        line = ax.plot(np.arange(len(y)), y, marker="o", label=name)[0]
        if block_types and name in block_types:
            cog = [i + 1 for i, t in enumerate(block_types[name]) if t == "cog"]
            ax.plot(cog, y[cog], "o", mfc="white", mec=line.get_color())
    ax.set_xlabel("depth (0 = embedded input, i = after block i-1)", fontsize=8)
    ax.set_ylabel("mean pairwise cosine", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return fig


def plot_curves(
    panels: Mapping[str, Mapping[str, Tuple[Sequence[float], Sequence[float]]]],
    path,
    xlabel: str = "step",
    logy: Sequence[str] = (),
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """One panel per key of ``panels`` (its y label), one line per run: ``{"loss": {"run": (x, y)}}``.
    Panels named in ``logy`` use a log y axis."""
    fig = new_figure(4.2 * len(panels), 2.8)
    for j, (ylabel, runs) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for name, (x, y) in runs.items():
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=name)
        if ylabel in logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return fig


def plot_block_stats(
    runs: Mapping[str, Sequence[Mapping]],
    keys: Sequence[str],
    path,
    dpi: int = 80,
) -> Figure:
    """Per-block diagnostics over training: one row per run, one column per statistic in ``keys``, one line per
    block coloured by depth (a colour bar instead of a legend). ``runs`` maps a run's name to its
    ``diagnostics.jsonl`` rows (``{"step": s, "blocks": [{key: value, ...}, ...]}``)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    depth = max(len(rows[0]["blocks"]) for rows in runs.values())
    norm, cmap = Normalize(0, max(depth - 1, 1)), colormaps["viridis"]
    fig = new_figure(3.6 * len(keys) + 0.8, 2.6 * len(runs))
    axes = fig.subplots(len(runs), len(keys), squeeze=False, gridspec_kw=dict(hspace=0.55, wspace=0.3))
    for i, (name, rows) in enumerate(runs.items()):
        steps = [r["step"] for r in rows]
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for b in range(len(rows[0]["blocks"])):
                y = [r["blocks"][b].get(key) for r in rows]
                ax.plot(steps, [np.nan if v is None else v for v in y], color=cmap(norm(b)), lw=1.2,
                        marker="o" if len(steps) < 8 else None, markersize=3)
            ax.set_title(f"{name}: {key}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), label="block (0 = first in-block)")
    save_figure(fig, path, dpi)
    return fig

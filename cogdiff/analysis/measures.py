"""Numbers computed from captured attention weights and token states.

* :func:`negative_stats` / :func:`negative_stats_table`: how much attention is negative — share of
  negative weights, mean |negative weight|, and the negative share of the attention mass — per block
  (and head) and per diffusion timestep.
* :func:`query_attention_map`: the signed weights one query patch gives to all patches, as a grid.
* :func:`mean_pairwise_cosine` / :func:`similarity_by_depth`: mean pairwise cosine similarity of the
  patch tokens after each block (a high value = tokens look alike = "representational collapse").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .hooks import AttentionCapture, BlockOutputs, capture_block_outputs


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without the all-NaN warning (an all-NaN slice stays NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def negative_stats(
    weights: torch.Tensor, query_slice: slice = slice(None), key_slice: slice = slice(None)
) -> Dict[str, torch.Tensor]:
    """Per-head negativity of (B, H, Lq, Lk) weights, averaged over batch, queries and keys.

    Returns a dict of (H,) float tensors:
        ``neg_share``: fraction of weights that are < 0;
        ``mean_abs_neg``: mean |w| over the negative weights (NaN where a head has none);
        ``neg_mass``: per query row, sum of |w| over negative w divided by sum of |w|, averaged
        (0 for softmax; for Cog |w| sums to 1 per row, so this is the share of attention that deletes);
        ``sign_mixing``: per row, 2 min(P, N) / (P + N) with P, N the positive and negative mass, averaged:
        0 when every row is single-signed (an all-negative row is a softmax row with negated values),
        1 when rows are balanced between adding and subtracting.
    ``query_slice`` / ``key_slice`` restrict the rows / columns (e.g. ``slice(extras, None)`` = patches).
    """
    w = weights.float()[:, :, query_slice, key_slice]
    neg = w < 0
    n_neg = neg.sum(dim=(0, 2, 3)).float()
    total = w[0, 0].numel() * w.shape[0]
    abs_neg = torch.where(neg, -w, torch.zeros_like(w))
    mean_abs_neg = abs_neg.sum(dim=(0, 2, 3)) / n_neg
    mean_abs_neg = torch.where(n_neg > 0, mean_abs_neg, torch.full_like(mean_abs_neg, float("nan")))
    row_abs = w.abs().sum(-1)
    row_neg = abs_neg.sum(-1)
    has = row_abs > 0
    mass = torch.where(has, row_neg / row_abs.clamp_min(1e-30), torch.zeros_like(row_abs))
    mixing = 2 * torch.minimum(mass, 1 - mass)
    return {"neg_share": n_neg / total, "mean_abs_neg": mean_abs_neg, "neg_mass": mass.mean(dim=(0, 2)),
            "sign_mixing": mixing.mean(dim=(0, 2))}


@dataclass
class NegativeStatsTable:
    """Negativity per timestep and block: arrays of shape (timesteps, blocks) (head-mean) and
    (timesteps, blocks, heads) in ``per_head``. Rows follow ``timesteps`` (sampler order)."""

    blocks: List[int]
    timesteps: List[float]
    attention_types: List[str]
    neg_share: np.ndarray
    mean_abs_neg: np.ndarray
    neg_mass: np.ndarray
    sign_mixing: np.ndarray
    per_head: Dict[str, np.ndarray]

    def block_means(self, key: str = "neg_share") -> np.ndarray:
        """(blocks,) mean over timesteps (NaN for a block with no value at any timestep)."""
        return _nanmean(getattr(self, key), axis=0)


def negative_stats_table(capture: AttentionCapture, patches_only: bool = False) -> NegativeStatsTable:
    """:func:`negative_stats` for every (timestep, block) of a capture (records of the same
    timestep and block, e.g. two calls, are averaged). ``patches_only`` drops the extra tokens."""
    blocks, ts = capture.blocks, capture.timesteps
    sl = slice(capture.extras, None) if patches_only else slice(None)
    keys = ("neg_share", "mean_abs_neg", "neg_mass", "sign_mixing")
    sums: Dict[tuple, List[Dict[str, torch.Tensor]]] = {}
    types = {}
    for r in capture.records:
        sums.setdefault((ts.index(r.timestep), blocks.index(r.block)), []).append(negative_stats(r.weights, sl, sl))
        types[r.block] = r.attention_type
    heads = capture.records[0].weights.shape[1] if capture.records else 0
    per_head = {k: np.full((len(ts), len(blocks), heads), np.nan) for k in keys}
    for (i, j), stats in sums.items():
        for k in keys:
            per_head[k][i, j] = torch.stack([s[k] for s in stats]).mean(0).numpy()
    means = {k: _nanmean(per_head[k], axis=-1) for k in keys}
    return NegativeStatsTable(blocks, ts, [types[b] for b in blocks], means["neg_share"], means["mean_abs_neg"],
                              means["neg_mass"], means["sign_mixing"], per_head)


def query_attention_map(
    weights: torch.Tensor, query_patch: int, extras: int, grid: int, head: Optional[int] = None, sample: int = 0
) -> np.ndarray:
    """The signed weights that patch ``query_patch`` (row-major index into the grid) gives to
    every patch, as a (grid, grid) array; the extra tokens' columns are skipped.

    ``head=None`` averages the heads (signs can cancel; pass a head to see one).
    """
    n_patches = grid * grid
    if not 0 <= query_patch < n_patches:
        raise ValueError(f"query_patch must be in [0, {n_patches}), got {query_patch}")
    if weights.shape[-1] != extras + n_patches:
        raise ValueError(f"weights have {weights.shape[-1]} keys, expected extras {extras} + {n_patches} patches")
    row = weights[sample, :, extras + query_patch, extras:].float()  # (H, L)
    row = row.mean(0) if head is None else row[head]
    return row.reshape(grid, grid).cpu().numpy()


def mean_pairwise_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs i != j of the (B, N, D) tokens, averaged over the batch."""
    x = torch.nn.functional.normalize(tokens.double(), dim=-1)
    n = x.shape[1]
    if n < 2:
        raise ValueError("need at least two tokens")
    gram = x @ x.transpose(1, 2)  # (B, N, N)
    off = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)
    return float((off / (n * (n - 1))).mean())


def similarity_by_depth(outputs: BlockOutputs, call: int = 0) -> np.ndarray:
    """Mean pairwise cosine similarity of the patch tokens: entry 0 = input of block 0, entry
    i + 1 = output of block i (for one recorded model call)."""
    states = outputs.states[call]
    order = sorted(states)  # -1, 0, 1, ...
    return np.array([mean_pairwise_cosine(states[i][:, outputs.extras :]) for i in order])


@torch.no_grad()
def token_similarity(
    model, sample: torch.Tensor, timesteps: Sequence[float], class_labels: Optional[torch.Tensor] = None
) -> np.ndarray:
    """Run ``model`` on ``sample`` at each timestep and return (timesteps, blocks + 1) similarities
    (column 0 = the embedded input, column i + 1 = after block i)."""
    rows = []
    with capture_block_outputs(model) as rec:
        for t in timesteps:
            model(sample, torch.tensor(t), class_labels=class_labels)
    for c in range(len(timesteps)):
        rows.append(similarity_by_depth(rec, c))
    return np.stack(rows)

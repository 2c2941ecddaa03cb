"""Cog Attention written out in PyTorch: the reference every other implementation must match.

``cog_attention_reference`` materialises the tokens x tokens weights ``sign(s) * softmax(|s|)`` in
float32 (float64 for float64 inputs); :func:`mask_fits` is the one shape rule for masks that every
implementation and the front end (:mod:`cogdiff.attention`) share. This module imports only torch,
so the fused kernels fall back to it without importing the front end that dispatches to them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def mask_fits(mask_shape, q_shape, k_shape) -> bool:
    """Does a mask of ``mask_shape`` broadcast to (batch, heads, Lq, Lk)? (shape tuples only)."""
    target = (q_shape[0], q_shape[1], q_shape[2], k_shape[2])
    return len(mask_shape) <= 4 and all(m in (1, t) for m, t in zip(reversed(mask_shape), reversed(target)))


def cog_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Cog Attention written out (materialises the tokens x tokens weights), float32 softmax."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    with torch.autocast(q.device.type, enabled=False):
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        s = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
        sign = torch.sign(s).detach()  # sign() has zero gradient; gradients flow through |s|
        a = s.abs()
        if attn_mask is not None:
            a = a.masked_fill(~attn_mask, float("-inf"))
        # max over the row; a fully masked row has max -inf -> use 0 to avoid inf - inf = NaN
        m = a.amax(dim=-1, keepdim=True).detach()
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(a - m)  # masked -> exp(-inf) = 0
        denom = e.sum(dim=-1, keepdim=True)
        w = sign * e / denom.clamp_min(torch.finfo(acc).tiny)  # fully masked row -> 0 / tiny = 0
        if dropout_p > 0.0:
            w = F.dropout(w, p=dropout_p)
        out = torch.matmul(w, v.to(acc))  # (B, H, Lq, D)
    return out.to(out_dtype)

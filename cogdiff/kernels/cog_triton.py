"""Fused Cog Attention on CUDA through Triton: launchers, autograd, a custom op, registration.

``cog_attention_triton(q, k, v, attn_mask=None, scale=None)`` computes
``(sign(s) * softmax(|s|)) @ v`` with ``s = scale * q @ k^T`` in one pass over the keys (no
tokens x tokens matrix in memory), with a matching fused backward. Importing this module
registers it as ``impl="triton"`` in :mod:`cogdiff.attention`; ``impl="auto"`` picks it for CUDA
fp16/bf16 inputs with head_dim <= 128, no dropout and an optional boolean mask (any mask that
broadcasts to (B, H, Lq, Lk), key-padding masks included). Anything else falls back to the
reference (with a one-time warning when ``impl="triton"`` was asked for explicitly).

In eager mode the op runs through a ``torch.autograd.Function`` (least Python overhead); under
``torch.compile`` it runs through the custom ops ``cogdiff::cog_attn_fwd`` /
``cogdiff::cog_attn_bwd``, so graphs don't break on it.

Block sizes live in :data:`CONFIGS` (tuned on an H200, see benchmarks/results/attention_h200.md).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import torch
import triton

from ..attention import cog_attention_reference, register_cog_impl
from .cog_triton_kernels import _cog_bwd_delta_kernel, _cog_bwd_dkdv_kernel, _cog_bwd_dq_kernel, _cog_fwd_kernel

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128

# (kernel, BLOCK_D, "short" | "long") -> (BLOCK_M, BLOCK_N, num_warps, num_stages); "long" when
# the longer sequence exceeds 512 tokens. "fwd": query x key tile; "dq": query rows x key tile;
# "dkdv": query tile x key rows.
# Tuned on an H200 at D=64 (benchmarks/attention.py --tune; L=258 "short", 1026/4096 "long");
# D=128 is untuned (same tiles, 8 warps in the backward).
_DEFAULT = {
    "fwd": {16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 64, 4, 3)},
    "dq": {16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (64, 64, 4, 2), 128: (64, 64, 8, 2)},
    "dkdv": {16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (64, 64, 4, 2), 128: (64, 64, 8, 2)},
}
CONFIGS: Dict[Tuple[str, int, str], Tuple[int, int, int, int]] = {
    (kind, bd, bucket): cfg for kind, by_d in _DEFAULT.items() for bd, cfg in by_d.items() for bucket in ("short", "long")
}
CONFIGS[("dkdv", 64, "long")] = (64, 64, 4, 3)


# "short" | "long" -> how dq is computed in the backward (see cog_bwd).
BWD_MODE: Dict[str, str] = {"short": "recompute", "long": "recompute"}


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _bucket(lq: int, lk: int) -> str:
    return "short" if max(lq, lk) <= 512 else "long"


def _config(kind: str, d: int, lq: int, lk: int) -> Tuple[int, int, int, int]:
    return CONFIGS[(kind, _block_d(d), _bucket(lq, lk))]


def _mask_args(mask: Optional[torch.Tensor], b: int, h: int, lq: int, lk: int):
    """A broadcast (stride-0) uint8 view of a boolean mask and its four strides (no copy)."""
    if mask is None:
        return None, (0, 0, 0, 0)
    m = mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    m = m.expand(b, h, lq, lk)
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
    return m, tuple(m.stride())


def _out_like(q: torch.Tensor, d: int) -> torch.Tensor:
    # (B, L, H, D) memory viewed as (B, H, L, D): the usual "transpose(1, 2).reshape" after
    # attention is then free.
    b, h, l, _ = q.shape
    return torch.empty((b, l, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)


def _grad_like(x: torch.Tensor, dtype=None, zero: bool = False) -> torch.Tensor:
    # Same strides as a dense input (so AccumulateGrad on leaves needs no copy), else (B, L, H, D).
    dtype = x.dtype if dtype is None else dtype
    if x.is_contiguous() or x.transpose(1, 2).is_contiguous():
        return (torch.zeros_like if zero else torch.empty_like)(x, dtype=dtype)
    b, h, l, d = x.shape
    return (torch.zeros if zero else torch.empty)((b, l, h, d), dtype=dtype, device=x.device).transpose(1, 2)


def _flags(lq: int, lk: int, d: int, bm: int, bn: int, bd: int, has_mask: bool) -> dict:
    return dict(EVEN_M=lq % bm == 0, EVEN_N=lk % bn == 0, EVEN_D=d == bd, HAS_MASK=has_mask)


def cog_fwd(q, k, v, mask: Optional[torch.Tensor], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: returns ``(out, lse2)``, lse2 = base-2 row log-sum-exp of |s| (float32)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    bd = _block_d(d)
    bm, bn, warps, stages = _config("fwd", d, lq, lk)
    o = _out_like(q, d)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    m, ms = _mask_args(mask, b, h, lq, lk)
    grid = (triton.cdiv(lq, bm), b * h)
    _cog_fwd_kernel[grid](
        q, k, v, o, lse, m if m is not None else q,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *ms,
        h, lq, lk, d, abs(scale) * LOG2E,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **_flags(lq, lk, d, bm, bn, bd, m is not None),
        num_warps=warps, num_stages=stages,
    )
    return o, lse


def cog_bwd(do, q, k, v, o, lse, mask: Optional[torch.Tensor], scale: float):
    """Backward launchers: returns ``(dq, dk, dv)``.

    ``BWD_MODE["dq"] == "recompute"``: a dq kernel (which also writes rowsum(dO*O)) recomputes the
    scores per query block, then the dk/dv kernel; ``"atomic"``: the dk/dv kernel also adds
    ``dS K`` into a float32 buffer with atomics (after a small rowsum kernel).
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    bd = _block_d(d)
    dk, dv = _grad_like(k), _grad_like(v)
    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    m, ms = _mask_args(mask, b, h, lq, lk)
    mp = m if m is not None else q
    atomic = BWD_MODE[_bucket(lq, lk)] == "atomic"

    if atomic:
        dq_acc = _grad_like(q, torch.float32, zero=True)
        _cog_bwd_delta_kernel[(triton.cdiv(lq, 64), b * h)](
            o, do, delta, *o.stride(), *do.stride(), h, lq, d, BLOCK_M=64, BLOCK_D=bd, num_warps=4
        )
    else:
        dq = _grad_like(q)
        dq_acc = dq  # unused by the dk/dv kernel
        bm, bn, warps, stages = _config("dq", d, lq, lk)
        _cog_bwd_dq_kernel[(triton.cdiv(lq, bm), b * h)](
            q, k, v, o, do, dq, lse, delta, mp,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), *dq.stride(), *ms,
            h, lq, lk, d, abs(scale) * LOG2E, scale,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **_flags(lq, lk, d, bm, bn, bd, m is not None),
            num_warps=warps, num_stages=stages,
        )
    bm, bn, warps, stages = _config("dkdv", d, lq, lk)
    _cog_bwd_dkdv_kernel[(triton.cdiv(lk, bn), b * h)](
        q, k, v, do, dk, dv, dq_acc, lse, delta, mp,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(), *dq_acc.stride(), *ms,
        h, lq, lk, d, abs(scale) * LOG2E, scale,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **_flags(lq, lk, d, bm, bn, bd, m is not None),
        ATOMIC_DQ=atomic, num_warps=warps, num_stages=stages,
    )
    if atomic:
        dq = dq_acc.to(q.dtype)
    return dq, dk, dv


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# ------------------------------------------------------------------------------- eager autograd


class _CogAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        o, lse = cog_fwd(q, k, v, mask, scale)
        ctx.save_for_backward(q, k, v, o, lse, mask)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, mask = ctx.saved_tensors
        dq, dk, dv = cog_bwd(_last_dim_contiguous(do), q, k, v, o, lse, mask, ctx.scale)
        return dq, dk, dv, None, None


# ------------------------------------------------------------------- custom ops (torch.compile)


@torch.library.custom_op("cogdiff::cog_attn_fwd", mutates_args=())
def _cog_attn_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    return cog_fwd(q, k, v, mask, scale)


@_cog_attn_fwd_op.register_fake
def _(q, k, v, mask, scale):
    b, h, lq, d = q.shape
    return _out_like(q, d), q.new_empty((b, h, lq), dtype=torch.float32)


@torch.library.custom_op("cogdiff::cog_attn_bwd", mutates_args=())
def _cog_attn_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    mask: Optional[torch.Tensor],
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cog_bwd(_last_dim_contiguous(do), q, k, v, o, lse, mask, scale)


@_cog_attn_bwd_op.register_fake
def _(do, q, k, v, o, lse, mask, scale):
    return _grad_like(q), _grad_like(k), _grad_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, mask)
    ctx.scale = scale


def _op_backward(ctx, do, dlse):
    q, k, v, o, lse, mask = ctx.saved_tensors
    dq, dk, dv = _cog_attn_bwd_op(do, q, k, v, o, lse, mask, ctx.scale)
    return dq, dk, dv, None, None


_cog_attn_fwd_op.register_autograd(_op_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ public entry


def cog_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    use_custom_op: Optional[bool] = None,
) -> torch.Tensor:
    """Fused Cog Attention (no support checks; see :func:`supports`). (B, H, L, D) tensors.

    ``use_custom_op``: None = custom op only under ``torch.compile``; True/False forces a path.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if scale < 0:  # sign(scale * s) = sign((-q) . k): fold the sign into q, autograd does the rest
        q, scale = -q, -scale
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    if use_custom_op is None:
        use_custom_op = torch.compiler.is_compiling()
    if use_custom_op:
        return _cog_attn_fwd_op(q, k, v, attn_mask, scale)[0]
    return _CogAttnFn.apply(q, k, v, attn_mask, scale)


def _why_unsupported(q, k, v, attn_mask, dropout_p, scale=None) -> Optional[str]:
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return "tensors are not on a CUDA device"
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype} (needs one of float16/bfloat16 for all three)"
    if q.dim() != 4 or k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        return "q, k, v need equal (batch, heads)"
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1] <= MAX_HEAD_DIM):
        return f"head_dim must match across q/k/v and be <= {MAX_HEAD_DIM}"
    if q.shape[0] * q.shape[1] > 65535 or min(q.shape[2], k.shape[2]) == 0:
        return "batch*heads > 65535 or empty sequence"
    if max(q.numel(), k.numel(), v.numel()) >= 2**31:
        return "tensors with >= 2**31 elements (32-bit offsets)"
    if dropout_p > 0.0:
        return "dropout_p > 0"
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool or attn_mask.dim() > 4:
            return "mask must be boolean with <= 4 dims"
        try:
            torch.broadcast_shapes(attn_mask.shape, (*q.shape[:3], k.shape[2]))
        except RuntimeError:
            return "mask does not broadcast to (B, H, Lq, Lk)"
    if scale is not None and scale == 0:
        return "scale == 0"
    return None


def supports(q, k, v, attn_mask=None, dropout_p=0.0) -> bool:
    """True when the fused kernel handles these inputs (used by ``impl="auto"``)."""
    return _why_unsupported(q, k, v, attn_mask, dropout_p) is None


_warned = set()


def _triton_impl(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    why = _why_unsupported(q, k, v, attn_mask, dropout_p, scale)
    if why is not None:
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"cog_attention(impl='triton'): {why}; using the reference implementation", stacklevel=3)
        return cog_attention_reference(q, k, v, attn_mask, dropout_p, scale)
    return cog_attention_triton(q, k, v, attn_mask, scale)


register_cog_impl("triton", _triton_impl, supports)

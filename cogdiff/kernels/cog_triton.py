"""Fused Cog Attention on CUDA through Triton: launchers, autograd, a custom op, registration.

``cog_attention_triton(q, k, v, attn_mask=None, scale=None)`` computes
``(sign(s) * softmax(|s|)) @ v`` with ``s = scale * q @ k^T`` in one pass over the keys (no
tokens x tokens matrix in memory), with a matching fused backward. :mod:`cogdiff.attention` imports
this module on first use and registers :func:`triton_impl` as ``impl="triton"`` (this module never
imports the front end); ``impl="auto"`` picks it (:func:`supports`, :func:`auto_impl`) for CUDA
fp16/bf16 inputs with head_dim <= 128, no dropout and an optional boolean mask (any mask that
broadcasts to (B, H, Lq, Lk), key-padding masks included). Anything else falls back to the
reference (with a one-time warning when ``impl="triton"`` was asked for explicitly).

In eager mode the op runs through a ``torch.autograd.Function`` (launch plans cached per shape, no
other Python work); under ``torch.compile`` through the ``torch.library.triton_op``s
``cogdiff::cog_attn_fwd`` / ``cogdiff::cog_attn_bwd``, which Inductor traces into, launching the
kernels from its generated code. Both paths allocate through torch, never sync or touch the CPU,
so they can be captured in CUDA graphs (``torch.cuda.CUDAGraph``, ``mode="reduce-overhead"``).

Block sizes and the backward scheme live in :data:`CONFIGS` / :data:`BWD_MODE`
(:func:`set_configs`, :func:`load_configs`; tuned on an H200, see benchmarks/results/attention_h200.md).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from typing import Dict, Optional, Tuple

import torch
import triton
from torch.library import triton_op, wrap_triton

from .cog_triton_bwd import _cog_bwd_delta_kernel, _cog_bwd_dkdv_kernel, _cog_bwd_dq_kernel
from .cog_triton_kernels import _cog_fwd_kernel
from .reference import cog_attention_reference, mask_fits

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128
BUCKETS = (("short", 512), ("mid", 2048), ("long", None))  # name, longest sequence it covers (None = any)

# (kernel, BLOCK_D, bucket) -> (BLOCK_M, BLOCK_N, num_warps, num_stages, tail). "fwd": query x key
# tile; "dq": query rows x key tile; "dkdv": query tile x key rows. tail=True: a ragged length's last
# tile is the remainder rounded up to a power of two >= 16 (else a masked full tile).
# `python benchmarks/attention.py --sweep` times candidates per bucket and writes the winners as a
# JSON file that load_configs() applies. The D=64 entries are the H200 sweep's winners (torch 2.11,
# Triton 3.6; benchmarks/results/attention_h200.md); other head dims use the same tiles, untuned
# (8 warps in the backward at D=128).
_SHORT = {"fwd": (64, 64, 4, 3, True), "dq": (64, 64, 4, 2, True), "dkdv": (32, 64, 4, 2, True)}
_MID = {"fwd": (128, 64, 4, 3, True), "dq": (64, 64, 4, 2, True), "dkdv": (64, 64, 4, 3, True)}
_LONG = {"fwd": (64, 64, 4, 3, True), "dq": (64, 64, 4, 2, True), "dkdv": (64, 64, 4, 3, True)}
_BY_BUCKET = {"short": _SHORT, "mid": _MID, "long": _LONG}


def _default_config(kind: str, bd: int, bucket: str) -> Tuple[int, int, int, int, bool]:
    bm, bn, warps, stages, tail = _BY_BUCKET[bucket][kind]
    return bm, bn, 8 if bd == 128 and kind != "fwd" else warps, stages, tail


CONFIGS: Dict[Tuple[str, int, str], Tuple[int, int, int, int, bool]] = {
    (kind, bd, bucket): _default_config(kind, bd, bucket)
    for kind in ("fwd", "dq", "dkdv") for bd in (16, 32, 64, 128) for bucket, _ in BUCKETS
}
# bucket -> how dq is computed in the backward: "recompute" | "atomic" (see cog_triton_bwd.py).
BWD_MODE: Dict[str, str] = {"short": "recompute", "mid": "atomic", "long": "recompute"}
BWD_MODES = ("recompute", "atomic")


def set_configs(configs: Optional[dict] = None, bwd_mode: Optional[dict] = None) -> None:
    """Update :data:`CONFIGS` / :data:`BWD_MODE` (keys as there) and drop the cached launch plans."""
    for key, cfg in (configs or {}).items():
        if key not in CONFIGS or len(cfg) != 5:
            raise ValueError(f"bad kernel config {key}: {cfg}; keys are (kind, BLOCK_D, bucket) of CONFIGS, "
                             "values (BLOCK_M, BLOCK_N, num_warps, num_stages, tail)")
        CONFIGS[key] = tuple(cfg)
    for bucket, mode in (bwd_mode or {}).items():
        if bucket not in BWD_MODE or mode not in BWD_MODES:
            raise ValueError(f"bad backward mode {bucket}={mode!r}; buckets {list(BWD_MODE)}, modes {BWD_MODES}")
        BWD_MODE[bucket] = mode
    _plan.cache_clear()


def load_configs(path: str) -> None:
    """Apply a sweep's winners: the JSON ``{"configs": {"kind/BLOCK_D/bucket": [...]}, "bwd_mode": {...}}``
    written by ``benchmarks/attention.py --sweep``."""
    with open(path) as f:
        data = json.load(f)
    configs = {}
    for key, cfg in data.get("configs", {}).items():
        kind, bd, bucket = key.split("/")
        configs[(kind, int(bd), bucket)] = tuple(cfg)
    set_configs(configs, data.get("bwd_mode"))


def config_key(kind: str, d: int, lq: int, lk: int) -> Tuple[str, int, str]:
    longest = max(lq, lk)
    bucket = next(name for name, top in BUCKETS if top is None or longest <= top)
    return kind, max(16, triton.next_power_of_2(d)), bucket


def _tail(n: int, block: int, use_tail: bool) -> int:
    rem = n % block
    if rem == 0:
        return 0
    return min(block, max(16, triton.next_power_of_2(rem))) if use_tail else block


@functools.lru_cache(maxsize=None)
def _plan(kind: str, d: int, lq: int, lk: int) -> Tuple[int, dict]:
    """(programs along the blocked dimension, launch kwargs) for one kernel at one shape; cached."""
    key = config_key(kind, d, lq, lk)
    bm, bn, warps, stages, use_tail = CONFIGS[key]
    kw = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=key[1], TAIL_M=_tail(lq, bm, use_tail), TAIL_N=_tail(lk, bn, use_tail),
              EVEN_D=d == key[1], num_warps=warps, num_stages=stages)
    if kind == "dkdv":
        kw["ATOMIC_DQ"] = BWD_MODE[key[2]] == "atomic"
    return triton.cdiv(lk if kind == "dkdv" else lq, bn if kind == "dkdv" else bm), kw


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
    # Contiguous q -> contiguous out; else (B, L, H, D) memory viewed as (B, H, L, D), so that the usual
    # "transpose(1, 2).reshape" after attention is free.
    b, h, n, _ = q.shape
    if q.is_contiguous():
        return torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    return torch.empty((b, n, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)


def _grad_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    # Same strides as a dense input (so AccumulateGrad on leaves needs no copy), else (B, L, H, D).
    dtype = x.dtype if dtype is None else dtype
    if x.is_contiguous() or x.transpose(1, 2).is_contiguous():
        return torch.empty_like(x, dtype=dtype)
    b, h, n, d = x.shape
    return torch.empty((b, n, h, d), dtype=dtype, device=x.device).transpose(1, 2)


def _launcher(kernel, traced: bool):
    # Inside the triton_op (torch.compile) kernels go through wrap_triton so Inductor launches them
    # itself; in eager mode the plain JIT launch is the cheaper one.
    return wrap_triton(kernel) if traced else kernel


def cog_fwd(q, k, v, mask: Optional[torch.Tensor], scale: float, traced: bool = False):
    """Forward launcher: returns ``(out, lse2)``, lse2 = base-2 row log-sum-exp of |s| (float32)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    n_m, kw = _plan("fwd", d, lq, lk)
    o = _out_like(q, d)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    m, ms = _mask_args(mask, b, h, lq, lk)
    _launcher(_cog_fwd_kernel, traced)[(n_m, b * h)](
        q, k, v, o, lse, m if m is not None else q,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *ms,
        h, lq, lk, d, abs(scale) * LOG2E, HAS_MASK=m is not None, **kw,
    )
    return o, lse


def cog_bwd(do, q, k, v, o, lse, mask: Optional[torch.Tensor], scale: float, traced: bool = False):
    """Backward launchers: returns ``(dq, dk, dv)`` (the scheme per bucket: :data:`BWD_MODE`)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    dk, dv = _grad_like(k), _grad_like(v)
    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    m, ms = _mask_args(mask, b, h, lq, lk)
    mp = m if m is not None else q
    n_n, kw = _plan("dkdv", d, lq, lk)
    if kw["ATOMIC_DQ"]:
        dq_acc = _grad_like(q, torch.float32)
        _launcher(_cog_bwd_delta_kernel, traced)[(triton.cdiv(lq, 64), b * h)](
            o, do, delta, dq_acc, *o.stride(), *do.stride(), *dq_acc.stride(), h, lq, d,
            BLOCK_M=64, BLOCK_D=kw["BLOCK_D"], num_warps=4,
        )
    else:
        dq = dq_acc = _grad_like(q)  # dq_acc: unused by the dk/dv kernel
        n_m, kw_dq = _plan("dq", d, lq, lk)
        _launcher(_cog_bwd_dq_kernel, traced)[(n_m, b * h)](
            q, k, v, o, do, dq, lse, delta, mp,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), *dq.stride(), *ms,
            h, lq, lk, d, abs(scale) * LOG2E, scale, HAS_MASK=m is not None, **kw_dq,
        )
    _launcher(_cog_bwd_dkdv_kernel, traced)[(n_n, b * h)](
        q, k, v, do, dk, dv, dq_acc, lse, delta, mp,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(), *dq_acc.stride(), *ms,
        h, lq, lk, d, abs(scale) * LOG2E, scale, HAS_MASK=m is not None, **kw,
    )
    if kw["ATOMIC_DQ"]:
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
# Two registrations of the same op pair, picked by COMPILE_OP when torch.compile traces the model:
# "triton_op" (cogdiff::cog_attn_fwd/bwd): Inductor traces into the bodies and launches the Triton
# kernels from its generated code (no Python on the hot path); "custom_op"
# (cogdiff::cog_attn_opaque_fwd/bwd): an opaque op whose Python body launches them. Both allocate
# through torch and never sync, so both can be captured in CUDA graphs. The fake implementations
# give the real outputs' shapes and strides without running anything.
COMPILE_OPS = ("triton_op", "custom_op")
COMPILE_OP = "triton_op"


def _fwd_fake(q, k, v, mask, scale):
    b, h, lq, d = q.shape
    return _out_like(q, d), q.new_empty((b, h, lq), dtype=torch.float32)


def _bwd_fake(do, q, k, v, o, lse, mask, scale):
    return _grad_like(q), _grad_like(k), _grad_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, mask)
    ctx.scale = scale


def _define_ops(name: str, define, traced: bool):
    """Register ``cogdiff::{name}_fwd`` / ``_bwd`` with ``define`` (triton_op or custom_op); returns the fwd op."""

    @define(f"cogdiff::{name}_fwd", mutates_args=())
    def fwd(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return cog_fwd(q, k, v, mask, scale, traced=traced)

    @define(f"cogdiff::{name}_bwd", mutates_args=())
    def bwd(
        do: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        o: torch.Tensor,
        lse: torch.Tensor,
        mask: Optional[torch.Tensor],
        scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return cog_bwd(_last_dim_contiguous(do), q, k, v, o, lse, mask, scale, traced=traced)

    def backward(ctx, do, dlse):
        q, k, v, o, lse, mask = ctx.saved_tensors
        dq, dk, dv = bwd(do, q, k, v, o, lse, mask, ctx.scale)
        return dq, dk, dv, None, None

    fwd.register_fake(_fwd_fake)
    bwd.register_fake(_bwd_fake)
    fwd.register_autograd(backward, setup_context=_setup_context)
    return fwd


_FWD_OPS = {
    "triton_op": _define_ops("cog_attn", triton_op, traced=True),
    "custom_op": _define_ops("cog_attn_opaque", torch.library.custom_op, traced=False),
}


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

    ``use_custom_op``: None = the custom op (:data:`COMPILE_OP`) only under ``torch.compile``;
    True/False forces a path.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if scale < 0:  # sign(scale * s) = sign((-q) . k): fold the sign into q, autograd does the rest
        q, scale = -q, -scale
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    if use_custom_op is None:
        use_custom_op = torch.compiler.is_compiling()
    if use_custom_op:
        return _FWD_OPS[COMPILE_OP](q, k, v, attn_mask, scale)[0]
    return _CogAttnFn.apply(q, k, v, attn_mask, scale)


def _why_unsupported(q, k, v, attn_mask, dropout_p, scale=None) -> Optional[str]:
    # Attribute and shape comparisons only: this runs per eager call (traced once under torch.compile).
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return "tensors are not on a CUDA device"
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype} (needs one of float16/bfloat16 for all three)"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        return "q, k, v need 4 dims and equal (batch, heads)"
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1] <= MAX_HEAD_DIM) or k.shape[2] != v.shape[2]:
        return f"head_dim must match across q/k/v and be <= {MAX_HEAD_DIM}; k, v equal tokens"
    if q.shape[0] * q.shape[1] > 65535 or min(q.shape[2], k.shape[2]) == 0:
        return "batch*heads > 65535 or empty sequence"
    if max(q.numel(), k.numel(), v.numel()) >= 2**31:
        return "tensors with >= 2**31 elements (32-bit offsets)"
    if dropout_p > 0.0:
        return "dropout_p > 0"
    if attn_mask is not None and (attn_mask.dtype != torch.bool or not mask_fits(attn_mask.shape, q.shape, k.shape)):
        return "mask must be boolean and broadcast to (B, H, Lq, Lk)"
    if scale is not None and scale == 0:
        return "scale == 0"
    return None


def supports(q, k, v, attn_mask=None, dropout_p=0.0) -> bool:
    """True when the fused kernel handles these inputs (used by ``impl="auto"``)."""
    return _why_unsupported(q, k, v, attn_mask, dropout_p) is None


_warned = set()


def triton_impl(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """``impl="triton"``: the fused kernel, or the reference (warned once per reason) where unsupported."""
    why = _why_unsupported(q, k, v, attn_mask, dropout_p, scale)
    if why is not None:
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"cog_attention(impl='triton'): {why}; using the reference implementation", stacklevel=3)
        return cog_attention_reference(q, k, v, attn_mask, dropout_p, scale)
    return cog_attention_triton(q, k, v, attn_mask, scale)


def auto_impl(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """``impl="auto"`` after :func:`supports` said yes; only scale == 0 (not seen by supports) is left to check."""
    if scale is not None and scale == 0:
        return cog_attention_reference(q, k, v, attn_mask, dropout_p, scale)
    return cog_attention_triton(q, k, v, attn_mask, scale)

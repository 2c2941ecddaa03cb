"""Cog Attention and softmax attention behind one signature, plus a diffusers processor.

Cog Attention (Lv et al., "More Expressive Attention with Negative Weights", arXiv 2411.07176)
replaces softmax(s) by sign(s) * softmax(|s|), so a head can copy (w > 0), delete (w < 0) or
ignore (w ~ 0) tokens at once. ``|w|`` sums to 1 over the keys; the signed row sum lies in [-1, 1].

Everything here works on (batch, heads, tokens, head_dim) tensors. Implementations are chosen by
name through :func:`attention` / :func:`cog_attention` (``impl=``) and a small registry, so a fused
GPU kernel plugs in with :func:`register_cog_impl` without import-time global switches. The
implementations live below this front end in :mod:`cogdiff.kernels` (the written-out reference, re-exported
here, and the optional Triton kernel, registered here on first use); they never import this module.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .kernels.reference import cog_attention_reference, mask_fits

ATTENTION_TYPES = ("softmax", "cog")

# name -> fn(q, k, v, attn_mask, dropout_p, scale) -> out ; "reference" always exists.
_COG_IMPLS: Dict[str, Callable] = {}
# name -> predicate(q, k, v, attn_mask, dropout_p) -> bool : can "auto" use this impl here?
_COG_AUTO: Dict[str, Callable] = {}
# name -> the fn "auto" calls once the predicate said yes (skips fn's own checks); default fn.
_COG_CHECKED: Dict[str, Callable] = {}
_auto_order: Tuple[str, ...] = ()  # names "auto" tries, latest registration first


def register_cog_impl(
    name: str, fn: Callable, supports: Optional[Callable] = None, checked_fn: Optional[Callable] = None
) -> None:
    """Register a Cog Attention implementation under ``name``.

    ``fn(q, k, v, attn_mask, dropout_p, scale)`` must return the same values as the reference.
    If ``supports(q, k, v, attn_mask, dropout_p)`` is given, ``impl="auto"`` picks this
    implementation whenever it returns True (later registrations are tried first), calling
    ``checked_fn`` (same signature; default ``fn``), which may skip the checks ``supports`` made.
    """
    global _auto_order
    _COG_IMPLS[name] = fn
    if supports is not None:
        _COG_AUTO[name] = supports
        _COG_CHECKED[name] = checked_fn or fn
    _auto_order = tuple(reversed(list(_COG_AUTO)))


def unregister_cog_impl(name: str) -> None:
    """Remove a registered implementation (``"reference"`` cannot be removed)."""
    global _auto_order
    if name == "reference":
        raise ValueError("the reference Cog implementation cannot be unregistered")
    _COG_IMPLS.pop(name, None)
    _COG_AUTO.pop(name, None)
    _COG_CHECKED.pop(name, None)
    _auto_order = tuple(reversed(list(_COG_AUTO)))


def available_cog_impls() -> list:
    """Names accepted by ``cog_attention(..., impl=...)`` (besides ``"auto"``)."""
    _load_optional_impls()
    return ["reference", *[n for n in _COG_IMPLS if n != "reference"]]


_optional_impls_loaded = False


def _load_optional_impls() -> None:
    """Import optional kernels once, on first use (never at package import), so a missing Triton or
    GPU never breaks the pure-PyTorch path, and register them here: the kernels never import this module.
    (A plain flag rather than functools.lru_cache, which torch.compile warns about when tracing.)"""
    global _optional_impls_loaded
    if _optional_impls_loaded:
        return
    _optional_impls_loaded = True
    try:
        from .kernels import cog_triton
    except ImportError:  # Triton absent: the reference path remains
        return
    register_cog_impl("triton", cog_triton.triton_impl, cog_triton.supports, checked_fn=cog_triton.auto_impl)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    # Attribute comparisons only (no tensor ops, no syncs): cheap per call, free under torch.compile.
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects (batch, heads, tokens, head_dim) tensors, got q{tuple(q.shape)} "
            f"k{tuple(k.shape)} v{tuple(v.shape)}; reshape with .view(B, N, H, D).transpose(1, 2)"
        )
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise TypeError(
            f"attention needs floating-point q, k, v, got {q.dtype}/{k.dtype}/{v.dtype}; "
            "cast them first, e.g. q.float() or q.to(torch.bfloat16)"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} need the same (batch, heads) in dims 0 and 1; "
            "repeat or expand k and v to q's batch and head count"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}: "
            "q and k need the same head_dim, k and v the same number of tokens"
        )
    if k.shape[-2] == 0:
        raise ValueError(f"k and v have 0 tokens (k{tuple(k.shape)}): attention needs at least one key token")


def _check_mask(attn_mask: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, boolean: bool) -> None:
    if attn_mask is None:
        return
    if boolean and attn_mask.dtype != torch.bool:
        raise TypeError(
            f"cog_attention takes boolean masks only (True = attend), got {attn_mask.dtype}; "
            "an additive float mask has no meaning for sign(s)*softmax(|s|) - pass mask.bool() "
            "or (additive_mask == 0)"
        )
    if not mask_fits(attn_mask.shape, q.shape, k.shape):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (batch, heads, Lq, Lk) = "
            f"{(*q.shape[:3], k.shape[2])}; use (B, 1, 1, Lk) for key padding or (B, H, Lq, Lk)"
        )


register_cog_impl("reference", cog_attention_reference)


def cog_weights(
    q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None
) -> torch.Tensor:
    """The Cog weight matrix ``sign(s) * softmax(|s|)`` (B, H, Lq, Lk) in float32; for analysis."""
    eye = torch.eye(k.shape[-2], dtype=torch.float32, device=k.device)
    v = eye.expand(*k.shape[:-2], -1, -1)
    return cog_attention_reference(q.float(), k.float(), v, attn_mask, 0.0, scale)


def softmax_weights(
    q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None
) -> torch.Tensor:
    """The softmax weight matrix (B, H, Lq, Lk) in float32; for analysis."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def cog_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Cog Attention: ``out = (sign(s) * softmax(|s|)) @ v`` with ``s = q @ k^T * scale``.

    Args:
        q, k, v: (batch, heads, tokens, head_dim) tensors (k and v share their token count).
        attn_mask: optional boolean mask broadcastable to (batch, heads, Lq, Lk); False positions get
            weight exactly 0; a fully masked row returns zeros. Float (additive) masks are rejected.
        dropout_p: dropout on the weights (apply only in training).
        scale: score scale, default ``1 / sqrt(head_dim)``.
        impl: ``"auto"`` (a registered fused kernel when it supports the inputs, else the reference),
            ``"reference"`` or the name of a registered implementation.
    """
    _check_qkv(q, k, v)
    _check_mask(attn_mask, q, k, boolean=True)
    _load_optional_impls()
    if impl == "auto":
        for name in _auto_order:
            if _COG_AUTO[name](q, k, v, attn_mask, dropout_p):
                return _COG_CHECKED[name](q, k, v, attn_mask, dropout_p, scale)
        impl = "reference"
    if impl not in _COG_IMPLS:
        raise ValueError(f"unknown Cog attention impl {impl!r}; choose one of {['auto', *available_cog_impls()]}")
    return _COG_IMPLS[impl](q, k, v, attn_mask, dropout_p, scale)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Softmax attention through ``F.scaled_dot_product_attention`` (same signature as Cog)."""
    _check_qkv(q, k, v)
    _check_mask(attn_mask, q, k, boolean=False)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


_ATTENTION_FNS = {"softmax": softmax_attention, "cog": cog_attention}


def get_attention_fn(attention_type: str) -> Callable:
    """``"softmax"`` or ``"cog"`` -> the function with the shared signature."""
    if attention_type not in _ATTENTION_FNS:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    return _ATTENTION_FNS[attention_type]


def attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None, attention_type="softmax", impl="auto"):
    """Dispatch by name: ``attention(q, k, v, attention_type="cog")``."""
    return get_attention_fn(attention_type)(q, k, v, attn_mask, dropout_p, scale, impl=impl)


class CogAttnProcessor:
    """A diffusers attention processor that computes Cog Attention.

    Set it on any ``diffusers.models.attention_processor.Attention`` module
    (``module.set_processor(CogAttnProcessor())``), or convert every attention module of a model
    with :func:`convert_to_cog_attention`. Handles self- and cross-attention, group/spatial norms,
    residual connections and boolean or additive-0/-inf masks (converted to boolean).
    """

    def __init__(self, impl: str = "auto"):
        self.impl = impl

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch_size, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape

        mask = None
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        hidden_states = cog_attention(query, key, value, attn_mask=mask, scale=attn.scale, impl=self.impl)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def convert_to_cog_attention(model: torch.nn.Module, impl: str = "auto", skip=None) -> int:
    """Install :class:`CogAttnProcessor` on every diffusers ``Attention`` module of ``model``.

    Works on models without ``set_attn_processor`` (e.g. ``DiTTransformer2DModel``).
    ``skip`` is an optional predicate ``skip(name, module) -> bool``. Returns how many were converted.
    """
    from diffusers.models.attention_processor import Attention

    n = 0
    for name, module in model.named_modules():
        if isinstance(module, Attention) and not (skip and skip(name, module)):
            module.set_processor(CogAttnProcessor(impl=impl))
            n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no diffusers Attention modules to convert")
    return n

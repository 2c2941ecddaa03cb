"""U-ViT (Bao et al., "All are Worth Words", CVPR 2023) with softmax or Cog attention, as a diffusers model.

Layout follows U-ViT: tokens = [time token, (class-label token), patches]; learned position
embedding; ``depth // 2`` in-blocks, one mid-block and ``depth // 2`` out-blocks joined by long
skips (concat -> Linear); pre-LN transformer blocks; final LN -> Linear to patch pixels ->
unpatchify -> optional 3x3 conv. Cog Attention (Lv et al., arXiv 2411.07176) replaces softmax in
every block except ``softmax_layers`` (default: the first in-block and the last out-block).
Order of this file: helpers -> embeddings -> attention -> block -> model -> presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..attention import (
    ATTENTION_TYPES,
    available_cog_impls,
    cog_attention,
    cog_weights,
    softmax_attention,
    softmax_weights,
)
from .options import QK_NORMS, check_labels, check_model_args, num_cog_heads, resolve_softmax_layers

# ----------------------------------------------------------------------------------- helpers


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, channels: int, h: int, w: int, p: int) -> torch.Tensor:
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, h, w)


# -------------------------------------------------------------------------------- embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), [cos | sin] as in U-ViT / ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, by a strided conv."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW/p^2, D)


# --------------------------------------------------------------------------------- attention


def split_qkv(qkv_out: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3D) output of the qkv projection -> q, k, v of shape (B, H, N, D/H) each."""
    b, n, three_d = qkv_out.shape
    qkv = qkv_out.reshape(b, n, 3, num_heads, three_d // (3 * num_heads))  # (B, N, 3, H, Dh)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
    return q, k, v


def qk_norm_layer(kind: str, head_dim: int) -> nn.Module:
    """Per-head normalisation of q or k over head_dim, with a learnable scale (SD3: RMSNorm; ViT-22B: LayerNorm)."""
    if kind == "layernorm":
        return nn.LayerNorm(head_dim, eps=1e-6)
    if kind == "rmsnorm":
        return nn.RMSNorm(head_dim, eps=1e-6)
    return nn.Identity()


class UViTAttention(nn.Module):
    """Multi-head self-attention whose weights are softmax or Cog (``attention_type``).

    In a Cog block the first ``cog_heads`` heads use Cog and the others softmax (default: all Cog).
    ``qk_norm`` (``"none"``, ``"layernorm"``, ``"rmsnorm"``) normalises q and k per head before the scores.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attention_type: str = "softmax",
                 qk_norm: str = "none", cog_heads: Optional[int] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {', '.join(QK_NORMS)}, got {qk_norm!r}")
        self.num_heads = num_heads
        self.attention_type = attention_type
        self.num_cog_heads = 0 if attention_type == "softmax" else num_heads if cog_heads is None else cog_heads
        if attention_type == "cog" and not 1 <= self.num_cog_heads <= num_heads:
            raise ValueError(f"cog_heads {cog_heads} must be between 1 and num_heads {num_heads}")
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if qk_norm != "none":  # no modules at all for "none": state dicts stay as before
            self.norm_q = qk_norm_layer(qk_norm, dim // num_heads)
            self.norm_k = qk_norm_layer(qk_norm, dim // num_heads)
        self.proj = nn.Linear(dim, dim)
        self.impl = "auto"  # Cog implementation name, see cogdiff.attention.cog_attention

    def head_types(self) -> List[str]:
        """Per-head attention type: ``num_cog_heads`` x ``"cog"``, then ``"softmax"``."""
        return ["cog"] * self.num_cog_heads + ["softmax"] * (self.num_heads - self.num_cog_heads)

    def qkv_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) block input -> q, k, v (B, H, N, Dh) as the scores see them (after qk_norm)."""
        q, k, v = split_qkv(self.qkv(x), self.num_heads)
        if hasattr(self, "norm_q"):
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v

    def _per_head_type(self, cog_fn: Callable, softmax_fn: Callable, *tensors: torch.Tensor) -> torch.Tensor:
        """Apply ``cog_fn`` to the Cog heads and ``softmax_fn`` to the others (dim 1), concatenated."""
        c = self.num_cog_heads
        if c == self.num_heads or c == 0:
            return (cog_fn if c else softmax_fn)(*tensors)
        cog = cog_fn(*(t[:, :c] for t in tensors))
        soft = softmax_fn(*(t[:, c:] for t in tensors))
        return torch.cat([cog, soft.to(cog.dtype)], dim=1)

    def weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N) float32 attention weights per head (signed for Cog heads); for analysis."""
        return self._per_head_type(cog_weights, softmax_weights, q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv_heads(x)  # 3 x (B, H, N, Dh)

        def cog(q, k, v):
            return cog_attention(q, k, v, impl=self.impl)

        x = self._per_head_type(cog, softmax_attention, q, k, v)  # (B, H, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


# ------------------------------------------------------------------------------------- block


class UViTBlock(nn.Module):
    """Pre-LN transformer block; with ``skip`` it first fuses the long skip: Linear(cat(x, skip))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, attention_type="softmax", skip=False,
                 qk_norm="none", cog_heads=None):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, num_heads, qkv_bias, attention_type, qk_norm, cog_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, 2D) -> (B, N, D)
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        x = x + self.mlp(self.norm2(x))  # (B, N, D)
        return x


# ------------------------------------------------------------------------------------- model


@dataclass
class UViTOutput(BaseOutput):
    """Output of :class:`UViTModel`.

    Parameters:
        sample (`torch.Tensor` of shape `(batch, in_channels, sample_size, sample_size)`):
            The network's prediction (noise for epsilon-prediction, velocity for v-prediction).
    """

    sample: torch.Tensor


class UViTModel(ModelMixin, ConfigMixin):
    """U-ViT diffusion backbone with softmax or Cog attention.

    Parameters:
        sample_size (`int`, defaults to 32): Height and width of the input (pixels or latents).
        in_channels (`int`, defaults to 3): Channels of the input; the output has the same.
        patch_size (`int`, defaults to 2): Patch size p; ``sample_size`` must be divisible by it.
        embed_dim (`int`, defaults to 512): Token width.
        depth (`int`, defaults to 12): U-ViT depth; the model has depth//2 in-, 1 mid-, depth//2 out-blocks.
        num_heads (`int`, defaults to 8): Attention heads per block.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width over ``embed_dim``.
        qkv_bias (`bool`, defaults to False): Bias in the qkv projection.
        mlp_time_embed (`bool`, defaults to False): Pass the sinusoidal time embedding through an MLP.
        num_classes (`int`, *optional*): Number of classes for class-conditional models (``None`` =
            unconditional). Label ``num_classes`` is the "null" label for classifier-free guidance.
        use_conv_out (`bool`, defaults to True): Final 3x3 conv after unpatchify.
        attention_type (`str`, defaults to "softmax"): ``"softmax"`` or ``"cog"``.
        softmax_layers (`List[int]` or `str`, *optional*): Blocks (0 .. 2*(depth//2)) that keep softmax when
            ``attention_type="cog"``: a list of indices or a name in ``SOFTMAX_PLACEMENTS`` (``"first_last"``,
            ``"first2_last2"``, ``"first_last_mid"``, ``"in_blocks"``, ``"out_blocks"``, ``"none"`` = Cog
            everywhere, ``"all"``, ...; names joined by ``+`` are united, e.g. ``"in_blocks+first_last"``).
            Default: ``"first_last"`` (the paper). The config keeps what was given; :meth:`attention_types`
            reports the result.
        timestep_scale (`float`, defaults to 1.0): Multiplier on the timestep before embedding (U-ViT's
            continuous-time models see ``t * 999``; discrete schedulers already pass 0..999).
        qk_norm (`str`, defaults to "none"): ``"layernorm"`` or ``"rmsnorm"`` normalises q and k per head
            (over head_dim, learnable scale) before the scores, in softmax and Cog blocks alike.
        cog_heads (`float`, *optional*): Fraction in (0, 1] of the heads of each Cog block that use Cog (the
            first ones); the others use softmax. Must be a whole number of heads. Default: all.
    The defaults are U-ViT-S/2 for CIFAR-10 (44.3M parameters).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        patch_size: int = 2,
        embed_dim: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        num_classes: Optional[int] = None,
        use_conv_out: bool = True,
        attention_type: str = "softmax",
        softmax_layers: Union[List[int], str, None] = None,
        timestep_scale: float = 1.0,
        qk_norm: str = "none",
        cog_heads: Optional[float] = None,
    ):
        super().__init__()
        check_model_args(locals())
        self.softmax_layers = resolve_softmax_layers(softmax_layers, depth, attention_type)
        n_cog_heads = num_cog_heads(cog_heads, num_heads)

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed
            else nn.Identity()
        )
        self.label_emb = nn.Embedding(num_classes + 1, embed_dim) if num_classes is not None else None
        self.extras = 1 + (num_classes is not None)
        num_patches = (sample_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        def block(i: int, skip: bool) -> UViTBlock:
            kind = "softmax" if i in self.softmax_layers else attention_type
            return UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, kind, skip, qk_norm, n_cog_heads)

        half = depth // 2
        self.in_blocks = nn.ModuleList([block(i, False) for i in range(half)])
        self.mid_block = block(half, False)
        self.out_blocks = nn.ModuleList([block(half + 1 + i, True) for i in range(half)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_channels)
        self.conv_out = nn.Conv2d(in_channels, in_channels, 3, padding=1) if use_conv_out else nn.Identity()
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)

    @property
    def blocks(self) -> List[UViTBlock]:
        """All blocks in order: in-blocks, mid-block, out-blocks (index = ``softmax_layers`` index)."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def attention_types(self) -> List[str]:
        """Per-block attention type, e.g. ``['softmax', 'cog', ..., 'softmax']`` (a block with ``cog_heads``
        < 1 counts as ``"cog"``; ``block.attn.head_types()`` gives its heads)."""
        return [b.attn.attention_type for b in self.blocks]

    def set_cog_impl(self, impl: str) -> None:
        """Choose the Cog Attention implementation (``"auto"``, ``"reference"``, a registered kernel)."""
        choices = ["auto", *available_cog_impls()]
        if impl not in choices:
            raise ValueError(f"Cog attention impl {impl!r} is not available here; choose one of {', '.join(choices)}")
        for b in self.blocks:
            b.attn.impl = impl

    def _check_inputs(self, sample, timestep, class_labels):
        c, s = self.config.in_channels, self.config.sample_size
        if sample.dim() != 4 or sample.shape[1] != c or sample.shape[2] != s or sample.shape[3] != s:
            raise ValueError(f"sample must have shape (batch, {c}, {s}, {s}), got {tuple(sample.shape)}")
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if t.dim() == 0:
            t = t.expand(b)
        elif t.shape != (b,):
            raise ValueError(f"timestep must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        if self.label_emb is None and class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes=None)")
        if self.label_emb is not None:
            if class_labels is None:
                raise ValueError(f"this model is class-conditional: pass class_labels of shape ({b},)")
            class_labels = torch.as_tensor(class_labels, device=sample.device)
            if class_labels.dim() == 0:
                class_labels = class_labels.expand(b)
            if class_labels.shape != (b,):
                raise ValueError(f"class_labels must have shape ({b},), got {tuple(class_labels.shape)}")
            # the value check syncs with the device: skipped in accelerator training steps and compiled graphs
            if not torch.compiler.is_compiling() and (class_labels.device.type == "cpu" or not self.training):
                check_labels(class_labels, self.config.num_classes)
            class_labels = class_labels.long()
        return t, class_labels

    def _run_block(self, blk: UViTBlock, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(blk, x, skip)
        return blk(x, skip)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        class_labels: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[UViTOutput, tuple]:
        """Predict noise (or velocity) for ``sample`` at ``timestep``.

        Args:
            sample: (B, in_channels, sample_size, sample_size) noisy input.
            timestep: scalar (python number or 0-dim tensor) or (B,) tensor of timesteps.
            class_labels: (B,) labels in [0, num_classes]; ``num_classes`` is the null label.
            return_dict: return :class:`UViTOutput` (True) or a 1-tuple (False).
        """
        t, class_labels = self._check_inputs(sample, timestep, class_labels)
        _, _, h, w = sample.shape
        x = self.patch_embed(sample)  # (B, L, D)
        t_tok = self.time_embed(timestep_embedding(t * self.config.timestep_scale, self.config.embed_dim))
        tokens = [t_tok.to(x.dtype).unsqueeze(1)]  # (B, 1, D)
        if self.label_emb is not None:
            tokens.append(self.label_emb(class_labels).unsqueeze(1))  # (B, 1, D)
        x = torch.cat([*tokens, x], dim=1) + self.pos_embed  # (B, extras + L, D)

        skips = []
        for blk in self.in_blocks:
            x = self._run_block(blk, x)  # (B, extras + L, D)
            skips.append(x)
        x = self._run_block(self.mid_block, x)  # (B, extras + L, D)
        for blk in self.out_blocks:
            x = self._run_block(blk, x, skips.pop())  # (B, extras + L, D)

        x = self.decoder_pred(self.norm(x))  # (B, extras + L, p*p*C)
        x = x[:, self.extras :]  # (B, L, p*p*C)
        x = unpatchify(x, self.config.in_channels, h, w, self.config.patch_size)  # (B, C, H, W)
        x = self.conv_out(x)  # (B, C, H, W)
        if not return_dict:
            return (x,)
        return UViTOutput(sample=x)


# ------------------------------------------------------------------------------------ presets

# U-ViT's sizes (Bao et al., Table / configs): name -> (embed_dim, depth, num_heads).
UVIT_PRESETS = {
    "S": dict(embed_dim=512, depth=12, num_heads=8),
    "S-Deep": dict(embed_dim=512, depth=16, num_heads=8),
    "M": dict(embed_dim=768, depth=16, num_heads=12),
    "L": dict(embed_dim=1024, depth=20, num_heads=16),
    "H": dict(embed_dim=1152, depth=28, num_heads=16),
}


def uvit_config(name: str, **overrides) -> dict:
    """Config dict for a preset like ``"S/2"`` (size/patch), with ``overrides`` applied."""
    size, _, patch = name.partition("/")
    if size not in UVIT_PRESETS or not patch.isdigit():
        raise ValueError(f"unknown U-ViT preset {name!r}; use SIZE/PATCH with SIZE in {list(UVIT_PRESETS)}, e.g. 'S/2'")
    return {**UVIT_PRESETS[size], "patch_size": int(patch), **overrides}


def uvit(name: str = "S/2", **overrides) -> UViTModel:
    """Build a preset, e.g. ``uvit("S/2", attention_type="cog")`` (U-ViC-S/2 for CIFAR-10)."""
    return UViTModel(**uvit_config(name, **overrides))

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
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..attention import ATTENTION_TYPES, available_cog_impls, get_attention_fn


# ----------------------------------------------------------------------------------- helpers


def num_blocks(depth: int) -> int:
    """Blocks in a U-ViT of ``depth``: depth//2 in-blocks + 1 mid-block + depth//2 out-blocks."""
    return 2 * (depth // 2) + 1


def default_softmax_layers(depth: int, attention_type: str) -> List[int]:
    """The paper's placement: for Cog, the first in-block (0) and the last out-block keep softmax."""
    return [0, num_blocks(depth) - 1] if attention_type == "cog" else []


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


class UViTAttention(nn.Module):
    """Multi-head self-attention whose weights are softmax or Cog (``attention_type``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attention_type: str = "softmax"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        self.num_heads = num_heads
        self.attention_type = attention_type
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.impl = "auto"  # Cog implementation name, see cogdiff.attention.cog_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        x = get_attention_fn(self.attention_type)(q, k, v, impl=self.impl)  # (B, H, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


# ------------------------------------------------------------------------------------- block


class UViTBlock(nn.Module):
    """Pre-LN transformer block; with ``skip`` it first fuses the long skip: Linear(cat(x, skip))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, attention_type="softmax", skip=False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, num_heads, qkv_bias, attention_type)
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
        softmax_layers (`List[int]`, *optional*): Block indices (0 .. 2*(depth//2)) that keep softmax
            when ``attention_type="cog"``. Default: the first in-block and the last out-block.
        timestep_scale (`float`, defaults to 1.0): Multiplier on the timestep before embedding (U-ViT's
            continuous-time models see ``t * 999``; discrete schedulers already pass 0..999).
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
        softmax_layers: Optional[List[int]] = None,
        timestep_scale: float = 1.0,
    ):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} must be divisible by patch_size {patch_size}")
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        n_blocks = num_blocks(depth)
        if softmax_layers is None:
            softmax_layers = default_softmax_layers(depth, attention_type)
        bad = [i for i in softmax_layers if not 0 <= i < n_blocks]
        if bad:
            raise ValueError(f"softmax_layers {bad} out of range: this depth has blocks 0..{n_blocks - 1}")
        self.softmax_layers = sorted(set(softmax_layers))

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
            return UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, kind, skip=skip)

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

    @property
    def blocks(self) -> List[UViTBlock]:
        """All blocks in order: in-blocks, mid-block, out-blocks (index = ``softmax_layers`` index)."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def attention_types(self) -> List[str]:
        """Per-block attention type, e.g. ``['softmax', 'cog', ..., 'softmax']``."""
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
            class_labels = torch.as_tensor(class_labels, device=sample.device).long()
            if class_labels.dim() == 0:
                class_labels = class_labels.expand(b)
            if class_labels.shape != (b,):
                raise ValueError(f"class_labels must have shape ({b},), got {tuple(class_labels.shape)}")
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

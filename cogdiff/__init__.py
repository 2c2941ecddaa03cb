"""cogdiff: diffusion with Cog Attention (attention with negative weights) in a U-ViT backbone."""

from .attention import (
    CogAttnProcessor,
    cog_attention,
    convert_to_cog_attention,
    register_cog_impl,
    softmax_attention,
)
from .models import UViTModel, UViTOutput, uvit, uvit_config
from .pipelines import UViTPipeline

__version__ = "0.1.0"
__all__ = [
    "CogAttnProcessor",
    "UViTModel",
    "UViTOutput",
    "UViTPipeline",
    "cog_attention",
    "convert_to_cog_attention",
    "register_cog_impl",
    "softmax_attention",
    "uvit",
    "uvit_config",
]

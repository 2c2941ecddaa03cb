from .options import QK_NORMS, SOFTMAX_PLACEMENTS, default_softmax_layers, num_blocks, resolve_softmax_layers
from .uvit import UVIT_PRESETS, UViTModel, UViTOutput, uvit, uvit_config

__all__ = [
    "QK_NORMS",
    "SOFTMAX_PLACEMENTS",
    "UViTModel",
    "UViTOutput",
    "UVIT_PRESETS",
    "default_softmax_layers",
    "num_blocks",
    "resolve_softmax_layers",
    "uvit",
    "uvit_config",
]

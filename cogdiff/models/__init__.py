from .uvit import UVIT_PRESETS, UViTModel, UViTOutput, default_softmax_layers, num_blocks, uvit, uvit_config

__all__ = ["UViTModel", "UViTOutput", "UVIT_PRESETS", "uvit", "uvit_config", "num_blocks", "default_softmax_layers"]

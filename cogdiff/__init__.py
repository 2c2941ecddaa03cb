"""cogdiff: diffusion with Cog Attention (attention with negative weights) in a U-ViT backbone.

The names below are loaded on first use (PEP 562), so ``import cogdiff.config`` (reading a YAML file) does not
pay for torch and diffusers.
"""

import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "CogAttnProcessor": "attention",
    "cog_attention": "attention",
    "convert_to_cog_attention": "attention",
    "register_cog_impl": "attention",
    "softmax_attention": "attention",
    "UViTModel": "models",
    "UViTOutput": "models",
    "uvit": "models",
    "uvit_config": "models",
    "UViTPipeline": "pipelines",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cogdiff' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])

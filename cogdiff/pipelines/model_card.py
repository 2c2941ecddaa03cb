"""A short model card (``README.md``) for an exported pipeline folder, so the folder explains itself.

The card has the Hub's YAML header (``library_name: diffusers``, tags) and lists the architecture, the
parameter count, the attention type of every block, the scheduler, pixel or latent space, and what the
caller knows about training (data, steps, FID with its protocol, the command), plus how to load it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from huggingface_hub import ModelCardData

from ..io import atomic_write_text

MODEL_CARD = "README.md"
# Training facts a caller may pass (any other key is listed as given); label in the card for each.
INFO_LABELS = {
    "dataset": "Training data",
    "train_steps": "Training steps",
    "batch_size": "Batch size",
    "fid": "FID",
    "fid_protocol": "FID protocol",
    "command": "Command",
}
ARCH_KEYS = ("sample_size", "in_channels", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
             "num_classes", "attention_type", "softmax_layers")


def attention_summary(types) -> str:
    """``["softmax", "cog", "cog"]`` -> ``"softmax, cog, cog (cog: 2, softmax: 1)"``."""
    counts = ", ".join(f"{t}: {types.count(t)}" for t in sorted(set(types)))
    return f"{', '.join(types)} ({counts})"


def _info_lines(info: Dict[str, Any]) -> list:
    lines = []
    for key, value in info.items():
        if value is None:
            continue
        label = INFO_LABELS.get(key, key.replace("_", " ").capitalize())
        text = f"`{value}`" if key == "command" else str(value)
        lines.append(f"- {label}: {text}")
    return lines


def model_card_text(pipeline, **info) -> str:
    """The card of ``pipeline`` (a UViTPipeline) with the training facts ``info`` (see ``INFO_LABELS``)."""
    model = pipeline.transformer
    cfg = model.config
    conditional = cfg.num_classes is not None
    data = ModelCardData(library_name="diffusers", tags=["cogdiff", "u-vit", f"{cfg.attention_type}-attention"],
                         pipeline_tag="unconditional-image-generation" if not conditional else None)
    labels = f"{cfg.num_classes} classes (label {cfg.num_classes} = null label)" if conditional else "none"
    space = "pixel space" if pipeline.vae is None else (
        f"latent space of an AutoencoderKL (scaling factor {pipeline.vae.config.scaling_factor})")
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# U-ViT ({cfg.attention_type} attention), {cfg.sample_size}x{cfg.sample_size}, {space}", "",
        "A cogdiff `UViTPipeline`: a U-ViT denoiser whose attention is softmax or Cog Attention "
        "(weights may be negative: w = sign(s) softmax(|s|)).", "",
        "## Architecture", "",
        f"- Parameters: {sum(p.numel() for p in model.parameters()):,}",
        *[f"- {k}: {getattr(cfg, k)}" for k in ARCH_KEYS if hasattr(cfg, k)],
        f"- Attention per block (in-blocks, mid-block, out-blocks): {attention_summary(model.attention_types())}",
        f"- Scheduler: {type(pipeline.scheduler).__name__}",
        f"- Conditioning: {labels}",
        "",
    ]
    facts = _info_lines(info)
    lines += ["## Training", "", *(facts or ["- Not recorded."]), ""]
    call = "class_labels=[0, 1, 2, 3]" if conditional else "batch_size=4"
    lines += ["## Use", "", "```python", "from cogdiff import UViTPipeline", "",
              'pipe = UViTPipeline.from_pretrained("path/to/this/folder")',
              f"images = pipe({call}, num_inference_steps=50).images", "```", ""]
    return "\n".join(lines)


def write_model_card(directory, pipeline, **info) -> str:
    """Write ``directory/README.md`` for ``pipeline`` (atomically); returns its path. Call it again with
    more facts (e.g. the FID once it is measured) to update the card."""
    path = os.path.join(os.fspath(directory), MODEL_CARD)
    atomic_write_text(path, model_card_text(pipeline, **info))
    return path


def check_model_card_info(info: Optional[dict]) -> dict:
    """``save_pretrained(model_card=...)``: a dict with string keys (values are written as text)."""
    if info is None:
        return {}
    if not isinstance(info, dict) or not all(isinstance(k, str) for k in info):
        raise TypeError(f"model_card must be a dict with string keys (e.g. {{'dataset': 'cifar10'}}), got {info!r}")
    return info

"""U-ViT options: block layout, named softmax placements, the Cog/softmax head split, argument checks.

Pure functions of the constructor arguments of :class:`~cogdiff.models.UViTModel`; each bad value gives a
one-line ``ValueError`` that names the fix.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from ..attention import ATTENTION_TYPES


def num_blocks(depth: int) -> int:
    """Blocks in a U-ViT of ``depth``: depth//2 in-blocks + 1 mid-block + depth//2 out-blocks."""
    return 2 * (depth // 2) + 1


# Named softmax placements: number of blocks n -> block indices that keep softmax in a Cog model.
SOFTMAX_PLACEMENTS: Dict[str, Callable[[int], List[int]]] = {
    "first_last": lambda n: [0, n - 1],  # the paper's default
    "first2_last2": lambda n: [0, 1, n - 2, n - 1],
    "first_last_mid": lambda n: [0, n // 2, n - 1],
    "first2_last2_mid": lambda n: [0, 1, n // 2, n - 2, n - 1],
    "mid": lambda n: [n // 2],
    "in_blocks": lambda n: list(range(n // 2)),  # every in-block: with "+first_last", Cog in the mid + out-blocks
    "out_blocks": lambda n: list(range(n // 2 + 1, n)),  # every out-block: with "+first_last", Cog in the in + mid
    "none": lambda n: [],  # Cog everywhere
    "all": lambda n: list(range(n)),  # softmax everywhere
}
QK_NORMS = ("none", "layernorm", "rmsnorm")


def default_softmax_layers(depth: int, attention_type: str) -> List[int]:
    """The paper's placement: for Cog, the first in-block (0) and the last out-block keep softmax."""
    return SOFTMAX_PLACEMENTS["first_last"](num_blocks(depth)) if attention_type == "cog" else []


def resolve_softmax_layers(spec: Union[List[int], str, None], depth: int, attention_type: str) -> List[int]:
    """Block indices that keep softmax: ``spec`` is a list of indices, a name in :data:`SOFTMAX_PLACEMENTS`
    (names joined by ``+`` are united, e.g. ``"first_last+mid"``) or ``None`` (the paper's default)."""
    n = num_blocks(depth)
    if spec is None:
        layers = default_softmax_layers(depth, attention_type)
    elif isinstance(spec, str):
        unknown = [p for p in spec.split("+") if p not in SOFTMAX_PLACEMENTS]
        if unknown:
            raise ValueError(f"unknown softmax_layers {spec!r}: use a list of block indices or one of "
                             f"{', '.join(SOFTMAX_PLACEMENTS)} (join names with '+', e.g. 'first_last+mid')")
        layers = [i for p in spec.split("+") for i in SOFTMAX_PLACEMENTS[p](n)]
    else:
        layers = list(spec)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"softmax_layers must be block indices (integers) or a placement name, got {spec!r}")
    bad = sorted({i for i in layers if not 0 <= i < n})
    if bad:
        raise ValueError(f"softmax_layers {bad} out of range: this depth has blocks 0..{n - 1}")
    return sorted(set(layers))


def num_cog_heads(cog_heads: Optional[float], num_heads: int) -> int:
    """Heads of a Cog block that use Cog for a fraction ``cog_heads`` in (0, 1] (``None`` = all of them)."""
    if cog_heads is None:
        return num_heads
    number = isinstance(cog_heads, (int, float)) and not isinstance(cog_heads, bool)
    count = round(cog_heads * num_heads) if number else 0
    if not number or not 0 < cog_heads <= 1 or abs(cog_heads * num_heads - count) > 1e-6:
        raise ValueError(f"cog_heads must be a fraction in (0, 1] that is a whole number of the {num_heads} heads "
                         f"(e.g. {1 / 2 if num_heads % 2 == 0 else 1.0}), got {cog_heads!r}")
    return count


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """One-line ``ValueError`` unless every label is a whole number in [0, num_classes] (num_classes = null label)."""
    if labels.numel() == 0:
        return
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"class_labels must be integers in [0, {num_classes}], got a {labels.dtype} tensor")
    bad = (labels < 0) | (labels > num_classes)
    if labels.is_floating_point():
        bad |= labels != labels.round()  # also NaN
    if bad.any().item():  # one host sync
        raise ValueError(f"class_labels must be whole numbers in [0, {num_classes}] ({num_classes} = the null label "
                         f"for guidance), got {labels[bad][:5].tolist()}")


def check_model_args(args: Dict[str, Any]) -> None:
    """One-line ``ValueError`` for constructor values that cannot build a U-ViT (before any module is made)."""
    for key in ("sample_size", "in_channels", "patch_size", "embed_dim", "depth", "num_heads"):
        v = args[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    if args["sample_size"] % args["patch_size"]:
        raise ValueError(f"sample_size {args['sample_size']} must be divisible by patch_size {args['patch_size']}")
    if args["embed_dim"] % args["num_heads"]:
        raise ValueError(f"embed_dim {args['embed_dim']} must be divisible by num_heads {args['num_heads']}")
    nc = args["num_classes"]
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise ValueError(f"num_classes must be a positive integer or None (unconditional), got {nc!r}")
    if not isinstance(args["mlp_ratio"], (int, float)) or int(args["embed_dim"] * args["mlp_ratio"]) < 1:
        raise ValueError(f"mlp_ratio must be positive (hidden width embed_dim * mlp_ratio >= 1), "
                         f"got {args['mlp_ratio']!r}")
    if not isinstance(args["timestep_scale"], (int, float)) or not math.isfinite(args["timestep_scale"]):
        raise ValueError(f"timestep_scale must be a finite number, got {args['timestep_scale']!r}")
    if args["attention_type"] not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {args['attention_type']!r}")
    if args["qk_norm"] not in QK_NORMS:
        raise ValueError(f"qk_norm must be one of {', '.join(QK_NORMS)}, got {args['qk_norm']!r}")
    if args["cog_heads"] is not None and args["attention_type"] != "cog":
        raise ValueError("cog_heads splits the heads of Cog blocks; set attention_type='cog' or leave cog_heads unset")

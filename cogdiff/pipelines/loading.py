"""Load a saved UViTPipeline folder without running any code from it.

``DiffusionPipeline.from_pretrained`` imports whatever module ``model_index.json`` names (and, with
``trust_remote_code=True``, ``.py`` files inside the folder), so a copied folder can carry code that runs
on load. Here ``model_index.json`` is only read: the transformer is built with cogdiff's ``UViTModel``,
the scheduler only with a diffusers scheduler class, the VAE only as diffusers' ``AutoencoderKL``,
weights only from ``.safetensors``; a folder naming anything else is refused.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple, Union

import diffusers
import torch
from diffusers import AutoencoderKL, SchedulerMixin
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME

from ..models.uvit import UViTModel

MODEL_INDEX = "model_index.json"
COMPONENTS = ("transformer", "scheduler", "vae")  # what a UViTPipeline folder may hold
DtypeArg = Optional[Union[torch.dtype, Dict[str, torch.dtype]]]


def read_model_index(folder: str) -> dict:
    """The parsed ``model_index.json`` of a local pipeline folder (one-line errors for anything else)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a local folder: pass a pipeline folder saved with save_pretrained "
                                "(download a Hub repository first, e.g. with huggingface_hub.snapshot_download)")
    path = os.path.join(folder, MODEL_INDEX)
    if not os.path.isfile(path):
        inner = sorted(d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, MODEL_INDEX)))
        hint = f"load {os.path.join(folder, inner[0])!r} instead" if inner else \
            "save one with UViTPipeline.save_pretrained"
        raise FileNotFoundError(f"{folder!r} is not a pipeline folder (no {MODEL_INDEX}): {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}; re-save the pipeline") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a JSON object; re-save the pipeline")
    return index


def _spec(index: dict, name: str, path: str) -> Tuple[Optional[str], Optional[str]]:
    value = index.get(name, [None, None])
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ValueError(f"{path}: {name!r} must be [library, class name], got {value!r}")
    return value[0], value[1]


def scheduler_class(library, class_name, path: str) -> type:
    """The diffusers scheduler class ``class_name``; anything else is refused."""
    obj = getattr(diffusers, class_name, None) if library == "diffusers" and isinstance(class_name, str) else None
    if not (isinstance(obj, type) and issubclass(obj, SchedulerMixin)):
        raise ValueError(f"{path} names scheduler {[library, class_name]}: only diffusers scheduler classes are "
                         "loaded (no code from the folder); fix model_index.json or use a trusted copy of the pipeline")
    return obj


def component_classes(index: dict, folder: str, pipeline_name: str, shim_name: str) -> Dict[str, Optional[type]]:
    """Check ``model_index.json`` and map each component to the class that will load it (None: absent)."""
    path = os.path.join(folder, MODEL_INDEX)
    unknown = sorted(k for k in index if not k.startswith("_") and k not in COMPONENTS)
    if unknown:
        name = unknown[0]
        raise ValueError(f"{path} names component {name!r} {index[name]!r}: a {pipeline_name} folder holds only "
                         f"{', '.join(COMPONENTS)}; refusing to load it")
    pipe_spec = index.get("_class_name")
    if pipe_spec not in (pipeline_name, [shim_name, pipeline_name]):
        raise ValueError(f"{path} is for pipeline {pipe_spec!r}, not {pipeline_name}; load it with the class it names")
    classes: Dict[str, Optional[type]] = {}
    library, class_name = _spec(index, "transformer", path)
    if not (isinstance(library, str) and library.split(".")[0] == "cogdiff" and class_name == UViTModel.__name__):
        raise ValueError(f"{path} names transformer {[library, class_name]}: only cogdiff's UViTModel is loaded")
    classes["transformer"] = UViTModel
    classes["scheduler"] = scheduler_class(*_spec(index, "scheduler", path), path)
    library, class_name = _spec(index, "vae", path)
    if (library, class_name) == (None, None):
        classes["vae"] = None
    elif (library, class_name) == ("diffusers", AutoencoderKL.__name__):
        classes["vae"] = AutoencoderKL
    else:
        raise ValueError(f"{path} names vae {[library, class_name]}: only diffusers' AutoencoderKL is loaded")
    return classes


def weights_path(subdir: str, variant: Optional[str]) -> Optional[str]:
    """The safetensors file (or shard index) of ``variant`` in ``subdir``, or None if there is none."""
    for name in (SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME):
        if variant is not None:
            stem, ext = name.split(".", 1)
            name = f"{stem}.{variant}.{ext}"
        if os.path.isfile(os.path.join(subdir, name)):
            return os.path.join(subdir, name)
    return None


def load_model(cls: type, folder: str, name: str, variant: Optional[str], dtype: Optional[torch.dtype],
               variant_required: bool):
    """``cls.from_pretrained`` of ``folder/name`` from safetensors, with errors that name the file."""
    subdir = os.path.join(folder, name)
    if variant is not None and weights_path(subdir, variant) is None and not variant_required:
        variant = None  # e.g. a VAE saved once, beside transformer weights of several variants
    file = weights_path(subdir, variant)
    if file is None:
        suffix = f".{variant}.safetensors" if variant is not None else ".safetensors"
        expected = os.path.join(subdir, SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", suffix))
        raise FileNotFoundError(f"{expected} is missing: copy the whole pipeline folder again or re-save it")
    try:
        return cls.from_pretrained(folder, subfolder=name, variant=variant, torch_dtype=dtype, use_safetensors=True)
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {file} (truncated or corrupt?): {reason}; "
                         "re-save or copy the pipeline again") from None


def dtype_for(torch_dtype: DtypeArg, name: str) -> Optional[torch.dtype]:
    """diffusers' ``torch_dtype``: one dtype for all models or ``{component: dtype, "default": dtype}``."""
    if isinstance(torch_dtype, dict):
        return torch_dtype.get(name, torch_dtype.get("default"))
    return torch_dtype


def load_components(folder: str, pipeline_name: str, shim_name: str, variant: Optional[str] = None,
                    torch_dtype: DtypeArg = None, given: Optional[dict] = None) -> dict:
    """The components of a saved folder, ready for ``pipeline_cls(**components)``; ``given`` components
    (already built objects) are used instead of loading those from disk."""
    folder = os.fspath(folder)
    given = dict(given or {})
    extra = sorted(set(given) - set(COMPONENTS))
    if extra:
        raise TypeError(f"unexpected argument {extra[0]!r}; {pipeline_name}.from_pretrained takes variant=, "
                        f"torch_dtype= and components ({', '.join(COMPONENTS)})")
    classes = component_classes(read_model_index(folder), folder, pipeline_name, shim_name)
    out = {}
    for name, cls in classes.items():
        if name in given:
            out[name] = given[name]
        elif cls is None:
            out[name] = None
        elif issubclass(cls, SchedulerMixin):
            try:
                out[name] = cls.from_pretrained(folder, subfolder=name)
            except OSError as e:
                raise ValueError(f"cannot load {os.path.join(folder, name)}: {str(e).strip()}") from None
        else:
            out[name] = load_model(cls, folder, name, variant, dtype_for(torch_dtype, name), name == "transformer")
    return out

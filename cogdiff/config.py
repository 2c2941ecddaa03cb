"""Training configuration: typed sections loaded from YAML, with ``base:`` inheritance and dotted overrides.

    cfg = load_config("configs/cifar10_uvit_s2_cog.yaml", ["train.steps=1000", "model.attention_type=cog"])

A YAML file has the sections ``model``, ``data``, ``diffusion``, ``optim``, ``train`` and ``sample`` (each
optional) plus ``name`` and ``base`` (a path, relative to the file, whose values this file overrides; chains
are allowed). Unknown keys are errors that list the valid ones. ``model`` holds ``preset`` (a U-ViT size like
``"S/2"`` or null), ``vae`` (path of a diffusers ``AutoencoderKL`` folder for latent models) and any keyword
argument of :class:`~cogdiff.models.UViTModel`; ``sample_size`` and ``in_channels`` left out are filled from
the data at start-up.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .schedulers import SCHEDULER_ALIASES, SCHEDULERS

DATA_KINDS = ("cifar10", "imagefolder", "fashion_mnist", "synthetic", "latents")  # the loaders of cogdiff.data
BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISION = ("no", "bf16", "fp16")
SAMPLE_SCHEDULER_NAMES = tuple(SCHEDULERS)
MODEL_EXTRA_KEYS = ("preset", "vae")  # model-section keys that are not UViTModel arguments


@dataclass
class DataConfig:
    kind: str = "fashion_mnist"  # one of DATA_KINDS
    path: Optional[str] = None  # dataset location; None = the kind's default (see cogdiff.data)
    split: str = "train"  # train | test
    resolution: Optional[int] = None  # imagefolder: resize the shorter side + center crop; synthetic: size
    random_flip: bool = True  # random horizontal flip of each example
    keep_on_device: bool = False  # hold the whole uint8 set on the training device (GPU)
    cache_dir: Optional[str] = None  # decoded-array cache when the data folder is read-only
    download: bool = False  # cifar10 only: let torchvision download cifar-10-batches-py
    limit: Optional[int] = None  # use a fixed random subset of this many examples


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    clip_sample: Optional[bool] = None  # DDPM/DDIM x0 clipping when sampling; None = on for pixels, off for latents


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.03
    betas: List[float] = field(default_factory=lambda: [0.99, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 2500  # linear warm-up, then constant (diffusers "constant_with_warmup")
    grad_clip: float = 0.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    # auto (fused on CUDA, the default foreach update elsewhere) | true | false: torch's fused AdamW kernel
    fused: Union[bool, str] = "auto"


@dataclass
class TrainConfig:
    steps: int = 500_000
    batch_size: int = 128  # global batch per optimizer step (all processes x grad_accum)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    compile: bool = False  # torch.compile the model (inductor)
    # auto (on when compiling on CUDA) | true | false: compile with mode="reduce-overhead"
    cuda_graphs: Union[bool, str] = "auto"
    gradient_checkpointing: bool = False
    cog_impl: str = "auto"  # Cog attention implementation in training: auto | reference | a registered kernel (triton)
    seed: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay_n = min(ema_decay, (1 + n) / (10 + n)) after n updates
    p_uncond: float = 0.1  # class-conditional models: label -> null label with this probability
    checkpoint_every: int = 5000
    keep_last: int = 3  # checkpoints kept (0 = all)
    log_every: int = 100
    sample_every: int = 5000  # EMA sample grid; 0 = only at the end
    fid_every: int = 0  # 0 = no FID during training
    fid_raw: bool = False  # at each fid_every step also score the raw (non-EMA) weights -> fid_raw.jsonl
    diag_every: int = 0  # diagnostics.jsonl on a fixed probe batch every N steps; 0 = off
    diag_probe_size: int = 64  # probe images (from the training data, drawn by their own generator)
    diag_probe_seed: int = 0  # the probe's own seed (images, flips, noise, timesteps): the same probe for every
    # train.seed by default, so runs of different seeds are measured on the same samples
    fid_num_images: int = 10_000
    fid_ref: Optional[str] = None  # reference statistics (.npz); None: built from the training data (cached)
    fid_weights: Optional[str] = None  # Inception weights (None = the evaluator's default lookup)
    output_dir: Optional[str] = None  # None = runs/<name>
    resume: Optional[str] = None  # None | "latest" | a checkpoint directory
    resume_force: bool = False  # resume even though data.* / train.seed / batch_size / grad_accum changed (not exact)


@dataclass
class SampleConfig:
    scheduler: str = "dpm++"  # grids, FID and the exported pipeline; a name in cogdiff.schedulers.SCHEDULERS
    num_inference_steps: int = 50
    guidance_scale: float = 1.0  # eps_u + w (eps_c - eps_u); 1 = no guidance
    grid_size: int = 64  # images in each preview grid
    batch_size: int = 250  # FID sampling batch
    seed: int = 0


SECTIONS = {
    "data": DataConfig,
    "diffusion": DiffusionConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}
CHOICES = {
    ("data", "kind"): DATA_KINDS,
    ("data", "split"): ("train", "test"),
    ("diffusion", "beta_schedule"): BETA_SCHEDULES,
    ("diffusion", "prediction_type"): PREDICTION_TYPES,
    ("train", "mixed_precision"): MIXED_PRECISION,
    ("train", "cuda_graphs"): ("auto", "true", "false"),
    ("optim", "fused"): ("auto", "true", "false"),
    ("sample", "scheduler"): SAMPLE_SCHEDULER_NAMES,
}


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message says what to change."""


@dataclass
class Config:
    name: str = "run"
    model: Dict[str, Any] = field(default_factory=lambda: {"preset": "S/2"})
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir or os.path.join("runs", self.name))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "model": dict(self.model)}
        for sec in SECTIONS:
            out[sec] = dataclasses.asdict(getattr(self, sec))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def set(self, dotted: str, value: Any, from_string: bool = False) -> None:
        """Set ``section.key`` (checked and converted); ``from_string`` parses command-line text."""
        section, _, key = dotted.partition(".")
        if section == "name" and not key:
            self.name = _convert(value, str, "name", from_string)
            return
        if section == "model" and key:
            hints = model_type_hints()
            if key not in hints:
                raise ConfigError(f"unknown key model.{key}; valid model keys: {', '.join(hints)}")
            self.model[key] = _convert(value, hints[key], dotted, from_string)
            return
        if section not in SECTIONS or not key:
            raise ConfigError(
                f"unknown key {dotted!r}; use SECTION.KEY with SECTION in name, model, {', '.join(SECTIONS)}"
            )
        obj = getattr(self, section)
        hints = typing.get_type_hints(type(obj))
        if key not in hints:
            raise ConfigError(f"unknown key {dotted}; valid {section} keys: {', '.join(hints)}")
        value = _convert(value, hints[key], dotted, from_string)
        if (section, key) == ("sample", "scheduler"):
            value = SCHEDULER_ALIASES.get(value, value)
        if (section, key) in (("train", "cuda_graphs"), ("optim", "fused")):
            value = str(value).lower()  # YAML true/false -> "true"/"false"
        choices = CHOICES.get((section, key))
        if choices is not None and value not in choices:
            raise ConfigError(f"{dotted} must be one of {', '.join(choices)}; got {value!r}")
        setattr(obj, key, value)


@functools.lru_cache(maxsize=1)
def model_type_hints() -> Dict[str, Any]:
    """Valid ``model`` keys and their types: preset, vae and UViTModel's keyword arguments. Imported here, on
    first use, so that reading a config (e.g. a dry run's data section or a study file) needs no torch."""
    from .models.uvit import UViTModel  # heavy (torch, diffusers): only when a model key is set

    hints = typing.get_type_hints(UViTModel.__init__)
    params = [p for p in inspect.signature(UViTModel.__init__).parameters if p != "self"]
    return {"preset": Optional[str], "vae": Optional[str], **{p: hints[p] for p in params}}


# ------------------------------------------------------------------------------ value checking


def _convert(value: Any, hint: Any, where: str, from_string: bool = False) -> Any:
    """Check ``value`` against a type hint, converting numbers written as text; raise ConfigError if it fails."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if from_string and isinstance(value, str):
        if value.strip().lower() in ("null", "none", "~") and type(None) in args:
            return None
        if hint is not str and not (origin is typing.Union and str in args):
            value = yaml.safe_load(value)
    if origin is typing.Union:  # Optional[X], or Union[X, Y, ...]: the first member that fits
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for inner in members[:-1]:
            try:
                return _convert(value, inner, where, from_string)
            except ConfigError:
                pass
        return _convert(value, members[-1], where, from_string)
    if origin in (list, List, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = args[:1] or (Any,)
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise ConfigError(
                f"{where}: expected text, got {value!r} (YAML reads bare no/yes/off as booleans: quote it, e.g. 'no')"
            )
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


# ------------------------------------------------------------------------------------- loading


def _read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    """Read a config file, resolving its ``base:`` chain (later files override earlier ones)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing file, e.g. --config configs/tiny.yaml")
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loop through {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _read_yaml((path.parent / base), seen + (path.resolve(),))
    return _deep_merge(merged, raw)


def _deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: Dict[str, Any], name: str = "run") -> Config:
    """Build a checked :class:`Config` from a plain mapping (as read from YAML)."""
    cfg = Config(name=name)
    valid = ["name", "model", *SECTIONS]
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"unknown top-level key {key!r}; valid keys: base, {', '.join(valid)}")
        if key == "name":
            cfg.set("name", value)
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"section {key!r} must be a mapping of key: value, got {value!r}")
        if key == "model":
            cfg.model = {}
        for sub, v in value.items():
            cfg.set(f"{key}.{sub}", v)
    return cfg


def data_config_from_spec(spec: Dict[str, str]) -> DataConfig:
    """A checked :class:`DataConfig` from text values (e.g. ``dataset:kind=cifar10,limit=100`` on a command
    line), parsed like ``data.key=value`` overrides."""
    cfg = Config()
    for key, value in spec.items():
        cfg.set(f"data.{key}", value, from_string=True)
    return cfg.data


def parse_overrides(overrides: Sequence[str]) -> List[tuple]:
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.steps=1000")
        pairs.append((key.strip(), value))
    return pairs


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (following ``base:``), then apply ``key=value`` overrides such as ``train.steps=100``."""
    path = Path(path)
    cfg = config_from_dict(_read_yaml(path), name=path.stem)
    for key, value in parse_overrides(overrides):
        cfg.set(key, value, from_string=True)
    validate_numbers(cfg)
    return cfg


# (section, key, smallest allowed value): checked before any work, so a bad value never crashes a run mid-way.
AT_LEAST = [("train", k, 1) for k in ("steps", "batch_size", "grad_accum", "fid_num_images", "log_every")] + [
    ("train", k, 0) for k in ("checkpoint_every", "keep_last", "sample_every", "fid_every")] + [
    ("sample", k, 1) for k in ("num_inference_steps", "grid_size", "batch_size")] + [
    ("optim", "warmup_steps", 0), ("optim", "grad_clip", 0), ("optim", "lr", 0), ("optim", "weight_decay", 0),
    ("diffusion", "num_train_timesteps", 1), ("data", "limit", 1), ("data", "resolution", 1)]


def validate_numbers(cfg: Config) -> None:
    """Refuse numeric values no run can use (``train.steps=0``, ``optim.betas=[0.9]``, ...) with one line each."""
    for section, key, low in AT_LEAST:
        value = getattr(getattr(cfg, section), key)
        if value is not None and value < low:
            raise ConfigError(f"{section}.{key} must be >= {low}; got {value!r}")
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.99, 0.999]; got {betas!r}")
    if not 0 <= cfg.train.ema_decay <= 1 or not 0 <= cfg.train.p_uncond <= 1:
        raise ConfigError("train.ema_decay and train.p_uncond must lie in [0, 1]; "
                          f"got {cfg.train.ema_decay!r}, {cfg.train.p_uncond!r}")
    if cfg.train.fid_raw and cfg.train.fid_every <= 0:
        raise ConfigError("train.fid_raw scores the raw weights at each FID step, but train.fid_every is 0: "
                          "set train.fid_every > 0 or train.fid_raw=false")
    for key in ("patch_size", "embed_dim", "depth", "num_heads", "sample_size", "in_channels"):
        value = cfg.model.get(key)
        if isinstance(value, (int, float)) and value < 1:
            raise ConfigError(f"model.{key} must be >= 1; got {value!r}")

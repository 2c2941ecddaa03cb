"""Training pieces used by :mod:`cogdiff.workflows.trainer`: EMA, checkpoints, batch plan, diffusion loss and
run logging. The run folder's layout is described (and its names owned) by :mod:`cogdiff.rundir`."""

from ..seeds import derive_seed
from .batches import BatchPlan
from .checkpoint import (
    RAW_VARIANT,
    check_model_config,
    export_pipeline,
    list_checkpoints,
    load_training_state,
    load_weights,
    resolve_resume,
    save_checkpoint,
    write_pipeline,
)
from .diffusion import diffusion_loss, drop_labels, make_noise_scheduler
from .ema import EMA
from .runlog import RunLog, gpu_memory_gb

__all__ = [
    "BatchPlan",
    "EMA",
    "RAW_VARIANT",
    "RunLog",
    "derive_seed",
    "diffusion_loss",
    "drop_labels",
    "export_pipeline",
    "gpu_memory_gb",
    "list_checkpoints",
    "check_model_config",
    "load_training_state",
    "load_weights",
    "make_noise_scheduler",
    "resolve_resume",
    "save_checkpoint",
    "write_pipeline",
]

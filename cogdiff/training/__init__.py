"""Training helpers for ``train.py``: EMA, checkpoints, batch plan, diffusion loss and run logging.

Run directory (``train.output_dir``, default ``runs/<config name>``)::

    config.yaml              the resolved configuration (loadable with --config)
    metrics.jsonl            one JSON object per logged step: step, loss, lr, grad_norm, images_per_s
                             (+ gpu_mem_gb on CUDA); loss = mean over the steps since the last row
    fid.jsonl                one object per FID evaluation: step, fid, kid_mean, kid_std, num_images,
                             num_inference_steps, scheduler, ema (true)
    tb/                      TensorBoard scalars (train/*, eval/*) and sample grids
    samples/step_0001000.png EMA sample grids through UViTPipeline
    checkpoints/step_0001000/  pipeline folder (EMA weights; raw weights as variant "raw") + training state
    pipeline/                final export: UViTPipeline.from_pretrained(dir) gives the EMA model,
                             from_pretrained(dir, variant="raw") the raw weights
"""

from .batches import BatchPlan
from .checkpoint import (
    RAW_VARIANT,
    export_pipeline,
    list_checkpoints,
    load_training_state,
    load_weights,
    resolve_resume,
    save_checkpoint,
    write_pipeline,
)
from .diffusion import derive_seed, diffusion_loss, drop_labels, make_noise_scheduler
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
    "load_training_state",
    "load_weights",
    "make_noise_scheduler",
    "resolve_resume",
    "save_checkpoint",
    "write_pipeline",
]

"""FID, KID and (with full weights) Inception Score on the standard FID Inception network, offline.

    from cogdiff.metrics import FIDEvaluator
    ev = FIDEvaluator("cifar10_train.npz")           # built once: python -m cogdiff.metrics ref ...
    ev.score_pipeline(pipe, num_images=10_000, batch_size=500, num_inference_steps=50, scheduler="dpm++")
    ev.score_source("samples/images.npz")            # or an image folder, or ev.score_images(uint8 array)

CLI: ``python -m cogdiff.metrics ref SOURCE --out STATS.npz`` and ``... calc SOURCE --ref STATS.npz``.
"""

from .evaluator import FIDEvaluator, gather_rows
from .inception import WEIGHTS_ENV, InceptionFeatures, find_weights
from .stats import RefStats, compute_ref_stats, fingerprint_images

__all__ = [
    "FIDEvaluator",
    "InceptionFeatures",
    "RefStats",
    "WEIGHTS_ENV",
    "compute_ref_stats",
    "find_weights",
    "fingerprint_images",
    "gather_rows",
]

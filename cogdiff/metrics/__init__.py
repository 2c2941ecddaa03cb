"""FID, KID and (with full weights) Inception Score on the standard FID Inception network, offline.

    from cogdiff.metrics import FIDEvaluator
    ev = FIDEvaluator("cifar10_train.npz")           # built once: python -m cogdiff.metrics ref ...
    ev.score_images(images)                          # uint8 (N, H, W, C) array, or an iterable of batches
    ev.score_images(iter_source("samples/images.npz"))   # cogdiff.sources: a folder, an .npz or dataset:...

CLI: ``python -m cogdiff.metrics ref SOURCE --out STATS.npz`` and ``... calc SOURCE --ref STATS.npz``.
"""

from .evaluator import FIDEvaluator, gather_rows
from .inception import WEIGHTS_ENV, InceptionFeatures, find_weights
from .stats import RefStats, cached_ref_stats, compute_ref_stats, fingerprint_images

__all__ = [
    "FIDEvaluator",
    "InceptionFeatures",
    "RefStats",
    "WEIGHTS_ENV",
    "cached_ref_stats",
    "compute_ref_stats",
    "find_weights",
    "fingerprint_images",
    "gather_rows",
]

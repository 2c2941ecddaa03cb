"""Reference statistics: Inception feature mean/covariance of a real image set, cached in one .npz.

File keys (``np.load(allow_pickle=False)`` reads them; ``mu``/``sigma`` are also what pytorch-fid's
``.npz`` statistics hold, so those files load too, without KID features or fingerprint):

- ``mu`` (D,) float64, ``sigma`` (D, D) float64 (unbiased covariance), ``count`` (number of images)
- ``fingerprint``: sha256 over the uint8 NHWC pixels in order (see :class:`Fingerprint`)
- ``extractor_id``: the feature space (weights + preprocessing); features from another one are refused
- ``kid_features`` (K, D) float16: a fixed random subset (K <= 10,000 by default) of the real features,
  because KID needs real features, not moments
- ``source``: free text (where the images came from), ``format_version``
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from ..io import atomic_savez, load_npz
from .color import ColorStats

FORMAT_VERSION = 1
DEFAULT_KID_FEATURES = 10_000
UNKNOWN = "unknown"


class Fingerprint:
    """Streaming sha256 of a uint8 image set: its NHWC bytes in order, plus the image shape wherever it
    changes (so the digest does not depend on how the set is split into batches)."""

    def __init__(self):
        self._h = hashlib.sha256()
        self._shape = None
        self.count = 0

    def update(self, images: np.ndarray) -> None:
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"fingerprint needs uint8 NHWC batches, got {images.dtype} {images.shape}")
        if images.shape[1:] != self._shape:
            self._shape = images.shape[1:]
            self._h.update(f"shape{self._shape}".encode())
        self._h.update(images.tobytes())
        self.count += len(images)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fingerprint_images(images: np.ndarray, chunk: int = 4096) -> str:
    fp = Fingerprint()
    for i in range(0, len(images), chunk):
        fp.update(images[i : i + chunk])
    return fp.hexdigest()


class FeatureAccumulator:
    """Running float64 sums of features and their outer products (torchmetrics' FID state), plus a
    float16 copy of every feature for the KID subset."""

    def __init__(self):
        self.sum = None
        self.outer = None
        self.count = 0
        self._kept = []

    def update(self, feats: torch.Tensor) -> None:
        f = feats.detach().double()
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.count += len(f)
        self._kept.append(feats.detach().to("cpu", torch.float16).numpy())

    def finish(
        self, fingerprint: str, extractor_id: str, source: str, max_kid_features: int = DEFAULT_KID_FEATURES
    ) -> "RefStats":
        if self.count < 2:
            raise ValueError(f"reference statistics need at least 2 images, got {self.count}")
        n = self.count
        mu = (self.sum / n).cpu().numpy()
        sigma = ((self.outer - n * torch.outer(self.sum / n, self.sum / n)) / (n - 1)).cpu().numpy()
        kept = np.concatenate(self._kept)
        if len(kept) > max_kid_features:
            pick = np.sort(np.random.default_rng(0).choice(len(kept), max_kid_features, replace=False))
            kept = kept[pick]
        return RefStats(mu, sigma, n, fingerprint, extractor_id, kept, source)


@dataclass
class RefStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    fingerprint: str
    extractor_id: str
    kid_features: Optional[np.ndarray] = None
    source: str = ""
    color: Optional[dict] = None  # ColorStats.result() of the real images (None in files written before it)

    def save(self, path: str) -> str:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = check_stats_path(path)
        arrays = dict(
            mu=self.mu,
            sigma=self.sigma,
            count=np.int64(self.count),
            fingerprint=np.str_(self.fingerprint),
            extractor_id=np.str_(self.extractor_id),
            source=np.str_(self.source),
            format_version=np.int64(FORMAT_VERSION),
        )
        if self.color is not None:
            arrays["color"] = np.str_(json.dumps(self.color))
        if self.kid_features is not None:
            arrays["kid_features"] = self.kid_features.astype(np.float16)
        atomic_savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str, extractor_id: Optional[str] = None, fingerprint: Optional[str] = None) -> "RefStats":
        """Load and check: ``extractor_id`` (if given) must match the file's; so must ``fingerprint``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"reference statistics {path!r} not found; build them with: "
                f"python -m cogdiff.metrics ref SOURCE --out {path}"
            )
        z = load_npz(path)  # a truncated file: one line naming it
        if "mu" not in z or "sigma" not in z:
            raise ValueError(
                f"{path} has no 'mu'/'sigma' arrays: not reference statistics "
                "(build with python -m cogdiff.metrics ref)"
            )
        get = lambda k, d: z[k].item() if k in z else d  # noqa: E731
        stats = cls(
            mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), count=int(get("count", 0)),
            fingerprint=str(get("fingerprint", UNKNOWN)), extractor_id=str(get("extractor_id", UNKNOWN)),
            kid_features=z.get("kid_features"), source=str(get("source", "")),
            color=json.loads(str(z["color"])) if "color" in z else None,
        )
        if stats.mu.ndim != 1 or stats.sigma.shape != (len(stats.mu), len(stats.mu)):
            raise ValueError(f"{path}: mu {stats.mu.shape} and sigma {stats.sigma.shape} do not fit together")
        if extractor_id is not None and stats.extractor_id not in (extractor_id, UNKNOWN):
            raise ValueError(
                f"{path} was computed with feature extractor {stats.extractor_id!r}, but the evaluator uses "
                f"{extractor_id!r}; rebuild the statistics with the same weights (python -m cogdiff.metrics ref ...)"
            )
        if fingerprint is not None and stats.fingerprint != fingerprint:
            raise ValueError(
                f"{path} was built from a different image set (fingerprint {stats.fingerprint[:12]}..., "
                f"expected {fingerprint[:12]}...); rebuild it (ref ... --force) or point to the right file"
            )
        return stats


def check_stats_path(path) -> str:
    """``path`` as text if it names a ``.npz`` (the only format reference statistics are saved in)."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"reference statistics are saved as .npz, got {path!r}: use a name ending in .npz")
    return path


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     x2: Optional[torch.Tensor] = None, sqrt_sigma1: Optional[torch.Tensor] = None) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2), exactly, with symmetric
    eigendecompositions instead of the general ``eigvals(sigma1 @ sigma2)`` that torchmetrics uses (same
    value; about a minute for 2048 dims on a small CPU, where eigh takes seconds).

    tr sqrt(sigma1 sigma2) = sum sqrt(eig(A)) for A = sqrt(sigma1) sigma2 sqrt(sigma1) (symmetric PSD). When the
    n rows ``x2`` behind ``sigma2`` are given and n <= dim, A's nonzero eigenvalues are those of the n x n
    matrix Xc sigma1 Xc^T / (n - 1) (Xc = x2 - mu2), so no dim x dim decomposition is needed.
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    if x2 is not None and len(x2) < len(mu1):  # one fixed message, so Python shows it once per process
        warnings.warn(f"FID from fewer images than the {len(mu1)} feature dimensions is strongly biased "
                      "(upwards); use at least that many, ideally 10000 or more", stacklevel=2)
    if x2 is not None and len(x2) <= len(mu1):
        xc = x2.double().to(mu2.device) - mu2
        a = xc @ sigma1 @ xc.T / (len(x2) - 1)
    else:
        if sqrt_sigma1 is None:
            sqrt_sigma1 = psd_sqrt(sigma1)
        a = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eig = torch.linalg.eigvalsh((a + a.T) / 2).clamp_min(0)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum())


def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative rounding noise clipped to 0)."""
    w, v = torch.linalg.eigh(sigma.double())
    return (v * w.clamp_min(0).sqrt()) @ v.T


def progress_images(batches: Iterable[np.ndarray], desc: str, total: Optional[int] = None, enabled: bool = True):
    """``batches`` unchanged, with a tqdm bar counting images (``total`` if known)."""
    if not enabled:
        yield from batches
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="img") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def compute_ref_stats(
    batches: Iterable[np.ndarray],
    extractor,
    source: str = "",
    max_kid_features: int = DEFAULT_KID_FEATURES,
    progress: bool = False,
    total: Optional[int] = None,
) -> RefStats:
    """Reference statistics of uint8 NHWC batches through ``extractor`` (an :class:`InceptionFeatures`)."""
    fp, acc, color = Fingerprint(), FeatureAccumulator(), ColorStats()
    for batch in progress_images(batches, "reference features", total, progress):
        fp.update(batch)
        color.update(batch)
        feats, _ = extractor(batch)
        acc.update(feats)
    stats = acc.finish(fp.hexdigest(), extractor.extractor_id, source, max_kid_features)
    stats.color = color.result()
    return stats


def ensure_ref_stats(
    path: str,
    make_batches,
    extractor,
    source: str = "",
    force: bool = False,
    max_kid_features: int = DEFAULT_KID_FEATURES,
    progress: bool = False,
    total: Optional[int] = None,
) -> RefStats:
    """Cached reference statistics: reuse ``path`` when it was built from the same images (fingerprint)
    with the same feature extractor; a different image set is an error unless ``force`` (then rebuild).
    ``make_batches()`` returns a fresh iterable of uint8 NHWC batches; ``total`` (images) sizes the progress bar."""
    check_stats_path(path)  # before the Inception pass, not after it
    if os.path.isfile(path) and not force:
        fp = Fingerprint()
        for batch in progress_images(make_batches(), "checking fingerprint", total, progress):
            fp.update(batch)
        return RefStats.load(path, extractor_id=extractor.extractor_id, fingerprint=fp.hexdigest())
    stats = compute_ref_stats(make_batches(), extractor, source, max_kid_features, progress=progress, total=total)
    stats.save(path)
    return stats


def cached_ref_stats(cache_dir, make_batches, extractor, source: str = "", progress: bool = False,
                     total: Optional[int] = None) -> tuple:
    """Reference statistics kept in ``cache_dir`` under a name made of the images' fingerprint and the feature
    extractor, so the same images through the same network are scored once. Returns (path, stats, built)."""
    fp = Fingerprint()
    for batch in make_batches():
        fp.update(batch)
    key = hashlib.sha256(extractor.extractor_id.encode()).hexdigest()[:8]
    path = os.path.join(os.fspath(cache_dir), f"ref-{fp.hexdigest()[:16]}-{key}.npz")
    built = not os.path.isfile(path)
    stats = ensure_ref_stats(path, make_batches, extractor, source, progress=progress, total=total)
    return path, stats, built

"""FID / KID (/ IS) of generated images against cached reference statistics.

Only generated images go through the Inception network; they come in as uint8 batches (an array or any
iterable: the caller decides whether they are sampled, read from a folder or taken from a dataset). FID is
the Frechet distance between the reference moments and the generated features' moments, evaluated by
:func:`~cogdiff.metrics.stats.frechet_distance` (exact, symmetric eigendecompositions; torchmetrics' general
``eigvals`` of a 2048x2048 product took about a minute on a 2-core CPU; a test checks both give the same
value). KID (against the stored real-feature subset) and IS are torchmetrics' own computations, fed the
features through an identity "feature extractor". Under ``torch.distributed`` (e.g. ``accelerate launch``),
``score_images(..., gather=True)`` on every process scores the union of their batches.
"""

from __future__ import annotations

import time
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from .color import ColorStats
from .inception import NUM_FEATURES, NUM_LOGITS, InceptionFeatures, exact_fp32
from .overlap import overlapped
from .stats import UNKNOWN, RefStats, frechet_distance, progress_images, psd_sqrt

DEFAULT_INCEPTION_BATCH = 250
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
METRIC_SEED = 0  # KID's random subsets and IS's shuffle use their own fixed-seed RNG
IS_NOT_COMPUTED = ("needs full Inception weights with the 1008-way logits "
                   "(--weights pt_inception-2015-12-05-6726825d.pth, with torch-fidelity installed)")
# The keys of every result dict of FIDEvaluator.score_* (values may be None, see the class docstring).
RESULT_KEYS = ("fid", "kid_mean", "kid_std", "kid_subset_size", "num_images", "inception_score", "is_std")


class _Precomputed(nn.Module):
    """Identity 'feature extractor': torchmetrics receives features we already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def moments(feats: torch.Tensor) -> tuple:
    """(mean, unbiased covariance) of (N, D) features, in float64."""
    f = feats.double()
    mu = f.mean(0)
    xc = f - mu
    return mu, xc.T @ xc / (len(f) - 1)


def _dist() -> tuple:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate (n_r, D) tensors of all processes in rank order (sizes may differ); identity if not distributed."""
    rank, world = _dist()
    if world == 1:
        return t
    dev = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.distributed.get_backend() == "nccl"
        else torch.device("cpu")
    )
    n = torch.tensor([len(t)], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros(max(sizes), *t.shape[1:], dtype=t.dtype, device=dev)
    padded[: len(t)] = t.to(dev)
    out = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(t.device)


class FIDEvaluator:
    """Score generated images against reference statistics built by ``python -m cogdiff.metrics ref``.

    Args:
        ref_stats: path of the reference statistics (.npz).
        device: where Inception runs (default: CUDA if available).
        weights: Inception weights file (see :func:`cogdiff.metrics.inception.find_weights`).
        inception_batch_size: images per Inception forward.

    Results are dicts with the keys :data:`RESULT_KEYS`: ``fid``, ``kid_mean``, ``kid_std``,
    ``kid_subset_size`` (the KID subset size actually used: ``min(kid_subset_size, N generated, real
    features kept)``), ``num_images``, ``inception_score`` and ``is_std``. ``kid_*`` are None when the
    statistics hold no real features (e.g. pytorch-fid's files); ``inception_score``/``is_std`` are None
    without full weights (logits; :attr:`inception_score_note` says why). ``last_timings`` holds the
    seconds spent per stage (see :meth:`score_images`). ``allow_unverified`` lets a weights file with an
    unknown sha256 load (see :mod:`cogdiff.metrics.inception`).
    """

    def __init__(
        self,
        ref_stats: str,
        device=None,
        weights: Optional[str] = None,
        inception_batch_size: int = DEFAULT_INCEPTION_BATCH,
        kid_subsets: int = KID_SUBSETS,
        kid_subset_size: int = KID_SUBSET_SIZE,
        allow_unverified: bool = False,
    ):
        self.extractor = InceptionFeatures(weights, device, allow_unverified=allow_unverified)
        self.device = self.extractor.device
        self.ref_path = ref_stats
        self.ref = RefStats.load(ref_stats, extractor_id=self.extractor.extractor_id)
        if len(self.ref.mu) != NUM_FEATURES:  # e.g. pytorch-fid --dims 64: refused before any image is scored
            raise ValueError(f"{ref_stats} holds {len(self.ref.mu)}-dimensional statistics, but FID here uses the "
                             f"{NUM_FEATURES}-dimensional pool3 features: rebuild them with "
                             f"python -m cogdiff.metrics ref SOURCE --out {ref_stats}")
        if self.ref.extractor_id == UNKNOWN:
            warnings.warn(f"{ref_stats} does not record its feature extractor (e.g. a pytorch-fid .npz): its "
                          "preprocessing may differ from ours, so FID against it may be off", stacklevel=2)
        self.inception_batch_size = inception_batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.last_timings: dict = {}
        self.last_kid_subset_size: Optional[int] = None
        self._sqrt_sigma: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------------------- features

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def features(self, images) -> tuple:
        """(features (N, 2048) float32, logits (N, 1008) or None) of uint8 images, on the evaluator's device."""
        feats, logits = [], []
        for i in range(0, len(images), self.inception_batch_size):
            f, lg = self.extractor(images[i : i + self.inception_batch_size])
            feats.append(f)
            if lg is not None:
                logits.append(lg)
        return torch.cat(feats), (torch.cat(logits) if logits else None)

    # ----------------------------------------------------------------------------- scoring

    def score_features(self, feats: torch.Tensor, logits: Optional[torch.Tensor] = None) -> dict:
        """Metrics of generated-image features (all of them: not split across processes)."""
        n = len(feats)
        if n < 2:
            raise ValueError(f"FID needs at least 2 generated images, got {n}")
        feats = feats.to(self.device)
        ref_mu = torch.as_tensor(self.ref.mu, dtype=torch.float64, device=self.device)
        ref_sigma = torch.as_tensor(self.ref.sigma, dtype=torch.float64, device=self.device)
        value = frechet_distance(ref_mu, ref_sigma, *moments(feats), x2=feats, sqrt_sigma1=self._sqrt_ref_sigma(n))
        out = {"fid": value, "kid_mean": None, "kid_std": None, "kid_subset_size": None, "num_images": n,
               "inception_score": None, "is_std": None}

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            torch.manual_seed(METRIC_SEED)
            if self.ref.kid_features is not None:
                real = torch.from_numpy(self.ref.kid_features.astype(np.float32)).to(self.device)
                size = min(self.kid_subset_size, n, len(real))
                kid = KernelInceptionDistance(
                    feature=_Precomputed(NUM_FEATURES),
                    subsets=self.kid_subsets,
                    subset_size=size,
                    sync_on_compute=False,
                ).to(self.device)
                kid.update(real, real=True)
                kid.update(feats.float().to(self.device), real=False)
                kid_mean, kid_std = kid.compute()
                out.update(kid_mean=float(kid_mean), kid_std=float(kid_std), kid_subset_size=size)
                self.last_kid_subset_size = size
            else:
                warnings.warn(
                    f"{self.ref_path} holds no real features: KID not computed (rebuild with cogdiff.metrics ref)"
                )
            if logits is not None:
                out.update(self._inception_score(logits))
        return out

    @property
    def inception_score_note(self) -> Optional[str]:
        """Why results carry no Inception Score (None when the weights have logits). Front ends print
        ``Inception Score: not computed — <note>`` and record it as ``inception_score_note``."""
        return None if self.extractor.has_logits else IS_NOT_COMPUTED

    def _sqrt_ref_sigma(self, n: int) -> Optional[torch.Tensor]:
        """sqrt(reference covariance), computed once per evaluator, only when n > feature dim needs it."""
        if n <= NUM_FEATURES:
            return None
        if self._sqrt_sigma is None:
            self._sqrt_sigma = psd_sqrt(torch.as_tensor(self.ref.sigma, device=self.device))
        return self._sqrt_sigma

    def _inception_score(self, logits: torch.Tensor) -> dict:
        metric = InceptionScore(feature=_Precomputed(NUM_LOGITS), splits=IS_SPLITS, sync_on_compute=False)
        metric.update(logits.float().cpu())
        mean, std = metric.compute()
        return {"inception_score": float(mean), "is_std": float(std)}

    def inception_score(self, images) -> dict:
        """Inception Score of uint8 images; refuses without full weights (never a non-standard IS)."""
        if not self.extractor.has_logits:
            raise RuntimeError(
                "Inception Score needs the network's 1008-way logits, which these weights "
                f"({self.extractor.weights_path}) lack; pass weights=<torch-fidelity/pytorch-fid "
                "inception-2015-12-05 .pth> with torch-fidelity installed"
            )
        return self._inception_score(self.features(images)[1])

    def score_images(self, images, progress: bool = False, total: Optional[int] = None, gather: bool = False,
                     overlap: bool = False) -> dict:
        """Score uint8 images: an (N, H, W, C) / (N, C, H, W) array or tensor, or an iterable of such batches (the
        caller decides where they come from: a sampler, a folder, a dataset).

        Args:
            images: the images, or an iterable of batches.
            progress (`bool`, defaults to False): a tqdm bar over the images taken from ``images`` (``total`` sizes
                it for an iterable).
            total (`int`, *optional*): the number of images of an iterable, for the bar.
            gather (`bool`, defaults to False): under torch.distributed each process passes its own share and all
                get the scores of every image (call it on every process).
            overlap (`bool`, defaults to False): compute the Inception features of batch ``k`` on a worker thread
                while the calling thread takes batch ``k + 1`` from ``images`` (e.g. samples it), each on its own
                CUDA stream (:func:`cogdiff.metrics.overlap.overlapped`). The batches, their order and therefore
                the results are the same; exceptions of either side are raised here. TF32 stays off
                (:func:`~cogdiff.metrics.inception.exact_fp32`, process-wide flags) for the whole loop rather than
                per Inception batch, so the source sees fixed flags: a source whose numerics depend on them (fp32
                matmuls or convolutions outside bf16 autocast, CUDA graphs recorded during the loop) computes
                them without TF32, which can differ slightly from a run without overlap.

        ``last_timings`` holds seconds measured on the host: ``source_s`` (taking the batches from ``images``,
        e.g. sampling), ``inception_s`` (Inception features and colour statistics, each batch synchronised),
        ``batches_s`` (wall time of the whole batch loop), ``metrics_s`` (FID/KID/IS from the features) and
        ``overlap``. Without overlap the loop runs one stage after the other, so ``batches_s`` is about
        ``source_s + inception_s``. With overlap ``source_s`` and ``inception_s`` run at the same time (each is
        slower than alone when they share a GPU) and ``batches_s`` is the time that counts; two more keys say
        which side was behind: ``wait_for_inception_s`` (the source waiting for room in the queue) and
        ``wait_for_source_s`` (Inception waiting for a batch, the first one included)."""
        if isinstance(images, (np.ndarray, torch.Tensor)):
            total = len(images)
            step = self.inception_batch_size
            images = (images[i : i + step] for i in range(0, len(images), step))
        feats, logits, color = [], [], ColorStats()
        batches = progress_images(images, "Inception features", total, progress)

        def consume(batch, settle):
            color.update(batch)
            f, lg = self.features(batch)
            settle(f, lg)
            feats.append(f)
            if lg is not None:
                logits.append(lg)

        timings = self._overlapped(batches, consume) if overlap else self._sequential(batches, consume)
        feats = torch.cat(feats) if feats else torch.zeros(0, NUM_FEATURES, device=self.device)
        logits = torch.cat(logits) if logits else (torch.zeros(0, NUM_LOGITS, device=self.device)
                                                   if self.extractor.has_logits else None)
        if gather:  # a process may own no batch (fewer batches than processes): it still joins the gather
            feats = gather_rows(feats)
            logits = gather_rows(logits) if logits is not None else None
            rows = gather_rows(torch.as_tensor(color.summary()[None], device=self.device)).cpu().numpy()
            color = ColorStats()
            for row in rows:
                color.merge(row)
        t = time.perf_counter()
        out = self.score_features(feats, logits)
        out["color"] = color.result() if color.num_images else None  # the scored images' colours (0-255)
        self.last_timings = {**timings, "metrics_s": time.perf_counter() - t}
        return out

    def _sequential(self, batches, consume) -> dict:
        """Take a batch, compute its features, take the next: the timings of :meth:`score_images`."""
        t_source = t_incep = 0.0
        t0 = t = time.perf_counter()
        for batch in batches:
            t_source += time.perf_counter() - t
            t = time.perf_counter()
            consume(batch, lambda *tensors: self._sync())
            t_incep += time.perf_counter() - t
            t = time.perf_counter()
        return {"overlap": False, "source_s": t_source, "inception_s": t_incep, "batches_s": time.perf_counter() - t0}

    def _overlapped(self, batches, consume) -> dict:
        """``consume`` on a worker thread (:func:`~cogdiff.metrics.overlap.overlapped`): the timings of
        :meth:`score_images`. The worker waits for its own stream only (a device-wide synchronize would wait
        for the sampler too); its features, made on that stream, are marked as used by the caller's stream,
        where they are concatenated and scored, so that their memory is not reused too early."""
        caller = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

        def settle(*tensors):
            if caller is not None:
                torch.cuda.current_stream(self.device).synchronize()  # the worker's stream
                for x in tensors:
                    if x is not None:
                        x.record_stream(caller)

        with exact_fp32():
            tm = overlapped(batches, lambda batch: consume(batch, settle), device=self.device)
        return {"overlap": True, "source_s": tm["source_s"], "inception_s": tm["consume_s"],
                "batches_s": tm["wall_s"], "wait_for_inception_s": tm["wait_for_consumer_s"],
                "wait_for_source_s": tm["wait_for_source_s"]}

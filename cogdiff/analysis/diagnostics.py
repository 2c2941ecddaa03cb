"""Training diagnostics on a fixed probe batch: loss per timestep band and per-block attention statistics.

A training loop builds one :class:`Probe` at start-up (:func:`make_probe`: the same images, noise and
timesteps every time, drawn from its own generator, so the training RNG stream is untouched) and every
``diag_every`` steps writes ``diagnostics_row(step, model, ema.model, probe)`` as one JSON line:

    {"step": 500, "loss_by_t": [10 floats], "loss_by_t_ema": [10 floats],
     "blocks": [{"attention": "softmax", "logit_absmax": ..., "logit_absmean": ..., "entropy": ...,
                 "neg_share": ..., "out_rms": ..., "qkv_weight_norm": ...}, ...],
     "blocks_by_band": {"0": [same per-block dicts], "9": [...]}}

``loss_by_t[i]`` is the mean per-sample MSE to the training target (noise for epsilon-prediction) over
the probe samples with timestep in band i (0-99, 100-199, ... for 1,000 timesteps and 10 bins). Per
block (in order: in-blocks, mid-block, out-blocks), with scores s = q k^T / sqrt(head_dim) as the
attention sees them (after ``qk_norm``): ``logit_absmax`` / ``logit_absmean`` = max / mean of |s|;
``entropy`` = mean row entropy (nats) of the probabilities the block's softmax takes, softmax(|s|) for
Cog heads and softmax(s) for softmax heads; ``neg_share`` = share of negative weights (0 for softmax);
``out_rms`` = RMS of the attention module's output (after its output projection, i.e. what is added to
the residual stream); ``qkv_weight_norm`` = Frobenius norm of the qkv projection weight.
``blocks_by_band`` repeats the per-block numbers over only the probe samples of one timestep band: the
lowest-noise band ("0") and the highest ("9" for 10 bins), so attention at fine detail and at coarse layout can
be told apart (same forward pass; the subsets add a few small reductions).

Everything runs under ``torch.no_grad()`` with autocast off, with the model in eval mode (its mode is
restored afterwards), using one forward pass per set of weights. Pass the plain model (e.g.
``accelerator.unwrap_model(model)``), not a wrapper that adds autocast.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .hooks import attention_hooks

BLOCK_KEYS = ("logit_absmax", "logit_absmean", "entropy", "neg_share", "out_rms", "qkv_weight_norm")


@dataclass
class Probe:
    """A fixed diagnostics batch: noisy inputs ``x_t`` at timesteps ``t`` with their ``noise`` and the training
    ``target`` (noise, or velocity for v-prediction); ``labels`` for class-conditional models (else None)."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    labels: Optional[torch.Tensor]
    num_train_timesteps: int
    bins: int

    def __len__(self) -> int:
        return self.x_t.shape[0]


def timestep_bin(t: torch.Tensor, bins: int, num_train_timesteps: int) -> torch.Tensor:
    """Band index of each timestep: ``t * bins // T`` (bins of equal width 0..T/bins-1, ...)."""
    return torch.div(t.long() * bins, num_train_timesteps, rounding_mode="floor")


def stratified_timesteps(n: int, bins: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) timesteps, sample i uniform within band ``i % bins``: every band gets n // bins or n // bins + 1."""
    band = torch.arange(n) % bins
    lo = torch.div(band * num_train_timesteps + bins - 1, bins, rounding_mode="floor")  # first t of the band
    hi = torch.div((band + 1) * num_train_timesteps + bins - 1, bins, rounding_mode="floor")  # one past its last
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return lo + torch.minimum((u * (hi - lo)).long(), hi - lo - 1)


def make_probe(x0: torch.Tensor, labels: Optional[torch.Tensor], noise_scheduler, seed: int, bins: int = 10) -> Probe:
    """Noise the clean batch ``x0`` (B, C, H, W) once, from a generator seeded by ``seed`` (the global RNGs are not
    used), at timesteps stratified over ``bins`` equal bands; ``noise_scheduler`` is the training
    ``DDPMScheduler``. Use a batch size that is a multiple of ``bins`` (e.g. 60 or 80) for equal shares."""
    num_t = int(noise_scheduler.config.num_train_timesteps)
    if x0.dim() != 4 or x0.shape[0] < bins:
        raise ValueError(f"make_probe needs a (batch, C, H, W) batch of at least bins={bins} images, "
                         f"got {tuple(x0.shape)}")
    if not 1 <= bins <= num_t:
        raise ValueError(f"bins must be between 1 and num_train_timesteps={num_t}, got {bins}")
    if labels is not None and labels.shape != (x0.shape[0],):
        raise ValueError(f"labels must have shape ({x0.shape[0]},), got {tuple(labels.shape)}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    t = stratified_timesteps(x0.shape[0], bins, num_t, g).to(x0.device)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(x0.device)
    x0 = x0.float()
    x_t = noise_scheduler.add_noise(x0, noise, t)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(x0, noise, t)
    labels = None if labels is None else labels.to(x0.device).long().clone()
    return Probe(x_t, t, noise, target, labels, num_t, bins)


@contextlib.contextmanager
def _probing(model) -> Iterator[None]:
    """Eval mode, no gradients, autocast off; the model's mode is restored on exit."""
    was_training = model.training
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            yield
    finally:
        model.train(was_training)


def _predict(model, probe: Probe) -> torch.Tensor:
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    out = model(probe.x_t.to(dtype), probe.t, class_labels=probe.labels)
    return out.sample.float()


def binned_mse(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, bins: int,
               num_train_timesteps: int) -> List[Optional[float]]:
    """Per band of timesteps, the mean over its samples of the per-sample MSE (None for an empty band)."""
    per_sample = (pred.float() - target.float()).square().flatten(1).mean(1)  # (B,)
    band = timestep_bin(t, bins, num_train_timesteps).to(per_sample.device)
    total = torch.zeros(bins, dtype=torch.float64, device=per_sample.device).index_add_(0, band, per_sample.double())
    count = torch.bincount(band, minlength=bins)
    return [_json_float(s / c) if c else None for s, c in zip(total.tolist(), count.tolist())]


def loss_by_t(model, probe: Probe, bins: Optional[int] = None,
              num_train_timesteps: Optional[int] = None) -> List[Optional[float]]:
    """Training-target MSE of ``model`` on the probe in ``bins`` equal timestep bands (default: the probe's)."""
    with _probing(model):
        pred = _predict(model, probe)
    return binned_mse(pred, probe.target, probe.t, bins or probe.bins, num_train_timesteps or probe.num_train_timesteps)


def attention_stats(attn, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The :data:`BLOCK_KEYS` numbers of one attention module as a (6,) float32 tensor (no host sync).

    q, k: (B, H, N, Dh) as the scores see them; out: the module's (B, N, D) output; the first
    ``attn.num_cog_heads`` heads are Cog heads."""
    c = attn.num_cog_heads
    s = torch.matmul(q.float(), k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    a = s.abs()
    # the probabilities each head's softmax takes: softmax(|s|) for Cog heads, softmax(s) for softmax heads
    parts = [z for z in (a[:, :c], s[:, c:]) if z.shape[1]]
    entropy = sum(torch.special.entr(torch.softmax(z, dim=-1)).sum() for z in parts) / s[..., 0].numel()
    neg_share = (s[:, :c] < 0).sum() / s.numel()
    out_rms = out.float().square().mean().sqrt()
    return torch.stack([a.amax(), a.mean(), entropy, neg_share.float(), out_rms, attn.qkv.weight.float().norm()])


def _block_dicts(types: List[str], stats: Dict[int, torch.Tensor]) -> List[Dict]:
    values = torch.stack([stats[i] for i in range(len(types))]).tolist() if stats else []
    return [{"attention": types[i], **{key: _json_float(v) for key, v in zip(BLOCK_KEYS, row)}}
            for i, row in enumerate(values)]


def _predict_with_stats(model, probe: Probe, bands: Sequence[int] = ()) -> Tuple[torch.Tensor, List[Dict], Dict]:
    """One forward pass: the prediction, :func:`attention_stats` of every block in order, and the same over the
    probe samples of each timestep band in ``bands`` (``{"band": [...]}``; bands without samples left out)."""
    band_of = timestep_bin(probe.t, probe.bins, probe.num_train_timesteps)
    subsets = {str(b): idx for b in bands if len(idx := torch.nonzero(band_of == b).flatten())}
    stats: Dict[int, torch.Tensor] = {}
    by_band: Dict[str, Dict[int, torch.Tensor]] = {b: {} for b in subsets}

    def record(i: int, attn, x: torch.Tensor, out: torch.Tensor) -> None:
        q, k, _ = attn.qkv_heads(x)
        stats[i] = attention_stats(attn, q, k, out)
        for b, idx in subsets.items():
            by_band[b][i] = attention_stats(attn, q[idx], k[idx], out[idx])

    with _probing(model), attention_hooks(model, record):
        pred = _predict(model, probe)
    types = model.attention_types()
    return pred, _block_dicts(types, stats), {b: _block_dicts(types, st) for b, st in by_band.items()}


def block_stats(model, probe: Probe) -> List[Dict]:
    """Per block of ``model`` (a UViTModel), in order: ``{"attention": "softmax"|"cog", **BLOCK_KEYS}``."""
    return _predict_with_stats(model, probe)[1]


def diagnostics_row(step: int, model, ema_model, probe: Probe) -> Dict:
    """One ``diagnostics.jsonl`` line: ``step``, ``loss_by_t`` (raw weights), ``loss_by_t_ema`` (when ``ema_model``
    is given, e.g. ``ema.model``), ``blocks`` (:func:`block_stats` of the raw weights) and ``blocks_by_band`` (the
    same over the lowest- and highest-noise bands' samples). Two forward passes."""
    pred, blocks, by_band = _predict_with_stats(model, probe, bands=(0, probe.bins - 1))
    loss = binned_mse(pred, probe.target, probe.t, probe.bins, probe.num_train_timesteps)
    row = {"step": int(step), "loss_by_t": loss}
    if ema_model is not None:
        row["loss_by_t_ema"] = loss_by_t(ema_model, probe)
    row["blocks"] = blocks
    row["blocks_by_band"] = by_band
    return row


def _json_float(x: float) -> Optional[float]:
    """A float for JSON: non-finite values (overflowed logits, NaN loss) become None (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None

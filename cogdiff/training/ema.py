"""Exponential moving average of a model's weights, kept as a full model copy (used for sampling)."""

from __future__ import annotations

import contextlib
import copy

import torch


class EMA:
    """``ema = decay_n * ema + (1 - decay_n) * weights`` after every optimizer step.

    ``decay_n = decay`` (U-ViT: 0.9999 every step from a copy of the initial weights), or with
    ``warmup=True`` ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, which lets short runs' EMA
    follow the weights early on. Buffers are copied, not averaged. ``self.model`` is an eval-mode copy
    without gradients, ready for a pipeline.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @contextlib.contextmanager
    def holding(self, model: torch.nn.Module):
        """Within the block ``self.model`` holds ``model``'s weights (to sample them through the same pipeline and
        compiled graphs: the parameters are copied in place, so their storage does not change); the EMA weights
        are restored bit for bit afterwards, also when the block raises."""
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.holding: the model's parameters do not match the EMA copy's")
        with torch.no_grad():
            saved = [p.clone() for p in ema_params]
            for e, p in zip(ema_params, params):
                e.copy_(p)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for e, s in zip(ema_params, saved):
                    e.copy_(s)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update: the model's parameters do not match the EMA copy's")
        torch._foreach_lerp_(ema_params, params, weight)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)
        self.num_updates += 1

"""The diffusion pieces of training: noise schedule, loss, label dropout (sampling schedulers: cogdiff.sampling;
seeds: cogdiff.seeds)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def make_noise_scheduler(cfg_diffusion, latent: bool = False) -> DDPMScheduler:
    """The training noise schedule (``DDPMScheduler``) from a :class:`cogdiff.config.DiffusionConfig`."""
    clip = cfg_diffusion.clip_sample if cfg_diffusion.clip_sample is not None else not latent
    return DDPMScheduler(
        num_train_timesteps=cfg_diffusion.num_train_timesteps,
        beta_schedule=cfg_diffusion.beta_schedule,
        beta_start=cfg_diffusion.beta_start,
        beta_end=cfg_diffusion.beta_end,
        prediction_type=cfg_diffusion.prediction_type,
        clip_sample=clip,
    )


def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p_uncond`` (classifier-free guidance training)."""
    drop = torch.rand(labels.shape[0], generator=generator, device=generator.device) < p_uncond
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def diffusion_loss(model, noise_scheduler: DDPMScheduler, x0: torch.Tensor, labels: Optional[torch.Tensor],
                   generator: torch.Generator) -> torch.Tensor:
    """MSE between the model output and its target (noise, or velocity for v-prediction) at uniform timesteps."""
    b = x0.shape[0]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator, device=generator.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(x0.device)
    x_t = noise_scheduler.add_noise(x0, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(x0, noise, t)
    pred = model(x_t, t, class_labels=labels).sample
    return F.mse_loss(pred.float(), target.float())

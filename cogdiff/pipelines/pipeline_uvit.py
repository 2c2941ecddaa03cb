"""A diffusers pipeline for U-ViT / U-ViC models: pixel or latent space, any diffusers scheduler."""

from __future__ import annotations

import json
import os
from typing import List, Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..io import atomic_write_json, atomic_write_text
from ..models.uvit import UViTModel

# diffusers' DiffusionPipeline.from_pretrained finds a pipeline class outside diffusers only through a
# module file inside the saved folder (model_index.json: "_class_name": [file stem, class name]). We
# write this one-line re-export there, so the folder reloads with the installed cogdiff's class.
SHIM_NAME = "pipeline_uvit"
SHIM_SOURCE = "# Written by cogdiff: re-exports the installed class so diffusers can load this folder.\nfrom cogdiff.pipelines.pipeline_uvit import UViTPipeline  # noqa: F401\n"


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u). U-ViT's convention eps_c + s (eps_c - eps_u) is w = 1 + s."""
    return eps_uncond + w * (eps_cond - eps_uncond)


class UViTPipeline(DiffusionPipeline):
    """Sample images from a :class:`~cogdiff.models.UViTModel` with any diffusers scheduler.

    Parameters:
        transformer ([`UViTModel`]): The denoiser (softmax or Cog attention; the type is in its config).
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...).
        vae ([`AutoencoderKL`], *optional*): Set for latent models; latents are divided by
            ``vae.config.scaling_factor`` (and shifted by ``shift_factor`` when present) and decoded.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: UViTModel, scheduler, vae=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save components plus a one-line ``pipeline_uvit.py`` so ``DiffusionPipeline.from_pretrained``
        (with ``trust_remote_code=True``, which diffusers demands for any module file) reloads this class."""
        super().save_pretrained(save_directory, *args, **kwargs)
        save_directory = os.fspath(save_directory)
        atomic_write_text(os.path.join(save_directory, SHIM_NAME + ".py"), SHIM_SOURCE)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [SHIM_NAME, type(self).__name__]
        atomic_write_json(index_path, index, indent=2)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved folder. Our own re-export file is trusted without ``trust_remote_code``;
        a folder whose ``pipeline_uvit.py`` was changed still needs it."""
        shim = os.path.join(os.fspath(pretrained_model_name_or_path), SHIM_NAME + ".py")
        if os.path.isfile(shim):
            with open(shim, encoding="utf-8") as f:
                if f.read() == SHIM_SOURCE:
                    kwargs.setdefault("trust_remote_code", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _class_labels(self, class_labels, batch_size, generator, device):
        num_classes = self.transformer.config.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels given but the model is unconditional (num_classes=None)")
            return None
        if class_labels is None:  # uniform over the classes, from the caller's generator
            gen = generator[0] if isinstance(generator, list) else generator
            return torch.randint(0, num_classes, (batch_size,), generator=gen, device=gen.device if gen else "cpu").to(device)
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"class_labels must be {batch_size} labels in [0, {num_classes}), got {labels.tolist()}")
        return labels

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        class_labels: Optional[Union[int, List[int], torch.Tensor]] = None,
        guidance_scale: float = 1.0,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Union[ImagePipelineOutput, tuple]:
        """Generate ``batch_size`` images.

        Args:
            batch_size: Number of images.
            num_inference_steps: Scheduler steps.
            generator: ``torch.Generator`` (or one per image) for reproducible samples.
            class_labels: For class-conditional models: one label, a list, or None (random labels).
            guidance_scale: Classifier-free guidance w in ``eps_u + w (eps_c - eps_u)``; 1 = off.
                U-ViT's ImageNet setting (0.4 in its own convention) is w = 1.4.
            latents: Optional starting noise (B, C, H, W); drawn from ``generator`` when None.
            output_type: ``"pil"``, ``"np"`` (float in [0, 1], NHWC) or ``"pt"`` (float in [0, 1], NCHW).
            return_dict: Return an ``ImagePipelineOutput`` (True) or a tuple.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        cfg = self.transformer.config
        device, dtype = self._execution_device, self.transformer.dtype
        shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        labels = self._class_labels(class_labels, batch_size, generator, device)
        guided = labels is not None and guidance_scale != 1.0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, cfg.num_classes)])  # [cond | null]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(latents, t)
            x = torch.cat([x, x]) if guided else x
            out = self.transformer(x, t, class_labels=labels).sample
            if guided:
                eps_cond, eps_uncond = out.chunk(2)
                out = classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample

        if self.vae is not None:
            vcfg = self.vae.config
            z = latents.to(self.vae.dtype) / vcfg.scaling_factor
            if getattr(vcfg, "shift_factor", None) is not None:
                z = z + vcfg.shift_factor
            images = self.vae.decode(z).sample
        else:
            images = latents
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            result = images
        else:
            result = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def to_uint8(images: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """[0, 1] float images (NCHW tensor or NHWC array) -> NHWC uint8, rounding (not truncating)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)

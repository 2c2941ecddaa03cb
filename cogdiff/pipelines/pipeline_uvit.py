"""A diffusers pipeline for U-ViT / U-ViC models: pixel or latent space, any diffusers scheduler."""

from __future__ import annotations

import json
import numbers
import os
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from ..io import atomic_write_json, atomic_write_text, give_usual_permissions
from ..models.uvit import UViTModel
from .loading import MODEL_INDEX, DtypeArg, load_components
from .model_card import check_model_card_info, write_model_card

# diffusers' DiffusionPipeline.from_pretrained finds a pipeline class outside diffusers only through a
# module file inside the saved folder (model_index.json: "_class_name": [file stem, class name]). We
# write this one-line re-export there, so the folder reloads with the installed cogdiff's class.
# UViTPipeline.from_pretrained never imports it (see loading.py).
SHIM_NAME = "pipeline_uvit"
SHIM_SOURCE = (
    "# Written by cogdiff: re-exports the installed class so diffusers can load this folder.\n"
    "from cogdiff.pipelines.pipeline_uvit import UViTPipeline  # noqa: F401\n"
)


OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u). U-ViT's convention eps_c + s (eps_c - eps_u) is w = 1 + s."""
    return eps_uncond + w * (eps_cond - eps_uncond)


class UViTPipeline(DiffusionPipeline):
    """Sample images from a :class:`~cogdiff.models.UViTModel` with any diffusers scheduler.

    ``UViTPipeline.from_pretrained(folder)`` never runs code from the folder: it reads ``model_index.json``
    and builds the transformer with cogdiff's ``UViTModel``, the scheduler with a diffusers scheduler class
    and the VAE as diffusers' ``AutoencoderKL`` (safetensors weights only), refusing a folder that names
    anything else. ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` also loads a saved
    folder, but it imports and runs the ``.py`` files and the modules that the folder names: a copied or
    downloaded folder can run any code that way, so use it only for folders you made or checked yourself.

    Parameters:
        transformer ([`UViTModel`]): The denoiser (softmax or Cog attention; the type is in its config).
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...).
        vae ([`AutoencoderKL`], *optional*): Set for latent models; latents are divided by
            ``vae.config.scaling_factor`` (and shifted by ``shift_factor`` when present) and decoded.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "noise_pred"]

    def __init__(self, transformer: UViTModel, scheduler, vae=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self._guidance_scale, self._interrupt, self._num_timesteps = 1.0, False, 0

    # ------------------------------------------------------------------------------ saving and loading

    def save_pretrained(self, save_directory, *args, model_card: Optional[dict] = None, **kwargs):
        """Save the components, a model card ``README.md`` (with the training facts in ``model_card``, see
        :func:`~cogdiff.pipelines.model_card.write_model_card`) and a one-line ``pipeline_uvit.py`` that lets
        ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`` find this class."""
        info = check_model_card_info(model_card)
        super().save_pretrained(save_directory, *args, **kwargs)
        save_directory = os.fspath(save_directory)
        atomic_write_text(os.path.join(save_directory, SHIM_NAME + ".py"), SHIM_SOURCE)
        index_path = os.path.join(save_directory, MODEL_INDEX)
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [SHIM_NAME, type(self).__name__]
        atomic_write_json(index_path, index, indent=2)
        write_model_card(save_directory, self, **info)
        give_usual_permissions(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, variant: Optional[str] = None,
                        torch_dtype: DtypeArg = None, **components):
        """Load a local folder written by :meth:`save_pretrained` without running code from it (see the
        class docstring). ``variant`` picks transformer weights ``*.{variant}.safetensors`` (e.g. ``"raw"``);
        ``torch_dtype`` is a dtype or ``{component: dtype, "default": dtype}``; components passed by name
        (``scheduler=...``) are used instead of the saved ones."""
        if "trust_remote_code" in components:
            raise TypeError("UViTPipeline.from_pretrained never runs code from a folder; for folders you trust, "
                            "DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) does")
        folder = os.fspath(pretrained_model_name_or_path)
        loaded = load_components(folder, cls.__name__, SHIM_NAME, variant, torch_dtype, components)
        pipe = cls(**loaded)
        pipe.register_to_config(_name_or_path=folder)
        return pipe

    # ------------------------------------------------------------------------------ diffusers properties

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.transformer.config.num_classes is not None and self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a step-end callback) to skip the remaining steps."""
        return self._interrupt

    # ------------------------------------------------------------------------------ inputs

    def check_inputs(self, batch_size, num_inference_steps, class_labels, guidance_scale, output_type,
                     callback_on_step_end_tensor_inputs) -> int:
        """Validate the call's arguments (one-line errors); returns the batch size."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        if output_type == "latent" and self.vae is None:
            raise ValueError("output_type='latent' is for latent models (with a vae); this pipeline works in pixel "
                             "space: use output_type='pt'")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not available; "
                             f"choose from {self._callback_tensor_inputs}")
        if self.transformer.config.num_classes is None and guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model; this one is "
                             "unconditional (num_classes=None): use guidance_scale=1")
        if class_labels is not None and not isinstance(class_labels, numbers.Integral) \
                and not (isinstance(class_labels, torch.Tensor) and class_labels.dim() == 0):
            n = len(torch.as_tensor(class_labels).reshape(-1))
            if batch_size is not None and batch_size != n:
                raise ValueError(f"batch_size={batch_size} but {n} class_labels given: drop batch_size (the batch is "
                                 "one image per label) or pass a single int label")
            batch_size = n
        batch_size = 1 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return int(batch_size)

    def prepare_class_labels(self, class_labels, batch_size, generator, device):
        """Labels (batch,) for a class-conditional model: given ones (an int is repeated), else uniform
        draws, label i from generator i when there is one per image (so a batch equals single calls)."""
        num_classes = self.transformer.config.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels given but the model is unconditional (num_classes=None)")
            return None
        if class_labels is None:
            gens = generator if isinstance(generator, list) else [generator]
            sizes = [1] * batch_size if isinstance(generator, list) else [batch_size]
            draws = [torch.randint(0, num_classes, (n,), generator=g, device=g.device if g else "cpu")
                     for g, n in zip(gens, sizes)]
            return torch.cat([d.to(device) for d in draws])
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(batch_size)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"class_labels must be in [0, {num_classes}), got {labels.tolist()}")
        return labels

    def prepare_latents(self, batch_size, generator, latents):
        cfg = self.transformer.config
        device, dtype = self._execution_device, self.transformer.dtype
        shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size}: "
                             "pass one per image or a single one")
        if latents is None:  # drawn in float32, so a generator gives the same noise whatever the model dtype
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    # ------------------------------------------------------------------------------ sampling

    def denoise(self, latents, labels, generator, callback_on_step_end, tensor_inputs):
        """The sampling loop; the step-end callback may replace ``latents`` or set ``_interrupt``."""
        guided = self.do_classifier_free_guidance
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.transformer.config.num_classes)])  # [cond | null]
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            x = self.scheduler.scale_model_input(latents, t)
            x = torch.cat([x, x]) if guided else x
            noise_pred = self.transformer(x, t, class_labels=labels).sample
            if guided:
                eps_cond, eps_uncond = noise_pred.chunk(2)
                noise_pred = classifier_free_guidance(eps_cond, eps_uncond, self._guidance_scale)
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents, "noise_pred": noise_pred}
                outputs = callback_on_step_end(self, i, t, {k: available[k] for k in tensor_inputs})
                latents = outputs.pop("latents", latents)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [0, 1] (through the VAE for latent models)."""
        if self.vae is not None:
            vcfg = self.vae.config
            z = latents.to(self.vae.dtype) / vcfg.scaling_factor
            if getattr(vcfg, "shift_factor", None) is not None:
                z = z + vcfg.shift_factor
            latents = self.vae.decode(z).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: Optional[int] = None,
        num_inference_steps: int = 50,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        class_labels: Optional[Union[int, List[int], torch.Tensor]] = None,
        guidance_scale: float = 1.0,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable, PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Union[ImagePipelineOutput, tuple]:
        """Generate images.

        Args:
            batch_size: Number of images; by default ``len(class_labels)`` for a list/tensor of labels, else 1.
            num_inference_steps: Scheduler steps (>= 1).
            generator: ``torch.Generator``, or one per image: then image i depends only on generator i, and a
                batch equals single calls with the same generators (up to float rounding).
            class_labels: For class-conditional models: one int (``batch_size`` copies), one label per image,
                or None (uniform random labels from the generator).
            guidance_scale: Classifier-free guidance w in ``eps_u + w (eps_c - eps_u)``; 1 = off (the only
                value for unconditional models). U-ViT's ImageNet setting (0.4 in its own convention) is w = 1.4.
            latents: Optional starting noise (B, C, H, W); drawn from ``generator`` when None.
            output_type: ``"pil"``, ``"np"`` (float in [0, 1], NHWC), ``"pt"`` (float in [0, 1], NCHW) or, for
                latent models, ``"latent"`` (the final latents, not decoded).
            return_dict: Return an ``ImagePipelineOutput`` (True) or a tuple.
            callback_on_step_end: ``callback(pipe, i, t, callback_kwargs) -> dict`` after each step (or a
                diffusers ``PipelineCallback``); ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``; a returned ``"latents"`` replaces the latents, and
                setting ``pipe._interrupt = True`` skips the remaining steps.
            callback_on_step_end_tensor_inputs: Names from ``_callback_tensor_inputs`` to pass to the callback.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs)
        batch_size = self.check_inputs(batch_size, num_inference_steps, class_labels, guidance_scale, output_type,
                                       tensor_inputs)
        self._guidance_scale, self._interrupt = guidance_scale, False
        device = self._execution_device
        latents = self.prepare_latents(batch_size, generator, latents)
        labels = self.prepare_class_labels(class_labels, batch_size, generator, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        latents = self.denoise(latents, labels, generator, callback_on_step_end, tensor_inputs)

        result = latents if output_type == "latent" else self.decode(latents)
        self.maybe_free_model_hooks()
        if output_type in ("np", "pil"):
            result = result.cpu().permute(0, 2, 3, 1).numpy()
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

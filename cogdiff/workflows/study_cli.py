"""``python -m cogdiff.study run STUDY.yaml --data PATH --out OUT``, ``... evaluate OUT ARM SEED``,
``... report OUT [OUT2 ...]`` and ``... status OUT [OUT2 ...]``."""

from __future__ import annotations

import argparse

from ..cli import run_cli
from . import study
from .study_report import study_report
from .study_status import study_status


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cogdiff.study", description=study.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and evaluate every (arm, seed) not yet done, then report")
    run.add_argument("study", help="study file, e.g. configs/studies/cifar10_2arm.yaml")
    run.add_argument("--data", default=None, help="dataset path (data.path of every run; {data} in ref/floor)")
    run.add_argument("--out", required=True, help="study folder (runs/, stats/, logs/, report/)")
    run.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    run.add_argument("--progress", action="store_true", help="progress bars during evaluation")
    run.add_argument("--protocol", action="append", default=[], metavar="KEY=VALUE",
                     help="change a protocol setting, e.g. --protocol steps=2000 (repeatable)")
    run.add_argument("--only", action="append", default=[], metavar="ARM[:SEED]",
                     help="run only this arm (or this arm's seed); repeatable, e.g. --only A0_cog:0")
    run.add_argument("--per-gpu", type=int, default=1, metavar="N",
                     help="runs side by side on each GPU (default 1)")
    run.add_argument("overrides", nargs="*", help="section.key=value for every arm, e.g. train.compile=false")
    ev = sub.add_parser("evaluate", help="score one trained run of OUT (what run does after each run trains)")
    ev.add_argument("out")
    ev.add_argument("arm")
    ev.add_argument("seed", type=int)
    ev.add_argument("--device", default=None)
    ev.add_argument("--progress", action="store_true")
    rep = sub.add_parser("report", help="merge OUT folders (e.g. from several machines) into OUT/report/")
    rep.add_argument("outs", nargs="+")
    rep.add_argument("--dest", default=None, help="report folder (default: the first OUT's report/)")
    st = sub.add_parser("status", help="what is trained, scored and left, run by run (reads the logs only)")
    st.add_argument("outs", nargs="+")
    st.add_argument("--study", default=None, help="study file (default: the first OUT's study.yaml); with a newer "
                                                   "file, appended arms and seeds show as not started")
    return ap


def _run(args) -> None:
    if args.cmd == "run":
        dest = study.run_study(args.study, args.data, args.out, args.device, args.progress,
                               args.overrides, args.protocol, args.only, args.per_gpu)
    elif args.cmd == "evaluate":
        scored = study.evaluate_cli(args.out, args.arm, args.seed, args.device, args.progress)
        print(f"{args.arm} seed {args.seed}: {'scored' if scored else 'already scored'} "
              f"({study.run_dir(args.out, args.arm, args.seed).path / 'eval' / 'compare.json'})")
        return
    elif args.cmd == "status":
        print(study_status(args.outs, args.study), end="")
        return
    else:
        dest = study_report(args.outs, dest=args.dest)
    print((dest / "summary.md").read_text(), end="")
    print(f"report: {dest}")


def main(argv=None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)  # key=value overrides may come after the options
    if extra and (args.cmd != "run" or any(x.startswith("-") or "=" not in x for x in extra)):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return run_cli(lambda: _run(args), (ValueError, OSError, RuntimeError), warnings_one_line=True)

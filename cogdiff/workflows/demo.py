"""The README's main job: train tiny softmax and Cog U-ViTs on the embedded default dataset, then
sample both through the pipeline, score them against the same reference statistics and write the
comparison (table, JSON, Markdown, sample grid, FID-vs-step plot).

    python -m cogdiff.demo                     # Fashion-MNIST, CPU, ~10 minutes on 2 cores
    python -m cogdiff.demo --steps 300 --num-images 200 --out outputs/quick

Tiny CPU numbers demonstrate the workflow; they say nothing about the paper's claim (which needs
U-ViT-S/2 on CIFAR-10 for hundreds of thousands of steps on a GPU). Every step is a plain command of
the toolkit (printed before it runs), so the demo doubles as a recipe.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

from ..data import FASHION_MNIST_DIR

ATTENTION_TYPES = ("softmax", "cog")


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))  # one process per core beats two threads each on 2 cores
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _show(cmd: Sequence[str]) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)


def run(cmd: Sequence[str], threads: int) -> None:
    _show(cmd)
    subprocess.run([str(c) for c in cmd], check=True, env=_env(threads))


def run_parallel(cmds: List[Sequence[str]], logs: List[Path], threads: int) -> None:
    """Run commands side by side (one per core), each logging to its own file; fail if any fails."""
    procs = []
    for cmd, log in zip(cmds, logs):
        _show(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "w")
        procs.append(
            (subprocess.Popen([str(c) for c in cmd], env=_env(threads), stdout=f, stderr=subprocess.STDOUT), f, log)
        )
    failed = []
    for p, f, log in procs:
        p.wait()
        f.close()
        if p.returncode:
            failed.append(log)
    if failed:
        tails = "\n".join(f"--- {log} ---\n" + "".join(open(log).readlines()[-15:]) for log in failed)
        raise SystemExit(f"demo: a training run failed; see the logs:\n{tails}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml", help="training config shared by both models")
    ap.add_argument(
        "--data",
        default="fashion_mnist",
        choices=["fashion_mnist", "synthetic"],
        help="fashion_mnist (Debian package dataset-fashion-mnist) or synthetic (generated shapes, no files)",
    )
    ap.add_argument("--out", default="outputs/demo", help="output folder (runs, reference statistics, comparison)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per model")
    ap.add_argument("--fid-every", type=int, default=500, help="FID during training every N steps (0 = off)")
    ap.add_argument("--fid-images", type=int, default=200, help="images per FID evaluation during training")
    ap.add_argument("--num-images", type=int, default=500, help="images per model for the final comparison")
    ap.add_argument("--ref-images", type=int, default=1000, help="real images in the reference statistics")
    ap.add_argument("--scheduler", default="ddpm", help="sampler for FID and the comparison (a cogdiff.sampling name)")
    ap.add_argument("--sample-steps", type=int, default=100, help="sampler steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--parallel",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="train the two models side by side on this many cores",
    )
    args = ap.parse_args(argv)

    py = sys.executable
    if args.data == "fashion_mnist" and not Path(FASHION_MNIST_DIR).is_dir():
        print(f"demo: Fashion-MNIST not found in {FASHION_MNIST_DIR}: run 'sudo apt-get install dataset-fashion-mnist' "
              "(scripts/setup.sh does it as root) or pass --data synthetic", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"demo: config {args.config} not found: run from the cogdiff checkout or pass --config", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    ref = out / "reference_stats.npz"
    t0 = time.time()
    print(f"demo: tiny softmax vs Cog U-ViT ({args.config}, {args.data}), {args.steps} steps each -> {out}", flush=True)

    # 1. reference statistics of the real images (cached: a second run reuses them)
    run([py, "-m", "cogdiff.metrics", "ref", f"dataset:kind={args.data},split=train,limit={args.ref_images}",
         "--out", ref, "--device", "cpu", "--batch-size", "50"], threads=os.cpu_count() or 1)

    # 2. train both models with the same seed, data order and sampler
    common = [
        f"data.kind={args.data}",
        f"train.steps={args.steps}",
        f"train.seed={args.seed}",
        f"train.fid_every={args.fid_every}",
        f"train.fid_num_images={args.fid_images}",
        f"train.fid_ref={ref}",
        f"sample.scheduler={args.scheduler}",
        f"sample.num_inference_steps={args.sample_steps}",
        f"train.sample_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.keep_last=1",
    ]
    cmds = [
        [
            py,
            "-m",
            "cogdiff.workflows.train",
            "--config",
            args.config,
            f"model.attention_type={a}",
            f"train.output_dir={out / a}",
            *common,
        ]
        for a in ATTENTION_TYPES
    ]
    logs = [out / f"train_{a}.log" for a in ATTENTION_TYPES]
    if args.parallel > 1:
        run_parallel(cmds, logs, threads=max(1, (os.cpu_count() or 1) // len(cmds)))
        for a, log in zip(ATTENTION_TYPES, logs):
            last = [line for line in open(log).read().replace("\r", "\n").splitlines() if line.strip()][-1:]
            print(f"  {a}: {last[0] if last else ''} (log: {log})")
    else:
        for cmd in cmds:
            run(cmd, threads=os.cpu_count() or 1)

    # 3. the comparison: same N, seeds and sampler for both, same reference statistics
    run([py, "-m", "cogdiff.compare", *(out / a for a in ATTENTION_TYPES), "--ref", ref, "--out", out / "compare",
         "-n", args.num_images, "--scheduler", args.scheduler, "--steps", args.sample_steps, "--seed", args.seed,
         "--batch-size", "100", "--device", "cpu", "--no-progress"], threads=os.cpu_count() or 1)

    print(f"\ndemo: done in {time.time() - t0:.0f} s. Outputs in {out}/compare: compare.md, compare.json, grid.png,"
          " fid_vs_step.png.\nTiny CPU models on a few thousand images: these numbers demonstrate the workflow,"
          " not the paper's claim.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

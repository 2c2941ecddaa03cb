"""GPU check of CUDA-graphed training: exact resume, and graphed vs ungraphed loss. Prints one verdict line.

    python benchmarks/graphs_resume_check.py --data /data/cifar10 --steps 200

Three ``python -m cogdiff.workflows.train`` runs of the CIFAR-10 U-ViC-S/2 recipe (bf16, compiled): (1) graphed,
``2 x steps`` uninterrupted; (2) graphed, stopped after ``steps`` (its final checkpoint), then resumed to
``2 x steps`` with ``train.resume=latest``; (3) ungraphed, ``2 x steps``. PASS needs (1) and (2) to end with
bit-identical raw and EMA weights, and the logged loss of (1) and (3) to agree within ``--loss-tol`` (relative,
mean over the logged windows: bf16 noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


def train(args, out: str, steps: int, graphs: bool, *extra: str) -> None:
    config = f"configs/cifar10_uvit_s2_{args.attention}.yaml"
    data = ["data.kind=synthetic", "data.resolution=32"] if args.data == "synthetic" else [f"data.path={args.data}"]
    cmd = [sys.executable, "-m", "cogdiff.workflows.train", "--config", config, *data,
           f"train.steps={steps}", "train.compile=true",
           f"train.cuda_graphs={'true' if graphs else 'false'}", "train.log_every=20", "train.sample_every=0",
           "train.fid_every=0", "train.diag_every=0", f"train.checkpoint_every={args.steps}", "train.keep_last=0",
           f"train.output_dir={out}", *extra]
    subprocess.run(cmd, cwd=ROOT, check=True)


def final_weights(out: str) -> dict:
    from safetensors.torch import load_file

    ckpt = sorted(d for d in os.listdir(os.path.join(out, "checkpoints")) if not d.startswith("."))[-1]
    base = os.path.join(out, "checkpoints", ckpt)
    return {os.path.relpath(os.path.join(d, f), base): load_file(os.path.join(d, f))
            for d, _, files in os.walk(base) for f in files if f.endswith(".safetensors")}


def losses(out: str) -> list:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 folder (data.path), or 'synthetic'")
    ap.add_argument("--steps", type=int, default=200, help="steps before the interruption (the runs go to 2x)")
    ap.add_argument("--attention", default="cog", choices=["softmax", "cog"])
    ap.add_argument("--loss-tol", type=float, default=0.02)
    args = ap.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        full, cut, eager = (os.path.join(tmp, n) for n in ("full", "resumed", "ungraphed"))
        train(args, full, 2 * args.steps, True)
        train(args, cut, args.steps, True)
        train(args, cut, 2 * args.steps, True, "train.resume=latest")
        train(args, eager, 2 * args.steps, False)
        a, b = final_weights(full), final_weights(cut)
        diffs = [float((a[f][k].float() - b[f][k].float()).abs().max()) for f in a for k in a[f]]
        exact = a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])
        la, lc = losses(full), losses(eager)
        rel = sum(abs(x - y) / y for x, y in zip(la, lc)) / len(la)
    ok = exact and rel <= args.loss_tol
    print(f"{'PASS' if ok else 'FAIL'}: resume {'bit-identical' if exact else 'differs'} "
          f"(max |dw| {max(diffs):.3g}); graphed vs ungraphed loss mean rel diff {rel:.4f} (tol {args.loss_tol}) "
          f"over {len(la)} windows, {args.attention}, {2 * args.steps} steps")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

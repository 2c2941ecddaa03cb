"""GPU check of CUDA-graphed training: exact resume, and graphed vs ungraphed loss. Prints one verdict line.

    python benchmarks/graphs_resume_check.py --data /data/cifar10 --steps 200

Three ``python -m cogdiff.workflows.train`` runs of the CIFAR-10 U-ViC-S/2 recipe (bf16, compiled): (1) graphed,
``2 x steps`` uninterrupted; (2) graphed, stopped after ``steps`` (its final checkpoint), then resumed to
``2 x steps`` with ``train.resume=latest``; (3) ungraphed, ``2 x steps``; (4) a repeat of (1), which measures the
GPU's own run-to-run nondeterminism (atomic adds in backward kernels make two identical runs differ in the last
bits). PASS needs (1) and (2) to end with raw and EMA weights that are bit-identical, or that differ no more than
(1) and (4) do; and the logged loss of (1) and (3) to agree within ``--loss-tol`` (relative, mean over the logged
windows: bf16 noise). ``--json PATH`` also writes the numbers.
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


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[f][k].float() - b[f][k].float()).abs().max()) for f in a for k in a[f])


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


def losses(out: str) -> list:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 folder (data.path), or 'synthetic'")
    ap.add_argument("--steps", type=int, default=200, help="steps before the interruption (the runs go to 2x)")
    ap.add_argument("--attention", default="cog", choices=["softmax", "cog"])
    ap.add_argument("--loss-tol", type=float, default=0.02)
    ap.add_argument("--json", default=None, help="also write the measured numbers to this JSON file")
    args = ap.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        full, cut, eager, again = (os.path.join(tmp, n) for n in ("full", "resumed", "ungraphed", "repeat"))
        train(args, full, 2 * args.steps, True)
        train(args, cut, args.steps, True)
        train(args, cut, 2 * args.steps, True, "train.resume=latest")
        train(args, eager, 2 * args.steps, False)
        train(args, again, 2 * args.steps, True)
        a, b, c = final_weights(full), final_weights(cut), final_weights(again)
        resume_dw, exact = max_abs_diff(a, b), same(a, b)
        repeat_dw, repeat_exact = max_abs_diff(a, c), same(a, c)
        la, lc = losses(full), losses(eager)
        rel = sum(abs(x - y) / y for x, y in zip(la, lc)) / len(la)
    resume_ok = exact or (a.keys() == b.keys() and resume_dw <= repeat_dw)
    ok = resume_ok and rel <= args.loss_tol
    how = "bit-identical" if exact else "within run-to-run noise" if resume_ok else "differs beyond run-to-run noise"
    print(f"{'PASS' if ok else 'FAIL'}: resume {how} (max |dw| {resume_dw:.3g}; two uninterrupted runs: "
          f"{'bit-identical' if repeat_exact else f'{repeat_dw:.3g}'}); graphed vs ungraphed loss mean rel diff "
          f"{rel:.2e} (tol {args.loss_tol}) over {len(la)} windows, {args.attention}, {2 * args.steps} steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pass": ok, "attention": args.attention, "steps": 2 * args.steps, "data": args.data,
                       "resume_bit_identical": exact, "resume_max_abs_dw": resume_dw,
                       "repeat_bit_identical": repeat_exact, "repeat_max_abs_dw": repeat_dw,
                       "graphed_vs_ungraphed_loss_rel_diff": rel, "loss_tol": args.loss_tol,
                       "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "torch": torch.__version__}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Writes results.json beside this file: the paired loss differences quoted in README.md.

    python results/cifar10_s2_25k_seed0/kernel_check/summarize.py
"""

import json
import statistics
from pathlib import Path

from cogdiff.report import paired_loss
from cogdiff.rundir import read_jsonl

HERE = Path(__file__).resolve().parent
PARENT = HERE.parent


def main() -> None:
    t, r = read_jsonl(HERE / "cog_triton_metrics.jsonl"), read_jsonl(HERE / "cog_reference_metrics.jsonl")
    cog, softmax = read_jsonl(PARENT / "cog_metrics.jsonl"), read_jsonl(PARENT / "softmax_metrics.jsonl")
    last = max(x["step"] for x in r)  # the reference run was stopped first
    def cut(rows):
        return [x for x in rows if x["step"] <= last]
    first_window = 100  # includes compilation: compare from the second window on
    out = {
        "what": "Cog U-ViC-S/2, seed 0, full CIFAR-10 train set, bf16, compiled: train.cog_impl=triton vs reference, "
        "160 s each, one H200 each",
        "code": "train.py and cogdiff as committed in c167600 (run from the working tree just before that commit)",
        "compared_steps": [2 * first_window, last],
        "triton_minus_reference": paired_loss(cut(r), cut(t), first_window),
        "triton_minus_parent_cog_run": paired_loss(cut(cog), cut(t), first_window),
        "parent_cog_minus_parent_softmax": paired_loss(cut(softmax), cut(cog), first_window),
        "max_abs_triton_minus_reference": max(
            abs(a["loss"] - b["loss"]) for a, b in zip(cut(t), cut(r)) if a["step"] > first_window
        ),
        "images_per_s_median": {
            "triton": statistics.median(x["images_per_s"] for x in t[1:]),
            "reference": statistics.median(x["images_per_s"] for x in r[1:]),
        },
        "peak_gpu_mem_gb": {"triton": max(x["gpu_mem_gb"] for x in t), "reference": max(x["gpu_mem_gb"] for x in r)},
        "command": "CUDA_VISIBLE_DEVICES=$G timeout 160 python3 train.py --config configs/cifar10_uvit_s2_cog.yaml "
        "data.path=/tmp/c/cifar10 train.compile=true train.steps=2500 train.fid_every=0 train.sample_every=0 "
        "train.checkpoint_every=100000 train.log_every=100 train.ema_warmup=true train.cog_impl=$IMPL "
        "train.output_dir=/tmp/k_$IMPL",
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

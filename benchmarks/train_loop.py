"""Images/s of train.py's own loop: softmax vs Cog, CUDA graphs on vs off, R repeats (one GPU).

    python benchmarks/train_loop.py --data /data/cifar10 --steps 2000 --repeats 3 \\
        --out benchmarks/results/train_loop_graphs_h200.json

Each run is a fresh ``python -m cogdiff.workflows.train`` subprocess on the CIFAR-10 recipe (U-ViT-S/2 or
U-ViC-S/2, batch 128, bf16, ``train.compile=true``) with sample grids, FID and diagnostics off and one
checkpoint at the end. Its ``images_per_s`` is the median of the logged 100-step windows after the first
``--skip`` steps (compilation and CUDA-graph capture happen there). Writes the JSON (``{"runs": [...]}``)
and a Markdown table next to it with the Cog/softmax ratio per graphs setting (medians over repeats); with
``--append`` the runs already in the file are kept, so repeats can be spread over several invocations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
CONFIGS = {"softmax": "configs/cifar10_uvit_s2_softmax.yaml", "cog": "configs/cifar10_uvit_s2_cog.yaml"}


def run_once(attention: str, graphs: bool, args, out_dir: str) -> dict:
    """One training subprocess; returns its row of the results file."""
    data = ["data.kind=synthetic", "data.resolution=32"] if args.data == "synthetic" else [f"data.path={args.data}"]
    overrides = [*data, f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                 "train.compile=true", f"train.cuda_graphs={'true' if graphs else 'false'}", "train.log_every=100",
                 "train.sample_every=0", "train.fid_every=0", "train.diag_every=0",
                 f"train.checkpoint_every={args.steps}", f"train.output_dir={out_dir}"]
    cmd = [sys.executable, "-m", "cogdiff.workflows.train", "--config", CONFIGS[attention], *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    windows = [r["images_per_s"] for r in rows if r["step"] > args.skip]
    if not windows:
        raise SystemExit(f"no 100-step window after --skip {args.skip} steps: raise --steps")
    return {"attention": attention, "graphs": graphs, "batch_size": args.batch_size, "steps": args.steps,
            "images_per_s": statistics.median(windows), "windows": len(windows), "commit": args.commit,
            "gpu": args.gpu, "command": " ".join(["python", "-m", "cogdiff.workflows.train", *cmd[3:-1]])}


def table(runs: list) -> str:
    lines = ["| graphs | softmax images/s | Cog images/s | Cog/softmax time ratio |", "|---|---|---|---|"]
    for graphs in (False, True):
        got = {a: [r["images_per_s"] for r in runs if r["attention"] == a and r["graphs"] == graphs] for a in CONFIGS}
        if not all(got.values()):
            continue
        med = {a: statistics.median(v) for a, v in got.items()}
        lines.append(f"| {'on' if graphs else 'off'} | {med['softmax']:.0f} | {med['cog']:.0f} | "
                     f"{med['softmax'] / med['cog']:.3f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True,
                    help="CIFAR-10 folder (data.path), or 'synthetic' for generated 3x32x32 images (same step cost)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", default="softmax,cog", help="comma-separated, run in this order (softmax,cog)")
    ap.add_argument("--graphs", default="off,on", help="CUDA-graphs settings to run, comma-separated (off,on)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip", type=int, default=200, help="steps left out of the median (compilation, capture)")
    ap.add_argument("--out", default="benchmarks/results/train_loop_graphs_h200.json")
    ap.add_argument("--commit", default=None, help="commit to record (default: git rev-parse)")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in --out and add these (repeats over several invocations)")
    args = ap.parse_args(argv)
    settings = {"off": False, "on": True}
    if not set(args.graphs.split(",")) <= set(settings):
        ap.error(f"--graphs {args.graphs!r}: use a comma-separated list of off and on")

    import torch

    from cogdiff.io import atomic_write_json, atomic_write_text
    from cogdiff.rundir import git_commit

    args.commit = args.commit or git_commit(ROOT)
    args.gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    runs = []
    if args.append and os.path.isfile(args.out):
        with open(args.out) as f:
            runs = json.load(f)["runs"]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # interleaved, so drift over time hits every variant alike
            for attention in args.attention.split(","):
                for graphs in (settings[g] for g in args.graphs.split(",")):
                    runs.append(run_once(attention, graphs, args, os.path.join(tmp, f"{attention}_{graphs}_{rep}")))
                    print(json.dumps(runs[-1]), flush=True)
                    atomic_write_json(args.out, {"runs": runs})  # after every run: a cut-short benchmark keeps its rows
    md = table(runs)
    atomic_write_text(os.path.splitext(args.out)[0] + ".md", f"# train.py loop, {args.gpu}\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

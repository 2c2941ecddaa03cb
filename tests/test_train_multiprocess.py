"""Runs in subprocesses: ``accelerate launch`` with 2 CPU processes (gloo) and bf16 autocast.

Two processes x 1 micro-batch and one process x 2 accumulated micro-batches use the same examples and
noise (slot-seeded), so they must reach the same weights up to float summation order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MICRO as BASE
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
MICRO = [
    *BASE,
    "optim.warmup_steps=2",
    "optim.lr=1e-3",
    "train.steps=6",
    "train.log_every=2",
    "train.checkpoint_every=3",
]
# gloo on CPU: torchrun via --multi_gpu, and ACCELERATE_USE_CPU so the processes form a CPU process group.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}


def run(cmd, cwd):
    proc = subprocess.run(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def raw_weights(run_dir):
    return load_file(run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.raw.safetensors")


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    two = tmp_path / "two"
    log = run([*launch, str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.yaml"), *MICRO,
               f"train.output_dir={two}"], tmp_path)
    assert "2 process(es) x 1 x 8 per step" in log
    one = tmp_path / "one"
    run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            *MICRO,
            "train.grad_accum=2",
            f"train.output_dir={one}",
        ],
        tmp_path,
    )

    ckpt = two / "checkpoints" / "step_0000006"
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()
    a, b = raw_weights(two), raw_weights(one)
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    assert gap < 1e-5, gap
    rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ra, rb = rows(two), rows(one)
    assert [r["step"] for r in ra] == [2, 4, 6]
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(
            y["grad_norm"], rel=1e-4
        )
    # and training did move the weights (the comparison is not between two untouched initialisations)
    first = load_file(two / "checkpoints" / "step_0000003" / "transformer" / "diffusion_pytorch_model.raw.safetensors")
    assert max((a[k] - first[k]).abs().max().item() for k in a) > 1e-3


def test_bf16_autocast_runs_on_cpu(tmp_path):
    """mixed_precision=bf16 goes through accelerate's autocast (a separate process: accelerate's state is global)."""
    base = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        *MICRO,
        "train.steps=2",
        "train.checkpoint_every=2",
    ]
    procs = [subprocess.Popen([*base, *extra, f"train.output_dir={tmp_path / name}"], cwd=tmp_path, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name, extra in (("bf16", ["train.mixed_precision=bf16"]), ("fp32", []))]  # side by side
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-4000:]
    loss = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["loss"]  # noqa: E731
    a, b = loss(tmp_path / "bf16"), loss(tmp_path / "fp32")
    assert a == pytest.approx(b, rel=2e-2) and a != b  # close, but computed in bf16
    assert raw_weights(tmp_path / "bf16")["pos_embed"].dtype == torch.float32  # weights stay fp32

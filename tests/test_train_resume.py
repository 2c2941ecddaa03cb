"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (CPU), and a crash
while a checkpoint is being written leaves the previous checkpoint intact and loadable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MICRO
from safetensors.torch import load_file

from cogdiff.config import load_config
from cogdiff.pipelines import UViTPipeline
from cogdiff.training import list_checkpoints, load_training_state
from cogdiff.training.checkpoint import step_of
from cogdiff.workflows import trainer
from cogdiff.workflows.train import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "tiny.yaml"
# same threads in every run; this checkout's cogdiff whatever is installed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def launch(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "cogdiff.workflows.train",
        "--config",
        str(TINY_YAML),
        *MICRO,
        f"train.output_dir={out}",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=out.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).is_file() else []


def weights(run):
    t = run / "pipeline" / "transformer"
    return load_file(t / "diffusion_pytorch_model.raw.safetensors"), load_file(
        t / "diffusion_pytorch_model.safetensors"
    )


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_and_resume_is_bit_exact(tmp_path):
    common = ["train.steps=160", "train.checkpoint_every=20", "train.log_every=10", "train.keep_last=0"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = launch(full, *common)
    victim = launch(killed, *common)
    deadline = time.monotonic() + 240
    while True:  # kill once a checkpoint exists and the run has logged steps past it
        ckpts = list_checkpoints(killed / "checkpoints")
        logged = rows(killed / "metrics.jsonl")
        if ckpts and logged and logged[-1]["step"] > step_of(ckpts[-1]):
            break
        assert victim.poll() is None, "the run finished before it could be killed:\n" + victim.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = rows(killed / "metrics.jsonl")[-1]["step"]
    assert killed_at < 160 and not (killed / "pipeline").exists()

    resumed = launch(killed, *common, "train.resume=latest")
    out_resumed, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out_resumed
    out_ref, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out_ref

    for a, b in zip(weights(full), weights(killed)):  # raw and EMA weights
        assert_same_tensors(a, b)
    sa, _ = load_training_state(full / "checkpoints" / "step_0000160", 0)
    sb, _ = load_training_state(killed / "checkpoints" / "step_0000160", 0)
    assert sa["step"] == sb["step"] == 160 and sa["ema_num_updates"] == sb["ema_num_updates"] == 160
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert sa["lr_scheduler"] == sb["lr_scheduler"]
    # The log has each step once (rows the killed run wrote after its checkpoint were dropped) and the same values.
    ra, rb = rows(full / "metrics.jsonl"), rows(killed / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(10, 161, 10))
    assert [(r["loss"], r["grad_norm"], r["lr"]) for r in ra] == [(r["loss"], r["grad_norm"], r["lr"]) for r in rb]


@pytest.fixture()
def train_mod():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    yield trainer  # the module whose write_pipeline the checkpoint writer calls
    torch.set_num_threads(n)


def test_crash_while_writing_keeps_previous_checkpoint(train_mod, tmp_path, monkeypatch):
    real = train_mod.write_pipeline

    def crash_at_step_10(directory, *args, **kwargs):
        real(directory, *args, **kwargs)  # the weights are on disk, the training state is not yet
        if directory.name.endswith("step_0000010"):
            raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(train_mod, "write_pipeline", crash_at_step_10)
    def cfg(*extra):
        return load_config(
            TINY_YAML,
            [
                *MICRO,
                "train.steps=10",
                "train.checkpoint_every=5",
                "train.log_every=5",  # noqa: E731
                f"train.output_dir={tmp_path}",
                *extra,
            ],
        )
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg())
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_0000005"]
    assert (root / ".tmp_step_0000010" / "transformer").is_dir() and not (root / "step_0000010").exists()
    state, rng = load_training_state(root / "step_0000005", 0)  # the previous checkpoint still loads
    assert state["step"] == 5 and rng is not None
    assert UViTPipeline.from_pretrained(root / "step_0000005").transformer.config.embed_dim == 32

    monkeypatch.setattr(train_mod, "write_pipeline", real)
    run_training(cfg("train.resume=latest"))
    assert [p.name for p in list_checkpoints(root)] == ["step_0000005", "step_0000010"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [5, 10]

"""Training hardening: Ctrl-C prints where the run stopped and the exact command that resumes it (no traceback,
checkpoints intact), and ``train.fid_every > 0`` without ``train.fid_ref`` builds the reference statistics from the
training data once, cached by the data's fingerprint."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MICRO

from cogdiff.config import ConfigError, load_config
from cogdiff.training import list_checkpoints
from cogdiff.training.checkpoint import step_of

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = str(ROOT / "configs" / "tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a child of a background job inherits SIGINT ignored


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))}


def test_ctrl_c_prints_step_checkpoint_and_resume_command(tmp_path):
    out = tmp_path / "run"
    argv = ["--config", TINY_YAML, *MICRO, "train.steps=100000", "train.checkpoint_every=3", "train.log_every=3",
            "train.keep_last=2", f"train.output_dir={out}"]
    proc = subprocess.Popen([sys.executable, "-m", "cogdiff.workflows.train", *argv], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while len(list_checkpoints(out / "checkpoints")) < 2:  # two checkpoints: the run is well inside its loop
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-5:]
    last = list_checkpoints(out / "checkpoints")[-1]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]  # no half-written one
    line = errors[0]
    assert line.startswith("error: interrupted after step ")
    assert f"last checkpoint {last} (step {step_of(last)})" in line
    done = int(line.split("after step ")[1].split()[0])
    assert done >= step_of(last)
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:3] == ["python", "-m", "cogdiff.workflows.train"] and command[3:-1] == argv
    assert command[-1] == "train.resume=latest"

    before = snapshot(last)
    resumed = subprocess.run([sys.executable, *command[1:], f"train.steps={step_of(last) + 2}"], cwd=tmp_path,
                             env=ENV, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"steps {step_of(last)} -> {step_of(last) + 2}" in resumed.stdout  # continued from that checkpoint
    assert snapshot(last) == before
    assert step_of(list_checkpoints(out / "checkpoints")[-1]) == step_of(last) + 2


def test_interrupt_message_from_python_and_without_checkpoint():
    from cogdiff.workflows.train import TrainingInterrupted

    e = TrainingInterrupted(7, 100, None)
    assert isinstance(e, KeyboardInterrupt) and "no checkpoint written yet" in str(e)
    assert "after step 7 of 100" in str(e)
    e = TrainingInterrupted(7, 100, Path("runs/x/checkpoints/step_0000005"))
    assert "(step 5)" in str(e) and "train.resume=latest" in str(e)


def test_resume_command_keeps_arguments_and_replaces_resume(monkeypatch):
    from cogdiff.workflows import train

    monkeypatch.setattr(sys, "argv", ["train.py", "--config", "c.yaml"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    cmd = train.resume_command(["--config", "c.yaml", "train.resume=runs/a/checkpoints/step_0000010", "x.y=a b"])
    assert shlex.split(cmd) == ["accelerate", "launch", "--num_processes", "2", "train.py", "--config", "c.yaml",
                                "x.y=a b", "train.resume=latest"]


# ------------------------------------------------------------------ FID reference statistics from the training data

FID = ["data.limit=16", "train.steps=2", "train.fid_every=2", "train.fid_num_images=4", "sample.batch_size=4",
       "train.checkpoint_every=0"]


def test_fid_reference_built_from_training_data_once(capsys, tmp_path):
    import numpy as np

    from cogdiff.data import build_dataset
    from cogdiff.metrics import RefStats, fingerprint_images
    from cogdiff.sources import dataset_batches
    from cogdiff.workflows import train

    cache = tmp_path / "cache"
    args = ["--config", TINY_YAML, *MICRO, *FID, f"data.cache_dir={cache}"]
    assert train.main([*args, f"train.output_dir={tmp_path / 'a'}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "reference statistics" in ln]
    found = sorted((cache / "fid_ref").glob("*.npz"))
    assert len(found) == 1 and len(lines) == 1 and str(found[0]) in lines[0] and "built" in lines[0], lines
    cfg = load_config(TINY_YAML, [*MICRO, *FID, "data.random_flip=false"])
    images = np.concatenate(list(dataset_batches(build_dataset(cfg.data), 8)))
    stats = RefStats.load(str(found[0]))
    assert stats.count == 16 and stats.fingerprint == fingerprint_images(images)  # the training images, no flips
    fid = [ln for ln in (tmp_path / "a" / "fid.jsonl").read_text().splitlines()]
    assert len(fid) == 1 and '"fid": ' in fid[0]
    assert f"fid_ref: {found[0]}" in (tmp_path / "a" / "config.yaml").read_text()  # the run records what it used

    before = snapshot(cache)
    assert train.main([*args, f"train.output_dir={tmp_path / 'b'}"]) == 0  # same data: reused, not rebuilt
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "reference statistics" in ln]
    assert len(lines) == 1 and "reusing" in lines[0] and str(found[0]) in lines[0]
    assert snapshot(cache) == before


def test_fid_on_latents_without_reference_is_a_config_error():
    from cogdiff.workflows.trainer import training_ref_stats

    cfg = load_config(TINY_YAML, ["data.kind=latents", "data.path=/nowhere", "train.fid_every=10"])
    with pytest.raises(ConfigError, match="train.fid_ref=.*cogdiff.metrics ref"):
        training_ref_stats(cfg, None, None)


# ------------------------------------------------------------------ disk full while a checkpoint is written

@pytest.mark.parametrize("failure", ["oserror", "stream_writer"])
def test_disk_full_while_checkpointing_removes_the_partial_folder(capsys, tmp_path, monkeypatch, failure):
    """A write that fails (ENOSPC from the pipeline writer, or torch.save's stream-writer RuntimeError) is one line
    that says what happened and how to resume; the half-written folder is removed, the previous checkpoint kept."""
    import errno

    import torch

    from cogdiff.training import load_training_state
    from cogdiff.workflows import train, trainer

    real_write, real_save = trainer.write_pipeline, torch.save

    def write_pipeline(directory, *args, **kwargs):
        real_write(directory, *args, **kwargs)
        if failure == "oserror" and directory.name.endswith("step_0000004"):
            raise OSError(errno.ENOSPC, "No space left on device")

    def save(obj, f, *args, **kwargs):
        if failure == "stream_writer" and str(f).endswith("step_0000004/training_state.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainer, "write_pipeline", write_pipeline)
    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    args = ["--config", TINY_YAML, *MICRO, "train.steps=4", "train.checkpoint_every=2", "train.log_every=2",
            f"train.output_dir={out}"]
    assert train.main(args) == 2
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]  # the rest is the progress bar
    assert "Traceback" not in stderr and len(err) == 1 and err[0].startswith("error: writing checkpoint step 4 failed")
    assert "removed" in err[0] and "free disk space" in err[0] and "train.resume=latest" in err[0]
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002"]  # no .tmp_step_0000004 left behind
    assert load_training_state(root / "step_0000002", 0)[0]["step"] == 2
    monkeypatch.undo()
    assert train.main([*args, "train.resume=latest"]) == 0  # what the message says to do works
    assert [p.name for p in list_checkpoints(root)][-1] == "step_0000004"


@pytest.mark.slow
def test_fid_reference_built_once_under_two_processes(tmp_path):
    """accelerate launch, 2 CPU processes: the main process builds the statistics, the other gets their path."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    proc = subprocess.run([*launch, str(ROOT / "train.py"), "--config", TINY_YAML, *MICRO, *FID,
                           f"data.cache_dir={cache}", f"train.output_dir={out}"], cwd=tmp_path,
                          env={**ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    said = [ln for ln in proc.stdout.splitlines() if "reference statistics" in ln]
    assert len(said) == 1 and "built" in said[0]  # one process built them and said so
    assert len(list((cache / "fid_ref").glob("*.npz"))) == 1
    assert len((out / "fid.jsonl").read_text().splitlines()) == 1


def test_corrupt_image_in_training_folder_names_it(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    from cogdiff.workflows import train

    folder = tmp_path / "data" / "train" / "cat"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes((folder / "0.png").read_bytes()[:50])
    before = snapshot(tmp_path)
    assert train.main(["--config", TINY_YAML, *MICRO, "data.kind=cifar10", f"data.path={tmp_path / 'data'}",
                       "data.resolution=null", f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.png is not a readable image" in err[0], err
    assert snapshot(tmp_path) == before  # no run folder, no decoded cache


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_ctrl_c_message_once_per_multi_process_run(monkeypatch, capsys, rank, printed):
    """Under accelerate every process gets the Ctrl-C: only rank 0 prints the message; all exit 130."""
    from cogdiff.cli import INTERRUPTED, run_cli
    from cogdiff.workflows.train import TrainingInterrupted

    monkeypatch.setenv("RANK", rank)

    def body():
        raise TrainingInterrupted(7, 100, None)

    assert run_cli(body) == INTERRUPTED
    err = capsys.readouterr().err
    assert ("interrupted after step 7 of 100" in err) is printed
    assert "Traceback" not in err

"""sample.py / cogdiff.sampling: per-image determinism, resume after an interruption, process split."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import cogdiff.sampling as sampling
import cogdiff.workflows.sample
from cogdiff import UViTModel, UViTPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def tiny_pipeline(num_classes=None) -> UViTPipeline:
    torch.manual_seed(0)
    model = UViTModel(sample_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, num_classes=num_classes)
    return UViTPipeline(model, DDPMScheduler(num_train_timesteps=1000))


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "pipeline"  # a training-run layout: <run>/pipeline/
    tiny_pipeline().save_pretrained(str(path))
    return str(path.parent)


def test_images_depend_only_on_seed_and_index():
    pipe = sampling.with_scheduler(tiny_pipeline(), "ddpm")  # stochastic sampler: per-image step noise too
    pipe.set_progress_bar_config(disable=True)
    whole = sampling.sample_batch(pipe, range(5), STEPS, seed=7)
    split = np.concatenate(
        [sampling.sample_batch(pipe, [0, 1], STEPS, seed=7), sampling.sample_batch(pipe, [2, 3, 4], STEPS, seed=7)]
    )
    assert whole.dtype == np.uint8 and whole.shape == (5, 8, 8, 3)
    assert np.array_equal(whole, split)
    assert not np.array_equal(whole, sampling.sample_batch(pipe, range(5), STEPS, seed=8))
    assert not np.array_equal(whole[0], whole[1])


def test_class_labels_per_image():
    labels = sampling.image_labels(10, 0, range(200))
    assert labels[:50] == sampling.image_labels(10, 0, range(50)) and set(labels) == set(range(10))
    pipe = tiny_pipeline(num_classes=10)
    pipe.set_progress_bar_config(disable=True)
    a = sampling.sample_batch(pipe, range(3), STEPS, seed=1)
    b = np.concatenate(
        [sampling.sample_batch(pipe, [0], STEPS, seed=1), sampling.sample_batch(pipe, [1, 2], STEPS, seed=1)]
    )
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="unconditional"):
        sampling.sample_batch(tiny_pipeline(), [0], STEPS, class_label=3)


def test_schedulers_from_config():
    pipe = tiny_pipeline()
    for name in sampling.SCHEDULERS:
        sched = sampling.make_scheduler(name, pipe.scheduler.config)
        assert sched.config.num_train_timesteps == 1000
        assert sampling.scheduler_label(sampling.with_scheduler(pipe, name)) == name
    with pytest.raises(ValueError, match="choose one of"):
        sampling.make_scheduler("magic", pipe.scheduler.config)


def test_every_scheduler_starts_from_pure_noise_at_t_max(tmp_path):
    """All samplers start at t = 999 (no "leading" spacing inherited from the training DDPM config, fresh or
    saved to disk, where DDIM at 4 steps would run [750, 500, 250, 0] and DPM++ start at 950)."""
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(str(tmp_path))
    saved = DDPMScheduler.from_pretrained(str(tmp_path)).config
    assert saved.timestep_spacing == "leading"
    for base in (DDPMScheduler(num_train_timesteps=1000).config, saved):
        for name in sampling.SCHEDULERS:
            for steps in (4, 50):
                sched = sampling.make_scheduler(name, base)
                sched.set_timesteps(steps)
                ts = [float(t) for t in sched.timesteps]
                assert ts[0] == 999, (name, steps, ts[:4])
                assert ts[-1] <= 1000 / steps, (name, steps, ts[-4:])  # equal strides down to the end


def test_resume_after_interruption_equals_uninterrupted(pipe_dir, tmp_path, monkeypatch):
    pipe = sampling.load_pipeline(pipe_dir, scheduler="dpm++")
    kw = dict(
        num_images=7, batch_size=2, num_inference_steps=STEPS, seed=3, png=True, progress=False, settings={"a": 1}
    )
    full = str(tmp_path / "full")
    sampling.sample_to_dir(pipe, full, **kw)
    reference = np.load(sampling.merge_parts(full, 7, 2))["images"]

    real, calls = sampling.sample_batch, []

    def interrupted(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while sampling the third batch
        calls.append(args[1])
        return real(*args, **kwargs)

    part = str(tmp_path / "part")
    monkeypatch.setattr(sampling, "sample_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sampling.sample_to_dir(pipe, part, **kw)
    assert len(os.listdir(os.path.join(part, "parts"))) == 2  # finished batches only, no temporary files
    with pytest.raises(FileNotFoundError, match="rerun"):
        sampling.merge_parts(part, 7, 2)
    monkeypatch.setattr(sampling, "sample_batch", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    sampling.sample_to_dir(pipe, part, **kw)
    assert [list(c) for c in calls] == [[0, 1], [2, 3], [4, 5], [6]]  # resumed at the third batch
    resumed = np.load(sampling.merge_parts(part, 7, 2))["images"]
    assert resumed.shape == (7, 8, 8, 3) and np.array_equal(resumed, reference)
    assert sorted(os.listdir(os.path.join(part, "png"))) == [f"{i:06d}.png" for i in range(7)]
    with pytest.raises(ValueError, match="other settings"):
        sampling.sample_to_dir(pipe, part, **{**kw, "settings": {"a": 2}})


def test_process_split_covers_the_same_images(pipe_dir, tmp_path):
    pipe = sampling.load_pipeline(pipe_dir)
    kw = dict(num_images=5, batch_size=2, num_inference_steps=STEPS, seed=0, progress=False)
    for rank in (0, 1):  # what two processes under accelerate launch do, one after the other here
        sampling.sample_to_dir(pipe, str(tmp_path / "split"), rank=rank, world=2, **kw)
    sampling.sample_to_dir(pipe, str(tmp_path / "single"), **kw)
    a = np.load(sampling.merge_parts(str(tmp_path / "split"), 5, 2))["images"]
    b = np.load(sampling.merge_parts(str(tmp_path / "single"), 5, 2))["images"]
    assert np.array_equal(a, b)
    assert sampling.batch_ranges(5, 2, 0, 2) == [(0, 2), (4, 5)] and sampling.batch_ranges(5, 2, 1, 2) == [(2, 4)]


def test_all_processes_check_settings_before_writing(pipe_dir, tmp_path):
    """Every rank checks settings.json read-only before writing anything; only rank 0 writes it, before the barrier."""
    pipe = sampling.load_pipeline(pipe_dir)
    kw = dict(num_images=4, batch_size=2, num_inference_steps=STEPS, progress=False, world=2)
    out = str(tmp_path / "run")
    settings_file = os.path.join(out, "settings.json")
    seen = []
    sampling.sample_to_dir(
        pipe, out, rank=1, settings={"seed": 0}, barrier=lambda: seen.append(os.path.isfile(settings_file)), **kw
    )
    assert seen == [False] and not os.path.isfile(settings_file)  # rank 1 never writes settings.json
    sampling.sample_to_dir(
        pipe, out, rank=0, settings={"seed": 0}, barrier=lambda: seen.append(os.path.isfile(settings_file)), **kw
    )
    assert seen == [False, True]  # rank 0 wrote it before the barrier
    parts = sorted(os.listdir(os.path.join(out, "parts")))
    assert len(parts) == 2
    os.remove(os.path.join(out, "parts", parts[1]))  # rank 1's part: a rerun with other settings must not redo it
    with pytest.raises(ValueError, match="other settings"):  # another run's folder: rank 1 refuses too
        sampling.sample_to_dir(
            pipe, out, rank=1, settings={"seed": 1}, barrier=lambda: pytest.fail("barrier reached"), **kw
        )
    assert sorted(os.listdir(os.path.join(out, "parts"))) == parts[:1]


def test_sample_py_cli(pipe_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), pipe_dir, "--out", str(out), "-n", "3", "--batch-size", "2",
           "--steps", "2", "--scheduler", "ddim", "--format", "both", "--device", "cpu", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    images = np.load(out / "images.npz")["images"]
    assert images.shape == (3, 8, 8, 3) and len(os.listdir(out / "png")) == 3
    settings = json.loads((out / "settings.json").read_text())
    assert settings["scheduler"] == "ddim" and settings["steps"] == 2 and settings["seed"] == 0


def test_sample_py_bad_input_is_one_line(tmp_path, capsys):
    script = cogdiff.workflows.sample
    assert script.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-n", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_index.json" in err
    assert script.main([str(tmp_path), "--out", str(tmp_path / "o"), "-n", "0"]) == 2

"""CUDA graphs in training (config handling and fallback, on CPU) and the training-side diagnostics."""

import json
from pathlib import Path

import pytest
import torch
from conftest import MICRO
from safetensors.torch import load_file

from cogdiff.config import ConfigError, load_config
from cogdiff.training.graphs import graph_blockers, resolve_cuda_graphs
from cogdiff.workflows.train import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "tiny.yaml"


def cfg_of(*extra):
    return load_config(TINY_YAML, [*MICRO, *extra])


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("true", "true"), ("False", "false")])
def test_cuda_graphs_key_accepts_text_and_booleans(text, expected):
    assert cfg_of(f"train.cuda_graphs={text}").train.cuda_graphs == expected


def test_cuda_graphs_key_rejects_other_values():
    with pytest.raises(ConfigError, match="train.cuda_graphs must be one of"):
        cfg_of("train.cuda_graphs=sometimes")


def test_auto_is_off_on_cpu_with_one_line(capsys):
    said = []
    tc = cfg_of("train.compile=true").train
    assert resolve_cuda_graphs(tc, "cpu", error=ConfigError, say=said.append) is False
    assert len(said) == 1 and "not CUDA" in said[0]
    said.clear()
    assert resolve_cuda_graphs(cfg_of().train, "cpu", say=said.append) is False
    assert said == []  # not compiling: graphs were never expected, nothing to say


def test_true_with_a_blocker_is_a_one_line_config_error():
    tc = cfg_of("train.cuda_graphs=true", "train.compile=true").train
    with pytest.raises(ConfigError, match="cuda_graphs=true is not possible") as e:
        resolve_cuda_graphs(tc, "cpu", error=ConfigError)
    assert "\n" not in str(e.value)


def test_blockers_name_each_setting_that_prevents_graphs():
    tc = cfg_of("train.compile=false", "train.grad_accum=2", "train.gradient_checkpointing=true",
                "train.cog_impl=reference").train
    why = " ".join(graph_blockers(tc, "cuda"))
    for name in ("train.compile", "grad_accum", "gradient_checkpointing", "cog_impl=reference"):
        assert name in why
    assert graph_blockers(cfg_of("train.compile=true").train, "cuda") == []
    assert resolve_cuda_graphs(cfg_of("train.compile=true").train, "cuda") is True
    assert resolve_cuda_graphs(cfg_of("train.compile=true", "train.cuda_graphs=false").train, "cuda") is False


def test_training_with_cuda_graphs_true_on_cpu_stops_before_training(tmp_path):
    cfg = cfg_of("train.steps=2", "train.cuda_graphs=true", f"train.output_dir={tmp_path / 'r'}")
    with pytest.raises(ConfigError, match="not CUDA"):
        run_training(cfg)
    assert not (tmp_path / "r" / "checkpoints").exists()


def weights_of(run):
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    return {p.relative_to(ckpt).as_posix(): load_file(p) for p in ckpt.rglob("*.safetensors")}


def test_diagnostics_leave_the_weights_bit_identical(tmp_path):
    common = ["train.steps=6", "train.checkpoint_every=6", "train.log_every=3", "train.diag_probe_size=20"]
    off = run_training(cfg_of(*common, "train.diag_every=0", f"train.output_dir={tmp_path / 'off'}"))
    on = run_training(cfg_of(*common, "train.diag_every=2", f"train.output_dir={tmp_path / 'on'}"))
    a, b = weights_of(off), weights_of(on)
    assert a.keys() == b.keys() and a
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)
    assert not (off / "diagnostics.jsonl").exists()
    diag = [json.loads(line) for line in (on / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in diag] == [2, 4, 6]
    assert len(diag[0]["loss_by_t"]) == 10 and len(diag[0]["loss_by_t_ema"]) == 10
    assert [blk["attention"] for blk in diag[0]["blocks"]] and diag[0]["loss_by_t"] != diag[-1]["loss_by_t"]
    metrics = [json.loads(line) for line in (on / "metrics.jsonl").read_text().splitlines()]
    assert all("grad_norm" in r for r in metrics)


def test_a_too_small_probe_is_a_config_error(tmp_path):
    cfg = cfg_of("train.steps=2", "train.diag_every=1", "train.diag_probe_size=4", f"train.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="diag_probe_size"):
        run_training(cfg)


def probe_of(*extra):
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from cogdiff.data import build_dataset
    from cogdiff.workflows.trainer import build_probe

    cfg = cfg_of("train.diag_probe_size=20", *extra)
    t = SimpleNamespace(cfg=cfg, data=build_dataset(cfg.data, "cpu"), device="cpu", num_classes=None,
                        noise_scheduler=DDPMScheduler(num_train_timesteps=1000))
    return build_probe(t)


def test_the_probe_is_the_same_for_every_training_seed_and_moves_with_its_own_seed():
    a, b = probe_of("train.seed=0"), probe_of("train.seed=1")
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.t, b.t)  # seeds compare on the same samples
    c = probe_of("train.seed=0", "train.diag_probe_seed=1")
    assert not torch.equal(a.x_t, c.x_t)

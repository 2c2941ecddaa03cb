"""Small library and workflow helpers that need no training run: provenance, run_training_process, plots."""


import pytest


def test_git_commit_outside_git_uses_the_environment(tmp_path, monkeypatch):
    from cogdiff.rundir import git_commit

    monkeypatch.delenv("COGDIFF_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("COGDIFF_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    assert git_commit() not in ("unknown", "abc123")  # inside this checkout git wins


def test_run_training_process_passes_env_and_threads(monkeypatch, tmp_path):
    import subprocess

    from cogdiff.workflows import train

    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(train.subprocess, "run", fake_run)
    out = train.run_training_process("configs/tiny.yaml", tmp_path / "r", ["train.steps=2"], threads=2,
                                     env={"CUDA_VISIBLE_DEVICES": "1"})
    assert out == str(tmp_path / "r")
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1" and seen["env"]["OMP_NUM_THREADS"] == "2"
    assert seen["cmd"][-1] == "train.steps=2" and f"train.output_dir={tmp_path / 'r'}" in seen["cmd"]


def test_plot_block_stats_draws_every_run(tmp_path):
    from cogdiff.analysis.plots import plot_block_stats

    rows = [{"step": s, "blocks": [{"logit_absmax": s * (b + 1.0), "neg_share": None if b == 0 else 0.3}
                                   for b in range(3)]} for s in (500, 1000)]
    fig = plot_block_stats({"a/s0": rows, "b/s0": rows[:1]}, ["logit_absmax", "neg_share"], tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["a/s0: logit_absmax", "a/s0: neg_share", "b/s0: logit_absmax",
                                               "b/s0: neg_share"]
    assert len(axes[0].lines) == 3  # one line per block


def test_fused_adamw_setting():
    from cogdiff.config import ConfigError, load_config
    from cogdiff.workflows.trainer import adamw_kernel

    assert adamw_kernel("auto", "cuda") == {"fused": True} and adamw_kernel("auto", "cpu") == {}
    assert adamw_kernel("false", "cuda") == {} and adamw_kernel("true", "cuda") == {"fused": True}
    with pytest.raises(ConfigError, match="optim.fused=auto"):
        adamw_kernel("true", "cpu")
    assert load_config("configs/tiny.yaml", ["optim.fused=false"]).optim.fused == "false"
    with pytest.raises(ConfigError, match="optim.fused must be one of"):
        load_config("configs/tiny.yaml", ["optim.fused=maybe"])

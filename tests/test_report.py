"""python -m cogdiff.report (the study report), paired_loss, and scripts/cifar10_comparison.sh end to end on a tiny
fake CIFAR-10."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cogdiff.analysis.paired import paired_loss
from cogdiff.report import paired_loss as old_paired_loss
from cogdiff.workflows import report as rp
from cogdiff.workflows.study_report import study_report

REPO = Path(__file__).resolve().parents[1]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


LOSSES = {"softmax": [0.50, 0.40, 0.30, 0.20], "cog": [0.45, 0.41, 0.33, 0.21]}


def _loss_rows(losses):
    return [dict(step=500 * (i + 1), loss=loss) for i, loss in enumerate(losses)]


def test_paired_loss_numbers():
    base, other = _loss_rows(LOSSES["softmax"]), _loss_rows(LOSSES["cog"])
    pl = paired_loss(base, other, 800)  # windows 1000, 1500, 2000 differ by .01, .03, .01
    assert pl["windows"] == 3 and pl["from_step"] == 800 and pl["share_higher"] == 1.0
    assert pl["mean_diff"] == pytest.approx(0.05 / 3)
    assert pl["rel_mean_diff"] == pytest.approx((0.05 / 3) / 0.30)  # base windows 0.40, 0.30, 0.20
    assert pl["sd_diff"] == pytest.approx(np.std([0.01, 0.03, 0.01], ddof=1))
    # lag-1 autocorrelation of (-1/3, 2/3, -1/3) * 0.02 around the mean: (-2/9 - 2/9) / (6/9) = -2/3
    assert pl["lag1_autocorr"] == pytest.approx(-2 / 3)
    assert paired_loss(base, other, 2000) is None  # no window after the last step
    assert paired_loss(base, base, 0)["lag1_autocorr"] is None  # identical runs: no variance
    assert old_paired_loss is paired_loss  # scripts written against the old report import it from cogdiff.report


def fake_study_out(tmp_path):
    """An OUT folder as python -m cogdiff.study run leaves it, with hand-made numbers."""
    out = tmp_path / "out"
    arms = [{"name": n, "overrides": {"model.attention_type": n}} for n in ("softmax", "cog")]
    study = dict(name="fake", baseline="softmax", arms=arms,
                 protocol=dict(steps=2000, batch_size=8, final_n=100, scheduler="dpm++", sample_steps=50))
    out.mkdir()
    (out / "study.yaml").write_text(yaml.safe_dump(study))
    for name, fid in (("softmax", 40.0), ("cog", 55.0)):
        run = out / "runs" / name / "seed0"
        _jsonl(run / "metrics.jsonl", _loss_rows(LOSSES[name]))
        _jsonl(run / "fid.jsonl", [dict(step=1000, fid=fid + 20), dict(step=2000, fid=fid + 10)])
        scores = [dict(model="ema", fid=fid, kid_mean=0.03), dict(model="raw", fid=fid + 1, kid_mean=0.04)]
        (run / "eval").mkdir()
        (run / "eval" / "compare.json").write_text(json.dumps(dict(device="TestGPU", results=scores)))
    return out


def test_report_command_is_the_study_report(tmp_path):
    out = fake_study_out(tmp_path)
    r = subprocess.run([sys.executable, "-m", "cogdiff.report", str(out), "--dest", str(tmp_path / "a")],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    study_report([str(out)], dest=str(tmp_path / "b"))
    for f in ("results.json", "summary.md"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text(), f
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [a["name"] for a in res["arms"]] == ["softmax", "cog"]
    assert [(a["runs"][0]["fid_ema"], a["runs"][0]["fid_raw"]) for a in res["arms"]] == [(40.0, 41.0), (55.0, 56.0)]
    assert "| cog | 1 | 55.00 |" in r.stdout and (tmp_path / "a" / "loss_diff.png").is_file()


def test_report_refuses_the_retired_layout_and_flags(tmp_path, capsys):
    old = tmp_path / "old"
    (old / "compare_ema").mkdir(parents=True)
    assert rp.main([str(old), "--dest", str(tmp_path / "d")]) == 2
    assert "two-run script" in capsys.readouterr().err and not (tmp_path / "d").exists()
    out = fake_study_out(tmp_path)
    assert rp.main([str(out), "--commit", "abc123"]) == 2
    assert "--commit belonged to the retired" in capsys.readouterr().err and not (out / "report").exists()
    assert rp.main([str(tmp_path / "nothing")]) == 2
    assert "study.yaml" in capsys.readouterr().err


def _fake_cifar(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for c in ("airplane", "cat"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


TINY = ["train.compile=false", "train.batch_size=4", "model.preset=null", "model.patch_size=8", "model.embed_dim=16",
        "model.depth=2", "model.num_heads=2", "sample.batch_size=8", "sample.grid_size=4", "train.log_every=1",
        "model.softmax_layers=[0, 2]"]  # an override with a space in it reaches train.py as one argument


def test_comparison_script_end_to_end_and_rerun(tmp_path):
    """The script is the two-arm study configs/studies/cifar10_2arm.yaml; re-running continues instead of redoing."""
    data, out = tmp_path / "c10", tmp_path / "out"
    _fake_cifar(data)
    env = dict(os.environ, PYTHON=sys.executable, STEPS="2", FID_EVERY="1", FID_N="8", N_FINAL="8",
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = ["bash", str(REPO / "scripts" / "cifar10_comparison.sh"), str(data), str(out), *TINY]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rec = json.loads((out / "report" / "results.json").read_text())
    assert [a["name"] for a in rec["arms"]] == ["softmax", "cog"] and rec["protocol"]["steps"] == 2
    for arm in rec["arms"]:
        (run,) = arm["runs"]
        assert run["steps"] == 2 and [s for s, _ in run["fid_curve"]] == [1, 2]
        assert np.isfinite(run["fid_ema"]) and np.isfinite(run["fid_raw"])
    assert rec["floor"]["fid"] > 0
    runs = {n: out / "runs" / n / "seed0" for n in ("softmax", "cog")}
    before = {n: (r / "metrics.jsonl").read_text() for n, r in runs.items()}
    ema_json = (runs["cog"] / "eval" / "compare.json").read_text()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {n: (r / "metrics.jsonl").read_text() for n, r in runs.items()} == before
    assert (runs["cog"] / "eval" / "compare.json").read_text() == ema_json
    # Asking for another final N redoes the evaluations (and only them).
    third = subprocess.run(cmd, env=dict(env, N_FINAL="10"), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    rec = json.loads((runs["cog"] / "eval" / "compare.json").read_text())
    assert all(r["num_images"] == 10 for r in rec["results"])
    assert {n: (r / "metrics.jsonl").read_text() for n, r in runs.items()} == before
    cfg = yaml.safe_load((runs["cog"] / "config.yaml").read_text())
    assert cfg["model"]["softmax_layers"] == [0, 2]  # an override with a space in it reached train.py as one argument


def test_comparison_script_usage_errors(tmp_path):
    script = str(REPO / "scripts" / "cifar10_comparison.sh")
    r = subprocess.run(["bash", script], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(["bash", script, str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "train not found" in r.stderr and not (tmp_path / "out").exists()


def test_committed_results_match_the_docs():
    """The README's and the results page's headline numbers are the ones in the committed results.json."""
    folder = REPO / "results" / "cifar10_s2_25k_seed0"
    rec = json.loads((folder / "results.json").read_text())
    docs = (REPO / "README.md").read_text(), (folder / "README.md").read_text()
    for name in ("softmax", "cog"):
        m = rec["models"][name]
        for value in (m["ema"]["fid"], m["raw"]["fid"]):
            assert all(f"{value:.2f}" in d for d in docs), (name, value)
        assert f"{m['training']['images_per_s_median']:,.0f}" in docs[0]
        assert m["training"]["steps"] == 25000 and m["ema"]["num_images"] == 10000
    assert f"{rec['test_split_floor']['fid']:.2f}" in docs[0]
    assert rec["commit"] == "8abbc74" and rec["protocol"]["steps"] == 50 and rec["protocol"]["sampler"] == "dpm++"

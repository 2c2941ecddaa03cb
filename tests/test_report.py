"""cogdiff.report (numbers from run logs) and scripts/cifar10_comparison.sh end to end on a tiny fake CIFAR-10."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cogdiff.workflows import report as rp

REPO = Path(__file__).resolve().parents[1]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _compare(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    protocol = dict(sampler="dpm++", steps=50, num_images=100, seed=0, bf16=True, ref_count=500, ref_source="dataset:x",
                    inception_score_note="no logits")
    path.write_text(
        json.dumps(dict(protocol=protocol, device="TestGPU", command="python -m cogdiff.compare ...", results=rows))
    )


def fake_out(tmp_path):
    """An OUT folder as the comparison script leaves it, with hand-made numbers."""
    out = tmp_path / "out"
    losses = {"softmax": [0.50, 0.40, 0.30, 0.20], "cog": [0.45, 0.41, 0.33, 0.21]}
    rates = {"softmax": [100.0, 300.0, 200.0, 400.0], "cog": [90.0, 150.0, 250.0, 350.0]}
    for name in ("softmax", "cog"):
        run = out / "runs" / name
        _jsonl(run / "metrics.jsonl", [dict(step=500 * (i + 1), loss=loss, images_per_s=r, gpu_mem_gb=1.0 + i)
                                       for i, (loss, r) in enumerate(zip(losses[name], rates[name]))])
        _jsonl(
            run / "fid.jsonl",
            [
                dict(step=1000, fid=80.0, kid_mean=0.05, kid_std=0.01, num_images=20),
                dict(step=2000, fid=60.0 if name == "softmax" else 70.0, kid_mean=0.04, kid_std=0.01, num_images=20),
            ],
        )
        cfg = dict(model=dict(preset="S/2", attention_type=name), data=dict(kind="cifar10"), train=dict(steps=2000))
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "samples").mkdir()
        Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(run / "samples" / "step_0002000.png")
    def score(label, fid):
        return dict(
            model=label, fid=fid, kid_mean=0.03, kid_std=0.002, num_images=100, sample_s=5.0, total_s=6.0
        )
    _compare(out / "compare_ema" / "compare.json", [score("softmax", 40.0), score("cog", 55.0)])
    _compare(out / "compare_raw" / "compare.json", [score("softmax@raw", 38.0), score("cog@raw", 59.0)])
    (out / "test_split_fid.json").write_text(json.dumps(dict(fid=3.2, kid_mean=0.0, num_images=100)))
    return out


def test_report_numbers(tmp_path):
    out, dest = fake_out(tmp_path), tmp_path / "dest"
    rec = rp.report(str(out), str(dest), commit="abc123")
    assert list(rec["models"]) == ["softmax", "cog"]  # the baseline first
    sm, cog = rec["models"]["softmax"], rec["models"]["cog"]
    assert sm["training"]["images_per_s_median"] == 300.0  # the first (compile) window is left out
    assert cog["training"]["images_per_s_median"] == 250.0
    assert sm["training"]["final_loss"] == pytest.approx(0.25)  # windows after step 2000 - 1000: 0.30, 0.20
    assert sm["training"]["peak_gpu_mem_gb"] == 4.0
    assert (sm["ema"]["fid"], sm["raw"]["fid"], cog["ema"]["fid"], cog["raw"]["fid"]) == (40.0, 38.0, 55.0, 59.0)
    pl = rec["paired_loss"]["cog"]  # after step 0.4 * 2000 = 800: windows 1000, 1500, 2000 differ by .01, .03, .01
    assert pl["windows"] == 3 and pl["mean_diff"] == pytest.approx(0.05 / 3) and pl["share_higher"] == 1.0
    assert pl["sd_diff"] == pytest.approx(np.std([0.01, 0.03, 0.01], ddof=1))
    # lag-1 autocorrelation of (-1/3, 2/3, -1/3) * 0.02 around the mean: (-2/9 - 2/9) / (6/9) = -2/3
    assert pl["lag1_autocorr"] == pytest.approx(-2 / 3)
    assert rec["gpu"] == "TestGPU" and rec["commit"] == "abc123" and rec["title"].startswith("cifar10, 2000 steps")
    md = (dest / "summary.md").read_text()
    assert "| cog | cog | 2000 | 55.00 |" in md and "| 2000 | 60.00 | 70.00 |" in md and "= 3.20" in md
    assert json.loads((dest / "results.json").read_text())["models"]["cog"]["raw"]["fid"] == 59.0
    assert Image.open(dest / "samples.png").size == (30 + 8 + 30, 20 + 16)
    for f in ("curves.png", "softmax_metrics.jsonl", "cog_fid.jsonl", "compare_ema_compare.json",
              "test_split_fid.json"):
        assert (dest / f).is_file(), f


def test_report_tolerates_strays_and_missing_fid_logs(tmp_path):
    out = fake_out(tmp_path)
    (out / "runs" / ".DS_Store").write_text("")  # not a run
    (out / "runs" / "notes").mkdir()  # a folder without metrics.jsonl: not a run either
    (out / "runs" / "cog" / "fid.jsonl").unlink()  # FID during training was off for this one
    (out / "compare_raw" / "compare.json").unlink()  # raw weights not scored
    rec = rp.report(str(out), str(tmp_path / "dest"))
    assert list(rec["models"]) == ["softmax", "cog"] and rec["models"]["cog"]["raw"] is None
    assert rec["models"]["cog"]["training"]["fid_during_training"] == [] and None not in rec["commands"]
    assert "| cog | cog | 2000 | 55.00 | 30.0 ± 2.0 | n/a | n/a |" in (tmp_path / "dest" / "summary.md").read_text()


def test_report_refuses_labels_that_are_not_the_runs(tmp_path):
    out = fake_out(tmp_path)
    (out / "runs" / "cog").rename(out / "runs" / "cog_v2")
    with pytest.raises(ValueError, match="compare labels must be the run folder names"):
        rp.report(str(out), str(tmp_path / "dest"))


def test_report_needs_the_evaluation(tmp_path):
    out = fake_out(tmp_path)
    (out / "compare_ema" / "compare.json").unlink()
    with pytest.raises(FileNotFoundError, match="evaluation step"):
        rp.report(str(out), str(tmp_path / "dest"))
    assert rp.main([str(out), "--dest", str(tmp_path / "dest")]) == 2


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

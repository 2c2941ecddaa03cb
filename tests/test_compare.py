"""python -m cogdiff.compare on two tiny pipelines (softmax, Cog): table, JSON, grid, FID-vs-step plot."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from cogdiff import UViTModel, UViTPipeline
from cogdiff.metrics import InceptionFeatures, RefStats, compute_ref_stats
from cogdiff.workflows.compare import main as compare_main

N = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    runs = {}
    for i, att in enumerate(["softmax", "cog"]):
        torch.manual_seed(i)
        model = UViTModel(sample_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, attention_type=att)
        run = root / f"run_{att}"
        UViTPipeline(model, DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(run / "pipeline"))
        runs[att] = str(run)
        if att == "softmax":  # a training export also holds the raw (non-EMA) weights as variant "raw"
            torch.manual_seed(7)
            raw = UViTModel(sample_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, attention_type=att)
            raw.save_pretrained(str(run / "pipeline" / "transformer"), variant="raw")
    # TEST FIXTURE: fabricated fid.jsonl files (made-up numbers) as the plot's input.
    for att, last in (("softmax", 300), ("cog", 200)):
        with open(os.path.join(runs[att], "fid.jsonl"), "w") as f:
            for step, fid in [(100, 300.0), (200, 250.0), (300, 240.0)][: last // 100]:
                f.write(json.dumps({"step": step, "fid": fid, "kid_mean": fid / 1000, "num_images": 8}) + "\n")
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    ref = compute_ref_stats([images], InceptionFeatures(device="cpu"), source="random").save(str(root / "ref.npz"))
    return root, runs, ref


def test_compare_writes_table_json_grid_and_plot(setup, capsys):
    root, runs, ref = setup
    out = root / "out"
    argv = [
        runs["softmax"],
        runs["softmax"] + "@raw",
        os.path.join(runs["cog"], "pipeline"),
        "--ref",
        ref,
        "--out",
        str(out),
        "-n",
        str(N),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--grid-images",
        "3",
        "--no-progress",
    ]
    assert compare_main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert captured.err.count("Inception Score: not computed — needs full Inception weights") == 1
    assert (
        "| run_softmax | softmax |" in printed
        and "| run_softmax@raw | softmax |" in printed
        and "| run_cog | cog |" in printed
    )

    record = json.loads((out / "compare.json").read_text())
    p = record["protocol"]
    assert (p["sampler"], p["steps"], p["num_images"], p["seed"]) == ("dpm++", 2, N, 0)
    assert p["ref_fingerprint"] == RefStats.load(ref).fingerprint and p["feature_extractor"].startswith(
        "inception-2015-12-05"
    )
    assert record["commit"] and record["device"].startswith("cpu") and record["versions"]["diffusers"]
    assert record["command"].startswith("python -m cogdiff.compare")
    res = {r["model"].replace("run_", ""): r for r in record["results"]}
    assert res["softmax"]["attention"] == "softmax" and res["cog"]["attention"] == "cog"
    assert res["cog"]["attention_types"] == ["softmax", "cog", "softmax"]
    for r in res.values():
        assert r["num_images"] == N and r["fid"] > 0 and r["kid_mean"] is not None and r["inception_score"] is None
        assert r["kid_subset_size"] == N
    assert len({r["fid"] for r in res.values()}) == 3  # different weights, same seeds: different images
    assert res["softmax@raw"]["weights"] == "raw" and res["softmax@raw"]["last_logged_fid"]["step"] == 300
    assert res["softmax"]["last_logged_fid"]["step"] == 300
    assert res["cog"]["last_logged_fid"]["step"] == 200  # given as <run>/pipeline: the run's fid.jsonl is found
    assert res["cog"]["run_dir"] == os.path.abspath(runs["cog"])
    assert "1008-way logits" in p["inception_score_note"]

    md = (out / "compare.md").read_text()
    assert "dpm++" in md and f"{res['cog']['fid']:.3f}" in md
    grid = Image.open(out / "grid.png")
    assert grid.size == (80 + 3 * (64 + 2) + 2, 3 * (64 + 2) + 2)  # 8x8 images enlarged 8x, 3 rows x 3 seeds
    cell = np.asarray(grid)[2 + 66 : 2 + 66 + 64, 82 : 82 + 64]  # second row (softmax@raw), image 0
    assert np.array_equal(cell[::8, ::8], np.load(out / "grid_images.npz")["run_softmax@raw"][0])
    assert os.path.getsize(out / "fid_vs_step.png") > 1000
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_compare_refuses_one_model_and_bad_labels(setup, capsys):
    root, runs, ref = setup
    assert compare_main([runs["cog"], "--ref", ref, "--out", str(root / "x"), "--device", "cpu"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert (
        compare_main(
            [runs["cog"], runs["softmax"] + "@nope", "--ref", ref, "--out", str(root / "x"), "--device", "cpu"]
        )
        == 2
    )
    assert "variant 'nope'" in capsys.readouterr().err
    assert (
        compare_main(
            [runs["cog"], runs["softmax"], "--labels", "a,a", "--ref", ref, "--out", str(root / "x"), "--device", "cpu"]
        )
        == 2
    )
    assert "distinct" in capsys.readouterr().err


def test_compare_overlap_gives_the_same_scores(setup):
    root, runs, ref = setup
    records = {}
    for flag in ([], ["--overlap"]):
        out = root / f"overlap{len(flag)}"
        argv = [runs["softmax"], runs["cog"], "--ref", ref, "--out", str(out), "-n", str(N), "--steps", "2",
                "--batch-size", "2", "--device", "cpu", "--grid-images", "1", "--no-progress", *flag]
        assert compare_main(argv) == 0
        records[bool(flag)] = json.loads((out / "compare.json").read_text())["results"]
    keys = ("fid", "kid_mean", "kid_std", "num_images", "color")
    for plain, over in zip(records[False], records[True]):
        assert plain["overlap"] is False and over["overlap"] is True
        assert {k: plain[k] for k in keys} == {k: over[k] for k in keys}
    assert records[True][0]["fid"] != records[True][1]["fid"]

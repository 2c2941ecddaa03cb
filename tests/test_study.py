"""python -m cogdiff.study on micro configs (CPU): the table, resume after an interruption, appending an arm,
merging OUT folders."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cogdiff.config import ConfigError
from cogdiff.workflows.study import load_study, pending, run_dir, run_study, selected
from cogdiff.workflows.study_cli import main as study_main

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"data.kind": "synthetic", "data.resolution": 16, "model.patch_size": 4, "model.embed_dim": 32,
         "model.depth": 2, "model.num_heads": 2, "optim.warmup_steps": 2, "sample.grid_size": 4,
         "train.sample_every": 0, "train.checkpoint_every": 2, "train.log_every": 1}
ARMS = [{"name": "softmax", "overrides": {"model.attention_type": "softmax"}},
        {"name": "cog", "overrides": {"model.attention_type": "cog"}},
        {"name": "qknorm", "overrides": {"model.attention_type": "cog", "model.qk_norm": "rmsnorm"}}]


def write_study(path: Path, arms) -> Path:
    study = dict(name="micro", base=str(ROOT / "configs" / "tiny.yaml"), overrides=MICRO, seeds=[0, 1], arms=arms,
                 protocol=dict(steps=4, batch_size=8, final_n=4, sample_steps=2, eval_batch=4, grid_images=2),
                 ref="dataset:kind=synthetic,resolution=16,limit=6",
                 floor="dataset:kind=synthetic,resolution=16,limit=4,split=test")
    path.write_text(yaml.safe_dump(study))
    return path


def table_rows(summary: str):
    """The arm x seed table's rows: the table under the header that starts ``| arm | seed | steps |``."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| arm | seed | steps |")) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    run_study(write_study(root / "two.yaml", ARMS[:2]), None, out)
    return root, out


def test_two_arms_then_appended_arm_runs_alone(study, monkeypatch):
    root, out = study
    first = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/metrics.jsonl")}
    assert len(first) == 4
    three = write_study(root / "three.yaml", ARMS)
    assert [(a["name"], s) for a, s in pending(load_study(three), out)] == [("qknorm", 0), ("qknorm", 1)]
    assert study_main(["run", str(three), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in first} == first  # the first arms were not trained again
    summary = (out / "report" / "summary.md").read_text()
    rows = table_rows(summary)
    assert [(r.split("|")[1].strip(), int(r.split("|")[2])) for r in rows] == [
        (a["name"], s) for a in ARMS for s in (0, 1)]
    res = json.loads((out / "report" / "results.json").read_text())
    assert res["study"] == "micro" and [a["name"] for a in res["arms"]] == ["softmax", "cog", "qknorm"]
    for arm in res["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for r in arm["runs"]:
            assert r["steps"] == 4 and r["fid_ema"] > 0 and r["fid_raw"] > 0 and r["kid_ema"] is not None
            assert r["commit"] and r["gpu"]
    assert res["floor"]["fid"] > 0 and "split=test" in res["floor"]["source"]
    assert "Δ FID EMA vs softmax" in summary and (out / "report" / "samples.png").is_file()
    assert "diagnostics.png skipped" in summary  # no diagnostics logged: a note, not a crash
    r = res["arms"][0]["runs"][0]
    assert r["color_ref"]["num_images"] == 6 and r["color_ema"]["num_images"] == 4  # reference vs final samples
    first = next(line for line in summary.splitlines() if line.startswith("| softmax/s0 | ema |"))
    assert first.count("|") == 8 and "n/a" not in first


def test_interrupted_run_is_finished(study):
    root, out = study
    three = root / "three.yaml"
    run = run_dir(out, "cog", 1)
    shutil.rmtree(run.pipeline_dir)  # as if killed after its step-2 checkpoint
    shutil.rmtree(run.checkpoints_dir / "step_0000004")
    (run.path / "eval" / "compare.json").unlink()
    assert [(a["name"], s) for a, s in pending(load_study(three), out)] == [("cog", 1)]
    assert study_main(["run", str(three), "--out", str(out)]) == 0
    assert pending(load_study(three), out) == [] and run.has_pipeline()
    assert "resumed" in (out / "logs" / "cog_seed1.log").read_text().lower() or run.metrics()[-1]["step"] == 4


def test_merging_two_out_folders_gives_the_same_report(study, tmp_path):
    root, out = study
    # all three arms (a no-op when test_two_arms_then_appended_arm_runs_alone has run): runnable on its own
    assert study_main(["run", str(write_study(root / "three.yaml", ARMS)), "--out", str(out)]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(out, a)
    shutil.copytree(out, b)
    shutil.rmtree(a / "runs" / "qknorm")  # machine A ran softmax and cog, machine B qknorm
    for arm in ("softmax", "cog"):
        shutil.rmtree(b / "runs" / arm)
    assert study_main(["report", str(a), str(b), "--dest", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged == json.loads((out / "report" / "results.json").read_text())
    assert (tmp_path / "merged" / "summary.md").read_text() == (out / "report" / "summary.md").read_text()


def test_only_selects_runs_and_bad_items_fail(tmp_path):
    study = load_study(write_study(tmp_path / "three.yaml", ARMS))
    assert [(a["name"], s) for a, s in selected(study, ["cog:1", "qknorm"])] == [("cog", 1), ("qknorm", 0),
                                                                                   ("qknorm", 1)]
    assert len(selected(study)) == 6
    for bad in ("nosuch", "cog:x"):
        with pytest.raises(ConfigError, match="--only"):
            selected(study, [bad])
    assert study_main(["run", str(tmp_path / "three.yaml"), "--out", str(tmp_path / "o"), "--only", "nope"]) == 2
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_gpu_slots_evaluate_each_run_in_its_own_process(study, tmp_path, monkeypatch):
    """With GPU slots, a run is scored by ``python -m cogdiff.study evaluate`` as soon as it has trained (here the
    slot's device is the CPU), and a later call finds it scored."""
    _, out = study
    one = tmp_path / "out"
    shutil.copytree(out / "stats", one / "stats")
    monkeypatch.setattr("cogdiff.workflows.study.visible_gpus", lambda: ["0"])
    three = write_study(tmp_path / "three.yaml", ARMS)
    assert study_main(["run", str(three), "--out", str(one), "--only", "qknorm:0", "--per-gpu", "0"]) == 2
    assert study_main(["run", str(three), "--out", str(one), "--only", "qknorm:0", "--per-gpu", "2"]) == 0
    rec = json.loads((one / "runs" / "qknorm" / "seed0" / "eval" / "compare.json").read_text())
    assert rec["steps_trained"] == 4 and rec["eval_s"] > 0 and {r["model"] for r in rec["results"]} == {"ema", "raw"}
    assert "qknorm seed 0: scored" in (one / "logs" / "qknorm_seed0.log").read_text()  # by the subprocess
    assert list((one / "runs").glob("*/seed*")) == [one / "runs" / "qknorm" / "seed0"]
    assert study_main(["evaluate", str(one), "qknorm", "0"]) == 0  # already scored: nothing to do
    assert json.loads((one / "runs" / "qknorm" / "seed0" / "eval" / "compare.json").read_text()) == rec


def test_summary_marks_incomplete_runs():
    from cogdiff.workflows.study_report import summary_markdown

    run = dict(seed=0, steps=1600, fid_ema=None, fid_raw=None, kid_ema=None, kid_raw=None, commit="abc")
    res = dict(study="s", protocol=dict(steps=2000, batch_size=8, final_n=4, scheduler="dpm++", sample_steps=2),
               baseline="a", floor=None,
               arms=[dict(name="a", runs=[run]), dict(name="b", runs=[{**run, "steps": 2000}])])
    text = summary_markdown(res, [])
    assert "| a | 0 | 1600 (incomplete) |" in text and "| b | 0 | 2000 |" in text
    assert "incomplete (a partial record; not in the means): a seed 0 (1600 of 2000 steps)" in text


def test_summary_means_spread_and_deltas_vs_baseline():
    from cogdiff.workflows.study_report import summary_markdown

    def run(seed, ema, raw):
        return dict(seed=seed, steps=2000, fid_ema=ema, fid_raw=raw, kid_ema=0.1, kid_raw=0.1, commit="abc")

    res = dict(study="s", protocol=dict(steps=2000, batch_size=8, final_n=4, scheduler="dpm++", sample_steps=2),
               baseline="a", floor=None,
               arms=[dict(name="a", runs=[run(0, 40.0, 45.0)]), dict(name="b", runs=[run(0, 47.0, 47.0),
                                                                                      run(1, 57.0, 48.0)])])
    text = summary_markdown(res, [])
    assert "| Δ FID EMA vs a | Δ FID raw vs a |" in text
    assert "| a | 1 | 40.00 | n/a | 45.00 | n/a | +0.00 | +0.00 |" in text
    assert "| b | 2 | 52.00 | 7.07 | 47.50 | 0.71 | +12.00 | +2.50 |" in text
    assert "| Δ KID EMA vs a | Δ KID raw vs a |" in text and "| b | 2 | 0.10000 | 0.00000 | 0.10000 | 0.00000 |" in text


def test_report_loss_by_t_gap_vs_same_seed_baseline(tmp_path):
    """The gap in results.json and summary.md is the arm's probe loss_by_t minus the baseline's, bin by bin, at
    the steps both logged; an arm without a same-seed baseline run gets none."""
    from cogdiff.workflows.study_report import study_report

    def run(arm, seed, by_step):
        d = tmp_path / "out" / "runs" / arm / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(dict(step=s, loss=0.1, time=s)) + "\n" for s in by_step))
        (d / "diagnostics.jsonl").write_text("".join(
            json.dumps(dict(step=s, loss_by_t=v, blocks=[dict(logit_absmax=1.0)],
                            **({"blocks_by_band": {"0": [dict(logit_absmax=2.0)]}} if arm == "arm" else {}))) + "\n"
            for s, v in by_step.items()))

    run("base", 0, {5: [0.5, 0.4, 0.3, 0.2], 10: [0.4, 0.3, 0.2, 0.1]})
    run("arm", 0, {5: [0.25, 0.5, 0.3, 0.1], 10: [0.5, 0.3, 0.15, 0.1], 15: [9.0, 9.0, 9.0, 9.0]})
    run("arm", 1, {5: [0.1, 0.1, 0.1, 0.1]})  # no baseline run with seed 1
    arm0 = tmp_path / "out" / "runs" / "arm" / "seed0"
    (arm0 / "fid.jsonl").write_text(json.dumps(dict(step=5, fid=50.0, ema=True)) + "\n")
    (arm0 / "fid_raw.jsonl").write_text(json.dumps(dict(step=5, fid=45.0, ema=False)) + "\n")  # train.fid_raw
    study = dict(name="g", baseline="base", arms=[dict(name="base", overrides={}), dict(name="arm", overrides={})],
                 protocol=dict(steps=10, batch_size=2, final_n=4, scheduler="ddim", sample_steps=2, fid_every=5))
    dest = study_report([str(tmp_path / "out")], study=study)
    res = json.loads((dest / "results.json").read_text())
    runs = {r["seed"]: r for r in res["arms"][1]["runs"]}
    steps = [g[0] for g in runs[0]["loss_by_t_gap"]]
    gaps = [g[1] for g in runs[0]["loss_by_t_gap"]]
    assert steps == [5, 10] and "loss_by_t_gap" not in runs[1]
    assert runs[0]["fid_curve"] == [[5, 50.0]] and runs[0]["fid_raw_curve"] == [[5, 45.0]]
    assert "fid_raw_curve" not in runs[1] and (dest / "fid_vs_step.png").is_file()
    assert gaps[0] == pytest.approx([-0.25, 0.1, 0.0, -0.1]) and gaps[1] == pytest.approx([0.1, 0.0, -0.05, 0.0])
    text = (dest / "summary.md").read_text()
    assert "| arm/s0 | s0 | 5 | -0.2500 | +0.1000 | 0.1000 |" in text
    assert "| arm/s0 | s0 | 10 | +0.1000 | +0.0000 | 0.0500 |" in text
    assert runs[0]["loss_by_t_gap_vs_seed"] == 0
    assert (dest / "loss_by_t_gap.png").is_file() and (dest / "loss_by_t_diff.png").is_file()
    assert (dest / "diagnostics_t0.png").is_file()  # only the arm's runs have blocks_by_band; the plot still comes


def test_report_loss_by_t_gap_pairs_runs_probed_on_the_same_samples(tmp_path):
    """A run of a seed the baseline lacks is compared with the baseline run probed on the same samples: the probe
    comes from train.diag_probe_seed, or from train.seed in configs saved before that key existed; a run on another
    probe gets no gap, and a same-seed baseline run on another probe is passed over."""
    from cogdiff.workflows.study_report import study_report

    def run(arm, seed, train, loss):
        d = tmp_path / "out" / "runs" / arm / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"train": dict(seed=seed, diag_probe_size=64, **train)}))
        (d / "metrics.jsonl").write_text(json.dumps(dict(step=5, loss=0.1, time=5)) + "\n")
        row = dict(step=5, loss_by_t=loss, blocks=[dict(logit_absmax=1.0)])
        (d / "diagnostics.jsonl").write_text(json.dumps(row) + "\n")

    run("base", 0, {}, [0.5, 0.4, 0.3])  # legacy config: probe drawn from train.seed = 0
    run("base", 2, {"diag_probe_seed": 2}, [0.9, 0.9, 0.9])
    run("arm", 1, {"diag_probe_seed": 0}, [0.6, 0.4, 0.3])  # same probe as base seed 0
    run("arm", 2, {"diag_probe_seed": 0}, [0.7, 0.4, 0.3])  # base seed 2 was probed elsewhere: use base seed 0
    run("arm", 3, {"diag_probe_seed": 3}, [0.1, 0.1, 0.1])  # no baseline run on probe 3
    study = dict(name="g", baseline="base", arms=[dict(name="base", overrides={}), dict(name="arm", overrides={})],
                 protocol=dict(steps=5, batch_size=2, final_n=4, scheduler="ddim", sample_steps=2, fid_every=5))
    dest = study_report([str(tmp_path / "out")], study=study)
    runs = {r["seed"]: r for r in json.loads((dest / "results.json").read_text())["arms"][1]["runs"]}
    assert runs[1]["loss_by_t_gap_vs_seed"] == 0 and runs[1]["loss_by_t_gap"][0][1] == pytest.approx([0.1, 0, 0])
    assert runs[2]["loss_by_t_gap_vs_seed"] == 0 and runs[2]["loss_by_t_gap"][0][1] == pytest.approx([0.2, 0, 0])
    assert "loss_by_t_gap" not in runs[3]
    assert "| arm/s1 | s0 | 5 | +0.1000 | +0.0000 | 0.0000 |" in (dest / "summary.md").read_text()


def test_report_tables_each_runs_blocks_at_its_last_diagnostics_step(tmp_path):
    """blocks_last (results.json) and the summary's per-block table hold the last diagnostics row's statistics,
    Cog blocks marked; a run whose rows lack the statistics gets neither."""
    from cogdiff.workflows.study_report import BLOCK_TABLE_KEYS, study_report

    def block(kind, v):
        return dict(attention=kind, logit_absmax=9.0, **{k: v + i for i, k in enumerate(BLOCK_TABLE_KEYS)})

    for arm, kinds in (("base", ["softmax"] * 3), ("arm", ["softmax", "cog", "softmax"])):
        d = tmp_path / "out" / "runs" / arm / "seed0"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(json.dumps(dict(step=10, loss=0.1, time=1)) + "\n")
        rows = [dict(step=s, loss_by_t=[0.1], blocks=[block(t, s / 10 + j) for j, t in enumerate(kinds)])
                for s in (5, 10)]
        if arm == "arm":  # its diagnostics also have the lowest-noise band's statistics
            rows[-1]["blocks_by_band"] = {"0": [block(t, 7 + j) for j, t in enumerate(kinds)], "9": []}
        (d / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = tmp_path / "out" / "runs" / "old" / "seed0"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(json.dumps(dict(step=10, loss=0.1, time=1)) + "\n")
    (d / "diagnostics.jsonl").write_text(json.dumps(dict(step=10, blocks=[dict(logit_absmax=1.0)])) + "\n")
    study = dict(name="g", baseline="base", arms=[dict(name=n, overrides={}) for n in ("base", "arm", "old")],
                 protocol=dict(steps=10, batch_size=2, final_n=4, scheduler="ddim", sample_steps=2, fid_every=5))
    dest = study_report([str(tmp_path / "out")], study=study)
    res = {a["name"]: a["runs"][0] for a in json.loads((dest / "results.json").read_text())["arms"]}
    last = res["arm"]["blocks_last"]
    assert last["step"] == 10 and last["attention"] == ["softmax", "cog", "softmax"]
    assert last["entropy"] == pytest.approx([1.0, 2.0, 3.0]) and last["out_rms"] == pytest.approx([2.0, 3.0, 4.0])
    assert "blocks_last" not in res["old"]
    text = (dest / "summary.md").read_text()
    assert "| arm/s0 | 10 | entropy | 1.00 | 2.00* | 3.00 |" in text
    assert "| arm/s0 | 10 | neg_share | 4.00 | 5.00* | 6.00 |" in text
    assert "| base/s0 | 10 | entropy | 1.00 | 2.00 | 3.00 |" in text and "| base/s0 | 10 | neg_share" not in text
    assert "old/s0" not in text.split("Attention per block")[1]
    assert res["arm"]["blocks_last_t0"]["entropy"] == pytest.approx([7.0, 8.0, 9.0])
    assert "blocks_last_t0" not in res["base"]
    band = text.split("lowest-noise band only")[1]
    assert "| arm/s0 | 10 | entropy | 7.00 | 8.00* | 9.00 |" in band and "base/s0" not in band


def test_status_lists_states_what_is_left_and_the_time_per_run(tmp_path, capsys):
    """status reads the logs only: scored, trained-not-scored, partial and not-started runs, the --only arguments
    for what is left and the median minutes of the scored runs; a missing folder is a one-line error."""
    out = tmp_path / "out"

    def run(arm, seed, steps, scored, minutes=10.0):
        d = out / "runs" / arm / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(dict(step=s, loss=0.1, time=s / steps * minutes * 60))
                                                 + "\n" for s in (0, steps)))
        if scored:
            (d / "eval").mkdir()
            (d / "eval" / "compare.json").write_text(json.dumps(dict(eval_s=120, results=[
                dict(model="ema", fid=41.5, kid_mean=0.03), dict(model="raw", fid=45.25, kid_mean=0.02)])))

    run("base", 0, 20, True, minutes=10.0)
    run("base", 1, 20, True, minutes=14.0)
    run("arm", 0, 20, False)
    run("arm", 1, 8, False)
    study = dict(name="g", baseline="base", seeds=[0, 1], arms=[dict(name=n, overrides={}, seeds=[0, 1])
                                                              for n in ("base", "arm")],
                 protocol=dict(steps=20, batch_size=2, final_n=4, scheduler="ddim", sample_steps=2))
    (out / "study.yaml").write_text(yaml.safe_dump(study))
    assert study_main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| base | 0 | scored | 10.0 | 2.0 | 41.50 | 45.25 |" in text
    assert "| arm | 0 | trained, not scored |" in text and "| arm | 1 | 8 of 20 steps |" in text
    assert "Left (2 of 4 runs): --only arm:0 --only arm:1" in text
    assert "Median time per scored run: 14.0 min" in text and "about 28 min" in text
    newer = write_study(tmp_path / "newer.yaml", ARMS)  # other arm names: nothing of it has run here
    assert study_main(["status", str(out), "--study", str(newer)]) == 0
    assert "| qknorm | 1 | not started |" in capsys.readouterr().out
    assert study_main(["status", str(tmp_path / "nowhere"), "--study", str(newer)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study folder" in err


def test_color_table_offsets_against_the_reference_and_the_floor():
    from cogdiff.workflows.study_report import color_table

    ref = dict(channel_mean=[120.0, 120.0, 110.0], channel_std=[60.0, 60.0, 60.0], saturation_mean=30.0)
    bright = dict(channel_mean=[150.0, 140.0, 130.0], channel_std=[66.0, 60.0, 54.0], saturation_mean=32.5)
    run = dict(seed=0, fid_ema=40.0, fid_raw=45.0, color_ema=ref, color_raw=bright, color_ref=ref,
               fid_curve=[[5, 90.0]], color_curve=[[5, "ema", bright, None], [5, "raw", bright, bright]],
               fid_raw_curve=[[5, 80.0]])
    res = dict(arms=[dict(name="a", runs=[run])], floor=dict(fid=3.0, source="test split"), floor_color=ref)
    lines = color_table(res)
    assert "| a/s0 | ema | 40.00 | +0.0 | +0.0 / +0.0 / +0.0 | 1.00 / 1.00 / 1.00 | +0.0 |" in lines
    assert "| a/s0 | raw | 45.00 | +23.3 | +30.0 / +20.0 / +20.0 | 1.10 / 1.00 / 0.90 | +2.5 |" in lines
    assert "| a/s0 | ema @ 5 | 90.00 | +23.3 | +30.0 / +20.0 / +20.0 | 1.10 / 1.00 / 0.90 | +2.5 |" in lines
    # a row scored against a reference of its own is offset against that one, not the final evaluation's
    assert "| a/s0 | raw @ 5 | 80.00 | +0.0 | +0.0 / +0.0 / +0.0 | 1.00 / 1.00 / 1.00 | +0.0 |" in lines
    assert any(line.startswith("| floor") and "| 3.00 |" in line for line in lines)
    no_ref = color_table(dict(arms=[dict(name="a", runs=[{**run, "color_ref": None}])], floor=None))
    assert [line.split(" | ")[1] for line in no_ref if line.startswith("| a/s0")] == ["raw @ 5"]  # its own ref only
    bare = {**run, "color_ref": None, "color_curve": [[5, "ema", bright, None]]}
    assert color_table(dict(arms=[dict(name="a", runs=[bare])], floor=None)) == []  # nothing to compare with


def test_class_conditional_arm_is_scored_with_its_own_guidance(study, tmp_path):
    """An arm that trains a class-conditional model with ``sample.guidance_scale`` is evaluated with that scale
    (classifier-free guidance, a label per image seed); the unconditional arms keep 1."""
    _, out = study
    one = tmp_path / "out"
    shutil.copytree(out / "stats", one / "stats")
    arms = [ARMS[0], {"name": "cond", "overrides": {"model.attention_type": "cog", "model.num_classes": 4,
                                                    "train.p_uncond": 0.1, "sample.guidance_scale": 1.4}}]
    assert study_main(["run", str(write_study(tmp_path / "cond.yaml", arms)), "--out", str(one),
                       "--only", "cond:0"]) == 0
    rec = json.loads((one / "runs" / "cond" / "seed0" / "eval" / "compare.json").read_text())
    assert rec["protocol"]["guidance_scale"] == 1.4
    assert study_main(["report", str(one)]) == 0
    summary = (one / "report" / "summary.md").read_text()
    assert "sampled with classifier-free guidance: cond seed 0 (w = 1.4)" in summary
    assert {r["model"] for r in rec["results"]} == {"ema", "raw"} and all(r["fid"] > 0 for r in rec["results"])
    plain = json.loads((out / "runs" / "softmax" / "seed0" / "eval" / "compare.json").read_text())
    assert plain["protocol"]["guidance_scale"] == 1.0

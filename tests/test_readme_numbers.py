"""The README's numbers are the committed results: each speed figure is recomputed from its benchmark JSON file,
each study score from the study's results.json, and looked up in the text, so a re-run that changes a result fails
here until the README follows."""

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text()
SPEED = " ".join(README[README.index("## Under the hood: the fused Cog kernel"):
                        README.index("## Analysis of the negative weights")].split())  # one line, single spaces


def load(name: str):
    return json.loads((RESULTS / name).read_text())


def shown(value: float, digits: int, unit: str = "") -> str:
    """``value`` as the README writes it: thousands separated, ``digits`` decimals, then ``unit``."""
    return f"{value:,.{digits}f}{unit}"


def test_attention_table_rows_are_the_results_file():
    rows = {(tuple(r["shape"]), r["impl"]): r for r in load("attention_h200.json")["rows"] if r["layout"] == "blhd"}
    table = {}
    for line in README.splitlines():
        m = re.match(r"\| (\d+),(\d+),(\d+),(\d+) \| (.+) \|$", line)
        if m:
            table[tuple(int(g) for g in m.groups()[:4])] = [c.strip().strip("*") for c in m.group(5).split("|")]
    assert len(table) == 4, "the README's attention table lost a row"
    for (b, h, n, d), cells in table.items():
        shape = (b, h, n, d)
        cudnn, fa2, cog = (rows[(shape, impl)] for impl in
                           ("SDPA cuDNN (softmax)", "SDPA FA2 (softmax)", "Cog fused (Triton)"))
        assert cells == [shown(cudnn["fwd_bwd_ms"], 3, " ms"), shown(fa2["fwd_bwd_ms"], 3, " ms"),
                         shown(cog["fwd_bwd_ms"], 3, " ms"), shown(cog["vs_cudnn"], 2, "×"),
                         shown(cog["peak_vs_cudnn"], 2, "×")], shape


def test_train_step_figures_are_the_results_file():
    ms = {(r["variant"], r["mode"]): r["ms"] for r in load("train_step_graphs_h200.json")["rows"]}
    compiled = (f"Cog costs {shown(ms['cog-fused', 'torch.compile'], 2)} ms vs "
                f"{shown(ms['softmax', 'torch.compile'], 2)} ms for softmax")
    graphed = (f"{shown(ms['cog-fused', 'compile+graphs'], 2)} vs {shown(ms['softmax', 'compile+graphs'], 2)} ms "
               f"with them")
    assert compiled in SPEED and graphed in SPEED


def test_train_loop_figures_are_the_medians_of_the_results_file():
    runs = load("train_loop_graphs_h200.json")["runs"]
    assert all(r["steps"] >= 2000 and r["batch_size"] == 128 for r in runs)
    speeds = {}
    for r in runs:
        speeds.setdefault((r["attention"], r["graphs"]), []).append(r["images_per_s"])
    med = {k: statistics.median(v) for k, v in speeds.items()}
    on, off = ((med["cog", g], med["softmax", g]) for g in (True, False))
    count = {1: "one", 2: "two", 3: "three"}
    n_on, n_off = ({len(speeds[a, g]) for a in ("cog", "softmax")} for g in (True, False))
    assert len(n_on) == len(n_off) == 1  # the same number of runs of each model
    assert (f"with CUDA graphs Cog {shown(on[0], 0)} vs softmax {shown(on[1], 0)} images/s "
            f"({shown(on[1] / on[0], 3)}× time, {count[n_on.pop()]} run") in SPEED
    assert (f"without them {shown(off[0], 0)} vs {shown(off[1], 0)} ({shown(off[1] / off[0], 3)}×, "
            f"{count[n_off.pop()]} run") in SPEED


@pytest.mark.parametrize("name, key, words", [
    ("sample_and_score_50k_h200.json", "total_s", "takes {} s with the stages one after the other"),
    ("sample_and_score_50k_overlap_h200.json", "total_s", "{} s with Inception overlapped"),
    ("sample_and_score_50k_h200.json", "sampling_s", "sampling alone is {} s"),
])
def test_sample_and_score_figures_are_the_results_files(name, key, words):
    assert words.format(shown(load(name)[key], 1)) in SPEED


def _span(values, digits=0) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}–{hi:.{digits}f}"


def test_profile_figures_are_the_results_files():
    fwd = load("profile_forward_h200.json")["rows"]
    cats = {c: [r["categories"][c] for r in fwd] for c in ("matmul", "attention", "norm")}
    gelu = [k["ms"] for r in fwd for k in r["top"] if "gelu" in k["name"]]
    assert len(gelu) == len(fwd)  # the GELU pass is a top kernel of both models
    assert f"forward takes {_span([r['wall_ms'] for r in fwd])} ms with the GPU " \
           f"{_span([100 * min(r['busy_share'], 1.0) for r in fwd])} % busy" in SPEED
    assert (f"matmuls {_span(cats['matmul'])} ms, attention {_span(cats['attention'])} ms" in SPEED
            and f"pass {_span(gelu)} ms, LayerNorms {_span(cats['norm'])} ms" in SPEED)
    loop = load("profile_train_loop_h200.json")["rows"]
    assert (f"busy {_span([100 * min(r['busy_share'], 1.0) for r in loop])} % of its "
            f"{_span([r['wall_ms'] for r in loop], 1)} ms") in SPEED


STUDY = ROOT / "results" / "cifar10_study"


def study_runs() -> dict:
    res = json.loads((STUDY / "report" / "results.json").read_text())
    return {(a["name"], r["seed"]): r for a in res["arms"] for r in a["runs"]}


def test_results_so_far_quote_the_study_results():
    """Every scored run's final FID-10k (EMA / raw) and KID-10k in the README's "Results so far" and in the study
    README's verdict table are the committed results.json."""
    results = README[README.index("## Results so far"):]
    results = " ".join(results[:results.index("**Before the study")].split())
    verdicts = " ".join((STUDY / "README.md").read_text().split())
    for (arm, seed), r in study_runs().items():
        if r["fid_ema"] is None:
            continue
        name = "softmax" if arm == "A0_softmax" else "Cog" if arm == "A0_cog" else None
        if name is None:
            continue
        ema, raw = shown(r["fid_ema"], 2), shown(r["fid_raw"], 2)
        quoted = (f"{name} seed {seed}: {ema} (EMA), {raw} (raw)", f"{name} seed {seed}: {ema} / {raw}")
        assert any(q in results for q in quoted), (arm, seed)
        assert f"{name} s{seed} {ema} / {raw}" in verdicts, (arm, seed)
        assert f"{name} s{seed} {shown(r['kid_ema'], 4)} / {shown(r['kid_raw'], 4)}" in verdicts, (arm, seed)


def test_results_so_far_brightness_is_the_colour_record():
    res = json.loads((STUDY / "report" / "results.json").read_text())
    runs = [r for a in res["arms"] for r in a["runs"] if r.get("color_ref")]

    def brightness(color, ref):
        return statistics.fmean(c - f for c, f in zip(color["channel_mean"], ref["channel_mean"]))

    raw, ema = ([brightness(r[f"color_{w}"], r["color_ref"]) for r in runs] for w in ("raw", "ema"))
    floor = brightness(res["floor_color"], runs[0]["color_ref"])
    text = " ".join(README[README.index("## Results so far"):].split())
    assert (f"mean brightness offset {min(raw):+.0f} to {max(raw):+.0f} on the 0–255 scale; EMA weights "
            f"{min(ema):+.0f} to {max(ema):+.0f}, the test split {floor:+.1f})").replace("-", "−") in text

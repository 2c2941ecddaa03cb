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
SPEED = README[README.index("## Under the hood: the fused Cog kernel"):
               README.index("## Analysis of the negative weights")]


def load(name: str):
    return json.loads((RESULTS / name).read_text())


def shown(value: float, digits: int, unit: str = "") -> str:
    """``value`` as the README writes it: thousands separated, ``digits`` decimals, then ``unit``."""
    return f"{value:,.{digits}f}{unit}"


def test_attention_table_rows_are_the_results_file():
    rows = {(tuple(r["shape"]), r["impl"]): r for r in load("attention_h200.json")["rows"] if r["layout"] == "blhd"}
    table = {}
    for line in SPEED.splitlines():
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
    assert compiled in " ".join(SPEED.split()) and graphed in " ".join(SPEED.split())


def test_train_loop_figures_are_the_medians_of_the_results_file():
    runs = load("train_loop_graphs_h200.json")["runs"]
    assert all(r["steps"] >= 2000 and r["batch_size"] == 128 for r in runs)
    med = {(r["attention"], r["graphs"]): statistics.median(q["images_per_s"] for q in runs
                                                            if (q["attention"], q["graphs"]) == (r["attention"],
                                                                                                 r["graphs"]))
           for r in runs}
    text = " ".join(SPEED.split())
    on, off = ((med["cog", g], med["softmax", g]) for g in (True, False))
    assert (f"with CUDA graphs Cog {shown(on[0], 0)} vs softmax {shown(on[1], 0)} images/s "
            f"({shown(on[1] / on[0], 3)}× time") in text
    assert f"without them {shown(off[0], 0)} vs {shown(off[1], 0)} ({shown(off[1] / off[0], 3)}×" in text


@pytest.mark.parametrize("name, key, words", [
    ("sample_and_score_50k_h200.json", "total_s", "takes {} s with the stages one after the other"),
    ("sample_and_score_50k_overlap_h200.json", "total_s", "{} s with Inception overlapped"),
    ("sample_and_score_50k_h200.json", "sampling_s", "sampling alone is {} s"),
])
def test_sample_and_score_figures_are_the_results_files(name, key, words):
    assert words.format(shown(load(name)[key], 1)) in " ".join(SPEED.split())


def test_profile_figures_are_the_results_files():
    text = " ".join(SPEED.split())
    fwd = load("profile_forward_h200.json")["rows"]
    lo, hi = min(r["wall_ms"] for r in fwd), max(r["wall_ms"] for r in fwd)
    assert f"forward takes {lo:.0f}–{hi:.0f} ms" in text
    loop = load("profile_train_loop_h200.json")["rows"]
    lo, hi = min(r["wall_ms"] for r in loop), max(r["wall_ms"] for r in loop)
    assert f"{lo:.1f}–{hi:.1f} ms" in text
    assert min(r["busy_share"] for r in loop) >= 0.98  # "busy 98-100 %", as the README says


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

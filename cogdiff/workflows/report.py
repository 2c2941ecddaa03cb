"""Summarise a finished comparison folder (``scripts/cifar10_comparison.sh``) into a results folder.

    python -m cogdiff.report OUT --dest results/cifar10_s2_seed0 --commit 8abbc74 --gpu "NVIDIA H200"

Reads OUT/runs/<model>/{metrics,fid}.jsonl + config.yaml, OUT/compare_ema/compare.json (EMA weights),
OUT/compare_raw/compare.json (raw weights, optional) and OUT/test_split_fid.json (the metric's floor,
optional). Writes into DEST: results.json (every number, with commit, GPU, configs and commands),
summary.md (the tables), curves.png (training loss and FID-vs-step), samples.png (the runs' last sample
grids side by side, same seeds), and copies of the logs, configs and compare outputs it was made from.
Nothing is sampled or scored here: it only reads what the runs wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from typing import Dict, List, Optional

import yaml

from ..analysis.plots import plot_curves
from ..analysis.runs import series
from ..io import atomic_save_with, atomic_write_json, atomic_write_text
from ..rundir import FID_FILE, METRICS_FILE, SAMPLES_DIR, git_commit, read_jsonl

LOSS_TAIL_STEPS = 1000  # "final loss" = mean of the logged windows over the last this many steps
LATE_FRACTION = 0.4  # curves.png zooms into the loss after this fraction of the steps


def training_summary(metrics: List[dict], fid: List[dict]) -> dict:
    """Throughput, final loss, memory and the FID-during-training curve of one run's logs."""
    if not metrics:
        raise ValueError("no metrics.jsonl rows: is this a finished training run?")
    last = metrics[-1]["step"]
    # The first window includes compilation (so does the first after a resume: the median shrugs one off);
    # train.py already leaves FID/grid/checkpoint time out of each window.
    rates = [r["images_per_s"] for r in metrics[1:] if "images_per_s" in r] or [metrics[0].get("images_per_s", 0.0)]
    q = statistics.quantiles(rates, n=4) if len(rates) > 1 else [rates[0]] * 3
    tail = [r["loss"] for r in metrics if r["step"] > last - LOSS_TAIL_STEPS]
    mem = [r["gpu_mem_gb"] for r in metrics if "gpu_mem_gb" in r]
    return dict(
        steps=last,
        images_per_s_median=statistics.median(rates),
        images_per_s_iqr=[q[0], q[2]],
        log_windows=len(rates),
        final_loss=statistics.fmean(tail),
        final_loss_steps=LOSS_TAIL_STEPS,
        peak_gpu_mem_gb=max(mem) if mem else None,  # as logged: includes in-loop FID sampling, if any
        peak_gpu_mem_gb_first_window=mem[0] if mem else None,  # before any in-loop evaluation
        fid_during_training=[{k: r.get(k) for k in ("step", "fid", "kid_mean", "kid_std", "num_images")} for r in fid],
    )


def _final_scores(compare_json: Optional[str]) -> Dict[str, dict]:
    """{run name: scores} from a compare.json (labels like 'cog' or 'cog@raw' -> 'cog')."""
    rec = _record(compare_json)
    if rec is None:
        return {}
    keep = (
        "fid",
        "kid_mean",
        "kid_std",
        "kid_subset_size",
        "num_images",
        "inception_score",
        "sample_s",
        "total_s",
        "weights",
    )
    return {r["model"].split("@")[0]: {k: r.get(k) for k in keep} for r in rec["results"]}


def _record(compare_json: str) -> Optional[dict]:
    if not os.path.isfile(compare_json):
        return None
    with open(compare_json) as f:
        return json.load(f)


def paired_loss(base: List[dict], other: List[dict], start_step: float) -> Optional[dict]:
    """Window-by-window loss difference (other - base) after ``start_step``. With the same seed both runs see
    the same images, noise and timesteps in every step, so the windows pair up; None if no steps match."""
    a = {r["step"]: r["loss"] for r in base if r["step"] > start_step}
    d = [r["loss"] - a[r["step"]] for r in other if r["step"] in a]
    if not d:
        return None
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    # Neighbouring windows are correlated (the weights change slowly): lag-1 autocorrelation says how far
    # the windows are from independent repeats; they are not a count of independent tests.
    var = sum((x - mean) ** 2 for x in d)
    lag1 = sum((x - mean) * (y - mean) for x, y in zip(d, d[1:])) / var if var > 0 else None
    return dict(from_step=int(start_step), windows=len(d), mean_diff=mean, sd_diff=sd, lag1_autocorr=lag1,
                rel_mean_diff=mean / statistics.fmean(a.values()), share_higher=sum(x > 0 for x in d) / len(d))


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def summary_markdown(rec: dict) -> str:
    p, models = rec["protocol"], rec["models"]
    floor = rec.get("test_split_floor")
    lines = [
        f"# {rec['title']}",
        "",
        f"Code: commit {rec['commit']}; GPU: {rec['gpu']}; final scores: FID-{p['num_images']} and KID against "
        f"{p['ref_count']} reference images ({p['ref_source']}), sampler {p['sampler']} with {p['steps']} steps, "
        f"seed {p['seed']}, {'bf16' if p['bf16'] else 'fp32'}. Inception Score: "
        + (
            "reported."
            if any(m["ema"].get("inception_score") is not None for m in models.values())
            else f"not computed — {p.get('inception_score_note') or 'no full Inception weights'}."
        ),
        "",
        "| model | attention | steps | FID EMA | KID EMA (x1e3) | FID raw | KID raw (x1e3) | final loss "
        "| train img/s (median) | sample+score s (EMA) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        e, r, t = m["ema"], m.get("raw") or {}, m["training"]
        def kid(s):
            return "n/a" if s.get("kid_mean") is None else f"{1e3 * s['kid_mean']:.1f} ± {1e3 * s['kid_std']:.1f}"
        lines.append(
            f"| {name} | {m['attention']} | {t['steps']} | {_fmt(e.get('fid'))} | {kid(e)} | {_fmt(r.get('fid'))} | "
            f"{kid(r)} | {t['final_loss']:.5f} | {t['images_per_s_median']:.0f} | {_fmt(e.get('total_s'), 1)} |"
        )
    for name, pl in rec.get("paired_loss", {}).items():
        lines += [
            "",
            f"Paired training loss, {name} vs {next(iter(models))} (same images, noise and timesteps per step), "
            f"{pl['windows']} log windows after step {pl['from_step']}: mean difference {pl['mean_diff']:+.5f} "
            f"({pl['rel_mean_diff']:+.1%}; SD {pl['sd_diff']:.5f}), {name} higher in {pl['share_higher']:.0%} of them "
            f"(lag-1 autocorrelation {_fmt(pl['lag1_autocorr'])}: neighbouring windows are not independent).",
        ]
    if floor:
        lines += [
            "",
            f"Metric floor: FID of the {floor['num_images']} CIFAR-10 test images against the same reference = "
            f"{floor['fid']:.2f} (KID x1e3 {1e3 * floor['kid_mean']:.2f}).",
        ]
    steps = sorted({r["step"] for m in models.values() for r in m["training"]["fid_during_training"]})
    if steps:
        n = {
            m["training"]["fid_during_training"][0]["num_images"]
            for m in models.values()
            if m["training"]["fid_during_training"]
        }
        lines += [
            "",
            f"FID-{'/'.join(map(str, sorted(n)))} of the EMA weights during training (same sampler and seeds):",
            "",
            "| step | " + " | ".join(models) + " |",
            "|---|" + "---|" * len(models),
        ]
        for s in steps:
            row = [
                next((_fmt(r["fid"]) for r in m["training"]["fid_during_training"] if r["step"] == s), "")
                for m in models.values()
            ]
            lines.append(f"| {s} | " + " | ".join(row) + " |")
    lines += ["", "Commands:", "", *[f"    {c}" for c in rec["commands"] if c]]
    return "\n".join(lines) + "\n"


def side_by_side(paths: Dict[str, str], dest: str, label_h: int = 16) -> str:
    """The given images next to each other with a name above each."""
    from PIL import Image, ImageDraw

    ims = {k: Image.open(v).convert("RGB") for k, v in paths.items()}
    w, h = sum(i.width for i in ims.values()) + 8 * (len(ims) - 1), max(i.height for i in ims.values()) + label_h
    canvas = Image.new("RGB", (w, h), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for name, im in ims.items():
        draw.text((x + 4, 2), name, fill="black")
        canvas.paste(im, (x, label_h))
        x += im.width + 8
    atomic_save_with(dest, lambda tmp: canvas.save(tmp, format="PNG"), suffix=".png")
    return dest


def default_title(configs: Dict[str, dict]) -> str:
    """E.g. 'cifar10, 25000 steps: softmax (softmax attention) vs cog (cog attention), U-ViT preset S/2'."""
    first = next(iter(configs.values()))
    who = " vs ".join(f"{n} ({c['model'].get('attention_type')} attention)" for n, c in configs.items())
    preset = first["model"].get("preset")
    arch = (
        f"U-ViT preset {preset}"
        if preset
        else f"U-ViT depth {first['model'].get('depth')}, width {first['model'].get('embed_dim')}"
    )
    return f"{first['data']['kind']}, {first['train']['steps']} steps: {who}, {arch}"


def report(out: str, dest: str, commit: str = "unknown", gpu: Optional[str] = None, commands: List[str] = (),
           title: Optional[str] = None) -> dict:
    ema_json = os.path.join(out, "compare_ema", "compare.json")
    if not os.path.isfile(ema_json):
        raise FileNotFoundError(f"{ema_json} not found: run the evaluation step of scripts/cifar10_comparison.sh first")
    runs_dir = os.path.join(out, "runs")
    names = sorted((n for n in os.listdir(runs_dir) if os.path.isfile(os.path.join(runs_dir, n, METRICS_FILE))),
                   key=lambda n: (n != "softmax", n))  # training runs only, the baseline first
    if len(names) < 2:
        raise ValueError(
            f"{runs_dir} holds {len(names)} training run(s) with {METRICS_FILE}; a comparison needs two or more"
        )
    ema, raw = _final_scores(ema_json), _final_scores(os.path.join(out, "compare_raw", "compare.json"))
    if set(ema) != set(names):
        raise ValueError(
            f"{ema_json} scores {sorted(ema)} but {runs_dir} holds {sorted(names)}: "
            "the compare labels must be the run folder names"
        )
    os.makedirs(dest, exist_ok=True)
    models, grids, configs, rows = {}, {}, {}, {}
    curves = {"loss": {}, f"loss (last {1 - LATE_FRACTION:.0%} of steps)": {}, "fid (EMA, during training)": {}}
    for name in names:
        run = os.path.join(runs_dir, name)
        metrics, fid = read_jsonl(os.path.join(run, METRICS_FILE)), read_jsonl(os.path.join(run, FID_FILE))
        rows[name] = metrics
        with open(os.path.join(run, "config.yaml")) as f:
            configs[name] = yaml.safe_load(f)
        models[name] = dict(
            attention=configs[name]["model"]["attention_type"],
            ema=ema.get(name, {}),
            raw=raw.get(name),
            training=training_summary(metrics, fid),
            config=configs[name],
        )
        steps, loss = series(metrics, "loss")
        late = [i for i, st in enumerate(steps) if st > steps[-1] * LATE_FRACTION]
        curves["loss"][name], curves["fid (EMA, during training)"][name] = (steps, loss), series(fid, "fid")
        curves[f"loss (last {1 - LATE_FRACTION:.0%} of steps)"][name] = (
            [steps[i] for i in late],
            [loss[i] for i in late],
        )
        for fname in (METRICS_FILE, FID_FILE, "config.yaml"):
            if os.path.isfile(os.path.join(run, fname)):  # no fid.jsonl when FID during training was off
                shutil.copyfile(os.path.join(run, fname), os.path.join(dest, f"{name}_{fname}"))
        sample_dir = os.path.join(run, SAMPLES_DIR)
        pngs = sorted(f for f in os.listdir(sample_dir) if f.endswith(".png")) if os.path.isdir(sample_dir) else []
        if pngs:
            grids[f"{name} ({pngs[-1][:-4]})"] = os.path.join(sample_dir, pngs[-1])
    floor_json = os.path.join(out, "test_split_fid.json")
    floor = None
    if os.path.isfile(floor_json):
        with open(floor_json) as f:
            floor = json.load(f)
    ema_rec, raw_rec = _record(ema_json), _record(os.path.join(out, "compare_raw", "compare.json"))
    rec = dict(
        title=title or default_title(configs),
        commit=commit,
        gpu=gpu or ema_rec.get("device"),
        versions=ema_rec.get("versions"),
        protocol=ema_rec["protocol"],
        models=models,
        test_split_floor=floor,
        commands=[c for c in (*commands, ema_rec.get("command"), raw_rec and raw_rec.get("command")) if c],
    )
    files = {"summary": "summary.md", "curves": "curves.png"}
    atomic_save_with(os.path.join(dest, files["curves"]),
                     lambda tmp: plot_curves(curves, tmp, logy=("loss", "fid (EMA, during training)")), suffix=".png")
    if grids:
        files["samples"] = os.path.basename(side_by_side(grids, os.path.join(dest, "samples.png")))
    for sub in ("compare_ema", "compare_raw"):
        for fname in ("compare.json", "compare.md", "grid.png"):
            src = os.path.join(out, sub, fname)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(dest, f"{sub}_{fname}"))
    if floor:
        shutil.copyfile(floor_json, os.path.join(dest, "test_split_fid.json"))
    start = LATE_FRACTION * models[names[0]]["training"]["steps"]
    rec["paired_loss"] = {n: pl for n in names[1:] if (pl := paired_loss(rows[names[0]], rows[n], start))}
    rec["files"] = files
    atomic_write_json(os.path.join(dest, "results.json"), rec)
    atomic_write_text(os.path.join(dest, files["summary"]), summary_markdown(rec))
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cogdiff.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", help="the OUT folder of scripts/cifar10_comparison.sh")
    ap.add_argument("--dest", required=True, help="results folder to write")
    ap.add_argument("--commit", default=None, help="code commit the runs used (default: this checkout's HEAD)")
    ap.add_argument("--gpu", default=None, help="GPU description (default: the device named in compare.json)")
    ap.add_argument("--command", action="append", default=[], help="a command that produced OUT (repeatable)")
    args = ap.parse_args(argv)
    try:
        rec = report(args.out, args.dest, args.commit or git_commit(), args.gpu, args.command)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(rec), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

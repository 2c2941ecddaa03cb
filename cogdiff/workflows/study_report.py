"""``python -m cogdiff.study report OUT [OUT2 ...]``: merge the run folders of one study into OUT/report/.

results.json (the study schema: study, protocol, arms -> runs with seed, steps, fid_ema, fid_raw, kid_ema, kid_raw,
fid_curve, color_ema, color_raw, color_ref, color_curve, commit, gpu; floor, floor_color), summary.md (arm x seed
table, mean and spread over seeds, differences vs the baseline arm, the probe's loss by noise level vs the baseline,
the samples' colours against the reference images', each run's attention statistics per block at its last
diagnostics step, over the whole probe and its lowest-noise band, also ``blocks_last`` / ``blocks_last_t0`` in
results.json) and plots: fid_vs_step.png, loss_diff.png,
loss_by_t_diff.png, loss_by_t_gap.png, diagnostics.png, diagnostics_t0.png (lowest-noise band), samples.png. A plot
whose inputs no run has (no FID or diagnostics logged) is skipped with a note in summary.md. Each run that has
diagnostics and a baseline run probed on the same samples (the same seed where there is one) also gets
``loss_by_t_gap`` in results.json, ``[[step, [gap per bin]], ...]``, and that baseline run's seed,
``loss_by_t_gap_vs_seed``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml

from ..analysis.plots import plot_block_stats, plot_curves
from ..analysis.runs import series
from ..grids import labeled_rows, save_png
from ..io import atomic_save_with, atomic_write_json, atomic_write_text
from ..metrics.color import color_shift
from ..rundir import RunDir

DIAG_KEYS = ("logit_absmax", "entropy", "neg_share", "out_rms")
BLOCK_TABLE_KEYS = ("entropy", "out_rms", "logit_absmean", "neg_share")  # per block, at the last diagnostics step


def _json(path) -> Optional[dict]:
    import json

    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def run_record(run: RunDir) -> dict:
    """One run's numbers: final scores of EMA and raw weights, the FID curve, its provenance."""
    rec = _json(run.path / "eval" / "compare.json") or {}
    scores = {r["model"]: r for r in rec.get("results", [])}
    prov = run.provenance() or {}
    rows = run.metrics()
    out = dict(seed=int(run.name.removeprefix("seed")), steps=rows[-1]["step"] if rows else 0)
    for w in ("ema", "raw"):
        out[f"fid_{w}"] = scores.get(w, {}).get("fid")
        out[f"kid_{w}"] = scores.get(w, {}).get("kid_mean")
        out[f"color_{w}"] = scores.get(w, {}).get("color")  # the final evaluation's images (0-255)
    out["guidance_scale"] = rec.get("protocol", {}).get("guidance_scale")  # of the final evaluation (1 = none)
    ema_rows, raw_rows = run.fid(), run.fid(raw=True)  # in-training FID logs
    refs = [rec.get("protocol", {}).get("ref_color"), *(r.get("color_ref") for r in ema_rows + raw_rows)]
    out["color_ref"] = next((c for c in refs if c), None)  # the reference images' colours (compare.json or FID logs)
    # in-training samples: [step, weights, their colours, the colours of the reference that row was scored against
    # where it is not the run's color_ref, else None]
    out["color_curve"] = [[r["step"], w, r["color"], None if r.get("color_ref") == out["color_ref"]
                           else r.get("color_ref")]
                          for w, rows in (("ema", ema_rows), ("raw", raw_rows)) for r in rows if r.get("color")]
    out["fid_curve"] = [[r["step"], r["fid"]] for r in ema_rows if r.get("fid") is not None]
    raw_curve = [[r["step"], r["fid"]] for r in raw_rows if r.get("fid") is not None]
    if raw_curve:  # runs with train.fid_raw
        out["fid_raw_curve"] = raw_curve
    if len(rows) > 1 and "time" in rows[0]:  # wall time of training from the first to the last logged step
        out["train_min"] = round((rows[-1]["time"] - rows[0]["time"]) / 60, 2)
    out["eval_min"] = round(rec["eval_s"] / 60, 2) if "eval_s" in rec else None
    out.update(commit=prov.get("commit"), gpu=prov.get("gpu") or rec.get("device"))
    diag = run.diagnostics()
    last = diag[-1] if diag else {}
    for key, blocks in (("blocks_last", last.get("blocks")),
                        ("blocks_last_t0", (last.get("blocks_by_band") or {}).get("0"))):
        if blocks and all({"attention", *BLOCK_TABLE_KEYS} <= set(b) for b in blocks):
            out[key] = dict(step=last["step"], attention=[b["attention"] for b in blocks],
                            **{k: [b[k] for b in blocks] for k in BLOCK_TABLE_KEYS})
    return out


def _steps(run: RunDir) -> int:
    rows = run.metrics()
    return rows[-1]["step"] if rows else 0


def collect(outs: List[str]) -> Dict[str, Dict[int, RunDir]]:
    """arm -> seed -> run folder over all OUT folders; a later folder's run of the same (arm, seed) replaces an
    earlier one only if it trained more steps."""
    found: Dict[str, Dict[int, RunDir]] = {}
    for out in outs:
        for seed_dir in sorted(Path(out, "runs").glob("*/seed*")):
            run, arm = RunDir(seed_dir), seed_dir.parent.name
            seed = int(seed_dir.name.removeprefix("seed"))
            old = found.setdefault(arm, {}).get(seed)
            if old is None or _steps(run) > _steps(old):
                found[arm][seed] = run
    return found


def study_of(outs: List[str], study: Optional[dict] = None) -> dict:
    """``study``, or else the study.yaml of the first OUT folder that has one."""
    if study is not None:
        return study
    for out in outs:
        if Path(out, "study.yaml").is_file():
            return yaml.safe_load(Path(out, "study.yaml").read_text())
    raise FileNotFoundError(f"no study.yaml in {outs}: is it an OUT folder of python -m cogdiff.study run?")


def results(outs: List[str], study: dict, runs: Dict[str, Dict[int, RunDir]], gaps: Dict[str, tuple]) -> dict:
    """The results.json record of ``runs`` (:func:`collect` of ``outs``) with their ``gaps``
    (:func:`loss_by_t_gaps`)."""
    order = [a["name"] for a in study["arms"]] + sorted(set(runs) - {a["name"] for a in study["arms"]})
    overrides = {a["name"]: a["overrides"] for a in study["arms"]}
    arms = [dict(name=n, overrides=overrides.get(n, {}),
                 runs=[run_record(r) for _, r in sorted(runs.get(n, {}).items())]) for n in order if n in runs]
    for arm in arms:
        for rec in arm["runs"]:
            steps, d, partner = gaps.get(f"{arm['name']}/s{rec['seed']}", ([], [], None))
            if steps:
                rec["loss_by_t_gap"] = [[st, [float(v) for v in g]] for st, g in zip(steps, d)]
                rec["loss_by_t_gap_vs_seed"] = partner
    floor = next((f for f in (_json(Path(o, "floor.json")) for o in outs) if f), None)
    return dict(study=study["name"], protocol=study["protocol"], baseline=study["baseline"], arms=arms,
                floor=dict(fid=floor["fid"], source=floor["source"]) if floor else None,
                floor_color=(floor or {}).get("color"))


def _mean_sd(xs: List[float]) -> tuple:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt(v, nd: int = 2, missing: str = "n/a") -> str:
    """A number with ``nd`` decimals for a Markdown table; ``missing`` for None."""
    return missing if v is None else f"{v:.{nd}f}"


def _delta(v, base, nd=2) -> str:
    return "n/a" if v is None or base is None else f"{v - base:+.{nd}f}"


def arm_table(res: dict, metric: str, nd: int) -> List[str]:
    """Markdown lines: per arm, mean and sd over seeds of ``metric`` ("fid" or "kid") for the EMA and raw weights,
    and each mean minus the baseline arm's."""
    name, b = metric.upper(), res["baseline"]
    base = next((a for a in res["arms"] if a["name"] == b), None)
    base_means = {w: _mean_sd([r[f"{metric}_{w}"] for r in base["runs"]])[0] if base else None for w in ("ema", "raw")}
    lines = ["", f"| arm | seeds | {name} EMA mean | sd | {name} raw mean | sd | Δ {name} EMA vs {b} | "
             f"Δ {name} raw vs {b} |", "|---|---|---|---|---|---|---|---|"]
    for arm in res["arms"]:
        (me, se), (mr, sr) = (_mean_sd([r[f"{metric}_{w}"] for r in arm["runs"]]) for w in ("ema", "raw"))
        lines.append(f"| {arm['name']} | {len(arm['runs'])} | {fmt(me, nd)} | {fmt(se, nd)} | {fmt(mr, nd)} | "
                     f"{fmt(sr, nd)} | {_delta(me, base_means['ema'], nd)} | {_delta(mr, base_means['raw'], nd)} |")
    return lines


def summary_markdown(res: dict, notes: List[str]) -> str:
    p = res["protocol"]
    lines = [f"# Study {res['study']}", "",
             f"{p['steps']} steps, batch {p['batch_size']}; final FID-{p['final_n']} and KID of EMA and raw weights "
             f"({p['scheduler']}, {p['sample_steps']} steps, the same image seeds for every arm).", "",
             "| arm | seed | steps | FID EMA | FID raw | KID EMA | KID raw | commit |",
             "|---|---|---|---|---|---|---|---|"]
    short = [f"{a['name']} seed {r['seed']} ({r['steps']} of {p['steps']} steps)" for a in res["arms"]
             for r in a["runs"] if r["steps"] < p["steps"]]
    if short:
        notes = [f"incomplete (a partial record; not in the means): {', '.join(short)}", *notes]
    guided = [f"{a['name']} seed {r['seed']} (w = {r['guidance_scale']:g})" for a in res["arms"] for r in a["runs"]
              if r.get("guidance_scale") not in (None, 1.0)]
    if guided:
        notes = [f"sampled with classifier-free guidance: {', '.join(guided)}; their differences from "
                 f"{res['baseline']} set guided class-conditional samples against the baseline's own", *notes]
    for arm in res["arms"]:
        for r in arm["runs"]:
            steps = r["steps"] if r["steps"] >= p["steps"] else f"{r['steps']} (incomplete)"
            lines.append(f"| {arm['name']} | {r['seed']} | {steps} | {fmt(r['fid_ema'])} | {fmt(r['fid_raw'])} | "
                         f"{fmt(r['kid_ema'], 5)} | {fmt(r['kid_raw'], 5)} | {(r['commit'] or 'unknown')[:10]} |")
    lines += arm_table(res, "fid", 2) + arm_table(res, "kid", 5)
    lines += gap_table(res) + color_table(res) + blocks_table(res)
    if res["floor"]:
        lines += ["", f"Metric floor: FID {fmt(res['floor']['fid'])} of `{res['floor']['source']}`."]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def gap_table(res: dict) -> List[str]:
    """Markdown lines: per run with a ``loss_by_t_gap``, the gap in the two lowest-noise bins and the largest |gap|
    of the other bins, at every ``fid_every`` step (or four evenly spaced logged steps) and the last one."""
    every = res["protocol"].get("fid_every") or 0
    rows = []
    for arm in res["arms"]:
        for r in arm["runs"]:
            gap = r.get("loss_by_t_gap") or []
            pick = [g for g in gap if every and g[0] % every == 0] or gap[:: max(1, len(gap) // 4)]
            pick += [gap[-1]] if gap and gap[-1] not in pick else []
            vs = r.get("loss_by_t_gap_vs_seed", r["seed"])
            rows += [f"| {arm['name']}/s{r['seed']} | s{vs} | {st} | {d[0]:+.4f} | {d[1]:+.4f} | "
                     f"{max(abs(v) for v in d[2:]):.4f} |" for st, d in pick if len(d) > 2]
    if not rows:
        return []
    head = (f"Probe loss by timestep bin minus {res['baseline']}'s run on the same probe samples (its seed in `vs`: "
            "the run's own where it has one; raw weights; bin 0 = the lowest noise):")
    return ["", head,
            "", "| run | vs | step | bin 0 | bin 1 | max abs, bins 2+ |", "|---|---|---|---|---|---|", *rows]


def _shift_cells(color: dict, ref: dict) -> str:
    c = color_shift(color, ref)
    return (f"{c['brightness_offset']:+.1f} | " + " / ".join(f"{v:+.1f}" for v in c["mean_offset"]) + " | "
            + " / ".join(f"{v:.2f}" for v in c["std_ratio"]) + f" | {c['saturation_offset']:+.1f}")


def color_table(res: dict) -> List[str]:
    """Markdown lines: per run, how the colours of its final EMA and raw samples depart from the reference images'
    (mean offset per channel, contrast as std ratio, saturation), then the same for every in-training FID sample
    (against the reference that sample was scored against)."""
    head = "| run | weights | FID | brightness | mean offset per channel | std ratio per channel | saturation |"
    final, during = [], []
    for arm in res["arms"]:
        for r in arm["runs"]:
            ref, label = r.get("color_ref"), f"{arm['name']}/s{r['seed']}"
            final += [f"| {label} | {w} | {fmt(r[f'fid_{w}'])} | {_shift_cells(r[f'color_{w}'], ref)} |"
                      for w in ("ema", "raw") if r.get(f"color_{w}") and ref]
            fids = {("ema", st): v for st, v in r.get("fid_curve", [])}
            fids.update({("raw", st): v for st, v in r.get("fid_raw_curve", [])})
            during += [f"| {label} | {w} @ {st} | {fmt(fids.get((w, st)))} | {_shift_cells(c, row_ref or ref)} |"
                       for st, w, c, row_ref in sorted(r.get("color_curve", []), key=lambda x: (x[1], x[0]))
                       if row_ref or ref]
    if not final and not during:
        return []
    p = res.get("protocol") or {}
    lines = ["", "Colours of the samples against the reference images' (mean offsets on the 0-255 scale; std ratio "
             f"> 1 = more contrast; final samples with their FID-{p.get('final_n', 'N')}, then each in-training "
             f"sample with its FID-{p.get('fid_n', 'N')}):", "", head, "|---|---|---|---|---|---|---|", *final]
    ref = next((r["color_ref"] for a in res["arms"] for r in a["runs"] if r.get("color_ref")), None)
    if res.get("floor_color") and ref:
        lines.append(f"| floor (the metric floor's images) | data | {fmt(res['floor']['fid'])} | "
                     f"{_shift_cells(res['floor_color'], ref)} |")
    return lines + during


BLOCK_TABLES = (  # (run record key, what the table's rows cover)
    ("blocks_last", "whole probe"),
    ("blocks_last_t0", "the probe samples of the lowest-noise band only, t < 100; runs whose diagnostics have "
                       "blocks_by_band"),
)


def blocks_table(res: dict) -> List[str]:
    """Markdown lines: per run, its blocks' attention statistics at its last diagnostics step (``*`` = Cog block),
    over the whole probe and over its lowest-noise band."""
    lines = []
    for key, scope in BLOCK_TABLES:
        runs = [(f"{a['name']}/s{r['seed']}", r[key]) for a in res["arms"] for r in a["runs"] if r.get(key)]
        if not runs:
            continue
        n = max(len(b["attention"]) for _, b in runs)
        lines += ["", f"Attention per block at the last diagnostics step ({scope}; entropy in nats of softmax(|s|), "
                  "out_rms of the attention output, mean |s|, share of negative weight; `*` = Cog block):", "",
                  "| run | step | stat | " + " | ".join(f"b{i}" for i in range(n)) + " |", "|---|---|---|" + "---|" * n]
        for label, b in runs:
            marks = ["*" if t == "cog" else "" for t in b["attention"]]
            lines += [f"| {label} | {b['step']} | {k} | " + " | ".join(f"{v:.2f}{m}" for v, m in zip(b[k], marks))
                      + " |" for k in BLOCK_TABLE_KEYS if k != "neg_share" or any(marks)]
    return lines


def _curves(runs, key, rows_of) -> dict:
    return {f"{a}/s{s}": series(rows_of(r), key) for a, seeds in runs.items() for s, r in seeds.items()
            if series(rows_of(r), key)[0]}


def _diff(base_rows: List[dict], rows: List[dict], key: str) -> tuple:
    b = {r["step"]: r[key] for r in base_rows if r.get(key) is not None}
    steps = [r["step"] for r in rows if r["step"] in b and r.get(key) is not None]
    vals = {r["step"]: r.get(key) for r in rows}
    return steps, [np.asarray(vals[s]) - np.asarray(b[s]) for s in steps]


def plots(runs: Dict[str, Dict[int, RunDir]], gaps: Dict[str, tuple], baseline: str, dest: Path) -> List[str]:
    """The report's plots; returns notes for those skipped."""
    notes = []
    fid = _curves(runs, "fid", RunDir.fid)
    raw = _curves(runs, "fid", lambda r: r.fid(raw=True))  # runs with train.fid_raw: a second panel
    if fid:
        panels = {"fid (EMA)": fid, **({"fid (raw weights)": raw} if raw else {})}
        atomic_save_with(dest / "fid_vs_step.png", lambda t: plot_curves(panels, t), suffix=".png")
    else:
        notes.append("fid_vs_step.png skipped: no run logged FID during training (fid.jsonl)")
    base = runs.get(baseline, {})
    loss = {}
    for a, seeds in runs.items():
        for s, r in seeds.items():
            if a != baseline and s in base:
                x, d = _diff(base[s].metrics(), r.metrics(), "loss")
                loss[f"{a}/s{s}"] = (x, [float(v) for v in d])
    if loss:
        atomic_save_with(dest / "loss_diff.png", lambda t: plot_curves({f"loss - {baseline}": loss}, t), suffix=".png")
    notes += _diag_plots(runs, gaps, baseline, dest)
    return notes


def probe_key(run: RunDir) -> Optional[tuple]:
    """What the run's diagnostics probe was drawn from: (probe seed, probe size), or None without a saved config.
    Runs saved before ``train.diag_probe_seed`` existed drew it from ``train.seed`` (the same samples when equal)."""
    train = (run.config() or {}).get("train")
    if not isinstance(train, dict):
        return None
    return train.get("diag_probe_seed", train.get("seed")), train.get("diag_probe_size")


def _probe_partner(base: Dict[int, RunDir], seed: int, run: RunDir) -> Optional[int]:
    """The baseline seed to compare ``run``'s probe with: its own seed when that run was probed on the same samples
    (or either probe is unknown), else the lowest baseline seed whose run had the same probe; None if none."""
    key = probe_key(run)
    if seed in base and (key is None or probe_key(base[seed]) in (None, key)):
        return seed
    return next((s for s in sorted(base) if key is not None and probe_key(base[s]) == key), None)


def loss_by_t_gaps(runs: Dict[str, Dict[int, RunDir]], baseline: str, key: str = "loss_by_t") -> Dict[str, tuple]:
    """'arm/sSEED' -> (steps, gaps, baseline seed): the probe's ``key`` minus the baseline arm's run on the same
    probe (:func:`_probe_partner`: the same seed where there is one), at every step both logged. Runs without such a
    baseline run or without diagnostics are left out."""
    base, gaps = runs.get(baseline, {}), {}
    for a, seeds in runs.items():
        for s, r in seeds.items():
            partner = None if a == baseline else _probe_partner(base, s, r)
            if partner is not None:
                steps, d = _diff(base[partner].diagnostics(), r.diagnostics(), key)
                if steps:
                    gaps[f"{a}/s{s}"] = (steps, d, partner)
    return gaps


def _gap_lines(steps, d) -> dict:
    lines = {"bin 0 (lowest noise)": (steps, [float(g[0]) for g in d])}
    if len(d[0]) > 2:
        lines["bin 1"] = (steps, [float(g[1]) for g in d])
        lines[f"bins 2-{len(d[0]) - 1} (mean)"] = (steps, [float(np.mean(g[2:])) for g in d])
    return lines


def _diag_plots(runs, gaps, baseline: str, dest: Path) -> List[str]:
    diag = {f"{a}/s{s}": r.diagnostics() for a, seeds in runs.items() for s, r in seeds.items() if r.diagnostics()}
    if not diag:
        return ["loss_by_t_diff.png and diagnostics.png skipped: no run logged diagnostics (diagnostics.jsonl)"]
    panels = {}
    for label, (steps, d, partner) in gaps.items():
        for i in sorted({0, len(steps) // 2, len(steps) - 1}):
            panel = panels.setdefault(f"{label}: loss_by_t - {baseline}/s{partner}", {})
            panel[f"step {steps[i]}"] = (list(range(len(d[i]))), list(d[i]))
    if panels:
        atomic_save_with(dest / "loss_by_t_diff.png", lambda t: plot_curves(panels, t, xlabel="timestep bin (x100)"),
                         suffix=".png")
        atomic_save_with(dest / "loss_by_t_gap.png", lambda t: plot_curves(
            {f"{k}: loss_by_t - {baseline}/s{v[2]}": _gap_lines(*v[:2]) for k, v in gaps.items()}, t), suffix=".png")
    atomic_save_with(dest / "diagnostics.png", lambda t: plot_block_stats(diag, DIAG_KEYS, t), suffix=".png")
    low = {k: [dict(step=r["step"], blocks=r["blocks_by_band"]["0"]) for r in rows
               if (r.get("blocks_by_band") or {}).get("0")] for k, rows in diag.items()}
    low = {k: v for k, v in low.items() if v}
    if low:  # the same over the lowest-noise band's probe samples (runs whose diagnostics have blocks_by_band)
        atomic_save_with(dest / "diagnostics_t0.png", lambda t: plot_block_stats(low, DIAG_KEYS, t), suffix=".png")
    return []


def sample_grids(runs: Dict[str, Dict[int, RunDir]], dest: Path) -> Optional[str]:
    """One row per (arm, seed): the EMA images of the final evaluation (the same image seeds in every row)."""
    rows = {}
    for a, seeds in runs.items():
        for s, r in seeds.items():
            path = r.path / "eval" / "grid_images.npz"
            if path.is_file():
                rows[f"{a}/s{s}"] = np.load(path)["ema"]
    return save_png(labeled_rows(rows), dest / "samples.png") if rows else None


def study_report(outs: List[str], study: Optional[dict] = None, dest: Optional[str] = None) -> Path:
    """Merge ``outs`` into ``dest`` (default: the first OUT's report/); returns that folder."""
    study = study_of(outs, study)
    dest = Path(dest or Path(outs[0]) / "report")
    dest.mkdir(parents=True, exist_ok=True)
    runs = collect(outs)
    gaps = loss_by_t_gaps(runs, study["baseline"])
    res = results(outs, study, runs, gaps)
    notes = plots(runs, gaps, study["baseline"], dest)
    if not sample_grids(runs, dest):
        notes.append("samples.png skipped: no run has a final evaluation yet")
    atomic_write_json(dest / "results.json", res)
    atomic_write_text(dest / "summary.md", summary_markdown(res, notes))
    return dest

"""``python -m cogdiff.study status OUT [OUT2 ...] [--study FILE]``: where a study stands, run by run.

For every (arm, seed) of the study, in its order: how far training got (the last logged step), whether the final
evaluation is in (``eval/compare.json``), the minutes training and evaluation took, the commit, and the FID-10k
(EMA / raw) when scored. Then what is left as ``--only`` arguments and, from the runs already scored, the median
minutes one run took. Reads only the logs (run folders without weights, e.g. committed results, work too).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import List, Optional

from .study import load_study, selected
from .study_report import collect, fmt, run_record, study_of


def run_state(rec: Optional[dict], steps: int) -> str:
    """'scored', 'trained, not scored', 'N of M steps' or 'not started' for a run record (or None)."""
    logged = rec["steps"] if rec else 0
    if rec and logged >= steps:
        return "scored" if rec["fid_ema"] is not None else "trained, not scored"
    return f"{logged} of {steps} steps" if logged else "not started"


def status_markdown(study: dict, outs: List[str]) -> str:
    """The status table of ``study`` over the OUT folders ``outs``, the runs left and the time per run."""
    runs, steps = collect(outs), study["protocol"]["steps"]
    lines = [f"# Study {study['name']}: status over {', '.join(map(str, outs))}", "",
             "| arm | seed | state | train min | eval min | FID EMA | FID raw | commit |",
             "|---|---|---|---|---|---|---|---|"]
    left, minutes, pairs = [], [], selected(study)
    for arm, seed in pairs:
        run = runs.get(arm["name"], {}).get(seed)
        rec = run_record(run) if run else None
        state = run_state(rec, steps)
        if state != "scored":
            left.append(f"--only {arm['name']}:{seed}")
        elif rec.get("train_min") and rec.get("eval_min"):
            minutes.append(rec["train_min"] + rec["eval_min"])
        rec = rec or {}
        lines.append(f"| {arm['name']} | {seed} | {state} | {fmt(rec.get('train_min'), 1, '')} | "
                     f"{fmt(rec.get('eval_min'), 1, '')} | {fmt(rec.get('fid_ema'), 2, '')} | "
                     f"{fmt(rec.get('fid_raw'), 2, '')} | "
                     f"{(rec.get('commit') or '')[:10]} |")
    lines += ["", f"Left ({len(left)} of {len(pairs)} runs): {' '.join(left) if left else 'nothing'}"]
    if minutes and left:
        each = statistics.median(minutes)
        lines.append(f"Median time per scored run: {each:.1f} min of training + evaluation (logged; excludes compile "
                     f"and set-up), so about {each * len(left):.0f} min for what is left on one GPU.")
    return "\n".join(lines) + "\n"


def study_status(outs: List[str], study_file: Optional[str] = None) -> str:
    """:func:`status_markdown` of the study file ``study_file`` (default: the first OUT's study.yaml)."""
    study = load_study(study_file) if study_file else study_of(outs)
    missing = [o for o in outs if not Path(o).is_dir()]
    if missing:
        raise FileNotFoundError(f"no study folder {missing[0]}: pass the OUT folder of python -m cogdiff.study run")
    return status_markdown(study, outs)

"""A study: arms (a name + config overrides) x seeds trained under one protocol, evaluated the same way.

    python -m cogdiff.study run configs/studies/cifar10_2arm.yaml --data /data/cifar10 --out results/c10
    python -m cogdiff.study report results/c10 [results/c10_other_machine ...]

A study file::

    name: cifar10_2arm
    base: ../cifar10_uvit_base.yaml        # relative to the study file
    overrides: {model.preset: U-ViT-S/2}    # key=value for every arm (an arm's own overrides win)
    protocol: {steps: 20000, batch_size: 128, fid_every: 5000, fid_n: 2000, final_n: 10000,
               scheduler: dpm++, sample_steps: 50, diag_every: 500, eval_batch: 500, grid_images: 8,
               mixed_precision: bf16, eval_bf16: true}
    ref: dataset:kind=cifar10,path={data},split=train      # reference statistics (built once, cached in OUT)
    floor: dataset:kind=cifar10,path={data},split=test     # the metric's floor, scored once per study
    baseline: softmax                                      # default: the first arm
    seeds: [0, 1]
    arms:
      - {name: softmax, overrides: {model.attention_type: softmax}}
      - {name: cog, overrides: {model.attention_type: cog}, seeds: [0]}   # an arm may list its own seeds

OUT holds ``stats/ref.npz``, ``floor.json``, ``runs/<arm>/seed<s>/`` (a training run folder, see
:mod:`cogdiff.rundir`, plus ``eval/compare.json``: EMA and raw weights scored with the same image seeds for every
arm) and ``logs/``. Re-running continues interrupted runs and skips finished ones; arms or seeds added to the
file later run alone. With GPUs visible, runs go one per GPU side by side; otherwise one after the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

from ..config import ConfigError
from ..io import atomic_write_json, atomic_write_text
from ..rundir import RunDir, read_jsonl
from .compare import compare

PROTOCOL_DEFAULTS = dict(steps=1000, batch_size=128, fid_every=0, fid_n=2000, final_n=10_000, scheduler="dpm++",
                         sample_steps=50, diag_every=0, eval_batch=256, grid_images=8, mixed_precision=None,
                         eval_bf16=False)
# protocol key -> training config key
PROTOCOL_KEYS = dict(steps="train.steps", batch_size="train.batch_size", fid_every="train.fid_every",
                     fid_n="train.fid_num_images", scheduler="sample.scheduler",
                     sample_steps="sample.num_inference_steps",
                     diag_every="train.diag_every", mixed_precision="train.mixed_precision")


def load_study(path) -> dict:
    """The study file with defaults filled in and checked; bad input raises ConfigError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} not found")
    s = yaml.safe_load(path.read_text()) or {}
    for key in ("name", "base", "arms"):
        if key not in s:
            raise ConfigError(f"{path}: missing '{key}' (see python -m cogdiff.study --help for the file's layout)")
    unknown = set(s.get("protocol") or {}) - set(PROTOCOL_DEFAULTS)
    if unknown:
        raise ConfigError(f"{path}: unknown protocol keys {sorted(unknown)}; known: {sorted(PROTOCOL_DEFAULTS)}")
    s["protocol"] = {**PROTOCOL_DEFAULTS, **(s.get("protocol") or {})}
    s["base"] = str((path.parent / s["base"]).resolve())
    s["seeds"] = list(s.get("seeds") or [0])
    names = [a.get("name") for a in s["arms"]]
    if None in names or len(set(names)) != len(names):
        raise ConfigError(f"{path}: every arm needs a distinct 'name', got {names}")
    for a in s["arms"]:
        a["overrides"] = dict(a.get("overrides") or {})
        a["seeds"] = list(a.get("seeds") or s["seeds"])
    s["baseline"] = s.get("baseline") or names[0]
    if s["baseline"] not in names:
        raise ConfigError(f"{path}: baseline {s['baseline']!r} is not an arm ({names})")
    return s


def run_overrides(study: dict, arm: dict, seed: int, data: Optional[str], ref: Optional[str] = None) -> List[str]:
    """The training command's key=value list for one (arm, seed): protocol, data path, the arm, the seed."""
    p = study["protocol"]
    out = [f"{key}={p[k]}" for k, key in PROTOCOL_KEYS.items() if p.get(k) is not None and (k != "diag_every" or p[k])]
    if data:
        out.append(f"data.path={data}")
    if ref and p["fid_every"]:
        out.append(f"train.fid_ref={Path(ref).resolve()}")
    common = dict(study.get("overrides") or {})
    out += [f"{k}={_value(v)}" for k, v in {**common, **arm["overrides"]}.items()]
    return out + [f"train.seed={seed}", "train.resume=latest"]


def _value(v) -> str:
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def run_dir(out, arm: str, seed: int) -> RunDir:
    return RunDir(Path(out) / "runs" / arm / f"seed{seed}")


def is_trained(run: RunDir, steps: int) -> bool:
    rows = run.metrics()
    return run.has_pipeline() and bool(rows) and rows[-1]["step"] >= steps


def pending(study: dict, out) -> List[tuple]:
    """(arm, seed) pairs whose training has not reached the protocol's steps."""
    steps = study["protocol"]["steps"]
    return [(a, s) for a in study["arms"] for s in a["seeds"] if not is_trained(run_dir(out, a["name"], s), steps)]


def visible_gpus() -> List[str]:
    import torch

    n = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(n)])[:n]


def _launch(study: dict, arm: dict, seed: int, data, out, gpu: Optional[str], ref=None) -> subprocess.Popen:
    run = run_dir(out, arm["name"], seed)
    log = Path(out) / "logs" / f"{arm['name']}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    cmd = [sys.executable, "-m", "cogdiff.workflows.train", "--config", study["base"],
           f"train.output_dir={run.path}", *run_overrides(study, arm, seed, data, ref)]
    print(f"[{time.strftime('%H:%M:%S')}] train {arm['name']} seed {seed}{f' on GPU {gpu}' if gpu else ''} "
          f"-> {log}", flush=True)
    with open(log, "a") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def train_all(study: dict, data, out, ref: Optional[str] = None) -> None:
    """Train every pending (arm, seed): one per visible GPU side by side, else one after the other."""
    todo = pending(study, out)
    gpus = visible_gpus()
    slots: Dict[Optional[str], Optional[tuple]] = {g: None for g in (gpus or [None])}
    failed = []
    while todo or any(slots.values()):
        for g, job in slots.items():
            if job is not None and job[0].poll() is not None:
                if job[0].returncode != 0:
                    failed.append(f"{job[1]} seed {job[2]} (exit {job[0].returncode}, see {out}/logs)")
                slots[g] = None
            if slots[g] is None and todo:
                arm, seed = todo.pop(0)
                slots[g] = (_launch(study, arm, seed, data, out, g, ref), arm["name"], seed)
        time.sleep(0.2)
    if failed:
        raise RuntimeError(f"training failed: {'; '.join(failed)}")


def train_side_by_side(study: dict, data, out, slots: List[Optional[str]], ref: Optional[str] = None,
                       poll: Optional[Callable[[], None]] = None) -> None:
    """Like :func:`train_all` with explicit ``slots``: up to ``len(slots)`` runs at a time, one per slot (a GPU id,
    or None for a CPU process; ``[None, None]`` trains two runs side by side on a 2-core CPU). ``poll()`` is called
    about five times a second while they run (e.g. to draw progress from the run folders)."""
    todo = pending(study, out)
    jobs: List[Optional[tuple]] = [None] * len(slots)
    failed = []
    while todo or any(jobs):
        for i, job in enumerate(jobs):
            if job is not None and job[0].poll() is not None:
                if job[0].returncode != 0:
                    failed.append(f"{job[1]} seed {job[2]} (exit {job[0].returncode}, see {out}/logs)")
                jobs[i] = job = None
            if job is None and todo:
                arm, seed = todo.pop(0)
                jobs[i] = (_launch(study, arm, seed, data, out, slots[i], ref), arm["name"], seed)
        if poll is not None:
            poll()
        time.sleep(0.2)
    if failed:
        raise RuntimeError(f"training failed: {'; '.join(failed)}")


def ensure_ref(study: dict, data, out, device=None) -> str:
    """OUT/stats/ref.npz from the study's ``ref`` source (built once, then reused after a fingerprint check)."""
    from ..metrics import InceptionFeatures
    from ..metrics.stats import ensure_ref_stats
    from ..sources import iter_source

    path = Path(out) / "stats" / "ref.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return str(path)
    source = study.get("ref", "").format(data=data)
    if not source:
        raise ConfigError("the study file has no 'ref' (reference image source, e.g. dataset:kind=cifar10,...)")
    ensure_ref_stats(str(path), lambda: iter_source(source), InceptionFeatures(device=device), source=source)
    return str(path)


def score_floor(study: dict, data, out, ref: str, device=None) -> Optional[dict]:
    """FID of the study's ``floor`` image source against the reference, once (OUT/floor.json)."""
    from ..metrics import FIDEvaluator
    from ..sources import iter_source

    path = Path(out) / "floor.json"
    if path.is_file() or not study.get("floor"):
        return None
    source = study["floor"].format(data=data)
    scores = FIDEvaluator(ref, device=device).score_images(iter_source(source, study["protocol"]["eval_batch"]))
    atomic_write_json(path, {"source": source, **scores})
    return scores


def evaluate(study: dict, out, ref: str, device=None, progress: bool = False) -> None:
    """EMA and raw weights of every trained run not yet scored at its steps, same image seeds for all arms."""
    p = study["protocol"]
    for arm in study["arms"]:
        for seed in arm["seeds"]:
            run = run_dir(out, arm["name"], seed)
            dest = run.path / "eval"
            done = read_json(dest / "compare.json")
            if done and done.get("steps_trained") == p["steps"] and done["protocol"]["num_images"] == p["final_n"]:
                continue
            rec = compare([str(run.path), f"{run.path}@raw"], ref, str(dest), labels=["ema", "raw"],
                          num_images=p["final_n"], scheduler=p["scheduler"], steps=p["sample_steps"],
                          batch_size=p["eval_batch"], seed=0, device=device, grid_images=p["grid_images"],
                          progress=progress, bf16=p["eval_bf16"])
            atomic_write_json(dest / "compare.json", {**rec, "steps_trained": p["steps"]})


def read_json(path) -> Optional[dict]:
    import json

    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def apply_settings(study: dict, overrides=(), protocol=()) -> dict:
    """``key=value`` overrides for every arm (``section.key=value``) and for the protocol (``steps=2000``)."""
    for items, dest, known in ((overrides, "overrides", None), (protocol, "protocol", PROTOCOL_DEFAULTS)):
        for item in items:
            key, eq, value = item.partition("=")
            if not eq or (known is not None and key not in known):
                raise ConfigError(f"bad {dest} setting {item!r}: use key=value" +
                                  (f" with key in {sorted(known)}" if known else ""))
            study.setdefault(dest, {})[key] = value if dest == "overrides" else yaml.safe_load(value)
    return study


def run_study(study_file, data, out, device=None, progress: bool = False, overrides=(), protocol=()) -> Path:
    """Train, evaluate and report a study (see the module docstring); returns OUT/report. ``overrides`` and
    ``protocol`` (key=value lists) change the study file's settings for this call (see :func:`apply_settings`)."""
    from .study_report import study_report

    study = apply_settings(load_study(study_file), overrides, protocol)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(Path(out) / "study.yaml", yaml.safe_dump(study, sort_keys=False))
    ref = ensure_ref(study, data, out, device)
    score_floor(study, data, out, ref, device)
    train_all(study, data, out, ref)
    evaluate(study, out, ref, device, progress)
    return study_report([out], study=study)


__all__ = ["load_study", "run_study", "pending", "read_jsonl"]

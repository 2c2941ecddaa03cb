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
file later run alone. With GPUs visible, runs go one per GPU side by side, each evaluated on its GPU as soon as it
has trained; otherwise one after the other. ``--only A0_cog:0 --only A1_qknorm_cog`` limits a call to some runs
(arm name, optionally ``:seed``), e.g. to split a study over machines or days.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

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


def selected(study: dict, only=()) -> List[tuple]:
    """(arm, seed) pairs of the study in its order, limited to ``only`` (``NAME`` or ``NAME:SEED`` items)."""
    pairs = [(a, s) for a in study["arms"] for s in a["seeds"]]
    if not only:
        return pairs
    names = {a["name"] for a in study["arms"]}
    wanted = set()
    for item in only:
        name, _, seed = item.partition(":")
        if name not in names or (seed and not seed.lstrip("-").isdigit()):
            raise ConfigError(f"--only {item!r}: use ARM or ARM:SEED with ARM one of {sorted(names)}")
        wanted.add((name, int(seed) if seed else None))
    return [(a, s) for a, s in pairs if (a["name"], s) in wanted or (a["name"], None) in wanted]


def pending(study: dict, out, only=()) -> List[tuple]:
    """(arm, seed) pairs whose training has not reached the protocol's steps."""
    steps = study["protocol"]["steps"]
    return [(a, s) for a, s in selected(study, only) if not is_trained(run_dir(out, a["name"], s), steps)]


def visible_gpus() -> List[str]:
    import torch

    n = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(n)])[:n]


def _popen(cmd: List[str], log: Path, gpu: Optional[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def _log(out, arm: str, seed: int) -> Path:
    return Path(out) / "logs" / f"{arm}_seed{seed}.log"


def _launch(study: dict, arm: dict, seed: int, data, out, gpu: Optional[str], ref=None) -> subprocess.Popen:
    run = run_dir(out, arm["name"], seed)
    cmd = [sys.executable, "-m", "cogdiff.workflows.train", "--config", study["base"],
           f"train.output_dir={run.path}", *run_overrides(study, arm, seed, data, ref)]
    print(f"[{time.strftime('%H:%M:%S')}] train {arm['name']} seed {seed}{f' on GPU {gpu}' if gpu else ''} "
          f"-> {_log(out, arm['name'], seed)}", flush=True)
    return _popen(cmd, _log(out, arm["name"], seed), gpu)


def _launch_eval(arm: str, seed: int, out, gpu: str) -> subprocess.Popen:
    print(f"[{time.strftime('%H:%M:%S')}] evaluate {arm} seed {seed} on GPU {gpu}", flush=True)
    cmd = [sys.executable, "-m", "cogdiff.study", "evaluate", str(out), arm, str(seed)]
    return _popen(cmd, _log(out, arm, seed), gpu)


def gpu_slots(per_gpu: int = 1) -> List[Optional[str]]:
    """One slot per run that may train at once: each visible GPU ``per_gpu`` times, else one CPU slot (None)."""
    return [g for g in visible_gpus() for _ in range(per_gpu)] or [None]


def train_all(study: dict, data, out, ref: Optional[str] = None, only=(), device=None,
              slots: Optional[List[Optional[str]]] = None, poll: Optional[Callable[[], None]] = None,
              evaluate_each: bool = True) -> None:
    """Train every pending (arm, seed), one per slot at a time (``slots``: GPU ids, None for a CPU process; default
    :func:`gpu_slots`). With ``evaluate_each`` (and ``ref``) a run is scored as soon as it has trained: on a GPU slot
    in a subprocess (``python -m cogdiff.study evaluate``), so the other slots keep training; on a CPU slot here.
    ``poll()`` is called about five times a second (e.g. to draw progress from the run folders)."""
    todo = pending(study, out, only)
    slots = gpu_slots() if slots is None else slots
    jobs: List[Optional[tuple]] = [None] * len(slots)
    failed = []
    while todo or any(jobs):
        for i, (g, job) in enumerate(zip(slots, jobs)):
            if job is not None and job[0].poll() is not None:
                proc, arm, seed, phase = job
                jobs[i] = None
                if proc.returncode != 0:
                    failed.append(f"{phase} {arm} seed {seed} (exit {proc.returncode}, see {_log(out, arm, seed)})")
                elif phase == "train" and evaluate_each and ref is not None and g is not None:
                    jobs[i] = (_launch_eval(arm, seed, out, g), arm, seed, "evaluate")
                elif phase == "train" and evaluate_each and ref is not None:
                    evaluate_run(study, out, arm, seed, ref, device)
            if jobs[i] is None and todo:
                arm, seed = todo.pop(0)
                jobs[i] = (_launch(study, arm, seed, data, out, g, ref), arm["name"], seed, "train")
        if poll is not None:
            poll()
        time.sleep(0.2)
    if failed:
        raise RuntimeError(f"failed: {'; '.join(failed)}")


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


def evaluate_run(study: dict, out, arm: str, seed: int, ref: str, device=None, progress: bool = False) -> bool:
    """Score one trained run's EMA and raw weights (same image seeds for every arm) into ``eval/compare.json``,
    unless already scored at the protocol's steps, number of images and the run's guidance. A class-conditional
    arm is sampled with its own ``sample.guidance_scale`` (the run's config; 1 = no guidance), each image's label
    drawn from its image seed (:func:`cogdiff.sampling.image_labels`).
    Returns whether it scored now."""
    p = study["protocol"]
    run = run_dir(out, arm, seed)
    dest = run.path / "eval"
    done = read_json(dest / "compare.json")
    guidance = run.guidance_scale()  # the arm's, as in its in-training FID
    if (done and done.get("steps_trained") == p["steps"] and done["protocol"]["num_images"] == p["final_n"]
            and done["protocol"].get("guidance_scale", 1.0) == guidance):
        return False
    t0 = time.perf_counter()
    rec = compare([str(run.path), f"{run.path}@raw"], ref, str(dest), labels=["ema", "raw"],
                  num_images=p["final_n"], scheduler=p["scheduler"], steps=p["sample_steps"],
                  batch_size=p["eval_batch"], seed=0, device=device, grid_images=p["grid_images"],
                  progress=progress, bf16=p["eval_bf16"], guidance_scale=guidance)
    atomic_write_json(dest / "compare.json", {**rec, "steps_trained": p["steps"],
                                              "eval_s": round(time.perf_counter() - t0, 1)})
    return True


def evaluate(study: dict, out, ref: str, device=None, progress: bool = False, only=()) -> None:
    """Every trained run (of ``only``, if given) not yet scored at its steps; see :func:`evaluate_run`."""
    for arm, seed in selected(study, only):
        if is_trained(run_dir(out, arm["name"], seed), study["protocol"]["steps"]):
            evaluate_run(study, out, arm["name"], seed, ref, device, progress)


def evaluate_cli(out, arm: str, seed: int, device=None, progress: bool = False) -> bool:
    """``python -m cogdiff.study evaluate OUT ARM SEED``: score one run of a study folder made by ``run``."""
    study = load_study(Path(out) / "study.yaml")
    ref = Path(out) / "stats" / "ref.npz"
    if not ref.is_file():
        raise FileNotFoundError(f"{ref} not found: run python -m cogdiff.study run first (it builds the reference)")
    if not is_trained(run_dir(out, arm, seed), study["protocol"]["steps"]):
        raise ValueError(f"{run_dir(out, arm, seed).path} has not trained {study['protocol']['steps']} steps yet")
    return evaluate_run(study, out, arm, seed, str(ref), device, progress)


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


def run_study(study_file, data, out, device=None, progress: bool = False, overrides=(), protocol=(),
              only=(), per_gpu: int = 1) -> Path:
    """Train, evaluate and report a study (see the module docstring); returns OUT/report. ``overrides`` and
    ``protocol`` (key=value lists) change the study file's settings for this call (see :func:`apply_settings`);
    ``only`` limits it to some runs (see :func:`selected`); ``per_gpu`` runs share each GPU (small models whose
    step leaves the GPU idle part of the time)."""
    from .study_report import study_report

    if per_gpu < 1:
        raise ConfigError(f"--per-gpu must be at least 1, got {per_gpu}")
    study = apply_settings(load_study(study_file), overrides, protocol)
    selected(study, only)  # a bad --only fails before anything runs
    os.makedirs(out, exist_ok=True)
    atomic_write_text(Path(out) / "study.yaml", yaml.safe_dump(study, sort_keys=False))
    ref = ensure_ref(study, data, out, device)
    score_floor(study, data, out, ref, device)
    train_all(study, data, out, ref, only, device, gpu_slots(per_gpu))
    evaluate(study, out, ref, device, progress, only)
    return study_report([out], study=study)


__all__ = ["load_study", "run_study", "pending", "selected", "evaluate_cli", "read_jsonl"]

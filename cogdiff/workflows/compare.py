"""Compare two or more models (e.g. softmax U-ViT vs Cog U-ViC) under one protocol.

    python -m cogdiff.compare runs/softmax runs/cog --ref stats/cifar10_train.npz -n 10000 \\
        --scheduler dpm++ --steps 50 --batch-size 500 --bf16 --out results/compare

Every model samples the same N images with the same per-image seeds and sampler and is scored against
the same reference statistics. Writes OUT/compare.json (numbers + protocol: sampler, steps, N, seeds,
commit, device, versions, reference fingerprint), OUT/compare.md, OUT/grid.png (one row per model,
same seeds per column; the raw images in OUT/grid_images.npz) and, for training runs with fid.jsonl (given
as the run folder or its pipeline/ folder), OUT/fid_vs_step.png. Prints the table. Without full Inception
weights the Inception Score is recorded as null, with the reason, and one line says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..analysis.plots import plot_curves
from ..analysis.runs import series
from ..cli import run_cli
from ..grids import labeled_rows, save_png
from ..io import atomic_save_with, atomic_savez, atomic_write_json, atomic_write_text
from ..metrics import FIDEvaluator
from ..metrics.inception import ALLOW_UNVERIFIED_FLAG
from ..rundir import PIPELINE_SUBDIR, RunDir, git_commit, package_versions, resolve_pipeline_dir
from ..sampling import SCHEDULERS, check_pipeline, load_pipeline, pipeline_batches, sample_batch
from ..schedulers import scheduler_name

SEED_RULE = "image i uses torch.Generator().manual_seed(cogdiff.sampling.image_seed(seed, i)) on the CPU"


def device_name(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table_markdown(rows: List[dict]) -> str:
    cols = ["model", "attention", "fid", "kid_mean", "kid_std", "inception_score", "num_images", "sample_s"]
    has_is = any(r.get("inception_score") is not None for r in rows)
    cols = [c for c in cols if c != "inception_score" or has_is]
    digits = {"kid_mean": 5, "kid_std": 5, "sample_s": 1}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits.get(c, 3)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def save_grid(rows: Dict[str, np.ndarray], path: str) -> str:
    """One row per model (uint8 NHWC, same seeds per column), model name on the left; written atomically."""
    return save_png(labeled_rows(rows), path)


def plot_fid_vs_step(runs: Dict[str, List[dict]], path: str) -> Optional[str]:
    """FID (and KID if logged) vs step from fid.jsonl rows; None if no run logged FID."""
    panels = {"fid": {k: series(v, "fid") for k, v in runs.items() if series(v, "fid")[0]}}
    if not panels["fid"]:
        return None
    kid = {k: series(v, "kid_mean") for k, v in runs.items() if series(v, "kid_mean")[0]}
    if kid:
        panels["kid_mean"] = kid
    atomic_save_with(path, lambda tmp: plot_curves(panels, tmp, logy=("fid",)), suffix=".png")
    return path


def split_variant(spec: str) -> tuple:
    """``"runs/cog@raw"`` -> ``("runs/cog", "raw")``; no ``@`` (or a path that exists as given) -> variant None."""
    path, at, variant = spec.rpartition("@")
    if not at or os.path.exists(spec):
        return spec, None
    return path, variant


def default_label(spec: str) -> str:
    path, variant = split_variant(spec)
    name = os.path.basename(os.path.normpath(path))
    if name == PIPELINE_SUBDIR:  # <run>/pipeline -> the run's name
        name = os.path.basename(os.path.dirname(os.path.normpath(path)))
    return name + (f"@{variant}" if variant else "")


def data_of(spec: str) -> tuple:
    """(data kind or None, sample size, channels) of a run or pipeline folder: what its images look like."""
    path = split_variant(spec)[0]
    cfg = json.loads((Path(resolve_pipeline_dir(path)) / "transformer" / "config.json").read_text())
    run = RunDir.of(path)
    saved = run.config() if run is not None else None
    return ((saved or {}).get("data") or {}).get("kind"), cfg.get("sample_size"), cfg.get("in_channels")


def check_same_data(models: List[str]) -> None:
    """Refuse models trained on different data (kind / image size / channels): their FIDs are not comparable."""
    seen = {spec: data_of(spec) for spec in models}
    if len(set(seen.values())) > 1:
        found = "; ".join(f"{s}: kind={k}, size={n}, channels={c}" for s, (k, n, c) in seen.items())
        raise ValueError(f"the models were trained on different data ({found}); compare models of one data set, "
                         "or pass --allow-mixed-data")


def check_models(models: List[str], labels: Optional[List[str]], allow_mixed_data: bool) -> List[str]:
    """Refuse bad model lists before any sampling; returns the labels (default: the folder names)."""
    if len(models) < 2:
        raise ValueError(f"compare needs two or more models, got {len(models)}")
    if len(set(models)) != len(models):
        raise ValueError(f"compare got the same model twice ({' '.join(models)}); pass two or more different models")
    labels = labels or [default_label(m) for m in models]
    if len(labels) != len(models) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels must give {len(models)} distinct names, got {labels}")
    for spec in models:
        check_pipeline(*split_variant(spec))
    if not allow_mixed_data:
        check_same_data(models)
    return labels


def score_model(label: str, spec: str, ev: FIDEvaluator, device, scheduler: str, num_images: int, batch_size: int,
                steps: int, seed: int, guidance_scale: float, bf16: bool, grid_images: int, progress: bool,
                overlap: bool = False) -> tuple:
    """Sample and score one model: (its result row, its grid images, its run's fid.jsonl rows). ``overlap``: see
    :meth:`~cogdiff.metrics.FIDEvaluator.score_images` (``sample_s`` then overlaps in time with Inception)."""
    model, variant = split_variant(spec)
    pipe = load_pipeline(model, device=device, scheduler=scheduler, variant=variant)
    t0 = time.perf_counter()
    batches = pipeline_batches(pipe, num_images, batch_size, steps, seed, guidance_scale=guidance_scale, bf16=bf16)
    scores = ev.score_images(batches, progress=progress, total=num_images, overlap=overlap)
    elapsed = time.perf_counter() - t0
    grid = sample_batch(pipe, range(min(grid_images, num_images)), steps, seed, guidance_scale, bf16)
    run = RunDir.of(model)  # a run folder or its pipeline/ folder: the run's fid.jsonl
    run_fid = run.fid() if run else []
    row = dict(
        model=label,
        path=os.path.abspath(model),
        weights=variant or "default (EMA for training exports)",
        attention=pipe.transformer.config.attention_type,
        attention_types=pipe.transformer.attention_types(),
        params=sum(p.numel() for p in pipe.transformer.parameters()),
        run_dir=os.path.abspath(os.fspath(run.path)) if run else None,
        **scores,
        sample_s=round(ev.last_timings.get("source_s", 0.0), 3),
        overlap=bool(ev.last_timings.get("overlap", False)),
        total_s=round(elapsed, 3),
        last_logged_fid=run_fid[-1] if run_fid else None,
    )
    return row, grid, run_fid


def protocol_record(ev: FIDEvaluator, ref: str, scheduler: str, steps: int, num_images: int, seed: int,
                    guidance_scale: float, bf16: bool, batch_size: int) -> dict:
    """The settings every model was sampled and scored under (compare.json's ``protocol``)."""
    return dict(sampler=scheduler, steps=steps, num_images=num_images, seed=seed, image_seeds=SEED_RULE,
                guidance_scale=guidance_scale, bf16=bf16, batch_size=batch_size,
                ref_stats=os.path.abspath(ref), ref_fingerprint=ev.ref.fingerprint, ref_count=ev.ref.count,
                ref_source=ev.ref.source, ref_color=ev.ref.color, feature_extractor=ev.extractor.extractor_id,
                kid_subset_size=ev.last_kid_subset_size, kid_subsets=ev.kid_subsets,
                inception_score_note=ev.inception_score_note)


def compare_markdown(record: dict, ref: str) -> str:
    """compare.md: a title line with the protocol and the reference, then the table."""
    p = record["protocol"]
    return (
        f"# Comparison: FID-{p['num_images']} ({p['sampler']}, {p['steps']} steps, guidance {p['guidance_scale']}, "
        f"seed {p['seed']}, {'bf16' if p['bf16'] else 'fp32'})\n\nReference: `{ref}` ({p['ref_count']} images, "
        f"fingerprint {p['ref_fingerprint'][:16]}); "
        f"commit {record['commit']}; {record['device']}.\n\n" + table_markdown(record["results"])
    )


def write_outputs(record: dict, ref: str, grids: Dict[str, np.ndarray], curves: Dict[str, List[dict]],
                  out: str) -> None:
    """compare.json, compare.md, grid.png, grid_images.npz and (when runs logged FID) fid_vs_step.png in ``out``."""
    files = dict(json=os.path.join(out, "compare.json"), markdown=os.path.join(out, "compare.md"),
                 grid=save_grid(grids, os.path.join(out, "grid.png")), grid_images=os.path.join(out, "grid_images.npz"))
    atomic_savez(files["grid_images"], **grids)
    plot = plot_fid_vs_step(curves, os.path.join(out, "fid_vs_step.png")) if curves else None
    if plot:
        files["fid_vs_step"] = plot
    record["files"] = files
    atomic_write_text(files["markdown"], compare_markdown(record, ref))
    atomic_write_json(files["json"], record)


def compare(
    models: List[str],
    ref: str,
    out: str,
    labels: Optional[List[str]] = None,
    num_images: int = 10_000,
    scheduler: str = "dpm++",
    steps: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    guidance_scale: float = 1.0,
    bf16: bool = False,
    device=None,
    weights: Optional[str] = None,
    grid_images: int = 8,
    progress: bool = True,
    command: Optional[str] = None,
    allow_unverified_weights: bool = False,
    allow_mixed_data: bool = False,
    overlap: bool = False,
) -> dict:
    """Sample, score and report (see the module docstring). Returns the JSON record."""
    labels = check_models(models, labels, allow_mixed_data)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(out, exist_ok=True)
    ev = FIDEvaluator(ref, device=device, weights=weights, allow_unverified=allow_unverified_weights)
    if ev.inception_score_note:
        print(f"Inception Score: not computed — {ev.inception_score_note}", file=sys.stderr)
    rows, grids, curves = [], {}, {}
    for label, spec in zip(labels, models):
        row, grids[label], run_fid = score_model(label, spec, ev, device, scheduler, num_images, batch_size, steps,
                                                 seed, guidance_scale, bf16, grid_images, progress, overlap)
        rows.append(row)
        if run_fid:
            curves[label] = run_fid
    record = dict(
        protocol=protocol_record(ev, ref, scheduler, steps, num_images, seed, guidance_scale, bf16, batch_size),
        commit=git_commit(), device=device_name(device), versions=package_versions(),
        command=command,
        results=rows,
    )
    write_outputs(record, ref, grids, curves, out)
    print(table_markdown(rows), end="")
    return record


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cogdiff.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("models", nargs="+", help="two or more pipeline folders or training run folders; PATH@raw takes "
                    "the raw (non-EMA) weights variant")
    ap.add_argument("--ref", required=True, help="reference statistics (python -m cogdiff.metrics ref ...)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--labels", default=None, help="comma-separated names (default: folder names)")
    ap.add_argument("-n", "--num-images", type=int, default=10_000)
    ap.add_argument("--scheduler", default="dpm++", type=scheduler_name, choices=sorted(SCHEDULERS),
                    help="sampler (diffusers-style aliases such as dpmsolver++ work too)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance-scale", type=float, default=1.0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--weights", default=None, help="Inception weights (full weights with logits add the Inception Score)"
    )
    ap.add_argument(ALLOW_UNVERIFIED_FLAG, action="store_true",
                    help="load a weights file whose sha256 is not a known inception-2015-12-05 copy (it can run code)")
    ap.add_argument("--grid-images", type=int, default=8, help="images per model in grid.png")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--overlap", action="store_true",
                    help="compute the Inception features of one batch while the next is sampled (same images; TF32 "
                    "stays off during sampling too, so fp32 sampling can differ slightly)")
    ap.add_argument("--allow-mixed-data", action="store_true",
                    help="compare models trained on different data (kind, image size or channels) anyway")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(["python -m cogdiff.compare", *(sys.argv[1:] if argv is None else argv)])
    return run_cli(lambda: compare(
        args.models, args.ref, args.out, args.labels.split(",") if args.labels else None, args.num_images,
        args.scheduler, args.steps, args.batch_size, args.seed, args.guidance_scale, args.bf16, args.device,
        args.weights, args.grid_images, progress=not args.no_progress, command=command,
        allow_unverified_weights=args.allow_unverified_weights, allow_mixed_data=args.allow_mixed_data,
        overlap=args.overlap),
        (FileNotFoundError, ValueError, RuntimeError), warnings_one_line=True)


if __name__ == "__main__":
    sys.exit(main())

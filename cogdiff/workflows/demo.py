"""The README's main job: the two-arm study ``configs/studies/demo.yaml`` (a small softmax U-ViT vs the same model
with Cog attention) on the embedded Fashion-MNIST data, trained side by side (one process per core) with live
progress, then both models sampled with the same seeds and scored against the same reference statistics.

    python -m cogdiff.demo                        # Fashion-MNIST, CPU, about 6 minutes on 2 cores
    python -m cogdiff.demo --data synthetic       # generated shapes: no dataset package needed
    python -m cogdiff.demo --steps 300 --num-images 100 --out outputs/quick

Writes OUT/samples.png (an 8x8 grid per model, each 28x28 image enlarged 4x, the same seeds in the same cells;
one file per model beside it), OUT/curves.png (training loss vs step and the final KID/FID), OUT/demo.md (the
table), OUT/demo.json (numbers, stage times, wall time, commit) and the study's folders (runs/, logs/, stats/,
compare/). The reference statistics are cached in the user's cache, keyed by the images' fingerprint, so later
runs skip that Inception pass; re-running continues interrupted training and skips finished runs. The same
study runs without the display through the generic runner: ``python -m cogdiff.study run configs/studies/demo.yaml
--out OUT``.

Tiny CPU models trained for minutes demonstrate the workflow; their numbers say nothing about the paper's claim.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml

from ..data import FASHION_MNIST_DIR
from ..io import atomic_write_json, atomic_write_text
from ..rundir import RunDir
from . import study as runner

STUDY = Path(__file__).resolve().parents[2] / "configs" / "studies" / "demo.yaml"
GRID = 8  # 8 x 8 samples per model
SCALE = 4  # each image enlarged 4x (nearest neighbour)
NOISE_CORRELATION = 0.3  # below this neighbour correlation a sample counts as noise-like (see neighbour_correlation)
DATA_CLASSES = {"fashion_mnist": 10, "synthetic": 4}
SAY_EVERY_S = 15.0  # progress lines when the output is not a terminal


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- are the samples images?


def neighbour_correlation(images: np.ndarray) -> np.ndarray:
    """Per image (uint8 NHWC, channels averaged): the correlation of every pixel with its right and lower neighbours.
    Garments and shapes score about 0.8-1, i.i.d. noise about 0, a constant image 0."""
    x = np.asarray(images, dtype=np.float64).mean(axis=-1)
    n = len(x)
    a = np.concatenate([x[:, :, :-1].reshape(n, -1), x[:, :-1, :].reshape(n, -1)], axis=1)
    b = np.concatenate([x[:, :, 1:].reshape(n, -1), x[:, 1:, :].reshape(n, -1)], axis=1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-12), 0.0)


def pixel_std(images: np.ndarray) -> np.ndarray:
    """Per-image standard deviation of the pixels in [0, 1]."""
    x = np.asarray(images, dtype=np.float64) / 255.0
    return x.reshape(len(x), -1).std(axis=1)


def sample_check(images: np.ndarray, real: np.ndarray) -> dict:
    """How image-like the samples are: how many look like noise (neighbour correlation below NOISE_CORRELATION) and
    their median neighbour correlation and pixel std beside the real images'."""
    corr, real_corr = neighbour_correlation(images), neighbour_correlation(real)
    return dict(num=len(images), noise_like=int((corr < NOISE_CORRELATION).sum()),
                median_corr=float(np.median(corr)), real_median_corr=float(np.median(real_corr)),
                median_std=float(np.median(pixel_std(images))), real_median_std=float(np.median(pixel_std(real))))


# ----------------------------------------------------------------------------- reference statistics


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cogdiff"


def reference_stats(images: np.ndarray, source: str, dest: Path, cache: Optional[Path], device=None) -> str:
    """``dest`` (the study's stats/ref.npz) for ``images`` (uint8 NHWC, read from ``source``): kept if it was built
    from the same images (fingerprint) and feature extractor, else copied from ``cache`` (a folder; None = no cache)
    when a file there was, else computed with a progress bar (and cached). Returns where the statistics came from."""
    from ..metrics import InceptionFeatures
    from ..metrics.stats import RefStats, compute_ref_stats, fingerprint_images

    fp = fingerprint_images(images)
    extractor = InceptionFeatures(device=device)
    key = hashlib.sha256(extractor.extractor_id.encode()).hexdigest()[:8]
    cached = cache / f"ref_{fp[:16]}_{key}.npz" if cache else None
    for path, origin in ((dest, "kept from an earlier run"), (cached, f"from the cache {cached}")):
        if path is not None and path.is_file():
            try:
                stats = RefStats.load(str(path), extractor_id=extractor.extractor_id, fingerprint=fp)
            except ValueError:  # other images or another extractor: rebuild
                continue
            if path != dest:
                stats.save(str(dest))
            return origin
    say(f"reference statistics: Inception features of {len(images)} real images (cached for later runs)")
    batches = (images[i : i + 50] for i in range(0, len(images), 50))
    stats = compute_ref_stats(batches, extractor, source, progress=True, total=len(images))
    stats.save(str(dest))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        stats.save(str(cached))
    return "computed" + (f" and cached in {cached}" if cached else "")


def dataset_size(kind: str) -> int:
    from ..config import data_config_from_spec
    from ..data import build_dataset

    return build_dataset(data_config_from_spec({"kind": kind, "split": "train"}), "cpu").num_examples


# ----------------------------------------------------------------------------- live training progress


class TrainProgress:
    """One bar per run, read from its metrics.jsonl (step, loss) whenever called (at most once a second); on a
    non-terminal a plain line every SAY_EVERY_S seconds instead."""

    def __init__(self, runs: Dict[str, RunDir], steps: int):
        from tqdm.auto import tqdm

        self.runs, self.steps, self.tty = runs, steps, sys.stderr.isatty()
        self.bars = {name: tqdm(total=steps, desc=f"train {name:<8}", position=i, unit="step", leave=True,
                                disable=not self.tty, dynamic_ncols=True) for i, name in enumerate(runs)}
        self.state = {name: (0, None) for name in runs}
        self.t_read = self.t_say = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.t_read < 1.0:
            return
        self.t_read = now
        for name, run in self.runs.items():
            rows = run.metrics()
            if rows:
                self.state[name] = (rows[-1]["step"], rows[-1].get("loss"))
            step, loss = self.state[name]
            bar = self.bars[name]
            bar.update(step - bar.n)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()
        if not self.tty and now - self.t_say >= SAY_EVERY_S:
            self.t_say = now
            say("training: " + "; ".join(f"{n} step {s}/{self.steps}" + (f" loss {v:.4f}" if v else "")
                                         for n, (s, v) in self.state.items()))

    def close(self) -> None:
        self.t_read = 0.0
        self()
        for bar in self.bars.values():
            bar.close()


# ----------------------------------------------------------------------------- report


def write_grids(grid_images: Dict[str, np.ndarray], out: Path) -> Dict[str, str]:
    """OUT/samples_<model>.png (8x8, 4x nearest) and OUT/samples.png (the models side by side, same seeds per
    cell)."""
    from ..grids import image_grid, save_png, side_by_side

    grids = {name: image_grid(images[: GRID * GRID], nrow=GRID, padding=2, scale=SCALE)
             for name, images in grid_images.items()}
    files = {name: save_png(g, out / f"samples_{name}.png") for name, g in grids.items()}
    files["all"] = save_png(side_by_side(grids, label_h=18, gap=16), out / "samples.png")
    return files


def plot_summary(losses: Dict[str, tuple], rows: List[dict], n_ref: int, path: Path, title: str) -> str:
    """Training loss vs step (log scale) and the final KID (with its sd) and FID per model, with a title."""
    from ..analysis.plots import new_figure, save_figure

    fig = new_figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    for name, (x, y) in losses.items():
        ax.plot(x, y, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="training loss (diffusion MSE, log scale)", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    names = [r["model"] for r in rows]
    ax.bar(names, [r["kid_mean"] for r in rows], yerr=[r["kid_std"] for r in rows], capsize=6, color=["C0", "C1"])
    for i, r in enumerate(rows):
        ax.annotate(f"KID {r['kid_mean']:.4f}\nFID {r['fid']:.1f}", (i, r["kid_mean"]), ha="center", va="bottom",
                    xytext=(0, 8), textcoords="offset points")
    ax.set(ylabel=f"KID ({rows[0]['num_images']} samples vs {n_ref} real)", title="final scores (lower is better)")
    ax.margins(y=0.3)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def results_markdown(rows: List[dict], checks: Dict[str, dict], info: dict) -> str:
    """The table: KID first (unbiased at small N) with its N, FID beside it, the sample check."""
    n, n_ref = rows[0]["num_images"], info["ref_count"]
    lines = [f"{info['steps']} training steps per model (batch {info['batch_size']}); {n} samples each "
             f"({info['sampler']}, {info['sample_steps']} steps, guidance {info['guidance']}, the same seeds) against "
             f"{n_ref} real images.", "",
             f"| model | attention | KID-{n} (± sd) | FID-{n} | noise-like samples | params |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        c = checks[r["model"]]
        lines.append(f"| {r['model']} | {r['attention']} | {r['kid_mean']:.4f} ± {r['kid_std']:.4f} | {r['fid']:.1f} | "
                     f"{c['noise_like']} of {c['num']} | {r['params']:,} |")
    return "\n".join(lines) + "\n"


def loss_curves(runs: Dict[str, RunDir]) -> Dict[str, tuple]:
    from ..analysis.runs import series

    return {name: series(run.metrics(), "loss") for name, run in runs.items()}


# ----------------------------------------------------------------------------- the job


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cogdiff.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion_mnist", choices=sorted(DATA_CLASSES),
                    help="fashion_mnist (Debian package dataset-fashion-mnist) or synthetic (generated shapes)")
    ap.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    ap.add_argument("--study", default=str(STUDY), help="the two-arm study file (default: configs/studies/demo.yaml)")
    ap.add_argument("--steps", type=int, help="training steps per model (default: the study's)")
    ap.add_argument("--num-images", type=int, help="samples per model for KID/FID (default: the study's final_n)")
    ap.add_argument("--ref-images", type=int, help="real images in the reference statistics (default: the study's "
                    "limit; at most the data's size)")
    ap.add_argument("--sample-steps", type=int, help="DPM-Solver++ steps (default: the study's)")
    ap.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1),
                    help="training processes side by side (default: one per core, at most 2)")
    ap.add_argument("--device", default=None, help="evaluation device (default: cuda if available, else cpu)")
    ap.add_argument("--cache-dir", default=None,
                    help=f"reference statistics cache (default: {user_cache_dir() / 'ref_stats'}; 'none': no cache)")
    ap.add_argument("overrides", nargs="*", help="section.key=value for both models, e.g. train.batch_size=32")
    return ap


def load_demo_study(args) -> dict:
    """The study file with the command line's data, budget and overrides applied; ``ref`` names the real images."""
    from ..sources import parse_dataset_spec

    protocol = [f"{k}={v}" for k, v in (("steps", args.steps), ("final_n", args.num_images),
                                         ("sample_steps", args.sample_steps)) if v is not None]
    overrides = [f"data.kind={args.data}", f"model.num_classes={DATA_CLASSES[args.data]}", *args.overrides]
    study = runner.apply_settings(runner.load_study(args.study), overrides, protocol)
    spec = {**parse_dataset_spec(study["ref"]), "kind": args.data, "split": "train"}
    size = dataset_size(args.data)
    wanted = args.ref_images or int(spec.get("limit") or size)
    if wanted > size:
        say(f"--ref-images {wanted} is more than the {size} {args.data} training images: using {size}")
    spec["limit"] = min(wanted, size)
    study["ref"] = "dataset:" + ",".join(f"{k}={v}" for k, v in spec.items())
    return study


def check_inputs(args) -> None:
    if args.data == "fashion_mnist" and not Path(FASHION_MNIST_DIR).is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run 'sudo apt-get install "
                                "dataset-fashion-mnist' (scripts/setup.sh does it as root) or pass --data synthetic")
    for name in ("steps", "num_images", "ref_images", "sample_steps", "parallel"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "num_images" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be at least {2 if name == 'num_images' else 1}, "
                             f"got {value}")


def train(study: dict, out: Path, parallel: int) -> Dict[str, RunDir]:
    """Train both arms side by side (one process per core), a bar per model; returns arm -> run folder."""
    runs = {a["name"]: runner.run_dir(out, a["name"], s) for a in study["arms"] for s in a["seeds"]}
    todo = runner.pending(study, out)
    say(f"training {', '.join(a['name'] for a, _ in todo) or 'nothing (all runs finished earlier)'}: "
        f"{study['protocol']['steps']} steps each, {parallel} side by side (logs: {out / 'logs'})")
    progress = TrainProgress(runs, study["protocol"]["steps"])
    try:
        runner.train_all(study, None, out, slots=[None] * parallel, poll=progress, evaluate_each=False)
    finally:
        progress.close()
    return runs


def evaluate(study: dict, runs: Dict[str, RunDir], ref: str, out: Path, device) -> dict:
    """Both models' EMA weights: the same samples (seeds, sampler, N) scored against the same reference."""
    from .compare import compare

    p, guidance = study["protocol"], guidance_of(runs)
    say(f"sampling {p['final_n']} images per model ({p['scheduler']}, {p['sample_steps']} steps, guidance {guidance}) "
        f"and scoring them (Inception features); then {GRID * GRID} per model for the grids")
    return compare([str(r.path) for r in runs.values()], ref, str(out / "compare"), labels=list(runs),
                   num_images=p["final_n"], scheduler=p["scheduler"], steps=p["sample_steps"],
                   batch_size=p["eval_batch"], seed=0, guidance_scale=guidance, device=device,
                   grid_images=GRID * GRID, progress=True, command="python -m cogdiff.demo " + " ".join(sys.argv[1:]))


def guidance_of(runs: Dict[str, RunDir]) -> float:
    """The classifier-free guidance scale of the runs' configs (``sample.guidance_scale``; the same for all)."""
    scales = {r.guidance_scale() for r in runs.values()}
    if len(scales) != 1:
        raise ValueError(f"the runs were trained with different sample.guidance_scale {sorted(scales)}; use one")
    return scales.pop()


def report(rec: dict, runs: Dict[str, RunDir], real: np.ndarray, info: dict, out: Path) -> dict:
    """Grids, plot, table and demo.json; returns the demo record."""
    grid_images = dict(np.load(rec["files"]["grid_images"]))
    checks = {name: sample_check(images, real) for name, images in grid_images.items()}
    files = {f"samples_{k}" if k != "all" else "samples": v for k, v in write_grids(grid_images, out).items()}
    rows = rec["results"]
    title = (f"softmax vs Cog U-ViT on {info['data']}, {info['steps']} steps each: KID/FID of {rows[0]['num_images']} "
             f"samples vs {info['ref_count']} real images")
    files["curves"] = plot_summary(loss_curves(runs), rows, info["ref_count"], out / "curves.png", title)
    table = results_markdown(rows, checks, info)
    files.update(markdown=str(out / "demo.md"), json=str(out / "demo.json"), compare=rec["files"]["json"])
    results = {r["model"]: dict(attention=r["attention"], kid_mean=r["kid_mean"], kid_std=r["kid_std"], fid=r["fid"],
                                num_images=r["num_images"], params=r["params"], sample_check=checks[r["model"]],
                                final_loss=(runs[r["model"]].metrics() or [{}])[-1].get("loss"))
               for r in rows}
    demo = dict(info, commit=rec["commit"], device=rec["device"], versions=rec["versions"], results=results,
                files=files)
    atomic_write_text(out / "demo.md", f"# {title}\n\n{table}")
    atomic_write_json(out / "demo.json", demo)
    print(table, end="")
    return demo


def cache_dir(arg: Optional[str]) -> Optional[Path]:
    if arg == "none":
        return None
    return Path(arg) if arg else user_cache_dir() / "ref_stats"


def run_demo(args) -> dict:
    """Reference statistics, training, evaluation, report (see the module docstring); returns the demo record."""
    from ..sources import load_source

    t0, stage = time.perf_counter(), {}

    def lap(name: str) -> None:
        stage[name] = round(time.perf_counter() - t0 - sum(stage.values()), 1)

    check_inputs(args)
    out = Path(args.out).resolve()
    study = load_demo_study(args)
    (out / "stats").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", yaml.safe_dump(study, sort_keys=False))
    say(f"demo: softmax vs Cog U-ViT on {args.data} ({study['base']}), study {args.study} -> {out}")
    real, ref = load_source(study["ref"]), out / "stats" / "ref.npz"
    origin = reference_stats(real, study["ref"], ref, cache_dir(args.cache_dir), device=args.device)
    say(f"reference statistics of {len(real)} real images: {origin}")
    lap("reference_s")
    runs = train(study, out, args.parallel)
    lap("train_s")
    rec = evaluate(study, runs, str(ref), out, args.device)
    lap("evaluate_s")
    p = study["protocol"]
    info = dict(data=args.data, steps=p["steps"], batch_size=p["batch_size"], sampler=p["scheduler"],
                sample_steps=p["sample_steps"], guidance=rec["protocol"]["guidance_scale"], ref_count=len(real),
                ref_origin=origin, study=args.study)
    demo = report(rec, runs, real, info, out)
    lap("report_s")
    demo.update(stages=stage, wall_s=round(time.perf_counter() - t0, 1))
    atomic_write_json(out / "demo.json", demo)
    return demo


def main(argv=None) -> int:
    from ..cli import run_cli

    args = build_parser().parse_args(argv)

    def body():
        demo = run_demo(args)
        n, out = demo["results"]["softmax"]["num_images"], Path(args.out)
        noisy = sum(r["sample_check"]["noise_like"] for r in demo["results"].values())
        say(f"demo: done in {demo['wall_s']:.0f} s. Everything is in {out}/: samples.png (8x8 per model, the same "
            f"seeds in the same cells; {noisy} noise-like samples), curves.png, demo.md, demo.json. KID-{n} "
            f"and FID-{n} (against {demo['ref_count']} real images; lower is better) rank these two tiny models "
            "on one seed after minutes of CPU training: they show the workflow works, not whether Cog attention "
            "beats softmax (that needs configs/studies/cifar10_2arm.yaml on GPUs).")

    return run_cli(body, (ValueError, OSError, RuntimeError), warnings_one_line=True)


if __name__ == "__main__":
    sys.exit(main())

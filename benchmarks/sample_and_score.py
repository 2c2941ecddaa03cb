"""Time sampling N CIFAR-10-sized images from U-ViT-S/2 and scoring them (FID/KID) against cached statistics.

    COGDIFF_FID_WEIGHTS=/path/default_1.pt python benchmarks/sample_and_score.py \\
        --ref /tmp/ref_cifar10_test.npz --ref-source /tmp/cifar10/test -n 10000 --batch-size 2000 --bf16 \\
        --out benchmarks/results/sample_and_score_h200.md

The model is randomly initialised (uvit("S/2"), 44.3M parameters; weights do not change the cost), so
the FID it prints measures nothing. Reference statistics are built from ``--ref-source`` first if
``--ref`` does not exist (timed apart: they are a one-off cache). A short warm-up (one batch of 8, two
steps, and the Inception network) runs first and is reported apart from the timed run. ``--overlap`` (default: on
with CUDA) computes the Inception features of one batch while the next is sampled
(``FIDEvaluator.score_images(overlap=True)``); the sampling and Inception rows then overlap in time and the total
is the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import diffusers
import torch
import torchmetrics
from diffusers import DDPMScheduler

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # this checkout's cogdiff
from cogdiff import UViTPipeline, uvit  # noqa: E402
from cogdiff.io import atomic_write_text  # noqa: E402
from cogdiff.metrics import FIDEvaluator, InceptionFeatures  # noqa: E402
from cogdiff.metrics.overlap import overlapped  # noqa: E402
from cogdiff.metrics.stats import ensure_ref_stats  # noqa: E402
from cogdiff.rundir import git_commit  # noqa: E402
from cogdiff.sampling import pipeline_batches, sample_batch, use_cuda_graphs, with_scheduler  # noqa: E402
from cogdiff.sources import iter_source  # noqa: E402
from cogdiff.workflows.compare import device_name  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="reference statistics (.npz); built from --ref-source if missing")
    ap.add_argument("--ref-source", default=None, help="image folder / .npz / dataset:... for building --ref")
    ap.add_argument("-n", "--num-images", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scheduler", default="dpm++")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--preset", default="S/2", help="uvit preset (S/2 = U-ViT-S/2)")
    ap.add_argument("--attention", default="softmax", choices=["softmax", "cog"])
    ap.add_argument("--inception-batch-size", type=int, default=500)
    ap.add_argument("--cuda-graphs", default="auto", choices=["auto", "true", "false"],
                    help="denoiser under CUDA graphs (torch.compile mode=reduce-overhead); auto = on CUDA")
    ap.add_argument("--overlap", default="auto", choices=["auto", "on", "off"],
                    help="Inception features of batch k while batch k+1 is sampled; auto = on with CUDA")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write the Markdown table here (atomically)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument(
        "--commit", default=None, help="commit to record where the copy has no .git (default: git rev-parse)"
    )
    return ap


def build_ref(args, device) -> float:
    """Build the reference statistics from ``--ref-source``; returns the seconds it took."""
    t0 = time.perf_counter()
    extractor = InceptionFeatures(device=device)
    ensure_ref_stats(
        args.ref, lambda: iter_source(args.ref_source, args.inception_batch_size), extractor, source=args.ref_source
    )
    return time.perf_counter() - t0


def random_pipeline(args, device) -> UViTPipeline:
    """A randomly initialised U-ViT (seed 0) in a pipeline with the chosen sampler, progress bar off."""
    torch.manual_seed(0)
    model = uvit(args.preset, attention_type=args.attention).to(device).eval()
    pipe = with_scheduler(
        UViTPipeline(model, DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")), args.scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_overlap(choice: str, device) -> bool:
    """``--overlap``: auto = on with CUDA (on CPU the two stages share the same cores)."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def warm_up(pipe, ev: FIDEvaluator, args, device) -> None:
    """Two sampling steps (at the timed batch size under CUDA graphs, which compile per shape) and one
    Inception call (with overlap, also one on a worker thread, as in the timed run), so that the timed run
    pays no one-off costs."""
    warm_n = args.batch_size if use_cuda_graphs(args.cuda_graphs, device) else 8
    sample_batch(pipe, range(warm_n), 2, seed=123, bf16=args.bf16, cuda_graphs=args.cuda_graphs)
    ev.features(torch.zeros(8, 32, 32, 3, dtype=torch.uint8))
    if use_overlap(args.overlap, device):
        overlapped([torch.zeros(8, 32, 32, 3, dtype=torch.uint8)], ev.features, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_run(pipe, ev: FIDEvaluator, args) -> tuple:
    """Sample and score N images; returns (scores, seconds)."""
    t0 = time.perf_counter()
    scores = ev.score_images(
        pipeline_batches(pipe, args.num_images, args.batch_size, args.steps, seed=0, bf16=args.bf16,
                         cuda_graphs=args.cuda_graphs),
        overlap=use_overlap(args.overlap, ev.device),
    )
    return scores, time.perf_counter() - t0


def make_record(args, argv, device, ev: FIDEvaluator, scores: dict, total: float, t_warm: float, t_ref) -> dict:
    """Every number of the run, its settings and provenance (the --json file)."""
    tm = ev.last_timings
    return dict(
        num_images=args.num_images,
        batch_size=args.batch_size,
        steps=args.steps,
        scheduler=args.scheduler,
        bf16=args.bf16,
        cuda_graphs=use_cuda_graphs(args.cuda_graphs, device),
        overlap=tm["overlap"],
        model=f"uvit('{args.preset}', attention_type='{args.attention}') random init",
        sampling_s=tm["source_s"],
        inception_s=tm["inception_s"],
        metrics_s=tm["metrics_s"],
        batches_s=tm["batches_s"],
        wait_for_inception_s=tm.get("wait_for_inception_s"),
        wait_for_source_s=tm.get("wait_for_source_s"),
        total_s=total,
        warmup_s=t_warm,
        ref_build_s=t_ref,
        images_per_s=args.num_images / total,
        peak_gpu_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        scores=scores,
        ref_count=ev.ref.count,
        ref_source=ev.ref.source,
        ref_fingerprint=ev.ref.fingerprint,
        device=device_name(device),
        commit=args.commit or git_commit(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        torchmetrics=torchmetrics.__version__,
        command="python benchmarks/sample_and_score.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )


def _s(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def stage_rows(r: dict) -> list:
    """The table rows of the sampling and Inception stages: one after the other, or overlapped (then the two
    stages' seconds overlap in time and the wait rows say which side held the other up)."""
    n = r["num_images"]
    if not r.get("overlap"):
        return [f"| sampling ({n} images) | {_s(r['sampling_s'])} |",
                f"| Inception features | {_s(r['inception_s'])} |"]
    return [f"| sampling ({n} images), overlapped with Inception | {_s(r['sampling_s'])} |",
            f"| Inception features, overlapped with sampling (worker thread) | {_s(r['inception_s'])} |",
            f"| sampling + Inception, wall time | {_s(r['batches_s'])} |",
            f"| of which the sampler waited for Inception | {_s(r['wait_for_inception_s'])} |",
            f"| of which Inception waited for samples (first batch included) | {_s(r['wait_for_source_s'])} |"]


def markdown(r: dict, inception_batch_size: int) -> str:
    """The results page: settings, the seconds per stage, throughput and the (meaningless) scores."""
    scores = r["scores"]
    order = "of each batch while the next is sampled" if r.get("overlap") else "of each batch after its sampling"
    return "\n".join(
        [
            f"# Sample + score benchmark: {r['num_images']} images, {r['model']}",
            "",
            f"{r['scheduler']} {r['steps']} steps, {'bf16 autocast' if r['bf16'] else 'fp32'}, "
            f"CUDA graphs {'on' if r['cuda_graphs'] else 'off'}, "
            f"batch {r['batch_size']}; "
            f"Inception {order}; "
            f"Inception fp32 (TF32 off), batch {inception_batch_size}; {r['device']}; "
            f"torch {r['torch']}, "
            f"diffusers {r['diffusers']}; commit {r['commit']}.",
            f"Reference statistics: {r['ref_count']} images from `{r['ref_source']}` "
            f"(fingerprint {r['ref_fingerprint'][:16]}), cached.",
            "",
            "| stage | seconds |",
            "|---|---|",
            *stage_rows(r),
            f"| FID + KID from features | {_s(r['metrics_s'])} |",
            f"| **total (timed run)** | **{_s(r['total_s'])}** |",
            f"| one-off warm-up (not in total) | {_s(r['warmup_s'])} |",
            f"| one-off reference statistics build (not in total) | {_s(r['ref_build_s'])} |",
            "",
            f"Throughput {r['images_per_s']:.1f} images/s; peak GPU memory {_s(r['peak_gpu_mem_gib'])} GiB. "
            f"FID {scores['fid']:.1f}, KID {scores['kid_mean']:.4f}, colour {scores.get('color')} "
            "(random weights: meaningless, shown only as a check that scoring ran).",
            "",
            "Command:",
            "",
            f"    {r['command']}",
            "",
        ]
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_ref = None
    if not os.path.isfile(args.ref):
        if not args.ref_source:
            print(f"error: {args.ref} does not exist; pass --ref-source to build it", file=sys.stderr)
            return 2
        t_ref = build_ref(args, device)
    pipe = random_pipeline(args, device)
    t0 = time.perf_counter()
    ev = FIDEvaluator(args.ref, device=device, inception_batch_size=args.inception_batch_size)
    warm_up(pipe, ev, args, device)
    t_warm = time.perf_counter() - t0
    scores, total = timed_run(pipe, ev, args)
    record = make_record(args, argv, device, ev, scores, total, t_warm, t_ref)
    md = markdown(record, args.inception_batch_size)
    print(md)
    for path, text in ((args.out, md), (args.json, json.dumps(record, indent=2) + "\n")):
        if path:
            atomic_write_text(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

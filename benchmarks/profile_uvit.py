"""Where a U-ViT's time goes: kernel time by category (matmul, attention, fused/elementwise, ...) per iteration.

    python benchmarks/profile_uvit.py --what forward --batch-size 2500 --attention softmax,cog \\
        --out benchmarks/results/profile_forward_h200.md --json benchmarks/results/profile_forward_h200.json
    python benchmarks/profile_uvit.py --what train-step --batch-size 128 --attention softmax,cog
    python benchmarks/profile_uvit.py --what train-loop --batch-size 128 --attention softmax,cog

``forward``: one bf16-autocast forward without gradients, as in sampling (the model compiled with
``--compile reduce-overhead`` by default, the mode sampling uses); ``train-step``: forward, epsilon-MSE and
backward (the optimizer is not profiled); ``train-loop``: train.py's own optimizer step (``train_step`` of a
Trainer built from the CIFAR-10 recipe on generated 3x32x32 images: batch assembly, noising, the compiled
model under CUDA graphs as train.py runs it, loss, backward, grad norm, AdamW, LR schedule, EMA), so the gap
between wall time and kernel time is the host work the loop adds. After warm-up, ``--iters`` iterations run
under ``torch.profiler``; each kernel's self time on the GPU is summed and sorted into categories by its name;
the host operators with the most CPU time (inclusive) are listed too. Also reported: wall time per iteration
(CUDA-synchronized, outside the profiler), GPU-busy share (kernel time over that wall time; the two come from
separate passes, so it can read a little over 100 %), and the throughput a hand count of the model's FLOPs
gives (2 x parameters x tokens for the matmuls, 4 x L^2 x width per block for attention; x3 for a
training step). Without CUDA it profiles CPU operators instead (for testing the script; not a measurement).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from cogdiff.io import atomic_write_json, atomic_write_text  # noqa: E402
from cogdiff.models.uvit import uvit  # noqa: E402

CATEGORIES = [  # (category, regex on the kernel name), first match wins
    ("attention", r"flash|fmha|cudnn|attention|_cog_|cog_fwd|cog_bwd|sdpa"),
    ("optimizer/EMA", r"adam|multi_tensor|foreach|lerp"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|matmul|::mm\b|_mm\b|addmm|cublas|bmm"),
    ("norm", r"layer_norm|layernorm|rms_norm"),
    ("copy/convert", r"copy|memcpy|memset|cast|fill"),
    ("fused/elementwise", r"triton|elementwise|vectorized|reduce|gelu|add|mul"),
]


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, pat in CATEGORIES if re.search(pat, low)), "other")


def hand_flops(model, batch: int, what: str) -> float:
    """FLOPs of one iteration by a hand count (see the module docstring)."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    tokens = (cfg.sample_size // cfg.patch_size) ** 2 + 1 + (cfg.num_classes is not None)
    blocks = cfg.depth + 1
    fwd = batch * (2 * params * tokens + 4 * tokens * tokens * cfg.embed_dim * blocks)
    return fwd * (1 if what == "forward" else 3)


def make_iteration(attention: str, batch: int, what: str, compile_mode: str, device: str, preset: str,
                   overrides: dict):
    torch.manual_seed(0)
    model = uvit(preset, attention_type=attention, **overrides).to(device)
    model.train(what == "train-step")
    fwd = model if compile_mode == "none" else torch.compile(model, mode=compile_mode, dynamic=False)
    size = model.config.sample_size
    x = torch.randn(batch, model.config.in_channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    graphs = compile_mode in ("reduce-overhead", "max-autotune")  # max-autotune also captures CUDA graphs

    def iteration():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if what == "forward":
            with torch.no_grad(), autocast:
                return fwd(x, t).sample.clone()
        with autocast:
            loss = F.mse_loss(fwd(x, t).sample.float(), x)
        loss.backward()
        return loss.detach()

    return model, iteration


def make_loop_iteration(attention: str, batch: int, compile_mode: str, preset: str, overrides: dict, out_dir: str):
    """train.py's ``train_step`` on a Trainer of the CIFAR-10 recipe (generated data, every hook off)."""
    from cogdiff.config import load_config
    from cogdiff.workflows.trainer import build_trainer, train_step

    model_keys = [f"model.{k}={v}" for k, v in overrides.items()]
    cfg = load_config(os.path.join(ROOT, "configs", f"cifar10_uvit_s2_{attention}.yaml"), [
        f"model.preset={preset}", *model_keys, "data.kind=synthetic", "data.resolution=32",
        f"train.batch_size={batch}", "train.steps=1000000", f"train.compile={compile_mode != 'none'}",
        f"train.cuda_graphs={compile_mode == 'reduce-overhead'}", "train.fid_every=0", "train.diag_every=0",
        "train.sample_every=0", f"train.output_dir={out_dir}"])
    t = build_trainer(cfg)
    step = iter(range(10**9))
    return t.raw, lambda: train_step(t, next(step))[0]


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def wall_ms(iteration, iters: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        iteration()
    sync(device)
    return (time.perf_counter() - t0) * 1000 / iters


def kernel_times(iteration, iters: int, device: str) -> tuple:
    """(name -> self GPU time of the kernel, name -> inclusive CPU time of the host operator), ms per iteration.
    Without CUDA the first holds the CPU operators' self time."""
    cuda = torch.device(device).type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            iteration()
        sync(device)
    kernels, host = {}, {}
    for ev in prof.key_averages():
        on_gpu = getattr(ev, "device_type", None) == torch.autograd.DeviceType.CUDA
        if not on_gpu and ev.cpu_time_total > 0 and ev.key != "cudaDeviceSynchronize":  # (the profiler's own end)
            host[ev.key] = host.get(ev.key, 0.0) + ev.cpu_time_total / 1000 / iters
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if (on_gpu or not cuda) and us > 0:
            kernels[ev.key] = kernels.get(ev.key, 0.0) + us / 1000 / iters
    return kernels, host


def profile(attention: str, args) -> dict:
    overrides = {k: v for k, v in dict(depth=args.depth, embed_dim=args.embed_dim, num_heads=args.heads).items()
                 if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "train-loop":
            model, iteration = make_loop_iteration(attention, args.batch_size, args.compile, args.preset, overrides,
                                                   tmp)
        else:
            model, iteration = make_iteration(attention, args.batch_size, args.what, args.compile, args.device,
                                              args.preset, overrides)
        for _ in range(args.warmup):
            iteration()
        wall = wall_ms(iteration, args.iters, args.device)
        kernels, host = kernel_times(iteration, args.iters, args.device)
    busy = sum(kernels.values())
    by_cat = {}
    for name, ms in kernels.items():
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[: args.top]
    top_host = sorted(host.items(), key=lambda kv: -kv[1])[: args.top]
    flops = hand_flops(model, args.batch_size, args.what)
    return dict(attention=attention, wall_ms=wall, kernel_ms=busy, busy_share=busy / wall if wall else None,
                tflops_wall=flops / wall / 1e9, categories=dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
                top=[dict(name=n, ms=ms, category=category(n)) for n, ms in top],
                top_host=[dict(name=n, ms=ms) for n, ms in top_host])


def markdown(rows: list, args, meta: dict) -> str:
    unit = "GPU kernel" if meta["cuda"] else "CPU (no CUDA: not a measurement)"
    lines = [f"# U-ViT-{args.preset} {args.what} profile, batch {args.batch_size}", "",
             f"bf16 autocast, compile {args.compile}, {args.iters} profiled iterations after {args.warmup} warm-up; "
             f"{meta['device']}; torch {meta['torch']}; commit {meta['commit']}.", "",
             "| attention | wall ms/iter | " + unit + " ms/iter | busy | TFLOP/s (hand count, wall) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['attention']} | {r['wall_ms']:.2f} | {r['kernel_ms']:.2f} | {r['busy_share']:.0%} | "
              f"{r['tflops_wall']:.3g} |" for r in rows]
    cats = sorted({c for r in rows for c in r["categories"]})
    lines += ["", "ms per iteration by kernel category:", "", "| category | " + " | ".join(
        r["attention"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines += [f"| {c} | " + " | ".join(f"{r['categories'].get(c, 0.0):.2f}" for r in rows) + " |" for c in cats]
    for r in rows:
        lines += ["", f"Top kernels, {r['attention']}:", "", "| ms/iter | category | kernel |", "|---|---|---|"]
        lines += [f"| {k['ms']:.3f} | {k['category']} | `{k['name'][:110]}` |" for k in r["top"]]
    for r in rows:
        lines += ["", f"Host operators with the most CPU time (inclusive, so nested ones overlap), {r['attention']}:",
                  "", "| CPU ms/iter | operator |", "|---|---|"]
        lines += [f"| {k['ms']:.3f} | `{k['name'][:110]}` |" for k in r["top_host"]]
    lines += ["", "Command:", "", "    python benchmarks/profile_uvit.py " + " ".join(sys.argv[1:]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=["forward", "train-step", "train-loop"], default="forward")
    p.add_argument("--preset", default="S/2")
    p.add_argument("--depth", type=int, default=None, help="override the preset's depth (small test models)")
    p.add_argument("--embed-dim", type=int, default=None, help="override the preset's width")
    p.add_argument("--heads", type=int, default=None, help="override the preset's number of heads")
    p.add_argument("--attention", default="softmax,cog", help="comma-separated: softmax, cog")
    p.add_argument("--batch-size", type=int, default=2500)
    p.add_argument("--compile", default="reduce-overhead",
                   choices=["none", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode; max-autotune also tries Triton GEMM templates, which can take in a "
                        "following pointwise op (e.g. the MLP's GELU) as their epilogue (forward/train-step only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--commit", default=os.environ.get("COGDIFF_COMMIT", "unknown"))
    p.add_argument("--out", default=None, help="write the Markdown here (atomically)")
    p.add_argument("--json", default=None, help="write all numbers here")
    args = p.parse_args(argv)
    if args.what == "train-loop" and torch.device(args.device).type != ("cuda" if torch.cuda.is_available() else "cpu"):
        p.error(f"--device {args.device}: train-loop runs on train.py's device (CUDA when there is one)")
    if args.what == "train-loop" and args.compile == "max-autotune":
        p.error("--compile max-autotune: train-loop runs train.py's own compile setting; use reduce-overhead, "
                "default or none")
    if args.compile in ("reduce-overhead", "max-autotune") and torch.device(args.device).type != "cuda":
        print("note: no CUDA: profiling without CUDA graphs (--compile none)")
        args.compile = "none"
    rows = [profile(a.strip(), args) for a in args.attention.split(",") if a.strip()]
    cuda = torch.device(args.device).type == "cuda"
    meta = dict(cuda=cuda, device=torch.cuda.get_device_name() if cuda else "CPU", torch=torch.__version__,
                commit=args.commit)
    text = markdown(rows, args, meta)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.json:
        atomic_write_json(args.json, dict(args=vars(args), **meta, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

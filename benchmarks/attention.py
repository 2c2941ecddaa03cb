"""Attention micro-benchmark: SDPA flash softmax vs Cog reference / compiled / fused (Triton).

    python benchmarks/attention.py                # the speed/memory table (needs CUDA)
    python benchmarks/attention.py --check        # + accuracy table vs a float64 reference
    python benchmarks/attention.py --tune         # + block-size sweep for the fused kernels

bf16 inputs in (B, L, H, D) memory viewed as (B, H, L, D) (what a qkv projection yields; ``--layout
bhld`` for contiguous). Times: median over 7 batches of back-to-back calls timed with CUDA events;
"fwd+bwd" = forward + ``torch.autograd.grad(out, (q, k, v), dO)``. Peak memory:
``torch.cuda.max_memory_allocated`` over one fwd+bwd, inputs and dO included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cogdiff.attention import cog_attention_reference  # noqa: E402
from cogdiff.kernels import cog_triton as ct  # noqa: E402

SHAPES = [(128, 8, 258, 64), (128, 16, 258, 64), (32, 16, 1026, 64), (8, 16, 4096, 64)]


def header() -> str:
    import triton

    try:
        commit = os.environ.get("BENCH_COMMIT") or subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL
        ).strip()
    except Exception:
        commit = "unknown"
    return (
        f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
        f"python {platform.python_version()} | commit {commit}"
    )


def sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v)


def _sdpa_with(backend):
    def fn(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def sdpa_backends_table() -> str:
    """Softmax baselines: SDPA's default choice vs each backend, both layouts, fwd+bwd ms."""
    rows = ["| B,H,L,D | layout | SDPA default | FLASH | CUDNN | EFFICIENT | Cog fused |", "|---|---|---|---|---|---|---|"]
    fns = [_sdpa_with(None), _sdpa_with("FLASH_ATTENTION"), _sdpa_with("CUDNN_ATTENTION"), _sdpa_with("EFFICIENT_ATTENTION"), IMPLS["Cog fused (Triton)"]]
    for shape in (SHAPES[0], SHAPES[3]):
        for layout in ("blhd", "bhld"):
            q, k, v, do = make_inputs(*shape, layout=layout)
            cells = []
            for fn in fns:
                try:
                    cells.append(f"{bench(fn, q, k, v, do, True):.3f}")
                except RuntimeError as e:
                    cells.append(f"n/a ({type(e).__name__})")
            rows.append(f"| {shape} | {layout} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


_compiled_ref = torch.compile(cog_attention_reference, dynamic=False)

IMPLS = {
    "SDPA flash (softmax)": sdpa_flash,
    "Cog reference": lambda q, k, v: cog_attention_reference(q, k, v),
    "Cog compiled ref": lambda q, k, v: _compiled_ref(q, k, v),
    "Cog fused (Triton)": lambda q, k, v: ct.cog_attention_triton(q, k, v),
}


def make_inputs(b, h, l, d, dtype=torch.bfloat16, grad=True, layout="blhd"):
    """q, k, v leaves (and dO) of shape (B, H, L, D); "blhd" = (B, L, H, D) memory as a qkv projection
    gives it (U-ViT, diffusers), "bhld" = contiguous (B, H, L, D)."""

    def t():
        if layout == "blhd":
            x = torch.randn(b, l, h, d, device="cuda", dtype=dtype).transpose(1, 2)
        else:
            x = torch.randn(b, h, l, d, device="cuda", dtype=dtype)
        return x.requires_grad_(grad)

    return t(), t(), t(), t().detach()


def _fwd_bwd(fn, q, k, v, do):
    # autograd.grad: the op's own backward, no AccumulateGrad layout copies into .grad
    return torch.autograd.grad(fn(q, k, v), (q, k, v), do)


def bench(fn, q, k, v, do, backward: bool, target_ms: float = 25.0, reps: int = 7) -> float:
    """Median ms per call over ``reps`` timed batches of back-to-back calls (CUDA events), so host
    overhead overlaps with device work as in a training loop."""

    def once():
        if backward:
            _fwd_bwd(fn, q, k, v, do)
        else:
            with torch.no_grad():
                fn(q, k, v)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    once()
    e1.record()
    torch.cuda.synchronize()
    n = max(1, int(target_ms / max(e0.elapsed_time(e1), 1e-3)))
    times = []
    for _ in range(reps):
        e0.record()
        for _ in range(n):
            once()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / n)
    return sorted(times)[len(times) // 2]


def peak_gb(fn, q, k, v, do) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    grads = _fwd_bwd(fn, q, k, v, do)
    torch.cuda.synchronize()
    del grads
    return torch.cuda.max_memory_allocated() / 1e9


def ref_bytes(b, h, l, d) -> int:
    return 6 * b * h * l * l * 4  # ~ fp32 (L x L) tensors alive in the written-out fwd+bwd


def speed_table(skip_compiled: bool, out_json: list, layout: str) -> str:
    rows = [f"layout {layout}", "", "| B,H,L,D | impl | fwd ms | fwd+bwd ms | peak GB | fwd+bwd / SDPA | peak / SDPA |", "|---|---|---|---|---|---|---|"]
    free = torch.cuda.mem_get_info()[0]
    for shape in SHAPES:
        q, k, v, do = make_inputs(*shape, layout=layout)
        base = None
        for name, fn in IMPLS.items():
            if skip_compiled and "compiled" in name:
                continue
            if "Cog ref" in name or "compiled" in name:
                if ref_bytes(*shape) > 0.8 * free:
                    rows.append(f"| {shape} | {name} | skipped (would need ~{ref_bytes(*shape)/1e9:.0f} GB) | | | | |")
                    continue
            try:
                f_ms = bench(fn, q, k, v, do, False)
                fb_ms = bench(fn, q, k, v, do, True)
                pk = peak_gb(fn, q, k, v, do)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append(f"| {shape} | {name} | OOM | | | | |")
                continue
            if base is None:
                base = (fb_ms, pk)
            rows.append(
                f"| {shape} | {name} | {f_ms:.3f} | {fb_ms:.3f} | {pk:.2f} | {fb_ms / base[0]:.2f}x | {pk / base[1]:.2f}x |"
            )
            out_json.append(dict(shape=shape, impl=name, fwd_ms=f_ms, fwd_bwd_ms=fb_ms, peak_gb=pk))
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
        del q, k, v, do
        torch.cuda.empty_cache()
    return "\n".join(rows)


def check_table() -> str:
    """Relative errors ||x - ref|| / ||ref|| of out, dq, dk, dv vs the float64 reference."""
    rows = ["| case | dtype | B,H,Lq,Lk,D | out | dq | dk | dv |", "|---|---|---|---|---|---|---|"]
    worst = 0.0
    torch.manual_seed(1)
    cases = []
    for dtype in (torch.bfloat16, torch.float16):
        for d in (32, 64, 128):
            cases.append(("random", dtype, (4, 4, 258, 258, d), {}))
    cases += [
        ("random L1026", torch.bfloat16, (2, 4, 1026, 1026, 64), {}),
        ("random Lq100 Lk77", torch.float16, (2, 4, 100, 77, 64), {}),
        ("near-zero scores (q,k x0.01)", torch.bfloat16, (4, 4, 258, 258, 64), {"qs": 1e-2}),
        ("large scores (q,k x3)", torch.bfloat16, (4, 4, 258, 258, 64), {"qs": 3.0}),
        ("all-negative rows", torch.bfloat16, (4, 4, 258, 258, 64), {"neg": True}),
        ("key-padding mask", torch.bfloat16, (4, 4, 258, 258, 64), {"mask": "kp"}),
        ("full mask + fully masked row", torch.bfloat16, (4, 4, 258, 258, 64), {"mask": "full"}),
        ("scale=0.05", torch.bfloat16, (4, 4, 258, 258, 64), {"scale": 0.05}),
        ("D=72 (padded head_dim)", torch.bfloat16, (4, 4, 258, 258, 72), {}),
    ]
    for name, dtype, (b, h, lq, lk, d), kw in cases:
        qs = kw.get("qs", 1.0)
        q = torch.randn(b, h, lq, d, device="cuda") * qs
        k = torch.randn(b, h, lk, d, device="cuda") * qs
        v = torch.randn(b, h, lk, d, device="cuda")
        if kw.get("neg"):
            k[..., 0] = k[..., 0].abs() + 0.5
            q = q * 0.1
            q[..., 0] = -(torch.rand(b, h, lq, device="cuda") * 3 + 0.5)
        mask = None
        if kw.get("mask") == "kp":
            mask = torch.rand(b, 1, 1, lk, device="cuda") > 0.3
        elif kw.get("mask") == "full":
            mask = torch.rand(b, h, lq, lk, device="cuda") > 0.5
            mask[0, 0, 7] = False
        q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
        out = ct.cog_attention_triton(q, k, v, mask, kw.get("scale"))
        do = torch.randn_like(out)
        out.backward(do)
        r = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = cog_attention_reference(*r, mask, 0.0, kw.get("scale"))
        ref.backward(do.double())
        errs = [(a.double() - b_).norm().item() / b_.norm().item() for a, b_ in zip((out, q.grad, k.grad, v.grad), (ref, *[x.grad for x in r]))]
        worst = max([worst] + [e if math.isfinite(e) else float("inf") for e in errs])
        dt = str(dtype).replace("torch.", "")
        rows.append(f"| {name} | {dt} | {b},{h},{lq},{lk},{d} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
        print(rows[-1], flush=True)
    rows.append(f"\nworst relative error: {worst:.2e}")
    return "\n".join(rows)


def tune(shapes) -> str:
    """Sweep block configs per kernel (fwd; dq with dkdv fixed; dkdv with dq at its best)."""
    import triton

    cands = {
        "fwd": [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 128, 4, 3), (128, 32, 4, 3)],
        "dq": [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 2), (128, 32, 4, 2), (32, 64, 4, 2)],
        "dkdv": [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 8, 2), (32, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)],
    }
    lines = []
    for shape in shapes:
        b, h, l, d = shape
        q, k, v, do = make_inputs(*shape, grad=False)
        scale = 1 / math.sqrt(d)
        o, lse = ct.cog_fwd(q, k, v, None, scale)
        bd = ct._block_d(d)
        bucket = ct._bucket(l, l)
        best = {}
        ct.BWD_MODE[bucket] = "recompute"
        for kind in ("fwd", "dq", "dkdv", "dkdv-atomic"):
            key = (kind.replace("-atomic", ""), bd, bucket)
            if kind == "dkdv-atomic":
                recompute_cfg = ct.CONFIGS[key]
                ct.BWD_MODE[bucket] = "atomic"
            res = []
            for cfg in cands[kind.replace("-atomic", "")]:
                ct.CONFIGS[key] = cfg
                if kind == "fwd":
                    fn = lambda: ct.cog_fwd(q, k, v, None, scale)  # noqa: E731
                else:
                    fn = lambda: ct.cog_bwd(do, q, k, v, o, lse, None, scale)  # noqa: E731
                try:
                    ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
                except Exception as e:  # e.g. out of shared memory for a config
                    ms = float("inf")
                    print(f"  {kind} {cfg}: {type(e).__name__}", flush=True)
                res.append((ms, cfg))
            res.sort()
            best[kind] = res[0]
            ct.CONFIGS[key] = res[0][1]
            line = f"{shape} {kind}: " + ", ".join(f"{c}={m:.3f}" for m, c in res)
            lines.append(line)
            print(line, flush=True)
        if best["dkdv"][0] <= best["dkdv-atomic"][0]:
            ct.BWD_MODE[bucket] = "recompute"
            ct.CONFIGS[("dkdv", bd, bucket)] = recompute_cfg
        mode = ct.BWD_MODE[bucket]
        bwd_ms = min(best["dkdv"][0], best["dkdv-atomic"][0])
        lines.append(
            f"{shape} best: fwd {ct.CONFIGS[('fwd', bd, bucket)]} {best['fwd'][0]:.3f} ms | bwd mode {mode}, "
            f"dq {ct.CONFIGS[('dq', bd, bucket)]} dkdv {ct.CONFIGS[('dkdv', bd, bucket)]} {bwd_ms:.3f} ms"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="print the accuracy table first")
    p.add_argument("--tune", action="store_true", help="sweep kernel block sizes first (uses the best found)")
    p.add_argument("--tune-shapes", default="0", help="indices into SHAPES to tune on, comma separated")
    p.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--layout", default="blhd", choices=["blhd", "bhld"], help="memory layout of q, k, v (see make_inputs)")
    p.add_argument("--sdpa-backends", action="store_true", help="also compare SDPA's softmax backends")
    p.add_argument("--only-sdpa-backends", action="store_true", help="stop after that comparison")
    p.add_argument("--out", default=None, help="directory for json/markdown output")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU")
    print(header(), flush=True)
    parts = {"header": header()}
    if args.check:
        parts["check"] = check_table()
    if args.tune:
        parts["tune"] = tune([SHAPES[int(i)] for i in args.tune_shapes.split(",")])
        parts["configs"] = {"/".join(map(str, k)): v for k, v in ct.CONFIGS.items()}
        parts["bwd_mode"] = dict(ct.BWD_MODE)
    if args.sdpa_backends:
        parts["sdpa_backends"] = sdpa_backends_table()
        if args.only_sdpa_backends:
            return
    rows = []
    parts["speed"] = speed_table(args.no_compiled, rows, args.layout)
    print("\n" + parts.get("check", "") + "\n\n" + parts["speed"], flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "attention.json"), "w") as f:
            json.dump({**parts, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

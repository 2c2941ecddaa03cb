"""Attention micro-benchmark: softmax SDPA (cuDNN, FlashAttention-2) vs Cog (reference, compiled, fused Triton).

    python benchmarks/attention.py --out DIR        # speed/memory tables, both layouts -> DIR/attention_h200.{json,md}
    python benchmarks/attention.py --check          # + accuracy table vs a float64 reference
    python benchmarks/attention.py --sweep --out DIR   # first time every fused-kernel config per length bucket,
                                                       # use the winners, write DIR/attention_configs.json
    python benchmarks/attention.py --configs DIR/attention_configs.json   # use a sweep's winners

bf16 inputs, two layouts: "blhd" = (B, L, H, D) memory viewed as (B, H, L, D) (what a qkv projection
yields), "bhld" = contiguous (B, H, L, D). Times: median over 7 batches of back-to-back calls timed
with CUDA events; "fwd+bwd" = forward + ``torch.autograd.grad(out, (q, k, v), dO)``. Peak memory:
``torch.cuda.max_memory_allocated`` over one fwd+bwd, inputs and dO included. Ratios are against
SDPA's cuDNN backend (SDPA's default choice on an H200) and FlashAttention-2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cogdiff.attention import cog_attention_reference  # noqa: E402
from cogdiff.io import atomic_write_text  # noqa: E402
from cogdiff.kernels import cog_triton as ct  # noqa: E402

SHAPES = [(128, 8, 258, 64), (128, 16, 258, 64), (32, 16, 1026, 64), (8, 16, 4096, 64)]
LAYOUTS = ("blhd", "bhld")
# the targets for Cog fused fwd+bwd / cuDNN: <= 1.10x at L <= 512, <= 1.25x above
TARGET = {258: 1.10, 1026: 1.25, 4096: 1.25}


def header() -> str:
    import triton

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    commit = os.environ.get("BENCH_COMMIT")
    if not commit and os.path.exists(os.path.join(root, ".git")):  # this checkout's own commit, not a parent's
        try:
            commit = subprocess.check_output(["git", "-C", root, "rev-parse", "--short", "HEAD"], text=True,
                                             stderr=subprocess.DEVNULL).strip()
        except Exception:
            commit = None
    return (
        f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
        f"python {platform.python_version()} | commit {commit or 'unknown'}"
    )


def _sdpa(backend: str):
    def fn(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


_compiled_ref = torch.compile(cog_attention_reference, dynamic=False)
CUDNN, FA2, FUSED = "SDPA cuDNN (softmax)", "SDPA FA2 (softmax)", "Cog fused (Triton)"
IMPLS = {
    CUDNN: _sdpa("CUDNN_ATTENTION"),
    FA2: _sdpa("FLASH_ATTENTION"),
    "Cog reference": lambda q, k, v: cog_attention_reference(q, k, v),
    "Cog compiled ref": lambda q, k, v: _compiled_ref(q, k, v),
    FUSED: lambda q, k, v: ct.cog_attention_triton(q, k, v),
}


def make_inputs(b, h, n, d, dtype=torch.bfloat16, grad=True, layout="blhd"):
    """q, k, v leaves (and dO) of shape (B, H, L, D) in the given memory layout."""

    def t():
        if layout == "blhd":
            x = torch.randn(b, n, h, d, device="cuda", dtype=dtype).transpose(1, 2)
        else:
            x = torch.randn(b, h, n, d, device="cuda", dtype=dtype)
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


def ref_bytes(b, h, n, d) -> int:
    return 6 * b * h * n * n * 4  # ~ fp32 (L x L) tensors alive in the written-out fwd+bwd


def _measure(name, fn, shape, q, k, v, do) -> dict:
    try:
        return dict(fwd_ms=bench(fn, q, k, v, do, False), fwd_bwd_ms=bench(fn, q, k, v, do, True),
                    peak_gb=peak_gb(fn, q, k, v, do))
    except torch.OutOfMemoryError:
        return dict(note="OOM")
    except RuntimeError as e:  # e.g. a backend that does not take this layout
        return dict(note=f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:60]})")
    finally:
        torch.cuda.empty_cache()


def speed_rows(impls, layout: str, skip_compiled: bool) -> list:
    """One dict per (shape, impl): times, peak and ratios to cuDNN / FA2 (printed as it goes)."""
    rows = []
    free = torch.cuda.mem_get_info()[0]
    for shape in SHAPES:
        q, k, v, do = make_inputs(*shape, layout=layout)
        base = {}
        for name in impls:
            r = dict(shape=list(shape), layout=layout, impl=name)
            if "compiled" in name and skip_compiled:
                continue
            if ("Cog ref" in name or "compiled" in name) and ref_bytes(*shape) > 0.8 * free:
                r["note"] = f"skipped (would need ~{ref_bytes(*shape) / 1e9:.0f} GB)"
            else:
                r.update(_measure(name, IMPLS[name], shape, q, k, v, do))
            if name in (CUDNN, FA2) and "fwd_bwd_ms" in r:
                base[name] = r
            for b_name, key in ((CUDNN, "vs_cudnn"), (FA2, "vs_fa2")):
                if "fwd_bwd_ms" in r and b_name in base:
                    r[key] = r["fwd_bwd_ms"] / base[b_name]["fwd_bwd_ms"]
            if "peak_gb" in r and CUDNN in base:
                r["peak_vs_cudnn"] = r["peak_gb"] / base[CUDNN]["peak_gb"]
            rows.append(r)
        del q, k, v, do
        torch.cuda.empty_cache()
    return rows


def _x(r, key):
    return f"{r[key]:.2f}x" if key in r else ""


def speed_markdown(rows: list) -> str:
    out = ["| B,H,L,D | layout | impl | fwd ms | fwd+bwd ms | peak GB | fwd+bwd / cuDNN | fwd+bwd / FA2 "
           "| peak / cuDNN |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            out.append(f"| {tuple(r['shape'])} | {r['layout']} | {r['impl']} | {r['note']} | | | | | |")
            continue
        out.append(f"| {tuple(r['shape'])} | {r['layout']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                   f"{r['peak_gb']:.2f} | {_x(r, 'vs_cudnn')} | {_x(r, 'vs_fa2')} | {_x(r, 'peak_vs_cudnn')} |")
    return "\n".join(out)


def summary(rows: list) -> str:
    """The fused kernel against the issue's targets, one line per shape and layout."""
    lines = ["Cog fused vs cuDNN (fwd+bwd; target <= 1.10x at L=258, <= 1.25x above; peak <= 1.00x):"]
    for r in rows:
        if r["impl"] != FUSED or "vs_cudnn" not in r:
            continue
        ok = r["vs_cudnn"] <= TARGET[r["shape"][2]] and r.get("peak_vs_cudnn", 9) <= 1.0
        lines.append(f"  {tuple(r['shape'])} {r['layout']}: {r['fwd_bwd_ms']:.3f} ms = {r['vs_cudnn']:.2f}x cuDNN, "
                     f"{_x(r, 'vs_fa2')} FA2, peak {_x(r, 'peak_vs_cudnn')} -> {'met' if ok else 'MISSED'}")
    return "\n".join(lines)


def write_results(out_dir: str, parts: dict, rows: list, argv: list) -> None:
    """attention_h200.json (everything) and attention_h200.md (the tables), written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "attention_h200.json"), json.dumps({**parts, "rows": rows}, indent=1))
    md = [f"# Cog Attention kernels on the H200: accuracy, speed, memory\n\n{parts['header']}\n",
          f"Command (repository root): `python benchmarks/attention.py {' '.join(argv)}`\n",
          "Raw numbers: `attention_h200.json`. bf16; fwd+bwd = forward + autograd.grad for q, k, v; "
          "layouts: blhd = (B, L, H, D) memory viewed as (B, H, L, D), bhld = contiguous.\n"]
    if "check" in parts:
        md.append("## Accuracy (relative error vs the float64 reference: out, dq, dk, dv)\n\n" + parts["check"] + "\n")
    if "sweep" in parts:
        md.append("## Config sweep (ms per candidate, winners used below)\n\n```\n" + parts["sweep"] + "\n```\n")
    md.append("## Speed and memory\n\n" + speed_markdown(rows) + "\n\n```\n" + summary(rows) + "\n```\n")
    atomic_write_text(os.path.join(out_dir, "attention_h200.md"), "\n".join(md))


# --------------------------------------------------------------------------------- config sweep
# Candidates per kernel: (BLOCK_M, BLOCK_N, num_warps, num_stages, tail); see cog_triton.CONFIGS.
SWEEP = {  # (candidates that lost everywhere on the H200 at D=64 were dropped to keep the sweep short)
    "fwd": [(64, 64, 4, 3, True), (64, 64, 4, 3, False), (64, 64, 4, 2, True), (128, 64, 8, 3, True),
            (128, 64, 4, 3, True), (128, 64, 4, 4, True)],
    # the asymmetric backward tiles of Triton's fused-attention tutorial (dq: 128 query rows x 32-key tiles,
    # dk/dv: 32-query tiles x 128 key rows; 4 warps, 5 stages), and 3-stage / 8-warp variants of them
    "dq": [(64, 64, 4, 2, True), (64, 64, 4, 2, False), (64, 32, 4, 2, True), (64, 64, 4, 3, True),
           (128, 32, 4, 5, True), (128, 32, 4, 3, True), (128, 64, 8, 3, True)],
    "dkdv": [(64, 64, 4, 2, True), (64, 64, 4, 2, False), (64, 64, 4, 3, True), (32, 64, 4, 2, True),
             (32, 64, 4, 3, True), (64, 128, 8, 2, True), (32, 128, 4, 5, True), (32, 128, 4, 3, True),
             (64, 128, 8, 3, True)],
}


def _time(fn) -> float:
    import triton

    try:
        return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")
    except Exception as e:  # e.g. out of shared memory or registers for this config
        print(f"  config failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", flush=True)
        return float("inf")


def _fmt(cfg) -> str:
    bm, bn, warps, stages, tail = cfg
    return f"{bm}x{bn}w{warps}s{stages}{'t' if tail else ''}"


def _sweep_bucket(bucket: str, data: list, lines: list) -> dict:
    """Pick per kernel the candidate with the least total time over ``data`` (one bucket's shapes)."""
    bd = ct.config_key("fwd", data[0][0].shape[-1], 1, 1)[1]

    def fwd(q, k, v, do, o, lse, scale):
        return ct.cog_fwd(q, k, v, None, scale)

    def bwd(q, k, v, do, o, lse, scale):
        return ct.cog_bwd(do, q, k, v, o, lse, None, scale)

    best = {}
    stages = (("fwd", None, fwd), ("dq", "recompute", bwd), ("dkdv", "recompute", bwd), ("dkdv", "atomic", bwd))
    for kind, mode, fn in stages:
        if mode:
            ct.set_configs(bwd_mode={bucket: mode})
        key = (kind, bd, bucket)
        res = []
        for cfg in SWEEP[kind]:
            ct.set_configs({key: cfg})
            res.append((sum(_time(lambda: fn(*x)) for x in data), cfg))
        res.sort(key=lambda r: r[0])
        best[(kind, mode)] = res[0]
        ct.set_configs({key: res[0][1]})
        line = f"{bucket} {kind}{'/' + mode if mode else ''}: " + ", ".join(f"{_fmt(c)}={t:.3f}" for t, c in res)
        lines.append(line)
        print(line, flush=True)
    rec, atom = best[("dkdv", "recompute")], best[("dkdv", "atomic")]
    mode, dkdv = ("recompute", rec) if rec[0] <= atom[0] else ("atomic", atom)
    ct.set_configs({("dkdv", bd, bucket): dkdv[1]}, {bucket: mode})
    lines.append(f"{bucket} winners: fwd {_fmt(best[('fwd', None)][1])} {best[('fwd', None)][0]:.3f} ms | bwd {mode}, "
                 f"dq {_fmt(ct.CONFIGS[('dq', bd, bucket)])} dkdv {_fmt(dkdv[1])} {dkdv[0]:.3f} ms")
    print(lines[-1], flush=True)
    return {f"{kind}/{bd}/{bucket}": list(ct.CONFIGS[(kind, bd, bucket)]) for kind in ("fwd", "dq", "dkdv")}


def sweep(shapes) -> tuple:
    """Time every SWEEP candidate per length bucket (blhd inputs, summed over the bucket's shapes);
    returns (report text, winners as load_configs() reads them) and leaves the winners applied."""
    buckets = {}
    for shape in shapes:
        buckets.setdefault(ct.config_key("fwd", shape[3], shape[2], shape[2])[2], []).append(shape)
    lines, configs = [], {}
    for bucket, group in buckets.items():
        data = []
        for shape in group:
            q, k, v, do = make_inputs(*shape, grad=False)
            scale = shape[3] ** -0.5
            data.append((q, k, v, do, *ct.cog_fwd(q, k, v, None, scale), scale))
        configs.update(_sweep_bucket(bucket, data, lines))
        del data
        torch.cuda.empty_cache()
    return "\n".join(lines), {"configs": configs, "bwd_mode": dict(ct.BWD_MODE)}


# ------------------------------------------------------------------------------------ accuracy

CHECK_CASES = [
    ("random", dt, (4, 4, 258, 258, d), {}) for dt in (torch.bfloat16, torch.float16) for d in (32, 64, 128)
] + [
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


def _check_inputs(b, h, lq, lk, d, kw):
    qs = kw.get("qs", 1.0)
    q = torch.randn(b, h, lq, d, device="cuda") * qs
    k = torch.randn(b, h, lk, d, device="cuda") * qs
    v = torch.randn(b, h, lk, d, device="cuda")
    if kw.get("neg"):  # every score of every row negative
        k[..., 0] = k[..., 0].abs() + 0.5
        q = q * 0.1
        q[..., 0] = -(torch.rand(b, h, lq, device="cuda") * 3 + 0.5)
    mask = None
    if kw.get("mask") == "kp":
        mask = torch.rand(b, 1, 1, lk, device="cuda") > 0.3
    elif kw.get("mask") == "full":
        mask = torch.rand(b, h, lq, lk, device="cuda") > 0.5
        mask[0, 0, 7] = False
    return q, k, v, mask


def check_table() -> str:
    """Relative errors ||x - ref|| / ||ref|| of out, dq, dk, dv vs the float64 reference."""
    rows = ["| case | dtype | B,H,Lq,Lk,D | out | dq | dk | dv |", "|---|---|---|---|---|---|---|"]
    worst = 0.0
    torch.manual_seed(1)
    for name, dtype, (b, h, lq, lk, d), kw in CHECK_CASES:
        q, k, v, mask = _check_inputs(b, h, lq, lk, d, kw)
        q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
        out = ct.cog_attention_triton(q, k, v, mask, kw.get("scale"))
        do = torch.randn_like(out)
        out.backward(do)
        r = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = cog_attention_reference(*r, mask, 0.0, kw.get("scale"))
        ref.backward(do.double())
        errs = [(a.double() - b_).norm().item() / b_.norm().item()
                for a, b_ in zip((out, q.grad, k.grad, v.grad), (ref, *[x.grad for x in r]))]
        worst = max([worst] + [e if e == e else float("inf") for e in errs])
        dt = str(dtype).replace("torch.", "")
        rows.append(f"| {name} | {dt} | {b},{h},{lq},{lk},{d} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    rows.append(f"\nworst relative error: {worst:.2e}")
    print(f"accuracy: worst relative error {worst:.2e} over {len(CHECK_CASES)} cases (target <= 5e-3 in bf16)",
          flush=True)
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="print the accuracy table first")
    p.add_argument("--sweep", action="store_true", help="time every fused-kernel config first; use, write the winners")
    p.add_argument("--configs", default=None, help="apply fused-kernel configs from a sweep's attention_configs.json")
    p.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--no-reference", action="store_true", help="skip both written-out Cog references")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma separated: blhd, bhld")
    p.add_argument("--out", default=None, help="directory for attention_h200.{json,md} (+ attention_configs.json)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU")
    print(header(), flush=True)
    parts = {"header": header()}
    if args.configs:
        ct.load_configs(args.configs)
    if args.sweep:
        parts["sweep"], winners = sweep(SHAPES)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            atomic_write_text(os.path.join(args.out, "attention_configs.json"), json.dumps(winners, indent=1))
    parts["configs"] = {"/".join(map(str, k)): v for k, v in ct.CONFIGS.items()}
    parts["bwd_mode"] = dict(ct.BWD_MODE)
    if args.check:
        parts["check"] = check_table()
    impls = [n for n in IMPLS if not (args.no_reference and "Cog" in n and n != FUSED)]
    rows = []
    for layout in args.layouts.split(","):
        rows += speed_rows(impls, layout, args.no_compiled)
    print("\n" + speed_markdown(rows) + "\n\n" + summary(rows), flush=True)
    if args.out:
        write_results(args.out, parts, rows, sys.argv[1:])


if __name__ == "__main__":
    main()

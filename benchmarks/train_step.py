"""U-ViT-S/2 training-step benchmark: softmax vs Cog (reference) vs Cog (fused Triton kernel).

    python benchmarks/train_step.py                       # all variants, eager and compiled
    python benchmarks/train_step.py --no-compile          # eager only
    python benchmarks/train_step.py --variants softmax,cog-fused --batch 128
    python benchmarks/train_step.py --no-eager --graphs --variants softmax,cog-fused   # +/- CUDA graphs

One step = bf16 autocast forward of ``uvit("S/2")`` on CIFAR-sized inputs (B, 3, 32, 32), the
epsilon-prediction MSE loss, backward and a fused AdamW step (U-ViT's CIFAR-10 hyper-parameters).
"torch.compile" compiles the model (default mode); "compile+graphs" (``--graphs``) compiles it with
``mode="reduce-overhead"`` (forward and backward replayed as CUDA graphs). The optimizer step stays
eager (fused kernel). ``--kernel-configs`` applies a block-size sweep's winners
(``benchmarks/attention.py --sweep``) to the fused Cog kernel first.
Times: median of ``triton.testing.do_bench`` over steps (CUDA events); peak memory:
``torch.cuda.max_memory_allocated`` over one step after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cogdiff.attention import available_cog_impls  # noqa: E402
from cogdiff.models.uvit import uvit  # noqa: E402

VARIANTS = {  # name -> (attention_type, cog impl, how torch.compile sees the fused op: cog_triton.COMPILE_OPS)
    "softmax": ("softmax", "auto", None),
    "cog-reference": ("cog", "reference", None),
    "cog-fused": ("cog", "triton", "triton_op"),
    "cog-fused-opaque": ("cog", "triton", "custom_op"),
}


MODES = {"eager": None, "torch.compile": "default", "compile+graphs": "reduce-overhead"}  # name -> compile mode


def make_step(variant: str, batch: int, mode: str):
    attention_type, impl, compile_op = VARIANTS[variant]
    if compile_op:
        from cogdiff.kernels import cog_triton

        cog_triton.COMPILE_OP = compile_op  # read when torch.compile traces (the warm-up steps)
    torch.manual_seed(0)
    model = uvit("S/2", attention_type=attention_type).cuda().train()
    model.set_cog_impl(impl)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.999), fused=True)
    fwd = model if MODES[mode] is None else torch.compile(model, mode=MODES[mode])
    graphs = MODES[mode] == "reduce-overhead"
    betas = torch.linspace(1e-4, 0.02, 1000, device="cuda")
    alphas_bar = torch.cumprod(1 - betas, 0)
    x0 = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1
    eps = torch.randn_like(x0)

    def step():
        if graphs:  # a new step: the graphs may overwrite the previous step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        t = torch.randint(0, 1000, (batch,), device="cuda")
        ab = alphas_bar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = fwd(xt, t.float()).sample
        loss = F.mse_loss(pred.float(), eps)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def measure(variant: str, batch: int, mode: str) -> dict:
    import triton

    model, step = make_step(variant, batch, mode)
    t0 = time.perf_counter()
    for _ in range(3):
        loss = step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    assert torch.isfinite(loss), f"{variant}: non-finite loss"
    ms = triton.testing.do_bench(step, warmup=100, rep=500, return_mode="median")
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1e9
    del model, step
    torch.cuda.empty_cache()
    return dict(variant=variant, mode=mode, batch=batch, ms=ms, img_s=batch / ms * 1e3, peak_gb=peak, warmup_s=warm_s)


def table(rows: list) -> list:
    """Markdown rows: ms/step, images/s, peak, Cog/softmax in the same mode, graphs/no-graphs."""
    def ms_of(variant, mode):
        return next((x["ms"] for x in rows if x["variant"] == variant and x["mode"] == mode), None)

    lines = ["| mode | variant | ms/step | images/s | peak GB | vs softmax | graphs / no graphs |", "|---" * 7 + "|"]
    for r in rows:
        base, plain = ms_of("softmax", r["mode"]), ms_of(r["variant"], "torch.compile")
        rel = f"{r['ms'] / base:.3f}x" if base else "-"
        rel_g = f"{r['ms'] / plain:.3f}x" if plain and r["mode"] == "compile+graphs" else "-"
        lines.append(f"| {r['mode']} | {r['variant']} | {r['ms']:.2f} | {r['img_s']:.0f} | {r['peak_gb']:.2f} | {rel} "
                     f"| {rel_g} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--variants", default="softmax,cog-reference,cog-fused")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-eager", action="store_true")
    p.add_argument("--graphs", action="store_true", help="also torch.compile(mode='reduce-overhead') (CUDA graphs)")
    p.add_argument("--kernel-configs", default=None, help="JSON of fused-kernel configs from attention.py --sweep")
    p.add_argument("--out", default=None, help="directory for a json of the rows")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/train_step.py needs a CUDA GPU")
    assert "triton" in available_cog_impls(), "the Triton kernel did not register"
    if args.kernel_configs:
        from cogdiff.kernels import cog_triton

        cog_triton.load_configs(args.kernel_configs)
    sys.path.insert(0, os.path.dirname(__file__))
    from attention import header

    print(header(), flush=True)
    modes = ([] if args.no_eager else ["eager"]) + ([] if args.no_compile else ["torch.compile"])
    modes += ["compile+graphs"] if args.graphs else []
    rows = []
    for mode in modes:
        for v in args.variants.split(","):
            try:
                r = measure(v, args.batch, mode)
            except Exception as e:  # report and go on with the other variants
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                print(f"{mode:14s} {v:14s} FAILED: {type(e).__name__}: {first}", flush=True)
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(f"{mode:14s} {v:14s} {r['ms']:.2f} ms/step  {r['img_s']:.0f} img/s  peak {r['peak_gb']:.2f} GB  "
                  f"(warm-up {r['warmup_s']:.0f} s)", flush=True)
    lines = table(rows)
    print("\n".join(lines), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_step.json"), "w") as f:
            json.dump({"header": header(), "rows": rows, "table": lines}, f, indent=1)


if __name__ == "__main__":
    main()

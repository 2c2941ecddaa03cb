"""GPU throughput numbers behind docs/imagenet.md's time estimates (weights are random: speed only).

1. VAE encoding as ``cogdiff.latents`` does it (images + mirrors in one call) with a randomly
   initialised AutoencoderKL of Stable Diffusion's VAE architecture, fp32 and bf16.
2. JPEG decode + ADM crop throughput of the extraction's DataLoader on this machine's CPUs
   (synthetic noise JPEGs of ImageNet's typical 500x375 size: harder to decode than photos).
3. One U-ViT-L/2 training step on 4x32x32 latents (class-conditional, AdamW, bf16 autocast),
   softmax vs Cog, to estimate the 300k-step ImageNet run.

    python benchmarks/vae_encode.py --out benchmarks/results/vae_encode_h200.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from cogdiff.attention import available_cog_impls
from cogdiff.latents.extract import PRECISIONS, encode_with_mirror
from cogdiff.latents.images import CroppedImages
from cogdiff.models import uvit

# Stable Diffusion's VAE ("kl-f8", as in stabilityai/sd-vae-ft-mse's config.json): 256^2 -> 4x32x32.
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)


def timed(fn, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` (CUDA-synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def bench_vae(batch: int, precision: str, iters: int):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**SD_VAE_CONFIG).to("cuda", PRECISIONS[precision]).eval().requires_grad_(False)
    x = torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1
    torch.cuda.reset_peak_memory_stats()
    sec = timed(lambda: encode_with_mirror(vae, x), 2, iters)
    return 2 * batch / sec, batch / sec, torch.cuda.max_memory_allocated() / 2**30


def bench_decode(n: int, workers: int, size: int = 256):
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(f"{d}/{i}.JPEG", quality=90)
            paths.append(f"{i}.JPEG")
        loader = torch.utils.data.DataLoader(CroppedImages(d, paths, size), batch_size=32, num_workers=workers)
        t0 = time.perf_counter()
        count = sum(len(b) for b in loader)
        return count / (time.perf_counter() - t0)


def bench_uvit(attention_type: str, impl: str, batch: int, iters: int):
    model = uvit("L/2", sample_size=32, in_channels=4, num_classes=1000, attention_type=attention_type).cuda()
    model.set_cog_impl(impl)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.99))
    x = torch.randn(batch, 4, 32, 32, device="cuda")
    y = torch.randint(0, 1001, (batch,), device="cuda")
    t = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(model(x, t, class_labels=y).sample.float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    sec = timed(step, 3, iters)
    return sec, torch.cuda.max_memory_allocated() / 2**30, sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae-batch", type=int, default=32, help="examples per call (x2 images with mirrors)")
    p.add_argument("--vae-iters", type=int, default=10)
    p.add_argument("--uvit-batch", type=int, default=128, help="per-GPU batch (8 GPUs x 128 = the recipe's 1024)")
    p.add_argument("--uvit-iters", type=int, default=20)
    p.add_argument("--jpegs", type=int, default=512)
    p.add_argument("--out", default=None, help="write the markdown table here too")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    workers = os.cpu_count() or 1
    lines = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, {workers} CPUs, {platform.python_version()}",
        "",
    ]
    lines += ["| VAE encode (SD-VAE arch, 256², image + mirror per call) | images/s | examples/s | peak GiB |",
              "|---|---|---|---|"]
    for prec in ("fp32", "bf16"):
        ips, eps, mem = bench_vae(a.vae_batch, prec, a.vae_iters)
        per_call = f"{a.vae_batch} examples = {2 * a.vae_batch} images per call"
        lines.append(f"| {prec}, {per_call} | {ips:.0f} | {eps:.0f} | {mem:.1f} |")
        print(lines[-1], flush=True)
    dec = bench_decode(a.jpegs, workers)
    lines += [
        "",
        f"JPEG decode + ADM crop to 256 (500x375 noise JPEGs, {workers} DataLoader workers): {dec:.0f} images/s",
        "",
    ]
    print(lines[-2], flush=True)
    head = f"U-ViT-L/2 train step, 4x32x32 latents, batch {a.uvit_batch}, bf16 autocast, AdamW"
    lines += [f"| {head} | ms/step | images/s | peak GiB | params |",
              "|---|---|---|---|---|"]
    runs = [("softmax", "auto")] + [("cog", i) for i in available_cog_impls()]  # reference first, then kernels
    for kind, impl in runs:
        label = kind if kind == "softmax" else f"cog (impl={impl})"
        try:
            sec, mem, n = bench_uvit(kind, impl, a.uvit_batch, a.uvit_iters)
            lines.append(f"| {label} | {sec * 1e3:.1f} | {a.uvit_batch / sec:.0f} | {mem:.1f} | {n / 1e6:.1f}M |")
        except Exception as err:  # another engineer's kernel may fail here: record it, keep measuring
            lines.append(f"| {label} | failed: {type(err).__name__}: {str(err).splitlines()[0][:80]} | | | |")
        torch.cuda.empty_cache()
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

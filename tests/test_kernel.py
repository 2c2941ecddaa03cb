"""Fused Triton Cog Attention: backward derivation, registration, interpreter run on CPU, GPU checks.

On CPU the kernels run under Triton's interpreter in a subprocess (TRITON_INTERPRET=1 is set only
in that child's environment). The interpreter multiplies bf16 dot operands as raw bit patterns
(Triton 3.8), so CPU runs use fp16; bf16 is checked on the GPU.
"""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from cogdiff.attention import available_cog_impls, cog_attention, cog_attention_reference

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover
    HAS_TRITON = False

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
# The interpreter cases were validated with Triton 3.8 (what CI installs); under the GPU machine's Triton
# 3.6 interpreter the script failed (not investigated; the compiled-kernel GPU tests pass there).
_TRITON_VERSION = tuple(int(x) for x in triton.__version__.split(".")[:2]) if HAS_TRITON else (0, 0)
needs_interpreter = pytest.mark.skipif(_TRITON_VERSION < (3, 8), reason="interpreter tests need Triton >= 3.8")
needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and Triton")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def test_backward_formula_matches_autograd_float64():
    """dS = W * (sign(S) * dW - D) with dW = dO V^T, D = rowsum(dO * O): the kernels' backward."""
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 17, 17) > 0.3
    scale = 0.4
    out = cog_attention_reference(q, k, v, mask, 0.0, scale)
    do = torch.randn_like(out)
    out.backward(do)
    with torch.no_grad():
        s = q @ k.transpose(-1, -2) * scale
        a = s.abs().masked_fill(~mask, float("-inf"))
        p = torch.softmax(a, -1)
        w = torch.sign(s) * p
        dw = do @ v.transpose(-1, -2)
        d = (do * out).sum(-1, keepdim=True)
        ds = w * (torch.sign(s) * dw - d)
        assert torch.allclose(ds, p * dw - w * d)  # the form (s != 0 almost surely)
        assert torch.allclose(ds @ k * scale, q.grad, atol=1e-10)
        assert torch.allclose(ds.transpose(-1, -2) @ q * scale, k.grad, atol=1e-10)
        assert torch.allclose(w.transpose(-1, -2) @ do, v.grad, atol=1e-10)


@needs_triton
def test_registered_and_cpu_falls_back_to_reference():
    assert "triton" in available_cog_impls()
    from cogdiff.kernels import cog_triton

    q, k, v = (torch.randn(1, 2, 9, 16, dtype=torch.float16) for _ in range(3))
    assert not cog_triton.supports(q, k, v)  # CPU tensors
    cog_triton._warned.clear()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = cog_attention(q, k, v, impl="triton")
        cog_attention(q, k, v, impl="triton")
    assert len([r for r in rec if "reference" in str(r.message)]) == 1  # warned once
    assert torch.equal(out, cog_attention_reference(q, k, v))
    assert torch.equal(cog_attention(q, k, v), out)  # "auto" on CPU -> reference


# The interpreter script: small blocks (16) so that every loop runs several tiles with ragged ends.
_INTERP_SCRIPT = textwrap.dedent(
    r"""
    import math, sys, torch
    from cogdiff.attention import cog_attention_reference
    from cogdiff.kernels import cog_triton as ct
    ct.set_configs({key: (16, 16, 4, 1, True) for key in ct.CONFIGS})
    torch.manual_seed(0)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()

    def case(name, q, k, v, mask=None, scale=None, tol=4e-3, custom_op=False):
        q, k, v = (x.half().requires_grad_() for x in (q, k, v))
        out = ct.cog_attention_triton(q, k, v, mask, scale, use_custom_op=custom_op)
        do = torch.randn_like(out)
        out.backward(do)
        r = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = cog_attention_reference(*r, mask, 0.0, scale)
        ref.backward(do.double())
        errs = [rel(out, ref)] + [rel(x.grad, y.grad) for x, y in zip((q, k, v), r)]
        ok = all(math.isfinite(e) and e < tol for e in errs)
        errs_text = f"out {errs[0]:.1e} dq {errs[1]:.1e} dk {errs[2]:.1e} dv {errs[3]:.1e}"
        print(f"{name:28s} {errs_text}", "ok" if ok else "FAIL")
        return ok

    B, H = 1, 2
    rn = lambda L, D, s=1.0: torch.randn(B, H, L, D) * s
    ok = []
    ok.append(case("L40 D32", rn(40, 32), rn(40, 32), rn(40, 32)))
    ok.append(case("L37 D24 (pad D) scale .3", rn(37, 24), rn(37, 24), rn(37, 24), scale=0.3))
    ok.append(case("Lq33 Lk21 custom op", rn(33, 16), rn(21, 16), rn(21, 16), custom_op=True))
    ok.append(case("negative scale", rn(20, 16), rn(20, 16), rn(20, 16), scale=-0.25))
    ok.append(case("near-zero scores", rn(35, 32, 1e-2), rn(35, 32, 1e-2), rn(35, 32)))
    ok.append(case("large scores", rn(35, 32, 3.0), rn(35, 32, 3.0), rn(35, 32), tol=1e-2))
    k = rn(35, 32)
    k[..., 0] = k[..., 0].abs() + 0.5
    q = rn(35, 32, 0.1)
    q[..., 0] = -(torch.rand(B, H, 35) * 3 + 0.5)  # every score of every row is negative
    ok.append(case("all-negative rows", q, k, rn(35, 32)))
    q = rn(30, 16)
    q[..., 3, :] = 0  # an all-zero row: every score exactly 0 -> weights 0 -> out 0
    ok.append(case("zero-score row", q, rn(30, 16), rn(30, 16)))
    kp = torch.rand(B, 1, 1, 39) > 0.4
    ok.append(case("key-padding mask", rn(39, 32), rn(39, 32), rn(39, 32), mask=kp))
    full = torch.rand(B, H, 26, 26) > 0.5
    full[0, 1, 5] = False  # a fully masked row -> zeros
    ok.append(case("full mask + masked row", rn(26, 16), rn(26, 16), rn(26, 16), mask=full))
    # the FA2-style atomic-dq backward (off by default: it measured slower on the H200) stays correct
    ct.set_configs(bwd_mode=dict.fromkeys(ct.BWD_MODE, "atomic"))
    ok.append(case("atomic dq L40 D32", rn(40, 32), rn(40, 32), rn(40, 32)))
    ok.append(case("atomic dq key-padding mask", rn(39, 32), rn(39, 32), rn(39, 32), mask=kp))
    # other tile shapes, with and without tail tiles, both backward schemes (what a sweep may pick)
    kp45 = torch.rand(B, 1, 1, 45) > 0.4
    cfg = lambda bm, bn, tail: {key: (bm, bn, 4, 1, tail) for key in ct.CONFIGS}
    ct.set_configs(cfg(32, 16, False), dict.fromkeys(ct.BWD_MODE, "recompute"))
    ok.append(case("tiles 32x16 no tail", rn(45, 16), rn(45, 16), rn(45, 16), mask=kp45))
    ct.set_configs(cfg(16, 32, True), dict.fromkeys(ct.BWD_MODE, "atomic"))
    ok.append(case("tiles 16x32 tail atomic", rn(45, 16), rn(45, 16), rn(45, 16), mask=kp45))
    sys.exit(0 if all(ok) else 1)
    """
)


@needs_triton
@needs_interpreter
def test_kernels_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-c", _INTERP_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" ok") == 14, res.stdout


@needs_triton
def test_custom_ops_opcheck_under_interpreter():
    """Schema, autograd registration and fake (meta) implementations of both op registrations."""
    script = textwrap.dedent(
        """
        import torch
        from cogdiff.kernels import cog_triton as ct
        ct.set_configs({key: (16, 16, 4, 1, True) for key in ct.CONFIGS})
        q, k, v = (torch.randn(1, 2, 20, 16, dtype=torch.float16, requires_grad=True) for _ in range(3))
        mask = torch.rand(1, 1, 1, 20) > 0.3
        for op in (torch.ops.cogdiff.cog_attn_fwd, torch.ops.cogdiff.cog_attn_opaque_fwd):
            torch.library.opcheck(op.default, (q, k, v, mask, 0.25),
                                  test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
            print("opcheck ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.count("opcheck ok") == 2, res.stdout + res.stderr


# ------------------------------------------------------------------------------------ GPU


def _gpu_case(b, h, lq, lk, d, dtype, mask=None, scale=None, qs=1.0):
    from cogdiff.kernels.cog_triton import cog_attention_triton

    dev = "cuda"
    q = (torch.randn(b, h, lq, d, device=dev) * qs).to(dtype).requires_grad_()
    k = (torch.randn(b, h, lk, d, device=dev) * qs).to(dtype).requires_grad_()
    v = torch.randn(b, h, lk, d, device=dev).to(dtype).requires_grad_()
    out = cog_attention_triton(q, k, v, mask, scale)
    do = torch.randn_like(out)
    out.backward(do)
    r = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = cog_attention_reference(*r, mask, 0.0, scale)
    ref.backward(do.double())
    return [rel(out, ref)] + [rel(x.grad, y.grad) for x, y in zip((q, k, v), r)]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,d,lq,lk",
    [(dt, d, 258, 258) for dt in (torch.bfloat16, torch.float16) for d in (32, 64, 128)]
    + [(torch.bfloat16, 64, 1026, 1026), (torch.float16, 128, 100, 77), (torch.bfloat16, 72, 130, 200)],
)
def test_gpu_matches_float64(dtype, d, lq, lk):
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    errs = _gpu_case(2, 3, lq, lk, d, dtype)
    assert all(math.isfinite(e) and e < tol for e in errs), errs


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("regime", ["near_zero", "large", "key_padding", "full_mask", "scale"])
def test_gpu_regimes(regime):
    b, h, n, d = 2, 4, 258, 64
    kw = {}
    if regime == "near_zero":
        kw["qs"] = 1e-2
    elif regime == "large":
        kw["qs"] = 3.0
    elif regime == "key_padding":
        kw["mask"] = torch.rand(b, 1, 1, n, device="cuda") > 0.3
    elif regime == "full_mask":
        m = torch.rand(b, h, n, n, device="cuda") > 0.5
        m[0, 0, 7] = False
        kw["mask"] = m
    else:
        kw["scale"] = 0.05
    errs = _gpu_case(b, h, n, n, d, torch.bfloat16, **kw)
    assert all(math.isfinite(e) and e < 3e-2 for e in errs), errs


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compile_op", ["triton_op", "custom_op"])
def test_gpu_auto_picks_kernel_and_compiles(compile_op, monkeypatch):
    from cogdiff.kernels import cog_triton
    from cogdiff.kernels.cog_triton import cog_attention_triton, supports

    monkeypatch.setattr(cog_triton, "COMPILE_OP", compile_op)
    torch._dynamo.reset()

    q, k, v = (torch.randn(2, 4, 258, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert supports(q, k, v) and not supports(q, k, v, dropout_p=0.1) and not supports(q.float(), k, v)
    fused = cog_attention_triton(q, k, v)
    assert torch.equal(cog_attention(q, k, v), fused)  # auto -> triton
    q.requires_grad_()
    f = torch.compile(lambda q, k, v: cog_attention(q, k, v), fullgraph=True)
    out = f(q, k, v)
    assert rel(out, fused) < 1e-3  # Inductor launches the same kernels itself
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def _cog_block(d=128, heads=2):
    """A small Cog attention block (qkv projection -> fused Cog attention -> output projection)."""
    from cogdiff.models.uvit import UViTAttention

    torch.manual_seed(0)
    m = UViTAttention(d, heads, attention_type="cog").cuda()
    m.impl = "triton"
    return m


def _rel_close(a, b, tol=2e-3):
    return rel(a, b) < tol


@needs_cuda
@pytest.mark.gpu
def test_gpu_cuda_graph_capture_matches_eager():
    """fwd + bwd of a Cog block captured in a torch.cuda.CUDAGraph, replayed on new inputs == eager."""
    m = _cog_block()
    params = list(m.parameters())

    def step(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(x).float().square().mean()
        return (loss, *torch.autograd.grad(loss, [x, *params]))

    static_x = torch.randn(4, 258, 128, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (kernel compilation) outside the capture
        for _ in range(2):
            step(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(static_x)
    for _ in range(2):
        x = torch.randn_like(static_x)
        with torch.no_grad():
            static_x.copy_(x)
        graph.replay()
        ref = step(x.requires_grad_())
        assert all(_rel_close(a, b) for a, b in zip(static_out, ref)), [rel(a, b) for a, b in zip(static_out, ref)]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compile_op", ["triton_op", "custom_op"])
def test_gpu_reduce_overhead_compile_uses_graphs_and_matches_eager(compile_op, monkeypatch):
    from torch._dynamo.utils import counters

    from cogdiff.kernels import cog_triton

    monkeypatch.setattr(cog_triton, "COMPILE_OP", compile_op)
    torch._dynamo.reset()
    m = _cog_block()
    compiled = torch.compile(m, mode="reduce-overhead")
    counters.clear()
    for _ in range(4):  # the first calls warm up and record, later ones replay
        torch.compiler.cudagraph_mark_step_begin()
        x = torch.randn(4, 258, 128, device="cuda", requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = compiled(x)
        y.float().square().mean().backward()
        got = [y.detach().clone(), x.grad.clone(), *[p.grad.clone() for p in m.parameters()]]
        m.zero_grad(set_to_none=True)
        x2 = x.detach().clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y2 = m(x2)
        y2.float().square().mean().backward()
        ref = [y2.detach(), x2.grad, *[p.grad for p in m.parameters()]]
        m.zero_grad(set_to_none=True)
        assert all(_rel_close(a, b, 1e-2) for a, b in zip(got, ref)), [rel(a, b) for a, b in zip(got, ref)]
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])

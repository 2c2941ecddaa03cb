"""Cog Attention op: numerics against float64 references, masks, autocast, gradients, processor."""

import math

import pytest
import torch
import torch.nn.functional as F

from cogdiff.attention import (
    CogAttnProcessor,
    attention,
    available_cog_impls,
    cog_attention,
    cog_weights,
    convert_to_cog_attention,
    register_cog_impl,
    softmax_attention,
    unregister_cog_impl,
)


def ref64(q, k, v, mask=None, scale=None):
    """Independent float64 reference: w = sign(s) * exp(|s|) / sum exp(|s|), written naively."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    e = torch.exp(s.abs() - s.abs().amax(-1, keepdim=True))
    if mask is not None:
        e = e * mask
    w = torch.sign(s) * e / e.sum(-1, keepdim=True).clamp_min(1e-300)
    return w @ v


def signexp_form(q, k, v):
    """The paper's v3 text: SignExp(p_j) = s_j exp(s_j p_j - max|p|), normalised by sum |SignExp|."""
    p = (q @ k.transpose(-1, -2)).double() / math.sqrt(q.shape[-1])
    s = torch.sign(p)
    se = s * torch.exp(s * p - p.abs().amax(-1, keepdim=True))
    return (se / se.abs().sum(-1, keepdim=True)) @ v.double()


def rand_qkv(b=2, h=3, lq=7, lk=9, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    return q, k, v


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_matches_float64_reference_fp32():
    q, k, v = rand_qkv()
    assert rel_err(cog_attention(q, k, v), ref64(q, k, v)) < 1e-5


def test_matches_signexp_form_and_custom_scale():
    q, k, v = rand_qkv()
    assert rel_err(cog_attention(q, k, v), signexp_form(q, k, v)) < 1e-5
    assert rel_err(cog_attention(q, k, v, scale=0.3), ref64(q, k, v, scale=0.3)) < 1e-5


def test_weights_are_signed_and_abs_sums_to_one():
    q, k, _ = rand_qkv()
    w = cog_weights(q, k)
    assert (w < 0).any() and (w > 0).any()
    torch.testing.assert_close(w.abs().sum(-1), torch.ones(w.shape[:-1]), atol=1e-6, rtol=0)
    assert (w.sum(-1).abs() <= 1 + 1e-6).all()


def test_differs_from_softmax():
    q, k, v = rand_qkv()
    assert rel_err(cog_attention(q, k, v), softmax_attention(q, k, v)) > 0.1


def test_boolean_mask_zeroes_masked_keys():
    q, k, v = rand_qkv()
    mask = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(0)) > 0.4
    mask[..., 0] = True  # no fully masked rows here
    out = cog_attention(q, k, v, attn_mask=mask)
    assert rel_err(out, ref64(q, k, v, mask=mask.double())) < 1e-5
    # changing v at a masked key must not change the output
    v3 = v.clone()
    v3[:, :, 3] += 50.0
    m3 = torch.ones(1, 1, 1, 9, dtype=torch.bool)
    m3[..., 3] = False
    torch.testing.assert_close(cog_attention(q, k, v3, attn_mask=m3), cog_attention(q, k, v, attn_mask=m3))


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = rand_qkv()
    mask = torch.ones(1, 1, 7, 9, dtype=torch.bool)
    mask[..., 2, :] = False
    out = cog_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert (out[:, :, 2] == 0).all()
    assert (out[:, :, 3] != 0).any()


def test_float_mask_rejected():
    q, k, v = rand_qkv()
    with pytest.raises(TypeError, match="boolean masks only"):
        cog_attention(q, k, v, attn_mask=torch.zeros(1, 1, 7, 9))


def test_bad_shapes_rejected():
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="batch, heads, tokens, head_dim"):
        cog_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="incompatible"):
        cog_attention(q, k[..., :8], v)


def test_bf16_autocast_huge_logits_finite_and_fp32_softmax():
    q, k, v = rand_qkv(d=16)
    q = q * 300.0  # |s| up to ~1e4
    k = k * 10.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cog_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    s = (q.double() @ k.double().transpose(-1, -2)) / 4
    assert s.abs().max() > 5e3
    # with logits this large the weights are one-hot on the largest |s|: out = sign(s*) v*
    assert rel_err(out, ref64(q.bfloat16(), k.bfloat16(), v.bfloat16())) < 2e-2


def test_gradcheck_float64():
    q, k, v = (t.double().requires_grad_() for t in rand_qkv(b=1, h=2, lq=4, lk=5, d=3))
    assert torch.autograd.gradcheck(lambda a, b, c: cog_attention(a, b, c), (q, k, v))
    mask = torch.tensor([True, True, False, True, True]).view(1, 1, 1, 5)
    assert torch.autograd.gradcheck(lambda a, b, c: cog_attention(a, b, c, attn_mask=mask), (q, k, v))


def test_weight_flips_sign_across_zero_score():
    # sign() has zero gradient and the weight jumps from -w to +w as a score crosses 0.
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    v = torch.eye(2, dtype=torch.float64).view(1, 1, 2, 2)
    qs = [torch.tensor([[[[eps, 2.0]]]], dtype=torch.float64) for eps in (-1e-6, 1e-6)]
    outs = [cog_attention(q, k, v, scale=1.0) for q in qs]
    assert outs[0][..., 0].item() < 0 < outs[1][..., 0].item()
    torch.testing.assert_close(outs[0][..., 0].abs(), outs[1][..., 0].abs(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("fn", [cog_attention, softmax_attention])
@pytest.mark.parametrize(
    "case,exc,match",
    [
        ("int64", TypeError, "floating-point"),
        ("heads", ValueError, "same \\(batch, heads\\)"),
        ("batch", ValueError, "same \\(batch, heads\\)"),
        ("mask_shape", ValueError, "does not broadcast"),
        ("mask_dims", ValueError, "does not broadcast"),
        ("no_keys", ValueError, "0 tokens"),
    ],
)
def test_bad_inputs_give_one_line_errors(fn, case, exc, match):
    q, k, v = rand_qkv()  # (2, 3, 7, 16) queries, 9 keys
    mask = None
    if case == "int64":
        q, k, v = (torch.randint(-3, 3, x.shape) for x in (q, k, v))
    elif case == "heads":
        k, v = k[:, :2], v[:, :2]
    elif case == "batch":
        k, v = k[:1], v[:1]
    elif case == "mask_shape":
        mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)  # 8 != 9 keys
    elif case == "mask_dims":
        mask = torch.ones(1, 2, 3, 7, 9, dtype=torch.bool)
    else:
        k, v = k[:, :, :0], v[:, :, :0]
    with pytest.raises(exc, match=match) as err:
        fn(q, k, v, attn_mask=mask)
    assert "\n" not in str(err.value)


def test_good_masks_still_accepted():
    q, k, v = rand_qkv()
    for shape in [(9,), (7, 9), (2, 1, 1, 9), (1, 3, 7, 1), (2, 3, 7, 9)]:
        mask = torch.rand(shape) > 0.3
        assert rel_err(cog_attention(q, k, v, attn_mask=mask), ref64(q, k, v, mask)) < 1e-5


def test_dispatch_by_name_and_registry():
    q, k, v = rand_qkv()
    torch.testing.assert_close(attention(q, k, v, attention_type="cog"), cog_attention(q, k, v))
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="attention_type"):
        attention(q, k, v, attention_type="linear")
    with pytest.raises(ValueError, match="unknown Cog attention impl"):
        cog_attention(q, k, v, impl="nope")
    calls = []

    def fake(q, k, v, m, p, s):
        calls.append(1)
        return torch.zeros_like(q)

    register_cog_impl("test_fake", fake, supports=lambda q, *a: q.shape[-2] == 7)
    try:
        assert (cog_attention(q, k, v) == 0).all() and calls  # auto picks the supporting impl
        assert rel_err(cog_attention(q, k, v, impl="reference"), ref64(q, k, v)) < 1e-5
        assert "test_fake" in available_cog_impls()
    finally:
        unregister_cog_impl("test_fake")
    assert "test_fake" not in available_cog_impls()


def _tiny_dit():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    )


def test_processor_on_dit_forward_backward_and_differs():
    dit = _tiny_dit()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([3, 7])
    y = torch.tensor([1, 2])
    base = dit(x, timestep=t, class_labels=y).sample
    n = convert_to_cog_attention(dit)
    assert n == 1
    procs = [m.processor for m in dit.modules() if hasattr(m, "processor")]
    assert procs and all(isinstance(p, CogAttnProcessor) for p in procs)
    out = dit(x, timestep=t, class_labels=y).sample
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert rel_err(out, base) > 1e-3
    out.square().mean().backward()
    grads = [p.grad for p in dit.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_processor_matches_manual_cog_on_attention_module():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(CogAttnProcessor())
    x = torch.randn(2, 5, 16)
    q = attn.to_q(x).view(2, 5, 2, 8).transpose(1, 2)
    k = attn.to_k(x).view(2, 5, 2, 8).transpose(1, 2)
    v = attn.to_v(x).view(2, 5, 2, 8).transpose(1, 2)
    expect = attn.to_out[0](ref64(q, k, v).float().transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expect, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no diffusers Attention"):
        convert_to_cog_attention(torch.nn.Linear(2, 2))

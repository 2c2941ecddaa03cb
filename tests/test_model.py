"""U-ViT backbone: structure, parameter count, shapes, checkpointing, save/load, ablation switches (named softmax
placements, qk_norm, cog_heads), one-line errors for bad constructor values and labels."""

import pytest
import torch
import torch.nn.functional as F

from cogdiff.attention import cog_attention, softmax_attention
from cogdiff.models import UViTModel, default_softmax_layers, num_blocks, resolve_softmax_layers, uvit, uvit_config

TINY = dict(sample_size=8, in_channels=3, patch_size=2, embed_dim=32, depth=2, num_heads=2)


def tiny(**kw):
    return UViTModel(**{**TINY, **kw})


def test_s2_parameter_count_matches_uvit_paper():
    # U-ViT-S/2 for CIFAR-10: 44.3M parameters (Bao et al., configs/cifar10_uvit_small.py).
    with torch.device("meta"):
        m = uvit("S/2")
    n = sum(p.numel() for p in m.parameters())
    assert round(n / 1e6, 1) == 44.3
    with torch.device("meta"):
        cog = uvit("S/2", attention_type="cog")
    assert sum(p.numel() for p in cog.parameters()) == n  # Cog adds no parameters


def test_presets_and_bad_preset():
    assert uvit_config("L/2") == dict(embed_dim=1024, depth=20, num_heads=16, patch_size=2)
    assert uvit_config("H/2")["embed_dim"] == 1152 and uvit_config("H/2")["depth"] == 28
    with pytest.raises(ValueError, match="unknown U-ViT preset"):
        uvit_config("XL/2")


def test_softmax_layers_placement():
    assert num_blocks(12) == 13
    assert default_softmax_layers(12, "cog") == [0, 12]
    assert default_softmax_layers(12, "softmax") == []
    with torch.device("meta"):
        m = uvit("S/2", attention_type="cog")
    types = m.attention_types()
    assert types[0] == "softmax" and types[-1] == "softmax"
    assert types[1:-1] == ["cog"] * 11  # mid-block included
    assert m.blocks[0] is m.in_blocks[0] and m.blocks[-1] is m.out_blocks[-1] and m.blocks[6] is m.mid_block
    assert resolve_softmax_layers("in_blocks+first_last", 12, "cog") == [0, 1, 2, 3, 4, 5, 12]
    assert resolve_softmax_layers("out_blocks+first_last", 12, "cog") == [0, 7, 8, 9, 10, 11, 12]
    custom = tiny(depth=4, attention_type="cog", softmax_layers=[2])
    assert custom.attention_types() == ["cog", "cog", "softmax", "cog", "cog"]
    assert tiny(attention_type="softmax").attention_types() == ["softmax"] * 3
    with pytest.raises(ValueError, match="out of range"):
        tiny(attention_type="cog", softmax_layers=[3])


def test_block_attention_is_really_cog():
    m = tiny(attention_type="cog", softmax_layers=[])
    attn = m.mid_block.attn
    x = torch.randn(2, 5, 32)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expect = attn.proj(cog_attention(q, k, v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attn(x), expect)
    not_expect = attn.proj(softmax_attention(q, k, v).transpose(1, 2).reshape(2, 5, 32))
    assert not torch.allclose(attn(x), not_expect, atol=1e-4)


def test_set_cog_impl_checks_the_name():
    m = tiny(attention_type="cog")
    m.set_cog_impl("reference")
    assert {b.attn.impl for b in m.blocks} == {"reference"}
    with pytest.raises(ValueError, match="'nope' is not available here; choose one of auto, reference"):
        m.set_cog_impl("nope")
    assert {b.attn.impl for b in m.blocks} == {"reference"}  # unchanged after the refusal


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(attention_type="cog"),
        dict(num_classes=10, attention_type="cog"),
        dict(in_channels=4, patch_size=4, sample_size=16, mlp_time_embed=True),
        dict(in_channels=1, use_conv_out=False, depth=4),
    ],
)
def test_output_shapes(kw):
    m = tiny(**kw)
    c, s = m.config.in_channels, m.config.sample_size
    x = torch.randn(3, c, s, s)
    y = torch.tensor([0, 5, 10]) if m.config.num_classes else None  # 10 = null label
    out = m(x, torch.tensor([1, 500, 999]), class_labels=y)
    assert out.sample.shape == x.shape
    assert m(x, 7, class_labels=y, return_dict=False)[0].shape == x.shape  # python scalar timestep
    assert m(x, torch.tensor(7), class_labels=y).sample.shape == x.shape  # 0-dim (diffusers pipelines)


def test_timestep_and_label_change_output():
    m = tiny(num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    a = m(x, 10, class_labels=torch.tensor([0, 0])).sample
    b = m(x, 900, class_labels=torch.tensor([0, 0])).sample
    c = m(x, 10, class_labels=torch.tensor([1, 1])).sample
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    # the batch is processed independently per sample
    torch.testing.assert_close(m(x[:1], 10, class_labels=torch.tensor([0])).sample, a[:1], atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    m = tiny()
    with pytest.raises(ValueError, match=r"shape \(batch, 3, 8, 8\), got \(2, 4, 8, 8\)"):
        m(torch.randn(2, 4, 8, 8), 1)
    with pytest.raises(ValueError, match="got \\(2, 3, 16, 16\\)"):
        m(torch.randn(2, 3, 16, 16), 1)
    with pytest.raises(ValueError, match="timestep must be a scalar"):
        m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(2, 3, 8, 8), 1, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        tiny(num_classes=3)(torch.randn(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        tiny(sample_size=9)
    with pytest.raises(ValueError, match="attention_type"):
        tiny(attention_type="linear")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny(num_heads=3)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = tiny(attention_type="cog", depth=4)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 600])

    def grads():
        m.zero_grad()
        m(x, t).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    g0 = grads()
    m.enable_gradient_checkpointing()
    assert m.gradient_checkpointing
    g1 = grads()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


def test_save_load_roundtrip_keeps_attention_type(tmp_path):
    m = tiny(attention_type="cog", depth=4, softmax_layers=[1], num_classes=5).eval()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    r = UViTModel.from_pretrained(tmp_path).eval()
    assert r.attention_types() == m.attention_types() == ["cog", "softmax", "cog", "cog", "cog"]
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 5])
    torch.testing.assert_close(r(x, 42, class_labels=y).sample, m(x, 42, class_labels=y).sample, atol=0, rtol=0)


# ---------------------------------------------------------------- named placements, qk_norm, cog_heads


@pytest.mark.parametrize(
    "name,expect",
    [
        ("first_last", [0, 12]),
        ("first2_last2", [0, 1, 11, 12]),
        ("first_last_mid", [0, 6, 12]),
        ("first_last+mid", [0, 6, 12]),
        ("first2_last2+mid", [0, 1, 6, 11, 12]),
        ("none", []),
        ("all", list(range(13))),
    ],
)
def test_named_softmax_placements(name, expect):
    assert resolve_softmax_layers(name, 12, "cog") == expect
    with torch.device("meta"):
        m = uvit("S/2", attention_type="cog", softmax_layers=name)
    assert m.config.softmax_layers == name  # the config keeps what the user gave
    assert [i for i, a in enumerate(m.attention_types()) if a == "softmax"] == expect


def test_unknown_placement_lists_the_names():
    names = "unknown softmax_layers 'first_lst'.*first_last, first2_last2, .*'first_last\\+mid'"
    with pytest.raises(ValueError, match=names):
        tiny(attention_type="cog", softmax_layers="first_lst")
    with pytest.raises(ValueError, match="block indices"):
        tiny(attention_type="cog", softmax_layers=[0.5])
    with pytest.raises(ValueError, match=r"softmax_layers \[-1, 1\] out of range"):
        UViTModel(**{**TINY, "depth": 1}, attention_type="cog", softmax_layers="first2_last2")


def manual_attention(attn, x, norm=None, n_cog=None):
    """Attention written out: q, k (optionally normalised per head), first n_cog heads Cog, the rest softmax."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    if norm is not None:
        q, k = norm(q, attn.norm_q), norm(k, attn.norm_k)
    s = q @ k.transpose(-2, -1) / (d // h) ** 0.5
    n_cog = attn.num_cog_heads if n_cog is None else n_cog
    cog = torch.sign(s[:, :n_cog]) * torch.softmax(s[:, :n_cog].abs(), -1)
    w = torch.cat([cog, torch.softmax(s[:, n_cog:], -1)], 1)
    return attn.proj((w @ v).transpose(1, 2).reshape(b, n, d))


def layernorm(x, mod):
    return F.layer_norm(x, x.shape[-1:], mod.weight, mod.bias, 1e-6)


def rmsnorm(x, mod):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * mod.weight


@pytest.mark.parametrize("attention_type", ["cog", "softmax"])
@pytest.mark.parametrize("qk_norm,norm,n_params", [("layernorm", layernorm, 4 * 16), ("rmsnorm", rmsnorm, 2 * 16)])
def test_qk_norm_normalises_q_and_k_per_head(attention_type, qk_norm, norm, n_params):
    torch.manual_seed(0)
    m = tiny(attention_type=attention_type, softmax_layers=[], qk_norm=qk_norm)
    base = tiny(attention_type=attention_type, softmax_layers=[])
    per_block = sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in base.parameters())
    assert per_block == n_params * len(m.blocks)  # learnable per-head-dim scale (and bias for LayerNorm)
    attn = m.mid_block.attn
    with torch.no_grad():
        attn.norm_q.weight.uniform_(0.5, 2.0)
        attn.norm_k.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 32) * 3
    torch.testing.assert_close(attn(x), manual_attention(attn, x, norm), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attn(x), manual_attention(attn, x), atol=1e-3)
    m(torch.randn(2, 3, 8, 8), 10).sample.square().mean().backward()
    assert attn.norm_q.weight.grad.abs().sum() > 0 and attn.norm_k.weight.grad.abs().sum() > 0


def test_qk_norm_none_adds_nothing():
    assert tiny().state_dict().keys() == tiny(qk_norm="none").state_dict().keys()
    assert not any("norm_q" in n for n in tiny(attention_type="cog").state_dict())
    with pytest.raises(ValueError, match="qk_norm must be one of none, layernorm, rmsnorm, got 'l2'"):
        tiny(qk_norm="l2")


def test_cog_heads_split_the_heads():
    torch.manual_seed(0)
    m = tiny(attention_type="cog", num_heads=4, cog_heads=0.5)  # default placement: block 1 (mid) is Cog
    assert m.blocks[0].attn.head_types() == ["softmax"] * 4
    attn = m.mid_block.attn
    assert attn.head_types() == ["cog", "cog", "softmax", "softmax"] and m.attention_types()[1] == "cog"
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.3)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(attn(x), manual_attention(attn, x, n_cog=2), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attn(x), manual_attention(attn, x, n_cog=4), atol=1e-4)
    assert tiny(attention_type="cog", num_heads=4, cog_heads=1.0).mid_block.attn.head_types() == ["cog"] * 4


@pytest.mark.parametrize("value,match", [(0.3, "whole number of the 2 heads"), (0, "fraction in"), (1.5, "fraction in"),
                                         (True, "fraction in"), ("half", "fraction in")])
def test_bad_cog_heads(value, match):
    with pytest.raises(ValueError, match=match):
        tiny(attention_type="cog", cog_heads=value)


def test_cog_heads_need_cog_attention():
    with pytest.raises(ValueError, match="cog_heads splits the heads of Cog blocks; set attention_type='cog'"):
        tiny(attention_type="softmax", cog_heads=0.5)


def public_config(cfg):
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention_type="cog", qk_norm="rmsnorm", num_classes=3),
        dict(attention_type="cog", qk_norm="layernorm", cog_heads=0.5, num_heads=4, softmax_layers="none"),
        dict(attention_type="cog", depth=4, softmax_layers="first_last+mid"),
    ],
)
def test_ablation_models_save_and_reload(tmp_path, kw):
    torch.manual_seed(0)
    m = tiny(**kw).eval()
    with torch.no_grad():  # non-default norm scales must survive the round trip
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.save_pretrained(tmp_path)
    r = UViTModel.from_pretrained(tmp_path).eval()
    assert public_config(r.config) == public_config(m.config)
    assert r.attention_types() == m.attention_types()
    assert [b.attn.head_types() for b in r.blocks] == [b.attn.head_types() for b in m.blocks]
    x = torch.randn(2, 3, 8, 8)
    y = torch.tensor([0, 3]) if m.config.num_classes else None
    torch.testing.assert_close(r(x, 42, class_labels=y).sample, m(x, 42, class_labels=y).sample, atol=0, rtol=0)


# ------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(patch_size=0), "patch_size must be a positive integer, got 0"),
        (dict(embed_dim=-8), "embed_dim must be a positive integer, got -8"),
        (dict(num_heads=3), "embed_dim 32 must be divisible by num_heads 3"),
        (dict(num_heads=0), "num_heads must be a positive integer"),
        (dict(sample_size=9), "sample_size 9 must be divisible by patch_size 2"),
        (dict(depth=0), "depth must be a positive integer"),
        (dict(patch_size=2.0), "patch_size must be a positive integer, got 2.0"),
        (dict(in_channels=True), "in_channels must be a positive integer"),
        (dict(num_classes=0), "num_classes must be a positive integer or None"),
        (dict(mlp_ratio=0.0), "mlp_ratio must be positive"),
        (dict(timestep_scale=float("nan")), "timestep_scale must be a finite number"),
    ],
)
def test_bad_constructor_values_are_one_line_errors(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        tiny(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("labels", [torch.tensor([0, 11]), torch.tensor([-1, 3]), torch.tensor([1.5, 2.0]), 11])
@pytest.mark.parametrize("training", [False, True])
def test_out_of_range_labels_are_one_line_errors(labels, training):
    m = tiny(num_classes=10).train(training)
    with pytest.raises(ValueError, match=r"class_labels must be whole numbers in \[0, 10\] \(10 = the null label") as e:
        m(torch.randn(2, 3, 8, 8), 5, class_labels=labels)
    assert "\n" not in str(e.value)
    out = m(torch.randn(2, 3, 8, 8), 5, class_labels=torch.tensor([10.0, 0.0]))  # null label, integral floats
    assert out.sample.shape == (2, 3, 8, 8)

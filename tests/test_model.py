"""U-ViT backbone: structure, parameter count, shapes, checkpointing, save/load, errors."""

import pytest
import torch

from cogdiff.attention import cog_attention, softmax_attention
from cogdiff.models import UViTModel, default_softmax_layers, num_blocks, uvit, uvit_config

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

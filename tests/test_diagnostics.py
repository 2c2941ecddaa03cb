"""cogdiff.analysis.diagnostics: the fixed probe, loss per timestep band (hand-checked), per-block statistics
against independent computations, no effect on the model, the RNGs or a training run."""

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from cogdiff.analysis import attention_hooks, block_stats, capture_attention, diagnostics_row, loss_by_t, make_probe
from cogdiff.analysis.diagnostics import BLOCK_KEYS, Probe, stratified_timesteps, timestep_bin
from cogdiff.models import UViTModel


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = UViTModel(**{**dict(sample_size=8, in_channels=3, patch_size=2, embed_dim=32, depth=2, num_heads=2), **kw})
    with torch.no_grad():  # larger weights than the init so scores are far from 0
        for b in m.blocks:
            b.attn.qkv.weight.normal_(0, 0.3)
    return m


def probe_for(n=20, seed=3, labels=None, **sched):
    x0 = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return make_probe(x0, labels, DDPMScheduler(num_train_timesteps=1000, **sched), seed=seed)


def rng_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


class ConstantModel(torch.nn.Module):
    """Predicts zeros, so each sample's MSE is the mean square of its target."""

    def forward(self, sample, timestep, class_labels=None):
        return SimpleNamespace(sample=torch.zeros_like(sample))


def test_loss_by_t_hand_checked():
    t = torch.tensor([5, 150, 199, 999, 100])
    target = torch.ones(5, 1, 2, 2) * torch.tensor([1.0, 2.0, 4.0, 3.0, 0.5]).view(5, 1, 1, 1)
    target[1, 0, 0, 0] = 0.0  # sample 1: squares 0, 4, 4, 4 -> MSE 3
    probe = Probe(torch.zeros(5, 1, 2, 2), t, target, target, None, 1000, 10)
    got = loss_by_t(ConstantModel(), probe)
    # band 0: sample 0 (1); band 1: samples 1, 2, 4 -> (3 + 16 + 0.25) / 3; band 9: sample 3 (9); others empty
    assert got == [1.0, pytest.approx((3 + 16 + 0.25) / 3), None, None, None, None, None, None, None, 9.0]
    assert loss_by_t(ConstantModel(), probe, bins=2) == [pytest.approx((1 + 3 + 16 + 0.25) / 4), 9.0]


@pytest.mark.parametrize("n,bins,num_t", [(60, 10, 1000), (64, 10, 1000), (30, 7, 100)])
def test_stratified_timesteps_cover_every_band(n, bins, num_t):
    t = stratified_timesteps(n, bins, num_t, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < num_t
    counts = torch.bincount(timestep_bin(t, bins, num_t), minlength=bins)
    assert counts.max() - counts.min() <= (0 if n % bins == 0 else 1) and counts.sum() == n
    assert (timestep_bin(t, bins, num_t) == torch.arange(n) % bins).all()


def test_make_probe_is_fixed_and_leaves_global_rngs_alone():
    torch.manual_seed(0)
    before = rng_states()
    a, b, c = probe_for(seed=3), probe_for(seed=3), probe_for(seed=4)
    after = rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    for key in ("x_t", "t", "noise", "target"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.noise, c.noise) and not torch.equal(a.t, c.t)


def test_make_probe_noises_like_the_training_loss():
    sched = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    p = make_probe(x0, None, sched, seed=0)
    abar = sched.alphas_cumprod[p.t].view(-1, 1, 1, 1)
    torch.testing.assert_close(p.x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * p.noise)
    assert torch.equal(p.target, p.noise)
    v = make_probe(x0, None, DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"), seed=0)
    torch.testing.assert_close(v.target, abar.sqrt() * v.noise - (1 - abar).sqrt() * x0)


def test_make_probe_bad_inputs():
    sched = DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(ValueError, match="at least bins=10 images"):
        make_probe(torch.zeros(4, 3, 8, 8), None, sched, seed=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        make_probe(torch.zeros(10, 3, 8, 8), torch.zeros(3), sched, seed=0)


def test_loss_by_t_of_a_real_model_matches_a_direct_computation():
    m = tiny(attention_type="cog", num_classes=4)
    labels = torch.arange(20) % 5  # 4 = the null label
    p = probe_for(labels=labels)
    with torch.no_grad():
        per = F.mse_loss(m.eval()(p.x_t, p.t, class_labels=labels).sample, p.target, reduction="none").mean((1, 2, 3))
    expect = [per[timestep_bin(p.t, 10, 1000) == i].mean().item() for i in range(10)]
    assert loss_by_t(m, p) == pytest.approx(expect, rel=1e-5)


def reference_block_stats(model, probe):
    """The same numbers from the captured weights (cogdiff.attention's weight functions) and plain hooks."""
    outs = {}

    def keep(i, attn, x, out):
        outs[i] = out.detach()

    with torch.no_grad(), capture_attention(model) as cap, attention_hooks(model, keep):
        model(probe.x_t, probe.t, class_labels=probe.labels)
    rows = []
    for i, blk in enumerate(model.blocks):
        w = cap.get(block=i)  # (B, H, N, N), signed for Cog heads
        p = w.abs()  # softmax(|s|) for Cog heads, softmax(s) for softmax heads
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item()
        rows.append(dict(entropy=entropy, neg_share=(w < 0).float().mean().item(),
                         out_rms=outs[i].square().mean().sqrt().item(),
                         qkv_weight_norm=blk.attn.qkv.weight.norm().item()))
    return rows


@pytest.mark.parametrize("kw", [dict(attention_type="cog", depth=4), dict(attention_type="softmax"),
                                dict(attention_type="cog", softmax_layers="none", cog_heads=0.5, num_heads=4),
                                dict(attention_type="cog", qk_norm="rmsnorm")])
def test_block_stats_match_independent_computations(kw):
    m = tiny(**kw).eval()
    p = probe_for()
    got = block_stats(m, p)
    assert [b["attention"] for b in got] == m.attention_types()
    ref = reference_block_stats(m, p)
    n_tokens = p.x_t.shape[-1] ** 2 // 4 + 1
    for i, (g, r) in enumerate(zip(got, ref)):
        assert set(g) == {"attention", *BLOCK_KEYS}
        for key in r:
            assert g[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), (i, key)
        assert 0 < g["entropy"] < math.log(n_tokens)
        assert g["logit_absmean"] <= g["logit_absmax"]
        if m.blocks[i].attn.attention_type == "softmax":
            assert g["neg_share"] == 0
        else:
            assert 0.05 < g["neg_share"] < 0.95


def test_logits_are_the_scores_after_qk_norm():
    # LayerNorm'd q, k (unit scale, zero bias at init) have norm sqrt(Dh): |q.k| / sqrt(Dh) <= sqrt(Dh)
    m = tiny(attention_type="cog", qk_norm="layernorm", embed_dim=32, num_heads=2)
    plain = tiny(attention_type="cog", embed_dim=32, num_heads=2)
    p = probe_for()
    head_dim = 16
    assert max(b["logit_absmax"] for b in block_stats(m, p)) <= math.sqrt(head_dim) + 1e-4
    assert max(b["logit_absmax"] for b in block_stats(plain, p)) > math.sqrt(head_dim)


def test_diagnostics_row_is_json_and_leaves_the_model_unchanged():
    m, ema = tiny(attention_type="cog", depth=4), tiny(seed=1, attention_type="cog", depth=4)
    p = probe_for()
    m.train()
    ref = m.eval()(p.x_t, p.t).sample
    m.train()
    before = rng_states()
    row = diagnostics_row(500, m, ema.eval(), p)
    after = rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert m.training and not ema.training  # modes restored
    assert not m._forward_hooks and all(not b.attn._forward_hooks for b in m.blocks)
    assert torch.equal(m.eval()(p.x_t, p.t).sample, ref)
    line = json.loads(json.dumps(row, allow_nan=False))
    assert line["step"] == 500 and len(line["loss_by_t"]) == 10 and len(line["blocks"]) == 5
    assert line["loss_by_t"] == loss_by_t(m, p) and line["loss_by_t_ema"] == loss_by_t(ema, p)
    assert line["loss_by_t"] != line["loss_by_t_ema"]
    assert "loss_by_t_ema" not in diagnostics_row(1, m, None, p)


def test_diagnostics_between_steps_give_bit_identical_weights():
    def train(with_diag):
        m = tiny(attention_type="cog")
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        probe = probe_for(n=10, seed=7)
        torch.manual_seed(123)  # the training stream uses the global RNG here
        for step in range(3):
            x0 = torch.randn(4, 3, 8, 8)
            t = torch.randint(0, 1000, (4,))
            loss = m(x0, t).sample.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if with_diag:
                diagnostics_row(step, m, m, probe)
        return m.state_dict()

    a, b = train(False), train(True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_blocks_by_band_are_the_block_stats_of_that_band_alone():
    """The per-band numbers equal block_stats on a probe holding only that band's samples (the lowest- and the
    highest-noise band), and differ from the whole-probe numbers."""
    from dataclasses import replace

    m = tiny(attention_type="cog", depth=4).eval()
    p = probe_for(n=30)
    row = diagnostics_row(7, m, None, p)
    assert set(row["blocks_by_band"]) == {"0", "9"}
    for band in (0, 9):
        keep = timestep_bin(p.t, 10, 1000) == band
        assert int(keep.sum()) == 3
        sub = replace(p, x_t=p.x_t[keep], t=p.t[keep], noise=p.noise[keep], target=p.target[keep])
        got, ref = row["blocks_by_band"][str(band)], block_stats(m, sub)
        for g, r in zip(got, ref):
            assert g.keys() == r.keys() and g["attention"] == r["attention"]
            for key in BLOCK_KEYS:
                assert g[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), (band, key)
    assert row["blocks_by_band"]["0"][1]["logit_absmean"] != pytest.approx(row["blocks"][1]["logit_absmean"])

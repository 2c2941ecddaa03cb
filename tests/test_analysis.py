"""cogdiff.analysis: hooks leave results untouched and record the weights actually used; measures
against hand-computed references; plots write readable PNGs; run folders are read back."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from cogdiff import UViTModel, UViTPipeline
from cogdiff.analysis import (
    capture_attention,
    capture_block_outputs,
    load_run,
    mean_pairwise_cosine,
    negative_stats,
    negative_stats_table,
    plots,
    query_attention_map,
    similarity_by_depth,
    token_similarity,
)
from cogdiff.rundir import RunDir


def tiny(attention_type="cog", num_classes=None, depth=2):
    torch.manual_seed(0)
    m = UViTModel(sample_size=8, in_channels=1, patch_size=2, embed_dim=32, depth=depth, num_heads=2,
                  attention_type=attention_type, num_classes=num_classes)
    # larger weights than the init so scores are far from 0 and Cog weights clearly non-uniform
    with torch.no_grad():
        for b in m.blocks:
            b.attn.qkv.weight.normal_(0, 0.3)
    return m.eval()


def pipe_for(model, sched=DDPMScheduler):
    p = UViTPipeline(model, sched(num_train_timesteps=100))
    p.set_progress_bar_config(disable=True)
    return p


def n_hooks(model):
    n = len(model._forward_pre_hooks) + len(model._forward_hooks)
    for mod in model.modules():
        n += len(mod._forward_hooks) + len(mod._forward_pre_hooks)
    return n


@pytest.mark.parametrize("attention_type", ["cog", "softmax"])
def test_pipeline_output_bit_identical_and_hooks_removed(attention_type):
    model = tiny(attention_type, num_classes=3)
    pipe = pipe_for(model)
    kw = dict(batch_size=2, num_inference_steps=3, guidance_scale=2.0, class_labels=[0, 2], output_type="pt")
    ref = pipe(generator=torch.Generator().manual_seed(1), **kw).images
    with capture_attention(model, max_batch=1) as cap, capture_block_outputs(model) as rec:
        assert n_hooks(model) > 0
        out = pipe(generator=torch.Generator().manual_seed(1), **kw).images
    assert torch.equal(ref, out)
    assert n_hooks(model) == 0
    # one record per (block, step); timesteps are what the scheduler passed, in order
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert cap.timesteps == ts and cap.calls == ts and rec.timesteps == ts
    assert len(cap.records) == 3 * len(model.blocks)
    assert cap.records[0].weights.shape == (1, 2, 2 + 16, 2 + 16)  # max_batch=1 of the 4-sample CFG batch
    assert [r.attention_type for r in cap.records[:3]] == model.attention_types()
    assert rec.states[0][0].shape == (4, 18, 32)  # guided batch: [cond | null]


def test_hooks_removed_on_error():
    model = tiny()
    with pytest.raises(RuntimeError):
        with capture_attention(model), capture_block_outputs(model):
            raise RuntimeError("boom")
    assert n_hooks(model) == 0


def test_captured_weights_are_the_weights_used():
    """Weights @ v through proj reproduces the attention module's output, and the weights equal an
    independent float64 sign(s)*softmax(|s|) from the module's input."""
    model = tiny("cog")
    attn_in, attn_out = {}, {}

    def keep(j):
        def hook(module, inputs, output):
            attn_in[j], attn_out[j] = inputs[0].detach(), output.detach()
        return hook

    handles = [b.attn.register_forward_hook(keep(j)) for j, b in enumerate(model.blocks)]
    x = torch.randn(2, 1, 8, 8)
    with capture_attention(model) as cap, torch.no_grad():
        model(x, 37)
    for h in handles:
        h.remove()
    assert cap.timesteps == [37.0]
    for j, blk in enumerate(model.blocks):
        w = cap.get(j, 37.0)
        xin = attn_in[j].double()
        b, n, d = xin.shape
        qkv = (xin @ blk.attn.qkv.weight.double().T).reshape(b, n, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = q @ k.transpose(-1, -2) / math.sqrt(d // 2)
        ref = (
            torch.softmax(s, -1) if blk.attn.attention_type == "softmax" else torch.sign(s) * torch.softmax(s.abs(), -1)
        )
        torch.testing.assert_close(w.double(), ref, atol=2e-6, rtol=1e-5)
        y = (w.double() @ v).transpose(1, 2).reshape(
            b, n, d
        ) @ blk.attn.proj.weight.double().T + blk.attn.proj.bias.double()
        torch.testing.assert_close(y.float(), attn_out[j], atol=2e-5, rtol=1e-4)
        if blk.attn.attention_type == "cog":
            assert (w < 0).any() and torch.allclose(w.abs().sum(-1), torch.ones(2, 2, n), atol=1e-5)
        else:
            assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(2, 2, n), atol=1e-5)


def test_capture_filters_blocks_timesteps_batch():
    model = tiny("cog", depth=4)  # 5 blocks
    pipe = pipe_for(model, DDIMScheduler)
    with capture_attention(model, blocks=[1, -1], timesteps=lambda t: t < 50, max_batch=2) as cap:
        pipe(batch_size=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert cap.calls == [75.0, 50.0, 25.0, 0.0]
    assert cap.timesteps == [25.0, 0.0] and cap.blocks == [1, 4]
    assert {r.call for r in cap.records} == {2, 3}
    assert all(r.weights.shape[0] == 2 for r in cap.records)
    with capture_attention(model, timesteps=[50]) as cap2:
        pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert cap2.timesteps == [50.0] and len(cap2.records) == 5
    with pytest.raises(KeyError):
        cap2.get(0, timestep=75.0)
    with pytest.raises(ValueError, match="out of range"):
        with capture_attention(model, blocks=[5]):
            pass


def test_negative_stats_reference_numbers():
    w = torch.tensor([[0.5, -0.3, 0.2], [-0.1, -0.4, 0.5]]).reshape(1, 1, 2, 3)
    st = negative_stats(w)
    assert st["neg_share"].item() == pytest.approx(3 / 6)
    assert st["mean_abs_neg"].item() == pytest.approx((0.3 + 0.1 + 0.4) / 3)
    assert st["neg_mass"].item() == pytest.approx((0.3 + 0.5) / 2)
    assert st["sign_mixing"].item() == pytest.approx((2 * 0.3 + 2 * 0.5) / 2)
    # two heads: a softmax-like head has no negatives -> share 0, mean |neg| NaN
    w2 = torch.cat([w, w.abs()], dim=1)
    st2 = negative_stats(w2)
    assert st2["neg_share"].tolist() == pytest.approx([0.5, 0.0])
    assert math.isnan(st2["mean_abs_neg"][1].item())
    assert st2["sign_mixing"][1].item() == 0.0
    # an all-negative head (a softmax head with negated values) has neg mass 1 but no mixing
    st_neg = negative_stats(-w.abs())
    assert st_neg["neg_mass"].item() == pytest.approx(1.0) and st_neg["sign_mixing"].item() == pytest.approx(0.0)
    # restricting to keys 1: drops the first column
    st3 = negative_stats(w, key_slice=slice(1, None))
    assert st3["neg_share"].item() == pytest.approx(2 / 4)
    assert st3["neg_mass"].item() == pytest.approx((0.3 / 0.5 + 0.4 / 0.9) / 2)


def test_negative_stats_table_from_capture():
    model = tiny("cog", depth=2)  # softmax, cog, softmax
    pipe = pipe_for(model)
    with capture_attention(model) as cap:
        pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    tab = negative_stats_table(cap)
    assert tab.neg_share.shape == (3, 3) and tab.per_head["neg_share"].shape == (3, 3, 2)
    assert tab.sign_mixing.shape == (3, 3) and np.all(tab.sign_mixing[:, [0, 2]] == 0)
    assert tab.attention_types == ["softmax", "cog", "softmax"]
    assert np.all(tab.neg_share[:, [0, 2]] == 0) and np.all(np.isnan(tab.mean_abs_neg[:, [0, 2]]))
    assert np.all((tab.neg_share[:, 1] > 0.05) & (tab.neg_share[:, 1] < 0.95))
    # a table entry equals the direct measure of that record
    w = cap.get(1, cap.timesteps[2])
    assert tab.neg_mass[2, 1] == pytest.approx(negative_stats(w)["neg_mass"].mean().item(), rel=1e-6)
    patches = negative_stats_table(cap, patches_only=True)
    assert patches.neg_share[2, 1] == pytest.approx(
        negative_stats(w, slice(2, None) if cap.extras == 2 else slice(1, None), slice(cap.extras, None))["neg_share"]
        .mean()
        .item()
    )


def test_query_attention_map_layout():
    extras, grid = 2, 3
    n = extras + grid * grid
    w = torch.zeros(1, 2, n, n)
    w[0, 0, extras + 4, extras:] = torch.arange(9.0)
    w[0, 1, extras + 4, extras:] = -torch.arange(9.0) * 3
    w[0, :, extras + 4, :extras] = 100.0  # extras must be skipped
    m0 = query_attention_map(w, 4, extras, grid, head=0)
    assert m0.shape == (3, 3) and m0[0, 2] == 2.0 and m0[2, 1] == 7.0
    np.testing.assert_allclose(query_attention_map(w, 4, extras, grid), -np.arange(9.0).reshape(3, 3))
    with pytest.raises(ValueError):
        query_attention_map(w, 9, extras, grid)
    with pytest.raises(ValueError):
        query_attention_map(w, 0, 1, grid)


def test_mean_pairwise_cosine_references():
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert mean_pairwise_cosine(t) == pytest.approx((0 + 2 / math.sqrt(2)) / 3)
    assert mean_pairwise_cosine(torch.ones(2, 5, 4)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)[None]) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])) == pytest.approx(-1.0)


def test_block_outputs_are_the_real_states():
    model = tiny("cog", num_classes=3)
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    with capture_block_outputs(model) as rec, torch.no_grad():
        out = model(x, 10, class_labels=labels).sample
    states = rec.states[0]
    assert sorted(states) == [-1, 0, 1, 2]
    with torch.no_grad():  # the last state reproduces the model output through the head
        y = model.decoder_pred(model.norm(states[2]))[:, model.extras:]
        b = y.shape[0]
        y = y.reshape(b, 4, 4, 2, 2, 1).permute(0, 5, 1, 3, 2, 4).reshape(b, 1, 8, 8)
        torch.testing.assert_close(model.conv_out(y), out)
        # the recorded input is embedding + position
        emb = model.patch_embed(x)
        torch.testing.assert_close(states[-1][:, model.extras:], emb + model.pos_embed[:, model.extras:])
    sims = similarity_by_depth(rec)
    assert sims.shape == (4,)
    assert sims[1] == pytest.approx(mean_pairwise_cosine(states[0][:, 2:]))
    table = token_similarity(model, x, [10.0, 60.0], labels)
    assert table.shape == (2, 4) and table[0] == pytest.approx(sims)
    assert not np.allclose(table[0], table[1])  # the time token changes the states


def test_plots_write_pngs(tmp_path):
    model = tiny("cog")
    pipe = pipe_for(model)
    with capture_attention(model) as cap:
        imgs = pipe(
            batch_size=4, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
    tab = negative_stats_table(cap)
    amap = query_attention_map(cap.get(1), 5, cap.extras, cap.grid, head=0)
    figs = {
        "grid.png": lambda p: plots.plot_image_grid(imgs, p, nrow=2, title="t"),
        "neg_block.png": lambda p: plots.plot_negative_by_block({"cog": tab}, p),
        "neg_t.png": lambda p: plots.plot_negative_by_timestep(tab, p),
        "map.png": lambda p: plots.plot_attention_maps(imgs[0], {"head 0": amap}, 5, p),
        "sim.png": lambda p: plots.plot_similarity_by_depth({"cog": np.array([0.1, 0.5, 0.7, 0.9])}, p,
                                                             {"cog": model.attention_types()}),
        "curves.png": lambda p: plots.plot_curves({"loss": {"a": ([1, 2], [1.0, 0.5])}}, p, logy=["loss"]),
    }
    for name, draw in figs.items():
        fig = draw(tmp_path / "sub" / name)
        with Image.open(tmp_path / "sub" / name) as im:
            assert im.format == "PNG" and im.width > 50 and im.height > 50
            assert np.asarray(im.convert("L")).std() > 1  # something was drawn
        assert fig.axes


def test_load_run(tmp_path):
    run = tmp_path / "r1"
    (run / "samples" / "step_10").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 1, "loss": 1.0},
                {"step": 2, "loss": 0.5, "lr": 1e-4},
                {"step": 3, "lr": 1e-4},
                {"step": 4, "loss": float("nan")},
            ]
        )
        + "\n\n"
    )
    (run / "fid.jsonl").write_text(json.dumps({"step": 2, "fid": 300.0}) + "\n")
    (run / "fid_raw.jsonl").write_text(json.dumps({"step": 2, "fid": 280.0, "ema": False}) + "\n")
    Image.new("RGB", (4, 4)).save(run / "samples" / "step_10" / "a.png")
    (run / "samples" / "notes.txt").write_text("x")
    r = load_run(run)
    assert r.name == "r1" and r.curve("loss") == ([1, 2], [1.0, 0.5]) and r.curve("fid") == ([2], [300.0])
    assert r.curve("fid_raw") == ([2], [280.0])
    assert r.pipeline_dir is None and [p.endswith("a.png") for p in r.samples] == [True]
    (run / "pipeline").mkdir()
    (run / "pipeline" / "model_index.json").write_text("{}")
    via_pipeline = load_run(run / "pipeline")  # a run's pipeline/ folder resolves to the run
    assert via_pipeline.path == str(run) and via_pipeline.name == "r1" and via_pipeline.curve("fid") == ([2], [300.0])
    assert via_pipeline.pipeline_dir == str(run / "pipeline")
    assert RunDir.of(run).path == RunDir.of(run / "pipeline").path == run and RunDir.of(tmp_path / "x") is None
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "missing")

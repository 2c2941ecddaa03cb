"""train.py end to end on CPU: the tiny config learns, the run directory, EMA export, NaN stop, FID hook."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO
from PIL import Image
from safetensors.torch import load_file

from cogdiff.config import ConfigError, load_config
from cogdiff.data import FASHION_MNIST_DIR, build_dataset
from cogdiff.pipelines import UViTPipeline
from cogdiff.training import EMA, BatchPlan, diffusion_loss, drop_labels, list_checkpoints, make_noise_scheduler
from cogdiff.training.checkpoint import step_of
from cogdiff.workflows import trainer
from cogdiff.workflows.train import main as train_main
from cogdiff.workflows.train import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def train_mod():
    return trainer


def micro_cfg(out, *extra):
    return load_config(TINY_YAML, [*MICRO, "train.log_every=2", f"train.output_dir={out}", *extra])


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --------------------------------------------------------------------------- the tiny config


@pytest.fixture(scope="module")
def tiny_run(one_thread, train_mod, tmp_path_factory):
    """The shipped tiny model for 150 steps at batch 16 (Fashion-MNIST when installed, else generated shapes)."""
    out = tmp_path_factory.mktemp("tiny")
    extra = (
        []
        if Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
        else ["data.kind=synthetic", "data.resolution=16"]
    )
    cfg = load_config(TINY_YAML, [*extra, "train.steps=150", "train.batch_size=16", "optim.warmup_steps=20",
                                  "train.log_every=25", "train.checkpoint_every=50", "train.sample_every=75",
                                  "sample.num_inference_steps=10", f"train.output_dir={out}"])
    assert run_training(cfg) == out
    data = build_dataset(cfg.data)
    resolved = dataclasses.replace(cfg, model={**cfg.model, "sample_size": data.shape[1], "in_channels": data.shape[0]})
    return out, resolved


def test_tiny_config_lowers_the_loss(tiny_run):
    out, cfg = tiny_run
    m = rows(out / "metrics.jsonl")
    assert [r["step"] for r in m] == [25, 50, 75, 100, 125, 150]
    assert set(m[0]) == {"step", "loss", "lr", "grad_norm", "images_per_s", "time"}  # + gpu_mem_gb on CUDA
    assert m[-1]["loss"] < 0.7 * m[0]["loss"], [r["loss"] for r in m]
    assert m[-1]["lr"] == pytest.approx(cfg.optim.lr)
    assert all(np.isfinite(r["grad_norm"]) and r["images_per_s"] > 0 for r in m)


def test_run_directory_layout(tiny_run):
    out, cfg = tiny_run
    assert load_config(out / "config.yaml").to_dict() == cfg.to_dict()  # resolved: sample_size etc. filled in
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"] == cfg.to_dict() and prov["versions"]["torch"] == torch.__version__ and prov["commit"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000100", "step_0000150"]  # keep_last 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    grids = sorted(p.name for p in (out / "samples").iterdir())
    assert grids == ["step_0000075.png", "step_0000150.png"]
    side = 6 * (cfg.model["sample_size"] + 1) + 1  # 36 images, 6 x 6, 1-pixel padding
    assert Image.open(out / "samples" / grids[0]).size == (side, side)
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_exported_pipeline_has_ema_and_raw_weights(tiny_run):
    out, cfg = tiny_run
    ema_pipe = UViTPipeline.from_pretrained(out / "pipeline")
    raw_pipe = UViTPipeline.from_pretrained(out / "pipeline", variant="raw")
    ema_sd, raw_sd = ema_pipe.transformer.state_dict(), raw_pipe.transformer.state_dict()
    ckpt = out / "checkpoints" / "step_0000150" / "transformer"
    assert all(
        torch.equal(raw_sd[k], v) for k, v in load_file(ckpt / "diffusion_pytorch_model.raw.safetensors").items()
    )
    assert all(torch.equal(ema_sd[k], v) for k, v in load_file(ckpt / "diffusion_pytorch_model.safetensors").items())
    assert any(not torch.equal(ema_sd[k], raw_sd[k]) for k in ema_sd)  # the EMA really differs from the weights
    assert not (out / "pipeline" / "training_state.pt").exists()
    assert type(ema_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    images = ema_pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, cfg.model["sample_size"], cfg.model["sample_size"], cfg.model["in_channels"])


def test_export_on_demand(tiny_run, train_mod, tmp_path):
    out, _ = tiny_run
    again = tmp_path / "again"
    assert train_main(["--config", str(TINY_YAML), f"train.output_dir={again}", "--export",
                           str(out / "checkpoints" / "step_0000100")]) == 0
    files = sorted(p.relative_to(again / "pipeline") for p in (again / "pipeline").rglob("*") if p.is_file())
    assert Path("transformer/diffusion_pytorch_model.raw.safetensors") in files and Path("model_index.json") in files
    assert not any("training_state" in str(f) or "rng_state" in str(f) for f in files)
    assert train_main(["--config", str(TINY_YAML), f"train.output_dir={tmp_path / 'none'}", "--export", "latest"]) == 2


# ------------------------------------------------------------------------------ the pieces


def test_diffusion_loss_targets():
    sched = make_noise_scheduler(load_config(TINY_YAML).diffusion)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    abar = sched.alphas_cumprod

    def oracle(kind):  # recovers the exact target from x_t, knowing x0
        def model(x_t, t, class_labels=None):
            a = abar[t].view(-1, 1, 1, 1)
            noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            out = noise if kind == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            return type("Out", (), {"sample": out})
        return model

    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert diffusion_loss(oracle("epsilon"), sched, x0, None, gen()) < 1e-8
    assert diffusion_loss(oracle("v_prediction"), sched, x0, None, gen()) > 1e-2  # wrong target for epsilon
    sched_v = make_noise_scheduler(load_config(TINY_YAML, ["diffusion.prediction_type=v_prediction"]).diffusion)
    assert diffusion_loss(oracle("v_prediction"), sched_v, x0, None, gen()) < 1e-8


def test_label_dropout():
    labels = torch.arange(10_000) % 7
    for p in (0.0, 0.1, 1.0):
        out = drop_labels(labels, p, null_label=7, generator=torch.Generator().manual_seed(0))
        dropped = out == 7
        assert abs(dropped.float().mean().item() - p) < 0.015
        assert torch.equal(out[~dropped], labels[~dropped])


def test_ema_update_and_warmup():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    w0 = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.9 * w0 + 0.1 * model.weight)
    warm = EMA(model, decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(warm.current_decay())
        warm.update(model)
    assert decays == pytest.approx([0.1, 2 / 11, 3 / 12])
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_holding_loads_weights_and_restores_the_ema_bit_for_bit():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    before = [p.clone() for p in ema.model.parameters()]
    storage = [p.data_ptr() for p in ema.model.parameters()]
    with ema.holding(model) as m:
        assert m is ema.model and torch.equal(m.weight, model.weight) and torch.equal(m.bias, model.bias)
        assert [p.data_ptr() for p in m.parameters()] == storage  # copied in place (compiled graphs keep working)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.model.parameters()))
    with pytest.raises(RuntimeError, match="boom"):
        with ema.holding(model):
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, ema.model.parameters()))
    with pytest.raises(ValueError, match="do not match"):
        with ema.holding(torch.nn.Linear(3, 2, bias=False)):
            pass


def test_batch_plan_partitions_each_global_batch():
    plan = BatchPlan(num_examples=50, batch_size=12, world=2, grad_accum=3, seed=0)
    assert plan.micro == 2 and plan.steps_per_epoch == 4
    seen = []
    assert plan.slots(0) == [0, 2, 4] and plan.slots(1) == [1, 3, 5]
    for step in range(4):
        batch = torch.cat([plan.indices(step, k) for r in range(2) for k in plan.slots(r)])
        assert len(batch) == 12 and len(set(batch.tolist())) == 12
        seen += batch.tolist()
    assert len(set(seen)) == 48  # one epoch: no example twice
    assert not torch.equal(plan.indices(4, 0), plan.indices(0, 0))  # the next epoch reshuffles
    with pytest.raises(ValueError, match="divisible"):
        BatchPlan(50, 10, world=4, grad_accum=1, seed=0)
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        BatchPlan(8, 16, world=1, grad_accum=1, seed=0)


# --------------------------------------------------------------------------- failure paths


def test_truncate_jsonl_drops_a_half_written_line(tmp_path):
    from cogdiff.rundir import read_jsonl, truncate_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 2}\n{"step": 4}\n{"step": 6, "lo')  # SIGKILL during the append of step 6
    assert read_jsonl(path) == [{"step": 2}, {"step": 4}]
    truncate_jsonl(path, 10)
    assert path.read_text() == '{"step": 2}\n{"step": 4}\n'
    truncate_jsonl(path, 3)
    assert path.read_text() == '{"step": 2}\n'
    path.write_text('{"step": 2}\n{"ste\n{"step": 4}\n')  # damage in the middle is not a crash artefact: say where
    with pytest.raises(ValueError, match="m.jsonl line 2 is not JSON"):
        truncate_jsonl(path, 10)


def test_bad_model_settings_stop_training_in_one_line(train_mod, tmp_path, capsys):
    import numpy as np

    def main(*extra):
        rc = train_main(["--config", str(TINY_YAML), *MICRO, f"train.output_dir={tmp_path / 'run'}", "train.steps=1",
                             *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "unknown U-ViT preset 'XL/2'" in main("model.preset=XL/2")
    assert "embed_dim 32 must be divisible by num_heads 3" in main("model.num_heads=3")
    assert "softmax_layers [99] out of range" in main("model.softmax_layers=[99]")
    assert "train.cog_impl: Cog attention impl 'flash9' is not available here; choose one of auto, reference" in main(
        "train.cog_impl=flash9"
    )
    assert not (tmp_path / "run").exists()  # refused before anything is written
    # Reference statistics built with other Inception weights (ValueError from cogdiff.metrics).
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4), count=np.array(10), extractor_id=np.array("some/other/extractor"))
    assert "computed with feature extractor 'some/other/extractor'" in main("train.fid_every=1", f"train.fid_ref={ref}")


def test_cog_impl_choice_reaches_training_and_the_ema(train_mod, tmp_path):
    """train.cog_impl routes every Cog block (training model and the EMA copy that samples) to that implementation."""
    from cogdiff.attention import cog_attention, register_cog_impl, unregister_cog_impl

    calls = {"n": 0}

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
        calls["n"] += 1
        return cog_attention(q, k, v, attn_mask, dropout_p, scale, impl="reference")

    register_cog_impl("spy", spy)
    try:
        cfg = micro_cfg(tmp_path, "model.attention_type=cog", "model.softmax_layers=[]", "train.steps=2",
                        "train.cog_impl=spy", "train.sample_every=2")
        run_training(cfg)
    finally:
        unregister_cog_impl("spy")
    # 2 blocks x (2 training forwards + at least 2 sampling steps of the EMA model for the final grid)
    assert calls["n"] >= 2 * (2 + 2)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(train_mod, tmp_path, monkeypatch):
    real, calls = train_mod.diffusion_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(train_mod, "diffusion_loss", poisoned)
    cfg = micro_cfg(tmp_path, "train.steps=12", "train.checkpoint_every=5", "train.log_every=100")
    with pytest.raises(FloatingPointError, match="loss is nan at step 7; stopped"):
        run_training(cfg)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [step_of(p) for p in ckpts] == [5] and not (tmp_path / "pipeline").exists()
    pipe = UViTPipeline.from_pretrained(ckpts[0], variant="raw")
    assert all(torch.isfinite(p).all() for p in pipe.transformer.parameters())


def test_conditional_grad_accum_and_fid_hook(train_mod, tmp_path, monkeypatch):
    import cogdiff.metrics

    calls = []

    class FakeEvaluator:  # stands in for the Inception-based evaluator; takes the sampled uint8 batches
        def __init__(self, ref_stats, device=None, weights=None):
            calls.append(("init", ref_stats, weights))

        def score_images(self, batches, gather=False, **kw):
            training = batches.gi_frame.f_locals["pipeline"].transformer.training  # the sampler's model
            shapes = [b.shape for b in batches]
            n = sum(s[0] for s in shapes)
            calls.append(("score", n, [s[0] for s in shapes], shapes[0][1:], training, gather))
            return {"fid": 10.0 + len(calls), "kid_mean": 0.5, "kid_std": 0.1, "kid_subset_size": 8, "num_images": n}

    monkeypatch.setattr(cogdiff.metrics, "FIDEvaluator", FakeEvaluator)
    cfg = micro_cfg(
        tmp_path,
        "model.num_classes=4",
        "train.grad_accum=2",
        "train.steps=6",
        "train.fid_every=3",
        "train.fid_ref=ref.npz",
        "train.fid_num_images=8",
        "sample.batch_size=4",
        "sample.guidance_scale=1.5",
        "train.checkpoint_every=100",
    )
    run_training(cfg)
    assert calls[0] == ("init", "ref.npz", None)
    # sample.batch_size batches of uint8 NHWC images from the EMA copy (eval mode), one process: no gather
    assert calls[1] == ("score", 8, [4, 4], (16, 16, 3), False, False)
    fid = rows(tmp_path / "fid.jsonl")
    assert [r["step"] for r in fid] == [3, 6] and fid[0]["fid"] == 12.0
    assert fid[0].pop("seconds") >= 0  # how long sampling + scoring took
    assert fid[0] == {"step": 3, "fid": 12.0, "kid_mean": 0.5, "kid_std": 0.1, "kid_subset_size": 8, "num_images": 8,
                      "num_inference_steps": 2,
                      "scheduler": "dpm++", "ema": True}
    assert UViTPipeline.from_pretrained(tmp_path / "pipeline").transformer.config.num_classes == 4


def test_fid_raw_scores_the_raw_weights_and_leaves_the_ema_untouched(train_mod, tmp_path, monkeypatch):
    """train.fid_raw: at each FID step a second score, of the raw weights loaded into the sampling model, goes to
    fid_raw.jsonl (ema false); the EMA weights and the training are the same as without it, bit for bit."""
    import cogdiff.metrics

    seen = []

    class FakeEvaluator:
        def __init__(self, ref_stats, device=None, weights=None):
            pass

        def score_images(self, batches, gather=False, **kw):
            model = batches.gi_frame.f_locals["pipeline"].transformer
            seen.append([p.detach().clone() for p in model.parameters()])
            n = sum(b.shape[0] for b in batches)
            return {"fid": float(len(seen)), "kid_mean": 0.5, "kid_std": 0.1, "kid_subset_size": 8, "num_images": n}

    monkeypatch.setattr(cogdiff.metrics, "FIDEvaluator", FakeEvaluator)
    common = ["train.steps=4", "train.fid_every=2", "train.fid_ref=ref.npz", "train.fid_num_images=4",
              "sample.batch_size=4", "train.checkpoint_every=100"]
    run_training(micro_cfg(tmp_path / "with", *common, "train.fid_raw=true"))
    with_raw = seen[:]
    seen.clear()
    run_training(micro_cfg(tmp_path / "without", *common))
    assert len(with_raw) == 4 and len(seen) == 2  # (EMA, raw) at steps 2 and 4; EMA only
    for a, b in zip(with_raw[0::2], seen):  # the EMA scored at each step is the same either way
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(with_raw[0], with_raw[1]))  # the raw weights differ
    raw = UViTPipeline.from_pretrained(tmp_path / "with" / "pipeline", variant="raw").transformer
    assert all(torch.equal(x, y) for x, y in zip(with_raw[3], raw.parameters()))  # step 4: the final raw weights
    for run in ("with", "without"):
        ema = UViTPipeline.from_pretrained(tmp_path / run / "pipeline").transformer
        assert all(torch.equal(x, y) for x, y in zip(seen[1], ema.parameters()))  # the EMA was restored
    assert [(r["step"], r["fid"], r["ema"]) for r in rows(tmp_path / "with" / "fid.jsonl")] == [(2, 1.0, True),
                                                                                             (4, 3.0, True)]
    assert [(r["step"], r["fid"], r["ema"]) for r in rows(tmp_path / "with" / "fid_raw.jsonl")] == [
        (2, 2.0, False), (4, 4.0, False)]
    assert not (tmp_path / "without" / "fid_raw.jsonl").exists()
    assert all(r["seconds"] >= 0 for name in ("fid.jsonl", "fid_raw.jsonl") for r in rows(tmp_path / "with" / name))


def test_resume_guards(train_mod, tmp_path):
    run_training(micro_cfg(tmp_path, "train.steps=2", "train.checkpoint_every=1"))
    with pytest.raises(ConfigError, match="already has checkpoints: continue with train.resume=latest"):
        run_training(micro_cfg(tmp_path, "train.steps=4"))
    with pytest.raises(ConfigError, match=r"cannot resume: model.embed_dim \(32 -> 64\) differ"):
        run_training(micro_cfg(tmp_path, "train.steps=4", "train.resume=latest", "model.embed_dim=64"))
    with pytest.raises(ConfigError, match=r"diffusion.beta_schedule \('linear' -> 'scaled_linear'\) differ"):
        run_training(
            micro_cfg(
                tmp_path,
                "train.steps=4",
                "train.resume=latest",
                "diffusion.beta_schedule=scaled_linear",
                "train.resume_force=true",
            )
        )  # no override for the model or the noise schedule
    # Data, seed and batch split decide which examples and noise each step uses: refused, naming every key.
    changes = ["data.limit=64", "data.random_flip=false", "data.split=test", "train.seed=1", "train.batch_size=8",
               "train.grad_accum=2"]
    with pytest.raises(ConfigError) as e:
        run_training(micro_cfg(tmp_path, "train.steps=4", "train.resume=latest", *changes))
    msg = str(e.value)
    assert msg.startswith("cannot resume: data.split ('train' -> 'test'), data.limit (None -> 64)") and "\n" not in msg
    assert all(c.split("=")[0] in msg for c in changes) and "train.resume_force=true" in msg
    # A run killed mid-append leaves half a line in metrics.jsonl; the resume drops it.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')
    run_training(micro_cfg(tmp_path, "train.steps=4", "train.resume=latest", "train.seed=1", "train.resume_force=true"))
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [2, 4]
    assert load_config(tmp_path / "config.yaml").train.seed == 1  # the run's config now says what it continued with
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        run_training(micro_cfg(tmp_path, "train.steps=4", f"train.resume={tmp_path}"))
    with pytest.raises(ConfigError, match="model.num_classes=3 but the data has 4 classes"):
        run_training(micro_cfg(tmp_path / "other", "model.num_classes=3"))

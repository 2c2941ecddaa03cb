"""Config loading: YAML + base inheritance, typed dotted overrides, clear errors, dry run."""

from pathlib import Path

import pytest
import yaml

import cogdiff.workflows.train
from cogdiff.config import SCHEDULER_ALIASES, Config, ConfigError, config_from_dict, load_config, model_type_hints
from cogdiff.sampling import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def load_train_module():
    return cogdiff.workflows.train


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "tiny.yaml", [
        "train.steps=5e3", "optim.lr=3e-4", "model.attention_type=cog", "train.mixed_precision=no",
        "data.limit=null", "optim.betas=[0.9, 0.95]", "train.resume=latest", "model.softmax_layers=[0]",
        "data.random_flip=false", "sample.scheduler=dpmsolver++",
    ])
    assert cfg.train.steps == 5000 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model["attention_type"] == "cog" and cfg.model["softmax_layers"] == [0]
    assert cfg.train.mixed_precision == "no"  # text, not YAML's boolean
    assert cfg.data.limit is None and cfg.data.random_flip is False
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.train.resume == "latest"
    assert cfg.sample.scheduler == "dpm++"  # diffusers-style alias normalised


def test_scheduler_aliases_name_real_schedulers():
    assert set(SCHEDULER_ALIASES.values()) <= set(SCHEDULERS)
    for alias, name in SCHEDULER_ALIASES.items():
        assert load_config(CONFIGS / "tiny.yaml", [f"sample.scheduler={alias}"]).sample.scheduler == name
    assert load_config(CONFIGS / "tiny.yaml", ["sample.scheduler=dpmsolver"]).sample.scheduler == "dpm++"


@pytest.mark.parametrize("override, words", [
    ("train.stepz=3", ["unknown key train.stepz", "valid train keys", "steps", "batch_size"]),
    ("model.embed_dimension=3", ["unknown key model.embed_dimension", "embed_dim", "attention_type"]),
    ("trian.steps=3", ["unknown key", "train"]),
    ("train.steps=many", ["train.steps", "expected int"]),
    ("train.steps=2.5", ["train.steps", "expected int"]),
    ("train.mixed_precision=fp8", ["train.mixed_precision must be one of", "bf16"]),
    ("data.kind=mnist", ["data.kind must be one of", "fashion_mnist"]),
    ("sample.scheduler=magic", ["sample.scheduler must be one of", "dpm++"]),
    ("optim.betas=0.9", ["optim.betas", "expected a list"]),
    ("train.steps", ["section.key=value"]),
    ("train.fid_raw=true", ["train.fid_raw", "train.fid_every is 0", "train.fid_every > 0"]),
])
def test_bad_overrides_name_the_fix(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.yaml", [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  mixed_precision: no\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(bad)
    bad.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="valid keys: base, name, model"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(loop)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cifar_recipe_and_inheritance():
    soft = load_config(CONFIGS / "cifar10_uvit_s2_softmax.yaml")
    cog = load_config(CONFIGS / "cifar10_uvit_s2_cog.yaml")
    a, b = soft.to_dict(), cog.to_dict()
    diff = {(s, k) for s in a if isinstance(a[s], dict) for k in set(a[s]) | set(b[s]) if a[s].get(k) != b[s].get(k)}
    assert diff == {("model", "attention_type")} and a["name"] != b["name"]
    assert soft.model["attention_type"] == "softmax" and cog.model["attention_type"] == "cog"
    # U-ViT's CIFAR-10 recipe (background.md)
    assert soft.model["preset"] == "S/2" and soft.model["num_classes"] is None
    assert (soft.train.steps, soft.train.batch_size) == (500_000, 128)
    assert (soft.optim.lr, soft.optim.weight_decay, soft.optim.betas) == (2e-4, 0.03, [0.99, 0.999])
    assert (soft.optim.warmup_steps, soft.optim.grad_clip) == (2500, 0.0)
    assert (soft.train.ema_decay, soft.train.ema_warmup) == (0.9999, False)
    d = soft.diffusion
    assert (d.num_train_timesteps, d.beta_schedule, d.beta_start, d.beta_end, d.prediction_type) == (
        1000,
        "linear",
        1e-4,
        0.02,
        "epsilon",
    )
    assert soft.data.kind == "cifar10" and soft.data.random_flip


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["model.attention_type=cog", "optim.lr=5e-4"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict() and again.name == "tiny"


def test_model_keys_follow_uvit_signature():
    hints = model_type_hints()
    assert {"preset", "vae", "embed_dim", "attention_type", "softmax_layers", "num_classes"} <= set(hints)
    cfg = config_from_dict({"model": {"preset": None, "embed_dim": 64, "depth": 2}})
    assert cfg.model == {"preset": None, "embed_dim": 64, "depth": 2}
    assert Config().model == {"preset": "S/2"}


def test_dry_run_prints_config_and_size(capsys):
    train = load_train_module()
    # No data.path: the CIFAR-10 config still shows the model (its shape is in the config).
    assert train.main(["--config", str(CONFIGS / "cifar10_uvit_s2_cog.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "44,255,328 parameters" in out  # U-ViT-S/2: 44.3M in the paper
    assert "'softmax', 'cog'" in out and "not loaded (data.path is not set" in out
    assert "# fid: every 50000 steps against statistics of the training data (built once, cached in" in out
    printed = yaml.safe_load(out.split("# data:")[0])
    assert printed["model"]["attention_type"] == "cog" and printed["train"]["steps"] == 500_000
    # With data: the model's input shape comes from it.
    assert train.main(["--config", str(CONFIGS / "tiny.yaml"), "--dry-run", "data.kind=synthetic", "data.resolution=16",
                       "model.depth=2"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out.split("# data:")[0])
    assert printed["model"]["sample_size"] == 16 and printed["model"]["in_channels"] == 3
    assert "512 examples of shape (3, 16, 16)" in out


def test_main_reports_bad_input_in_one_line(capsys):
    train = load_train_module()
    assert train.main(["--config", str(CONFIGS / "tiny.yaml"), "--dry-run", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown key train.nope") and "\n" not in err
    assert train.main(["--config", str(CONFIGS / "tiny.yaml"), "--dry-run", "data.kind=synthetic",
                       "data.resolution=16", "model.sample_size=32"]) == 2
    assert "model.sample_size=32 but the data has sample_size=16" in capsys.readouterr().err


SYNTH = ["data.kind=synthetic", "data.resolution=16", "model.depth=2"]
NO_LATENTS = ["data.path=/nowhere/latents", "model.sample_size=8", "model.in_channels=4"]  # the model still resolves


@pytest.mark.parametrize("config, args, words", [
    ("tiny", [*SYNTH, "model.preset=XL/2"], ["unknown U-ViT preset 'XL/2'"]),
    ("tiny", [*SYNTH, "model.num_heads=3"], ["embed_dim 64 must be divisible by num_heads 3"]),
    ("tiny", [*SYNTH, "model.softmax_layers=[99]"], ["softmax_layers [99] out of range"]),
    ("tiny", [*SYNTH, "model.patch_size=3"], ["sample_size 16 must be divisible by patch_size 3"]),
    ("tiny", [*SYNTH, "model.vae=/nowhere"], ["model.vae=/nowhere is only for latent data"]),
    ("tiny_latent", [*NO_LATENTS, "model.vae=/nowhere/vae"], ["no VAE at '/nowhere/vae'"]),
    ("tiny_latent", [*NO_LATENTS, "model.num_heads=5"], ["divisible by num_heads 5"]),  # checked without data
])
def test_dry_run_bad_settings_in_one_line(capsys, config, args, words):
    train = load_train_module()
    assert train.main(["--config", str(CONFIGS / f"{config}.yaml"), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)

"""UViTPipeline: schedulers, determinism, save/load round trips, safe loading, guidance, latent path, errors."""

import importlib.util
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

import cogdiff.sampling as sampling
from cogdiff import UViTModel, UViTPipeline
from cogdiff.io import atomic_write_text
from cogdiff.pipelines import classifier_free_guidance, to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(sample_size=8, in_channels=3, patch_size=2, embed_dim=32, depth=2, num_heads=2)
SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"),
    "euler": EulerDiscreteScheduler,
}


def pipe(scheduler="ddim", **kw):
    torch.manual_seed(0)
    return UViTPipeline(UViTModel(**{**TINY, **kw}).eval(), SCHEDULERS[scheduler]())


def run(p, seed=0, **kw):
    kw.setdefault("num_inference_steps", 4)
    return p(batch_size=2, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_shape_range_determinism(name):
    p = pipe(name, attention_type="cog")
    a, b, c = run(p), run(p), run(p, seed=1)
    assert a.shape == (2, 8, 8, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_output_types():
    p = pipe()
    pil = p(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (8, 8)
    pt = p(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    np_ = run(p, num_inference_steps=2)
    assert pt.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_, atol=0)
    np.testing.assert_array_equal(np.asarray(pil[0]), to_uint8(np_)[0])
    tup = p(batch_size=1, num_inference_steps=2, output_type="np", return_dict=False)
    assert isinstance(tup, tuple) and tup[0].shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="output_type"):
        p(batch_size=1, num_inference_steps=1, output_type="jpg")


def test_to_uint8_rounds():
    x = np.array([0.0, 0.6 / 255, 1.49 / 255, 1.51 / 255, 1.0], dtype=np.float32).reshape(1, 1, 5, 1)
    assert to_uint8(x).ravel().tolist() == [0, 1, 1, 2, 255]


@pytest.mark.parametrize("attention_type", ["softmax", "cog"])
def test_save_load_both_loaders_identical(tmp_path, attention_type):
    p = pipe("dpm++", attention_type=attention_type, num_classes=4)
    ref = run(p, class_labels=[1, 3], guidance_scale=2.0)
    p.save_pretrained(tmp_path)
    own = UViTPipeline.from_pretrained(tmp_path)
    generic = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    for q in (own, generic):
        assert type(q) is UViTPipeline
        assert q.transformer.attention_types() == p.transformer.attention_types()
        assert type(q.scheduler) is DPMSolverMultistepScheduler
        np.testing.assert_array_equal(run(q, class_labels=[1, 3], guidance_scale=2.0), ref)


def test_tampered_shim_is_never_run(tmp_path):
    pipe().save_pretrained(tmp_path)
    marker = tmp_path / "ran"
    with open(tmp_path / "pipeline_uvit.py", "a") as f:
        f.write(f"open({str(marker)!r}, 'w').close()\n")
    assert type(UViTPipeline.from_pretrained(tmp_path)) is UViTPipeline  # the shim is not imported
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path)  # diffusers itself asks for the opt-in
    assert not marker.exists()


def evil_folder(src, dst, marker):
    """The tampered folder of issue 17: a copy of a saved pipeline whose scheduler is code in the folder."""
    shutil.copytree(src, dst)
    (dst / "scheduler" / "evil_sched.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from diffusers import DDIMScheduler\n\nclass EvilScheduler(DDIMScheduler):\n    pass\n")
    index = json.loads((dst / "model_index.json").read_text())
    index["scheduler"] = ["evil_sched", "EvilScheduler"]
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    pipe(num_classes=3).save_pretrained(path)
    return path


def test_tampered_folder_refused_marker_never_written(saved, tmp_path, capsys):
    marker = tmp_path / "marker"
    folder = evil_folder(saved, tmp_path / "evil", marker)
    with pytest.raises(ValueError, match=r"evil_sched.*only diffusers scheduler classes"):
        UViTPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="evil_sched"):
        sampling.load_pipeline(str(folder))
    spec = importlib.util.spec_from_file_location("sample_script", os.path.join(ROOT, "sample.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(folder), "--out", str(tmp_path / "out"), "-n", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "evil_sched" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, match", [
    ("transformer", ["evil_mod", "UViTModel"], "only cogdiff's UViTModel"),
    ("transformer", ["cogdiff.models.uvit", "Evil"], "only cogdiff's UViTModel"),
    ("scheduler", ["diffusers", "DiffusionPipeline"], "only diffusers scheduler classes"),
    ("scheduler", ["diffusers", "__class__"], "only diffusers scheduler classes"),
    ("vae", ["diffusers", "UNet2DModel"], "only diffusers' AutoencoderKL"),
    ("text_encoder", ["transformers", "CLIPTextModel"], "component 'text_encoder'"),
    ("_class_name", ["evil", "UViTPipeline"], "is for pipeline"),
    ("scheduler", "DDIMScheduler", r"must be \[library, class name\]"),
])
def test_model_index_names_only_known_classes(saved, tmp_path, key, value, match):
    folder = tmp_path / "p"
    shutil.copytree(saved, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, key: value}))
    with pytest.raises(ValueError, match=match) as e:
        UViTPipeline.from_pretrained(folder)
    assert "\n" not in str(e.value)


def one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_loading_errors_are_one_line_and_name_the_file(saved, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved, run / "pipeline")
    with pytest.raises(FileNotFoundError) as e:
        UViTPipeline.from_pretrained(run)
    one_line(e, str(run / "pipeline"), "model_index.json")
    with pytest.raises(FileNotFoundError) as e:
        UViTPipeline.from_pretrained(run / "pipeline", variant="raw")
    one_line(e, "diffusion_pytorch_model.raw.safetensors")
    weights = run / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError) as e:
        UViTPipeline.from_pretrained(run / "pipeline")
    one_line(e, str(weights), "truncated")
    weights.unlink()
    with pytest.raises(FileNotFoundError) as e:
        UViTPipeline.from_pretrained(run / "pipeline")
    one_line(e, str(weights), "missing")
    assert ".bin" not in str(e.value)
    with pytest.raises(TypeError, match="never runs code"):
        UViTPipeline.from_pretrained(saved, trust_remote_code=True)
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        UViTPipeline.from_pretrained("someone/some-model")


def test_saved_files_have_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        pipe().save_pretrained(tmp_path)
        modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in tmp_path.rglob("*") if p.is_file()}
        assert "transformer/diffusion_pytorch_model.safetensors" in modes and "README.md" in modes
        assert set(modes.values()) == {0o644}, modes
        os.umask(0o027)
        atomic_write_text(tmp_path / "x.txt", "x")
        assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_num_inference_steps(steps):
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1") as e:
        pipe()(num_inference_steps=steps)
    one_line(e)


def test_guidance_needs_a_conditional_model():
    with pytest.raises(ValueError, match="unconditional") as e:
        pipe()(num_inference_steps=1, guidance_scale=3.0)
    one_line(e, "guidance_scale=1")


def test_stock_ddpm_pipeline_runs():
    torch.manual_seed(0)
    model = UViTModel(**TINY).eval()
    out = DDPMPipeline(unet=model, scheduler=DDPMScheduler())(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert out.shape == (2, 8, 8, 3) and np.isfinite(out).all()


def test_guidance_matches_manual_step():
    p = pipe("ddim", num_classes=3)
    p.scheduler.set_timesteps(1)
    (t,) = p.scheduler.timesteps
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 2])
    w = 3.0
    with torch.no_grad():
        eps_c = p.transformer(x, t, class_labels=y).sample
        eps_u = p.transformer(x, t, class_labels=torch.full_like(y, 3)).sample
        eps = classifier_free_guidance(eps_c, eps_u, w)
        x0 = p.scheduler.step(eps, t, x).prev_sample
    expect = (x0 / 2 + 0.5).clamp(0, 1)
    got = p(batch_size=2, num_inference_steps=1, class_labels=y, guidance_scale=w, latents=x, output_type="pt").images
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)
    # guidance 1 = conditional only; labels matter
    a = p(batch_size=2, num_inference_steps=1, class_labels=y, latents=x, output_type="pt").images
    b = p(batch_size=2, num_inference_steps=1, class_labels=[1, 1], latents=x, output_type="pt").images
    assert not torch.allclose(a, b)
    torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, 1.0), eps_c)


def test_class_labels_errors_and_random_labels():
    cond = pipe(num_classes=3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        cond(batch_size=2, num_inference_steps=1, class_labels=[0, 3])
    with pytest.raises(ValueError, match="batch_size=2 but 3 class_labels"):
        cond(batch_size=2, num_inference_steps=1, class_labels=[0, 1, 2])
    assert run(cond, num_inference_steps=1).shape == (2, 8, 8, 3)  # labels drawn from the generator
    with pytest.raises(ValueError, match="unconditional"):
        pipe()(batch_size=1, num_inference_steps=1, class_labels=[0])
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe()(batch_size=2, num_inference_steps=1, latents=torch.randn(2, 3, 4, 4))


def test_latent_path_with_tiny_vae(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.18215, shift_factor=0.1,
    ).eval()
    model = UViTModel(**{**TINY, "in_channels": 4, "num_classes": 2, "attention_type": "cog"}).eval()
    p = UViTPipeline(model, DPMSolverMultistepScheduler(), vae=vae)
    img = p(batch_size=2, num_inference_steps=2, class_labels=[0, 1], guidance_scale=1.5,
            generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (2, 16, 16, 3)  # latent 8x8, VAE upsamples x2
    lat = p(batch_size=2, num_inference_steps=2, class_labels=[0, 1], guidance_scale=1.5,
            generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False)
    assert lat[0].shape == (2, 3, 16, 16)
    p.save_pretrained(tmp_path)
    r = UViTPipeline.from_pretrained(tmp_path)
    assert r.vae is not None and (r.vae.config.scaling_factor, r.vae.config.shift_factor) == (0.18215, 0.1)
    # The VAE decodes exactly latents / scaling_factor + shift_factor, with the factors in the VAE's config
    # (which the loader sets from a latent manifest): record the last scheduler output and the decoder input.
    seen = {}
    step, decode = r.scheduler.step, r.vae.decode
    r.scheduler.step = lambda *a, **k: seen.__setitem__("final", step(*a, **k)) or seen["final"]
    r.vae.decode = lambda z, *a, **k: seen.__setitem__("z", z.clone()) or decode(z, *a, **k)
    img2 = r(batch_size=2, num_inference_steps=2, class_labels=[0, 1], guidance_scale=1.5,
             generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(img2, img, atol=1e-6)
    assert torch.equal(seen["z"], seen["final"].prev_sample / 0.18215 + 0.1)
    r.vae.register_to_config(scaling_factor=0.5, shift_factor=-0.2)  # e.g. a manifest's --scaling-factor override
    r(batch_size=2, num_inference_steps=2, class_labels=[0, 1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen["z"], seen["final"].prev_sample / 0.5 - 0.2)

"""UViTPipeline against the conventions diffusers documents for its pipelines (the behaviour its pipeline
tester checks, written here for our pipeline): batch from ``class_labels`` as in DiTPipeline, a batch equals
single calls with the same generators, ``return_dict`` equivalence, save/load with variants, ``to(dtype)``,
``from_pretrained(torch_dtype=...)``, step-end callbacks, ``output_type="latent"`` and the model card."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from huggingface_hub import ModelCard

from cogdiff import UViTModel, UViTPipeline
from cogdiff.pipelines import write_model_card

TINY = dict(sample_size=8, in_channels=3, patch_size=2, embed_dim=32, depth=2, num_heads=2)
SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler,
              "euler_a": EulerAncestralDiscreteScheduler}


def tiny_vae():
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    ).eval()


def make(scheduler="ddpm", latent=False, **kw):
    torch.manual_seed(0)
    cfg = {**TINY, "attention_type": "cog", **({"in_channels": 4} if latent else {}), **kw}
    return UViTPipeline(UViTModel(**cfg).eval(), SCHEDULERS[scheduler](), vae=tiny_vae() if latent else None)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def pt(p, **kw):
    kw.setdefault("num_inference_steps", 3)
    return p(output_type="pt", **kw).images


# ------------------------------------------------------------------------------ batch size and labels


def test_batch_size_comes_from_class_labels():
    p = make(num_classes=4)
    assert pt(p, class_labels=[1, 1]).shape[0] == 2
    assert pt(p, class_labels=torch.tensor([0, 1, 3])).shape[0] == 3
    assert pt(p, class_labels=2).shape[0] == 1
    with pytest.raises(ValueError, match="batch_size=3 but 2 class_labels") as e:
        p(class_labels=[1, 1], batch_size=3, num_inference_steps=1)
    assert "\n" not in str(e.value)
    # an int label with batch_size=N: N images of that class, the same as N copies of the label
    a = pt(p, class_labels=2, batch_size=3, generator=gens(0, 1, 2))
    b = pt(p, class_labels=[2, 2, 2], generator=gens(0, 1, 2))
    assert a.shape[0] == 3 and torch.equal(a, b)
    assert not torch.allclose(a, pt(p, class_labels=[1, 1, 1], generator=gens(0, 1, 2)))


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("labels, guidance", [(None, 1.0), ([0, 3, 1], 2.0), ("random", 2.0)])
def test_batch_equals_single_calls_with_the_same_generators(scheduler, labels, guidance):
    p = make(scheduler, num_classes=None if labels is None else 4)
    seeds = (11, 12, 13)
    kw = dict(guidance_scale=guidance)
    if labels is None or labels == "random":  # random labels: label i is drawn from generator i
        batch = pt(p, batch_size=3, generator=gens(*seeds), **kw)
        singles = [pt(p, batch_size=1, generator=gens(s)[0], **kw) for s in seeds]
    else:
        batch = pt(p, class_labels=labels, generator=gens(*seeds), **kw)
        singles = [pt(p, class_labels=[y], generator=gens(s)[0], **kw) for y, s in zip(labels, seeds)]
    torch.testing.assert_close(batch, torch.cat(singles), atol=1e-5, rtol=1e-4)
    assert (batch[0] - batch[1]).abs().max() > 1e-3  # different generators, different images


def test_one_generator_per_image_is_required_in_length():
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        make()(batch_size=3, generator=gens(0, 1), num_inference_steps=1)


def test_return_dict_equivalence():
    p = make(num_classes=4)
    for output_type in ("np", "pt", "pil"):
        out = p(class_labels=[0, 1], num_inference_steps=2, generator=gens(0, 1), output_type=output_type)
        tup = p(class_labels=[0, 1], num_inference_steps=2, generator=gens(0, 1), output_type=output_type,
                return_dict=False)
        assert isinstance(out, ImagePipelineOutput) and isinstance(tup, tuple) and len(tup) == 1
        np.testing.assert_array_equal(np.asarray(out.images[0]), np.asarray(tup[0][0]))


# ------------------------------------------------------------------------------ save / load, dtypes


@pytest.mark.parametrize("latent", [False, True])
def test_save_load_round_trip_with_variant(tmp_path, latent):
    p = make("dpm++", latent=latent, num_classes=3)
    ref = pt(p, class_labels=[0, 2], guidance_scale=1.5, generator=gens(0, 1))
    p.save_pretrained(tmp_path, variant="ema")
    for sub in ["transformer"] + (["vae"] if latent else []):
        names = sorted(f.name for f in (tmp_path / sub).iterdir() if f.suffix == ".safetensors")
        assert names == ["diffusion_pytorch_model.ema.safetensors"], names
    q = UViTPipeline.from_pretrained(tmp_path, variant="ema")
    assert type(q.scheduler) is DPMSolverMultistepScheduler and (q.vae is not None) == latent
    torch.testing.assert_close(pt(q, class_labels=[0, 2], guidance_scale=1.5, generator=gens(0, 1)), ref,
                               atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors is missing"):
        UViTPipeline.from_pretrained(tmp_path)  # no default weights were saved


def test_to_dtype_moves_every_model():
    p = make("ddim", latent=True, num_classes=2)
    assert {p.transformer.dtype, p.vae.dtype} == {torch.float32}
    ref = pt(p, class_labels=[0, 1], generator=gens(0, 1))
    p.to(dtype=torch.float64)
    assert {p.transformer.dtype, p.vae.dtype} == {torch.float64}
    out = pt(p, class_labels=[0, 1], generator=gens(0, 1))
    assert out.dtype == torch.float32  # images are returned as float32 whatever the model dtype
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    p.to(torch.bfloat16)
    assert {p.transformer.dtype, p.vae.dtype} == {torch.bfloat16}
    assert torch.isfinite(pt(p, class_labels=[0, 1], generator=gens(0, 1))).all()


def test_from_pretrained_torch_dtype(tmp_path):
    make(latent=True).save_pretrained(tmp_path)
    q = UViTPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert (q.transformer.dtype, q.vae.dtype) == (torch.bfloat16, torch.bfloat16)
    q = UViTPipeline.from_pretrained(tmp_path, torch_dtype={"transformer": torch.float64, "default": torch.float32})
    assert (q.transformer.dtype, q.vae.dtype) == (torch.float64, torch.float32)
    s = DDIMScheduler(timestep_spacing="trailing")
    assert UViTPipeline.from_pretrained(tmp_path, scheduler=s).scheduler is s  # a component passed by name
    with pytest.raises(TypeError, match="unexpected argument 'unet'"):
        UViTPipeline.from_pretrained(tmp_path, unet=None)


# ------------------------------------------------------------------------------ callbacks, latent output


def test_step_end_callback_sees_and_replaces_tensors():
    p = make("ddim")
    seen = []

    def record(pipe, i, t, kwargs):
        assert pipe is p and set(kwargs) == set(p._callback_tensor_inputs)
        seen.append((i, int(t), kwargs["latents"].shape, kwargs["noise_pred"].shape))
        return kwargs

    pt(p, batch_size=2, num_inference_steps=4, callback_on_step_end=record,
       callback_on_step_end_tensor_inputs=p._callback_tensor_inputs)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and p.num_timesteps == 4
    assert [s[1] for s in seen] == p.scheduler.timesteps.tolist()
    assert all(s[2] == s[3] == (2, 3, 8, 8) for s in seen)

    def zero_last(pipe, i, t, kwargs):
        if i == pipe.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pt(p, batch_size=2, num_inference_steps=4, callback_on_step_end=zero_last)
    assert torch.equal(out, torch.full_like(out, 0.5))  # pixel value 0 in [-1, 1] is 0.5 in [0, 1]
    with pytest.raises(ValueError, match=r"\['prompt_embeds'\] are not available"):
        p(num_inference_steps=1, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_callback_can_interrupt_and_diffusers_callback_objects_work():
    p = make("ddim")
    calls = []
    handle = p.transformer.register_forward_hook(lambda *a: calls.append(1))

    def stop(pipe, i, t, kwargs):
        pipe._interrupt = True
        return {}

    try:
        pt(p, num_inference_steps=5, callback_on_step_end=stop)
    finally:
        handle.remove()
    assert len(calls) == 1 and p.interrupt

    class Scale(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"] * 0}

    out = pt(p, num_inference_steps=2, callback_on_step_end=MultiPipelineCallbacks([Scale(), Scale()]))
    assert torch.equal(out, torch.full_like(out, 0.5))


def test_output_type_latent():
    p = make(latent=True, num_classes=2)
    lat = p(class_labels=[0, 1], num_inference_steps=2, generator=gens(0, 1), output_type="latent").images
    img = pt(p, class_labels=[0, 1], num_inference_steps=2, generator=gens(0, 1))
    assert lat.shape == (2, 4, 8, 8) and img.shape == (2, 3, 16, 16)
    torch.testing.assert_close(p.decode(lat), img, atol=0, rtol=0)
    with pytest.raises(ValueError, match="latent models"):
        make()(num_inference_steps=1, output_type="latent")


# ------------------------------------------------------------------------------ model card


def test_model_card_contents(tmp_path):
    p = make(num_classes=10, depth=4)
    info = {"dataset": "cifar10 (50,000 train images)", "train_steps": 25000, "fid": 7.25,
            "fid_protocol": "FID-10k, dpm++ 50 steps", "command": "python train.py --config configs/cifar10.yaml"}
    p.save_pretrained(tmp_path, model_card=info)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "diffusers" and "cog-attention" in card.data.tags
    text = card.text
    assert f"Parameters: {sum(x.numel() for x in p.transformer.parameters()):,}" in text
    types = p.transformer.attention_types()
    counts = f"(cog: {types.count('cog')}, softmax: {types.count('softmax')})"
    assert len(types) == 5 and f"{', '.join(types)} {counts}" in text
    for expected in ["Training data: cifar10 (50,000 train images)", "Training steps: 25000", "FID: 7.25",
                     "FID protocol: FID-10k, dpm++ 50 steps", "`python train.py --config configs/cifar10.yaml`",
                     "depth: 4", "embed_dim: 32", "10 classes", "DDPMScheduler", "pixel space"]:
        assert expected in text, expected
    assert UViTPipeline.from_pretrained(tmp_path).transformer.config.depth == 4  # the card does not disturb loading
    write_model_card(tmp_path, p, fid=6.5)  # e.g. updated once the FID is measured
    assert "FID: 6.5" in ModelCard.load(tmp_path / "README.md").text
    with pytest.raises(TypeError, match="model_card must be a dict"):
        p.save_pretrained(tmp_path / "x", model_card=["cifar10"])
    assert not (tmp_path / "x").exists()


def test_model_card_without_training_facts_says_so(tmp_path):
    make(latent=True).save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "Not recorded." in text and "latent space of an AutoencoderKL (scaling factor 0.5)" in text

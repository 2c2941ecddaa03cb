"""The README's main job (python -m cogdiff.demo): its noise check tells images from noise, and the whole job runs
end to end on generated data with a tiny budget (outputs, image-like samples, the reference cache, resuming)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogdiff.data import FASHION_MNIST_DIR
from cogdiff.sources import load_source
from cogdiff.workflows.demo import (
    GRID,
    SCALE,
    build_parser,
    load_demo_study,
    neighbour_correlation,
    pixel_std,
    sample_check,
    write_grids,
)

REPO = Path(__file__).resolve().parents[1]
FASHION = "dataset:kind=fashion_mnist,split=train,limit=64"


def real_images():
    try:
        return load_source(FASHION)
    except (OSError, ValueError):  # no Debian package here: the generated shapes
        return load_source("dataset:kind=synthetic,split=train,limit=64")


def gaussian_noise_images(n=64, size=28, seed=0):
    """What an untrained model's samples look like: clipped N(0, 1) mapped from [-1, 1] to uint8."""
    x = np.random.default_rng(seed).standard_normal((n, size, size, 1))
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


def test_noise_check_passes_real_images_and_fails_noise():
    real, noise = real_images(), gaussian_noise_images()
    assert np.median(neighbour_correlation(real)) > 0.6
    assert np.abs(neighbour_correlation(noise)).max() < 0.2
    assert sample_check(real, real)["noise_like"] <= 2
    assert sample_check(noise, real)["noise_like"] == len(noise)  # the criterion can fail
    # the pixel std alone would not tell noise from garments (both ~0.3-0.4): that is why the check is spatial
    assert abs(np.median(pixel_std(noise)) - np.median(pixel_std(real))) < 0.25
    blank = np.zeros((4, 28, 28, 1), np.uint8)
    assert (neighbour_correlation(blank) == 0).all() and sample_check(blank, real)["noise_like"] == 4
    smooth_noise = np.repeat(np.repeat(gaussian_noise_images(8, 7), 4, axis=1), 4, axis=2)  # 4x4 blocks of noise
    assert (neighbour_correlation(smooth_noise) > 0.5).all()  # what it cannot see: blocky noise looks image-like


def test_grids_are_8x8_enlarged_4x(tmp_path):
    images = {"softmax": real_images()[:64], "cog": gaussian_noise_images()}
    files = write_grids(images, tmp_path)
    cell = 28 * SCALE + 2
    for name in images:
        assert Image.open(files[name]).size == (GRID * cell + 2, GRID * cell + 2)
    assert Image.open(files["all"]).width > 2 * GRID * cell


def test_ref_images_are_clipped_to_the_data_size(capsys):
    study = load_demo_study(build_parser().parse_args(["--data", "synthetic", "--ref-images", "1000"]))
    assert "--ref-images 1000 is more than the 512 synthetic training images: using 512" in capsys.readouterr().out
    assert study["ref"] == "dataset:kind=synthetic,split=train,limit=512"
    assert [a["name"] for a in study["arms"]] == ["softmax", "cog"]


FASHION_HERE = Path(FASHION_MNIST_DIR).is_dir()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo with a CI budget (~1 min): Fashion-MNIST when installed (scripts/setup.sh does), else the shapes."""
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "out", root / "cache"
    cmd = [sys.executable, "-m", "cogdiff.demo", "--data", "fashion_mnist" if FASHION_HERE else "synthetic",
           "--steps", "400", "--num-images", "16", "--ref-images", "32", "--sample-steps", "10", "--out", str(out),
           "--cache-dir", str(cache), "train.batch_size=16"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cmd, proc, out, cache


def test_demo_end_to_end_smoke(demo_run):
    _, proc, out, cache = demo_run
    assert "| softmax | softmax |" in proc.stdout and "| cog | cog |" in proc.stdout
    assert f"Everything is in {out}/" in proc.stdout
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo["results"]) == {"softmax", "cog"} and demo["wall_s"] > 0 and demo["commit"]
    assert demo["ref_count"] == 32 and len(list(cache.glob("ref_*.npz"))) == 1
    for name in ("samples.png", "samples_softmax.png", "samples_cog.png", "curves.png", "demo.md"):
        assert (out / name).stat().st_size > 0
    for arm, r in demo["results"].items():
        assert r["num_images"] == 16 and r["kid_mean"] is not None and r["fid"] > 0
        check = r["sample_check"]
        if not FASHION_HERE:  # the shapes need more than this budget to stop looking like noise
            continue
        # not noise: spatially correlated (noise ~0.0, garments ~0.85, 400 steps ~0.5) with a data-like pixel spread
        assert check["median_corr"] > 0.3 and check["noise_like"] <= check["num"] // 4, (arm, check)
        assert 0.5 < check["median_std"] / check["real_median_std"] < 2, (arm, check)


def test_demo_rerun_uses_the_cache_and_skips_finished_training(demo_run):
    cmd, _, out, _ = demo_run
    (out / "stats" / "ref.npz").unlink()
    before = (out / "runs" / "cog" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "from the cache" in proc.stdout and "nothing (all runs finished earlier)" in proc.stdout
    assert (out / "runs" / "cog" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == before


def test_demo_refuses_bad_budget_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "cogdiff.demo", "--data", "synthetic", "--num-images", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --num-images must be at least 2, got 1"

"""Colour statistics in FID results and reference statistics files (generated vs data side by side)."""

import numpy as np
import pytest
import torch

from cogdiff.metrics import FIDEvaluator, RefStats
from cogdiff.metrics.color import ColorStats, color_stats
from cogdiff.metrics.stats import compute_ref_stats


def colour_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


class FakeExtractor:
    """Deterministic 2048-d 'features' from the pixels (the statistics code does not care where they come from)."""

    extractor_id = "fake-extractor"

    def __call__(self, batch):
        x = torch.as_tensor(np.asarray(batch), dtype=torch.float64).flatten(1)
        feats = torch.cat([x, x.square() / 255.0], 1)
        return torch.nn.functional.pad(feats, (0, 2048 - feats.shape[1])), None


def assert_same_colours(got, want):
    assert got["num_images"] == want["num_images"]
    for k in ("channel_mean", "channel_std", "saturation_mean"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, err_msg=k)


def test_merged_summaries_equal_one_pass():
    a, b = colour_images(5, 0), colour_images(7, 1)
    merged = ColorStats().merge(ColorStats().update(a).summary()).merge(ColorStats().update(b).summary())
    merged.merge(ColorStats().summary())  # an empty process's share changes nothing
    one = color_stats(np.concatenate([a, b]))
    got = merged.result()
    assert got["num_images"] == one["num_images"] == 12
    np.testing.assert_allclose(got["channel_mean"], one["channel_mean"], rtol=1e-12)
    np.testing.assert_allclose(got["channel_std"], one["channel_std"], rtol=1e-12)
    assert got["saturation_mean"] == pytest.approx(one["saturation_mean"], rel=1e-12)


def test_reference_stats_store_the_colours_and_old_files_still_load(tmp_path):
    real = colour_images(16, 2)
    stats = compute_ref_stats([real[:9], real[9:]], FakeExtractor(), source="test")
    path = stats.save(str(tmp_path / "ref.npz"))
    loaded = RefStats.load(path)
    assert_same_colours(loaded.color, color_stats(real))
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "color"}
    np.savez(tmp_path / "old.npz", **old)
    assert RefStats.load(str(tmp_path / "old.npz")).color is None


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    from cogdiff.metrics.inception import InceptionFeatures

    ext = InceptionFeatures(device="cpu")
    ref = compute_ref_stats([colour_images(6, 3)], ext, source="test")
    return FIDEvaluator(ref.save(str(tmp_path_factory.mktemp("ref") / "ref.npz")), device="cpu")


def test_score_images_reports_the_colours_of_the_scored_images(evaluator):
    gen = colour_images(6, 4) // 2  # darker than the reference
    out = evaluator.score_images([gen[:4], gen[4:]])
    assert_same_colours(out["color"], color_stats(gen))
    assert out["color"]["channel_mean"][0] < evaluator.ref.color["channel_mean"][0]


def test_color_shift_measures_offsets_and_contrast_against_the_reference():
    from cogdiff.metrics.color import color_shift

    rng = np.random.default_rng(0)
    ref = rng.integers(40, 200, (64, 8, 8, 3), dtype=np.uint8)
    brighter = np.clip(ref.astype(int) + np.array([10, 0, -6]), 0, 255).astype(np.uint8)  # no clipping in 40..200
    s = color_shift(color_stats(brighter), color_stats(ref))
    np.testing.assert_allclose(s["mean_offset"], [10, 0, -6], atol=1e-9)
    assert abs(s["brightness_offset"] - 4 / 3) < 1e-9
    np.testing.assert_allclose(s["std_ratio"], [1, 1, 1], atol=1e-9)  # a shift leaves the contrast alone
    flat = ((ref.astype(int) - 120) // 2 + 120).astype(np.uint8)  # half the contrast around 120
    assert all(0.45 < r < 0.55 for r in color_shift(color_stats(flat), color_stats(ref))["std_ratio"])
    with pytest.raises(ValueError, match="cannot be compared"):
        color_shift(color_stats(ref[..., :1]), color_stats(ref))

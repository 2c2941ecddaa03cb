"""cogdiff.metrics.color: hand-checked values, streaming equals one pass, layouts, grayscale, bad inputs."""

import numpy as np
import pytest
import torch

from cogdiff.metrics.color import ColorStats, color_stats


def test_hand_checked_values():
    # two 1x2 RGB images: pixels (0, 10, 20), (255, 0, 5) | (30, 30, 30), (100, 50, 0)
    x = np.array([[[[0, 10, 20], [255, 0, 5]]], [[[30, 30, 30], [100, 50, 0]]]], dtype=np.uint8)  # (2, 1, 2, 3)
    r = color_stats(x, layout="NHWC")  # (2, 1, 2, 3) could also be 1-channel NCHW: say which
    assert r["num_images"] == 2
    assert r["channel_mean"] == pytest.approx([385 / 4, 90 / 4, 55 / 4])
    red = np.array([0, 255, 30, 100], dtype=float)
    assert r["channel_std"][0] == pytest.approx(np.sqrt(np.mean((red - red.mean()) ** 2)))
    assert r["saturation_mean"] == pytest.approx((20 + 255 + 0 + 100) / 4)  # max - min per pixel, no uint8 wrap


def test_streaming_equals_one_pass_and_layouts_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    x[:25, ..., 2] //= 3  # batches with different means, so the merge matters
    whole = color_stats(x)
    acc = ColorStats()
    for i in range(0, 50, 7):
        acc.update(x[i : i + 7])
    streamed = acc.result()
    assert streamed["num_images"] == 50
    for key in ("channel_mean", "channel_std"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-12)
        assert whole[key] == pytest.approx(getattr(x.reshape(-1, 3).astype(float), key.split("_")[1])(0), rel=1e-12)
    assert streamed["saturation_mean"] == pytest.approx(whole["saturation_mean"])
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    for r in (color_stats(nchw), color_stats(nchw, layout="NCHW"), color_stats(torch.from_numpy(x), layout="NHWC")):
        assert r["num_images"] == 50 and r["saturation_mean"] == pytest.approx(whole["saturation_mean"])
        assert r["channel_mean"] == pytest.approx(whole["channel_mean"])
        assert r["channel_std"] == pytest.approx(whole["channel_std"])


def test_grayscale_has_zero_saturation():
    x = np.random.default_rng(1).integers(0, 256, size=(4, 6, 6), dtype=np.uint8)
    for batch in (x, x[..., None], torch.from_numpy(x)[:, None]):
        r = color_stats(batch)
        assert r["saturation_mean"] == 0 and len(r["channel_mean"]) == 1
        assert r["channel_mean"][0] == pytest.approx(x.mean())
    gray_rgb = np.repeat(x[..., None], 3, axis=-1)  # an RGB image with R = G = B
    assert color_stats(gray_rgb)["saturation_mean"] == 0


@pytest.mark.parametrize(
    "batch,match",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8), dtype=np.uint8), "expected a batch"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), "cannot tell the channel axis|1 \\(grayscale\\) or 3"),
        (np.zeros((2, 3, 8, 3), dtype=np.uint8), "pass layout='NHWC' or 'NCHW'"),
    ],
)
def test_bad_batches(batch, match):
    with pytest.raises(ValueError, match=match):
        ColorStats().update(batch)


def test_mixed_channels_and_empty_are_refused():
    acc = ColorStats().update(np.zeros((1, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 3-channel images; got a 1-channel batch"):
        acc.update(np.zeros((1, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no images"):
        ColorStats().result()
    with pytest.raises(ValueError, match="layout must be"):
        ColorStats(layout="HWC").update(np.zeros((1, 4, 4, 3), dtype=np.uint8))

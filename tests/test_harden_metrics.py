"""``python -m cogdiff.metrics`` with bad files: one ``error: ...`` line naming the file (exit 2), no traceback,
refused before the Inception pass, nothing written: a corrupt PNG in a folder, a truncated .npz (images or
statistics), mixed grayscale/RGB folders, statistics of the wrong dimension, a text file as weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogdiff.metrics import RefStats
from cogdiff.metrics import __main__ as metrics_cli
from cogdiff.metrics import inception as inc


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))}


def save_png(path: Path, shape, seed: int = 0) -> bytes:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path.read_bytes()


def write_stats(path: Path, dim: int = inc.NUM_FEATURES) -> str:
    stats = RefStats(np.zeros(dim), np.eye(dim), 8, "0" * 64, inc.STANDARD_EXTRACTOR_ID)
    return stats.save(str(path))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_inputs(tmp: Path, case: str) -> tuple:
    """(source, ref, extra args, words the error line must hold) of one bad-input case, built under ``tmp``."""
    ref, extra = write_stats(tmp / "ref.npz"), []
    source = tmp / "imgs"
    source.mkdir()
    if case in ("corrupt_png", "ref_corrupt_png"):
        for i in range(3):
            data = save_png(source / f"{i}.png", (16, 16, 3), i)
        (source / "bad.png").write_bytes(data[:60])  # a truncated PNG among good ones
        words = ["bad.png", "not a readable image"]
    elif case == "not_an_image":
        save_png(source / "0.png", (16, 16, 3))
        (source / "1.png").write_text("not an image")
        words = ["1.png", "not a readable image"]
    elif case == "truncated_npz":
        np.savez(tmp / "images.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
        truncate(tmp / "images.npz")
        source, words = tmp / "images.npz", ["images.npz", "truncated"]
    elif case == "truncated_ref":
        save_png(source / "0.png", (16, 16, 3))
        truncate(Path(ref))
        words = ["ref.npz", "truncated"]
    elif case == "gray_and_rgb":
        save_png(source / "a.png", (16, 16))
        save_png(source / "b.png", (16, 16, 3))
        words = ["a.png", "b.png", "grayscale", "convert them to one mode"]
    elif case == "ref_64_dims":
        save_png(source / "0.png", (16, 16, 3))
        ref, words = write_stats(tmp / "ref64.npz", 64), ["ref64.npz", "64-dimensional", "2048", "rebuild"]
    elif case == "text_as_weights":
        save_png(source / "0.png", (16, 16, 3))
        (tmp / "weights.txt").write_text("these are not weights\n")
        extra = ["--weights", str(tmp / "weights.txt"), inc.ALLOW_UNVERIFIED_FLAG]
        words = ["weights.txt", "not an Inception weights file"]
    return str(source), ref, extra, words


CASES = ["corrupt_png", "not_an_image", "truncated_npz", "truncated_ref", "gray_and_rgb", "ref_64_dims",
         "text_as_weights", "ref_corrupt_png"]


@pytest.mark.parametrize("case", CASES)
def test_bad_files_are_one_line_errors_before_the_inception_pass(capsys, tmp_path, monkeypatch, case):
    monkeypatch.setattr(inc.InceptionFeatures, "forward", lambda *a: pytest.fail("ran the Inception network"))
    source, ref, extra, words = make_inputs(tmp_path, case)
    if case.startswith("ref_") and case != "ref_64_dims":
        args = ["ref", source, "--out", str(tmp_path / "new_ref.npz")]
    else:
        args = ["calc", source, "--ref", ref, "--json", str(tmp_path / "scores.json")]
    before = snapshot(tmp_path)
    rc = metrics_cli.main([*args, *extra, "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and errors[0] == err[-1], err
    assert not [line for line in err if "Traceback" in line or line.startswith("  ")], err
    assert all(w in errors[0] for w in words), errors[0]
    assert "resize" not in errors[0] and "full Inception state dict" not in errors[0]
    assert snapshot(tmp_path) == before  # nothing written: no scores, no statistics, no temporary files


def test_mixed_sizes_still_say_resize(tmp_path):
    from cogdiff.sources import load_source

    save_png(tmp_path / "a.png", (16, 16, 3))
    save_png(tmp_path / "b.png", (8, 8, 3))
    with pytest.raises(ValueError, match=r"b.png is 8x8 RGB but .*a.png is 16x16 RGB; resize them"):
        load_source(str(tmp_path))


def test_mode_checked_across_batches(tmp_path):
    """A grayscale file in a later batch than the RGB ones is refused too (not silently widened to RGB)."""
    from cogdiff.sources import iter_source

    for i in range(3):
        save_png(tmp_path / f"{i}.png", (8, 8, 3), i)
    save_png(tmp_path / "3.png", (8, 8))
    batches = iter_source(str(tmp_path), batch_size=2)
    assert next(batches).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="3.png is 8x8 grayscale .* convert them to one mode"):
        next(batches)

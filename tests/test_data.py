"""Data loaders: generated image folders, synthetic shapes, Fashion-MNIST and the CIFAR-10 PNG shards."""

import gzip
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cogdiff.data as data_mod
from cogdiff.config import DataConfig
from cogdiff.data import DataError, build_dataset, read_idx

SHARED_CIFAR = Path(
    os.environ.get("COGDIFF_CIFAR10_SHARDS", Path(__file__).resolve().parents[2] / "shared/data/cifar10")
)
FASHION = Path(data_mod.FASHION_MNIST_DIR)


def cfg(**kw):
    return DataConfig(**kw)


def write_folder(root: Path, sizes=((20, 24), (24, 20))):
    """3 classes x 2 solid-colour PNGs; returns {(class, i): rgb}."""
    colours = {}
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            rgb = (40 * c + 10, 200 - 30 * i, 7 * c + i)
            Image.new("RGB", size, rgb).save(root / name / f"{i}.png")
            colours[(c, i)] = rgb
    return colours


def test_imagefolder_decodes_exactly_and_caches(tmp_path, monkeypatch):
    colours = write_folder(tmp_path / "set" / "train")
    ds = build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "set"), resolution=8, random_flip=False))
    assert (ds.num_examples, ds.shape, ds.num_classes) == (6, (3, 8, 8), 3)
    x, y = ds.get_batch(torch.arange(6), torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 2, 2]
    for k, (c, i) in enumerate(sorted(colours)):
        want = torch.tensor(colours[(c, i)], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(x[k], want[:, None, None].expand(3, 8, 8), atol=1e-6)
    caches = list((tmp_path / "set" / ".cogdiff_cache").glob("*.npz"))
    assert len(caches) == 1
    # A second start reads the cache: decoding is not called again.
    monkeypatch.setattr(data_mod, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    again = build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "set"), resolution=8, random_flip=False))
    assert torch.equal(again.get_batch(torch.arange(6), torch.Generator())[0], x)
    # A changed file changes the fingerprint: the cache is rebuilt (here: decode is called and fails loudly).
    Image.new("RGB", (20, 24), (1, 2, 3)).save(tmp_path / "set" / "train" / "cat" / "2.png")
    with pytest.raises(pytest.fail.Exception):
        build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "set"), resolution=8))


def test_imagefolder_errors_and_cache_dir(tmp_path):
    write_folder(tmp_path / "mixed")
    with pytest.raises(DataError, match="differ in size.*data.resolution"):
        build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "mixed")))
    with pytest.raises(DataError, match="not found"):
        build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "nothing")))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="data.path is not set"):
        build_dataset(cfg(kind="imagefolder"))
    with pytest.raises(DataError, match="no test split at"):
        build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "mixed"), split="test", resolution=4))
    ds = build_dataset(
        cfg(kind="imagefolder", path=str(tmp_path / "mixed"), resolution=4, cache_dir=str(tmp_path / "c"))
    )
    assert ds.shape == (3, 4, 4) and len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_cache_avoids_read_only_data(tmp_path, monkeypatch):
    write_folder(tmp_path / "ro" / "data", sizes=((8, 8),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "ro").chmod(0o555)  # like ../shared: no write bits (root could still write: modes are read)
    try:
        ds = build_dataset(cfg(kind="imagefolder", path=str(tmp_path / "ro" / "data")))
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert ds.shape == (3, 8, 8) and not (tmp_path / "ro" / ".cogdiff_cache").exists()
    assert len(list((tmp_path / "xdg" / "cogdiff").glob("data-native-*.npz"))) == 1


def test_flip_follows_the_generator():
    ds = build_dataset(cfg(kind="synthetic", resolution=8, limit=64))
    plain = build_dataset(cfg(kind="synthetic", resolution=8, limit=64, random_flip=False))
    idx = torch.arange(64)
    x0, _ = plain.get_batch(idx, torch.Generator())
    x1, y1 = ds.get_batch(idx, torch.Generator().manual_seed(3))
    x2, y2 = ds.get_batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(x1[flipped], x0[flipped].flip(-1)) and torch.equal(x1[~flipped], x0[~flipped])
    assert x0.min() >= -1 and x0.max() <= 1 and ds.num_classes == 4 and set(y1.tolist()) == {0, 1, 2, 3}


def test_limit_is_a_fixed_subset():
    full = build_dataset(cfg(kind="synthetic", resolution=8, random_flip=False))
    a = build_dataset(cfg(kind="synthetic", resolution=8, limit=100, random_flip=False))
    b = build_dataset(cfg(kind="synthetic", resolution=8, limit=100, random_flip=False))
    assert full.num_examples == 512 and a.num_examples == 100 and torch.equal(a.images, b.images)
    rows = {bytes(img.numpy()) for img in full.images}
    assert all(bytes(img.numpy()) in rows for img in a.images)
    assert not torch.equal(a.images, full.images[:100])  # a spread-out subset, not the first 100
    with pytest.raises(DataError, match="data.limit=0"):
        build_dataset(cfg(kind="synthetic", resolution=8, limit=0))


def write_idx(path: Path, array: np.ndarray):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_fashion_errors(tmp_path):
    imgs = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([2, 0, 1]))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    ds = build_dataset(cfg(kind="fashion_mnist", path=str(tmp_path), random_flip=False))
    assert ds.shape == (1, 4, 4) and ds.num_classes == 10
    x, y = ds.get_batch(torch.tensor([1]), torch.Generator())
    assert y.tolist() == [0] and torch.allclose(x[0, 0], torch.tensor(imgs[1], dtype=torch.float32) / 127.5 - 1)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"\x00" * 7)  # truncated
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(DataError, match="truncated"):
        build_dataset(cfg(kind="fashion_mnist", path=str(tmp_path), split="test"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(cfg(kind="fashion_mnist", path=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="only for imagefolder"):
        build_dataset(cfg(kind="fashion_mnist", path=str(tmp_path), resolution=32))


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_package():
    ds = build_dataset(cfg(kind="fashion_mnist", split="test", random_flip=False))
    assert (ds.num_examples, ds.shape, ds.num_classes) == (10_000, (1, 28, 28), 10)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10  # balanced test split
    x, _ = ds.get_batch(torch.arange(256), torch.Generator())
    assert x.min() == -1 and x.max() == 1 and -0.8 < x.mean() < 0


@pytest.mark.skipif(not (SHARED_CIFAR / "test.tar.gz").is_file(), reason="no CIFAR-10 shards in ../shared/data/cifar10")
def test_cifar10_png_shard(tmp_path):
    subprocess.run(["tar", "xzf", str(SHARED_CIFAR / "test.tar.gz"), "-C", str(tmp_path)], check=True)
    ds = build_dataset(cfg(kind="cifar10", path=str(tmp_path / "cifar10"), split="test", random_flip=False))
    assert (ds.num_examples, ds.shape, ds.num_classes) == (10_000, (3, 32, 32), 10)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    # The shard README's per-channel test mean on the 0-255 scale: the decoded pixels are the original ones.
    mean = ds.images.double().mean(dim=(0, 2, 3))
    assert torch.allclose(
        mean, torch.tensor([126.02464141, 123.70850420, 114.85431865], dtype=torch.float64), atol=1e-6
    )
    with pytest.raises(DataError, match="holds .tar.gz shards: unpack them"):
        build_dataset(cfg(kind="cifar10", path=str(SHARED_CIFAR)))


def test_one_image_extension_list(tmp_path):
    from cogdiff.latents.images import IMAGE_EXTENSIONS, scan_image_folder

    assert IMAGE_EXTENSIONS is data_mod.IMAGE_EXTENSIONS  # the latent extraction reads the same files
    for i, name in enumerate(["a.png", "b.JPG", "c.ppm", "d.webp", "e.txt", "f.npz"]):
        (tmp_path / "train" / "cls").mkdir(parents=True, exist_ok=True)
        path = tmp_path / "train" / "cls" / name
        if name.endswith(("txt", "npz")):
            path.write_text("not an image")
        else:
            Image.new("RGB", (4, 4), (i, 0, 0)).save(
                path, format={"JPG": "JPEG"}.get(name[2:].upper(), name[2:].upper())
            )
    files, _, _ = scan_image_folder(str(tmp_path / "train"))
    assert files == ["cls/a.png", "cls/b.JPG", "cls/c.ppm", "cls/d.webp"]
    ds = build_dataset(cfg(kind="imagefolder", path=str(tmp_path), cache_dir=str(tmp_path / "cache")))
    assert ds.num_examples == 4
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].endswith(".npz")  # no temporary left beside it
    assert len(list((tmp_path / "cache").iterdir())) == 1

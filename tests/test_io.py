"""Atomic writers: a failure mid-write leaves the previous file intact and no temporaries."""

import json
import os

import numpy as np
import pytest

from cogdiff.io import (
    atomic_open,
    atomic_save_with,
    atomic_savez,
    atomic_write_json,
    remove_stale_temporaries,
    sha256_file,
)


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write('{"x": 2')  # half a file, then a crash
            raise RuntimeError("crash")
    assert json.loads(p.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]
    assert oct(p.stat().st_mode & 0o777) == "0o644"


def test_savez_roundtrip_and_save_with(tmp_path):
    atomic_savez(tmp_path / "x.npz", a=np.arange(3))
    assert np.load(tmp_path / "x.npz")["a"].tolist() == [0, 1, 2]
    atomic_save_with(tmp_path / "t.txt", lambda name: open(name, "w").write("hi"), suffix=".txt")
    assert (tmp_path / "t.txt").read_text() == "hi"
    with pytest.raises(ZeroDivisionError):
        atomic_save_with(tmp_path / "t.txt", lambda name: 1 / 0)
    assert (tmp_path / "t.txt").read_text() == "hi"


def test_remove_stale_and_sha(tmp_path):
    (tmp_path / "keep.txt").write_text("k")
    (tmp_path / "m.json.tmp-123abc").write_text("half")
    (tmp_path / "other.tmp-9").write_text("x")
    assert remove_stale_temporaries(tmp_path, stems=["m.json"]) == ["m.json.tmp-123abc"]
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "other.tmp-9"]
    assert sha256_file(tmp_path / "keep.txt") == "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"

"""Bad input is refused before any work with one ``error: ...`` line (exit 2), no traceback, nothing on disk
changed: numeric config values, resuming another model's checkpoint, truncated checkpoint files."""

import shutil
from pathlib import Path

import pytest
from conftest import MICRO

from cogdiff.training import list_checkpoints
from cogdiff.workflows import train

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = str(ROOT / "configs" / "tiny.yaml")


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))}


def run_train(capsys, *overrides) -> str:
    """train.py's main with MICRO settings: asserts exit 2 and a one-line error, returns that line."""
    rc = train.main(["--config", TINY_YAML, *MICRO, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("override, names", [
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"), ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=0", "train.grad_accum"), ("model.patch_size=0", "model.patch_size"),
    ("model.embed_dim=-8", "model.embed_dim"), ("optim.betas=[0.9]", "optim.betas"),
    ("sample.grid_size=0", "sample.grid_size"), ("train.keep_last=-1", "train.keep_last"),
])
def test_bad_numbers_refused_before_step_0(capsys, tmp_path, override, names):
    out = tmp_path / "run"
    line = run_train(capsys, override, f"train.output_dir={out}")
    assert names in line
    assert not out.exists()


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "run"
    assert train.main(["--config", TINY_YAML, *MICRO, "train.steps=4", "train.checkpoint_every=2",
                       "train.keep_last=2", "train.log_every=2", f"train.output_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("change", ["model.attention_type=cog", "model.depth=4"])
def test_resume_from_other_models_checkpoint_refused(capsys, tmp_path, source_run, change):
    checkpoint = list_checkpoints(source_run / "checkpoints")[-1]
    before = snapshot(source_run)
    out = tmp_path / "new"
    line = run_train(capsys, change, "train.steps=8", "train.keep_last=1", f"train.resume={checkpoint}",
                     f"train.output_dir={out}")
    assert "different model" in line and change.split("=")[0].split(".")[1] in line
    assert snapshot(source_run) == before  # nothing deleted or rewritten in the other run


@pytest.mark.parametrize("name", ["training_state.pt", "rng_state_0.pt"])
def test_truncated_state_file_names_it(capsys, tmp_path, source_run, name):
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    target = checkpoint / name
    target.write_bytes(target.read_bytes()[:100])
    before = snapshot(run)
    line = run_train(capsys, "train.steps=8", "train.resume=latest", "train.keep_last=1", f"train.output_dir={run}")
    assert name in line and "truncated" in line and "train.resume=" in line and "step_0000002" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("extra, names", [
    (["--guidance-scale", "3"], "--guidance-scale"), (["--out", "FILE"], "is a file"),
    pytest.param(["--device", "cuda"], "--device cuda", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="needs a machine without a GPU")),
])
def test_sample_refusals_write_nothing(capsys, tmp_path, source_run, extra, names):
    from cogdiff.workflows import sample

    file = tmp_path / "x.txt"
    file.write_text("keep")
    out = tmp_path / "samples"
    args = [str(source_run / "pipeline"), "--out", str(out), "-n", "2", "--steps", "2", "--no-progress"]
    args += [str(file) if a == "FILE" else a for a in extra]
    before = snapshot(tmp_path)
    rc = sample.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.fixture(scope="module")
def other_data_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("other") / "run"
    assert train.main(["--config", TINY_YAML, *MICRO, "data.resolution=8", "train.steps=2",
                       "train.checkpoint_every=0", f"train.output_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("case", ["same_twice", "mixed_data"])
def test_compare_refusals(capsys, tmp_path, source_run, other_data_run, case):
    from cogdiff.workflows import compare

    models = [source_run, source_run] if case == "same_twice" else [source_run, other_data_run]
    out = tmp_path / "cmp"
    rc = compare.main([*map(str, models), "--ref", str(tmp_path / "ref.npz"), "--out", str(out), "-n", "2",
                       "--no-progress", *([] if case == "same_twice" else ["--labels", "a,b"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert ("same model twice" if case == "same_twice" else "--allow-mixed-data") in err[0]
    assert not out.exists()


def test_fid_of_few_images_warns_biased():
    import warnings

    import torch

    from cogdiff.metrics.stats import frechet_distance

    d, x = 8, torch.randn(5, 8, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frechet_distance(torch.zeros(d), torch.eye(d), x.mean(0), torch.cov(x.T), x2=x)
        frechet_distance(torch.zeros(d), torch.eye(d), torch.zeros(d), torch.eye(d), x2=torch.randn(20, d))
    assert [("strongly biased" in str(w.message)) for w in caught] == [True]


@pytest.mark.parametrize("source, out, names", [
    ("dataset:kind=synthetic,limit=4", "x.txt", ".npz"), ("dataset:kind=synthetic,limit=abc", "r.npz", "data.limit"),
])
def test_metrics_ref_checks_before_computing(capsys, tmp_path, monkeypatch, source, out, names):
    from cogdiff.metrics import __main__ as metrics_cli
    from cogdiff.metrics import stats

    monkeypatch.setattr(stats, "compute_ref_stats", lambda *a, **k: pytest.fail("computed before the check"))
    monkeypatch.setattr(metrics_cli, "InceptionFeatures", lambda *a, **k: type("E", (), {"extractor_id": "x"})())
    rc = metrics_cli.main(["ref", source, "--out", str(tmp_path / out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
    assert list(tmp_path.iterdir()) == []

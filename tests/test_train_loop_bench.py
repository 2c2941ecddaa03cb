"""benchmarks/train_loop.py's bookkeeping (CPU; the training runs themselves are faked): rows kept across
invocations with --append, medians and the Cog/softmax ratio in the Markdown table."""

import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("train_loop", os.path.join(HERE, "..", "benchmarks", "train_loop.py"))
train_loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_loop)


def test_append_keeps_earlier_runs_and_the_table_takes_medians(tmp_path, monkeypatch):
    speed = iter([4000.0, 4100.0, 4200.0, 3900.0, 4300.0, 4000.0, 1.0, 2.0])

    def fake_run(attention, graphs, args, out_dir):
        return {"attention": attention, "graphs": graphs, "images_per_s": next(speed), "steps": args.steps}

    monkeypatch.setattr(train_loop, "run_once", fake_run)
    out = tmp_path / "loop.json"
    common = ["--data", "synthetic", "--graphs", "on", "--steps", "10", "--out", str(out), "--commit", "abc"]
    assert train_loop.main([*common, "--repeats", "1"]) == 0
    assert train_loop.main([*common, "--repeats", "2", "--append"]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["attention"], r["images_per_s"]) for r in runs] == [
        ("softmax", 4000.0), ("cog", 4100.0), ("softmax", 4200.0), ("cog", 3900.0), ("softmax", 4300.0),
        ("cog", 4000.0)]
    md = (tmp_path / "loop.md").read_text()
    assert "| on | 4200 | 4000 | 1.050x |" in md  # medians 4200 (softmax) and 4000 (Cog)
    assert train_loop.main([*common, "--repeats", "1"]) == 0  # without --append the file starts over
    assert len(json.loads(out.read_text())["runs"]) == 2

"""study.train_all with explicit slots, which the demo uses to train its two arms at once on a 2-core CPU: one run per
slot at the same time, poll() is called while they run, and a failed run is reported by name."""

import subprocess
import sys
import time

import pytest

from cogdiff.workflows import study as runner

STUDY = {"protocol": {"steps": 4}, "arms": [{"name": "softmax", "seeds": [0]}, {"name": "cog", "seeds": [0]},
                                              {"name": "qk", "seeds": [0]}]}


def fake_launch(started, fail=()):
    def launch(study, arm, seed, data, out, gpu, ref=None):
        started.append((arm["name"], gpu, time.monotonic()))
        code = f"import time; time.sleep(0.6); raise SystemExit({int(arm['name'] in fail)})"
        return subprocess.Popen([sys.executable, "-c", code])
    return launch


def test_two_slots_run_two_at_a_time_and_poll(monkeypatch, tmp_path):
    started, polls = [], []
    monkeypatch.setattr(runner, "_launch", fake_launch(started))
    runner.train_all(STUDY, None, tmp_path, slots=[None, None], poll=lambda: polls.append(1))
    assert [s[0] for s in started] == ["softmax", "cog", "qk"]
    assert started[1][2] - started[0][2] < 0.3  # the first two side by side
    assert started[2][2] - started[0][2] >= 0.5  # the third waits for a free slot
    assert len(polls) >= 3


def test_a_failed_run_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "_launch", fake_launch([], fail=("cog",)))
    with pytest.raises(RuntimeError, match="failed: train cog seed 0 \\(exit 1"):
        runner.train_all(STUDY, None, tmp_path, slots=[None, None])

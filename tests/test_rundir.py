"""cogdiff.rundir helpers that need no training run."""


def test_git_commit_outside_git_uses_the_environment(tmp_path, monkeypatch):
    from cogdiff.rundir import git_commit

    monkeypatch.delenv("COGDIFF_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("COGDIFF_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    assert git_commit() not in ("unknown", "abc123")  # inside this checkout git wins

"""The README's build/save/reload/sample snippet really runs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Build, save, reload, sample", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/", f"{tmp_path}/")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "uvic-tiny-grid.png").exists()
    assert (tmp_path / "uvic-tiny" / "model_index.json").exists()
    assert scope["model"].attention_types()[1] == "cog"


def test_readme_cog_attention_snippet_runs():
    """The 'Cog Attention on its own' snippet is self-contained and converts every Attention module."""
    section = README.read_text().split("### Cog Attention on its own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["out"].shape) == (2, 4, 16, 32)
    assert scope["n"] >= 1

"""The README's main job (python -m cogdiff.demo) runs end to end, here on generated data with tiny settings."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_end_to_end_smoke(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cogdiff.demo", "--data", "synthetic", "--steps", "6", "--fid-every", "3",
           "--fid-images", "8", "--num-images", "8", "--ref-images", "16", "--sample-steps", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| softmax | softmax |" in proc.stdout and "| cog | cog |" in proc.stdout
    report = json.loads((out / "compare" / "compare.json").read_text())
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"softmax", "cog"}
    assert all(r["fid"] > 0 and r["num_images"] == 8 for r in rows.values())
    for name in ("grid.png", "fid_vs_step.png", "compare.md"):
        assert (out / "compare" / name).stat().st_size > 0
    for a in ("softmax", "cog"):
        fid_rows = [json.loads(line) for line in (out / a / "fid.jsonl").read_text().splitlines()]
        assert [r["step"] for r in fid_rows] == [3, 6]

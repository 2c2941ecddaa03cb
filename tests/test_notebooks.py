"""The notebooks run top to bottom on CPU with tiny settings (executed with nbclient into a temporary
copy), write the files they promise, and are committed with outputs, small."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
MAX_BYTES = 300_000
CELL_TIMEOUT = 180

# notebook -> (environment for the CI run, files it must write under COGDIFF_NB_OUT). 02 trains two
# 12-step runs with train.py; 03 reads those runs through COGDIFF_RUNS (its own training branch calls
# the same run_training_process) - two fewer train.py start-ups keep the suite inside its time budget.
NOTEBOOKS = {
    "01_quickstart.ipynb": ({}, ["grid_ddpm20.png", "schedulers_25.png", "pipeline/model_index.json",
                                 "pipeline/pipeline_uvit.py", "pipeline/transformer/config.json"]),
    "02_cog_microscope.ipynb": ({"COGDIFF_NB_STEPS": "12"}, [
        "loss.png", "samples.png", "negative_by_block.png", "negative_by_timestep.png",
        "attention_map_cog.png", "attention_map_softmax.png", "similarity_by_depth.png",
        "runs/softmax/metrics.jsonl", "runs/cog/samples/step_0000012.png", "runs/cog/pipeline/model_index.json"]),
    # FID is off in CI: Inception on the CPU would cost more than this whole suite
    "03_compare.ipynb": ({"COGDIFF_NB_FID": "0"}, ["curves.png", "run_grids.png", "same_noise.png"]),
}


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if isinstance(out.get("text", ""), str) else "".join(out["text"]))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def execute(tmp_path_factory):
    """execute(name, extra_env) -> (executed notebook, its COGDIFF_NB_OUT folder); once per notebook."""
    done = {}

    def run(name, extra_env=None):
        if name in done:
            return done[name]
        env, _ = NOTEBOOKS[name]
        root = tmp_path_factory.mktemp(name.split("_")[0])
        out, work = root / "out", root / "nb"
        work.mkdir()
        shutil.copy(NB_DIR / name, work / name)
        nb = nbformat.read(work / name, as_version=4)
        for cell in nb.cells:  # start clean: the committed outputs must not leak into the checks
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
            for var in ("COGDIFF_PIPELINE", "COGDIFF_RUNS", "COGDIFF_NB_STEPS", "COGDIFF_NB_FID"):
                mp.delenv(var, raising=False)
            mp.setenv("COGDIFF_NB_OUT", str(out))
            mp.setenv("COGDIFF_CONFIGS", str(NB_DIR.parent / "configs"))  # the copy does not sit in notebooks/
            for k, v in {**env, **(extra_env or {})}.items():
                mp.setenv(k, v)
            NotebookClient(
                nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(work)}}
            ).execute()
        done[name] = (nb, out)
        return done[name]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, execute):
    _, expected = NOTEBOOKS[name]
    extra = {}
    if name == "03_compare.ipynb":
        _, out02 = execute("02_cog_microscope.ipynb")
        extra["COGDIFF_RUNS"] = f"softmax={out02 / 'runs' / 'softmax'},cog={out02 / 'runs' / 'cog'}"
    nb, out = execute(name, extra)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for rel in expected:
        f = out / rel
        assert f.is_file() and f.stat().st_size > 0, f"{name} did not write {rel}"
    text = _outputs_text(nb)
    if name == "01_quickstart.ipynb":
        assert text.count("identical=True") == 2
        for sched in ("DDPM", "DDIM", "DPM-Solver++", "Euler"):
            assert sched in text
        assert json.loads((out / "pipeline/model_index.json").read_text())["_class_name"] == [
            "pipeline_uvit",
            "UViTPipeline",
        ]
    if name == "02_cog_microscope.ipynb":
        assert "training steps per model: 12" in text
        assert "cog (untrained)" in text and "mean pairwise cosine" in text
        assert "['softmax', 'cog', 'cog', 'cog', 'softmax']" in text  # the Cog run really is Cog
    if name == "03_compare.ipynb":
        assert "12 metric rows" in text and "no FID rows" in text and "1 sample grids" in text
        for kind in ("softmax", "cog"):  # train.py (run by 02) logged every step: loss rows 1..12
            rows = [json.loads(line) for line in (out02 / "runs" / kind / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows] == list(range(1, 13))


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_has_outputs_and_is_small(name):
    path = NB_DIR / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "commit the notebook executed top to bottom"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "figures missing"

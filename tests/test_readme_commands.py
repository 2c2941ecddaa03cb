"""The README's command lines under "Train" and "Sample, score, compare" run as written, on tiny budgets.

Each command is taken from README.md, ``/data/cifar10`` is pointed at a 16-image CIFAR-10 tree, and overrides
are appended that shrink the budget (a smaller model, 2 steps, 4 images), never ones that remove a step of the
workflow; every command runs in this process through its ``main``. Commands that need a GPU or hours are listed in
``NOT_RUN`` with the reason; a command the README gains later fails here until it is run or listed.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from accelerate.state import AcceleratorState
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ("## Train", "## Sample, score, compare")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat")
SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "train.batch_size=4", "optim.warmup_steps=1",
         "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.fid_every=2",
         "train.fid_num_images=4", "sample.batch_size=4", "sample.grid_size=4", "sample.num_inference_steps=2"]
# appended to each command, matched by a fragment of it; output_dir matches the run folders sample/compare name
APPEND = {
    "configs/tiny.yaml": ["train.steps=2", "train.sample_every=0", "sample.grid_size=4"],
    "--dry-run": [],
    "train.compile=true": [*SMALL, "train.output_dir=runs/cog", "train.compile=false"],  # CPU: no inductor build
    "train.resume=latest": [*SMALL, "train.output_dir=runs/cog", "train.steps=4"],
    "accelerate launch": [*SMALL, "train.output_dir=runs/softmax"],  # its train.py arguments, in one process
    "sample.py": ["-n", "4", "--steps", "2", "--no-progress"],
    "cogdiff.metrics ref": ["--no-progress"],
    "cogdiff.metrics calc": ["--no-progress"],
    "cogdiff.compare": ["-n", "4", "--steps", "2", "--no-progress"],
}
NOT_RUN = {"scripts/cifar10_comparison.sh": "the whole CIFAR-10 study: GPU hours (its runner has its own tests)"}


def readme_commands() -> list:
    """Command lines of the bash blocks in SECTIONS (continuations joined, comments dropped), in order."""
    text, out = README.read_text(), []
    for title in SECTIONS:
        section = text.split(title + "\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            out += [c for c in (shlex.join(shlex.split(line, comments=True)) for line in
                                block.replace("\\\n", " ").splitlines()) if c]
    return out


def fake_cifar10(root: Path) -> None:
    """``root/train/<class>/*.png``: 16 random 32x32 RGB images in four CIFAR-10 classes."""
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = root / "train" / CIFAR_CLASSES[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def entry_point(argv: list):
    """(main function, its arguments) of a README command line."""
    from cogdiff.compare import main as compare_main
    from cogdiff.metrics.__main__ import main as metrics_main
    from cogdiff.workflows.sample import main as sample_main
    from cogdiff.workflows.train import main as train_main

    while "=" in argv[0]:  # VAR=value prefixes
        argv = argv[1:]
    if argv[0] == "accelerate":
        argv = ["python", *argv[argv.index("train.py") :]]
    scripts = {("python", "train.py"): train_main, ("python", "sample.py"): sample_main,
               ("python", "-m", "cogdiff.metrics"): metrics_main, ("python", "-m", "cogdiff.compare"): compare_main}
    for prefix, main in scripts.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return main, argv[len(prefix) :]
    raise AssertionError(f"no entry point known for README command {shlex.join(argv)}")


def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert len(commands) >= 9 and any("train.resume=latest" in c for c in commands)
    monkeypatch.chdir(tmp_path)  # runs/, samples/, stats/, results/ land here; configs/ is the repository's
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # reference statistics of the training data
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fake_cifar10(tmp_path / "cifar10")
    ran = []
    for command in commands:
        if any(key in command for key in NOT_RUN):
            continue
        if "configs/tiny.yaml" in command and not FASHION_MNIST.is_dir():
            continue  # the default data set is the Debian package the set-up script installs
        extra = [v for key, v in APPEND.items() if key in command]
        assert len(extra) == 1, f"classify this README command in APPEND or NOT_RUN: {command}"
        argv = shlex.split(command.replace("/data/cifar10", str(tmp_path / "cifar10"))) + extra[0]
        main, args = entry_point(argv)
        AcceleratorState._reset_state(reset_partial_state=True)  # each command is a process of its own for a user
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 0, f"{command}\n{err[-2000:]}"
        ran.append(command)
    assert (tmp_path / "runs" / "cog" / "checkpoints" / "step_0000004").is_dir()  # trained, then resumed
    assert (tmp_path / "results" / "compare" / "compare.json").is_file()
    assert len(ran) >= len(commands) - len(NOT_RUN) - 1


@pytest.mark.parametrize("key", list(APPEND))
def test_every_override_set_matches_a_readme_command(key):
    assert any(key in c for c in readme_commands()), f"APPEND[{key!r}] matches no README command any more"

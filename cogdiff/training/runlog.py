"""Run-directory logging: metrics.jsonl, fid.jsonl, TensorBoard scalars and sample grids (main process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..io import atomic_save_with, atomic_write_text

METRICS_FILE = "metrics.jsonl"
FID_FILE = "fid.jsonl"
TB_DIR = "tb"
SAMPLES_DIR = "samples"
GRID_NAME = "step_{:07d}.png"


def _parsed_lines(path: Path, text: str) -> List[Tuple[str, dict]]:
    """(line, row) for each line of the JSON-lines log ``text`` (read from ``path``). A last line that does
    not parse (half-written when the run was killed mid-append) is left out; a bad line anywhere else
    raises ValueError naming it."""
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not JSON ({line[:40]!r}): fix or delete that line") from None
    return out


def read_jsonl(path: Path) -> List[dict]:
    """The rows of a JSON-lines log, without a half-written last line."""
    return [row for _, row in _parsed_lines(path, Path(path).read_text())]


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows with ``step > last_step`` (logged by a run that was killed after its last checkpoint) and a
    half-written last line. The file is rewritten atomically, only when something is dropped."""
    if not path.is_file():
        return
    text = path.read_text()
    keep = "".join(line + "\n" for line, row in _parsed_lines(path, text) if row["step"] <= last_step)
    if keep != text:
        atomic_write_text(path, keep)


class RunLog:
    """Appends JSON lines and TensorBoard scalars; on resume, history after ``start_step`` is dropped."""

    def __init__(self, output_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(output_dir)
        for name in (METRICS_FILE, FID_FILE):
            truncate_jsonl(self.dir / name, start_step)
        self.tb = SummaryWriter(str(self.dir / TB_DIR), purge_step=start_step + 1 if start_step else None)

    def _append(self, name: str, row: dict) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def metrics(self, row: dict) -> None:
        self._append(METRICS_FILE, row)
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        self.tb.flush()

    def fid(self, row: dict) -> None:
        self._append(FID_FILE, row)
        for k in ("fid", "kid_mean"):
            if row.get(k) is not None:
                self.tb.add_scalar(f"eval/{k}", row[k], row["step"])
        self.tb.flush()

    def grid(self, images: torch.Tensor, step: int) -> Path:
        """Save (N, C, H, W) images in [0, 1] as a square-ish grid PNG and log it to TensorBoard."""
        from PIL import Image
        from torchvision.utils import make_grid

        from ..pipelines import to_uint8

        nrow = max(1, int(np.ceil(np.sqrt(images.shape[0]))))
        grid = make_grid(images.float().cpu(), nrow=nrow, padding=1, pad_value=1.0)  # (3, H', W')
        path = self.dir / SAMPLES_DIR / GRID_NAME.format(step)
        array = to_uint8(grid[None])[0]  # (H', W', 3) uint8
        atomic_save_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
        self.tb.add_image("samples", array, step, dataformats="HWC")
        self.tb.flush()
        return path

    def close(self) -> None:
        self.tb.close()


def gpu_memory_gb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30

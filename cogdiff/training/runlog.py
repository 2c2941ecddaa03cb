"""Run-folder logging: metrics.jsonl, fid.jsonl, diagnostics.jsonl, TensorBoard scalars and sample grids
(main process). The file names belong to :class:`cogdiff.rundir.RunDir`."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from ..grids import image_grid, save_png
from ..rundir import RunDir, append_jsonl


class RunLog:
    """Appends JSON lines and TensorBoard scalars; on resume, history after ``start_step`` is dropped."""

    def __init__(self, run: RunDir, start_step: int = 0):
        self.run = run
        run.truncate_logs(start_step)
        self.tb = SummaryWriter(str(run.tb_dir), purge_step=start_step + 1 if start_step else None)

    def metrics(self, row: dict) -> None:
        append_jsonl(self.run.metrics_file, row)
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        self.tb.flush()

    def fid(self, row: dict, raw: bool = False) -> None:
        """An FID row of the EMA weights (fid.jsonl, eval/fid) or, with ``raw``, the raw ones (fid_raw.jsonl,
        eval/fid_raw)."""
        append_jsonl(self.run.fid_raw_file if raw else self.run.fid_file, row)
        for k in ("fid", "kid_mean"):
            if row.get(k) is not None:
                self.tb.add_scalar(f"eval/{k}{'_raw' if raw else ''}", row[k], row["step"])
        self.tb.flush()

    def diagnostics(self, row: dict) -> None:
        append_jsonl(self.run.diagnostics_file, row)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"diag/{k}", v, row["step"])
        self.tb.flush()

    def grid(self, images: torch.Tensor, step: int):
        """Save (N, C, H, W) images in [0, 1] as a square-ish grid PNG and log it to TensorBoard."""
        grid = image_grid(images)
        path = self.run.grid_path(step)
        save_png(grid, path)
        self.tb.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        self.tb.flush()
        return path

    def close(self) -> None:
        self.tb.close()


def gpu_memory_gb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30

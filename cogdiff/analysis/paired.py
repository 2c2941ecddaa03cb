"""Paired comparison of two training runs' loss logs (same seed: the same images, noise and timesteps per step)."""

from __future__ import annotations

import statistics
from typing import List, Optional


def paired_loss(base: List[dict], other: List[dict], start_step: float) -> Optional[dict]:
    """Window-by-window loss difference (other - base) after ``start_step``. With the same seed both runs see
    the same images, noise and timesteps in every step, so the windows pair up; None if no steps match."""
    a = {r["step"]: r["loss"] for r in base if r["step"] > start_step}
    d = [r["loss"] - a[r["step"]] for r in other if r["step"] in a]
    if not d:
        return None
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    # Neighbouring windows are correlated (the weights change slowly): lag-1 autocorrelation says how far
    # the windows are from independent repeats; they are not a count of independent tests.
    var = sum((x - mean) ** 2 for x in d)
    lag1 = sum((x - mean) * (y - mean) for x, y in zip(d, d[1:])) / var if var > 0 else None
    return dict(from_step=int(start_step), windows=len(d), mean_diff=mean, sd_diff=sd, lag1_autocorr=lag1,
                rel_mean_diff=mean / statistics.fmean(a.values()), share_higher=sum(x > 0 for x in d) / len(d))

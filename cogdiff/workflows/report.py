"""``python -m cogdiff.report OUT [OUT2 ...] [--dest DEST]``: the study report under its older command name.

The same as ``python -m cogdiff.study report``: merges the run folders of one study (``scripts/cifar10_comparison.sh``
and ``python -m cogdiff.study run`` write them) into DEST (default OUT/report/): results.json, summary.md and the
plots described in :mod:`cogdiff.workflows.study_report`. Each run's commit and GPU come from its own provenance.

Folders of the earlier two-run script (``OUT/runs/<model>/`` with ``OUT/compare_ema/``, the layout of
results/cifar10_s2_25k_seed0/) are refused with a note: that report was retired with the script's old layout.
The paired training-loss statistic it printed lives on as :func:`cogdiff.analysis.paired.paired_loss`.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from . import study_cli

RETIRED_FLAGS = ("--commit", "--gpu", "--command")


def refusal(argv: List[str]) -> Optional[str]:
    """Why ``argv`` is a call of the retired two-run report (a flag or folder layout of it), or None."""
    flags = [a.split("=")[0] for a in argv if a.split("=")[0] in RETIRED_FLAGS]
    if flags:
        return (f"{'/'.join(flags)} belonged to the retired two-run report; drop it: the study report takes each "
                "run's commit, GPU and command from its provenance.json")
    old = [a for a in argv if os.path.isdir(os.path.join(a, "compare_ema"))]
    if old:
        return (f"{old[0]} has the layout of the earlier two-run script (runs/<model>/, compare_ema/), whose report "
                "was retired; run scripts/cifar10_comparison.sh again to get a study folder (runs/<arm>/seed<s>/)")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    why = refusal(argv)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    return study_cli.main(["report", *argv])


if __name__ == "__main__":
    sys.exit(main())

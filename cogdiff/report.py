"""``python -m cogdiff.report``: the command-line name of :mod:`cogdiff.workflows.report` (the study report)."""

import sys

from .analysis.paired import paired_loss
from .workflows.report import main

__all__ = ["main", "paired_loss"]  # paired_loss: kept importable here for scripts written against the old report

if __name__ == "__main__":
    sys.exit(main())

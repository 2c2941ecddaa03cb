"""``python -m cogdiff.report``: the command-line name of :mod:`cogdiff.workflows.report`."""

import sys

from .workflows.report import main

if __name__ == "__main__":
    sys.exit(main())

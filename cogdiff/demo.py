"""``python -m cogdiff.demo``: the command-line name of :mod:`cogdiff.workflows.demo`."""

import sys

from .workflows.demo import main

if __name__ == "__main__":
    sys.exit(main())

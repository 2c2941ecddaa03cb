"""``python -m cogdiff.compare``: the command-line name of :mod:`cogdiff.workflows.compare`."""

import sys

from .workflows.compare import main

if __name__ == "__main__":
    sys.exit(main())

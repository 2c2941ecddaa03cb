"""``python -m cogdiff.study``: the command-line name of :mod:`cogdiff.workflows.study_cli`."""

import sys

from .workflows.study_cli import main

if __name__ == "__main__":
    sys.exit(main())

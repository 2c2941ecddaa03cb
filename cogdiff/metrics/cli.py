"""Small helpers shared by the command-line front ends (``python -m cogdiff.metrics``, ``cogdiff.compare``)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Inside: every warning prints as one ``warning: <message>`` line on stderr (no source line);
    the previous warning display is restored on exit."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield

"""The one error wrapper of cogdiff's command lines: bad input is one ``error: ...`` line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Callable, Iterator, Tuple, Type

Errors = Tuple[Type[BaseException], ...]


def one_line(message: object) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Inside: every warning prints as one ``warning: <message>`` line on stderr (no source line);
    the previous warning display is restored on exit."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT), as shells report it


def run_cli(body: Callable[[], object], errors: Errors = (ValueError, OSError), fatal: Errors = (),
            warnings_one_line: bool = False) -> int:
    """Run ``body()``: 0 on success (or the int it returns), 2 after printing ``error: <one line>`` for ``errors``
    (bad input), 1 for ``fatal`` (the run itself failed, e.g. a non-finite loss), 130 after Ctrl-C (the
    interrupt's own message, e.g. where a run stopped and how to continue it, or ``interrupted``)."""
    try:
        with one_line_warnings() if warnings_one_line else contextlib.nullcontext():
            rc = body()
    except KeyboardInterrupt as e:
        if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun every process gets the Ctrl-C: say it once
            print(f"error: {one_line(e) or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return INTERRUPTED
    except fatal as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except errors as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0

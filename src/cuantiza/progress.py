"""Progress bars on long work (calibration, QAT epochs, big checkpoints).

Shown on stderr when it is a terminal, unless ``set_quiet(True)`` was called (the CLI's
``--quiet``) or the environment has ``CUANTIZA_QUIET=1``. Redirected to a file or a pipe, stderr
gets no bars: a log (or an error, which is one line) is not buried in their redraws.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_quiet: bool | None = None


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet if _quiet is not None else os.environ.get("CUANTIZA_QUIET") == "1"


def shown() -> bool:
    """Whether progress bars are drawn: not quiet, and stderr is a terminal."""
    return not is_quiet() and sys.stderr.isatty()


def bar(
    iterable=None, desc: str = "", total: int | None = None, unit: str = "it", disable: bool = False
):
    """A tqdm bar, off in quiet mode, when stderr is not a terminal (tqdm's ``disable=None``) or
    when the caller asks (``disable``, e.g. progress=False)."""
    off = True if disable or is_quiet() else None
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=off, leave=False)

"""Progress bars on long work (calibration, QAT epochs, big checkpoints).

Shown on stderr unless ``set_quiet(True)`` was called (the CLI's ``--quiet``) or the
environment has ``CUANTIZA_QUIET=1``.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

_quiet: bool | None = None


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet if _quiet is not None else os.environ.get("CUANTIZA_QUIET") == "1"


def bar(
    iterable=None, desc: str = "", total: int | None = None, unit: str = "it", disable: bool = False
):
    """A tqdm bar, off in quiet mode or when the caller asks (``disable``, e.g. progress=False)."""
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=disable or is_quiet(), leave=False
    )

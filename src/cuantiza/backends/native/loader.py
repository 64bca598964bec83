"""Loading the native C libraries (ctypes) and the switch that turns them off.

The C code has no Python headers: setuptools compiles it as optional extensions (``setup.py``)
next to this file. If that failed (no C compiler) a library is missing and its torch path runs;
``CUANTIZA_NATIVE=0`` turns every native kernel off at run time (read at each call).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def load_library(pattern: str, declare) -> ctypes.CDLL | None:
    """The first library next to this file whose name matches ``pattern`` (``_rtn*.so``:
    ``_rtn.<platform tag>.so``) that loads and whose functions ``declare`` finds and types,
    or None."""
    for path in sorted(Path(__file__).resolve().parent.glob(pattern)):
        try:
            return declare(ctypes.CDLL(str(path)))
        except (OSError, AttributeError):  # unloadable, or stale
            continue
    return None


def switched_on() -> bool:
    """False when ``CUANTIZA_NATIVE=0`` asks for the torch paths everywhere."""
    return os.environ.get("CUANTIZA_NATIVE", "1") != "0"

"""What the ``cuantiza`` command prints when something goes wrong (docs/FAULTS.md 34, 37, 38).

Every failure is one line on stderr and an exit status, never a traceback:

* a cuantiza error (``cuantiza.errors``) or an operating-system error (read-only file system,
  disk full, no permission): ``cuantiza: error: <message>``, status 2. The message is the API's,
  with the API's argument names turned into the command's flags (``overwrite=True`` ->
  ``--overwrite``, ``seq_len`` -> ``--seq-len``: ``FLAGS``), and its notes (``add_note``: how to
  resume, where a previous output went) appended;
* Ctrl-C: ``cuantiza: interrupted (Ctrl-C)...``, status 130; SIGTERM likewise, status 143
  (128 + the signal number, the shell's convention). ``signals_as_interrupts`` turns SIGTERM
  into an exception for the time a command runs, so the same clean-up runs as for Ctrl-C.

Anything else is a bug in cuantiza and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator

from ..errors import CuantizaError

# API spelling -> the flag that sets it, for the commands that have that flag. A replacement is
# used only when the running command has the flag, so every fix the line suggests is reachable.
FLAGS: tuple[tuple[str, str, str], ...] = (
    (r"\boverwrite=True\b", "--overwrite", "--overwrite"),
    (r"\bgroup_remainder='(\w+)'", r"--group-remainder \1", "--group-remainder"),
    (r"\bscale_dtype='(\w+)'", r"--scale-dtype \1", "--scale-dtype"),
    (r"\bmethod='(\w+)'", r"--method \1", "--method"),
    (r"\bcalibration=\.\.\.", "--calibration FILE", "--calibration"),
    (r"\bmode='weight_only'", "--weight-only", "--weight-only"),
    (r"\bmode='static'", "--static", "--static"),
    (r"\bn_samples\b", "--samples", "--samples"),
    (r"\bseq_len\b", "--seq-len", "--seq-len"),
    (r"\bmax_chars\b", "--max-chars", "--max-chars"),
    (r"\bmax_new_tokens\b", "-n", "-n"),
    (r"\btop_p\b", "--top-p", "--top-p"),
    (r"\btop_k\b", "--top-k", "--top-k"),
    (r"\bthe exclude pattern\b", "--exclude", "--exclude"),
    (r"^parameter count\b", "--params", "--params"),
)

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 128 + int(signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so clean-ups run as they do for Ctrl-C."""


def for_command(message: str, flags: set[str]) -> str:
    """``message`` with API argument names replaced by the flags the command has."""
    for pattern, replacement, flag in FLAGS:
        if flag in flags:
            message = re.sub(pattern, replacement, message)
    return message


def _message(e: BaseException) -> str:
    """An operating-system error as "path: problem"; anything else as its own message."""
    if isinstance(e, OSError) and not isinstance(e, CuantizaError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def one_line(e: BaseException, flags: set[str]) -> str:
    """The error's message and notes, on one line, in the command's words."""
    parts = [p for p in (_message(e), *getattr(e, "__notes__", ())) if p]
    return for_command(" ".join("; ".join(parts).split()), flags)


def describe(e: BaseException, flags: set[str]) -> tuple[str, int]:
    """(the line to print, the exit status) for a failure the command reports itself."""
    if isinstance(e, KeyboardInterrupt):
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        rest = one_line(e, flags) or "no partial output was written"
        code = EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        return f"cuantiza: {what}; {rest}", code
    return f"cuantiza: error: {one_line(e, flags) or type(e).__name__}", EXIT_ERROR


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises ``Terminated``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

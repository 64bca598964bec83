"""Argument parsing shared by the subcommands: one-line errors, checked numbers (FAULTS 37).

``Parser`` reports a malformed command line as argparse does (exit status 2) but on one line,
``cuantiza quantize: error: argument --samples: must be a whole number >= 1, got -5 (see
cuantiza quantize --help)``, without the usage block. ``whole(lo, hi)`` and ``real(lo, hi)`` are
argparse types that check the range and say what it is.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the subcommands' parsers are Parsers too)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _bounds(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"in {lo}..{hi}"


def whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in [lo, hi] (hi None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number {_bounds(lo, hi)}, got {text.strip()!r}"
            ) from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(lo, hi)}, got {v}")
        return v

    parse.__name__ = "whole number"
    return parse


def real(lo: float, hi: float | None = None, *, open_lo: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number >= lo (> lo with ``open_lo``) and <= hi."""
    low = f"> {lo}" if open_lo else f">= {lo}"
    want = low if hi is None else f"{low} and <= {hi}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number {want}, got {text.strip()!r}"
            ) from None
        bad_lo = v <= lo if open_lo else v < lo
        if not math.isfinite(v) or bad_lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a number {want}, got {text.strip()}")
        return v

    parse.__name__ = "number"
    return parse


def option_strings(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """Every flag of the subcommand ``command`` (``--overwrite``, ``-n``...) and the top level."""
    flags = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            flags |= {s for a in sub._actions for s in a.option_strings}
    return flags


def number_text(text: str) -> str:
    """A number argparse accepts; the text is kept (explain shows how it rounds to float32)."""
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return text.strip()


def protect_negative_numbers(argv: list[str]) -> list[str]:
    """argparse (Python < 3.12) reads '-1e-3' or '-inf' as an unknown option; a leading space
    keeps such a number an argument (float() ignores the space)."""
    out = []
    for a in argv:
        try:
            is_number = a.startswith("-") and not a.startswith("--") and (float(a) or True)
        except ValueError:
            is_number = False
        out.append(" " + a if is_number else a)
    return out

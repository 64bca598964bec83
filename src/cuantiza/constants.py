"""Numbers that the Python code and the C kernels share, each defined once with its reason.

``backends/native/cz_constants.h`` is generated from this file (``python -m cuantiza.constants``
rewrites it); ``tests/backends/test_constants.py`` fails if the committed header differs.

>>> FLOAT32_TINY == 2.0**-126 and SYM_CODE_OFFSET == 1 << SYM_CODE_SHIFT
True
"""

from __future__ import annotations

import sys
from pathlib import Path

# Smallest normal float32, 2^-126: the floor of every float32 scale. A smaller (denormal) scale
# loses precision, and a zero one would divide by zero (an all-zero row has max|x| = 0).
FLOAT32_TINY = 2.0**-126

# Symmetric activation codes |q| <= 63 enter a u8 x s8 GEMM as q + 64, in [1, 127]. Without
# VNNI, x86's vpmaddubsw adds two u8 x s8 products into a saturating int16; 2 * 127 * 127 <
# 32767 keeps it exact (an 8-bit code could reach 2 * 255 * 127). The offset is taken back with
# the weight column sums: sum_k (q + 64) w - 64 sum_k w (a shift by 6 in the C exit).
SYM_CODE_SHIFT = 6
SYM_CODE_OFFSET = 1 << SYM_CODE_SHIFT

# Output columns per packed weight block of the per-token int8 GEMM (gemm.c): two 8-lane int32
# AVX2 accumulators per row of a tile.
GEMM_BLOCK_COLS = 16

# (name, C literal) of each constant the header carries.
_C_DEFINES = (
    ("CZ_FLOAT32_TINY", "0x1p-126f"),
    ("CZ_SYM_CODE_SHIFT", str(SYM_CODE_SHIFT)),
    ("CZ_SYM_CODE_OFFSET", "(1 << CZ_SYM_CODE_SHIFT)"),
    ("CZ_GEMM_BLOCK_COLS", str(GEMM_BLOCK_COLS)),
)
HEADER = Path(__file__).parent / "backends" / "native" / "cz_constants.h"


def c_header() -> str:
    """The text of ``cz_constants.h``."""
    lines = [
        "/* Generated from src/cuantiza/constants.py by `python -m cuantiza.constants`: edit that "
        "file,",
        " * not this one (the reasons for each number are there). */",
        "#ifndef CZ_CONSTANTS_H",
        "#define CZ_CONSTANTS_H",
        "",
        *(f"#define {name} {value}" for name, value in _C_DEFINES),
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    HEADER.write_text(c_header())
    sys.stdout.write(f"wrote {HEADER}\n")

"""The numbers shared by Python and C have one definition (cuantiza/constants.py): the
committed C header is exactly what it generates, and the C sources use the header's names."""

from pathlib import Path

from cuantiza import constants

NATIVE = Path(constants.__file__).parent / "backends" / "native"


def test_committed_header_is_generated_from_constants():
    assert constants.HEADER.read_text() == constants.c_header(), (
        "cz_constants.h is stale: run `python -m cuantiza.constants`"
    )


def test_c_sources_take_shared_numbers_from_the_header():
    gemm = (NATIVE / "gemm.c").read_text()
    assert '#include "cz_constants.h"' in gemm
    for literal in ("#define NR 16", "#define OFFSET 64", "), 6)"):
        assert literal not in gemm, f"gemm.c spells {literal!r} instead of using cz_constants.h"


def test_python_users_import_the_constants():
    from cuantiza.backends.native import linear

    assert linear.NR == constants.GEMM_BLOCK_COLS and linear.OFFSET == constants.SYM_CODE_OFFSET

/* Generated from src/cuantiza/constants.py by `python -m cuantiza.constants`: edit that file,
 * not this one (the reasons for each number are there). */
#ifndef CZ_CONSTANTS_H
#define CZ_CONSTANTS_H

#define CZ_FLOAT32_TINY 0x1p-126f
#define CZ_SYM_CODE_SHIFT 6
#define CZ_SYM_CODE_OFFSET (1 << CZ_SYM_CODE_SHIFT)
#define CZ_GEMM_BLOCK_COLS 16

#endif

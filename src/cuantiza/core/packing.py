"""Dense bit packing of unsigned codes, any width 1..8, any length.

Bit order: value i occupies bits [i*b, (i+1)*b) of a little-endian bit stream; within a byte,
bit 0 is the least significant. So for b = 4, byte k holds value 2k in its low nibble and value
2k+1 in its high nibble (as ONNX INT4 and gguf's low/high nibble order for consecutive pairs);
for b = 5, eight values fill exactly five bytes. ``pack`` returns ceil(n * b / 8) bytes; the
logical length n is kept by the caller (``QTensor``) and ``unpack`` trims to it exactly.

The kernels are ``backends``' (``pack_kernels``: the torch bit squeeze of ``torch_packing``, or
one native pass for large int8/uint8 codes at 1, 2, 4 or 8 bits); this module is the API and
its checks. The slow bit-by-bit reference lives in ``tests/reference.py``.

>>> pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist()
[33, 3]
>>> unpack(torch.tensor([33, 3], dtype=torch.uint8), 4, 3).tolist()
[1, 2, 3]
"""

from __future__ import annotations

import torch

from .. import backends
from ..backends.torch_packing import packed_nbytes
from ..errors import ConfigError, ShapeError, UnsupportedDtypeError

__all__ = ["pack", "unpack", "packed_nbytes"]


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer in 1..8, got {bits!r}")


def _check_dtype(flat: torch.Tensor) -> None:
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise UnsupportedDtypeError(f"codes must be an integer tensor, got {flat.dtype}")


def _check_range(lo: int, hi: int, bits: int, offset: int) -> None:
    """ShapeError unless the codes' least and greatest value + offset lie in [0, 2^bits)."""
    if lo + offset < 0 or hi + offset >= 1 << bits:
        raise ShapeError(
            f"codes must lie in [0, {(1 << bits) - 1}] to pack into {bits} bits"
            + (f" (after adding offset {offset})" if offset else "")
        )


def pack(codes: torch.Tensor, bits: int, offset: int = 0) -> torch.Tensor:
    """Pack unsigned codes (each < 2^bits; any shape, read flat) into a uint8 tensor.

    ``offset`` is added to every value first, so ``pack(q, bits, -qmin)`` packs the codes
    q - qmin of signed integers q without building them."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    _check_dtype(flat)
    out, lo, hi = backends.pack_kernels(flat, bits, offset).pack_codes(flat, bits, offset)
    _check_range(lo - offset, hi - offset, bits, offset)  # lo, hi: of codes + offset
    return out


def unpack(packed: torch.Tensor, bits: int, n: int, offset: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes, uint8, flat. ``offset`` is added to
    every code (wrapping modulo 256), so ``unpack(p, bits, n, qmin).view(torch.int8)`` gives
    back signed integers."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ShapeError(f"packed data must be uint8, got {packed.dtype}")
    need = packed_nbytes(n, bits)
    if packed.numel() != need:
        raise ShapeError(f"{n} values of {bits} bits need {need} bytes, got {packed.numel()}")
    return backends.unpack_kernels(packed, bits).unpack_codes(packed, bits, n, offset)

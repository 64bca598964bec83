"""Dense bit packing of unsigned codes, any width 1..8, any length.

Bit order: value i occupies bits [i*b, (i+1)*b) of a little-endian bit stream; within a byte,
bit 0 is the least significant. So for b = 4, byte k holds value 2k in its low nibble and value
2k+1 in its high nibble (as ONNX INT4 and gguf's low/high nibble order for consecutive pairs);
for b = 5, eight values fill exactly five bytes. ``pack`` returns ceil(n * b / 8) bytes; the
logical length n is kept by the caller (``QTensor``) and ``unpack`` trims to it exactly.

Implementation: eight values of b bits are exactly b bytes, so groups of eight values are
combined into one 64-bit integer and split into b bytes (and back). One code path for every
width; the slow bit-by-bit reference lives in ``tests/reference.py``.

>>> pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist()
[33, 3]
>>> unpack(torch.tensor([33, 3], dtype=torch.uint8), 4, 3).tolist()
[1, 2, 3]
"""

from __future__ import annotations

import torch

from .errors import ConfigError, ShapeError


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer in 1..8, got {bits!r}")


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (each < 2^bits; any shape, read flat) into a uint8 tensor."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ShapeError(f"codes must lie in [0, {(1 << bits) - 1}] to pack into {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8).clone()
    groups = -(-n // 8)
    v = torch.zeros(groups * 8, dtype=torch.int64)
    v[:n] = flat
    v = v.view(groups, 8)                                        # (groups, 8 values)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    acc = (v << shifts).sum(dim=1, keepdim=True)                 # (groups, 1): 8*bits <= 56 bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = ((acc >> byte_shifts) & 0xFF).to(torch.uint8)         # (groups, bits bytes)
    return out.reshape(-1)[: packed_nbytes(n, bits)]


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes, uint8, flat."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ShapeError(f"packed data must be uint8, got {packed.dtype}")
    need = packed_nbytes(n, bits)
    if packed.numel() != need:
        raise ShapeError(f"{n} values of {bits} bits need {need} bytes, got {packed.numel()}")
    if bits == 8:
        return packed.reshape(-1).clone()
    groups = -(-n // 8)
    b = torch.zeros(groups * bits, dtype=torch.int64)
    b[:need] = packed.reshape(-1)
    b = b.view(groups, bits)                                     # (groups, bits bytes)
    acc = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1, keepdim=True)
    vals = (acc >> (torch.arange(8, dtype=torch.int64) * bits)) & ((1 << bits) - 1)
    return vals.reshape(-1)[:n].to(torch.uint8)

"""Dense bit packing of unsigned codes, any width 1..8, any length.

Bit order: value i occupies bits [i*b, (i+1)*b) of a little-endian bit stream; within a byte,
bit 0 is the least significant. So for b = 4, byte k holds value 2k in its low nibble and value
2k+1 in its high nibble (as ONNX INT4 and gguf's low/high nibble order for consecutive pairs);
for b = 5, eight values fill exactly five bytes. ``pack`` returns ceil(n * b / 8) bytes; the
logical length n is kept by the caller (``QTensor``) and ``unpack`` trims to it exactly.

Implementation: eight values of b bits are exactly b bytes. Eight one-byte values are read as
one little-endian 64-bit word (value k in bits [8k, 8k+8)) and squeezed in three halving steps:
in every 16-, then 32-, then 64-bit slot the upper field is shifted down onto the lower one, so
the fields end up adjacent (value k in bits [bk, bk+b)), which is exactly the packed stream.
``unpack`` runs the same steps backwards. Every step is a few whole-tensor integer ops; when b
divides 8 (1, 2, 4 bits) the steps stop as soon as each slot holds one full byte. The slow
bit-by-bit reference lives in ``tests/reference.py``. Large int8/uint8 codes at 1, 2, 4 or 8
bits go to the native kernel instead (``_native.pack_codes``: one pass, the same bytes).

>>> pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist()
[33, 3]
>>> unpack(torch.tensor([33, 3], dtype=torch.uint8), 4, 3).tolist()
[1, 2, 3]
"""

from __future__ import annotations

import torch

from ..backends.native import rtn as _native
from ..errors import ConfigError, ShapeError, UnsupportedDtypeError

_INT = {16: torch.int16, 32: torch.int32, 64: torch.int64}


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer in 1..8, got {bits!r}")


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _mask(width: int, slot: int, shift: int = 0) -> int:
    """A 64-bit mask, as a signed int64 value: bits [shift, shift + width) of every slot."""
    m = 0
    for j in range(0, 64, slot):
        m |= ((1 << width) - 1) << (j + shift)
    return m - (1 << 64) if m >= 1 << 63 else m


def _steps(bits: int) -> list[tuple[int, int]]:
    """(slot width, field width before the step) for each halving step: slots of 16, 32, 64
    bits, until one slot holds a whole byte (b divides 8) or all 8 values (64-bit slot)."""
    out, field = [], bits
    for slot in (16, 32, 64):
        out.append((slot, field))
        field *= 2
        if field == 8:
            break
    return out


def _check_dtype(flat: torch.Tensor) -> None:
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise UnsupportedDtypeError(f"codes must be an integer tensor, got {flat.dtype}")


def _check_range(lo: int, hi: int, bits: int, offset: int) -> None:
    """ShapeError unless the codes' least and greatest value + offset lie in [0, 2^bits)."""
    if lo + offset < 0 or hi + offset >= 1 << bits:
        raise ShapeError(f"codes must lie in [0, {(1 << bits) - 1}] to pack into {bits} bits"
                         + (f" (after adding offset {offset})" if offset else ""))


CHUNK = 1 << 20  # values per step (a multiple of 8): 1 MiB of codes, temporaries stay in cache


class _Work:
    """Buffers reused by every chunk of one pack/unpack call: fresh multi-MB temporaries per
    chunk can cost page faults (glibc may hand freed blocks back to the OS)."""

    def __init__(self, n: int):
        size = min(CHUNK, -(-n // 8) * 8)
        self.codes = torch.zeros(size, dtype=torch.uint8)        # one byte per value
        self.tmp = torch.empty(size // 8, dtype=torch.int64)     # one word per 8 values


def pack(codes: torch.Tensor, bits: int, offset: int = 0) -> torch.Tensor:
    """Pack unsigned codes (each < 2^bits; any shape, read flat) into a uint8 tensor.

    ``offset`` is added to every value first, so ``pack(q, bits, -qmin)`` packs the codes
    q - qmin of signed integers q without building them."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    _check_dtype(flat)
    if _native.packable(flat, bits, offset):                     # one pass in C, same bytes
        out, lo, hi = _native.pack_codes(flat, bits, offset)    # lo, hi: of codes + offset
        _check_range(lo - offset, hi - offset, bits, offset)
        return out
    if flat.numel():                                             # uint8 + offset >= 0 is >= 0
        lo = int(flat.min()) if flat.dtype != torch.uint8 or offset < 0 else 0
        _check_range(lo, int(flat.max()), bits, offset)
    n = flat.numel()
    out = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8)
    work = _Work(n)
    for i in range(0, n, CHUNK):                                 # chunk: CHUNK * bits / 8 bytes
        j = min(i + CHUNK, n)
        _pack_chunk(flat[i:j], offset, bits, out[i * bits // 8: packed_nbytes(j, bits)], work)
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
    flat = packed.reshape(-1)
    out = torch.empty(n, dtype=torch.uint8)
    work = _Work(n)
    for i in range(0, n, CHUNK):
        j = min(i + CHUNK, n)
        codes = _unpack_chunk(flat[i * bits // 8: packed_nbytes(j, bits)], bits, j - i, work)
        torch.add(codes, offset % 256, out=out[i:j])             # wraps modulo 256: exact
    return out


def _squeeze(w: torch.Tensor, tmp: torch.Tensor, bits: int, down: bool) -> None:
    """The halving steps, in place on the words ``w`` (``tmp``: same shape). down=True packs
    (upper field of each slot shifted onto the lower one), False unpacks (the reverse)."""
    steps = _steps(bits)
    for slot, field in (steps if down else reversed(steps)):
        half = slot // 2
        if down:
            torch.bitwise_right_shift(w, half - field, out=tmp).bitwise_and_(_mask(field, slot, field))
        else:
            torch.bitwise_left_shift(w, half - field, out=tmp).bitwise_and_(_mask(field, slot, half))
        w.bitwise_and_(_mask(field, slot)).bitwise_or_(tmp)


def _pack_chunk(chunk: torch.Tensor, offset: int, bits: int, out: torch.Tensor, work: _Work) -> None:
    """Pack ``chunk`` (+ offset, modulo 256) into ``out``, ceil(len * bits / 8) bytes."""
    n = chunk.numel()
    groups = -(-n // 8)
    v = work.codes[: groups * 8]
    v[n:] = 0                                                    # zero padding of the last group
    v[:n] = chunk.view(torch.uint8) if chunk.dtype == torch.int8 else chunk   # mod 256: exact
    if offset % 256:
        v[:n].add_(offset % 256)
    if bits == 8:
        out.copy_(v[:n])
        return
    w = v.view(torch.int64)                                      # (groups,): value k in bits 8k
    _squeeze(w, work.tmp[:groups], bits, down=True)
    slot, field = _steps(bits)[-1][0], 2 * _steps(bits)[-1][1]
    if field == 8:                                               # b | 8: one byte per slot
        out.copy_(w.view(_INT[slot])[: out.numel()])             # int -> uint8 keeps the low byte
    else:                                                        # 8b bits at the bottom of w
        dense = w.view(torch.uint8).view(groups, 8)[:, :bits]    # (groups, b bytes)
        full = out.numel() // bits
        out[: full * bits].view(full, bits).copy_(dense[:full])
        out[full * bits:] = dense[full:].reshape(-1)[: out.numel() - full * bits]


def _unpack_chunk(packed: torch.Tensor, bits: int, n: int, work: _Work) -> torch.Tensor:
    """The n uint8 codes in ``packed`` (a view of ``work`` or of ``packed`` itself at 8 bits)."""
    if bits == 8:
        return packed
    groups = -(-n // 8)
    steps = _steps(bits)
    slot = steps[-1][0]
    v = work.codes[: groups * 8]
    if 2 * steps[-1][1] == 8:                                    # b | 8: one byte per slot
        wide = v.view(_INT[slot])                                # byte k at the bottom of slot k
        wide[packed.numel():] = 0
        wide[: packed.numel()] = packed                          # zero-extends
    else:
        b = v.view(groups, 8)                                    # (groups, 8 bytes), b used
        b.zero_()
        full = packed.numel() // bits
        b[:full, :bits] = packed[: full * bits].view(full, bits)
        if full < groups:
            b[full, : packed.numel() - full * bits] = packed[full * bits:]
    w = v.view(torch.int64)                                      # (groups,)
    _squeeze(w, work.tmp[:groups], bits, down=False)
    return v[:n]

"""The torch packing kernel: dense bit packing of one-byte codes at any width 1..8.

Eight values of b bits are exactly b bytes. Eight one-byte values are read as one little-endian
64-bit word (value k in bits [8k, 8k+8)) and squeezed in three halving steps: in every 16-,
then 32-, then 64-bit slot the upper field is shifted down onto the lower one, so the fields end
up adjacent (value k in bits [bk, bk+b)), which is exactly the packed stream (``core.packing``
gives the layout). ``unpack_codes`` runs the same steps backwards. Every step is a few
whole-tensor integer ops; when b divides 8 (1, 2, 4 bits) the steps stop as soon as each slot
holds one full byte. The native kernel (``native.rtn.pack_codes``) gives the same bytes; the
slow bit-by-bit reference lives in ``tests/reference.py``.
"""

from __future__ import annotations

import torch

_INT = {16: torch.int16, 32: torch.int32, 64: torch.int64}


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes of n values packed at ``bits``: ceil(n * bits / 8)."""
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


CHUNK = 1 << 20  # values per step (a multiple of 8): 1 MiB of codes, temporaries stay in cache


class _Work:
    """Buffers reused by every chunk of one pack/unpack call: fresh multi-MB temporaries per
    chunk can cost page faults (glibc may hand freed blocks back to the OS)."""

    def __init__(self, n: int):
        size = min(CHUNK, -(-n // 8) * 8)
        self.codes = torch.zeros(size, dtype=torch.uint8)  # one byte per value
        self.tmp = torch.empty(size // 8, dtype=torch.int64)  # one word per 8 values


def pack_codes(flat: torch.Tensor, bits: int, offset: int) -> tuple[torch.Tensor, int, int]:
    """Codes (flat + offset) mod 256 of a flat integer tensor packed at ``bits``, with the
    least and greatest flat + offset (no modulo), for the caller's range check."""
    n = flat.numel()
    lo = hi = offset
    if n:  # uint8 + offset >= 0 is >= 0: no min pass
        lo = (int(flat.min()) if flat.dtype != torch.uint8 or offset < 0 else 0) + offset
        hi = int(flat.max()) + offset
    out = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8)
    work = _Work(n)
    for i in range(0, n, CHUNK):  # chunk: CHUNK * bits / 8 bytes
        j = min(i + CHUNK, n)
        _pack_chunk(flat[i:j], offset, bits, out[i * bits // 8 : packed_nbytes(j, bits)], work)
    return out, lo, hi


def unpack_codes(packed: torch.Tensor, bits: int, n: int, offset: int) -> torch.Tensor:
    """The first n codes of ``packed`` plus ``offset`` (wrapping modulo 256), uint8, flat."""
    flat = packed.reshape(-1)
    out = torch.empty(n, dtype=torch.uint8)
    work = _Work(n)
    for i in range(0, n, CHUNK):
        j = min(i + CHUNK, n)
        codes = _unpack_chunk(flat[i * bits // 8 : packed_nbytes(j, bits)], bits, j - i, work)
        torch.add(codes, offset % 256, out=out[i:j])  # wraps modulo 256: exact
    return out


def _squeeze(w: torch.Tensor, tmp: torch.Tensor, bits: int, down: bool) -> None:
    """The halving steps, in place on the words ``w`` (``tmp``: same shape). down=True packs
    (upper field of each slot shifted onto the lower one), False unpacks (the reverse)."""
    steps = _steps(bits)
    for slot, field in steps if down else reversed(steps):
        half = slot // 2
        if down:
            torch.bitwise_right_shift(w, half - field, out=tmp).bitwise_and_(
                _mask(field, slot, field)
            )
        else:
            torch.bitwise_left_shift(w, half - field, out=tmp).bitwise_and_(
                _mask(field, slot, half)
            )
        w.bitwise_and_(_mask(field, slot)).bitwise_or_(tmp)


def _pack_chunk(
    chunk: torch.Tensor, offset: int, bits: int, out: torch.Tensor, work: _Work
) -> None:
    """Pack ``chunk`` (+ offset, modulo 256) into ``out``, ceil(len * bits / 8) bytes."""
    n = chunk.numel()
    groups = -(-n // 8)
    v = work.codes[: groups * 8]
    v[n:] = 0  # zero padding of the last group
    v[:n] = chunk.view(torch.uint8) if chunk.dtype == torch.int8 else chunk  # mod 256: exact
    if offset % 256:
        v[:n].add_(offset % 256)
    if bits == 8:
        out.copy_(v[:n])
        return
    w = v.view(torch.int64)  # (groups,): value k in bits 8k
    _squeeze(w, work.tmp[:groups], bits, down=True)
    slot, field = _steps(bits)[-1][0], 2 * _steps(bits)[-1][1]
    if field == 8:  # b | 8: one byte per slot
        out.copy_(w.view(_INT[slot])[: out.numel()])  # int -> uint8 keeps the low byte
    else:  # 8b bits at the bottom of w
        dense = w.view(torch.uint8).view(groups, 8)[:, :bits]  # (groups, b bytes)
        full = out.numel() // bits
        out[: full * bits].view(full, bits).copy_(dense[:full])
        out[full * bits :] = dense[full:].reshape(-1)[: out.numel() - full * bits]


def _unpack_chunk(packed: torch.Tensor, bits: int, n: int, work: _Work) -> torch.Tensor:
    """The n uint8 codes in ``packed`` (a view of ``work`` or of ``packed`` itself at 8 bits)."""
    if bits == 8:
        return packed
    groups = -(-n // 8)
    steps = _steps(bits)
    slot = steps[-1][0]
    v = work.codes[: groups * 8]
    if 2 * steps[-1][1] == 8:  # b | 8: one byte per slot
        wide = v.view(_INT[slot])  # byte k at the bottom of slot k
        wide[packed.numel() :] = 0
        wide[: packed.numel()] = packed  # zero-extends
    else:
        b = v.view(groups, 8)  # (groups, 8 bytes), b used
        b.zero_()
        full = packed.numel() // bits
        b[:full, :bits] = packed[: full * bits].view(full, bits)
        if full < groups:
            b[full, : packed.numel() - full * bits] = packed[full * bits :]
    w = v.view(torch.int64)  # (groups,)
    _squeeze(w, work.tmp[:groups], bits, down=False)
    return v[:n]

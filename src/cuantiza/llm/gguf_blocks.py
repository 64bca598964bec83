"""GGML's 32-weight block types Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1: their byte layouts, packing and
unpacking, llama.cpp's reference quantizers and dequantizers, in NumPy (written from the layouts
of ggml-common.h and the rules of ggml-quants.c ``quantize_row_*_ref``; gguf-py is the
independent implementation the tests hold these to, byte for byte).

Every block holds 32 weights of one row and a float16 scale ``d``; the ``_1`` types also a
float16 offset ``m``. Values are ``x = d * k`` (``_0`` types, ``k`` signed: Q8_0 in [-128, 127],
Q5_0 in [-16, 15], Q4_0 in [-8, 7]) or ``x = d * q + m`` (``_1`` types, ``q`` in [0, 2^bits - 1]).
In this module a block's integers are called ``levels``: ``k`` or ``q`` as the type has them.

Byte layout of one block, little-endian::

    Q8_0  d(2)                 k as int8 (32)                    34 bytes
    Q4_0  d(2)                 qs(16)                            18
    Q4_1  d(2) m(2)            qs(16)                            20
    Q5_0  d(2)      qh(4)      qs(16)                            22
    Q5_1  d(2) m(2) qh(4)      qs(16)                            24

``qs[j]`` holds the low 4 bits of the unsigned code of weight j (low nibble) and of weight
j + 16 (high nibble); bit j of the uint32 ``qh`` is bit 4 of weight j's code. The unsigned code
is ``k + 2^(bits-1)`` (``_0``) or ``q`` (``_1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32  # weights per block, every type here
F16 = np.dtype("<f2")
U32 = np.dtype("<u4")


@dataclass(frozen=True)
class BlockType:
    """One GGML block type: its name, its ``ggml_type`` number in GGUF files, its width."""

    name: str
    ggml_id: int
    bits: int
    affine: bool  # x = d * q + m (an offset m per block), else x = d * k
    nbytes: int  # bytes per block of QK weights

    @property
    def lo(self) -> int:
        """Smallest level."""
        return 0 if self.affine else -(1 << (self.bits - 1))

    @property
    def hi(self) -> int:
        """Largest level."""
        return (1 << self.bits) - 1 if self.affine else (1 << (self.bits - 1)) - 1

    def header_bytes(self) -> int:
        return 2 + (2 if self.affine else 0) + (4 if self.bits == 5 else 0)


BLOCK_TYPES = {
    t.name: t
    for t in (
        BlockType("Q4_0", 2, 4, False, 18),
        BlockType("Q4_1", 3, 4, True, 20),
        BlockType("Q5_0", 6, 5, False, 22),
        BlockType("Q5_1", 7, 5, True, 24),
        BlockType("Q8_0", 8, 8, False, 34),
    )
}
BY_GGML_ID = {t.ggml_id: t for t in BLOCK_TYPES.values()}


def pack(bt: BlockType, levels: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """Blocks (nb, bt.nbytes) uint8 from ``levels`` (nb, 32) in [bt.lo, bt.hi], ``d`` (nb,)
    float16 and, for the ``_1`` types, ``m`` (nb,) float16."""
    nb = levels.shape[0]
    parts = [np.ascontiguousarray(d, dtype=F16).view(np.uint8).reshape(nb, 2)]
    if bt.affine:
        parts.append(np.ascontiguousarray(m, dtype=F16).view(np.uint8).reshape(nb, 2))
    if bt.bits == 8:
        parts.append(levels.astype(np.int8).view(np.uint8))
        return np.concatenate(parts, axis=1)
    code = (levels - bt.lo).astype(np.uint32)
    if bt.bits == 5:
        high = (code >> 4) << np.arange(QK, dtype=np.uint32)  # bit j: weight j's fifth bit
        qh = np.bitwise_or.reduce(high, axis=1).astype(U32)
        parts.append(qh.view(np.uint8).reshape(nb, 4))
    nib = (code & 15).astype(np.uint8)
    parts.append(nib[:, :16] | (nib[:, 16:] << 4))
    return np.concatenate(parts, axis=1)


def unpack(bt: BlockType, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``pack``'s inverse: (levels (nb, 32) int16, d (nb,) float16, m (nb,) float16 or None)."""
    nb = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(F16).reshape(nb)
    m = blocks[:, 2:4].copy().view(F16).reshape(nb) if bt.affine else None
    body = blocks[:, bt.header_bytes() :]
    if bt.bits == 8:
        return body.view(np.int8).astype(np.int16), d, m
    code = np.concatenate([body & 15, body >> 4], axis=1).astype(np.int16)
    if bt.bits == 5:
        qh = blocks[:, bt.header_bytes() - 4 : bt.header_bytes()].copy().view(U32).reshape(nb, 1)
        code |= (((qh >> np.arange(QK, dtype=np.uint32)) & 1) << 4).astype(np.int16)
    return code + bt.lo, d, m


def dequantize(bt: BlockType, blocks: np.ndarray) -> np.ndarray:
    """(nb, 32) float32 values, computed as ggml does: d * k, or d * q + m, in float32."""
    levels, d, m = unpack(bt, blocks)
    x = d.astype(np.float32)[:, None] * levels.astype(np.float32)
    if bt.affine:
        x = x + m.astype(np.float32)[:, None]
    return x


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), exact in float32: the fraction is compared, never
    ``|v| + 0.5`` (which rounds up 0.49999997)."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * np.where(a - whole >= 0.5, whole + 1, whole)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def quantize_ref(bt: BlockType, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """llama.cpp's reference quantizer of each block of ``x`` (nb, 32) float32, all in float32
    as ggml-quants.c: (levels, d float16, m float16 or None). Note that the levels are rounded
    with the float32 scale, before it is stored as float16, as llama.cpp does."""
    x = np.asarray(x, dtype=np.float32)
    if bt.affine:
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = ((hi - lo) / np.float32(bt.hi)).astype(np.float32)
        t = (x - lo[:, None]) * _inverse(d)[:, None] + np.float32(0.5)
        q = np.minimum(np.trunc(t), bt.hi).astype(np.int16)
        return q, d.astype(F16), lo.astype(F16)
    first_max = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]
    if bt.bits == 8:  # d = amax / 127, round half away from zero
        d = (np.abs(first_max) / np.float32(127)).astype(np.float32)
        k = _round_half_away(x * _inverse(d)[:, None]).astype(np.int16)
        return k, d.astype(F16), None
    d = (first_max / np.float32(bt.lo)).astype(np.float32)  # the extreme maps to the lowest level
    t = x * _inverse(d)[:, None] + np.float32(-bt.lo + 0.5)
    code = np.minimum(np.trunc(t), bt.hi - bt.lo).astype(np.int16)  # C: MIN(15, (int8_t)(t))
    return code + bt.lo, d.astype(F16), None

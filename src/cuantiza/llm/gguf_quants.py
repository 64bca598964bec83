"""cuantiza weights <-> GGML blocks: repack where the grid fits exactly, requantize elsewhere.

``to_blocks(weight, bt)`` turns a 2-D weight (a ``QTensor`` or a float tensor) of shape
(rows, K), K a multiple of 32, into GGML blocks (rows, K / 32 * bt.nbytes) uint8.

A QTensor's values are ``s (q - z)`` with integers q, z and a scale s per element's group. A
block of 32 weights of a row is **repacked** (its integers and scale copied, no rounding) when
all 32 share one scale s that float16 holds exactly and the integers k = q - z fit the type:

* ``_0`` types (x = d k): k in [lo, hi] (Q4_0: [-8, 7]); d = s. A symmetric 4-bit scheme with
  float16 scales and groups of any multiple of 32 is Q4_0 everywhere; symmetric 5-bit Q5_0,
  symmetric 8-bit Q8_0.
* ``_1`` types (x = d q' + m): an integer c with k - c in [0, 2^bits - 1] for the whole block
  and m = s c exactly a float16 (tried from c = min k down); then d = s, q' = k - c. The
  product s c, s with 11 significant bits, is often not a float16: such blocks are requantized.

The dequantized values are then bit for bit cuantiza's: d k (or d q' + m) is an integer times
a float16, exact in float32, as is cuantiza's s (q - z). Every other block (a scale not
float16, groups smaller than 32, integers outside the type's range) is **requantized** from
cuantiza's dequantized values with llama.cpp's own rounding rules (``gguf_blocks.quantize_ref``)
and the added error is reported (``Converted.sqnr_db``). Float weights are all requantized.

``from_blocks(blocks, bt, shape)`` is the way back: a QTensor with one scale (and for the
``_1`` types one zero point) per block of 32, exact, or None for a ``_1`` block whose offset m
is not an integer multiple of d (cuantiza's zero points are integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.qparams import QParams
from ..core.qtensor import QTensor
from ..core.quantize import dequantize
from ..core.scheme import PerGroup, QScheme
from . import gguf_blocks as gb
from .gguf_blocks import QK, BlockType


@dataclass(frozen=True)
class Converted:
    """One tensor as GGML blocks, and how it got there."""

    blocks: np.ndarray  # (rows, K / 32 * nbytes) uint8
    exact_blocks: int  # repacked without rounding
    total_blocks: int
    sqnr_db: float  # of the file's values against the source's; inf when identical


def grid(qt: QTensor) -> tuple[np.ndarray, np.ndarray]:
    """Per element of ``qt``: the integers k = q - z (int32) and the scales s (float32), in its
    shape. Both come from cuantiza's own ``dequantize`` (its broadcasting of any granularity):
    s = dequantize(1 with zero points 0) and -z = dequantize(0 with scales 1)."""
    qp, shape = qt.qparams, qt.shape
    s = dequantize(
        torch.ones(shape, dtype=torch.int32),
        QParams(qp.scale, torch.zeros_like(qp.zero_point), qp.scheme),
    )
    k = qt.int_repr().to(torch.int32)
    if bool(qp.zero_point.any()):  # symmetric schemes skip this pass
        zeros = torch.zeros(shape, dtype=torch.int32)
        ones = torch.ones_like(qp.scale)
        k += dequantize(zeros, QParams(ones, qp.zero_point, qp.scheme)).to(torch.int32)
    return k.numpy(), s.numpy()


def _is_f16(v: np.ndarray) -> np.ndarray:
    """Where float64 ``v`` is a finite float16 exactly."""
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    return np.isfinite(h) & (h.astype(np.float64) == v)


def _fitting_offsets(bt: BlockType, k: np.ndarray, s: np.ndarray):
    """For ``_1`` types: per block the integer c (k - c in range, s c a float16) or -1 found."""
    kmin, kmax = k.min(axis=1), k.max(axis=1)
    c = np.zeros_like(kmin)
    found = np.zeros(k.shape[0], dtype=bool)
    for step in range(bt.hi + 1):  # the first c from min k down that makes m exact
        cand = kmin - step
        ok = ~found & (kmax - cand <= bt.hi) & _is_f16(s.astype(np.float64) * cand)
        c = np.where(ok, cand, c)
        found |= ok
    return c, found


def repackable(bt: BlockType, k: np.ndarray, s: np.ndarray):
    """Blocks (nb, 32) of integers and scales -> (levels, d, m, exact mask) for the exact ones."""
    s0 = s[:, 0]
    exact = (s == s0[:, None]).all(axis=1) & _is_f16(s0.astype(np.float64))
    d = s0.astype(np.float16)
    if bt.affine:
        c, fits = _fitting_offsets(bt, k, s0)
        m = (s0.astype(np.float64) * c).astype(np.float16)
        return k - c[:, None], d, m, exact & fits
    fits = (k.min(axis=1) >= bt.lo) & (k.max(axis=1) <= bt.hi)
    return k, d, None, exact & fits


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - got)^2), in float64; inf when equal."""
    ref64, err = ref.astype(np.float64), ref.astype(np.float64) - got.astype(np.float64)
    noise = float(np.dot(err.ravel(), err.ravel()))
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(float(np.dot(ref64.ravel(), ref64.ravel())), 1e-300) / noise)


def to_blocks(weight: QTensor | torch.Tensor, bt: BlockType) -> Converted:
    """A 2-D weight (rows, K), K a multiple of 32, as ``bt`` blocks (module docstring)."""
    rows, cols = weight.shape
    nb = rows * cols // QK
    if isinstance(weight, QTensor):
        k, s = grid(weight)
        levels, d, m, exact = repackable(bt, k.reshape(nb, QK), s.reshape(nb, QK))
        # cuantiza's dequantize computes fl32(fl32(q - z) * s) with q - z exact: this is it
        source = (k.astype(np.float32) * s).reshape(nb, QK)
    else:
        source = weight.detach().to(torch.float32).numpy().reshape(nb, QK)
        exact = np.zeros(nb, dtype=bool)
        levels, d, m = np.zeros((nb, QK), np.int16), np.zeros(nb, np.float16), None
    blocks = np.empty((nb, bt.nbytes), dtype=np.uint8)
    if exact.any():
        blocks[exact] = gb.pack(bt, levels[exact], d[exact], None if m is None else m[exact])
    if not exact.all():
        rest = ~exact
        blocks[rest] = gb.pack(bt, *gb.quantize_ref(bt, source[rest]))
    got = gb.dequantize(bt, blocks)
    return Converted(blocks.reshape(rows, -1), int(exact.sum()), nb, sqnr_db(source, got))


def float_bytes(weight: QTensor | torch.Tensor, dtype: np.dtype) -> tuple[np.ndarray, float]:
    """A weight as float16 or float32 values and the SQNR of that rounding."""
    if isinstance(weight, QTensor):
        src = weight.dequantize().numpy()
    else:
        src = weight.detach().to(torch.float32).numpy()
    out = src.astype(dtype)
    return out, sqnr_db(src, out)


def _affine_zero_points(bt: BlockType, d: np.ndarray, m: np.ndarray):
    """z = -m / d per block, int32, where that is an integer (exactly) and d q + m = d (q - z)
    in cuantiza's sense; None if some block has no such z."""
    d64, m64 = d.astype(np.float64), m.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d64 == 0, 0.0, -m64 / d64)
    ok = np.isfinite(z) & (z == np.round(z)) & ((d64 != 0) | (m64 == 0))
    ok &= np.abs(z) < 2**24  # an integer float32 holds exactly (cuantiza computes q - z in it)
    if not ok.all():
        return None
    return z.astype(np.int32)


def scheme_of(bt: BlockType) -> QScheme:
    """The cuantiza scheme whose integers are the type's levels, one float16 scale per 32."""
    if bt.affine:
        return QScheme(
            bits=bt.bits, symmetric=False, granularity=PerGroup(QK), scale_dtype="float16"
        )
    return QScheme(
        bits=bt.bits,
        symmetric=True,
        restricted=False,
        granularity=PerGroup(QK),
        scale_dtype="float16",
    )


def from_blocks(blocks: np.ndarray, bt: BlockType, shape: tuple) -> QTensor | None:
    """GGML blocks of a (rows, K) weight as a QTensor with the same values, bit for bit; None
    for ``_1`` blocks whose offset is not an integer multiple of their scale."""
    rows, cols = shape
    levels, d, m = gb.unpack(bt, blocks.reshape(-1, bt.nbytes))
    per_row = (rows, cols // QK)
    if bt.affine:
        z = _affine_zero_points(bt, d, m)
        if z is None:
            return None
        zero = torch.from_numpy(z.reshape(per_row))
    else:
        zero = torch.zeros(per_row, dtype=torch.int32)
    scale = torch.from_numpy(d.astype(np.float16).reshape(per_row))
    q = torch.from_numpy(levels.reshape(shape).astype(np.int16))
    scheme = scheme_of(bt)
    return QTensor.from_int(q.to(scheme.q_dtype), QParams(scale, zero, scheme))

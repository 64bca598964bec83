"""The row kernels in torch: the reference every native row kernel is held to, bit for bit.

Rows are a blocked tensor ``(n, L)`` (``core.blocking``): one scale s and zero point z per row,
given as float32 ``(n, 1)`` tensors. The one rounding rule of cuantiza lives here::

    q = clamp(round(x / s) + z, qmin, qmax)      # round half to even, x / s a true division

``round_clamp`` is that formula; every caller that rounds (quantize, the MSE range search,
GPTQ, HQQ, the histogram error model) uses it, so they all get the same integers.

Large inputs go through cache-sized chunks with one reused float buffer: a fresh multi-MB
temporary per chunk can cost page faults (glibc may hand such blocks back to the OS on free).

>>> round_clamp(torch.tensor([0.5, 1.5, -2.5, 7.0]), torch.tensor(1.0), None, -3, 3).tolist()
[0.0, 2.0, -2.0, 3.0]
"""

from __future__ import annotations

import math

import torch

from ..constants import FLOAT32_TINY

# Elements per chunk (2 MiB of float32): each op on a chunk costs a few microseconds of call
# overhead, so chunks are as large as keeps several passes within L2/L3 (measured: 2^19 beats
# 2^16..2^18 by 10-35% for quantize on 2 threads, and ties with 2^20).
ROW_CHUNK_ELEMS = 1 << 19
MAGIC = 12582912.0  # 1.5 * 2^23: float32 t + MAGIC - MAGIC rounds t half to even


def row_chunks(n_rows: int, row_len: int):
    """Row slices of about ROW_CHUNK_ELEMS elements each."""
    step = max(1, ROW_CHUNK_ELEMS // max(row_len, 1))
    for i in range(0, n_rows, step):
        yield slice(i, min(i + step, n_rows))


def round_half_even_(t: torch.Tensor) -> torch.Tensor:
    """``t.round_()`` in place, for a result that is then clamped to a q range (|q| <= 255).

    float32: t + 1.5 * 2^23 - 1.5 * 2^23 is round-half-to-even exactly for |t| < 2^22, and
    larger |t| keep their sign and stay beyond any q range, so the clamped result is the same.
    Add / sub run inline on small tensors, where ``round_`` (a VML-style kernel) goes
    multi-threaded from 2048 elements and can stall for a scheduler tick on a busy machine.
    Other dtypes: ``round_``.

    >>> round_half_even_(torch.tensor([0.5, 1.5, -2.5, 2.4999998, -3e9])).tolist()
    [0.0, 2.0, -2.0, 2.0, -3000000000.0]
    """
    if t.dtype == torch.float32:
        return t.add_(MAGIC).sub_(MAGIC)
    return t.round_()


def round_shift(
    x: torch.Tensor, s: torch.Tensor, z, out: torch.Tensor | None = None
) -> torch.Tensor:
    """round(x / s) + z, not clamped (z None: 0, skipped); into ``out`` if given."""
    t = round_half_even_(torch.div(x, s, out=out) if out is not None else torch.div(x, s))
    return t if z is None else t.add_(z)


def round_clamp(
    x: torch.Tensor, s: torch.Tensor, z, qmin: int, qmax: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """clamp(round(x / s) + z, qmin, qmax) as floats (z None: 0); into ``out`` if given."""
    return round_shift(x, s, z, out).clamp_(qmin, qmax)


def minmax_rows(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max of ``(n, L)``, L >= 1 (NaN propagates; callers check finiteness).

    amin then amax on each cache-sized chunk, so the data is read from memory once; two
    reductions are ~5x faster than ``torch.aminmax(dim=1)`` on CPU (torch 2.x)."""
    n, length = xb.shape
    if n == 1 and length > ROW_CHUNK_ELEMS:  # one long row: chunk along it
        flat = xb.reshape(-1)
        parts = [flat[i : i + ROW_CHUNK_ELEMS] for i in range(0, length, ROW_CHUNK_ELEMS)]
        lo = torch.stack([p.amin() for p in parts]).amin()
        hi = torch.stack([p.amax() for p in parts]).amax()
        return lo.reshape(1), hi.reshape(1)
    chunks = [xb[rows] for rows in row_chunks(n, length)]
    if len(chunks) <= 1:  # also no rows at all (an empty batch): empty results
        return xb.amin(dim=1), xb.amax(dim=1)
    los = [c.amin(dim=1) for c in chunks]
    his = [c.amax(dim=1) for c in chunks]
    return torch.cat(los), torch.cat(his)


def quantize_rows(
    xb: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax) in ``dtype`` for rows ``xb`` (n, L) and s, z of
    shape (n, 1); z is not added when ``symmetric`` (it is 0, and round(t) + 0 is the same)."""
    result = torch.empty(xb.shape, dtype=dtype)
    x, out, zr = xb, result, None if symmetric else z
    if xb.shape[0] == 1:  # per tensor: chunk along the row
        x, out, s = xb.reshape(-1), result.view(-1), s.reshape(())
        zr = None if zr is None else zr.reshape(())
        chunks = [slice(i, i + ROW_CHUNK_ELEMS) for i in range(0, x.numel(), ROW_CHUNK_ELEMS)]
    else:
        chunks = list(row_chunks(xb.shape[0], xb.shape[1]))
    buf = torch.empty(min(x.numel(), max(ROW_CHUNK_ELEMS, xb.shape[1])), dtype=torch.float32)
    for c in chunks:
        xc = x[c]
        sc = s if s.ndim == 0 else s[c]
        zc = zr if zr is None or zr.ndim == 0 else zr[c]
        out[c] = round_clamp(xc, sc, zc, qmin, qmax, out=buf[: xc.numel()].view(xc.shape))
    return result


def quantize_absmax_rows(x2d: torch.Tensor, qmax: int, offset: int, dtype: torch.dtype):
    """Symmetric per-row (per-token) quantization in a few fused ops: per row
    s = max(max|x| / qmax, float32 tiny), shape (n, 1), and codes round(x / s) + offset in
    ``dtype`` (uint8 with an offset, which is how a u8 GEMM takes them). None when a row is not
    finite: the caller's general path then raises the typed error.

    The codes of ``quantize_rows`` under ``choose_qparams``' per-row scales, and those scales
    except for all-zero rows. choose_qparams divides in float64 and rounds to float32; one
    float32 division gives the same number (double rounding is harmless for a single division:
    53 >= 2 * 24 + 2 bits), and values below float32's tiny clamp to it either way. All-zero
    rows get tiny instead of 1, which changes nothing downstream (their codes are 0 and their
    GEMM rows 0 * s = 0). No clamp is needed: |x| <= amax and s >= amax / qmax (to within
    float32 rounding) keep round(x / s) inside [-qmax, qmax]."""
    if x2d.shape[1]:
        amax = x2d.abs().amax(dim=1, keepdim=True)
    else:
        amax = x2d.new_zeros(x2d.shape[0], 1)
    if not math.isfinite(float(amax.sum())):  # a NaN/Inf row (or a float32 overflow of the
        return None  # sum: the general path then handles that batch)
    s = (amax / qmax).clamp_(min=FLOAT32_TINY)
    t = torch.div(x2d, s).round_()
    if offset:
        return t.add_(offset).to(dtype), s
    return t.to(dtype), s

"""The fused MinMax pass (``rtn_fused.c``): per block row, min/max, the scale and zero point of
``choose_qparams`` and the integers (or their codes, packed) in one pass over the input.

``core.onepass`` decides when it applies and builds the QParams; this module only calls the
kernel (it lives in the ``rtn`` library), split over threads by rows as the other kernels
(``threads``; a large result's pieces on huge page boundaries), into results with huge pages
advised (``rtn.empty_result``). Tests hold it to the general path bit for bit.
"""

from __future__ import annotations

import itertools

import torch

from . import rtn, threads

# Pieces of a large result start on this boundary of its address: the huge page size (see
# ``rtn.empty_result``). Two threads first touching one huge page of a fresh 45 MB result at once
# (pieces of
# 1 MB of it, taken in turn) cost 8-10 ms of a 30 ms call; each page by one thread, 22 ms.
HUGE_PAGE = 1 << 21


def _row_parts(n: int, length: int, row_bytes: int, out_ptr: int):
    """Row ranges (first element, rows, row length, first row) and threads: ``threads.row_parts``,
    one piece for a single row (the kernel needs whole rows) and, for a result large enough for huge
    pages, each cut moved to the first row whose output starts at or after the nearest HUGE_PAGE
    boundary."""
    if n == 1:
        return [(0, 1, length, 0)], 1
    parts, n_threads = threads.row_parts(n, length)
    if n * row_bytes < rtn.HUGE_RESULT_BYTES or len(parts) == 1:
        return parts, n_threads
    cut_set = {0, n}
    for _, _, _, row in parts[1:]:
        at = (out_ptr + row * row_bytes + HUGE_PAGE // 2) // HUGE_PAGE * HUGE_PAGE
        cut_set.add(min(n, max(0, -(-(at - out_ptr) // row_bytes))))
    cuts = sorted(cut_set)
    return [(a * length, b - a, length, a) for a, b in itertools.pairwise(cuts)], n_threads


def quantize_minmax_rows(
    xb: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    keep: int,
    scale_dtype: torch.dtype,
    bits: int,
    dtype: torch.dtype,
):
    """One pass over a contiguous float32 (n, L) tensor (see rtn_fused.c). ``bits`` 0: q in
    ``dtype`` (int8 / uint8), shape (n, L); 8: the codes q - qmin, uint8 (n, L); 1, 2, 4: those
    codes packed (``packing.pack``'s layout), flat uint8 of n * L * bits / 8 bytes, L * bits a
    multiple of 8. ``keep``: the mantissa bits of ``scale_dtype`` (float32: 0; float16: 10;
    bfloat16: 7). Returns (out, s, z): the scales in ``scale_dtype`` and the int32 zero points
    (0 when symmetric), n each; or None if a row is not finite or its scale overflows
    ``scale_dtype`` (the kernel's flags 1 and 2: the caller's general path raises the typed
    error)."""
    n, length = xb.shape
    row_bytes = length if bits in (0, 8) else length * bits // 8
    out = rtn.empty_result((n, length) if bits in (0, 8) else (n * row_bytes,), dtype)
    s, z = torch.empty(n, dtype=scale_dtype), torch.empty(n, dtype=torch.int32)
    info = torch.finfo(scale_dtype)
    x0, s0, z0, o0, size = (
        xb.data_ptr(),
        s.data_ptr(),
        z.data_ptr(),
        out.data_ptr(),
        s.element_size(),
    )
    flags = []

    def call(start: int, rows: int, row_len: int, row: int):
        return lambda: flags.append(
            rtn.LIB.cz_quantize_minmax_rows(
                x0 + 4 * start,
                rows,
                row_len,
                qmin,
                qmax,
                int(symmetric),
                keep,
                float(info.max),
                float(info.tiny),
                bits,
                s0 + size * row,
                z0 + 4 * row,
                o0 + row * row_bytes,
            )
        )

    parts, n_threads = _row_parts(n, length, row_bytes, o0)
    threads.run([call(*p) for p in parts], n_threads)
    return None if any(flags) else (out, s, z)

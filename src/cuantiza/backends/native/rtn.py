"""The optional native round-to-nearest kernels (``rtn.c``), loaded with ctypes.

They replace the memory-bound passes of ``quantize_tensor`` and ``QTensor.from_float`` and
nothing else; each has a torch path that ``tests/unit/test_native.py`` holds it to, bit for bit:

* ``minmax_rows(xb)``: per-row min and max of float32 rows ``(n, L)``; a row holding a NaN gets
  NaN for both, as ``torch.amin``/``amax`` (torch path: ``torch_rows.minmax_rows``).
* ``quantize_rows(xb, s, z, ...)``: q = clamp(round(x / s) + z, qmin, qmax), round half to
  even, ``x / s`` a true float32 division, z skipped for symmetric schemes, int8 or uint8
  (torch path: ``torch_rows.quantize_rows``; binary 1-bit schemes never come here).
* ``pack_codes(flat, bits, offset)``: one-byte codes packed at 1, 2, 4 or 8 bits, with the least
  and greatest code for the range check (torch path: ``torch_packing.pack_codes``).
* ``quantize_absmax_rows(x2d, ...)``: symmetric per-token activations in one call (torch path:
  ``torch_rows.quantize_absmax_rows``).

``fused.py`` wraps ``rtn_fused.c``, which does min/max, choose_qparams and quantize for MinMax
ranges in one pass; ``core.onepass`` decides when it applies. ``backends.row_kernels`` chooses
between these and the torch paths (``usable``); tests hold them together bit for bit.

The qparams, the finiteness checks and their errors stay in Python, so both paths give the same
integers and raise the same errors. Work is split over threads by ``threads``.

>>> import torch
>>> xb = torch.tensor([[1.0, -2.0, 3.0]]).expand(64, 3).contiguous()
>>> [t[0].item() for t in minmax_rows(xb)] if available() else [-2.0, 3.0]
[-2.0, 3.0]
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from ...constants import FLOAT32_TINY
from . import threads
from .loader import load_library, switched_on

# Below this many elements the torch path is used. Measured on the 2-core VM (2^8..2^22
# elements): on one thread the kernels were never slower than torch, the calls cost ~20-50 us
# either way at small sizes, so the threshold only keeps tiny tensors on the well-trodden path.
MIN_ELEMS = 1 << 12
# Results of at least this many bytes get huge pages advised (``cz_advise_huge``): first-touch
# page faults of a fresh 45 MB result measured 24 ms with 4 KiB pages, 5 ms with 2 MiB ones.
HUGE_RESULT_BYTES = 1 << 23


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument and return types of the C functions; AttributeError if one is missing (a stale
    library built from older C sources)."""
    i64, i32, ptr, f32, f64 = (
        ctypes.c_int64,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_float,
        ctypes.c_double,
    )
    signatures = {
        "cz_minmax_rows": ([ptr, i64, i64, ptr, ptr], None),
        "cz_quantize_rows": ([ptr, i64, i64, ptr, ptr, f32, f32, ptr], None),
        "cz_pack_codes": ([ptr, i64, i32, i32, i32, ptr, ptr], i32),
        "cz_advise_huge": ([ptr, i64], None),
        "cz_quantize_absmax_rows": ([ptr, i64, i64, f32, f32, f32, ptr, ptr], i32),
        "cz_quantize_minmax_rows": (
            [ptr, i64, i64, i32, i32, i32, i32, f64, f64, i32, ptr, ptr, ptr],
            i32,
        ),
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


# the rtn.c and rtn_fused.c kernels; None when not built (callers check available() first)
LIB: Any = load_library("_rtn*.so", _declare)


def built() -> bool:
    """True when the compiled library was found and loaded (whatever ``CUANTIZA_NATIVE`` says)."""
    return LIB is not None


def available() -> bool:
    """True when the native kernels will be used: built, and not disabled by
    ``CUANTIZA_NATIVE=0``."""
    return LIB is not None and switched_on()


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``: available, a C-contiguous float32 CPU tensor without
    gradient and with at least MIN_ELEMS elements (anything else keeps the torch path)."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and not x.requires_grad
        and x.numel() >= MIN_ELEMS
        and x.is_contiguous()
        and available()
    )


def empty_result(shape, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty`` for a result, with huge pages advised when it is large (see rtn.c)."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if nbytes >= HUGE_RESULT_BYTES:
        LIB.cz_advise_huge(out.data_ptr(), nbytes)
    return out


def minmax_rows(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (min, max) of a contiguous float32 (n, L) tensor, L >= 1; NaN rows give NaN.
    One long row is split along its length and the parts' results combined."""
    n, length = xb.shape
    parts, n_threads = threads.row_parts(n, length)
    slots = n if n > 1 else len(parts)  # one (lo, hi) per row or part
    lo, hi = torch.empty(slots, dtype=torch.float32), torch.empty(slots, dtype=torch.float32)
    x0, lo0, hi0 = xb.data_ptr(), lo.data_ptr(), hi.data_ptr()

    def call(k: int, start: int, rows: int, row_len: int, row: int):
        slot = row if n > 1 else k
        return lambda: LIB.cz_minmax_rows(
            x0 + 4 * start, rows, row_len, lo0 + 4 * slot, hi0 + 4 * slot
        )

    threads.run([call(k, *p) for k, p in enumerate(parts)], n_threads)
    if slots != n:
        return lo.amin().reshape(1), hi.amax().reshape(1)  # NaN propagates
    return lo, hi


def quantize_rows(
    xb: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax) in ``dtype`` (int8 or uint8) for a contiguous
    float32 (n, L) tensor and per-row s, z of n elements (one each for n = 1); z is not added
    when ``symmetric``."""
    n, length = xb.shape
    s = s.to(torch.float32).reshape(n).contiguous()
    zr = None if symmetric else z.to(torch.float32).reshape(n).contiguous()
    out = empty_result(xb.shape, dtype)
    x0, s0, q0 = xb.data_ptr(), s.data_ptr(), out.data_ptr()

    def call(start: int, rows: int, row_len: int, row: int):
        z_row = None if zr is None else zr.data_ptr() + 4 * row  # None: NULL, the kernel adds 0
        return lambda: LIB.cz_quantize_rows(
            x0 + 4 * start, rows, row_len, s0 + 4 * row, z_row, float(qmin), float(qmax), q0 + start
        )

    parts, n_threads = threads.row_parts(n, length)
    threads.run([call(*p) for p in parts], n_threads)
    return out


def packable(flat: torch.Tensor, bits: int, offset: int) -> bool:
    """Whether ``pack_codes`` takes these codes: ``usable``'s conditions for a flat int8/uint8
    tensor, a width dividing 8 and |offset| <= 255 (so q + offset fits the kernel's int16)."""
    return (
        flat.dtype in (torch.int8, torch.uint8)
        and bits in (1, 2, 4, 8)
        and abs(offset) <= 255
        and flat.device.type == "cpu"
        and flat.numel() >= MIN_ELEMS
        and flat.is_contiguous()
        and available()
    )


def pack_codes(flat: torch.Tensor, bits: int, offset: int) -> tuple[torch.Tensor, int, int]:
    """Codes (q + offset) mod 256 packed at ``bits`` (the layout of ``packing.pack``), with the
    least and greatest q + offset (no modulo), for the caller's range check."""
    n = flat.numel()
    out = empty_result((n * bits + 7) // 8, torch.uint8)
    parts, n_threads = threads.code_parts(n)
    lims = torch.empty(len(parts), 2, dtype=torch.int16)
    q0, o0, l0, signed = (
        flat.data_ptr(),
        out.data_ptr(),
        lims.data_ptr(),
        int(flat.dtype == torch.int8),
    )

    def call(k: int, a: int, b: int):
        return lambda: LIB.cz_pack_codes(
            q0 + a, b - a, bits, signed, offset, o0 + a * bits // 8, l0 + 4 * k
        )

    threads.run([call(k, a, b) for k, (a, b) in enumerate(parts)], n_threads)
    return out, int(lims[:, 0].min()), int(lims[:, 1].max())


def quantize_absmax_rows(x2d: torch.Tensor, qmax: int, offset: int, dtype: torch.dtype):
    """Per-token symmetric activations in one call (``cz_quantize_absmax_rows``): scales
    s = max(max|x| / qmax, float32 tiny) per row, shape (n, 1), and codes round(x / s) + offset
    in ``dtype`` (uint8, or int8 with offset 0). None if a row is not finite. The torch path
    is ``torch_rows.quantize_absmax_rows``; tests hold them together."""
    n, length = x2d.shape
    s = torch.empty(n, 1, dtype=torch.float32)
    out = empty_result(x2d.shape, dtype)
    x0, s0, q0 = x2d.data_ptr(), s.data_ptr(), out.data_ptr()
    if n * length < threads.MIN_PART_ELEMS:  # one thread: call directly (a batch's
        bad = LIB.cz_quantize_absmax_rows(
            x0, n, length, float(qmax), FLOAT32_TINY, float(offset), s0, q0
        )
        return None if bad else (out, s)  # activations are often this small)
    flags = []

    def call(start: int, rows: int, row_len: int, row: int):
        return lambda: flags.append(
            LIB.cz_quantize_absmax_rows(
                x0 + 4 * start,
                rows,
                row_len,
                float(qmax),
                FLOAT32_TINY,
                float(offset),
                s0 + 4 * row,
                q0 + start,
            )
        )

    parts, n_threads = threads.row_parts(n, length)
    threads.run([call(*p) for p in parts], n_threads)
    return None if any(flags) else (out, s)

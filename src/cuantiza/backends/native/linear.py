"""The native dynamic per-token int8 linear layer (``gemm.c``): quantize, GEMM and exit in one call.

``NativeLinear(w_int8, qmax)`` packs an int8 weight (N, K) once; ``forward(x2d, s_w, bias)`` gives
the float32 output (M, N) of DynamicQuantLinear's fused path for symmetric per-token activations
with qmax <= 63, or None if a row of x is not finite (the caller's general path then raises the
typed error). The result is bit for bit the general path's::

    s = max(max|x| / qmax, tiny) per row,  u = round(x / s) + 64,  acc = sum_k (u - 64) w,
    y = ((float32(acc) * s_w) * s) + bias

(``tests/unit/test_native_linear.py`` holds them together). Why it exists: at batch 1 x 128 tokens
the three steps cost MiniLM's 384 -> 384 layer 500 us through torch ops and oneDNN, and 210 us
here; the GEMM alone is also faster than oneDNN's (one pass over the codes, exit fused). Threads
are torch's own OpenMP workers (gemm.c), ``torch.get_num_threads()`` of them.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from ...constants import FLOAT32_TINY, GEMM_BLOCK_COLS, SYM_CODE_OFFSET
from .loader import load_library, switched_on

NR = GEMM_BLOCK_COLS  # output columns per packed block (gemm.c)
OFFSET = SYM_CODE_OFFSET  # codes q + 64: vpmaddubsw's int16 pair sums stay exact for q + 64 <= 127
# acc = sum_k u w must fit int32: K * 127 * 127 < 2^31
MAX_K = (2**31 - 1) // (127 * 127)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Types of its functions; AttributeError for a library built from an older source."""
    i64, i32, ptr, f32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_float
    lib.cz_gemm_pack.argtypes, lib.cz_gemm_pack.restype = [ptr, i64, i64, ptr, ptr], None
    lib.cz_dyn_linear.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, f32, f32, i32, ptr]
    lib.cz_dyn_linear.restype = i32
    lib.cz_gemm_portable.argtypes, lib.cz_gemm_portable.restype = [i32], i32
    return lib


_LIB: Any = load_library("_gemm*.so", _declare)


def built() -> bool:
    """True when the compiled layer was found and loaded (whatever ``CUANTIZA_NATIVE`` says)."""
    return _LIB is not None


def enabled() -> bool:
    """Built, and not turned off by ``CUANTIZA_NATIVE=0``."""
    return _LIB is not None and switched_on()


def supports(w_int8: torch.Tensor, act_qmax: int) -> bool:
    """Whether the native layer computes this weight (N, K) and activation width exactly:
    built and enabled, int8 weights, K a positive multiple of 4 below MAX_K, qmax <= 63."""
    n, k = w_int8.shape
    return (
        enabled()
        and w_int8.dtype == torch.int8
        and n > 0
        and 0 < k <= MAX_K
        and k % 4 == 0
        and 0 < act_qmax <= OFFSET - 1
    )


def _padded_vector(v: torch.Tensor, n: int, blocks: int) -> torch.Tensor:
    """A float32 per-column vector of n values, zero padded to whole blocks (the kernel loads 8
    at a time)."""
    out = torch.zeros(blocks * NR, dtype=torch.float32)
    out[:n] = v.detach().reshape(-1).to(torch.float32).expand(n)
    return out


class NativeLinear:
    """An int8 weight (N, K) packed for ``cz_dyn_linear`` with its column sums; the layer's
    per-channel scales s_w and bias are copied, float32 and padded to blocks of 16 columns, on
    first use and again whenever the layer's tensors change (identity or in-place version)."""

    def __init__(self, w_int8: torch.Tensor, act_qmax: int):
        n, k = w_int8.shape
        self.n, self.k, self.blocks, self.qmax = n, k, (n + NR - 1) // NR, float(act_qmax)
        w = w_int8.contiguous()
        self.packed = torch.empty(self.blocks * NR * k, dtype=torch.int8)  # (blocks, K/4, 16, 4)
        self.colsum = torch.empty(self.blocks * NR, dtype=torch.int32)
        _LIB.cz_gemm_pack(w.data_ptr(), n, k, self.packed.data_ptr(), self.colsum.data_ptr())
        self._ptrs = (self.packed.data_ptr(), self.colsum.data_ptr())
        self._exit: tuple = (None, -1, None, -1)  # the s_w and bias copied, and their versions
        self._copies: tuple = (None, None, 0, None)  # padded s_w, padded bias, their pointers

    def _exit_params(self, s_w: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        """Pointers to the padded float32 copies of s_w and bias (None: no bias), remade when
        the layer's tensors change: other tensors, or the same ones edited in place."""
        now = (s_w, s_w._version, bias, -1 if bias is None else bias._version)
        old = self._exit
        if not (old[0] is s_w and old[2] is bias and old[1] == now[1] and old[3] == now[3]):
            s_wp = _padded_vector(s_w, self.n, self.blocks)
            bp = None if bias is None else _padded_vector(bias, self.n, self.blocks)
            self._copies = (s_wp, bp, s_wp.data_ptr(), None if bp is None else bp.data_ptr())
            self._exit = now
        return self._copies[2], self._copies[3]

    def forward(
        self, x2d: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor | None:
        """y (..., N) float32 for x (..., K) float32 (M rows: the leading dimensions), or None
        when a row is not finite. y is made in its final shape: reshaping x and y cost ~3 us of
        a 384 -> 384 layer's ~30 us call for one token (fastest of many rounds, 2-core AVX2)."""
        if x2d.ndim == 0 or x2d.shape[-1] != self.k:  # the C code would read past x
            raise ValueError(
                f"input of shape {tuple(x2d.shape)}: the layer takes {self.k} features"
            )
        x = x2d if x2d.is_contiguous() else x2d.contiguous()
        m = x.numel() // self.k
        s_wp, bp = self._exit_params(s_w, bias)
        y = torch.empty((*x.shape[:-1], self.n), dtype=torch.float32)
        bad = _LIB.cz_dyn_linear(
            x.data_ptr(),
            m,
            self.k,
            self.n,
            *self._ptrs,
            s_wp,
            bp,
            self.qmax,
            FLOAT32_TINY,
            torch.get_num_threads(),
            y.data_ptr(),
        )
        if bad < 0:
            raise MemoryError(f"cuantiza: no memory for the codes of a {m} x {self.k} activation")
        return None if bad else y

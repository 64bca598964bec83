"""Weight-only quantized linear layers on the CPU without materializing the float weight.

``WeightOnlyLinear`` repacks cuantiza's codes once (``wo.c``: blocks of 16 output columns,
32-bit words of codes, per-group scales) and computes

    y[m, n] = sum_k x[m, k] w[n, k]  (+ bias[n]),
    w[n, k] = s[n, g] * e[n, k],   e = step * c[n, k] + qmin - z[n, g],   g = k // group

with a decode kernel for small batches (the packed weight streamed once, dequantized in
registers) and a BLIS-style GEMM for large ones (dequantization is the B-panel packing).

Exactness contract
------------------
1. Weights. e is an integer with |e| < 2^22, formed exactly in float32; w = fl(s * e) is one
   float32 multiplication, so every weight the kernels use is bit for bit the reference's
   ``(q.float() - z) * s`` (``core.quantize.dequantize``; the tests compare
   ``WeightOnlyLinear.dequantize()``, which runs the kernels' own dequantization, bit for bit).
2. Sums. The only other difference from ``F.linear(x, W, bias)`` is the order in which the
   float32 dot products are summed. Write p_k = x_k w_k (exact real products of the float32
   inputs), P = sum_k |p_k|, u = 2^-24 and gamma(j) = j u / (1 - j u).

   Claim: any evaluation of S = sum_k p_k that combines the K products with float32
   operations of one rounding each (fl(x w), fl(a + b), fma(x, w, a) = fl(x w + a), in any order
   and any tree shape) returns S_hat with |S_hat - S| <= gamma(K) P.
   Proof: the evaluation is a tree. Term k enters at one operation (fl(x_k w_k), or an FMA that
   rounds x_k w_k + a once) and then passes through the operations above it up to the root.
   Along that path the set of terms in the current subtree grows strictly at every operation:
   the entry operation holds term k alone or with the accumulator's terms, and every later one
   adds a disjoint nonempty subtree (an addition) or a new product (an FMA). It starts with at
   least 1 term and ends with K, so the path holds at most K operations, each multiplying the
   term by some (1 + d_i), |d_i| <= u: S_hat = sum_k p_k prod_{i <= n_k} (1 + d_ki), n_k <= K.
   With |prod_{i <= n} (1 + d_i) - 1| <= gamma(n) <= gamma(K) (Higham, Accuracy and Stability,
   Lemma 3.1), |S_hat - S| <= gamma(K) sum_k |p_k| = gamma(K) P.                              []

   Our kernels: each output lane is one FMA chain over k (prefill: the chain continues across
   k-panels because the micro-kernel reloads C; decode at one row: two chains, even and odd k,
   then one addition; portable C: fl(acc + fl(x w)) sequentially). The reference's sgemm, in
   whatever blocking it uses, is also such a tree. Both are within gamma(K) P of S, so

       |y - y_ref| <= 2 gamma(K) sum_k |x_k| |w_k|                       (no bias)

   With a bias added after the sum (one rounding; the reference adds it in some order too),
   treat b as term K + 1 of magnitude |b|:   |y - y_ref| <= 2 gamma(K + 1) (P + |b|).
   Against the exact (float64) result, ours alone is within gamma(K) P (gamma(K+1)(P + |b|)).
   The bound assumes no overflow and no underflow (subnormal partial results add an absolute
   error of at most 2^-150 per operation; the tests use normal data).
3. Non-finite values: a NaN in row m of x makes row m of y NaN; +-Inf in x gives what the
   float32 operations give (Inf * 0 = NaN, Inf - Inf = NaN), as in F.linear.

4. Int8 activations (opt-in, ``int8_decode=True``; 4- and 8-bit layers on AVX2, fewer than
   ``PREFILL_FROM_M`` rows): x is quantized per block of 32 to int8 and each block's dot
   product with the codes is exact in integers, as llama.cpp's Q4_0 x Q8_0 does, about 3x less
   work a weight than the float decode. Its specification is
   ``backends.weight_only_reference.int8_activation_linear``, which it equals bit for bit (every
   operation and its order are fixed there); against float activations it adds x's quantization
   error, bounded in that module. The prefill GEMM stays float, so a model's prompt and its
   generated tokens see slightly different rounding, as in llama.cpp.

``supports`` says which layers the kernels take; for the rest, layers run the reference
(``QTensor.dequantize``, then ``F.linear``; ``nn.weight_only``).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from .loader import load_library, switched_on

WIDTHS = (1, 2, 3, 4, 5, 6, 8)
# Rows from which the prefill GEMM beats the decode kernel (measured on the 2-core AVX2 VM,
# benchmarks/bench_decode.py's per-layer table).
PREFILL_FROM_M = 8
MODE_DECODE, MODE_PREFILL = 1, 2
INT8_DECODE_WIDTHS = (4, 8)  # widths with an int8-activation decode (contract point 4)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Types of the library's functions; AttributeError for one built from older sources."""
    i64, i32, p = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    sig = {
        "cz_wo_packed_bytes": ([i64, i64, i32, i64], i64),
        "cz_wo_repack": ([p, i32, i64, i64, i32, i64, i32, p, p, p, i32], i32),
        "cz_wo_info": ([p, p], i32),
        "cz_wo_use_fx": ([p, i32], i32),
        "cz_wo_unpack": ([p, p, p, p], i32),
        "cz_wo_dequant": ([p, p], i32),
        "cz_wo_linear": ([p, p, i64, i64, p, p, i32, i32], i32),
        "cz_wo_linear_q8a": ([p, p, i64, i64, p, p, i32, p], i32),
        "cz_wo_force_portable": ([i32], i32),
        "cz_wo_isa": ([], i32),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


# wo.c's kernels (after ``import torch``: GOMP_* bind to torch's libgomp); None when not built
_LIB: Any = load_library("_wo*.so", _declare)


def built() -> bool:
    """True when the compiled library was found and loaded (whatever ``CUANTIZA_NATIVE`` says)."""
    return _LIB is not None


def enabled() -> bool:
    """Built, and not turned off by ``CUANTIZA_NATIVE=0``."""
    return _LIB is not None and switched_on()


def force_portable(on: bool) -> bool:
    """Take the portable C path even on an AVX2 CPU (tests); returns the previous setting."""
    return bool(_LIB.cz_wo_force_portable(int(on)))


def isa() -> str:
    return "avx2" if _LIB.cz_wo_isa() else "portable"


def supports(
    n: int,
    k: int,
    bits: int,
    group: int,
    step: int = 1,
    zero=None,
    qmin: int = 0,
    require_fast: bool = True,
) -> str | None:
    """None when the kernels take this layer, else the reason (the caller then uses
    reference). require_fast: also refuse when only the portable C path would run
    (no AVX2+FMA): scalar C is slower than dequantize + F.linear."""
    if not enabled():
        return (
            "the native weight-only kernels are not built or are switched off (CUANTIZA_NATIVE=0)"
        )
    if require_fast and not _LIB.cz_wo_isa():
        return "no AVX2+FMA on this CPU (the portable kernel is slower than the reference)"
    if bits not in WIDTHS:
        return f"{bits}-bit codes (kernels: {WIDTHS})"
    if step not in (1, 2) or (step == 2 and bits != 1):
        return f"code step {step} with {bits} bits"
    if n < 1 or k < 32 or k % 32:
        return f"in_features {k} is not a positive multiple of 32"
    if group < 32 or group % 32 or k % group:
        return f"group {group} is not a multiple of 32 dividing in_features {k}"
    if abs(qmin) >= 1 << 21 or (
        zero is not None and zero.numel() and int(zero.abs().max()) >= 1 << 21
    ):
        return "zero point or qmin out of range"
    return None


class WeightOnlyLinear:
    """A weight-only quantized linear layer in the kernels' packed layout.

    codes (N, K) uint8 in [0, 2^bits), or ``packed_codes`` of N x K codes at ``bits`` each (a
    QTensor's ``data``, read without unpacking) with ``shape=(N, K)``; scale (N, G) float32
    (G = K // group), zero (N, G) int32 (or None: symmetric), qmin the scheme's lowest integer,
    step 2 for binary {-1, +1}, else 1. Nothing of the inputs is kept: the packed copy holds
    codes, scales and offsets.
    """

    def __init__(
        self,
        codes: torch.Tensor | None,
        bits: int,
        group: int,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        qmin: int,
        step: int = 1,
        packed_codes: torch.Tensor | None = None,
        shape: tuple[int, int] | None = None,
        int8_decode: bool = False,
    ):
        if codes is not None:
            n, k = codes.shape
            src, packed_in = codes.to(torch.uint8).contiguous(), 0
        else:
            assert packed_codes is not None and shape is not None
            (n, k), src, packed_in = shape, packed_codes.contiguous(), 1
        why = supports(n, k, bits, group, step, zero, qmin, require_fast=False)
        if why:
            raise ValueError(why)
        g = k // group
        scale = scale.to(torch.float32).reshape(n, g).contiguous()
        z = torch.zeros(n, g, dtype=torch.int32) if zero is None else zero.to(torch.int32)
        off = (qmin - z.reshape(n, g)).contiguous()
        self.packed = torch.empty(_LIB.cz_wo_packed_bytes(n, k, bits, group), dtype=torch.uint8)
        args = (n, k, bits, group, step, scale.data_ptr(), off.data_ptr(), self.packed.data_ptr())
        rc = _LIB.cz_wo_repack(src.data_ptr(), packed_in, *args, torch.get_num_threads())
        if rc < 0:
            raise ValueError(f"cz_wo_repack failed ({rc}): codes out of range or bad shape")
        self.n, self.k, self.bits, self.group, self.step = n, k, bits, group, step
        self._ptr = self.packed.data_ptr()
        self._q8_scratch: torch.Tensor | None = None  # forward_q8a's buffer, grown on demand
        # below PREFILL_FROM_M rows, the int8-activation path (contract point 4) where it exists
        self.int8_decode = (
            int8_decode and bits in INT8_DECODE_WIDTHS and step == 1 and bool(_LIB.cz_wo_isa())
        )

    @property
    def fx(self) -> bool:
        """Whether the 5-operation fx dequantization is in use (every scale positive with
        -1.5 2^23 s exact: all float16- and bfloat16-grid scales); see wo.c."""
        info = (ctypes.c_int64 * 6)()
        _LIB.cz_wo_info(self._ptr, info)
        return bool(info[5])

    def use_fx(self, on: bool) -> bool:
        """Tests: switch between the fx and the plain dequantization (fx only where the scales
        allow it); returns the setting in force."""
        return bool(_LIB.cz_wo_use_fx(self._ptr, int(on)))

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        mode: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """y = x W^T (+ bias) for float32 x (M, K); mode 0 picks decode or prefill by M. out: an
        (M, N) float32 contiguous tensor to write y into (saves the allocation, ~1 us)."""
        m, k = x.shape
        if k != self.k or x.dtype != torch.float32:
            raise ValueError("x must be float32 (M, in_features)")
        sm, sk = x.stride()
        if sk != 1 or (sm < k and m > 1):
            x = x.contiguous()
            sm = k
        if out is None:
            out = torch.empty(m, self.n, dtype=torch.float32)
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
            bias = bias.to(torch.float32).contiguous()
        if not mode:
            if m < PREFILL_FROM_M and self.int8_decode:
                return self.forward_q8a(x, bias, out)
            mode = MODE_PREFILL if m >= PREFILL_FROM_M else MODE_DECODE
        rc = _LIB.cz_wo_linear(
            self._ptr,
            x.data_ptr(),
            m,
            sm if m > 1 else k,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
            mode,
        )
        if rc:
            raise RuntimeError(f"cz_wo_linear failed ({rc})")
        return out

    __call__ = forward

    def forward_q8a(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y through int8 activations (4- and 8-bit layers, AVX2): contract point 4, bit for bit
        ``int8_activation_linear``. ValueError for a layer or CPU it does not take."""
        m, k = x.shape
        if k != self.k or x.dtype != torch.float32:
            raise ValueError("x must be float32 (M, in_features)")
        x = x.contiguous()
        need = m * k + 8 * m * (k // 32)
        if self._q8_scratch is None or self._q8_scratch.numel() < need:
            self._q8_scratch = torch.empty(need, dtype=torch.uint8)
        if out is None:
            out = torch.empty(m, self.n, dtype=torch.float32)
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
            bias = bias.to(torch.float32).contiguous()
        rc = _LIB.cz_wo_linear_q8a(
            self._ptr,
            x.data_ptr(),
            m,
            k,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
            self._q8_scratch.data_ptr(),
        )
        if rc:
            raise ValueError("the int8-activation path takes 4- and 8-bit layers on AVX2 CPUs")
        return out

    def dequantize(self) -> torch.Tensor:
        """The kernels' own dequantization of the packed weight, (N, K) float32 (debugging)."""
        w = torch.empty(self.n, self.k, dtype=torch.float32)
        rc = _LIB.cz_wo_dequant(self._ptr, w.data_ptr())
        if rc:
            raise RuntimeError(f"cz_wo_dequant failed ({rc})")
        return w

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """codes (N, K) uint8, scale (N, G) float32 and qmin - z (N, G) int32 back out of the
        packed layout (tests: the layout round-trips)."""
        g = self.k // self.group
        codes = torch.empty(self.n, self.k, dtype=torch.uint8)
        scale = torch.empty(self.n, g, dtype=torch.float32)
        off = torch.empty(self.n, g, dtype=torch.int32)
        rc = _LIB.cz_wo_unpack(self._ptr, codes.data_ptr(), scale.data_ptr(), off.data_ptr())
        if rc:
            raise RuntimeError(f"cz_wo_unpack failed ({rc})")
        return codes, scale, off

"""One number, explained (``cuantiza explain``): its IEEE-754 float32 fields, then its trip
through cuantiza's quantization (choose_qparams, quantize, dequantize) at a given bit width.

float32 (IEEE-754; docs/primer.md, point 3): 1 sign bit s, 8 exponent bits E, 23 mantissa
bits b_22..b_0::

    normal     (0 < E < 255): v = (-1)^s x 2^(E - 127) x (1 + sum_{i=1..23} b_{23-i} 2^-i)
    subnormal  (E = 0, m > 0): v = (-1)^s x 2^(-126)    x (0 + sum_{i=1..23} b_{23-i} 2^-i)
    zero       (E = 0, m = 0): +0 or -0
    inf / NaN  (E = 255):      m = 0 is +-infinity, m != 0 is NaN

Without an explicit range the value is quantized as the only element of a tensor: MinMax gives
the range [v, v], widened to contain 0, so v maps to the end of the integer range (symmetric:
[-|v|, |v|]; asymmetric: [min(v, 0), max(v, 0)]). Give a range to see rounding inside it.

>>> float32_fields(0.15625).exponent, float32_fields(0.15625).mantissa
(124, 2097152)
>>> quantize_value(-2.5, bits=8, symmetric=True, lo=-4.0, hi=4.0).q
-79
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import torch

from ..core.qparams import choose_qparams
from ..core.quantize import dequantize, quantize, tensor_qparams
from ..core.scheme import QScheme
from ..errors import ConfigError, NonFiniteError

MAX_TERMS = 6  # mantissa terms 2^-i written out before "..."


@dataclass(frozen=True)
class Float32Fields:
    value: float  # the float32 value, exactly, as a Python float
    pattern: int  # the 32 bits
    sign: int
    exponent: int  # biased exponent field E, 0..255
    mantissa: int  # fraction field m, 0..2^23 - 1

    @property
    def category(self) -> str:
        if self.exponent == 255:
            return "nan" if self.mantissa else "inf"
        if self.exponent == 0:
            return "subnormal" if self.mantissa else "zero"
        return "normal"

    @property
    def fraction(self) -> float:
        """sum_{i=1..23} b_{23-i} 2^-i = m / 2^23, exact."""
        return self.mantissa / 2**23


def float32_fields(value: float) -> Float32Fields:
    """The float32 nearest to ``value`` (round to nearest even; overflow to +-inf), split."""
    with np.errstate(over="ignore"):
        f = np.float32(value)
    bits = int(np.array(f).view(np.uint32))
    return Float32Fields(float(f), bits, bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF)


def _terms(m: int) -> str:
    idx = [i for i in range(1, 24) if (m >> (23 - i)) & 1]
    shown = " + ".join(f"2^-{i}" for i in idx[:MAX_TERMS])
    return (shown + (" + ..." if len(idx) > MAX_TERMS else "")) or "0"


def describe_float32(text: str | float) -> str:
    """The IEEE-754 fields of float32(text) and the formula evaluated, as printable lines."""
    typed = float(text)
    f = float32_fields(typed)
    e_bits, m_bits = format(f.exponent, "08b"), format(f.mantissa, "023b")
    lines = [f"float32 {f.value!r}: bits {f.sign} {e_bits} {m_bits} (0x{f.pattern:08X})"]
    if math.isfinite(typed) and f.value != typed:
        lines.append(
            f"  ({text} is not a float32; the nearest is {Decimal(f.value):.20g}, "
            f"off by {abs(typed - f.value):.3g})"
        )
    lines.append(f"  sign      s = {f.sign}  ({'-' if f.sign else '+'})")
    lines.append(f"  exponent  E = {e_bits} = {f.exponent}" + _exponent_note(f))
    lines.append(
        f"  mantissa  m = {m_bits} = {f.mantissa}: sum b*2^-i = {_terms(f.mantissa)} = "
        f"{f.fraction!r}"
    )
    lines.append("  value     " + _formula(f))
    return "\n".join(lines)


def _exponent_note(f: Float32Fields) -> str:
    if f.category == "normal":
        return f", unbiased E - 127 = {f.exponent - 127}"
    if f.category in ("zero", "subnormal"):
        return " (subnormal/zero: exponent -126, no implicit leading 1)"
    return " (all ones: infinity or NaN)"


def _formula(f: Float32Fields) -> str:
    s = f"(-1)^{f.sign}"
    if f.category == "normal":
        return (
            f"v = {s} x 2^({f.exponent} - 127) x (1 + {f.fraction!r}) = "
            f"{'-' if f.sign else ''}{2.0 ** (f.exponent - 127)!r} x {1 + f.fraction!r} = "
            f"{f.value!r}"
        )
    if f.category == "subnormal":
        return f"v = {s} x 2^-126 x (0 + {f.fraction!r}) = {f.value!r}  (subnormal)"
    if f.category == "zero":
        return f"v = {'-' if f.sign else '+'}0  (E = 0 and m = 0: zero)"
    if f.category == "inf":
        return f"v = {'-' if f.sign else '+'}inf  (E = 255 and m = 0: infinity)"
    return "v = NaN  (E = 255 and m != 0: not a number)"


@dataclass(frozen=True)
class QuantStep:
    scheme: QScheme
    value: float  # float32 input
    lo: float  # range given (before widening)
    hi: float
    scale: float
    zero_point: int
    ratio: float  # float32 v / s
    q: int
    x_hat: float

    @property
    def error(self) -> float:
        return abs(self.value - self.x_hat)


def check_range(lo: float, hi: float) -> None:
    """A --range is two finite numbers MIN <= MAX."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"range must be two finite numbers MIN <= MAX, got [{lo}, {hi}]")


def quantize_value(
    value: float,
    bits: int = 8,
    symmetric: bool = True,
    lo: float | None = None,
    hi: float | None = None,
) -> QuantStep:
    """Quantize float32(value) per tensor with cuantiza's own functions: with lo/hi,
    choose_qparams(lo, hi); without, the qparams ``quantize_tensor`` picks for the one-element
    tensor [v] (MinMax range [v, v]; binary: s = |v|). Then quantize and dequantize."""
    scheme = QScheme(bits=bits, symmetric=symmetric)
    v = float32_fields(value).value
    x = torch.tensor([v], dtype=torch.float32)
    if math.isnan(v):
        raise NonFiniteError(
            "NaN has no quantized value; cuantiza refuses NaN weights and "
            "excludes NaN from activation statistics"
        )
    if lo is None or hi is None:
        if math.isinf(v):
            raise NonFiniteError(
                f"{v} has no finite range; pass --range MIN MAX to see it saturate"
            )
        qp, lo, hi = tensor_qparams(x, scheme, name="VALUE"), v, v
    else:
        check_range(lo, hi)
        qp = choose_qparams(
            torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32), scheme
        )
    q = quantize(x, qp)
    x_hat = float(dequantize(q, qp)[0])
    s = qp.scale.to(torch.float32)
    return QuantStep(
        scheme,
        v,
        float(lo),
        float(hi),
        float(s),
        int(qp.zero_point),
        float(x[0] / s),
        int(q[0]),
        x_hat,
    )


def binary_repr(q: int, scheme: QScheme) -> str:
    """q as stored bits: two's complement for symmetric, unsigned for asymmetric, one bit for
    binary (1 = +1, 0 = -1)."""
    if scheme.binary:
        return f"{(q + 1) // 2}  (one bit: 1 means +1, 0 means -1)"
    if scheme.symmetric:
        note = f"two's complement, {scheme.bits} bits"
        if q < 0:
            note += f": 2^{scheme.bits} - {-q} = {(1 << scheme.bits) + q}"
        return f"{q & ((1 << scheme.bits) - 1):0{scheme.bits}b}  ({note})"
    return f"{q:0{scheme.bits}b}  (unsigned, {scheme.bits} bits)"


def describe_quantization(st: QuantStep) -> str:
    """How ``st`` was computed, formula by formula, as printable lines."""
    sc = st.scheme
    kind = "binary" if sc.binary else ("symmetric" if sc.symmetric else "asymmetric")
    given = (
        "" if (st.lo, st.hi) != (st.value, st.value) else " (MinMax of the tensor [v]; no --range)"
    )
    lines = [
        f"int{sc.bits} {kind}, q in [{sc.qmin}, {sc.qmax}], range [{st.lo!r}, {st.hi!r}]{given}"
    ]
    if sc.binary:
        lines.append(
            f"  scale     s = {st.scale!r}  (binary levels -s, +s; from a range s = max(|min|, "
            "|max|), "
            f"from a tensor s = mean|x|)"
        )
        lines.append(f"  quantized q = +1 if v >= 0 else -1 = {st.q}")
    else:
        if sc.symmetric:
            lines.append(f"  scale     s = max(|min|, |max|) / {sc.qmax} = {st.scale!r}  (float32)")
        else:
            lines.append(
                f"  scale     s = (max(hi, 0) - min(lo, 0)) / {sc.qmax} = {st.scale!r}  (float32)"
            )
        lines.append(
            "  zero pt   z = "
            + (
                "0"
                if sc.symmetric
                else f"clamp(round(-min(lo, 0) / s), 0, {sc.qmax}) = {st.zero_point}"
            )
        )
        raw = round(st.ratio) + st.zero_point if math.isfinite(st.ratio) else st.ratio
        clamped = "" if raw == st.q else f"  (clamped from {raw})"
        lines.append(
            f"  quantized q = clamp(round(v / s) + z, {sc.qmin}, {sc.qmax}) = "
            f"clamp(round({st.ratio!r}) + {st.zero_point}) = {st.q}{clamped}"
        )
    lines.append(f"  binary    {binary_repr(st.q, sc)}")
    lines.append(f"  dequant   x_hat = s (q - z) = {st.x_hat!r}")
    bound = "" if sc.binary else f"  (s/2 = {st.scale / 2:.6g})"
    lines.append(f"  error     |v - x_hat| = {st.error:.6g}{bound}")
    return "\n".join(lines)

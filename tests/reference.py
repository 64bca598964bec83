"""An independent NumPy reference for cuantiza's numeric core, written from the formulas.

Nothing here imports cuantiza's math: it is the slow, obvious spec the fast code is checked
against, bit for bit (as llama.cpp keeps a ``*_ref`` C function per format). Blocks are found
with an element -> block index map, not with cuantiza's permute/reshape layout.

With r the real value, q the integer, s > 0 the scale, z the zero point: r = s (q - z).

* asymmetric, n bits: q in [0, 2^n - 1]; beta = min(lo, 0), alpha = max(hi, 0);
  s = (alpha - beta) / (2^n - 1); z = clamp(rint(-beta / s), 0, 2^n - 1)
* symmetric, n >= 2 bits: q in [-(2^(n-1) - 1), 2^(n-1) - 1]; s = max(|lo|, |hi|) / qmax; z = 0
* binary (1-bit symmetric): q = +1 if x >= 0 else -1, s = mean|x| over the block's real elements
  (an all-zero block, which no binary level can represent, gets the smallest normal scale)
* s is computed in float64 and rounded once to the storage dtype; a zero s becomes 1 and a tiny
  one the smallest normal number of the storage dtype; z uses the *stored* s.
* q = clamp(rint(fl32(x / s)) + z, qmin, qmax): float32 true division, round half to even.
* x_hat = fl32((q - z) * s).
"""

from __future__ import annotations

import math

import numpy as np

# smallest normal and largest finite value of each scale storage dtype
STORAGE = {
    "float32": (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)),
    "float16": (float(np.finfo(np.float16).tiny), float(np.finfo(np.float16).max)),
    # bfloat16 has float32's exponent: same smallest normal; max = (2 - 2^-7) 2^127
    "bfloat16": (float(np.finfo(np.float32).tiny), (2 - 2.0**-7) * 2.0**127),
}


class RefOverflow(Exception):
    """The reference's scale does not fit the storage dtype."""


# ------------------------------------------------------------------------ integer ranges
def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric and bits == 1:
        return -1, 1
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


# ------------------------------------------------------------------------ scale storage
def round_to_bits(a: np.ndarray, sig_bits: int) -> np.ndarray:
    """Positive normal float64 values rounded once to ``sig_bits`` significant bits, half to
    even: a = m 2^e with 0.5 <= m < 1, so a / 2^(e - sig_bits) is exact in float64 and
    Python's round() rounds it half to even."""
    out = []
    for v in np.ravel(np.asarray(a, dtype=np.float64)):
        e = math.frexp(float(v))[1]
        ulp = math.ldexp(1.0, e - sig_bits)
        out.append(round(float(v) / ulp) * ulp)
    return np.array(out, dtype=np.float64).reshape(np.shape(a))


def store_scale(s64: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Zero -> 1, tiny -> smallest normal, then one rounding to the storage dtype.
    Returned as float32 (every float16 / bfloat16 value is exactly a float32)."""
    tiny, big = STORAGE[scale_dtype]
    s64 = np.asarray(s64, dtype=np.float64)
    if np.any(s64 > big):
        raise RefOverflow(f"scale {s64.max()} > {big} ({scale_dtype})")
    s64 = np.where(s64 == 0, 1.0, s64)
    s64 = np.maximum(s64, tiny)
    if scale_dtype == "float32":
        return s64.astype(np.float32)
    if scale_dtype == "float16":  # NumPy converts float64 -> float16 directly
        return s64.astype(np.float16).astype(np.float32)
    return round_to_bits(s64, 8).astype(np.float32)  # bfloat16: 8 significant bits, exact in fp32


# ------------------------------------------------------------------------ qparams from a range
def qparams_from_range(lo, hi, bits: int, symmetric: bool, scale_dtype: str = "float32"):
    """(scale float32, zero point int64) for ranges [lo, hi] (any shape)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        s64 = amax if bits == 1 else amax / qmax
        s = store_scale(s64, scale_dtype)
        return s, np.zeros(s.shape, dtype=np.int64)
    beta, alpha = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    s = store_scale((alpha - beta) / (qmax - qmin), scale_dtype)
    z = np.clip(np.rint(-beta / s.astype(np.float64)), qmin, qmax).astype(np.int64)
    return s, z


# ------------------------------------------------------------------------ the maps
def quantize(x, s, z, bits: int, symmetric: bool) -> np.ndarray:
    """Elementwise; s and z broadcast against x. Returns int64."""
    x = np.asarray(x, dtype=np.float32)
    if symmetric and bits == 1:
        return np.where(x >= 0, 1, -1).astype(np.int64)
    qmin, qmax = qrange(bits, symmetric)
    t = np.rint(np.divide(x, np.asarray(s, dtype=np.float32))).astype(np.float64)  # half to even
    return np.clip(t + np.asarray(z, dtype=np.float64), qmin, qmax).astype(np.int64)


def dequantize(q, s, z) -> np.ndarray:
    q32 = np.asarray(q).astype(np.float32)
    return (q32 - np.asarray(z).astype(np.float32)) * np.asarray(s, dtype=np.float32)


def ste_mask(x, s, z, bits: int, symmetric: bool) -> np.ndarray:
    """Where the straight-through gradient passes: rint(x / s) + z inside [qmin, qmax]
    (binary: |x| <= s)."""
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(s, dtype=np.float32)
    if symmetric and bits == 1:
        return np.abs(x) <= s
    qmin, qmax = qrange(bits, symmetric)
    t = np.rint(np.divide(x, s)).astype(np.float64) + np.asarray(z, dtype=np.float64)
    return (t >= qmin) & (t <= qmax)


# ------------------------------------------------------------------------ blocking
def block_ids(shape: tuple, gran: tuple) -> tuple[np.ndarray, tuple]:
    """For each element, the flat index of its scale; and the scale array's shape.

    ``gran`` is ("tensor",), ("channel", axis) or ("group", size, axis). Groups are the
    consecutive runs of ``size`` along ``axis``; the last one may be shorter."""
    shape = tuple(shape)
    if gran[0] == "tensor":
        return np.zeros(shape, dtype=np.int64), ()
    idx = list(np.indices(shape))
    if gran[0] == "channel":
        a = gran[1] % len(shape)
        return idx[a].astype(np.int64), (shape[a],)
    size, a = gran[1], gran[2] % len(shape)
    idx[a] = idx[a] // size
    sshape = tuple(-(-n // size) if i == a else n for i, n in enumerate(shape))
    return np.ravel_multi_index(tuple(idx), sshape).astype(np.int64), sshape


def block_minmax(x: np.ndarray, ids: np.ndarray, n_blocks: int):
    lo = np.full(n_blocks, np.inf)
    hi = np.full(n_blocks, -np.inf)
    np.minimum.at(lo, ids.ravel(), x.ravel().astype(np.float64))
    np.maximum.at(hi, ids.ravel(), x.ravel().astype(np.float64))
    return lo, hi


def block_mean_abs(x: np.ndarray, ids: np.ndarray, n_blocks: int) -> np.ndarray:
    """mean|x| per block over the real elements, the sum exactly rounded (math.fsum)."""
    flat, fid = np.abs(x.ravel().astype(np.float64)), ids.ravel()
    return np.array(
        [math.fsum(flat[fid == b]) / max(int((fid == b).sum()), 1) for b in range(n_blocks)]
    )


def quantize_tensor(
    x, bits: int, symmetric: bool, gran: tuple = ("tensor",), scale_dtype: str = "float32"
):
    """Min/max (binary: mean|x|) qparams per block, then quantize.
    Returns (q int64 in x's shape, scale float32 in the scale shape, zero point int64)."""
    x = np.asarray(x, dtype=np.float32)
    ids, sshape = block_ids(x.shape, gran)
    n_blocks = int(np.prod(sshape, dtype=np.int64))
    if symmetric and bits == 1:
        m = block_mean_abs(x, ids, n_blocks)
        m = np.where(m > 0, m, STORAGE[scale_dtype][0])  # all-zero block: smallest normal
        s, z = qparams_from_range(-m, m, bits, symmetric, scale_dtype)
    else:
        lo, hi = block_minmax(x, ids, n_blocks)
        s, z = qparams_from_range(lo, hi, bits, symmetric, scale_dtype)
    q = quantize(x, s[ids], z[ids], bits, symmetric)
    return q, s.reshape(sshape), z.reshape(sshape)


def dequantize_tensor(q, s, z, gran: tuple) -> np.ndarray:
    ids, _ = block_ids(np.shape(q), gran)
    return dequantize(q, np.ravel(s)[ids], np.ravel(z)[ids])


# ------------------------------------------------------------------------ bit packing
def pack(codes, bits: int) -> bytes:
    """Bit by bit: value i's bit j goes to stream bit i*bits + j; stream bit p is bit p % 8
    (LSB first) of byte p // 8."""
    codes = [int(c) for c in np.ravel(codes)]
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, v in enumerate(codes):
        assert 0 <= v < 1 << bits
        for j in range(bits):
            p = i * bits + j
            out[p // 8] |= ((v >> j) & 1) << (p % 8)
    return bytes(out)


def unpack(data: bytes, bits: int, n: int) -> list[int]:
    data = bytes(data)
    vals = []
    for i in range(n):
        v = 0
        for j in range(bits):
            p = i * bits + j
            v |= ((data[p // 8] >> (p % 8)) & 1) << j
        vals.append(v)
    return vals


# ------------------------------------------------------------------------ histograms
def histogram_radius(x, start: float = 2.0**-100) -> float:
    """The smallest power of two R >= ``start`` strictly above every |x|."""
    amax = float(np.max(np.abs(np.asarray(x, dtype=np.float64)), initial=0.0))
    r = start
    while r <= amax:
        r *= 2
    return r


def histogram(x, bins: int, radius: float) -> np.ndarray:
    """Counts over ``bins`` equal bins on [-R, R): bin(x) = floor(x / w) + bins / 2, w = 2R /
    bins."""
    x = np.asarray(x, dtype=np.float64).ravel()
    w = 2 * radius / bins
    idx = np.floor(x / w).astype(np.int64) + bins // 2
    return np.bincount(idx, minlength=bins)


# ------------------------------------------------------------------------ metrics
def sqnr_db(x, x_hat) -> float:
    """Signal-to-quantization-noise ratio, 20 log10(||x|| / ||x - x_hat||) (torchao's
    ``compute_error``)."""
    x = np.asarray(x, dtype=np.float64)
    d = x - np.asarray(x_hat, dtype=np.float64)
    return 20 * math.log10(np.linalg.norm(x) / np.linalg.norm(d))


def llama_total_error(x, x_hat) -> float:
    """llama.cpp tests/test-quantize-fns.cpp ``array_rmse``: sqrt(sum d^2) / n (not / sqrt(n))."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(x_hat, dtype=np.float64)
    return math.sqrt(float((d * d).sum())) / d.size


def llama_test_data(n: int = 4096, offset: float = 0.0) -> np.ndarray:
    """llama.cpp ``generate_data``: x_i = 0.1 + 2 cos(i + offset), as float32."""
    return (0.1 + 2 * np.cos(np.arange(n, dtype=np.float64) + offset)).astype(np.float32)


def gran_tuple(g) -> tuple:
    """A cuantiza granularity object as the reference's tuple, by duck typing (no import)."""
    name = type(g).__name__
    if name == "PerTensor":
        return ("tensor",)
    if name == "PerChannel":
        return ("channel", g.axis)
    if name == "PerGroup":
        return ("group", g.size, g.axis)
    raise TypeError(f"unknown granularity {g!r}")

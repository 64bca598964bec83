/* Round-to-nearest kernels for cuantiza: the memory-bound passes of quantize_tensor and
 * QTensor.from_float.
 *
 * Plain C (with GCC/Clang vector extensions), no Python or torch headers: loaded with ctypes by
 * cuantiza/_native/__init__.py, which splits the work over threads and keeps every semantic
 * decision (qparams, checks, errors) in Python; tests/unit/test_native.py holds each kernel to
 * its torch path bit for bit.
 *
 *   cz_minmax_rows:   lo[r] = min_j x[r, j], hi[r] = max_j x[r, j]   (a NaN in the row: both NaN)
 *   cz_quantize_rows: q[r, j] = clamp(nearbyint(x[r, j] / s[r]) + z[r], qmin, qmax)
 *   cz_pack_codes:    one-byte codes (q + offset) mod 256 packed at 1, 2, 4 or 8 bits
 *   cz_advise_huge:   a hint that a fresh result buffer be backed by transparent huge pages
 *
 * Exactness: x / s is one IEEE float32 division (never x * (1 / s)), nearbyintf rounds half
 * to even under the default rounding mode, the sum with z (an integer in [0, 255]) and the clamp
 * are exact, so any float32 implementation of the formula gets the same integers. Build flags
 * must not include -ffast-math (it would license x * (1/s) and drop NaN handling); -ffp-contract
 * is irrelevant (no multiply-add) but set to off anyway.
 *
 * Vectorization: min/max use explicit 8-lane vectors; the other loops are written so that GCC
 * vectorizes them without reordering any floating-point operation. With GCC on x86-64 each
 * kernel is cloned for AVX2, SSE4.1 (the first with a rounding instruction) and baseline
 * x86-64, and the loader picks the clone for the CPU it runs on; elsewhere one generic build.
 */
#define _DEFAULT_SOURCE                                          /* MADV_HUGEPAGE in glibc */
#include <math.h>
#include <stdint.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cz_simd.h"

/* Scalar min/max of n values with NaN propagation, as torch.amin/amax: the slow path, taken
 * only for rows whose fast pass saw a NaN. */
static void minmax_exact(const float *x, int64_t n, float *lo, float *hi)
{
    float a = INFINITY, b = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        float v = x[j];
        if (v != v) {
            *lo = *hi = NAN;
            return;
        }
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    *lo = a;
    *hi = b;
}

/* One row (cz_minmax_lanes); a row with a NaN is recomputed by minmax_exact. */
CZ_INLINE void minmax_row(const float *x, int64_t n, float *lo_out, float *hi_out)
{
    if (cz_minmax_lanes(x, n, NULL, lo_out, hi_out))
        minmax_exact(x, n, lo_out, hi_out);
}

/* Rows [0, n_rows) of a C-contiguous (n_rows, row_len) float32 array, row_len >= 1. */
CZ_CLONES
void cz_minmax_rows(const float *x, int64_t n_rows, int64_t row_len, float *lo, float *hi)
{
    for (int64_t r = 0; r < n_rows; r++)
        minmax_row(x + r * row_len, row_len, lo + r, hi + r);
}

/* clamp(nearbyint(x / s) + z, qmin, qmax) as an integer; NaN gives 0 (as torch's float to
 * int8 conversion does), +-Inf the clamp bound. Every step is exact but the division. */
CZ_INLINE int32_t quantize_one(float v, float s, float z, float qmin, float qmax)
{
    float t = nearbyintf(v / s) + z;
    t = t < qmin ? qmin : t;
    t = t > qmax ? qmax : t;
    t = t == t ? t : 0.0f;
    return (int32_t)t;
}

/* Rows of x (n_rows, row_len) with per-row s and z (float32; z holds integers, or is NULL for
 * symmetric schemes: z = 0) into out, one byte per value: the integer's two's complement low
 * byte, which is the int8 value for qmin >= -128 and the uint8 value for 0 <= q <= 255. */
CZ_CLONES
void cz_quantize_rows(const float *x, int64_t n_rows, int64_t row_len, const float *s,
                      const float *z, float qmin, float qmax, uint8_t *out)
{
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * row_len;
        uint8_t *qr = out + r * row_len;
        const float sr = s[r], zr = z ? z[r] : 0.0f;
        for (int64_t j = 0; j < row_len; j++)
            qr[j] = (uint8_t)quantize_one(xr[j], sr, zr, qmin, qmax);
    }
}

/* One output byte from ``count`` <= 8 / bits codes c = v mod 256, v = (q ^ flip) + offset,
 * the first in the low bits; lim[0], lim[1] track the least and greatest v. */
CZ_INLINE uint8_t pack_byte(const uint8_t *q, int count, int bits, uint8_t flip, int16_t offset,
                            int16_t *lim)
{
    uint8_t byte = 0;
    for (int i = 0; i < count; i++) {
        int16_t v = (int16_t)(q[i] ^ flip) + offset;
        lim[0] = v < lim[0] ? v : lim[0];
        lim[1] = v > lim[1] ? v : lim[1];
        byte |= (uint8_t)((uint8_t)v << (i * bits));
    }
    return byte;
}

/* n_bytes whole bytes; inlined once per constant bit width, so the loops unroll and vectorize. */
CZ_INLINE void pack_bytes(const uint8_t *q, int64_t n_bytes, int bits, uint8_t flip, int16_t offset,
                          uint8_t *out, int16_t *lim)
{
    const int per = 8 / bits;
    int16_t acc[2] = {lim[0], lim[1]};
    for (int64_t k = 0; k < n_bytes; k++)
        out[k] = pack_byte(q + k * per, per, bits, flip, offset, acc);
    lim[0] = acc[0];
    lim[1] = acc[1];
}

/* Codes c = (q + offset) mod 256 of n one-byte integers q (int8 when is_signed, else uint8),
 * packed densely at ``bits`` in {1, 2, 4, 8}: value i in bits [i * bits, (i + 1) * bits) of the
 * little-endian bit stream (as cuantiza.packing), ceil(n * bits / 8) bytes, a partial last byte
 * zero above its codes. lim[0], lim[1] receive min and max of q + offset (exact, no modulo):
 * the codes are valid exactly when 0 <= lim[0] and lim[1] < 2^bits. Needs |offset| <= 255.
 * Signed q are read as uint8 q ^ 0x80 = q + 128, with 128 taken off the offset. */
CZ_CLONES
int32_t cz_pack_codes(const uint8_t *q, int64_t n, int32_t bits, int32_t is_signed, int32_t offset,
                      uint8_t *out, int16_t *lim)
{
    const uint8_t flip = is_signed ? 0x80 : 0;
    const int16_t off = (int16_t)(is_signed ? offset - 128 : offset);
    const int per = 8 / bits;
    const int64_t full = n / per;
    lim[0] = INT16_MAX;
    lim[1] = INT16_MIN;
    switch (bits) {
    case 8: pack_bytes(q, full, 8, flip, off, out, lim); break;
    case 4: pack_bytes(q, full, 4, flip, off, out, lim); break;
    case 2: pack_bytes(q, full, 2, flip, off, out, lim); break;
    case 1: pack_bytes(q, full, 1, flip, off, out, lim); break;
    default: return -1;                                          /* not a width this packs */
    }
    if (full * per < n)                                          /* the partial last byte */
        out[full] = pack_byte(q + full * per, (int)(n - full * per), bits, flip, off, lim);
    return 0;
}

/* Ask Linux to back the 2 MiB-aligned interior of a fresh buffer [p, p + nbytes) with
 * transparent huge pages before its first touch (honoured in THP "always" and "madvise" modes):
 * a 45 MB result then faults in ~20 pages of 2 MiB instead of ~11000 of 4 KiB. A hint only;
 * nothing elsewhere. */
void cz_advise_huge(void *p, int64_t nbytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)nbytes) & ~(huge - 1);
    if (b > a)
        (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)nbytes;
#endif
}

/* Dynamic per-token activations of the integer layers (cuantiza.modules.common.quantize_sym_rows),
 * one call per batch: for each row r of x (n_rows, row_len),
 *   a = max_j |x[r, j]|,  s[r] = max(a / qmax, tiny)  (one float32 division),
 *   out[r, j] = nearbyint(x[r, j] / s[r]) + offset    (|nearbyint(x / s)| <= qmax: no clamp).
 * Returns 1, with s and out unspecified, if a row holds a NaN or an infinity (the caller then
 * takes its general path, which raises the typed error); else 0. offset + [-qmax, qmax] must
 * lie in [0, 255]. The row is read twice while it is in cache. */
CZ_CLONES
int32_t cz_quantize_absmax_rows(const float *x, int64_t n_rows, int64_t row_len, float qmax,
                                float tiny, float offset, float *s, uint8_t *out)
{
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * row_len;
        uint8_t *qr = out + r * row_len;
        float lo = 0.0f, hi = 0.0f;
        if (row_len > 0)
            minmax_row(xr, row_len, &lo, &hi);
        const float a = -lo > hi ? -lo : hi;
        if (!(a <= 3.40282347e38f))                              /* NaN (lo, hi NaN) or Inf */
            return 1;
        float sr = a / qmax;
        sr = sr < tiny ? tiny : sr;
        s[r] = sr;
        for (int64_t j = 0; j < row_len; j++)
            qr[j] = (uint8_t)(int32_t)(nearbyintf(xr[j] / sr) + offset);
    }
    return 0;
}

/* The fused round-to-nearest pass for MinMax ranges (cz_quantize_minmax_rows): per block row,
 * min/max, the qparams of qparams.choose_qparams and the values of ops._quantize_rows (or their
 * codes q - qmin, packed as cuantiza.packing) in one pass over the input, the row in cache.
 * The same operations in the same precision as those Python functions, so the same scales,
 * zero points and integers; tests/unit/test_native_fused.py holds them together bit for bit.
 * A row that is not finite, or whose scale overflows the storage dtype, stops the call with a
 * flag: the caller's general path then raises the typed error. Loaded with ctypes with rtn.c
 * (one library, the same flags: never -ffast-math); Python side: _native/fused.py (the call,
 * split over threads by rows) and cuantiza/fused.py (where it applies, the QParams).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "cz_simd.h"

/* A row's min and max for the fused pass (cz_minmax_lanes, prefetching `ahead`: the first half
 * of a row further on, whose second half quantize_row prefetches, see CZ_AHEAD); returns 1 if
 * the row is not finite (a NaN, or +-Inf as its min or max): the caller then gives up. */
CZ_INLINE int32_t finite_minmax_row(const float *x, int64_t n, const float *ahead, float *lo_out,
                                    float *hi_out)
{
    const int32_t nan = cz_minmax_lanes(x, n, ahead, lo_out, hi_out);
    return nan || !(*lo_out >= -3.40282347e38f && *hi_out <= 3.40282347e38f);
}

/* Rows are taken in batches of up to this many values (in L1) and rows: min/max of each, then
 * the qparams of each, then the values; the rows' dependency chains overlap. */
#define CZ_BATCH_VALUES 2048
#define CZ_BATCH_ROWS 64

/* The scheme's constants for one call. */
typedef struct {
    double qmin, qmax, smax, tiny;    /* integer range; storage dtype's max and smallest normal */
    int32_t symmetric, keep;          /* keep: mantissa bits of a 16-bit storage dtype, 0: float32 */
} cz_scheme;

/* choose_qparams for the finite ranges [lo[b], hi[b]] of nb rows, in float64 as qparams.py:
 *   s64 = max(|lo|, |hi|) / qmax (symmetric), (max(hi, 0) - min(lo, 0)) / (qmax - qmin);
 *   above the storage dtype's max: return 2; 0 -> 1 (all-zero row); below tiny -> tiny;
 *   s = s64 rounded once, half to even: _round_once's trick on the int64 bits at `keep`
 *       mantissa bits (float16 10, bfloat16 7; exact in float32 then), or to float32 (keep 0);
 *   z = clamp(nearbyint(qmin - min(lo, 0) / s), qmin, qmax) (asymmetric; else 0).
 * Loops over the rows without branches in them, which the compiler vectorizes (float64 lanes,
 * the same operations row by row). s and z are float32 (z an integer); returns 0. */
CZ_INLINE int32_t batch_qparams(const float *lo, const float *hi, int64_t nb, const cz_scheme *p,
                                float *s, float *z)
{
    double s64[CZ_BATCH_ROWS];
    int64_t over = 0;
    const double levels = p->symmetric ? p->qmax : p->qmax - p->qmin;
    for (int64_t b = 0; b < nb; b++) {
        const double l = lo[b], h = hi[b];
        double v;
        if (p->symmetric)
            v = fabs(l) > fabs(h) ? fabs(l) : fabs(h);
        else
            v = (h > 0.0 ? h : 0.0) - (l < 0.0 ? l : 0.0);
        v = v / levels;
        over |= !(v <= p->smax);
        v = v == 0.0 ? 1.0 : v;
        s64[b] = v < p->tiny ? p->tiny : v;
    }
    if (over)
        return 2;
    if (p->keep) {
        const int drop = 52 - p->keep;
        const int64_t half = ((int64_t)1 << (drop - 1)) - 1;
        for (int64_t b = 0; b < nb; b++) {
            int64_t bits;
            __builtin_memcpy(&bits, s64 + b, sizeof bits);
            bits = ((bits + ((bits >> drop) & 1) + half) >> drop) << drop;   /* ties: to even */
            __builtin_memcpy(s64 + b, &bits, sizeof bits);
        }
    }
    for (int64_t b = 0; b < nb; b++)
        s[b] = (float)s64[b];                                    /* exact when keep != 0 */
    for (int64_t b = 0; b < nb; b++) {
        const double beta = lo[b] < 0.0f ? (double)lo[b] : 0.0;
        double t = nearbyint(p->qmin - beta / (double)s[b]);
        t = t < p->qmin ? p->qmin : t;
        t = t > p->qmax ? p->qmax : t;
        z[b] = p->symmetric ? 0.0f : (float)t;
    }
    return 0;
}

/* Scale s (a value of the storage dtype, positive and normal there) stored as that dtype:
 * float32 (keep 0), float16 (keep 10: 5 exponent bits, bias 15) or bfloat16 (keep 7: the upper
 * half of the float32 bits), at index r of `out`. */
CZ_INLINE void store_scale(void *out, int64_t r, float s, int32_t keep)
{
    uint32_t f;
    __builtin_memcpy(&f, &s, sizeof f);
    if (keep == 10)                                              /* float16: re-biased */
        ((uint16_t *)out)[r] = (uint16_t)(((((f >> 23) & 0xff) - 127 + 15) << 10) | ((f >> 13) & 0x3ff));
    else if (keep)
        ((uint16_t *)out)[r] = (uint16_t)(f >> 16);              /* bfloat16 */
    else
        ((uint32_t *)out)[r] = f;
}

/* The float32 1.5 * 2^23: adding it to a float y with |y| <= 2^22 rounds y to an integer k
 * in the current rounding mode (half to even by default, as nearbyintf) and leaves
 * CZ_MAGIC_BITS + k as the sum's bits. */
#define CZ_MAGIC 12582912.0f
#define CZ_MAGIC_BITS 0x4B400000

/* n values: the low byte of q + off, q = clamp(nearbyintf(x / s) + z, qmin, qmax) (off = -qmin
 * for codes), computed as nearbyint(clamp(x / s, qmin - z, qmax - z)) + z: the same integer (z,
 * qmin, qmax are integers and rounding is monotonic), with the clamped value small enough for
 * CZ_MAGIC's rounding. The division is the only inexact step, as in rtn.c's quantize_one. */
CZ_INLINE void quantize_span(const float *restrict x, int64_t n, float s, float z, float qmin,
                             float qmax, int32_t off, uint8_t *restrict out)
{
    const float lo = qmin - z, hi = qmax - z;
    const int32_t shift = (int32_t)z + off - CZ_MAGIC_BITS;
    for (int64_t j = 0; j < n; j++) {
        float y = x[j] / s;
        y = y < lo ? lo : y;
        y = y > hi ? hi : y;
        y += CZ_MAGIC;
        int32_t k;
        __builtin_memcpy(&k, &y, sizeof k);
        out[j] = (uint8_t)(k + shift);
    }
}

/* n codes (< 2^bits, n a multiple of 8 / bits) packed into n * bits / 8 bytes; inlined per
 * constant width, so the loops unroll and vectorize. */
CZ_INLINE void pack_span(const uint8_t *restrict c, int64_t n, int bits, uint8_t *restrict out)
{
    const int per = 8 / bits;
    for (int64_t k = 0; k < n / per; k++) {
        uint8_t byte = 0;
        for (int i = 0; i < per; i++)
            byte |= (uint8_t)(c[k * per + i] << (i * bits));
        out[k] = byte;
    }
}

#define CZ_STEP 64                                               /* values a step */

/* m <= CZ_STEP values into one byte each (bits 0 or 8) or packed at bits 1, 2 or 4 (through
 * a buffer in L1); inlined once per constant width and, for whole steps, constant length. */
CZ_INLINE void quantize_step(const float *x, int64_t m, float s, float z, float qmin, float qmax,
                             int bits, uint8_t *out)
{
    uint8_t codes[CZ_STEP];
    const int32_t off = bits ? (int32_t)-qmin : 0;
    quantize_span(x, m, s, z, qmin, qmax, off, bits == 0 || bits == 8 ? out : codes);
    if (bits && bits < 8)
        pack_span(codes, m, bits, out);
}

/* One row, CZ_STEP values a step (whole bytes at any width: n * bits is a multiple of 8, the
 * caller checks); each step first prefetches two cache lines of `ahead` (NULL: none), the
 * second half of a row further on. */
CZ_INLINE void quantize_row(const float *x, int64_t n, float s, float z, float qmin, float qmax,
                            int bits, const float *ahead, uint8_t *out)
{
    const int64_t step_bytes = bits == 0 ? CZ_STEP : CZ_STEP * bits / 8;
    int64_t j = 0;
    for (; j + CZ_STEP <= n; j += CZ_STEP, out += step_bytes) {
        if (ahead) {
            __builtin_prefetch(ahead + j / 2);
            __builtin_prefetch(ahead + j / 2 + 16);
        }
        quantize_step(x + j, CZ_STEP, s, z, qmin, qmax, bits, out);
    }
    if (j < n)
        quantize_step(x + j, n - j, s, z, qmin, qmax, bits, out);
}

/* The rows about this many values ahead (at least one row) are prefetched while a row is
 * processed, half of each during its min/max, half during its quantization: the memory reads
 * of the rows to come overlap all of the computing (the hardware prefetcher alone kept the
 * memory idle while a row was quantized from cache). */
#define CZ_AHEAD 2048

/* The pass for one constant `bits` (see cz_quantize_minmax_rows): batches of rows, each read
 * from memory once. */
CZ_INLINE int32_t minmax_rows_pass(const float *x, int64_t n_rows, int64_t row_len,
                                   const cz_scheme *p, const int bits, void *s, int32_t *z,
                                   uint8_t *out)
{
    const int64_t row_bytes = bits == 0 ? row_len : row_len * bits / 8;
    const int64_t ahead = (CZ_AHEAD + row_len - 1) / row_len;    /* rows */
    int64_t batch = CZ_BATCH_VALUES / row_len;
    batch = batch < 1 ? 1 : batch > CZ_BATCH_ROWS ? CZ_BATCH_ROWS : batch;
    for (int64_t r0 = 0; r0 < n_rows; r0 += batch) {
        const int64_t nb = n_rows - r0 < batch ? n_rows - r0 : batch;
        float lo[CZ_BATCH_ROWS], hi[CZ_BATCH_ROWS], sb[CZ_BATCH_ROWS], zb[CZ_BATCH_ROWS];
        int32_t bad = 0;
        for (int64_t b = 0; b < nb; b++) {
            const float *xr = x + (r0 + b) * row_len;
            bad |= finite_minmax_row(xr, row_len, r0 + b + ahead < n_rows ? xr + ahead * row_len : NULL,
                                     lo + b, hi + b);
        }
        if (bad)
            return 1;
        if (batch_qparams(lo, hi, nb, p, sb, zb))
            return 2;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t r = r0 + b;
            const float *xr = x + r * row_len;
            store_scale(s, r, sb[b], p->keep);
            z[r] = (int32_t)zb[b];
            quantize_row(xr, row_len, sb[b], zb[b], (float)p->qmin, (float)p->qmax, bits,
                         r + ahead < n_rows ? xr + ahead * row_len + row_len / 2 : NULL,
                         out + r * row_bytes);
        }
    }
    return 0;
}

/* The fused pass over rows [0, n_rows) of a C-contiguous float32 (n_rows, row_len) array,
 * row_len >= 1, into scales s[n_rows] (the storage dtype: float32, or float16 / bfloat16 for
 * keep 10 / 7, the mantissa bits they keep), zero points z[n_rows] (int32; 0 if symmetric) and
 * out: bits 0 writes q (n_rows * row_len bytes), 8 the codes q - qmin, 1 / 2 / 4 the codes
 * packed (n_rows * row_len * bits / 8 bytes; row_len * bits a multiple of 8). smax, tiny: the
 * storage dtype's max and smallest normal. Returns 0; or 1 (a row is not finite) or 2 (a
 * scale overflows smax), the results then unspecified; -1 for another width. */
CZ_CLONES
int32_t cz_quantize_minmax_rows(const float *x, int64_t n_rows, int64_t row_len, int32_t qmin,
                                int32_t qmax, int32_t symmetric, int32_t keep, double smax,
                                double tiny, int32_t bits, void *s, int32_t *z, uint8_t *out)
{
    const cz_scheme p = {qmin, qmax, smax, tiny, symmetric, keep};
    switch (bits) {                                              /* one copy per width */
    case 0: return minmax_rows_pass(x, n_rows, row_len, &p, 0, s, z, out);
    case 8: return minmax_rows_pass(x, n_rows, row_len, &p, 8, s, z, out);
    case 4: return minmax_rows_pass(x, n_rows, row_len, &p, 4, s, z, out);
    case 2: return minmax_rows_pass(x, n_rows, row_len, &p, 2, s, z, out);
    case 1: return minmax_rows_pass(x, n_rows, row_len, &p, 1, s, z, out);
    default: return -1;
    }
}

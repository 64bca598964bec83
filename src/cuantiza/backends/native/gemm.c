/* The dynamic per-token int8 linear layer in one call: cuantiza's fast path of
 * DynamicQuantLinear for symmetric activations of at most 7 bits and int8 weights.
 *
 *   s[m]    = max(max_k |x[m, k]| / qmax, tiny)                      (cz_quantize_absmax_rows)
 *   u[m, k] = nearbyint(x[m, k] / s[m]) + 64                          (in [1, 127])
 *   acc     = sum_k (u[m, k] - 64) w[n, k] = sum_k u w - 64 colsum[n] (int32, exact)
 *   y[m, n] = ((float32(acc) * s_w[n]) * s[m]) + b[n]                 (three float32 roundings)
 *
 * which is, operation for operation, the general path (quantize_rows, the oneDNN GEMM whose
 * output stage gives float32(acc) * s_w, then y.mul_(s_x).add_(bias)); tests hold the two
 * together bit for bit. u <= 127 keeps AVX2's vpmaddubsw exact: it adds two u8 x s8 products into
 * a saturating int16, and 2 * 127 * 127 < 32767 (an 8-bit u could reach 2 * 255 * 127).
 *
 * Weights are packed once (cz_gemm_pack) in blocks of NR = 16 output columns: for each group of
 * four k, the 16 columns' four int8 weights, 64 bytes, so one 32-byte load holds 8 columns x 4 k
 * and a broadcast of u[m, k..k+3] multiplies it with two instructions (vpmaddubsw, then vpmaddwd
 * with ones to int32). A tile is MR = 4 rows x 16 columns, 8 accumulators.
 *
 * Threads: one OpenMP region on torch's own OpenMP runtime (the symbols resolve to the libgomp
 * torch loaded; see setup.py), so no second thread pool competes for the cores. Rows are
 * quantized in parallel; then each thread takes a range of column blocks for all rows (small
 * batches) or a range of rows for all columns (from MC rows a thread: each writes its own pages
 * of y). Rows go in chunks of MC so their codes stay in L2; with rows split, a row tile runs
 * through a group of weight blocks (GROUP_BYTES) before the next tile, so y is written a few
 * hundred bytes along a row at a time. Outputs of NT_BYTES or more, which the next operation
 * cannot find in cache anyway, are written with streaming stores (no read for ownership).
 * Measured on the 2-core AVX2 VM at 4096 x 384 -> 1536: 33-37 ms with one block at a time
 * and cached stores, 22-30 ms with both (torch.ao's fbgemm layer 25-28 ms in the same runs).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cz_constants.h"
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CZ_X86 1
#endif

#define NR CZ_GEMM_BLOCK_COLS   /* output columns per packed block and per tile */
#define MR 4                     /* rows per tile */
#define MC 128                   /* rows per chunk: 128 x K codes stay in L2 */
#define GROUP_BYTES (128 << 10)  /* weight blocks a row tile runs through: in L2, ~half of it */
#define NT_BYTES (16 << 20)      /* outputs this large (half an L3) bypass the caches */
#define OFFSET CZ_SYM_CODE_OFFSET /* symmetric codes q + 64 in [1, 127] (constants.py) */

int32_t cz_quantize_absmax_rows(const float *x, int64_t n_rows, int64_t row_len, float qmax,
                                float tiny, float offset, float *s, uint8_t *out);

/* w (n, k) int8 row-major, k a multiple of 4 -> bp: ceil(n / 16) blocks of (k / 4) x 64 bytes,
 * columns past n zero; colsum[c] = sum_k w[c, k] for c < ceil(n / 16) * 16 (0 past n). */
void cz_gemm_pack(const int8_t *w, int64_t n, int64_t k, int8_t *bp, int32_t *colsum)
{
    const int64_t blocks = (n + NR - 1) / NR, quads = k / 4;
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t c = 0; c < NR; c++) {
            const int64_t col = b * NR + c;
            int32_t sum = 0;
            for (int64_t q = 0; q < quads; q++)
                for (int i = 0; i < 4; i++) {
                    const int8_t v = col < n ? w[col * k + q * 4 + i] : 0;
                    bp[((b * quads + q) * NR + c) * 4 + i] = v;
                    sum += v;
                }
            colsum[col] = sum;
        }
}

/* What a tile works on: the exit's per-column data (already offset to the tile's first column),
 * the rows' scales, and where the rows of y go. */
typedef struct {
    const int32_t *colsum;
    const float *s_w, *bias;     /* bias NULL: none */
    const float *s_x;            /* the tile's first row */
    int cols;                    /* columns of y in this block: NR, or fewer in the last */
    float *y;                    /* y[0, 0] of the tile */
    int64_t ldy;                 /* row stride of y */
    int nt;                      /* streaming stores (y large, rows 32-byte aligned) */
} tile_out;

/* The exit of one row: acc (NR int32) -> y[0, cols), in the order of the general path. */
static void exit_row(const int32_t *acc, const tile_out *o, int r)
{
    for (int c = 0; c < o->cols; c++) {
        float t = (float)(acc[c] - OFFSET * o->colsum[c]) * o->s_w[c];
        t = t * o->s_x[r];
        o->y[r * o->ldy + c] = o->bias ? t + o->bias[c] : t;
    }
}

/* Portable tile: rows [0, mr) of a (row stride k) against one packed block, and the exit. */
static void tile_ref(const uint8_t *a, int64_t k, int mr, const int8_t *b, const tile_out *o)
{
    for (int r = 0; r < mr; r++) {
        int32_t acc[NR] = {0};
        for (int64_t q = 0; q < k / 4; q++)
            for (int c = 0; c < NR; c++)
                for (int i = 0; i < 4; i++)
                    acc[c] += (int32_t)a[r * k + q * 4 + i] * b[(q * NR + c) * 4 + i];
        exit_row(acc, o, r);
    }
}

#if defined(CZ_X86)
#define AVX2 __attribute__((target("avx2")))

AVX2 static inline __m256i dot4(__m256i acc, __m256i a, __m256i b, __m256i ones)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
}

AVX2 static inline __m256i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* 8 columns of one row: ((float(acc - 64 colsum) * s_w) * s_x) + bias, each step one
 * float32 rounding (no FMA: this target has none, and -ffp-contract=off). */
AVX2 static inline __m256 exit8(__m256i acc, const tile_out *o, int r, int c0)
{
    const __m256i off = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(o->colsum + c0)),
                                           CZ_SYM_CODE_SHIFT);  /* x OFFSET */
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, off)), _mm256_loadu_ps(o->s_w + c0));
    t = _mm256_mul_ps(t, _mm256_set1_ps(o->s_x[r]));
    return o->bias ? _mm256_add_ps(t, _mm256_loadu_ps(o->bias + c0)) : t;
}

AVX2 static inline void store_row(__m256i lo, __m256i hi, const tile_out *o, int r)
{
    float *y = o->y + r * o->ldy;
    const __m256 v0 = exit8(lo, o, r, 0), v1 = exit8(hi, o, r, 8);
    if (o->cols == NR && o->nt) {      /* no read-for-ownership of lines written whole */
        _mm256_stream_ps(y, v0);
        _mm256_stream_ps(y + 8, v1);
        return;
    }
    if (o->cols == NR) {
        _mm256_storeu_ps(y, v0);
        _mm256_storeu_ps(y + 8, v1);
        return;
    }
    float tmp[NR];
    _mm256_storeu_ps(tmp, v0);
    _mm256_storeu_ps(tmp + 8, v1);
    memcpy(y, tmp, sizeof(float) * (size_t)o->cols);
}

/* AVX2 tile: 4 rows x 16 columns in 8 accumulators (fewer rows: the missing ones repeat
 * row 0 and are not stored). */
AVX2 static void tile_avx2(const uint8_t *a, int64_t k, int mr, const int8_t *b, const tile_out *o)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *a0 = a, *a1 = mr > 1 ? a + k : a, *a2 = mr > 2 ? a + 2 * k : a, *a3 = mr > 3 ? a + 3 * k : a;
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
    __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    for (int64_t q = 0; q < k / 4; q++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + q * 64));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + q * 64 + 32));
        __m256i v = bcast4(a0 + 4 * q);
        c00 = dot4(c00, v, b0, ones);
        c01 = dot4(c01, v, b1, ones);
        v = bcast4(a1 + 4 * q);
        c10 = dot4(c10, v, b0, ones);
        c11 = dot4(c11, v, b1, ones);
        v = bcast4(a2 + 4 * q);
        c20 = dot4(c20, v, b0, ones);
        c21 = dot4(c21, v, b1, ones);
        v = bcast4(a3 + 4 * q);
        c30 = dot4(c30, v, b0, ones);
        c31 = dot4(c31, v, b1, ones);
    }
    store_row(c00, c01, o, 0);
    if (mr > 1)
        store_row(c10, c11, o, 1);
    if (mr > 2)
        store_row(c20, c21, o, 2);
    if (mr > 3)
        store_row(c30, c31, o, 3);
}
#endif

typedef void (*tile_fn)(const uint8_t *, int64_t, int, const int8_t *, const tile_out *);

static int portable_only;         /* tests: the portable tile on any CPU (cz_gemm_portable) */

/* Take the portable C tile even where AVX2 exists (on != 0), so tests can hold it to the
 * general path too; returns the previous setting. */
int32_t cz_gemm_portable(int32_t on)
{
    const int32_t was = portable_only;
    portable_only = on != 0;
    return was;
}

static tile_fn pick_tile(void)
{
#if defined(CZ_X86)
    if (!portable_only && __builtin_cpu_supports("avx2"))
        return tile_avx2;
#endif
    return tile_ref;
}

/* Rows [m0, m1) x column blocks [b0, b1) of the GEMM and its exit: MC rows at a time, each
 * row tile through ``group`` blocks (1: a block's weights stay in L1 for all the rows). */
static void gemm_part(const uint8_t *u, int64_t m0, int64_t m1, int64_t k, int64_t n, const int8_t *bp,
                      int64_t b0, int64_t b1, const int32_t *colsum, const float *s_w,
                      const float *bias, const float *s_x, float *y, tile_fn tile, int use_nt,
                      int64_t group)
{
    for (int64_t mc = m0; mc < m1; mc += MC) {
        const int64_t mc_end = mc + MC < m1 ? mc + MC : m1;
        for (int64_t g = b0; g < b1; g += group) {
            const int64_t g_end = g + group < b1 ? g + group : b1;
            for (int64_t r = mc; r < mc_end; r += MR) {
                const int mr = mc_end - r < MR ? (int)(mc_end - r) : MR;
                for (int64_t b = g; b < g_end; b++) {
                    const int64_t col = b * NR;
                    tile_out o = {colsum + col, s_w + col, bias ? bias + col : NULL, s_x + r,
                                  n - col < NR ? (int)(n - col) : NR, y + r * n + col, n, use_nt};
                    tile(u + r * k, k, mr, bp + b * k * NR, &o);
                }
            }
        }
    }
}

/* cz_dyn_linear with the scratch given: u (m, k) for the codes, s_x (m) for the row scales. */
static int32_t dyn_linear(const float *x, int64_t m, int64_t k, int64_t n, const int8_t *bp,
                          const int32_t *colsum, const float *s_w, const float *bias, float qmax,
                          float tiny, int32_t threads, uint8_t *u, float *s_x, float *y)
{
    const tile_fn tile = pick_tile();
    /* a large y goes around the caches (see store_row); streaming stores need 32-byte rows */
    const int use_nt = m * n * 4 >= NT_BYTES && n % 8 == 0 && (uintptr_t)y % 32 == 0;
    const int64_t blocks = (n + NR - 1) / NR;
    int32_t bad = 0;
    if (threads < 1)
        threads = 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = 0, nt = 1;
#if defined(_OPENMP)
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t r0 = m * t / nt, r1 = m * (t + 1) / nt;
        if (r1 > r0 && cz_quantize_absmax_rows(x + r0 * k, r1 - r0, k, qmax, tiny, (float)OFFSET,
                                               s_x + r0, u + r0 * k)) {
#if defined(_OPENMP)
#pragma omp atomic write
#endif
            bad = 1;
        }
#if defined(_OPENMP)
#pragma omp barrier
#endif
        int32_t stop;
#if defined(_OPENMP)
#pragma omp atomic read
#endif
        stop = bad;
        if (!stop && m >= (int64_t)nt * MC) {     /* rows: each thread owns rows (pages) of y */
            const int64_t g0 = (m / MR) * t / nt * MR, g1 = t + 1 == nt ? m : (m / MR) * (t + 1) / nt * MR;
            const int64_t group = GROUP_BYTES / (NR * k) > 1 ? GROUP_BYTES / (NR * k) : 1;
            gemm_part(u, g0, g1, k, n, bp, 0, blocks, colsum, s_w, bias, s_x, y, tile, use_nt, group);
        } else if (!stop) {                       /* columns: each thread a part of the weights */
            gemm_part(u, 0, m, k, n, bp, blocks * t / nt, blocks * (t + 1) / nt, colsum, s_w, bias,
                      s_x, y, tile, use_nt, 1);
        }
#if defined(CZ_X86)
        if (use_nt)
            _mm_sfence();                         /* streaming stores visible before the join */
#endif
    }
    return bad;
}

/* x (m, k) float32 -> y (m, n) float32 through the packed weights (k a multiple of 4), with
 * the codes and row scales in scratch memory of its own. Returns 0; 1, with y unspecified, if a
 * row of x is not finite; -1 if the scratch could not be allocated. */
int32_t cz_dyn_linear(const float *x, int64_t m, int64_t k, int64_t n, const int8_t *bp,
                      const int32_t *colsum, const float *s_w, const float *bias, float qmax,
                      float tiny, int32_t threads, float *y)
{
    uint8_t *u = malloc((size_t)(m * k) + sizeof(float) * (size_t)m + 64);   /* codes, scales */
    if (!u)
        return -1;
    float *s_x = (float *)(u + (m * k + 63) / 64 * 64);
    const int32_t bad = dyn_linear(x, m, k, n, bp, colsum, s_w, bias, qmax, tiny, threads, u, s_x, y);
    free(u);
    return bad;
}

/* Weight-only quantized linear layer: y[m, n] = sum_k x[m, k] w[n, k] (+ bias[n]) with
 *
 *   w[n, k] = s[n, g] * e[n, k],  e = step * c[n, k] + off[n, g],  off = qmin - z,  g = k / group
 *
 * computed from a packed copy of the integer codes c (about bits/8 bytes a weight) without ever
 * materializing the float weight matrix. Exactness: e is a small integer, formed exactly in
 * float32, and w = fl(s * e) is rounded ONCE, so every dequantized weight is bit for bit the
 * reference's float32 (q - z) * s. Only the summation order of the dot products differs from
 * F.linear (the bound is derived in wo.py and NOTES.md).
 *
 * Packed layout: a 64-byte prefix (shape, width, step, mode; see wo_prefix) and then the columns
 * in blocks of NB = 16 (the last block zero-padded: codes 0, scale 0, so padded columns compute
 * 0 and are never stored). A block is its G = K / group groups back to back; a group is a
 * 128-byte header (16 float32 scales, then 16 int32 offsets off = qmin - z) and group / 32
 * chunks. A chunk holds 32 consecutive k of the 16 columns in `bits` 32-bit words per column,
 * word-major: word j of columns 0..15 are 16 consecutive uint32, so one 32-byte load gives word j
 * of 8 columns, one int32 lane per column. Word j holds P = floor(32 / bits) codes, k = j P + i
 * in bits [i bits, (i + 1) bits); for bits 3, 5, 6 (P bits = 30) the two remaining codes
 * (k = 30, 31) form T = c30 | c31 << bits, whose bits [2j, 2j + 2) sit in bits 30..31 of word j.
 * So any code is one shift and one AND of an int32 lane, for every width, and a block is one
 * sequential stream.
 *
 * Exact dequantization, two ways (chosen per layer at repack time, `fx` in the prefix):
 *   plain: E = 2^23 + step c (OR-ing the code into the bits of 2^23), e = E - (2^23 - off)
 *          (integers below 2^24: exact), w = e * s (the one rounding). 6 vector ops a k.
 *   fx:    F = 1.5 2^23 + step c + off (an integer ADD to the bits of 1.5 2^23: the sum stays in
 *          the binade [2^23, 2^24), so F is exact), w = fma(s, F, -1.5 2^23 s): s F - 1.5 2^23 s
 *          = s e exactly, rounded once. Needs -1.5 2^23 s exact (true for every float16- and
 *          bfloat16-grid scale) and s > 0 (so that e = 0 gives +0 as s * 0 does). 5 ops a k.
 *
 * Kernels: decode (small M) dequantizes one k of a block's columns into registers and FMAs it
 * against broadcast activations: one row streams the whole block (16 columns) once; 2..6 rows
 * go over one 8-column half at a time (registers), more rows in passes of 6. Prefill (large M)
 * is a BLIS-style GEMM whose B packing is the dequantization into a float panel (256 k x 1024
 * columns), with an A panel pack and a 6 x 16 AVX2 FMA micro-kernel. A portable C path (scalar,
 * the same layout, the same exact dequantization) runs where AVX2+FMA is missing or when
 * forced (cz_wo_force_portable). No AVX-512 path: it could not be tested on the development
 * machine; the AVX2 path runs on AVX-512 CPUs. cz_wo_linear_q8a is the int8-activation decode
 * (4 and 8 bits), exact against its own specification (see its section).
 *
 * Threads: OpenMP, compiled with -fopenmp but not linked against libgomp: the GOMP_* symbols
 * bind at load time to the libgomp torch already loaded, so the kernels run on torch's pool.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WO_X86 1
#endif

#define NB 16                  /* columns per block: two 8-lane registers */
#define KCH 32                 /* k per chunk: the smallest group, a whole number of words */
#define HDR 128                /* header bytes per block and group: 16 scales, 16 offsets */
#define PREFIX 64              /* bytes before the first block */
#define MAGIC 0x4B000000       /* float32 bits of 2^23: OR-ing an integer u < 2^23 gives 2^23 + u */
#define MAGIC_FX 0x4B400000    /* float32 bits of 1.5 2^23: adding d in [-2^22, 2^22) gives 1.5 2^23 + d */
#define TWO23 8388608.0f
#define ONE5_TWO23 12582912.0f
#define OFF_LIMIT (1 << 21)    /* |off| below this: both tricks stay inside their binade */
#define WO_MAGIC 0x4F575A43u   /* "CZWO" */

#define INL static inline __attribute__((always_inline))

/* prefill GEMM blocking */
#define MR 6                   /* micro-tile rows: 12 accumulators + 2 B registers + 1 broadcast */
#ifndef KC                     /* (-D overrides: the parameter sweep in NOTES.md) */
#define KC 256                 /* k per panel (a multiple of 32): a B micro-panel is 16 KiB, in L1 */
#endif
#ifndef NCB
#define NCB 64                 /* blocks per B panel: 256 x 1024 floats = 1 MiB, in L3; measured
                                  75 GFLOP/s a core against 66 with 16 blocks (in L2) */
#endif
#ifndef MC
#define MC 96                  /* rows per A block: 96 x 256 floats = 96 KiB, in L2 */
#endif


/* ------------------------------------------------------------------------------------------ */
/* The prefix and the geometry derived from it. */

typedef struct {
    uint32_t magic, version;
    int64_t n, k, group;
    int32_t bits, step;
    int32_t fx_ok;             /* every scale qualifies for the fx dequantization */
    int32_t fx;                /* fx in use (tests turn it off to cover both) */
} wo_prefix;

typedef struct {
    int64_t n, k, group;
    int bits, step, fx;
    int64_t groups;            /* G = k / group */
    int64_t chunks;            /* chunks per group */
    int64_t gstride;           /* bytes per group in a block: header + chunks */
    int64_t bstride;           /* bytes per block */
    int64_t blocks;
    const uint8_t *base;       /* the first block */
} geom;

/* 0 when the kernels take this shape, else why not (the Python side refuses first; this guards
 * the C entry points against misuse). */
static int check_shape(int64_t n, int64_t k, int32_t bits, int64_t group, int32_t step)
{
    if (n < 1 || k < KCH || k % KCH)
        return 1;
    if (group < KCH || group % KCH || k % group)
        return 2;
    if (!(bits >= 1 && bits <= 8 && bits != 7))
        return 3;
    if (!(step == 1 || (step == 2 && bits == 1)))
        return 4;
    return 0;
}

static geom shape_geom(int64_t n, int64_t k, int32_t bits, int64_t group, int32_t step)
{
    geom g;
    g.n = n;
    g.k = k;
    g.group = group;
    g.bits = bits;
    g.step = step;
    g.fx = 0;
    g.groups = k / group;
    g.chunks = group / KCH;
    g.gstride = HDR + g.chunks * 64 * bits;
    g.bstride = g.groups * g.gstride;
    g.blocks = (n + NB - 1) / NB;
    g.base = NULL;
    return g;
}

/* The geometry of a packed weight; 0 when its prefix is sound. */
static int read_geom(const uint8_t *packed, geom *g)
{
    const wo_prefix *p = (const wo_prefix *)packed;
    if (p->magic != WO_MAGIC || p->version != 1 || check_shape(p->n, p->k, p->bits, p->group, p->step))
        return -1;
    *g = shape_geom(p->n, p->k, p->bits, p->group, p->step);
    g->fx = p->fx;
    g->base = packed + PREFIX;
    return 0;
}

int64_t cz_wo_packed_bytes(int64_t n, int64_t k, int32_t bits, int64_t group)
{
    if (check_shape(n, k, bits, group, 1))
        return -1;
    const geom g = shape_geom(n, k, bits, group, 1);
    return PREFIX + g.blocks * g.bstride;
}

/* n, k, group, bits, step, fx of a packed weight into out[6]; 0, or -1 if it is not one. */
int32_t cz_wo_info(const uint8_t *packed, int64_t *out)
{
    geom g;
    if (read_geom(packed, &g))
        return -1;
    const int64_t v[6] = {g.n, g.k, g.group, g.bits, g.step, g.fx};
    memcpy(out, v, sizeof v);
    return 0;
}

/* Tests: use the fx dequantization (on != 0, where the scales allow it) or the plain one.
 * Returns the setting now in force. */
int32_t cz_wo_use_fx(uint8_t *packed, int32_t on)
{
    wo_prefix *p = (wo_prefix *)packed;
    p->fx = on && p->fx_ok;
    return p->fx;
}

/* ------------------------------------------------------------------------------------------ */
/* Repacking (once, at load time) and its inverse (tests: the layout must round-trip). */

/* The `bits` words of one column's chunk from its 32 codes. */
static void pack_words(const uint8_t *c32, int bits, uint32_t *words)
{
    const int per = 32 / bits, whole = per * bits;
    uint32_t t = 0;
    for (int j = 0; j < bits; j++)
        words[j] = 0;
    for (int i = 0; i < whole; i++)
        words[i / per] |= (uint32_t)c32[i] << ((i % per) * bits);
    for (int i = whole; i < 32; i++)                 /* bits 3, 5, 6: codes 30 and 31 */
        t |= (uint32_t)c32[i] << ((i - whole) * bits);
    if (whole < 32)
        for (int j = 0; j < bits; j++)
            words[j] |= ((t >> (2 * j)) & 3u) << 30;
}

/* Code t (0..31) of column col (0..15) of a chunk: the portable path's one accessor. */
static inline uint32_t chunk_code(const uint8_t *chunk, int bits, int col, int t)
{
    const uint32_t *w = (const uint32_t *)chunk;
    const int per = 32 / bits, whole = per * bits;
    const uint32_t mask = (1u << bits) - 1;
    if (t < whole)
        return (w[(t / per) * NB + col] >> ((t % per) * bits)) & mask;
    uint32_t tt = 0;
    for (int j = 0; j < bits; j++)
        tt |= (w[j * NB + col] >> 30) << (2 * j);
    return (tt >> ((t - whole) * bits)) & mask;
}

/* Whether s can take the fx dequantization: positive, and -1.5 2^23 s exact and finite (the
 * product of a 24-bit significand and 3 fits a double exactly, so comparing is a proof). */
static int fx_scale(float s)
{
    const float t = s * ONE5_TWO23;
    return s > 0.0f && t <= 3.4028235e38f && (double)t == (double)s * 12582912.0;
}

/* The 32 codes of `bits` bits each that start at src: a little-endian bit stream (code i in
 * bits [i bits, (i + 1) bits)), the layout of cuantiza's packed QTensor data. */
static void unpack32(const uint8_t *src, int bits, uint8_t *c32)
{
    uint64_t acc = 0;
    int have = 0, byte = 0;
    const uint64_t mask = (1u << bits) - 1;
    for (int i = 0; i < 32; i++) {
        while (have < bits) {
            acc |= (uint64_t)src[byte++] << have;
            have += 8;
        }
        c32[i] = (uint8_t)(acc & mask);
        acc >>= bits;
        have -= bits;
    }
}

/* The 32 codes of column col from k0: from one byte each (packed_in 0), or from the bit stream
 * of all n * k codes at `bits` each (packed_in 1; a run of 32 starts on a byte: k0 and k are
 * multiples of 32). */
static void codes32(const uint8_t *codes, int packed_in, int64_t k, int bits, int64_t col,
                    int64_t k0, uint8_t *c32)
{
    if (packed_in)
        unpack32(codes + (col * k + k0) * bits / 8, bits, c32);
    else
        memcpy(c32, codes + col * k + k0, 32);
}

/* One block (16 columns) of the packed layout: group headers and code words. */
static void repack_block(const uint8_t *codes, int packed_in, const geom *g, const float *scale,
                         const int32_t *off, int64_t b, uint8_t *out)
{
    for (int64_t gi = 0; gi < g->groups; gi++) {
        uint8_t *grp = out + PREFIX + b * g->bstride + gi * g->gstride;
        float *hs = (float *)grp;
        int32_t *ho = (int32_t *)(grp + 4 * NB);
        for (int c = 0; c < NB; c++) {
            const int64_t col = b * NB + c;
            hs[c] = col < g->n ? scale[col * g->groups + gi] : 0.0f;
            ho[c] = col < g->n ? off[col * g->groups + gi] : 0;
        }
        for (int64_t ch = 0; ch < g->chunks; ch++) {
            uint32_t *chunk = (uint32_t *)(grp + HDR + ch * 64 * g->bits);
            for (int c = 0; c < NB; c++) {
                const int64_t col = b * NB + c;
                uint8_t c32[32] = {0};
                uint32_t words[8];
                if (col < g->n)
                    codes32(codes, packed_in, g->k, g->bits, col, gi * g->group + ch * KCH, c32);
                pack_words(c32, g->bits, words);
                for (int j = 0; j < g->bits; j++)
                    chunk[j * NB + c] = words[j];
            }
        }
    }
}

/* codes (n, k): one uint8 each (packed_in 0) or cuantiza's bit stream at `bits` per code
 * (packed_in 1, as a QTensor stores them: no unpacked copy is ever made); scale (n, G) float32,
 * off (n, G) int32 = qmin - z; into out (cz_wo_packed_bytes), the blocks split over `threads`.
 * Returns 1 when the fx dequantization is in use, 0 when not, <0 for a shape it does not take
 * (-1), a code out of range (-2), |off| >= 2^21 (-3). */
int32_t cz_wo_repack(const uint8_t *codes, int32_t packed_in, int64_t n, int64_t k, int32_t bits,
                     int64_t group, int32_t step, const float *scale, const int32_t *off,
                     uint8_t *out, int32_t threads)
{
    if (check_shape(n, k, bits, group, step))
        return -1;
    const geom g = shape_geom(n, k, bits, group, step);
    int fx = 1;
    for (int64_t i = 0; !packed_in && i < n * k; i++)   /* a b-bit stream holds only b-bit codes */
        if (codes[i] >> bits)
            return -2;
    for (int64_t i = 0; i < n * g.groups; i++) {
        if (off[i] <= -OFF_LIMIT || off[i] >= OFF_LIMIT)
            return -3;
        fx &= fx_scale(scale[i]);
    }
    const wo_prefix p = {WO_MAGIC, 1, n, k, group, bits, step, fx, fx};
    memset(out, 0, PREFIX);
    memcpy(out, &p, sizeof p);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads > 0 ? threads : 1)
#endif
    for (int64_t b = 0; b < g.blocks; b++)
        repack_block(codes, packed_in, &g, scale, off, b, out);
    return fx;
}

/* The inverse: codes (n, k), scale (n, G) and off (n, G) back out of a packed weight. */
int32_t cz_wo_unpack(const uint8_t *packed, uint8_t *codes, float *scale, int32_t *off)
{
    geom g;
    if (read_geom(packed, &g))
        return -1;
    for (int64_t col = 0; col < g.n; col++) {
        const uint8_t *blk = g.base + (col / NB) * g.bstride;
        const int c = (int)(col % NB);
        for (int64_t gi = 0; gi < g.groups; gi++) {
            const uint8_t *grp = blk + gi * g.gstride;
            scale[col * g.groups + gi] = ((const float *)grp)[c];
            off[col * g.groups + gi] = ((const int32_t *)(grp + 4 * NB))[c];
            for (int64_t ch = 0; ch < g.chunks; ch++)
                for (int t = 0; t < KCH; t++)
                    codes[col * g.k + gi * g.group + ch * KCH + t] =
                        (uint8_t)chunk_code(grp + HDR + ch * 64 * g.bits, g.bits, c, t);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Portable C path: scalar, same layout, same exact dequantization, sequential sums. */

/* One chunk of one block dequantized: out[t * NB + c] = s_c * (float)(step code + off_c), the
 * product rounded once (-ffp-contract=off keeps it a plain multiplication). */
static void dq_chunk_ref(const uint8_t *grp, const uint8_t *chunk, int bits, int step, float *out)
{
    const float *hs = (const float *)grp;
    const int32_t *ho = (const int32_t *)(grp + 4 * NB);
    for (int c = 0; c < NB; c++)
        for (int t = 0; t < KCH; t++)
            out[t * NB + c] = hs[c] * (float)(step * (int32_t)chunk_code(chunk, bits, c, t) + ho[c]);
}

/* Dequantize rows [k0, k0 + kc) of one block (kc, k0 multiples of 32) into panel[kc][NB]. */
static void pack_b_ref(const uint8_t *blk, const geom *g, int64_t k0, int64_t kc, float *panel)
{
    for (int64_t kk = k0; kk < k0 + kc; kk += KCH) {
        const uint8_t *grp = blk + (kk / g->group) * g->gstride;
        const uint8_t *chunk = grp + HDR + ((kk % g->group) / KCH) * 64 * g->bits;
        dq_chunk_ref(grp, chunk, g->bits, g->step, panel + (kk - k0) * NB);
    }
}

#define RROWS 64               /* portable path: rows a pass */

/* Column blocks [b0, b1), all rows: each (m, n) is a sequential sum acc + x w over k. */
static void linear_ref(const geom *g, const float *x, int64_t m, int64_t ldx, const float *bias,
                       float *y, int64_t b0, int64_t b1)
{
    float w[KCH * NB], acc[RROWS][NB];
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *blk = g->base + b * g->bstride;
        const int cols = g->n - b * NB < NB ? (int)(g->n - b * NB) : NB;
        for (int64_t r0 = 0; r0 < m; r0 += RROWS) {
            const int rows = m - r0 < RROWS ? (int)(m - r0) : RROWS;
            memset(acc, 0, sizeof acc);
            for (int64_t kk = 0; kk < g->k; kk += KCH) {
                pack_b_ref(blk, g, kk, KCH, w);
                for (int r = 0; r < rows; r++) {
                    const float *xr = x + (r0 + r) * ldx + kk;
                    for (int t = 0; t < KCH; t++)
                        for (int c = 0; c < NB; c++)
                            acc[r][c] = acc[r][c] + xr[t] * w[t * NB + c];
                }
            }
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                    y[(r0 + r) * g->n + b * NB + c] = bias ? acc[r][c] + bias[b * NB + c] : acc[r][c];
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AVX2 + FMA path. */

#if defined(WO_X86)
#define AVX2 __attribute__((target("avx2,fma")))

/* A group's constants for one 8-column half: the scale, and for the plain dequantization
 * k1 = 2^23 - off (float), for fx k1 = the bits of 1.5 2^23 + off and k2 = -1.5 2^23 s. */
typedef struct {
    __m256 s, k1, k2;
} gconst;

AVX2 INL gconst group_consts(const uint8_t *grp, int half, const int FX)
{
    gconst c;
    const __m256i off = _mm256_loadu_si256((const __m256i *)(grp + 4 * NB + 32 * half));
    c.s = _mm256_loadu_ps((const float *)grp + 8 * half);
    if (FX) {
        c.k1 = _mm256_castsi256_ps(_mm256_add_epi32(off, _mm256_set1_epi32(MAGIC_FX)));
        c.k2 = _mm256_mul_ps(c.s, _mm256_set1_ps(-ONE5_TWO23));
    } else {
        c.k1 = _mm256_sub_ps(_mm256_set1_ps(TWO23), _mm256_cvtepi32_ps(off));
        c.k2 = c.k1;
    }
    return c;
}

/* step * code of field i of every lane of w, as an int32 (< 2^9). bits, step, i are constants
 * once inlined and unrolled, so the shift is an immediate and the AND is skipped where the
 * field already ends at bit 31. */
AVX2 INL __m256i field(__m256i w, const int bits, const int step, const int i)
{
    const int sl = step == 2;                         /* step 2 (binary): the code lands on bit 1 */
    const int sh = i * bits - sl;
    __m256i v = sh > 0 ? _mm256_srli_epi32(w, sh) : sh < 0 ? _mm256_slli_epi32(w, -sh) : w;
    if (sl || sh <= 0 || i * bits + bits != 32)
        v = _mm256_and_si256(v, _mm256_set1_epi32(((1 << bits) - 1) << sl));
    return v;
}

/* The exact dequantization of 8 lanes from step * code (see the file comment for both ways). */
AVX2 INL __m256 deq(__m256i stepc, const gconst *c, const int FX)
{
    if (FX) {
        const __m256 f = _mm256_castsi256_ps(_mm256_add_epi32(stepc, _mm256_castps_si256(c->k1)));
        return _mm256_fmadd_ps(c->s, f, c->k2);
    }
    const __m256 big = _mm256_castsi256_ps(_mm256_or_si256(stepc, _mm256_set1_epi32(MAGIC)));
    return _mm256_mul_ps(_mm256_sub_ps(big, c->k1), c->s);
}

/* What to do with the dequantized weights of one k (d[h]: 8 columns of half h): store them into
 * a B panel row (R = 0), or FMA them into R rows' accumulators acc[(r * P + parity) * H + h]
 * against broadcast x. P = 2 sends even and odd k to separate accumulators: with few rows there
 * are otherwise too few independent FMA chains to hide the 4-cycle latency. */
AVX2 INL void consume(const int t, const __m256 *d, const int H, float *panel, const int R,
                      const int P, const float *x, int64_t ldx, __m256 *acc)
{
    if (R == 0) {
        for (int h = 0; h < H; h++)
            _mm256_storeu_ps(panel + t * NB + 8 * h, d[h]);
        return;
    }
    const int par = P == 2 ? (t & 1) : 0;
    for (int r = 0; r < R; r++) {
        const __m256 a = _mm256_broadcast_ss(x + r * ldx + t);
        for (int h = 0; h < H; h++)
            acc[(r * P + par) * H + h] = _mm256_fmadd_ps(a, d[h], acc[(r * P + par) * H + h]);
    }
}

/* One chunk (32 k) of H halves (H = 2: all 16 columns; H = 1: the 8 columns at ch, words 64
 * bytes apart): every field dequantized and consumed as it is made. */
AVX2 INL void chunk_avx2(const uint8_t *ch, const int bits, const int step, const int FX,
                         const int H, const gconst *gc, float *panel, const int R, const int P,
                         const float *x, int64_t ldx, __m256 *acc)
{
    const int per = 32 / bits, whole = per * bits;
    __m256i t[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    __m256 d[2];
#pragma GCC unroll 8
    for (int j = 0; j < bits; j++) {
        __m256i w[2];
        for (int h = 0; h < H; h++)
            w[h] = _mm256_loadu_si256((const __m256i *)(ch + j * 64 + h * 32));
#pragma GCC unroll 32
        for (int i = 0; i < per; i++) {
            for (int h = 0; h < H; h++)
                d[h] = deq(field(w[h], bits, step, i), &gc[h], FX);
            consume(j * per + i, d, H, panel, R, P, x, ldx, acc);
        }
        if (whole < 32) {      /* gather the 2-bit pieces of codes 30, 31 (step is 1 here) */
            const __m256i m = _mm256_set1_epi32(3 << (2 * j));
            for (int h = 0; h < H; h++)
                t[h] = _mm256_or_si256(t[h], j ? _mm256_and_si256(_mm256_srli_epi32(w[h], 30 - 2 * j), m)
                                               : _mm256_srli_epi32(w[h], 30));
        }
    }
    if (whole < 32) {
        const __m256i m = _mm256_set1_epi32((1 << bits) - 1);
        for (int h = 0; h < H; h++)
            d[h] = deq(_mm256_and_si256(t[h], m), &gc[h], FX);
        consume(whole, d, H, panel, R, P, x, ldx, acc);
        for (int h = 0; h < H; h++)
            d[h] = deq(_mm256_srli_epi32(t[h], bits), &gc[h], FX);
        consume(whole + 1, d, H, panel, R, P, x, ldx, acc);
    }
}

/* Dequantize rows [k0, k0 + kc) of one block into panel[kc][NB] (the prefill's B packing). */
AVX2 INL void pack_b_avx2(const uint8_t *blk, const geom *g, int64_t k0, int64_t kc, float *panel,
                          const int bits, const int step, const int FX)
{
    for (int64_t kk = k0; kk < k0 + kc; kk += KCH) {
        const uint8_t *grp = blk + (kk / g->group) * g->gstride;
        const gconst gc[2] = {group_consts(grp, 0, FX), group_consts(grp, 1, FX)};
        chunk_avx2(grp + HDR + ((kk % g->group) / KCH) * 64 * bits, bits, step, FX, 2, gc,
                   panel + (kk - k0) * NB, 0, 1, NULL, 0, NULL);
    }
}

/* Store 8 * H columns of a row (+ bias, one rounding) into y; a partial last block goes through
 * a small buffer so that nothing past column n is written. cols: valid columns from y on. */
AVX2 INL void store_row(float *y, const __m256 *v, const int H, const float *bias, int cols)
{
    float tmp[NB] = {0}, b[NB] = {0};
    if (cols > 8 * H)
        cols = 8 * H;
    if (bias)
        memcpy(b, bias, sizeof(float) * (size_t)cols);
    for (int h = 0; h < H; h++)
        _mm256_storeu_ps(tmp + 8 * h, bias ? _mm256_add_ps(v[h], _mm256_loadu_ps(b + 8 * h)) : v[h]);
    if (cols == 8 * H) {
        memcpy(y, tmp, sizeof(float) * 8 * H);   /* a constant size: two vector moves */
        return;
    }
    memcpy(y, tmp, sizeof(float) * (size_t)cols);
}

/* Decode: R rows of x against H halves of one block starting at half h0 (H = 2, h0 = 0: the whole
 * block, one row, P = 2; H = 1: one half, up to 6 rows, so that the accumulators, the half's
 * constants, its words and the masks fit the 16 registers without spilling). */
AVX2 INL void dec_block(const uint8_t *blk, const geom *g, int h0, const float *x, int64_t ldx,
                        const float *bias, float *y, int64_t ldy, int cols, const int bits,
                        const int step, const int FX, const int H, const int R, const int P)
{
    __m256 acc[12];
    for (int i = 0; i < R * P * H; i++)
        acc[i] = _mm256_setzero_ps();
    const uint8_t *p = blk;
    const float *xk = x;
    for (int64_t gi = 0; gi < g->groups; gi++) {
        gconst gc[2];
        for (int h = 0; h < H; h++)
            gc[h] = group_consts(p, h0 + h, FX);
        p += HDR;
        for (int64_t ch = 0; ch < g->chunks; ch++) {
            /* an opaque stride: otherwise GCC hoists each of the R x 32 addresses x + r ldx + t
             * into its own pointer, spilled to the stack (measured: 2x slower at 4 rows) */
            int64_t ld = ldx;
            __asm__("" : "+r"(ld));
            chunk_avx2(p + 32 * h0, bits, step, FX, H, gc, NULL, R, P, xk, ld, acc);
            p += 64 * bits;
            xk += KCH;
        }
    }
    for (int r = 0; r < R; r++) {
        __m256 v[2];
        for (int h = 0; h < H; h++) {
            v[h] = acc[(r * P) * H + h];
            if (P == 2)        /* the odd-k chain: one more addition, within the bound */
                v[h] = _mm256_add_ps(v[h], acc[(r * P + 1) * H + h]);
        }
        store_row(y + r * ldy + 8 * h0, v, H, bias ? bias + 8 * h0 : NULL, cols - 8 * h0);
    }
}

typedef void (*dec_fn)(const uint8_t *, const geom *, int, const float *, int64_t, const float *,
                       float *, int64_t, int);
typedef void (*packb_fn)(const uint8_t *, const geom *, int64_t, int64_t, float *);

/* One specialised function per (width, step, fx, rows): constant shifts, unrolled chunks.
 * Rows 1: the whole block; rows 2..6: one half. */
#define DEC(B, S, F, R, H, P)                                                                      \
    AVX2 static void dec_##B##_##S##_##F##_##R(const uint8_t *blk, const geom *g, int h0,           \
                                               const float *x, int64_t ldx, const float *bias,     \
                                               float *y, int64_t ldy, int cols)                    \
    {                                                                                              \
        dec_block(blk, g, h0, x, ldx, bias, y, ldy, cols, B, S, F, H, R, P);                       \
    }
#define PACKB(B, S, F)                                                                             \
    AVX2 static void packb_##B##_##S##_##F(const uint8_t *blk, const geom *g, int64_t k0,          \
                                           int64_t kc, float *panel)                               \
    {                                                                                              \
        pack_b_avx2(blk, g, k0, kc, panel, B, S, F);                                               \
    }
#define WIDTH1(B, S, F)                                                                            \
    DEC(B, S, F, 1, 2, 2) DEC(B, S, F, 2, 1, 2) DEC(B, S, F, 3, 1, 2) DEC(B, S, F, 4, 1, 1)       \
    DEC(B, S, F, 5, 1, 1) DEC(B, S, F, 6, 1, 1) PACKB(B, S, F)
#define WIDTH(B, S) WIDTH1(B, S, 0) WIDTH1(B, S, 1)
WIDTH(1, 1) WIDTH(1, 2) WIDTH(2, 1) WIDTH(3, 1) WIDTH(4, 1) WIDTH(5, 1) WIDTH(6, 1) WIDTH(8, 1)

#define DR 6                   /* decode: rows a pass */
#define ROW(B, S, F)                                                                               \
    {dec_##B##_##S##_##F##_1, dec_##B##_##S##_##F##_2, dec_##B##_##S##_##F##_3,                    \
     dec_##B##_##S##_##F##_4, dec_##B##_##S##_##F##_5, dec_##B##_##S##_##F##_6}
#define ROWS(F)                                                                                    \
    {ROW(1, 1, F), ROW(1, 2, F), ROW(2, 1, F), ROW(3, 1, F),                                       \
     ROW(4, 1, F), ROW(5, 1, F), ROW(6, 1, F), ROW(8, 1, F)}
static const dec_fn DEC_TABLE[2][8][DR] = {ROWS(0), ROWS(1)};
#define PACKS(F)                                                                                   \
    {packb_1_1_##F, packb_1_2_##F, packb_2_1_##F, packb_3_1_##F,                                   \
     packb_4_1_##F, packb_5_1_##F, packb_6_1_##F, packb_8_1_##F}
static const packb_fn PACKB_TABLE[2][8] = {PACKS(0), PACKS(1)};

static int variant(const geom *g)
{
    static const int of_bits[9] = {-1, 0, 2, 3, 4, 5, 6, -1, 7};
    return g->bits == 1 && g->step == 2 ? 1 : of_bits[g->bits];
}

/* Decode over column blocks [b0, b1): one row streams each block once (both halves); more rows
 * go in passes of up to 6 rows over one half at a time (the second half's pass finds the block
 * in cache). */
static void linear_dec_avx2(const geom *g, const float *x, int64_t m, int64_t ldx, const float *bias,
                            float *y, int64_t b0, int64_t b1)
{
    const dec_fn *fns = DEC_TABLE[g->fx != 0][variant(g)];
    for (int64_t b = b0; b < b1; b++) {
        const int cols = g->n - b * NB < NB ? (int)(g->n - b * NB) : NB;
        const uint8_t *blk = g->base + b * g->bstride;
        const float *bb = bias ? bias + b * NB : NULL;
        if (m == 1) {
            fns[0](blk, g, 0, x, ldx, bb, y + b * NB, g->n, cols);
            continue;
        }
        for (int h = 0; h < 2 && 8 * h < cols; h++)
            for (int64_t r = 0; r < m; r += DR) {
                const int rows = m - r < DR ? (int)(m - r) : DR;
                fns[rows - 1](blk, g, h, x + r * ldx, ldx, bb, y + r * g->n + b * NB, g->n, cols);
            }
    }
}

/* --- prefill: BLIS-style GEMM ------------------------------------------------------------- */

/* C[0..6)[0..16) (+)= A-panel x B-micro-panel. Each accumulator lane is ONE sequential FMA
 * chain over k; with acc set, it starts from C (the earlier k panels), so a lane of y is a
 * single chain over all of K. bias (last panel): added once at the end. */
AVX2 static void micro_6x16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                            int acc, const float *bias)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (acc) {
        c00 = _mm256_loadu_ps(c), c01 = _mm256_loadu_ps(c + 8);
        c10 = _mm256_loadu_ps(c + ldc), c11 = _mm256_loadu_ps(c + ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 av = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);
        a += MR;
        b += NB;
    }
    if (bias) {
        const __m256 bb0 = _mm256_loadu_ps(bias), bb1 = _mm256_loadu_ps(bias + 8);
        c00 = _mm256_add_ps(c00, bb0), c01 = _mm256_add_ps(c01, bb1);
        c10 = _mm256_add_ps(c10, bb0), c11 = _mm256_add_ps(c11, bb1);
        c20 = _mm256_add_ps(c20, bb0), c21 = _mm256_add_ps(c21, bb1);
        c30 = _mm256_add_ps(c30, bb0), c31 = _mm256_add_ps(c31, bb1);
        c40 = _mm256_add_ps(c40, bb0), c41 = _mm256_add_ps(c41, bb1);
        c50 = _mm256_add_ps(c50, bb0), c51 = _mm256_add_ps(c51, bb1);
    }
    _mm256_storeu_ps(c, c00), _mm256_storeu_ps(c + 8, c01);
    _mm256_storeu_ps(c + ldc, c10), _mm256_storeu_ps(c + ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* A tile at an edge (fewer than 6 rows or 16 columns): through a full-size buffer. */
AVX2 static void micro_edge(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                            int acc, const float *bias, int rows, int cols)
{
    float t[MR * NB] = {0}, bb[NB] = {0};
    if (acc)
        for (int r = 0; r < rows; r++)
            memcpy(t + r * NB, c + r * ldc, sizeof(float) * (size_t)cols);
    if (bias)
        memcpy(bb, bias, sizeof(float) * (size_t)cols);
    micro_6x16(kc, a, b, t, NB, acc, bias ? bb : NULL);
    for (int r = 0; r < rows; r++)
        memcpy(c + r * ldc, t + r * NB, sizeof(float) * (size_t)cols);
}

/* A block: rows [0, mc) x k [0, kc) of x into ceil(mc / 6) panels [kc][6], rows past mc zero. */
static void pack_a(const float *x, int64_t ldx, int64_t mc, int64_t kc, float *ap)
{
    for (int64_t r0 = 0; r0 < mc; r0 += MR) {
        float *p = ap + (r0 / MR) * kc * MR;
        const int rows = mc - r0 < MR ? (int)(mc - r0) : MR;
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (r0 + r) * ldx;
            for (int64_t k = 0; k < kc; k++)
                p[k * MR + r] = xr[k];
        }
        for (int r = rows; r < MR; r++)
            for (int64_t k = 0; k < kc; k++)
                p[k * MR + r] = 0.0f;
    }
}

/* Prefill over column blocks [b0, b1) with this thread's buffers ap (MC x KC) and bp (KC x
 * NCB x 16). Loop order jc -> pc -> (dequantize B panel) -> ic -> (pack A) -> jr -> ir. */
static void linear_gemm_avx2(const geom *g, const float *x, int64_t m, int64_t ldx, const float *bias,
                             float *y, int64_t b0, int64_t b1, float *ap, float *bp)
{
    const packb_fn packb = PACKB_TABLE[g->fx != 0][variant(g)];
    const int64_t ldy = g->n;
    for (int64_t jc = b0; jc < b1; jc += NCB) {
        const int64_t nb = b1 - jc < NCB ? b1 - jc : NCB;
        for (int64_t pc = 0; pc < g->k; pc += KC) {
            const int64_t kc = g->k - pc < KC ? g->k - pc : KC;
            const int last = pc + kc == g->k;
            for (int64_t j = 0; j < nb; j++)
                packb(g->base + (jc + j) * g->bstride, g, pc, kc, bp + j * KC * NB);
            for (int64_t ic = 0; ic < m; ic += MC) {
                const int64_t mc = m - ic < MC ? m - ic : MC;
                pack_a(x + ic * ldx + pc, ldx, mc, kc, ap);
                for (int64_t j = 0; j < nb; j++) {
                    const int64_t col = (jc + j) * NB;
                    const int cols = g->n - col < NB ? (int)(g->n - col) : NB;
                    const float *bj = bp + j * KC * NB;
                    const float *bias_j = last && bias ? bias + col : NULL;
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int rows = mc - ir < MR ? (int)(mc - ir) : MR;
                        float *c = y + (ic + ir) * ldy + col;
                        if (rows == MR && cols == NB)
                            micro_6x16(kc, ap + ir * kc, bj, c, ldy, pc > 0, bias_j);
                        else
                            micro_edge(kc, ap + ir * kc, bj, c, ldy, pc > 0, bias_j, rows, cols);
                    }
                }
            }
        }
    }
}

/* --- int8 activations (4- and 8-bit, decode; chosen by layers built with int8_decode) -------
 * What llama.cpp does: x is quantized per 32-block, q = nearbyint(x fl(1 / d)), d = max|x| / 127,
 * and each block's dot product is exact in integers: sum_t (c_t + off) q_t = sum c q + off sum q.
 * y = sum over blocks of fma(fl(s d), that, acc), in block order, so the result carries x's
 * quantization error (about 1/254 of each block's largest |x|) and is otherwise fixed operation
 * by operation: backends/weight_only_reference.py is its specification, equal bit for bit.
 * A block of x is stored as 4 x 8 bytes, each 8 k as [q0 q2 q4 q6 | q1 q3 q5 q7]:
 * a word's low nibbles are its even k, so (w & 0x0F0F0F0F) lines up with the first 4 bytes. */

/* x rows -> q (m, k) int8 in that order, d and sum q per block (float32; d NaN for a block
 * with a NaN or Inf, so the row's outputs become NaN). */
AVX2 static void quantize_q8(const float *x, int64_t m, int64_t k, int64_t ldx, int8_t *q, float *d,
                             float *qs, const int nibbles)
{
    for (int64_t r = 0; r < m; r++)
        for (int64_t b = 0; b < k / KCH; b++) {
            const float *xb = x + r * ldx + b * KCH;
            float amax = 0.0f;
            int finite = 1;
            for (int t = 0; t < KCH; t++) {
                const float v = xb[t] < 0 ? -xb[t] : xb[t];
                finite &= v <= 3.4028235e38f;                      /* false for NaN and Inf */
                amax = v > amax ? v : amax;
            }
            const float db = amax / 127.0f, inv = db > 0 ? 1.0f / db : 0.0f;
            int32_t sum = 0;
            int8_t *qb = q + r * k + b * KCH;
            for (int t = 0; t < KCH; t++) {
                const int32_t v = finite ? (int32_t)__builtin_nearbyintf(xb[t] * inv) : 0;
                const int slot = nibbles ? (t / 8) * 8 + (t % 2) * 4 + (t % 8) / 2 : t;
                qb[slot] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
                sum += qb[slot];
            }
            d[r * (k / KCH) + b] = finite ? db : __builtin_nanf("");
            qs[r * (k / KCH) + b] = (float)sum;
        }
}

/* A group's header for the int8-activation kernels: the 16 scales and the offsets + shift (as
 * float: small integers, exact), one 8-column half each. */
AVX2 INL void q8_header(const uint8_t *p, int32_t shift, __m256 sc[2], __m256 off[2])
{
    for (int h = 0; h < 2; h++) {
        sc[h] = _mm256_loadu_ps((const float *)p + 8 * h);
        off[h] = _mm256_cvtepi32_ps(_mm256_add_epi32(
            _mm256_loadu_si256((const __m256i *)(p + 4 * NB + 32 * h)), _mm256_set1_epi32(shift)));
    }
}

/* One block of 32 k into the accumulators: dot = sum c q + off sum q (integers below 2^24, so
 * exact in float32), acc = fma(fl(s d), dot, acc), the specification's one rounding a block. */
AVX2 INL void q8_accumulate(const __m256i s32[2], const __m256 sc[2], const __m256 off[2],
                            float d, float qs, __m256 acc[2])
{
    const __m256 db = _mm256_set1_ps(d), sq = _mm256_set1_ps(qs);
    for (int h = 0; h < 2; h++) {
        const __m256 dot = _mm256_fmadd_ps(off[h], sq, _mm256_cvtepi32_ps(s32[h]));
        acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(sc[h], db), dot, acc[h]);
    }
}

/* One row against one 4-bit block: per chunk, two 16-bit partial sums per column half (at most
 * 4 words x 2 x 2 x 15 x 127 = 30480: no overflow), one vpmaddwd to int32, then float. */
AVX2 static void dec_q8_block(const uint8_t *blk, const geom *g, const int8_t *q, const float *d,
                              const float *qs, const float *bias, float *y, int cols)
{
    const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const uint8_t *p = blk;
    int64_t b = 0;
    for (int64_t gi = 0; gi < g->groups; gi++) {
        __m256 sc[2], off[2];
        q8_header(p, 0, sc, off);
        p += HDR;
        for (int64_t ch = 0; ch < g->chunks; ch++, b++, p += 64 * 4) {
            __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
            for (int j = 0; j < 4; j++) {
                int32_t e4, o4;
                memcpy(&e4, q + b * KCH + j * 8, 4);
                memcpy(&o4, q + b * KCH + j * 8 + 4, 4);
                const __m256i xe = _mm256_set1_epi32(e4), xo = _mm256_set1_epi32(o4);
                for (int h = 0; h < 2; h++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(p + j * 64 + h * 32));
                    const __m256i lo = _mm256_and_si256(w, nib);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
                    s16[h] = _mm256_add_epi16(s16[h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe),
                                                                       _mm256_maddubs_epi16(hi, xo)));
                }
            }
            const __m256i s32[2] = {_mm256_madd_epi16(s16[0], ones), _mm256_madd_epi16(s16[1], ones)};
            q8_accumulate(s32, sc, off, d[b], qs[b], acc);
        }
    }
    store_row(y, acc, 2, bias, cols);
}

/* One row against one 8-bit block. Codes c in [0, 255] become c - 128 in int8 (an XOR of the
 * top bit) and each product (c - 128) q is formed as |c - 128| (q sign(c - 128)), llama.cpp's
 * Q8_0 trick: vpmaddubsw pair sums reach 2 x 128 x 127 = 32512 at most (no saturation), summed
 * to int32 by vpmaddwd. Then sum (c + off) q = that + (off + 128) sum q, exact below 2^24. x's
 * block is in natural order: byte i of word j is k = 4 j + i. */
AVX2 static void dec_q8_block8(const uint8_t *blk, const geom *g, const int8_t *q, const float *d,
                               const float *qs, const float *bias, float *y, int cols)
{
    const __m256i top = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const uint8_t *p = blk;
    int64_t b = 0;
    for (int64_t gi = 0; gi < g->groups; gi++) {
        __m256 sc[2], off[2];
        q8_header(p, 128, sc, off);
        p += HDR;
        for (int64_t ch = 0; ch < g->chunks; ch++, b++, p += 64 * 8) {
            __m256i s32[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
            for (int j = 0; j < 8; j++) {
                int32_t x4;
                memcpy(&x4, q + b * KCH + j * 4, 4);
                const __m256i xv = _mm256_set1_epi32(x4);
                for (int h = 0; h < 2; h++) {
                    const __m256i w = _mm256_xor_si256(
                        _mm256_loadu_si256((const __m256i *)(p + j * 64 + h * 32)), top);
                    const __m256i prod = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
                    s32[h] = _mm256_add_epi32(s32[h], _mm256_madd_epi16(prod, ones));
                }
            }
            q8_accumulate(s32, sc, off, d[b], qs[b], acc);
        }
    }
    store_row(y, acc, 2, bias, cols);
}

typedef struct {
    const geom *g;
    const int8_t *q;
    const float *d, *qs, *bias;
    float *y;
    int64_t m, per, pieces, next;
} q8job;

AVX2 static void run_q8(q8job *j)
{
    const geom *g = j->g;
    const int64_t nb = g->k / KCH;
    for (;;) {
        const int64_t p = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (p >= j->pieces)
            break;
        for (int64_t b = p * j->per; b < (p + 1) * j->per && b < g->blocks; b++) {
            const int cols = g->n - b * NB < NB ? (int)(g->n - b * NB) : NB;
            for (int64_t r = 0; r < j->m; r++)
                (g->bits == 8 ? dec_q8_block8 : dec_q8_block)(
                    g->base + b * g->bstride, g, j->q + r * g->k, j->d + r * nb, j->qs + r * nb,
                    j->bias ? j->bias + b * NB : NULL, j->y + r * g->n + b * NB, cols);
        }
    }
}
#endif /* WO_X86 */

/* ------------------------------------------------------------------------------------------ */
/* Dispatch. */

static int force_portable;

static int have_avx2(void)
{
#if defined(WO_X86)
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
#else
    return 0;
#endif
}

/* Tests: take the portable C path even on an AVX2 CPU (on != 0); returns the previous setting. */
int32_t cz_wo_force_portable(int32_t on)
{
    const int32_t was = force_portable;
    force_portable = on != 0;
    return was;
}

/* 1 when the AVX2+FMA kernels run, 0 for the portable path. */
int32_t cz_wo_isa(void)
{
    return !force_portable && have_avx2();
}

/* Debug: the packed weight dequantized to w (n, k) float32 by the kernels' own dequantization
 * (the prefill's B packing), for bit-for-bit comparison with the reference. */
int32_t cz_wo_dequant(const uint8_t *packed, float *w)
{
    geom g;
    if (read_geom(packed, &g))
        return -1;
    float panel[KCH * NB];
    for (int64_t b = 0; b < g.blocks; b++)
        for (int64_t kk = 0; kk < g.k; kk += KCH) {
#if defined(WO_X86)
            if (cz_wo_isa())
                PACKB_TABLE[g.fx != 0][variant(&g)](g.base + b * g.bstride, &g, kk, KCH, panel);
            else
#endif
                pack_b_ref(g.base + b * g.bstride, &g, kk, KCH, panel);
            for (int c = 0; c < NB && b * NB + c < g.n; c++)
                for (int t = 0; t < KCH; t++)
                    w[(b * NB + c) * g.k + kk + t] = panel[t * NB + c];
        }
    return 0;
}

/* Below this many weights x rows a call stays on the calling thread: waking the pool costs more. */
#define MIN_PARALLEL_WORK (1 << 18)

/* One call's work, handed out in pieces of column blocks from a shared counter rather than in
 * fixed halves: on a shared 2-core VM one thread is often descheduled for milliseconds, and
 * with fixed halves the whole call waits for it (measured: 4 ms on one thread, 8 ms on two). */
typedef struct {
    const geom *g;
    const float *x, *bias;
    float *y;
    int64_t m, ldx, per, pieces, next;
    int isa, gemm;
    int32_t status;
} job;

static void run_pieces(job *j)
{
    float *ap = NULL;
    if (j->gemm) {             /* this thread's A block and B panel, 64-byte aligned */
        ap = aligned_alloc(64, sizeof(float) * (MC * KC + KC * NCB * NB));
        if (!ap) {
            __atomic_store_n(&j->status, -2, __ATOMIC_RELAXED);
            return;
        }
    }
    const geom *g = j->g;
    for (;;) {
        const int64_t p = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (p >= j->pieces)
            break;
        const int64_t b0 = p * j->per, b1 = b0 + j->per < g->blocks ? b0 + j->per : g->blocks;
        if (!j->isa)
            linear_ref(g, j->x, j->m, j->ldx, j->bias, j->y, b0, b1);
#if defined(WO_X86)
        else if (!j->gemm)
            linear_dec_avx2(g, j->x, j->m, j->ldx, j->bias, j->y, b0, b1);
        else
            linear_gemm_avx2(g, j->x, j->m, j->ldx, j->bias, j->y, b0, b1, ap, ap + MC * KC);
#endif
    }
    free(ap);
}

/* y (m, n) = x (m, k; row stride ldx) times the packed weight^T (+ bias), on `threads` threads.
 * mode 1: decode kernel, 2: prefill GEMM (the Python side picks by m). Eight arguments: ctypes
 * converts each on every call (13 arguments cost 2.3 us, 6 cost 0.9 us on this VM). Returns 0;
 * -1 for a bad packed weight or stride; -2 when the prefill buffers could not be allocated. */
int32_t cz_wo_linear(const uint8_t *packed, const float *x, int64_t m, int64_t ldx, const float *bias,
                     float *y, int32_t threads, int32_t mode)
{
    geom g;
    if (read_geom(packed, &g) || m < 0 || ldx < g.k)
        return -1;
    if (m == 0)
        return 0;
    job j = {&g, x, bias, y, m, ldx, 1, 0, 0, cz_wo_isa(), 0, 0};
    j.gemm = j.isa && mode == 2;
    if (threads < 1 || g.n * g.k * m < MIN_PARALLEL_WORK)
        threads = 1;
    /* pieces: a B panel's worth of blocks for the GEMM (smaller panels if that leaves fewer
     * than 4 pieces a thread to balance); for decode ~8 pieces a thread */
    if (j.gemm) {
        j.per = NCB;
        while (j.per > 8 && g.blocks < 4 * (int64_t)threads * j.per)
            j.per /= 2;
    } else {
        j.per = g.blocks / (8 * (int64_t)threads);
    }
    if (j.per < 1)
        j.per = 1;
    j.pieces = (g.blocks + j.per - 1) / j.per;
    if (threads > j.pieces)
        threads = (int32_t)j.pieces;
    if (threads == 1) {        /* no parallel region at all: ~0.3 us less for tiny layers */
        run_pieces(&j);
        return j.status;
    }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    run_pieces(&j);
    return j.status;
}

/* y ~ x W^T through int8 activations (4- and 8-bit weights, AVX2 only). scratch: m k
 * bytes + 8 m k / 32 bytes, from the caller (no allocation per call). Returns 0, -1 if the
 * layer or CPU does not qualify. */
int32_t cz_wo_linear_q8a(const uint8_t *packed, const float *x, int64_t m, int64_t ldx,
                         const float *bias, float *y, int32_t threads, void *scratch)
{
    geom g;
    if (read_geom(packed, &g) || (g.bits != 4 && g.bits != 8) || g.step != 1 || !have_avx2() ||
        ldx < g.k || m < 0)
        return -1;
#if !defined(WO_X86)
    (void)x, (void)bias, (void)y, (void)threads, (void)scratch;
#else
    int8_t *q = scratch;
    float *d = (float *)(q + m * g.k), *qs = d + m * (g.k / KCH);
    quantize_q8(x, m, g.k, ldx, q, d, qs, g.bits == 4);
    if (threads < 1 || g.n * g.k * m < MIN_PARALLEL_WORK)
        threads = 1;
    q8job j = {&g, q, d, qs, bias, y, m, 1, 0, 0};
    j.per = g.blocks / (8 * (int64_t)threads) > 1 ? g.blocks / (8 * (int64_t)threads) : 1;
    j.pieces = (g.blocks + j.per - 1) / j.per;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    run_q8(&j);
#endif
    return 0;
}

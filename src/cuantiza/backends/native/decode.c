/* The small per-token steps of a LLaMA-class decoder, one C call each instead of a dozen torch
 * operations (each ~3-9 us of dispatch on the 2-core development VM, ~19 ms a token over 22
 * layers): RMSNorm, and rotary embedding with the key/value cache append.
 *
 * Exactness (llm/runtime.py's torch code is the reference; tests/llm/test_runtime.py):
 *   - cz_rope_append does the reference's float32 operations one for one, in its order:
 *     r = x cos + (-x') sin, each product and the sum rounded once (no FMA: the build has
 *     -ffp-contract=off), so queries and cached keys and values are bit for bit the torch ones.
 *   - cz_rms_norm sums x^2 in double (exact products, then one rounding a term at 53 bits)
 *     where torch sums float32 squares in a vectorized order: the mean differs by a few float32
 *     ulps at most, so |y - y_ref| <= 4 u |y| elementwise (u = 2^-24) up to the last rounding
 *     of w (x r); then r = 1 / sqrt(mean + eps) and y = w (x r) as torch computes them.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* out[r, :] = w * (x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps))) for rows r < rows. */
void cz_rms_norm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *out)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++)
            ss += (double)xr[i] * (double)xr[i];
        const float mean = (float)(ss / (double)n);
        const float inv = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++)
            out[r * n + i] = w[i] * (xr[i] * inv);
    }
}

/* x (d) rotated by the angle tables cos, sin (d, halves repeated) into out, as transformers'
 * x cos + rotate_half(x) sin with rotate_half(x) = cat(-x[h:], x[:h]). */
static void rotate(const float *x, const float *cos, const float *sin, int64_t d, float *out)
{
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; i++) {
        out[i] = x[i] * cos[i] + (-x[i + h]) * sin[i];
        out[i + h] = x[i + h] * cos[i + h] + x[i] * sin[i + h];
    }
}

/* For t tokens at positions pos .. pos + t - 1: qkv (t, (heads + 2 kv) d) holds each token's
 * queries, keys and values side by side. Queries rotated into q (t, heads, d); keys rotated and
 * values copied into the cache of one layer, k_cache and v_cache (kv, max_len, d), at their
 * positions. cos, sin: the tables' rows (positions) of d values. Returns 0, -1 past max_len. */
int32_t cz_rope_append(const float *qkv, int64_t t, int64_t heads, int64_t kv, int64_t d,
                       const float *cos, const float *sin, int64_t pos, float *k_cache,
                       float *v_cache, int64_t max_len, float *q)
{
    if (pos < 0 || pos + t > max_len || d % 2)
        return -1;
    const int64_t width = (heads + 2 * kv) * d;
    for (int64_t i = 0; i < t; i++) {
        const float *row = qkv + i * width, *c = cos + (pos + i) * d, *s = sin + (pos + i) * d;
        for (int64_t hd = 0; hd < heads; hd++)
            rotate(row + hd * d, c, s, d, q + (i * heads + hd) * d);
        for (int64_t g = 0; g < kv; g++) {
            float *kc = k_cache + (g * max_len + pos + i) * d, *vc = v_cache + (g * max_len + pos + i) * d;
            const float *vs = row + (heads + kv + g) * d;
            rotate(row + (heads + g) * d, c, s, d, kc);
            for (int64_t j = 0; j < d; j++)
                vc[j] = vs[j];
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* One whole decoder layer for one token (decode): every step of llm/runtime.py's _layer in C,
 * the four projections through wo.c's kernels, so that a token costs one call per layer
 * instead of ~20 torch operations and four Python kernel wrappers (~9 ms a token on the
 * development VM). The steps and their float32 operations, in order:
 *
 *   h = rms_norm(x, attn_norm)                    (cz_rms_norm)
 *   qkv = h Wqkv^T                                (wo.c: int8 or float activations)
 *   q, cache <- rope(qkv) at pos                  (cz_rope_append: bit for bit the torch step)
 *   attention of q over the cache's pos + 1 keys  (below)
 *   x = x + attn Wo^T
 *   x = x + (silu(g) * u) Wdown^T,  (g, u) = rms_norm(x, mlp_norm) Wgate_up^T
 *
 * Attention per head: s_j = fl(q . k_j) * scale (each dot product summed in 8 lanes, then the
 * lanes in a fixed order), softmax p_j = exp(s_j - max) / sum exp, o = sum_j p_j v_j in key
 * order; silu(g) = g / (1 + exp(-g)). These differ from torch's matmul / softmax / silu only in
 * summation order and in libm's expf against torch's vectorized exp (both within an ulp or two):
 * the test holds the layer to the torch runtime within a stated tolerance. */

int32_t cz_wo_linear(const uint8_t *packed, const float *x, int64_t m, int64_t ldx, const float *bias,
                     float *y, int32_t threads, int32_t mode);
int32_t cz_wo_linear_q8a(const uint8_t *packed, const float *x, int64_t m, int64_t ldx,
                         const float *bias, float *y, int32_t threads, void *scratch);

typedef struct {
    int64_t hidden, heads, kv, d, inter, max_len;
    float eps, scale;
    const float *attn_norm, *mlp_norm;
    const uint8_t *proj[4];    /* packed q+k+v, o, gate+up, down (wo.c's layout) */
    int32_t int8[4];           /* 1: that projection decodes with int8 activations */
    float *k_cache, *v_cache;  /* this layer's (kv, max_len, d) */
} cz_layer;

static int32_t project(const cz_layer *L, int i, const float *in, int64_t k, float *out,
                       int32_t threads, void *q8)
{
    return L->int8[i] ? cz_wo_linear_q8a(L->proj[i], in, 1, k, NULL, out, threads, q8)
                      : cz_wo_linear(L->proj[i], in, 1, k, NULL, out, threads, 1);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2"))) static float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    float lane[8], s = 0.0f;
    _mm256_storeu_ps(lane, acc);
    for (int j = 0; j < 8; j++)
        s += lane[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}
static int has_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2");
    }
    return known;
}
#else
static int has_avx2(void) { return 0; }
static float dot_avx2(const float *a, const float *b, int64_t n) { (void)a, (void)b, (void)n; return 0; }
#endif

/* The same sum, portable: 8 lanes, then the lanes in order (so both paths agree bit for bit). */
static float dot(const float *a, const float *b, int64_t n)
{
    if (has_avx2())
        return dot_avx2(a, b, n);
    float lane[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] = lane[j] + a[i + j] * b[i + j];
    float s = 0.0f;
    for (int j = 0; j < 8; j++)
        s += lane[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Head h of the attention over keys 0..len-1; p: len floats of scratch. */
static void attend_head(const cz_layer *L, const float *q, int64_t h, int64_t len, float *p,
                        float *out)
{
    const int64_t d = L->d, g = h / (L->heads / L->kv);
    const float *kc = L->k_cache + g * L->max_len * d, *vc = L->v_cache + g * L->max_len * d;
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        p[j] = dot(q, kc + j * d, d) * L->scale;
        mx = p[j] > mx ? p[j] : mx;
    }
    for (int64_t j = 0; j < len; j++) {
        p[j] = expf(p[j] - mx);
        sum += p[j];
    }
    for (int64_t i = 0; i < d; i++)
        out[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        const float w = p[j] / sum;
        for (int64_t i = 0; i < d; i++)
            out[i] += w * vc[j * d + i];
    }
}

/* The float scratch cz_decode_layer needs (a count of floats), for a layer of this shape. */
int64_t cz_decode_scratch(int64_t hidden, int64_t heads, int64_t kv, int64_t d, int64_t inter,
                          int64_t max_len)
{
    return 2 * hidden + (heads + 2 * kv) * d + 2 * heads * d + 3 * inter + heads * max_len;
}

/* x (hidden) <- the layer applied to the token at position pos; cos, sin: the whole angle
 * tables (positions, d). scratch: cz_decode_scratch floats; q8: the int8 path's scratch (inter +
 * inter / 4 bytes). Returns 0, or the failing kernel's code. */
int32_t cz_decode_layer(const cz_layer *L, float *x, int64_t pos, const float *cos,
                        const float *sin, float *scratch, void *q8, int32_t threads)
{
    const int64_t H = L->hidden, d = L->d, width = (L->heads + 2 * L->kv) * d, len = pos + 1;
    float *h = scratch, *qkv = h + H, *q = qkv + width, *attn = q + L->heads * d;
    float *o = attn + L->heads * d, *gu = o + H, *act = gu + 2 * L->inter, *p = act + L->inter;
    int32_t rc;
    cz_rms_norm(x, L->attn_norm, 1, H, L->eps, h);
    if ((rc = project(L, 0, h, H, qkv, threads, q8)))
        return rc;
    if ((rc = cz_rope_append(qkv, 1, L->heads, L->kv, d, cos, sin, pos, L->k_cache, L->v_cache,
                             L->max_len, q)))
        return rc;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) if (L->heads * len * d >= (1 << 16))
#endif
    for (int64_t hd = 0; hd < L->heads; hd++)
        attend_head(L, q + hd * d, hd, len, p + hd * L->max_len, attn + hd * d);
    if ((rc = project(L, 1, attn, L->heads * d, o, threads, q8)))
        return rc;
    for (int64_t i = 0; i < H; i++)
        x[i] = x[i] + o[i];
    cz_rms_norm(x, L->mlp_norm, 1, H, L->eps, h);
    if ((rc = project(L, 2, h, H, gu, threads, q8)))
        return rc;
    for (int64_t i = 0; i < L->inter; i++) {
        const float g = gu[i];
        act[i] = g / (1.0f + expf(-g)) * gu[L->inter + i];
    }
    if ((rc = project(L, 3, act, L->inter, o, threads, q8)))
        return rc;
    for (int64_t i = 0; i < H; i++)
        x[i] = x[i] + o[i];
    return 0;
}

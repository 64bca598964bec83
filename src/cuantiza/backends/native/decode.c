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

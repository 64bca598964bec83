/* What rtn.c and rtn_fused.c share: the clone attribute, always-inline helpers, the eight-lane
 * float32 vectors (GCC/Clang vector extensions), lane-wise min/max and a row's min/max. */
#ifndef CZ_SIMD_H
#define CZ_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* With GCC on x86-64 each kernel is cloned for AVX2, SSE4.1 (the first with a rounding
 * instruction) and baseline x86-64, and the loader picks the clone for the CPU it runs on. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CZ_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define CZ_CLONES
#endif

/* helpers are inlined into each clone, so that they are compiled for its instruction set */
#if defined(__GNUC__)
#define CZ_INLINE static inline __attribute__((always_inline))
/* the vector helpers are always inlined, so no vector crosses a call (no ABI concern) */
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define CZ_INLINE static inline
#endif

/* Eight float32 lanes: one AVX2 register, two SSE registers, and whatever the target has
 * elsewhere; comparisons give lane masks of 0 or -1. */
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

/* Lane-wise a < b ? a : b and a > b ? a : b (x86 minps/maxps semantics; only NaN-free data
 * reaches a result: callers flag NaN rows separately). */
CZ_INLINE vf vmin(vf a, vf b)
{
    vi m = a < b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

CZ_INLINE vf vmax(vf a, vf b)
{
    vi m = a > b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* v's eight lanes in a constant order: __builtin_shufflevector in clang and GCC >= 12,
 * __builtin_shuffle in older GCC. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define CZ_SHUFFLE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define CZ_SHUFFLE(v, ...) __builtin_shuffle(v, (vi){__VA_ARGS__})
#endif

/* min and max of n values, 16 a step in two independent lane-wise chains (they hide the
 * latency), lanes folded in halves, the tail scalar; returns nonzero if a NaN was seen (lo and
 * hi are then unspecified: callers recompute or give up). Every other step prefetches a cache
 * line of `ahead` (NULL: none), j / 2 floats in: callers that stream rows pass a row further on. */
CZ_INLINE int32_t cz_minmax_lanes(const float *x, int64_t n, const float *ahead, float *lo_out,
                                  float *hi_out)
{
    const vf pinf = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
    vf lo0 = pinf, lo1 = pinf, hi0 = -pinf, hi1 = -pinf;
    vi nan = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        vf v0, v1;
        __builtin_memcpy(&v0, x + j, sizeof v0);                 /* unaligned loads */
        __builtin_memcpy(&v1, x + j + 8, sizeof v1);
        if (ahead && !(j & 16))
            __builtin_prefetch(ahead + j / 2);
        lo0 = vmin(v0, lo0);
        lo1 = vmin(v1, lo1);
        hi0 = vmax(v0, hi0);
        hi1 = vmax(v1, hi1);
        nan |= (v0 != v0) | (v1 != v1);
    }
    lo0 = vmin(lo0, lo1);
    hi0 = vmax(hi0, hi1);
    lo0 = vmin(lo0, CZ_SHUFFLE(lo0, 4, 5, 6, 7, 0, 1, 2, 3));
    hi0 = vmax(hi0, CZ_SHUFFLE(hi0, 4, 5, 6, 7, 0, 1, 2, 3));
    nan |= CZ_SHUFFLE(nan, 4, 5, 6, 7, 0, 1, 2, 3);
    lo0 = vmin(lo0, CZ_SHUFFLE(lo0, 2, 3, 0, 1, 6, 7, 4, 5));
    hi0 = vmax(hi0, CZ_SHUFFLE(hi0, 2, 3, 0, 1, 6, 7, 4, 5));
    nan |= CZ_SHUFFLE(nan, 2, 3, 0, 1, 6, 7, 4, 5);
    float a = lo0[0] < lo0[1] ? lo0[0] : lo0[1], b = hi0[0] > hi0[1] ? hi0[0] : hi0[1];
    int32_t bad = nan[0] | nan[1];
    for (; j < n; j++) {
        float v = x[j];
        a = v < a ? v : a;
        b = v > b ? v : b;
        bad |= v != v;
    }
    *lo_out = a;
    *hi_out = b;
    return bad;
}

#endif

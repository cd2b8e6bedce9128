/*
 * LVQ codes: fp16 helpers, encode / decode, and the kernels that score a float query against
 * codes without decoding them. The contract is include/fk_lvq.h; docs/codecs.md has the
 * formats and formulas.
 *
 *  - Like kernels.c: no global -mavx2/-mfma; the AVX2 and AVX-512 bodies carry target
 *    attributes and the public entry points pick a body from kernels.c's level (CPUID +
 *    XGETBV, decided once; FATHOM_SIMD / fk_set_simd_level can lower it).
 *  - Every kernel produces Σq_j·c_j in float (FMA over converted codes) and, when the norm is
 *    wanted, the exact integer sums Σc_j and Σc_j² (32-bit lanes, flushed to 64 bits where
 *    they could overflow). The per-code constants are applied once, in double:
 *        <q, x̂>  = s·Σq·c + b·Σq
 *        ||x̂||² = s²·Σc² + 2·s·b·Σc + d·b²
 *  - No read outside [q, q + d) or outside the code; AVX2 tails go through small
 *    zero-padded stack copies, AVX-512 tails through masked loads. Nothing allocates.
 */
#include "fk_lvq.h"
#include "ckernels.h"
#include "fk_simd.h"
#include <string.h>

#define LVQ_INLINE static inline __attribute__((always_inline))

/* ======================================================================================
 * fp16
 * ====================================================================================== */
static inline uint32_t f32_bits(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
static inline float bits_f32(uint32_t x) { float f; memcpy(&f, &x, 4); return f; }

uint16_t fk_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) /* inf or NaN (NaN keeps a quiet bit and the top payload bits) */
        return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? (0x200u | ((ax >> 13) & 0x3FFu)) : 0u));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520: rounds to infinity */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or 0 */
        if (ax <= 0x33000000u) return sign;                   /* <= 2^-25 rounds to 0 */
        uint32_t e = ax >> 23;                                /* 102...112 */
        uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;                            /* 14...24 */
        uint32_t m = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (m & 1u))) m++;     /* may become the smallest normal */
        return (uint16_t)(sign | m);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;                    /* rebias 127 -> 15 */
    uint32_t rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;   /* a carry moves into the exponent */
    return (uint16_t)(sign | h);
}

static float f16_to_f32_slow(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    uint32_t x;
    if (e == 0) {
        if (m == 0) x = sign;
        else {                                   /* subnormal m·2^-24: normalise */
            uint32_t sh = 0;
            while (!(m & 0x400u)) { m <<= 1; sh++; }
            x = sign | ((113u - sh) << 23) | ((m & 0x3FFu) << 13);
        }
    } else if (e == 31) x = sign | 0x7F800000u | (m << 13);
    else x = sign | ((e + 112u) << 23) | (m << 13);
    return bits_f32(x);
}

LVQ_INLINE float f16_to_f32(uint16_t h) {
    uint32_t e = h & 0x7C00u;
    if (e != 0 && e != 0x7C00u)
        return bits_f32(((uint32_t)(h & 0x8000u) << 16) | (((uint32_t)(h & 0x7FFFu) << 13) + (112u << 23)));
    return f16_to_f32_slow(h);
}

float fk_f16_to_f32(uint16_t h) { return f16_to_f32(h); }

/* Neighbours of a finite fp16 value toward -inf / +inf. */
static uint16_t f16_next_down(uint16_t h) {
    if (h == 0x0000u) return 0x8001u;
    if (h & 0x8000u) return (uint16_t)(h + 1u);
    return (uint16_t)(h - 1u);
}
static uint16_t f16_next_up(uint16_t h) {
    if (h == 0x8000u) return 0x0001u;
    if (h & 0x8000u) return (uint16_t)(h - 1u);
    return (uint16_t)(h + 1u);
}
/* Largest fp16 <= f, clamped to the finite range. */
static uint16_t f16_round_down(float f) {
    if (!(f > -65504.0f)) return 0xFBFFu;            /* -65504 (also NaN) */
    uint16_t h = fk_f32_to_f16(f);
    if (f16_to_f32(h) > f) h = f16_next_down(h);     /* +inf -> 65504 too */
    return h;
}
/* Smallest fp16 >= f (f >= 0), clamped to the finite range. */
static uint16_t f16_round_up(float f) {
    if (!(f < 65504.0f)) return 0x7BFFu;             /* 65504 (also NaN) */
    uint16_t h = fk_f32_to_f16(f);
    if (f16_to_f32(h) < f) h = f16_next_up(h);
    return h;
}

LVQ_INLINE uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v & 0xFFu); p[1] = (uint8_t)(v >> 8); }

/* ======================================================================================
 * Encode / decode
 * ====================================================================================== */
size_t fk_lvq_code_size(int kind, size_t d) {
    switch (kind) {
    case FK_LVQ8: return d + 4;
    case FK_LVQ4: return (d + 1) / 2 + 4;
    case FK_LVQ4X8: return (d + 1) / 2 + d + 4;
    default: return 0;
    }
}

/* round((x - b) / s) clamped to [0, maxv]; s == 0 gives 0. */
static inline unsigned lvq_quant(float x, float b, float s, unsigned maxv) {
    if (!(s > 0)) return 0;
    float t = (x - b) / s;
    if (!(t > 0)) return 0;
    if (t >= (float)maxv) return maxv;
    return (unsigned)(t + 0.5f);
}

void fk_lvq_encode(int kind, const float *x, size_t d, void *code) {
    uint8_t *p = (uint8_t *)code;
    if (d == 0) { wr16(p, 0); wr16(p + 2, 0); return; }
    float lo = x[0], hi = x[0];
    for (size_t j = 1; j < d; j++) { if (x[j] < lo) lo = x[j]; if (x[j] > hi) hi = x[j]; }
    const unsigned maxv = kind == FK_LVQ8 ? 255u : 15u;
    uint16_t bh = f16_round_down(lo);
    float b = f16_to_f32(bh);
    float delta = (hi - b) / (float)maxv;
    uint16_t sh = f16_round_up(delta > 0 ? delta : 0.0f);
    float s = f16_to_f32(sh);
    wr16(p, sh);
    wr16(p + 2, bh);
    uint8_t *c = p + 4;
    if (kind == FK_LVQ8) {
        for (size_t j = 0; j < d; j++) c[j] = (uint8_t)lvq_quant(x[j], b, s, 255u);
        return;
    }
    const size_t nb = (d + 1) / 2;
    memset(c, 0, nb);
    for (size_t j = 0; j < d; j++) c[j >> 1] |= (uint8_t)(lvq_quant(x[j], b, s, 15u) << ((j & 1) * 4));
    if (kind != FK_LVQ4X8) return;
    /* residual level: x ≈ s'·(255·c + r) + b', s' = s/255, b' = b − s/2 */
    uint8_t *r = c + nb;
    const float s2 = s / 255.0f, b2 = b - 0.5f * s;
    for (size_t j = 0; j < d; j++) {
        float cj = (float)((c[j >> 1] >> ((j & 1) * 4)) & 0x0F);
        unsigned rv = 0;
        if (s2 > 0) {
            float t = (x[j] - b2) / s2 - 255.0f * cj;
            rv = !(t > 0) ? 0u : (t >= 255.0f ? 255u : (unsigned)(t + 0.5f));
        }
        r[j] = (uint8_t)rv;
    }
}

void fk_lvq_decode(int kind, const void *code, size_t d, float *out) {
    const uint8_t *p = (const uint8_t *)code;
    const float s = f16_to_f32(rd16(p)), b = f16_to_f32(rd16(p + 2));
    const uint8_t *c = p + 4;
    switch (kind) {
    case FK_LVQ8:
        for (size_t j = 0; j < d; j++) out[j] = s * (float)c[j] + b;
        break;
    case FK_LVQ4:
        for (size_t j = 0; j < d; j++) out[j] = s * (float)((c[j >> 1] >> ((j & 1) * 4)) & 0x0F) + b;
        break;
    case FK_LVQ4X8: {
        const uint8_t *r = c + (d + 1) / 2;
        const float s2 = s / 255.0f, b2 = b - 0.5f * s;
        for (size_t j = 0; j < d; j++) {
            unsigned cc = 255u * ((c[j >> 1] >> ((j & 1) * 4)) & 0x0Fu) + r[j];
            out[j] = s2 * (float)cc + b2;
        }
        break;
    }
    default: break;
    }
}

/* ======================================================================================
 * Shared: the per-code constants and the final combination.
 * ====================================================================================== */
typedef struct { float qc; uint64_t cs, css; } lvq_sums;

/* No FMA contraction here (these are inlined into FMA-enabled bodies too): every level
 * rounds the same way, so ||x̂||² (from exact integer sums) is bit-identical across levels
 * and <q, x̂> differs only by the float sum Σq·c. */
LVQ_INLINE float lvq_finish(float s, float b, lvq_sums t, float qsum, size_t d, float *norm) {
#pragma STDC FP_CONTRACT OFF
    if (norm) {
        double sd = s, bd = b;
        double n = sd * sd * (double)(int64_t)t.css + 2.0 * sd * bd * (double)(int64_t)t.cs
                 + (double)(int64_t)d * bd * bd;
        *norm = (float)(n > 0 ? n : 0);
    }
    return (float)((double)s * (double)t.qc + (double)b * (double)qsum);
}

/* The constants of a code: (s, b) of the level the kind scores. */
LVQ_INLINE void lvq_consts(int kind, const uint8_t *p, float *s, float *b) {
    float s0 = f16_to_f32(rd16(p)), b0 = f16_to_f32(rd16(p + 2));
    if (kind == FK_LVQ4X8) { *s = s0 / 255.0f; *b = b0 - 0.5f * s0; }
    else { *s = s0; *b = b0; }
}

LVQ_INLINE float lvq_metric(int metric, float dot, float norm, float qnorm) {
#pragma STDC FP_CONTRACT OFF
    if (metric == FK_LVQ_METRIC_L2) {
        float v = qnorm - 2.0f * dot + norm;
        return v > 0 ? v : 0.0f;
    }
    return -dot;
}

/* ======================================================================================
 * Scalar bodies
 * ====================================================================================== */
static inline lvq_sums lvq8_sums_scalar(const float *q, const uint8_t *c, size_t d) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint64_t cs = 0, css = 0;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        uint32_t c0 = c[i], c1 = c[i + 1], c2 = c[i + 2], c3 = c[i + 3];
        a0 += q[i] * (float)c0; a1 += q[i + 1] * (float)c1;
        a2 += q[i + 2] * (float)c2; a3 += q[i + 3] * (float)c3;
        cs += c0 + c1 + c2 + c3;
        css += c0 * c0 + c1 * c1 + c2 * c2 + c3 * c3;
    }
    for (; i < d; i++) { uint32_t cv = c[i]; a0 += q[i] * (float)cv; cs += cv; css += cv * cv; }
    lvq_sums t = {(a0 + a1) + (a2 + a3), cs, css};
    return t;
}

static inline lvq_sums lvq4_sums_scalar(const float *q, const uint8_t *c, size_t d) {
    float a0 = 0, a1 = 0;
    uint64_t cs = 0, css = 0;
    size_t i = 0;
    for (; i + 2 <= d; i += 2) {
        uint32_t byte = c[i >> 1], c0 = byte & 0x0Fu, c1 = byte >> 4;
        a0 += q[i] * (float)c0; a1 += q[i + 1] * (float)c1;
        cs += c0 + c1; css += c0 * c0 + c1 * c1;
    }
    if (i < d) { uint32_t c0 = c[i >> 1] & 0x0Fu; a0 += q[i] * (float)c0; cs += c0; css += c0 * c0; }
    lvq_sums t = {a0 + a1, cs, css};
    return t;
}

static inline lvq_sums lvq4x8_sums_scalar(const float *q, const uint8_t *c, size_t d) {
    const uint8_t *r = c + (d + 1) / 2;
    float a0 = 0, a1 = 0;
    uint64_t cs = 0, css = 0;
    for (size_t i = 0; i < d; i++) {
        uint32_t cc = 255u * ((c[i >> 1] >> ((i & 1) * 4)) & 0x0Fu) + r[i];
        if (i & 1) a1 += q[i] * (float)cc; else a0 += q[i] * (float)cc;
        cs += cc; css += (uint64_t)cc * cc;
    }
    lvq_sums t = {a0 + a1, cs, css};
    return t;
}

#define LVQ_DEFINE_SCALAR(NAME, KIND)                                                        \
    float fk_##NAME##_dot_scalar(const float *q, float qsum, const void *code, size_t d, float *norm) { \
        const uint8_t *p = (const uint8_t *)code;                                            \
        float s, b;                                                                          \
        lvq_consts(KIND, p, &s, &b);                                                         \
        return lvq_finish(s, b, NAME##_sums_scalar(q, p + 4, d), qsum, d, norm);             \
    }                                                                                        \
    static void NAME##_batch_scalar(int metric, const float *q, float qsum, float qnorm,     \
                                    const void *base, size_t n, size_t d, size_t stride, float *out) { \
        const uint8_t *p = (const uint8_t *)base;                                            \
        for (size_t j = 0; j < n; j++, p += stride) {                                        \
            float s, b, norm = 0;                                                            \
            lvq_consts(KIND, p, &s, &b);                                                     \
            float dot = lvq_finish(s, b, NAME##_sums_scalar(q, p + 4, d), qsum, d,           \
                                   metric == FK_LVQ_METRIC_L2 ? &norm : NULL);               \
            out[j] = lvq_metric(metric, dot, norm, qnorm);                                   \
        }                                                                                    \
    }
LVQ_DEFINE_SCALAR(lvq8, FK_LVQ8)
LVQ_DEFINE_SCALAR(lvq4, FK_LVQ4)
LVQ_DEFINE_SCALAR(lvq4x8, FK_LVQ4X8)

void fk_lvq_batch_scalar(int kind, int metric, const float *q, float qsum, float qnorm,
                         const void *base, size_t n, size_t d, size_t stride, float *out) {
    switch (kind) {
    case FK_LVQ8: lvq8_batch_scalar(metric, q, qsum, qnorm, base, n, d, stride, out); break;
    case FK_LVQ4: lvq4_batch_scalar(metric, q, qsum, qnorm, base, n, d, stride, out); break;
    case FK_LVQ4X8: lvq4x8_batch_scalar(metric, q, qsum, qnorm, base, n, d, stride, out); break;
    default: break;
    }
}

/* ======================================================================================
 * AVX2 + FMA bodies
 * ====================================================================================== */
#if FK_X86
/* The target attributes (FK_AVX2, FK_AVX512 and their _INLINE forms), fk_hsum_ps and the
 * other horizontal sums, the AVX-512 masks and FK_PREFETCH_AHEAD are fk_simd.h's. */

/* Sum of 8 uint32 lanes into 64 bits. */
FK_AVX2_INLINE uint64_t lvq_hsum_u32(__m256i v) {
    const __m256i z = _mm256_setzero_si256();
    __m256i w = _mm256_add_epi64(_mm256_unpacklo_epi32(v, z), _mm256_unpackhi_epi32(v, z));
    return fk_hsum_u64x2(_mm_add_epi64(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

/* The result of both 4-bit bodies: Σq·c = qc; with NORM the norm sums, for 4x8 (TWO) the
 * wide ones the body summed (cs2, css2), for 4-bit those of its nibble-byte accumulators
 * (Σc from ns4: 2 × u64, Σc² from nss4: 4 × u32). */
FK_AVX2_INLINE lvq_sums lvq4_result(float qc, const int NORM, const int TWO, uint64_t cs2, uint64_t css2,
                                    __m128i ns4, __m128i nss4) {
    lvq_sums t = {qc, 0, 0};
    if (NORM && TWO) { t.cs = cs2; t.css = css2; }
    else if (NORM) { t.cs = fk_hsum_u64x2(ns4); t.css = fk_hsum_u32x4(nss4); }
    return t;
}

/* The 4-bit and 4x8 bodies of one level (SUF), from its lvq4_sums_generic_##SUF. */
#define LVQ4_SUMS(SUF, INLINE)                                                               \
    INLINE lvq_sums lvq4_sums_##SUF(const float *q, const uint8_t *c, size_t d, const int NORM) { \
        return lvq4_sums_generic_##SUF(q, c, d, NORM, 0);                                    \
    }                                                                                        \
    INLINE lvq_sums lvq4x8_sums_##SUF(const float *q, const uint8_t *c, size_t d, const int NORM) { \
        return lvq4_sums_generic_##SUF(q, c, d, NORM, 1);                                    \
    }

/* 8 bytes -> 8 int32 lanes */
FK_AVX2_INLINE __m256i lvq_load8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
}

/* 16 packed bytes (32 nibbles, low nibble first) -> the nibbles as bytes: lo holds dims
 * 0, 2, ..., 30 and hi dims 1, 3, ..., 31; then 4 × 8 int32 lanes in dimension order. */
FK_AVX2_INLINE void lvq_nibbles(const uint8_t *p, __m128i *lo, __m128i *hi) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    *lo = _mm_and_si128(v, m);
    *hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
}
FK_AVX2_INLINE void lvq_widen32(__m128i lo, __m128i hi, __m256i *c0, __m256i *c1, __m256i *c2, __m256i *c3) {
    __m128i v0 = _mm_unpacklo_epi8(lo, hi), v1 = _mm_unpackhi_epi8(lo, hi);
    *c0 = _mm256_cvtepu8_epi32(v0);
    *c1 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v0, v0));
    *c2 = _mm256_cvtepu8_epi32(v1);
    *c3 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v1, v1));
}

/* acc += q·c; if WITH_NORM: ns += c, nss += c² (c < 2^15, so vpmaddwd of the lane with
 * itself is c·c + 0·0) */
#define LVQ_STEP(ACC, QV, CI, WITH_NORM)                                                     \
    do {                                                                                     \
        ACC = _mm256_fmadd_ps((QV), _mm256_cvtepi32_ps(CI), ACC);                            \
        if (WITH_NORM) {                                                                     \
            ns = _mm256_add_epi32(ns, (CI));                                                 \
            nss = _mm256_add_epi32(nss, _mm256_madd_epi16((CI), (CI)));                      \
        }                                                                                    \
    } while (0)

/* 8-bit: the dot through 4 × (8 bytes -> 8 int32 -> 8 floats, FMA) per 32 dimensions; the
 * norm sums on the 32 bytes at once: Σc by vpsadbw, Σc² by in-lane unpacking to 16 bits and
 * vpmaddwd (order does not matter for sums). */
FK_AVX2_INLINE lvq_sums lvq8_sums_avx2(const float *q, const uint8_t *c, size_t d, const int NORM) {
    const __m256i z = _mm256_setzero_si256();
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256i ns = z, nss = z;   /* ns: 4 × u64 (vpsadbw); nss: 8 × u32 */
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtepi32_ps(lvq_load8(c + i)), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_cvtepi32_ps(lvq_load8(c + i + 8)), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), _mm256_cvtepi32_ps(lvq_load8(c + i + 16)), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), _mm256_cvtepi32_ps(lvq_load8(c + i + 24)), a3);
        if (NORM) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(c + i));
            ns = _mm256_add_epi64(ns, _mm256_sad_epu8(v, z));
            __m256i lo = _mm256_unpacklo_epi8(v, z), hi = _mm256_unpackhi_epi8(v, z);
            nss = _mm256_add_epi32(nss, _mm256_add_epi32(_mm256_madd_epi16(lo, lo), _mm256_madd_epi16(hi, hi)));
        }
    }
    for (; i + 8 <= d; i += 8) {
        __m256i ci = lvq_load8(c + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtepi32_ps(ci), a0);
        if (NORM) {
            ns = _mm256_add_epi64(ns, _mm256_unpacklo_epi32(ci, z));   /* 4 of the 8 lanes ... */
            ns = _mm256_add_epi64(ns, _mm256_unpackhi_epi32(ci, z));   /* ... and the other 4 */
            nss = _mm256_add_epi32(nss, _mm256_madd_epi16(ci, ci));
        }
    }
    lvq_sums t;
    t.qc = fk_hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    t.cs = 0; t.css = 0;
    if (NORM) {
        t.cs = fk_hsum_u64x2(_mm_add_epi64(_mm256_castsi256_si128(ns), _mm256_extracti128_si256(ns, 1)));
        t.css = lvq_hsum_u32(nss);
    }
    for (; i < d; i++) { uint32_t cv = c[i]; t.qc += q[i] * (float)cv; t.cs += cv; t.css += cv * cv; }
    return t;
}

/* One 32-dimension block of 4-bit codes (and, for 4x8, the 32 residual bytes at RP).
 * Norm sums: for 4x8 per int32 lane of C (LVQ_STEP with NORM4X8); for 4-bit on the nibble
 * bytes: Σc by vpsadbw of lo + hi, Σc² by vpmaddubsw (c <= 15, so c·c pairs fit in 16 bits)
 * then vpmaddwd with ones. */
#define LVQ4_BLOCK(QP, CP, RP, TWO)                                                          \
    do {                                                                                     \
        __m128i lo, hi;                                                                      \
        __m256i c0, c1, c2, c3;                                                              \
        lvq_nibbles((CP), &lo, &hi);                                                         \
        lvq_widen32(lo, hi, &c0, &c1, &c2, &c3);                                             \
        if (TWO) {                                                                           \
            /* C = 255·c + r = (c << 8) − c + r */                                           \
            c0 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(c0, 8), c0), lvq_load8((RP)));      \
            c1 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(c1, 8), c1), lvq_load8((RP) + 8));  \
            c2 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(c2, 8), c2), lvq_load8((RP) + 16)); \
            c3 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(c3, 8), c3), lvq_load8((RP) + 24)); \
        } else if (NORM) {                                                                   \
            ns4 = _mm_add_epi64(ns4, _mm_sad_epu8(_mm_add_epi8(lo, hi), _mm_setzero_si128())); \
            __m128i sq = _mm_add_epi16(_mm_maddubs_epi16(lo, lo), _mm_maddubs_epi16(hi, hi)); \
            nss4 = _mm_add_epi32(nss4, _mm_madd_epi16(sq, _mm_set1_epi16(1)));               \
        }                                                                                    \
        LVQ_STEP(a0, _mm256_loadu_ps((QP)), c0, NORM4X8);                                    \
        LVQ_STEP(a1, _mm256_loadu_ps((QP) + 8), c1, NORM4X8);                                \
        LVQ_STEP(a2, _mm256_loadu_ps((QP) + 16), c2, NORM4X8);                               \
        LVQ_STEP(a3, _mm256_loadu_ps((QP) + 24), c3, NORM4X8);                               \
    } while (0)

/* 4-bit codes (TWO = 0) or the two-level 4x8 codes (TWO = 1). For 4x8, C² reaches 4080² and
 * a lane gains up to 4·4080² per block, so the squares are flushed to 64 bits every 32
 * blocks (1024 dimensions). */
FK_AVX2_INLINE lvq_sums lvq4_sums_generic_avx2(const float *q, const uint8_t *c, size_t d,
                                                 const int NORM, const int TWO) {
    const int NORM4X8 = NORM && TWO;
    const uint8_t *r = c + (d + 1) / 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256i ns = _mm256_setzero_si256(), nss = ns;
    __m128i ns4 = _mm_setzero_si128(), nss4 = ns4;
    uint64_t css = 0;
    unsigned blocks = 0;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        LVQ4_BLOCK(q + i, c + i / 2, r + i, TWO);
        if (NORM4X8 && ++blocks == 32) { css += lvq_hsum_u32(nss); nss = _mm256_setzero_si256(); blocks = 0; }
    }
    if (i < d) {
        /* tail of 1..31 dimensions through zero-padded copies (the pad nibble of an odd d
         * is masked off, so the padding adds nothing to any sum) */
        const size_t rem = d - i, nb = (rem + 1) / 2;
        float qb[32] = {0};
        uint8_t cb[16] = {0}, rb[32] = {0};
        memcpy(qb, q + i, rem * sizeof(float));
        memcpy(cb, c + i / 2, nb);
        if (rem & 1) cb[nb - 1] &= 0x0F;
        if (TWO) memcpy(rb, r + i, rem);
        LVQ4_BLOCK(qb, cb, rb, TWO);
    }
    const int WIDE = NORM && TWO;
    return lvq4_result(fk_hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))), NORM, TWO,
                       WIDE ? lvq_hsum_u32(ns) : 0, WIDE ? css + lvq_hsum_u32(nss) : 0, ns4, nss4);
}
LVQ4_SUMS(avx2, FK_AVX2_INLINE)

/* Single-code entry points and batch loops. The batch loop prefetches the code two ahead
 * (every cache line of it). SUF names the bodies (NAME##_sums_##SUF), ATTR their target. */
#define LVQ_DEFINE_SIMD(NAME, KIND, SUF, ATTR)                                               \
    ATTR static float NAME##_dot_##SUF(const float *q, float qsum, const void *code, size_t d, float *norm) { \
        const uint8_t *p = (const uint8_t *)code;                                            \
        float s, b;                                                                          \
        lvq_consts(KIND, p, &s, &b);                                                         \
        lvq_sums t = norm ? NAME##_sums_##SUF(q, p + 4, d, 1) : NAME##_sums_##SUF(q, p + 4, d, 0); \
        return lvq_finish(s, b, t, qsum, d, norm);                                           \
    }                                                                                        \
    ATTR static void NAME##_batch_##SUF(int metric, const float *q, float qsum, float qnorm,  \
                                           const void *base, size_t n, size_t d, size_t stride, float *out) { \
        const uint8_t *p = (const uint8_t *)base;                                            \
        const size_t lines = (fk_lvq_code_size(KIND, d) + 63) / 64;                          \
        if (metric == FK_LVQ_METRIC_L2) {                                                    \
            for (size_t j = 0; j < n; j++, p += stride) {                                    \
                FK_PREFETCH_AHEAD(p, j, n, stride, lines);                                   \
                float s, b, norm;                                                            \
                lvq_consts(KIND, p, &s, &b);                                                 \
                float dot = lvq_finish(s, b, NAME##_sums_##SUF(q, p + 4, d, 1), qsum, d, &norm); \
                out[j] = lvq_metric(FK_LVQ_METRIC_L2, dot, norm, qnorm);                     \
            }                                                                                \
        } else {                                                                             \
            for (size_t j = 0; j < n; j++, p += stride) {                                    \
                FK_PREFETCH_AHEAD(p, j, n, stride, lines);                                   \
                float s, b;                                                                  \
                lvq_consts(KIND, p, &s, &b);                                                 \
                out[j] = -lvq_finish(s, b, NAME##_sums_##SUF(q, p + 4, d, 0), qsum, d, NULL); \
            }                                                                                \
        }                                                                                    \
    }
LVQ_DEFINE_SIMD(lvq8, FK_LVQ8, avx2, FK_AVX2)
LVQ_DEFINE_SIMD(lvq4, FK_LVQ4, avx2, FK_AVX2)
LVQ_DEFINE_SIMD(lvq4x8, FK_LVQ4X8, avx2, FK_AVX2)

/* ======================================================================================
 * AVX-512 bodies (AVX512F + BW + VL + DQ; no VNNI: the dot is float). Same sums as the AVX2
 * bodies, 16 float lanes; tails are masked loads (masked-off bytes and floats are not read
 * and count 0), so there are no stack copies and no scalar tails.
 * ====================================================================================== */
/* 16 code bytes -> 16 floats (exact) */
FK_AVX512_INLINE __m512 lvq_cvt16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }

/* Sum of 16 uint32 lanes into 64 bits. */
FK_AVX512_INLINE uint64_t lvq_hsum_u32_512(__m512i v) {
    const __m512i z = _mm512_setzero_si512();
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_unpacklo_epi32(v, z), _mm512_unpackhi_epi32(v, z)));
}

/* Norm sums of up to 64 code bytes: Σc by vpsadbw (8 × u64), Σc² by in-lane unpacking to
 * 16 bits and vpmaddwd (16 × u32; a lane gains <= 4·255² per call). */
FK_AVX512_INLINE void lvq8_norm64(__m512i v, __m512i *ns, __m512i *nss) {
    const __m512i z = _mm512_setzero_si512();
    *ns = _mm512_add_epi64(*ns, _mm512_sad_epu8(v, z));
    __m512i lo = _mm512_unpacklo_epi8(v, z), hi = _mm512_unpackhi_epi8(v, z);
    *nss = _mm512_add_epi32(*nss, _mm512_add_epi32(_mm512_madd_epi16(lo, lo), _mm512_madd_epi16(hi, hi)));
}

/* 8-bit: 4 × (16 bytes -> 16 int32 -> 16 floats, FMA) per 64 dimensions; the norm sums on the
 * 64 bytes at once. The last 1..63 dimensions: up to 4 masked 16-lane steps and one masked
 * 64-byte load for the norm. */
FK_AVX512_INLINE lvq_sums lvq8_sums_avx512(const float *q, const uint8_t *c, size_t d, const int NORM) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512i ns = _mm512_setzero_si512(), nss = ns;   /* ns: 8 × u64; nss: 16 × u32 */
    size_t i = 0;
    for (; i + 64 <= d; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), lvq_cvt16(_mm_loadu_si128((const __m128i *)(const void *)(c + i))), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), lvq_cvt16(_mm_loadu_si128((const __m128i *)(const void *)(c + i + 16))), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 32), lvq_cvt16(_mm_loadu_si128((const __m128i *)(const void *)(c + i + 32))), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 48), lvq_cvt16(_mm_loadu_si128((const __m128i *)(const void *)(c + i + 48))), a3);
        if (NORM) lvq8_norm64(_mm512_loadu_si512((const void *)(c + i)), &ns, &nss);
    }
    if (i < d) {
        const size_t r = d - i;
#define LVQ8_TAIL(ACC, K)                                                                    \
        if (r > (K)) {                                                                       \
            const __mmask16 m = fk_m16(r - (K));                                            \
            ACC = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i + (K)),                     \
                                  lvq_cvt16(_mm_maskz_loadu_epi8(m, (const void *)(c + i + (K)))), ACC); \
        }
        LVQ8_TAIL(a0, 0)
        LVQ8_TAIL(a1, 16)
        LVQ8_TAIL(a2, 32)
        LVQ8_TAIL(a3, 48)
#undef LVQ8_TAIL
        if (NORM) lvq8_norm64(_mm512_maskz_loadu_epi8(fk_m64(r), (const void *)(c + i)), &ns, &nss);
    }
    lvq_sums t;
    t.qc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    t.cs = 0; t.css = 0;
    if (NORM) {
        t.cs = (uint64_t)_mm512_reduce_add_epi64(ns);
        t.css = lvq_hsum_u32_512(nss);
    }
    return t;
}

/* One block of 32 dimensions of 4-bit codes at CP (16 bytes, low nibble first) and, for 4x8
 * (TWO), the residual bytes at RP; `rem` (1..32) dimensions are real: the block's bytes past
 * them are not read, and the high nibble of the last byte of an odd block (the pad nibble) is
 * cleared. Called with rem = 32 the masks are all ones and fold away. The nibbles are
 * interleaved back into dimension order (vpunpck{l,h}bw of lo, hi) and widened to 2 × 16
 * int32 lanes. Norm sums: for 4-bit on the nibble bytes (Σc by vpsadbw of lo + hi, Σc² by
 * vpmaddubsw, c <= 15, then vpmaddwd with ones); for 4x8 per int32 lane of C = 255·c + r
 * (Σ C, and Σ C² by vpmaddwd of C with itself: C < 2^15). */
FK_AVX512_INLINE void lvq4_block_avx512(const float *qp, const uint8_t *cp, const uint8_t *rp, size_t rem,
                                         const int NORM, const int TWO, __m512 *acc0, __m512 *acc1,
                                         __m512i *ns, __m512i *nss, __m128i *ns4, __m128i *nss4) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i v = _mm_maskz_loadu_epi8(fk_m16((rem + 1) / 2), (const void *)cp);
    __m128i lo = _mm_and_si128(v, m4);
    __m128i hi = _mm_maskz_mov_epi8(fk_m16(rem / 2), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    __m512i c0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
    __m512i c1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
    const __mmask16 k0 = fk_m16(rem), k1 = fk_m16(rem > 16 ? rem - 16 : 0);
    if (TWO) {
        /* C = 255·c + r = (c << 8) − c + r */
        c0 = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(c0, 8), c0),
                              _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k0, (const void *)rp)));
        c1 = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(c1, 8), c1),
                              _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k1, (const void *)(rp + 16))));
        if (NORM) {
            *ns = _mm512_add_epi32(*ns, _mm512_add_epi32(c0, c1));
            *nss = _mm512_add_epi32(*nss, _mm512_add_epi32(_mm512_madd_epi16(c0, c0), _mm512_madd_epi16(c1, c1)));
        }
    } else if (NORM) {
        *ns4 = _mm_add_epi64(*ns4, _mm_sad_epu8(_mm_add_epi8(lo, hi), _mm_setzero_si128()));
        __m128i sq = _mm_add_epi16(_mm_maddubs_epi16(lo, lo), _mm_maddubs_epi16(hi, hi));
        *nss4 = _mm_add_epi32(*nss4, _mm_madd_epi16(sq, _mm_set1_epi16(1)));
    }
    *acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, qp), _mm512_cvtepi32_ps(c0), *acc0);
    *acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, qp + 16), _mm512_cvtepi32_ps(c1), *acc1);
}

/* 4-bit codes (TWO = 0) or the two-level 4x8 codes (TWO = 1), 64 dimensions a step (two
 * blocks, 4 accumulators). For 4x8 a lane of Σ C² gains up to 4·4080² per step, so it is
 * flushed to 64 bits every 32 steps (2048 dimensions; the tail adds at most one step more). */
FK_AVX512_INLINE lvq_sums lvq4_sums_generic_avx512(const float *q, const uint8_t *c, size_t d,
                                                     const int NORM, const int TWO) {
    const uint8_t *r = c + (d + 1) / 2;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512i ns = _mm512_setzero_si512(), nss = ns;
    __m128i ns4 = _mm_setzero_si128(), nss4 = ns4;
    uint64_t css = 0;
    unsigned steps = 0;
    size_t i = 0;
    for (; i + 64 <= d; i += 64) {
        lvq4_block_avx512(q + i, c + i / 2, r + i, 32, NORM, TWO, &a0, &a1, &ns, &nss, &ns4, &nss4);
        lvq4_block_avx512(q + i + 32, c + i / 2 + 16, r + i + 32, 32, NORM, TWO, &a2, &a3, &ns, &nss, &ns4, &nss4);
        if (NORM && TWO && ++steps == 32) { css += lvq_hsum_u32_512(nss); nss = _mm512_setzero_si512(); steps = 0; }
    }
    if (i + 32 <= d) {
        lvq4_block_avx512(q + i, c + i / 2, r + i, 32, NORM, TWO, &a0, &a1, &ns, &nss, &ns4, &nss4);
        i += 32;
    }
    if (i < d) lvq4_block_avx512(q + i, c + i / 2, r + i, d - i, NORM, TWO, &a2, &a3, &ns, &nss, &ns4, &nss4);
    const int WIDE = NORM && TWO;
    return lvq4_result(_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))), NORM, TWO,
                       WIDE ? lvq_hsum_u32_512(ns) : 0, WIDE ? css + lvq_hsum_u32_512(nss) : 0, ns4, nss4);
}
LVQ4_SUMS(avx512, FK_AVX512_INLINE)

LVQ_DEFINE_SIMD(lvq8, FK_LVQ8, avx512, FK_AVX512)
LVQ_DEFINE_SIMD(lvq4, FK_LVQ4, avx512, FK_AVX512)
LVQ_DEFINE_SIMD(lvq4x8, FK_LVQ4X8, avx512, FK_AVX512)
#endif /* FK_X86 */

/* ======================================================================================
 * Dispatch: the level is kernels.c's (decided once, changed only by fk_set_simd_level).
 * ====================================================================================== */
extern int fk_simd_active __attribute__((visibility("hidden")));
static inline int lvq_simd(void) {
    int l = __atomic_load_n(&fk_simd_active, __ATOMIC_RELAXED);
    return l >= 0 ? l : fk_simd_level();
}

#define LVQ_BATCH_BY_KIND(SUF)                                                               \
    static void lvq_batch_##SUF(int kind, int metric, const float *q, float qsum, float qnorm, \
                                const void *base, size_t n, size_t d, size_t stride, float *out) { \
        switch (kind) {                                                                      \
        case FK_LVQ8: lvq8_batch_##SUF(metric, q, qsum, qnorm, base, n, d, stride, out); return; \
        case FK_LVQ4: lvq4_batch_##SUF(metric, q, qsum, qnorm, base, n, d, stride, out); return; \
        case FK_LVQ4X8: lvq4x8_batch_##SUF(metric, q, qsum, qnorm, base, n, d, stride, out); return; \
        default: return;                                                                     \
        }                                                                                    \
    }

static const fk_lvq_kernel_table lvq_table_scalar = {0, fk_lvq8_dot_scalar, fk_lvq4_dot_scalar,
                                                     fk_lvq4x8_dot_scalar, fk_lvq_batch_scalar};
#if FK_X86
LVQ_BATCH_BY_KIND(avx2)
LVQ_BATCH_BY_KIND(avx512)
static const fk_lvq_kernel_table lvq_table_avx2 = {1, lvq8_dot_avx2, lvq4_dot_avx2, lvq4x8_dot_avx2, lvq_batch_avx2};
static const fk_lvq_kernel_table lvq_table_avx512 = {2, lvq8_dot_avx512, lvq4_dot_avx512, lvq4x8_dot_avx512,
                                                     lvq_batch_avx512};
#define LVQ_DISPATCH(NAME)                                                                   \
    float fk_##NAME##_dot(const float *q, float qsum, const void *code, size_t d, float *norm) { \
        switch (lvq_simd()) {                                                                \
        case 2: return NAME##_dot_avx512(q, qsum, code, d, norm);                            \
        case 1: return NAME##_dot_avx2(q, qsum, code, d, norm);                              \
        default: return fk_##NAME##_dot_scalar(q, qsum, code, d, norm);                      \
        }                                                                                    \
    }
#else
#define LVQ_DISPATCH(NAME)                                                                   \
    float fk_##NAME##_dot(const float *q, float qsum, const void *code, size_t d, float *norm) { \
        return fk_##NAME##_dot_scalar(q, qsum, code, d, norm);                               \
    }
#endif
LVQ_DISPATCH(lvq8)
LVQ_DISPATCH(lvq4)
LVQ_DISPATCH(lvq4x8)

void fk_lvq_batch(int kind, int metric, const float *q, float qsum, float qnorm,
                  const void *base, size_t n, size_t d, size_t stride, float *out) {
#if FK_X86
    switch (lvq_simd()) {
    case 2: lvq_batch_avx512(kind, metric, q, qsum, qnorm, base, n, d, stride, out); return;
    case 1: lvq_batch_avx2(kind, metric, q, qsum, qnorm, base, n, d, stride, out); return;
    default: break;
    }
#endif
    fk_lvq_batch_scalar(kind, metric, q, qsum, qnorm, base, n, d, stride, out);
}

const fk_lvq_kernel_table *fk_lvq_kernels_at_level(int level) {
    int m = fk_simd_max_level();
    if (level > m) level = m;
#if FK_X86
    if (level >= 2) return &lvq_table_avx512;
    if (level == 1) return &lvq_table_avx2;
#endif
    return &lvq_table_scalar;
}

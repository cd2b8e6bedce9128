/*
 * Fathom distance kernels: portable scalar bodies, AVX2+FMA bodies, and run-time dispatch.
 * The contract is include/ckernels.h; docs/kernels.md describes the design and the figures.
 *
 *  - No global -mavx2/-mfma: the AVX2 bodies carry __attribute__((target("avx2,fma"))), so the
 *    rest of the package (and the scalar bodies) keep the baseline x86-64 code generation.
 *  - Dispatch is decided once (CPUID leaf 1/7 + XGETBV: the OS must save YMM state) and stored
 *    in static function pointers. The pointers start at "resolve" stubs, so a call that comes
 *    before the constructor still works; the constructor resolves them at load time.
 *  - Float pointers need their natural 4-byte alignment only; byte pointers none. All SIMD
 *    loads are unaligned loads; tails use masked or overlapping loads (never read outside
 *    [p, p + d)).
 *  - Nothing allocates.
 */
#include "ckernels.h"
#include "fk_simd.h"
#include <stdlib.h>
#include <string.h>

#if FK_X86
#include <cpuid.h>
#endif

/* ======================================================================================
 * Scalar bodies. Float kernels keep 4 independent partial sums (shorter dependency chains;
 * on machines without AVX2 this is the only path). Integer kernels are exact.
 * ====================================================================================== */

/* u8 and i8 differ only in the element type (and the dot's result type). */
#define FK_BYTES_SCALAR(SUF, T, DOT_RT)                                                      \
    static inline uint32_t l2sq_##SUF##_scalar_body(const T *a, const T *b, size_t d) {      \
        uint32_t s = 0;                                                                      \
        for (size_t i = 0; i < d; i++) { int32_t t = (int32_t)a[i] - (int32_t)b[i]; s += (uint32_t)(t * t); } \
        return s;                                                                            \
    }                                                                                        \
    static inline DOT_RT dot_##SUF##_scalar_body(const T *a, const T *b, size_t d) {         \
        DOT_RT s = 0;                                                                        \
        for (size_t i = 0; i < d; i++) s += (DOT_RT)a[i] * (DOT_RT)b[i];                     \
        return s;                                                                            \
    }
FK_BYTES_SCALAR(u8, uint8_t, uint32_t)
FK_BYTES_SCALAR(i8, int8_t, int32_t)

/* A float query against float (BT = float) or byte vectors: 4 partial sums. */
#define FK_FLOAT_SCALAR(NAME, BT, L2)                                                        \
    static inline float NAME##_scalar_body(const float *q, const BT *b, size_t d) {           \
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                 \
        size_t i = 0;                                                                         \
        for (; i + 4 <= d; i += 4) {                                                          \
            float x0 = (float)b[i], x1 = (float)b[i + 1], x2 = (float)b[i + 2], x3 = (float)b[i + 3]; \
            if (L2) {                                                                         \
                x0 = q[i] - x0; x1 = q[i + 1] - x1; x2 = q[i + 2] - x2; x3 = q[i + 3] - x3;   \
                s0 += x0 * x0; s1 += x1 * x1; s2 += x2 * x2; s3 += x3 * x3;                   \
            } else {                                                                          \
                s0 += q[i] * x0; s1 += q[i + 1] * x1; s2 += q[i + 2] * x2; s3 += q[i + 3] * x3; \
            }                                                                                 \
        }                                                                                     \
        for (; i < d; i++) {                                                                  \
            float x = (float)b[i];                                                            \
            if (L2) { x = q[i] - x; s0 += x * x; } else { s0 += q[i] * x; }                   \
        }                                                                                     \
        return (s0 + s1) + (s2 + s3);                                                         \
    }
FK_FLOAT_SCALAR(l2sq_f32, float, 1)
FK_FLOAT_SCALAR(dot_f32, float, 0)
FK_FLOAT_SCALAR(l2sq_f32_u8, uint8_t, 1)
FK_FLOAT_SCALAR(dot_f32_u8, uint8_t, 0)
FK_FLOAT_SCALAR(l2sq_f32_i8, int8_t, 1)
FK_FLOAT_SCALAR(dot_f32_i8, int8_t, 0)

/* The kernel list, FK_KERNELS (X-macro: name, return type, query element type, vector
 * element type), is in ckernels.h. */

/* Public scalar entry points (fk_*_scalar) and scalar batch loops (fk_*_batch_scalar). */
#define FK_DEFINE_SCALAR(NAME, RT, QT, BT)                                                   \
    RT fk_##NAME##_scalar(const QT *q, const BT *b, size_t d) { return NAME##_scalar_body(q, b, d); } \
    void fk_##NAME##_batch_scalar(const QT *q, const void *base, size_t n, size_t d,         \
                                  size_t stride, float *out) {                               \
        const unsigned char *p = (const unsigned char *)base;                                \
        for (size_t j = 0; j < n; j++, p += stride)                                          \
            out[j] = (float)NAME##_scalar_body(q, (const BT *)(const void *)p, d);           \
    }
FK_KERNELS(FK_DEFINE_SCALAR)

/* ======================================================================================
 * AVX2 + FMA bodies (x86 only). The target attributes, horizontal sums and AVX-512 masks
 * are in fk_simd.h (shared with lvq.c).
 * ====================================================================================== */
#if FK_X86

/* Float lane masks: loadu(fk_mask_first + 8 - r) keeps lanes [0, r);
 * loadu(fk_mask_last + r) keeps lanes [8 - r, 8). */
static const int32_t fk_mask_first[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static const int32_t fk_mask_last[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
/* Byte mask: loadu(fk_bmask_last + r) keeps bytes [32 - r, 32). */
static const uint8_t fk_bmask_last[64] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};

#define FK_LOAD256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define FK_LOAD512(p) _mm512_loadu_si512((const void *)(p))

/* The main loop of every float-accumulating body, at any width W (floats a vector): 4
 * accumulators s0..s3, 4·W elements a step, then the 1..3 whole vectors left to separate
 * accumulators. LQ loads W query floats, LB the W vector elements as floats; STEP(q, x, acc).
 * Uses (and advances) `i`; leaves the last < W elements to the caller's tail. */
#define FK_ACC4_LOOP(W, Q, B, LQ, LB, STEP)                                                  \
    for (; i + 4 * (W) <= d; i += 4 * (W)) {                                                 \
        s0 = STEP(LQ((Q) + i), LB((B) + i), s0);                                             \
        s1 = STEP(LQ((Q) + i + (W)), LB((B) + i + (W)), s1);                                 \
        s2 = STEP(LQ((Q) + i + 2 * (W)), LB((B) + i + 2 * (W)), s2);                         \
        s3 = STEP(LQ((Q) + i + 3 * (W)), LB((B) + i + 3 * (W)), s3);                         \
    }                                                                                        \
    if (i + (W) <= d) {                                                                      \
        s0 = STEP(LQ((Q) + i), LB((B) + i), s0); i += (W);                                   \
        if (i + (W) <= d) {                                                                  \
            s1 = STEP(LQ((Q) + i), LB((B) + i), s1); i += (W);                               \
            if (i + (W) <= d) { s2 = STEP(LQ((Q) + i), LB((B) + i), s2); i += (W); }         \
        }                                                                                    \
    }

/* The main loop of the byte bodies at any width W (bytes a vector): 2 accumulators s0, s1,
 * 2·W bytes a step, then one whole vector left to s0. LD(p) loads a vector (for i8 L2 with
 * the sign bit flipped); STEP(x, y, acc). Uses (and advances) `i`; leaves the last < W bytes
 * to the caller's tail. */
#define FK_ACC2_BYTES_LOOP(W, LD, STEP)                                                      \
    for (; i + 2 * (W) <= d; i += 2 * (W)) {                                                 \
        s0 = STEP(LD(a + i), LD(b + i), s0);                                                 \
        s1 = STEP(LD(a + i + (W)), LD(b + i + (W)), s1);                                     \
    }                                                                                        \
    if (i + (W) <= d) { s0 = STEP(LD(a + i), LD(b + i), s0); i += (W); }

FK_AVX2_INLINE __m256 step_l2_ps(__m256 x, __m256 y, __m256 acc) {
    __m256 t = _mm256_sub_ps(x, y);
    return _mm256_fmadd_ps(t, t, acc);
}
FK_AVX2_INLINE __m256 step_dot_ps(__m256 x, __m256 y, __m256 acc) { return _mm256_fmadd_ps(x, y, acc); }

/* ---- float32 x float32: 4 accumulators, 32 floats a step; the 1..3 whole vectors left go
 * to separate accumulators, the last 1..7 floats through a masked load (vmaskmovps does not
 * touch masked-off memory). ---- */
#define FK_F32_BODY(NAME, STEP)                                                              \
    FK_AVX2_INLINE float NAME##_avx2_body(const float *a, const float *b, size_t d) {        \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
        size_t i = 0;                                                                        \
        FK_ACC4_LOOP(8, a, b, _mm256_loadu_ps, _mm256_loadu_ps, STEP)                        \
        if (i < d) {                                                                         \
            __m256i m = FK_LOAD256(fk_mask_first + 8 - (d - i));                             \
            s3 = STEP(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s3);       \
        }                                                                                    \
        return fk_hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));      \
    }
FK_F32_BODY(l2sq_f32, step_l2_ps)
FK_F32_BODY(dot_f32, step_dot_ps)

/* ---- u8 / i8 squared L2: |a-b| as bytes (max - min), widened to 16 bits by unpacking with
 * zero, squared and pair-summed to 32 bits by vpmaddwd (<= 2*255^2 per lane per step). i8 is
 * mapped to u8 by flipping the sign bit (x ^ 0x80 = x + 128), which keeps every difference.
 * 64 bytes a step; the last 1..31 bytes through an overlapping load of the final 32 bytes
 * with the already-counted bytes neutralised (d >= 32), or the scalar loop (d < 32). ---- */
/* The step at a width of BITS (256 or 512; P the intrinsics' prefix), for both levels. */
#define FK_STEP_L2_BYTES(NAME, INLINE, V, P, BITS)                                           \
    INLINE V NAME(V x, V y, V acc) {                                                         \
        const V z = P##_setzero_si##BITS();                                                  \
        V t = P##_sub_epi8(P##_max_epu8(x, y), P##_min_epu8(x, y));                          \
        V lo = P##_unpacklo_epi8(t, z), hi = P##_unpackhi_epi8(t, z);                        \
        return P##_add_epi32(acc, P##_add_epi32(P##_madd_epi16(lo, lo), P##_madd_epi16(hi, hi))); \
    }
FK_STEP_L2_BYTES(step_l2_u8, FK_AVX2_INLINE, __m256i, _mm256, 256)

#define FK_L2_BYTES_BODY(NAME, T, FLIP)                                                      \
    FK_AVX2_INLINE __m256i NAME##_ld(const T *p) {                                           \
        const __m256i v = FK_LOAD256(p);                                                     \
        return FLIP ? _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)) : v;                 \
    }                                                                                        \
    FK_AVX2_INLINE uint32_t NAME##_avx2_body(const T *a, const T *b, size_t d) {             \
        if (d < 32) return NAME##_scalar_body(a, b, d);                                      \
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;                                        \
        size_t i = 0;                                                                        \
        FK_ACC2_BYTES_LOOP(32, NAME##_ld, step_l2_u8)                                        \
        if (i < d) {                                                                         \
            __m256i m = FK_LOAD256(fk_bmask_last + (d - i));                                 \
            __m256i x = NAME##_ld(a + d - 32), y = NAME##_ld(b + d - 32);                    \
            /* already-counted bytes: y := x, so they add 0 */                               \
            y = _mm256_blendv_epi8(x, y, m);                                                 \
            s1 = step_l2_u8(x, y, s1);                                                       \
        }                                                                                    \
        return fk_hsum_epi32(_mm256_add_epi32(s0, s1));                                      \
    }
FK_L2_BYTES_BODY(l2sq_u8, uint8_t, 0)
FK_L2_BYTES_BODY(l2sq_i8, int8_t, 1)

/* ---- u8 dot: both sides widened to 16 bits (unpack with zero), vpmaddwd. Products reach
 * 65025 and pair sums 130050: exact in 32 bits (the lanes are summed as uint32). ---- */
FK_AVX2_INLINE __m256i step_dot_u8(__m256i x, __m256i y, __m256i acc) {
    const __m256i z = _mm256_setzero_si256();
    __m256i lo = _mm256_madd_epi16(_mm256_unpacklo_epi8(x, z), _mm256_unpacklo_epi8(y, z));
    __m256i hi = _mm256_madd_epi16(_mm256_unpackhi_epi8(x, z), _mm256_unpackhi_epi8(y, z));
    return _mm256_add_epi32(acc, _mm256_add_epi32(lo, hi));
}

/* ---- i8 dot: sign-extended to 16 bits (vpmovsxbw), vpmaddwd. (-128)*(-128)*2 = 32768 fits
 * in 32 bits; the vpmaddubsw sign trick would saturate/overflow there, so it is not used. ---- */
FK_AVX2_INLINE __m256i step_dot_i8(__m256i x, __m256i y, __m256i acc) {
    __m256i xl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
    __m256i xh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
    __m256i yl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(y));
    __m256i yh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(y, 1));
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(xl, yl), _mm256_madd_epi16(xh, yh)));
}

#define FK_DOT_BYTES_BODY(NAME, T, RT, STEP)                                                 \
    FK_AVX2_INLINE RT NAME##_avx2_body(const T *a, const T *b, size_t d) {                   \
        if (d < 32) return NAME##_scalar_body(a, b, d);                                      \
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;                                        \
        size_t i = 0;                                                                        \
        FK_ACC2_BYTES_LOOP(32, FK_LOAD256, STEP)                                             \
        if (i < d) {                                                                         \
            /* already-counted bytes of a zeroed, so their products are 0 */                 \
            __m256i m = FK_LOAD256(fk_bmask_last + (d - i));                                 \
            __m256i x = _mm256_and_si256(FK_LOAD256(a + d - 32), m);                         \
            s1 = STEP(x, FK_LOAD256(b + d - 32), s1);                                        \
        }                                                                                    \
        return (RT)fk_hsum_epi32(_mm256_add_epi32(s0, s1));                                  \
    }
FK_DOT_BYTES_BODY(dot_u8, uint8_t, uint32_t, step_dot_u8)
FK_DOT_BYTES_BODY(dot_i8, int8_t, int32_t, step_dot_i8)

/* ---- mixed float query x byte vector: 8 bytes -> 8 int32 (vpmovzxbd / vpmovsxbd straight
 * from memory) -> 8 floats (exact), then FMA. 4 accumulators, 32 elements a step; the last
 * 1..7 through an overlapping 8-element load with the counted lanes neutralised (d >= 8),
 * or the scalar loop (d < 8). ---- */
#define FK_MIXED_BODY(NAME, T, CVT, L2)                                                      \
    FK_AVX2_INLINE __m256 NAME##_load8(const T *p) {                                         \
        return _mm256_cvtepi32_ps(CVT(_mm_loadl_epi64((const __m128i *)(const void *)p)));   \
    }                                                                                        \
    FK_AVX2_INLINE __m256 NAME##_step(__m256 q, __m256 x, __m256 acc) {                      \
        return L2 ? step_l2_ps(q, x, acc) : step_dot_ps(q, x, acc);                          \
    }                                                                                        \
    FK_AVX2_INLINE float NAME##_avx2_body(const float *q, const T *b, size_t d) {            \
        if (d < 8) return NAME##_scalar_body(q, b, d);                                       \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
        size_t i = 0;                                                                        \
        FK_ACC4_LOOP(8, q, b, _mm256_loadu_ps, NAME##_load8, NAME##_step)                    \
        if (i < d) {                                                                         \
            __m256 m = _mm256_loadu_ps((const float *)(const void *)(fk_mask_last + (d - i))); \
            __m256 qv = _mm256_loadu_ps(q + d - 8), xv = NAME##_load8(b + d - 8);            \
            /* L2: counted lanes get q := x (difference 0); dot: counted lanes get q := 0 */ \
            qv = L2 ? _mm256_blendv_ps(xv, qv, m) : _mm256_and_ps(qv, m);                    \
            s3 = NAME##_step(qv, xv, s3);                                                    \
        }                                                                                    \
        return fk_hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));      \
    }
FK_MIXED_BODY(l2sq_f32_u8, uint8_t, _mm256_cvtepu8_epi32, 1)
FK_MIXED_BODY(dot_f32_u8, uint8_t, _mm256_cvtepu8_epi32, 0)
FK_MIXED_BODY(l2sq_f32_i8, int8_t, _mm256_cvtepi8_epi32, 1)
FK_MIXED_BODY(dot_f32_i8, int8_t, _mm256_cvtepi8_epi32, 0)

/* Out-of-line single-vector functions and batch loops of one level (SUF: avx2 or avx512,
 * ATTR its target), the body (NAME##_##SUF##_body) inlined in the loop. The batch loop
 * prefetches the first two cache lines of the vector two ahead. */
#define FK_DEFINE_LEVEL(SUF, ATTR, NAME, RT, QT, BT)                                         \
    ATTR static RT NAME##_##SUF(const QT *q, const BT *b, size_t d) { return NAME##_##SUF##_body(q, b, d); } \
    ATTR static void NAME##_batch_##SUF(const QT *q, const void *base, size_t n, size_t d,   \
                                        size_t stride, float *out) {                         \
        const char *p = (const char *)base;                                                  \
        for (size_t j = 0; j < n; j++, p += stride) {                                        \
            FK_PREFETCH_AHEAD(p, j, n, stride, 2);                                           \
            out[j] = (float)NAME##_##SUF##_body(q, (const BT *)(const void *)p, d);          \
        }                                                                                    \
    }
#define FK_DEFINE_AVX2(NAME, RT, QT, BT) FK_DEFINE_LEVEL(avx2, FK_AVX2, NAME, RT, QT, BT)
FK_KERNELS(FK_DEFINE_AVX2)

/* The benchmark reference: the simplest AVX2 loop (one accumulator, 8 floats a step, FMA,
 * scalar tail). */
FK_AVX2 static float l2sq_f32_plain_avx2(const float *a, const float *b, size_t d) {
    __m256 s = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s = _mm256_fmadd_ps(t, t, s);
    }
    float r = fk_hsum_ps(s);
    for (; i < d; i++) { float t = a[i] - b[i]; r += t * t; }
    return r;
}

/* ======================================================================================
 * AVX-512 bodies (x86 only): AVX512F + BW + VL + DQ, and AVX512_VNNI for the integer dot
 * kernels. Same structure as the AVX2 bodies at twice the width; every tail is one masked
 * load (vmovups / vmovdqu8 with a zeroing mask: masked-off bytes are not read, so no read
 * leaves [p, p + d)), and the zeroed lanes add nothing to any sum.
 * ====================================================================================== */
FK_AVX512_INLINE __m512 step_l2_ps512(__m512 x, __m512 y, __m512 acc) {
    __m512 t = _mm512_sub_ps(x, y);
    return _mm512_fmadd_ps(t, t, acc);
}
FK_AVX512_INLINE __m512 step_dot_ps512(__m512 x, __m512 y, __m512 acc) { return _mm512_fmadd_ps(x, y, acc); }

/* ---- float query x float or byte vector: 4 accumulators, 64 elements a step; the 1..3
 * whole vectors left go to separate accumulators, the last 1..15 elements through one masked
 * load of each side (masked-off lanes are 0 on both: they add 0 to L2 and to dot). LOADB
 * loads 16 vector elements as floats, TAILB(m, p) the lanes m of them. ---- */
#define FK_FLOAT_BODY512(NAME, BT, LOADB, TAILB, STEP)                                       \
    FK_AVX512_INLINE float NAME##_avx512_body(const float *a, const BT *b, size_t d) {       \
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
        size_t i = 0;                                                                        \
        FK_ACC4_LOOP(16, a, b, _mm512_loadu_ps, LOADB, STEP)                                 \
        if (i < d) {                                                                         \
            const __mmask16 m = fk_m16(d - i);                                               \
            s3 = STEP(_mm512_maskz_loadu_ps(m, a + i), TAILB(m, b + i), s3);                 \
        }                                                                                    \
        return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))); \
    }
FK_FLOAT_BODY512(l2sq_f32, float, _mm512_loadu_ps, _mm512_maskz_loadu_ps, step_l2_ps512)
FK_FLOAT_BODY512(dot_f32, float, _mm512_loadu_ps, _mm512_maskz_loadu_ps, step_dot_ps512)

/* Mixed: 16 bytes -> 16 int32 (vpmovzxbd / vpmovsxbd) -> 16 floats (exact), then FMA. */
#define FK_MIXED_BODY512(NAME, T, CVT, L2)                                                   \
    FK_AVX512_INLINE __m512 NAME##_load16(const T *p) {                                      \
        return _mm512_cvtepi32_ps(CVT(_mm_loadu_si128((const __m128i *)(const void *)p)));   \
    }                                                                                        \
    FK_AVX512_INLINE __m512 NAME##_tail16(__mmask16 m, const T *p) {                         \
        return _mm512_cvtepi32_ps(CVT(_mm_maskz_loadu_epi8(m, (const void *)p)));            \
    }                                                                                        \
    FK_AVX512_INLINE __m512 NAME##_step512(__m512 q, __m512 x, __m512 acc) {                 \
        return L2 ? step_l2_ps512(q, x, acc) : step_dot_ps512(q, x, acc);                    \
    }                                                                                        \
    FK_FLOAT_BODY512(NAME, T, NAME##_load16, NAME##_tail16, NAME##_step512)
FK_MIXED_BODY512(l2sq_f32_u8, uint8_t, _mm512_cvtepu8_epi32, 1)
FK_MIXED_BODY512(dot_f32_u8, uint8_t, _mm512_cvtepu8_epi32, 0)
FK_MIXED_BODY512(l2sq_f32_i8, int8_t, _mm512_cvtepi8_epi32, 1)
FK_MIXED_BODY512(dot_f32_i8, int8_t, _mm512_cvtepi8_epi32, 0)

/* ---- u8 / i8 squared L2: as the AVX2 body (|a-b| = max - min as bytes, unpacked with zero
 * to 16 bits, vpmaddwd), 64 bytes a vector, 128 a step, 2 accumulators; the tail is one
 * masked 64-byte load of each side (masked-off bytes are 0 on both sides; for i8 both become
 * 0x80 after the sign flip: difference 0). Lanes wrap mod 2^32 like the scalar sum. ---- */
FK_STEP_L2_BYTES(step_l2_u8_512, FK_AVX512_INLINE, __m512i, _mm512, 512)

#define FK_L2_BYTES_BODY512(NAME, T, FLIP)                                                   \
    FK_AVX512_INLINE __m512i NAME##_flip512(__m512i v) {                                     \
        return FLIP ? _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)) : v;                 \
    }                                                                                        \
    FK_AVX512_INLINE __m512i NAME##_ld512(const T *p) { return NAME##_flip512(FK_LOAD512(p)); } \
    FK_AVX512_INLINE uint32_t NAME##_avx512_body(const T *a, const T *b, size_t d) {         \
        __m512i s0 = _mm512_setzero_si512(), s1 = s0;                                        \
        size_t i = 0;                                                                        \
        FK_ACC2_BYTES_LOOP(64, NAME##_ld512, step_l2_u8_512)                                 \
        if (i < d) {                                                                         \
            const __mmask64 m = fk_m64(d - i);                                               \
            __m512i x = NAME##_flip512(_mm512_maskz_loadu_epi8(m, (const void *)(a + i)));   \
            __m512i y = NAME##_flip512(_mm512_maskz_loadu_epi8(m, (const void *)(b + i)));   \
            s1 = step_l2_u8_512(x, y, s1);                                                   \
        }                                                                                    \
        return (uint32_t)_mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));                  \
    }
FK_L2_BYTES_BODY512(l2sq_u8, uint8_t, 0)
FK_L2_BYTES_BODY512(l2sq_i8, int8_t, 1)

#define FK_DEFINE_AVX512(NAME, RT, QT, BT) FK_DEFINE_LEVEL(avx512, FK_AVX512, NAME, RT, QT, BT)
FK_KERNELS_BASE(FK_DEFINE_AVX512)

/* ---- u8 / i8 dot with VNNI. vpdpbusd multiplies unsigned bytes by signed bytes (each
 * product fits 16 bits: 255·(-128) = -32640) and adds every group of 4 to a 32-bit lane.
 * One side is moved by 128 so it fits (x ^ 0x80 = x - 128 for u8, = x + 128 for i8):
 *   u8:  Σ q·b = Σ q·(b - 128) + 128·Σq     vpdpbusd(q unsigned, b ^ 0x80 signed)
 *   i8:  Σ q·b = Σ (b + 128)·q - 128·Σq     vpdpbusd(b ^ 0x80 unsigned, q signed)
 * Σq is a vpdpbusd against ones on the other side. vpdpbusd (not the saturating vpdpbusds)
 * wraps, like every lane add here, so the results equal the scalar sums mod 2^32 for every
 * d: bit-identical to the scalar bodies. The batch loops compute 128·Σq once per query
 * (their own loops, not FK_DEFINE_LEVEL's, for that). Masked-off tail bytes are 0 on the
 * query side, so their products are 0. ---- */
#define FK_DPB_U8(acc, x, y) _mm512_dpbusd_epi32((acc), (x), (y))   /* x = query (u8), y = b ^ 0x80 */
#define FK_DPB_I8(acc, x, y) _mm512_dpbusd_epi32((acc), (y), (x))   /* y = b ^ 0x80 (u8), x = query (i8) */

#define FK_DOT_BYTES_VNNI(NAME, T, RT, DPB, NEG)                                             \
    /* Σ of the shifted products; with QSUM also Σq (mod 2^32) into *qsum */                 \
    FK_VNNI_INLINE uint32_t NAME##_vnni_core(const T *q, const T *b, size_t d, const int QSUM, uint32_t *qsum) { \
        const __m512i f = _mm512_set1_epi8((char)0x80), one = _mm512_set1_epi8(1);           \
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, t0 = s0, t1 = s0;                      \
        size_t i = 0;                                                                        \
        for (; i + 128 <= d; i += 128) {                                                     \
            __m512i x0 = _mm512_loadu_si512((const void *)(q + i));                          \
            __m512i x1 = _mm512_loadu_si512((const void *)(q + i + 64));                     \
            s0 = DPB(s0, x0, _mm512_xor_si512(_mm512_loadu_si512((const void *)(b + i)), f)); \
            s1 = DPB(s1, x1, _mm512_xor_si512(_mm512_loadu_si512((const void *)(b + i + 64)), f)); \
            if (QSUM) { t0 = DPB(t0, x0, one); t1 = DPB(t1, x1, one); }                      \
        }                                                                                    \
        if (i + 64 <= d) {                                                                   \
            __m512i x = _mm512_loadu_si512((const void *)(q + i));                           \
            s0 = DPB(s0, x, _mm512_xor_si512(_mm512_loadu_si512((const void *)(b + i)), f)); \
            if (QSUM) t0 = DPB(t0, x, one);                                                  \
            i += 64;                                                                         \
        }                                                                                    \
        if (i < d) {                                                                         \
            const __mmask64 m = fk_m64(d - i);                                               \
            __m512i x = _mm512_maskz_loadu_epi8(m, (const void *)(q + i));                   \
            __m512i y = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, (const void *)(b + i)), f); \
            s1 = DPB(s1, x, y);                                                              \
            if (QSUM) t1 = DPB(t1, x, one);                                                  \
        }                                                                                    \
        if (QSUM) *qsum = (uint32_t)_mm512_reduce_add_epi32(_mm512_add_epi32(t0, t1));       \
        return (uint32_t)_mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));                  \
    }                                                                                        \
    /* ±128·Σq mod 2^32, the term added to the core sum */                                   \
    FK_VNNI_INLINE uint32_t NAME##_vnni_corr(uint32_t qsum) {                                \
        uint32_t c = qsum << 7;                                                              \
        return NEG ? (uint32_t)0 - c : c;                                                    \
    }                                                                                        \
    FK_VNNI_INLINE uint32_t NAME##_vnni_qsum(const T *q, size_t d) {                         \
        const __m512i one = _mm512_set1_epi8(1);                                             \
        __m512i t = _mm512_setzero_si512();                                                  \
        for (size_t i = 0; i < d; i += 64)                                                   \
            t = DPB(t, _mm512_maskz_loadu_epi8(fk_m64(d - i), (const void *)(q + i)), one);  \
        return (uint32_t)_mm512_reduce_add_epi32(t);                                         \
    }                                                                                        \
    FK_VNNI_INLINE RT NAME##_avx512_body(const T *q, const T *b, size_t d) {                 \
        uint32_t qs = 0;                                                                     \
        uint32_t r = NAME##_vnni_core(q, b, d, 1, &qs);                                      \
        return (RT)(r + NAME##_vnni_corr(qs));                                               \
    }                                                                                        \
    FK_VNNI static RT NAME##_avx512(const T *q, const T *b, size_t d) { return NAME##_avx512_body(q, b, d); } \
    FK_VNNI static void NAME##_batch_avx512(const T *q, const void *base, size_t n, size_t d, \
                                            size_t stride, float *out) {                     \
        const uint32_t corr = NAME##_vnni_corr(NAME##_vnni_qsum(q, d));                      \
        const char *p = (const char *)base;                                                  \
        for (size_t j = 0; j < n; j++, p += stride) {                                        \
            FK_PREFETCH_AHEAD(p, j, n, stride, 2);                                           \
            uint32_t r = NAME##_vnni_core(q, (const T *)(const void *)p, d, 0, NULL);        \
            out[j] = (float)(RT)(r + corr);                                                  \
        }                                                                                    \
    }
FK_DOT_BYTES_VNNI(dot_u8, uint8_t, uint32_t, FK_DPB_U8, 0)
FK_DOT_BYTES_VNNI(dot_i8, int8_t, int32_t, FK_DPB_I8, 1)


/* CPUID: FMA (leaf 1 ECX bit 12), OSXSAVE (bit 27), AVX (bit 28); XCR0 bits 1|2 (the OS
 * saves XMM and YMM state); AVX2 (leaf 7 EBX bit 5) -> level 1.
 * Level 2 also needs AVX512F (leaf 7 EBX bit 16), AVX512DQ (17), AVX512BW (30), AVX512VL
 * (31) and XCR0 bits 5|6|7 (the OS saves the opmask registers and the upper halves of
 * ZMM0-15 and ZMM16-31). AVX512_VNNI (leaf 7 ECX bit 11) is reported in *vnni. */
static int fk_detect_level(int *vnni) {
    unsigned a, b, c, d;
    *vnni = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned need1 = (1u << 12) | (1u << 27) | (1u << 28);
    if ((c & need1) != need1) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 6u) != 6u) return 0;
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(b & (1u << 5))) return 0;
    const unsigned need7 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
    const unsigned xcr0_zmm = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7);
    if ((b & need7) != need7 || (xlo & xcr0_zmm) != xcr0_zmm) return 1;
    *vnni = (c & (1u << 11)) ? 1 : 0;
    return 2;
}
#else
static int fk_detect_level(int *vnni) { *vnni = 0; return 0; }
#endif /* FK_X86 */

/* ======================================================================================
 * Per-level tables and dispatch: one function pointer per entry point, set from a table.
 * ====================================================================================== */
#define FK_T_SCALAR(NAME, RT, QT, BT) .NAME = fk_##NAME##_scalar, .NAME##_batch = fk_##NAME##_batch_scalar,
static const fk_kernel_table fk_table_scalar = {.level = 0, .name = "scalar", FK_KERNELS(FK_T_SCALAR)};
#if FK_X86
#define FK_T_AVX2(NAME, RT, QT, BT) .NAME = NAME##_avx2, .NAME##_batch = NAME##_batch_avx2,
#define FK_T_AVX512(NAME, RT, QT, BT) .NAME = NAME##_avx512, .NAME##_batch = NAME##_batch_avx512,
static const fk_kernel_table fk_table_avx2 = {.level = 1, .name = "avx2+fma", FK_KERNELS(FK_T_AVX2)};
/* AVX-512 without VNNI: the integer dot kernels keep their AVX2 bodies. */
static const fk_kernel_table fk_table_avx512 = {.level = 2, .name = "avx512",
                                                FK_KERNELS_BASE(FK_T_AVX512) FK_KERNELS_IDOT(FK_T_AVX2)};
static const fk_kernel_table fk_table_avx512_vnni = {.level = 2, .name = "avx512+vnni", FK_KERNELS(FK_T_AVX512)};
#endif

/* What the CPU supports, detected once (racing detectors store the same values). */
static int fk_max = -1, fk_vnni = 0;
static int fk_max_level(void) {
    int m = __atomic_load_n(&fk_max, __ATOMIC_ACQUIRE);
    if (m < 0) {
        int v;
        m = fk_detect_level(&v);
        __atomic_store_n(&fk_vnni, v, __ATOMIC_RELAXED);
        __atomic_store_n(&fk_max, m, __ATOMIC_RELEASE);
    }
    return m;
}

static const fk_kernel_table *fk_table(int level) {
    int m = fk_max_level();
    if (level > m) level = m;
#if FK_X86
    if (level >= 2) return __atomic_load_n(&fk_vnni, __ATOMIC_RELAXED) ? &fk_table_avx512_vnni : &fk_table_avx512;
    if (level == 1) return &fk_table_avx2;
#endif
    return &fk_table_scalar;
}

/* The active level, read by lvq.c too (hidden: not part of the library's interface). */
__attribute__((visibility("hidden"))) int fk_simd_active = -1;
static const fk_kernel_table *fk_active_table = &fk_table_scalar;

#define FK_DECLARE_PTRS(NAME, RT, QT, BT)                                                    \
    typedef RT (*NAME##_fn)(const QT *, const BT *, size_t);                                 \
    typedef void (*NAME##_batch_fn)(const QT *, const void *, size_t, size_t, size_t, float *); \
    static RT NAME##_resolve(const QT *q, const BT *b, size_t d);                            \
    static void NAME##_batch_resolve(const QT *q, const void *base, size_t n, size_t d,      \
                                     size_t stride, float *out);                             \
    static NAME##_fn p_##NAME = NAME##_resolve;                                              \
    static NAME##_batch_fn p_##NAME##_batch = NAME##_batch_resolve;
FK_KERNELS(FK_DECLARE_PTRS)

typedef float (*plain_fn)(const float *, const float *, size_t);
static float plain_resolve(const float *a, const float *b, size_t d);
static plain_fn p_plain = plain_resolve;

/* The default level: what the CPU supports, lowered by FATHOM_SIMD ("scalar"/"0",
 * "avx2"/"1", "avx512"/"2"; anything else is ignored). */
static int fk_default_level(void) {
    int m = fk_max_level();
    const char *e = getenv("FATHOM_SIMD");
    if (!e) return m;
    int want = m;
    if (!strcmp(e, "scalar") || !strcmp(e, "0")) want = 0;
    else if (!strcmp(e, "avx2") || !strcmp(e, "1")) want = 1;
    else if (!strcmp(e, "avx512") || !strcmp(e, "2")) want = 2;
    return want < m ? want : m;
}

/* Setters are serialised, so the pointers always come from one table. The stores are atomic
 * and relaxed: a call running on another thread finishes on the body it started with. */
static int fk_set_lock = 0;
static int fk_apply(int level) {
    while (__atomic_exchange_n(&fk_set_lock, 1, __ATOMIC_ACQUIRE)) { }
    const fk_kernel_table *t = fk_table(level);
#define FK_SET(NAME, RT, QT, BT)                                                             \
    __atomic_store_n(&p_##NAME, t->NAME, __ATOMIC_RELAXED);                                  \
    __atomic_store_n(&p_##NAME##_batch, t->NAME##_batch, __ATOMIC_RELAXED);
    FK_KERNELS(FK_SET)
#undef FK_SET
#if FK_X86
    __atomic_store_n(&p_plain, t->level >= 1 ? l2sq_f32_plain_avx2 : fk_l2sq_f32_scalar, __ATOMIC_RELAXED);
#else
    __atomic_store_n(&p_plain, fk_l2sq_f32_scalar, __ATOMIC_RELAXED);
#endif
    __atomic_store_n(&fk_active_table, t, __ATOMIC_RELAXED);
    __atomic_store_n(&fk_simd_active, t->level, __ATOMIC_RELEASE);
    __atomic_store_n(&fk_set_lock, 0, __ATOMIC_RELEASE);
    return t->level;
}

/* First use: the default level (unless a setter came first). */
static void fk_resolve_all(void) {
    if (__atomic_load_n(&fk_simd_active, __ATOMIC_ACQUIRE) < 0) fk_apply(fk_default_level());
}

__attribute__((constructor)) static void fk_kernels_init(void) { fk_resolve_all(); }

#define FK_DEFINE_DISPATCH(NAME, RT, QT, BT)                                                 \
    static RT NAME##_resolve(const QT *q, const BT *b, size_t d) {                           \
        fk_resolve_all();                                                                    \
        return __atomic_load_n(&p_##NAME, __ATOMIC_RELAXED)(q, b, d);                        \
    }                                                                                        \
    static void NAME##_batch_resolve(const QT *q, const void *base, size_t n, size_t d,      \
                                     size_t stride, float *out) {                            \
        fk_resolve_all();                                                                    \
        __atomic_load_n(&p_##NAME##_batch, __ATOMIC_RELAXED)(q, base, n, d, stride, out);    \
    }                                                                                        \
    RT fk_##NAME(const QT *q, const BT *b, size_t d) {                                       \
        return __atomic_load_n(&p_##NAME, __ATOMIC_RELAXED)(q, b, d);                        \
    }                                                                                        \
    void fk_##NAME##_batch(const QT *q, const void *base, size_t n, size_t d, size_t stride, \
                           float *out) {                                                     \
        __atomic_load_n(&p_##NAME##_batch, __ATOMIC_RELAXED)(q, base, n, d, stride, out);    \
    }
FK_KERNELS(FK_DEFINE_DISPATCH)

static float plain_resolve(const float *a, const float *b, size_t d) {
    fk_resolve_all();
    return __atomic_load_n(&p_plain, __ATOMIC_RELAXED)(a, b, d);
}

/* Goes through a pointer like the dispatched kernels, so it pays the same call cost;
 * without AVX2 it runs the portable body. */
float fk_l2sq_f32_plain_avx2(const float *a, const float *b, size_t d) {
    return __atomic_load_n(&p_plain, __ATOMIC_RELAXED)(a, b, d);
}

int fk_simd_level(void) {
    fk_resolve_all();
    return __atomic_load_n(&fk_simd_active, __ATOMIC_ACQUIRE);
}

const char *fk_simd_name(void) {
    fk_resolve_all();
    return __atomic_load_n(&fk_active_table, __ATOMIC_RELAXED)->name;
}

int fk_simd_max_level(void) { return fk_max_level(); }

int fk_set_simd_level(int level) { return fk_apply(level < 0 ? fk_default_level() : level); }

const fk_kernel_table *fk_kernels_at_level(int level) { return fk_table(level < 0 ? 0 : level); }

/* Squared L2 from q to the rows ids[0..n) of a row-major float matrix (row stride d).
 * Every row's cache lines are prefetched first, so the misses of a graph node's
 * neighbours overlap instead of being paid one after another (the build's head search
 * is bound by them: 1M heads of 512 B do not fit any cache). Same results as fk_l2sq_f32. */
void fk_l2sq_f32_gather(const float *q, const float *base, const uint32_t *ids, size_t n, size_t d, float *out) {
    const size_t bytes = d * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        const char *r = (const char *)(base + (size_t)ids[i] * d);
        for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(r + off, 0, 3);
    }
    for (size_t i = 0; i < n; i++) out[i] = fk_l2sq_f32(q, base + (size_t)ids[i] * d, d);
}

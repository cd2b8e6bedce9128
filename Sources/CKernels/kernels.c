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

#if defined(__x86_64__) || defined(__i386__)
#define FK_X86 1
#include <immintrin.h>
#include <cpuid.h>
#else
#define FK_X86 0
#endif

/* ======================================================================================
 * Scalar bodies. Float kernels keep 4 independent partial sums (shorter dependency chains;
 * on machines without AVX2 this is the only path). Integer kernels are exact.
 * ====================================================================================== */

static inline float l2sq_f32_scalar_body(const float *a, const float *b, size_t d) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        float t0 = a[i] - b[i], t1 = a[i + 1] - b[i + 1];
        float t2 = a[i + 2] - b[i + 2], t3 = a[i + 3] - b[i + 3];
        s0 += t0 * t0; s1 += t1 * t1; s2 += t2 * t2; s3 += t3 * t3;
    }
    for (; i < d; i++) { float t = a[i] - b[i]; s0 += t * t; }
    return (s0 + s1) + (s2 + s3);
}

static inline float dot_f32_scalar_body(const float *a, const float *b, size_t d) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3];
    }
    for (; i < d; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static inline uint32_t l2sq_u8_scalar_body(const uint8_t *a, const uint8_t *b, size_t d) {
    uint32_t s = 0;
    for (size_t i = 0; i < d; i++) { int32_t t = (int32_t)a[i] - (int32_t)b[i]; s += (uint32_t)(t * t); }
    return s;
}

static inline uint32_t dot_u8_scalar_body(const uint8_t *a, const uint8_t *b, size_t d) {
    uint32_t s = 0;
    for (size_t i = 0; i < d; i++) s += (uint32_t)a[i] * (uint32_t)b[i];
    return s;
}

static inline uint32_t l2sq_i8_scalar_body(const int8_t *a, const int8_t *b, size_t d) {
    uint32_t s = 0;
    for (size_t i = 0; i < d; i++) { int32_t t = (int32_t)a[i] - (int32_t)b[i]; s += (uint32_t)(t * t); }
    return s;
}

static inline int32_t dot_i8_scalar_body(const int8_t *a, const int8_t *b, size_t d) {
    int32_t s = 0;
    for (size_t i = 0; i < d; i++) s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

#define FK_MIXED_SCALAR(NAME, BT, L2)                                                         \
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
FK_MIXED_SCALAR(l2sq_f32_u8, uint8_t, 1)
FK_MIXED_SCALAR(dot_f32_u8, uint8_t, 0)
FK_MIXED_SCALAR(l2sq_f32_i8, int8_t, 1)
FK_MIXED_SCALAR(dot_f32_i8, int8_t, 0)

/* ======================================================================================
 * Kernel table (X-macro): name, return type, query element type, vector element type.
 * ====================================================================================== */
#define FK_KERNELS(X)                              \
    X(l2sq_f32, float, float, float)               \
    X(dot_f32, float, float, float)                \
    X(l2sq_u8, uint32_t, uint8_t, uint8_t)         \
    X(dot_u8, uint32_t, uint8_t, uint8_t)          \
    X(l2sq_i8, uint32_t, int8_t, int8_t)           \
    X(dot_i8, int32_t, int8_t, int8_t)             \
    X(l2sq_f32_u8, float, float, uint8_t)          \
    X(dot_f32_u8, float, float, uint8_t)           \
    X(l2sq_f32_i8, float, float, int8_t)           \
    X(dot_f32_i8, float, float, int8_t)

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
 * AVX2 + FMA bodies (x86 only).
 * ====================================================================================== */
#if FK_X86
#define FK_AVX2 __attribute__((target("avx2,fma")))
#define FK_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* Float lane masks: loadu(fk_mask_first + 8 - r) keeps lanes [0, r);
 * loadu(fk_mask_last + r) keeps lanes [8 - r, 8). */
static const int32_t fk_mask_first[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static const int32_t fk_mask_last[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
/* Byte mask: loadu(fk_bmask_last + r) keeps bytes [32 - r, 32). */
static const uint8_t fk_bmask_last[64] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};

FK_AVX2_INLINE float hsum_ps(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

FK_AVX2_INLINE uint32_t hsum_epi32(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(x);
}

/* ---- float32 x float32: 4 accumulators, 32 floats a step; the 1..3 whole vectors left go
 * to separate accumulators, the last 1..7 floats through a masked load (vmaskmovps does not
 * touch masked-off memory). ---- */
#define FK_F32_BODY(NAME, STEP)                                                              \
    FK_AVX2_INLINE float NAME##_avx2_body(const float *a, const float *b, size_t d) {        \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
        size_t i = 0;                                                                        \
        for (; i + 32 <= d; i += 32) {                                                       \
            s0 = STEP(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);                   \
            s1 = STEP(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);           \
            s2 = STEP(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);         \
            s3 = STEP(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);         \
        }                                                                                    \
        if (i + 8 <= d) {                                                                    \
            s0 = STEP(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0); i += 8;           \
            if (i + 8 <= d) {                                                                \
                s1 = STEP(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s1); i += 8;       \
                if (i + 8 <= d) {                                                            \
                    s2 = STEP(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s2); i += 8;   \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        if (i < d) {                                                                         \
            __m256i m = _mm256_loadu_si256((const __m256i *)(const void *)(fk_mask_first + 8 - (d - i))); \
            s3 = STEP(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s3);       \
        }                                                                                    \
        return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));         \
    }

FK_AVX2_INLINE __m256 step_l2_ps(__m256 x, __m256 y, __m256 acc) {
    __m256 t = _mm256_sub_ps(x, y);
    return _mm256_fmadd_ps(t, t, acc);
}
FK_AVX2_INLINE __m256 step_dot_ps(__m256 x, __m256 y, __m256 acc) { return _mm256_fmadd_ps(x, y, acc); }
FK_F32_BODY(l2sq_f32, step_l2_ps)
FK_F32_BODY(dot_f32, step_dot_ps)

/* ---- u8 / i8 squared L2: |a-b| as bytes (max - min), widened to 16 bits by unpacking with
 * zero, squared and pair-summed to 32 bits by vpmaddwd (<= 2*255^2 per lane per step). i8 is
 * mapped to u8 by flipping the sign bit (x ^ 0x80 = x + 128), which keeps every difference.
 * 64 bytes a step; the last 1..31 bytes through an overlapping load of the final 32 bytes
 * with the already-counted bytes neutralised (d >= 32), or the scalar loop (d < 32). ---- */
FK_AVX2_INLINE __m256i step_l2_u8(__m256i x, __m256i y, __m256i acc) {
    const __m256i z = _mm256_setzero_si256();
    __m256i t = _mm256_sub_epi8(_mm256_max_epu8(x, y), _mm256_min_epu8(x, y));
    __m256i lo = _mm256_unpacklo_epi8(t, z), hi = _mm256_unpackhi_epi8(t, z);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(lo, lo), _mm256_madd_epi16(hi, hi)));
}

#define FK_L2_BYTES_BODY(NAME, T, FLIP)                                                      \
    FK_AVX2_INLINE uint32_t NAME##_avx2_body(const T *a, const T *b, size_t d) {             \
        if (d < 32) return NAME##_scalar_body(a, b, d);                                      \
        const __m256i f = _mm256_set1_epi8((char)(FLIP ? 0x80 : 0));                         \
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;                                        \
        size_t i = 0;                                                                        \
        for (; i + 64 <= d; i += 64) {                                                       \
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)(a + i));         \
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(const void *)(b + i));         \
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(a + i + 32));    \
            __m256i y1 = _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 32));    \
            if (FLIP) { x0 = _mm256_xor_si256(x0, f); y0 = _mm256_xor_si256(y0, f);          \
                        x1 = _mm256_xor_si256(x1, f); y1 = _mm256_xor_si256(y1, f); }        \
            s0 = step_l2_u8(x0, y0, s0);                                                     \
            s1 = step_l2_u8(x1, y1, s1);                                                     \
        }                                                                                    \
        if (i + 32 <= d) {                                                                   \
            __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(a + i));          \
            __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)(b + i));          \
            if (FLIP) { x = _mm256_xor_si256(x, f); y = _mm256_xor_si256(y, f); }            \
            s0 = step_l2_u8(x, y, s0); i += 32;                                              \
        }                                                                                    \
        if (i < d) {                                                                         \
            __m256i m = _mm256_loadu_si256((const __m256i *)(const void *)(fk_bmask_last + (d - i))); \
            __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(a + d - 32));     \
            __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)(b + d - 32));     \
            if (FLIP) { x = _mm256_xor_si256(x, f); y = _mm256_xor_si256(y, f); }            \
            /* already-counted bytes: y := x, so they add 0 */                               \
            y = _mm256_blendv_epi8(x, y, m);                                                 \
            s1 = step_l2_u8(x, y, s1);                                                       \
        }                                                                                    \
        return hsum_epi32(_mm256_add_epi32(s0, s1));                                         \
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
        for (; i + 64 <= d; i += 64) {                                                       \
            s0 = STEP(_mm256_loadu_si256((const __m256i *)(const void *)(a + i)),            \
                      _mm256_loadu_si256((const __m256i *)(const void *)(b + i)), s0);       \
            s1 = STEP(_mm256_loadu_si256((const __m256i *)(const void *)(a + i + 32)),       \
                      _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 32)), s1);  \
        }                                                                                    \
        if (i + 32 <= d) {                                                                   \
            s0 = STEP(_mm256_loadu_si256((const __m256i *)(const void *)(a + i)),            \
                      _mm256_loadu_si256((const __m256i *)(const void *)(b + i)), s0);       \
            i += 32;                                                                         \
        }                                                                                    \
        if (i < d) {                                                                         \
            /* already-counted bytes of a zeroed, so their products are 0 */                 \
            __m256i m = _mm256_loadu_si256((const __m256i *)(const void *)(fk_bmask_last + (d - i))); \
            __m256i x = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(a + d - 32)), m); \
            s1 = STEP(x, _mm256_loadu_si256((const __m256i *)(const void *)(b + d - 32)), s1); \
        }                                                                                    \
        return (RT)hsum_epi32(_mm256_add_epi32(s0, s1));                                     \
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
        if (L2) { __m256 t = _mm256_sub_ps(q, x); return _mm256_fmadd_ps(t, t, acc); }       \
        return _mm256_fmadd_ps(q, x, acc);                                                   \
    }                                                                                        \
    FK_AVX2_INLINE float NAME##_avx2_body(const float *q, const T *b, size_t d) {            \
        if (d < 8) return NAME##_scalar_body(q, b, d);                                       \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
        size_t i = 0;                                                                        \
        for (; i + 32 <= d; i += 32) {                                                       \
            s0 = NAME##_step(_mm256_loadu_ps(q + i), NAME##_load8(b + i), s0);               \
            s1 = NAME##_step(_mm256_loadu_ps(q + i + 8), NAME##_load8(b + i + 8), s1);       \
            s2 = NAME##_step(_mm256_loadu_ps(q + i + 16), NAME##_load8(b + i + 16), s2);     \
            s3 = NAME##_step(_mm256_loadu_ps(q + i + 24), NAME##_load8(b + i + 24), s3);     \
        }                                                                                    \
        if (i + 8 <= d) {                                                                    \
            s0 = NAME##_step(_mm256_loadu_ps(q + i), NAME##_load8(b + i), s0); i += 8;       \
            if (i + 8 <= d) {                                                                \
                s1 = NAME##_step(_mm256_loadu_ps(q + i), NAME##_load8(b + i), s1); i += 8;   \
                if (i + 8 <= d) {                                                            \
                    s2 = NAME##_step(_mm256_loadu_ps(q + i), NAME##_load8(b + i), s2); i += 8; \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        if (i < d) {                                                                         \
            __m256 m = _mm256_loadu_ps((const float *)(const void *)(fk_mask_last + (d - i))); \
            __m256 qv = _mm256_loadu_ps(q + d - 8), xv = NAME##_load8(b + d - 8);            \
            /* L2: counted lanes get q := x (difference 0); dot: counted lanes get q := 0 */ \
            qv = L2 ? _mm256_blendv_ps(xv, qv, m) : _mm256_and_ps(qv, m);                    \
            s3 = NAME##_step(qv, xv, s3);                                                    \
        }                                                                                    \
        return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));         \
    }
FK_MIXED_BODY(l2sq_f32_u8, uint8_t, _mm256_cvtepu8_epi32, 1)
FK_MIXED_BODY(dot_f32_u8, uint8_t, _mm256_cvtepu8_epi32, 0)
FK_MIXED_BODY(l2sq_f32_i8, int8_t, _mm256_cvtepi8_epi32, 1)
FK_MIXED_BODY(dot_f32_i8, int8_t, _mm256_cvtepi8_epi32, 0)

/* Out-of-line AVX2 single-vector functions and batch loops (the body inlined in the loop).
 * The batch loop prefetches the first two cache lines of the vector two ahead. */
#define FK_DEFINE_AVX2(NAME, RT, QT, BT)                                                     \
    FK_AVX2 static RT NAME##_avx2(const QT *q, const BT *b, size_t d) { return NAME##_avx2_body(q, b, d); } \
    FK_AVX2 static void NAME##_batch_avx2(const QT *q, const void *base, size_t n, size_t d, \
                                          size_t stride, float *out) {                       \
        const char *p = (const char *)base;                                                  \
        for (size_t j = 0; j < n; j++, p += stride) {                                        \
            if (j + 2 < n) {                                                                 \
                _mm_prefetch(p + 2 * stride, _MM_HINT_T0);                                   \
                _mm_prefetch(p + 2 * stride + 64, _MM_HINT_T0);                              \
            }                                                                                \
            out[j] = (float)NAME##_avx2_body(q, (const BT *)(const void *)p, d);             \
        }                                                                                    \
    }
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
    float r = hsum_ps(s);
    for (; i < d; i++) { float t = a[i] - b[i]; r += t * t; }
    return r;
}

/* CPUID: FMA (leaf 1 ECX bit 12), OSXSAVE (bit 27), AVX (bit 28); XCR0 bits 1|2 (the OS
 * saves XMM and YMM state); AVX2 (leaf 7 EBX bit 5). */
static int fk_detect_level(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned need1 = (1u << 12) | (1u << 27) | (1u << 28);
    if ((c & need1) != need1) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 6u) != 6u) return 0;
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 5)) ? 1 : 0;
}
#else
static int fk_detect_level(void) { return 0; }
#endif /* FK_X86 */

/* ======================================================================================
 * Dispatch: one function pointer per entry point, resolved once.
 * ====================================================================================== */
static int fk_level = -1;

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

/* Idempotent: racing callers store the same values. */
static void fk_resolve_all(void) {
    int level = fk_detect_level();
#if FK_X86
#define FK_SET(NAME, RT, QT, BT)                                                             \
    __atomic_store_n(&p_##NAME, level ? NAME##_avx2 : fk_##NAME##_scalar, __ATOMIC_RELAXED); \
    __atomic_store_n(&p_##NAME##_batch, level ? NAME##_batch_avx2 : fk_##NAME##_batch_scalar, __ATOMIC_RELAXED);
    __atomic_store_n(&p_plain, level ? l2sq_f32_plain_avx2 : fk_l2sq_f32_scalar, __ATOMIC_RELAXED);
#else
#define FK_SET(NAME, RT, QT, BT)                                                             \
    __atomic_store_n(&p_##NAME, fk_##NAME##_scalar, __ATOMIC_RELAXED);                       \
    __atomic_store_n(&p_##NAME##_batch, fk_##NAME##_batch_scalar, __ATOMIC_RELAXED);
    __atomic_store_n(&p_plain, fk_l2sq_f32_scalar, __ATOMIC_RELAXED);
#endif
    FK_KERNELS(FK_SET)
#undef FK_SET
    __atomic_store_n(&fk_level, level, __ATOMIC_RELEASE);
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
    int l = __atomic_load_n(&fk_level, __ATOMIC_ACQUIRE);
    if (l < 0) { fk_resolve_all(); l = __atomic_load_n(&fk_level, __ATOMIC_ACQUIRE); }
    return l;
}

const char *fk_simd_name(void) { return fk_simd_level() == 1 ? "avx2+fma" : "scalar"; }

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

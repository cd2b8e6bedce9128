#ifndef FATHOM_FK_SIMD_H
#define FATHOM_FK_SIMD_H
/*
 * What kernels.c and lvq.c share (not part of the library's interface): x86 detection, the
 * target attributes of the AVX2 and AVX-512 bodies, horizontal sums, AVX-512 tail masks and
 * the batch loops' prefetch. Everything is a macro or a static inline function, so each
 * body inlines it under its own target.
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define FK_X86 1
#include <immintrin.h>
#else
#define FK_X86 0
#endif

#if FK_X86
/* AVX2 + FMA bodies. An AVX2 inline helper can be inlined into an AVX-512 body too (its
 * features are a subset). */
#define FK_AVX2 __attribute__((target("avx2,fma")))
#define FK_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* AVX-512 bodies: AVX512F + BW + VL + DQ (and AVX512_VNNI for the integer dot kernels). */
#define FK_AVX512_FEATURES "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"
#define FK_AVX512 __attribute__((target(FK_AVX512_FEATURES)))
#define FK_AVX512_INLINE static inline __attribute__((always_inline, target(FK_AVX512_FEATURES)))
#define FK_VNNI __attribute__((target(FK_AVX512_FEATURES ",avx512vnni")))
#define FK_VNNI_INLINE static inline __attribute__((always_inline, target(FK_AVX512_FEATURES ",avx512vnni")))

/* Sum of 8 float lanes (a fixed order: every caller rounds the same way). */
FK_AVX2_INLINE float fk_hsum_ps(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

/* Sum of 8 int32 lanes, mod 2^32. */
FK_AVX2_INLINE uint32_t fk_hsum_epi32(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(x);
}

/* Sum of 2 uint64 lanes. */
FK_AVX2_INLINE uint64_t fk_hsum_u64x2(__m128i x) {
    return (uint64_t)_mm_cvtsi128_si64(x) + (uint64_t)_mm_extract_epi64(x, 1);
}

/* Sum of 4 uint32 lanes into 64 bits. */
FK_AVX2_INLINE uint64_t fk_hsum_u32x4(__m128i v) {
    const __m128i z = _mm_setzero_si128();
    return fk_hsum_u64x2(_mm_add_epi64(_mm_unpacklo_epi32(v, z), _mm_unpackhi_epi32(v, z)));
}

/* Lanes [0, r) of a 16-lane / 64-lane mask (r may exceed the width). */
FK_AVX512_INLINE __mmask16 fk_m16(size_t r) { return r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1u); }
FK_AVX512_INLINE __mmask64 fk_m64(size_t r) { return r >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << r) - 1u); }

/* In a batch loop at element J of N, `STRIDE` bytes apart starting at P: prefetches the first
 * LINES cache lines of the element two ahead. */
#define FK_PREFETCH_AHEAD(P, J, N, STRIDE, LINES)                                            \
    do {                                                                                     \
        if ((J) + 2 < (N))                                                                   \
            for (size_t fk_l_ = 0; fk_l_ < (size_t)(LINES); fk_l_++)                         \
                _mm_prefetch((const char *)(P) + 2 * (STRIDE) + 64 * fk_l_, _MM_HINT_T0);    \
    } while (0)
#endif /* FK_X86 */

#endif

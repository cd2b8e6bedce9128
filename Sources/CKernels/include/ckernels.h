#ifndef FATHOM_CKERNELS_H
#define FATHOM_CKERNELS_H
/*
 * Fathom distance kernels.
 *
 * Every kernel has an AVX2+FMA body (compiled with __attribute__((target("avx2,fma"))),
 * so no global build flags are needed) and a portable scalar body. The un-suffixed entry
 * points dispatch once, through CPUID/XGETBV, to the fastest body the CPU supports; the
 * `_scalar` entry points always run the portable body (tests and benchmarks compare them).
 *
 * Conventions
 *  - `l2sq` is the squared Euclidean distance, `dot` the inner product.
 *  - Pointers need no SIMD alignment: float pointers (and float batch strides) only their
 *    natural 4-byte alignment, byte pointers none.
 *  - Integer kernels (u8, i8) accumulate exactly in 32-bit lanes: exact for d <= 65535.
 *  - Mixed kernels (`f32_u8`, `f32_i8`) score a float query against integer vectors.
 *  - Batch kernels score one query against `n` vectors that start `stride` BYTES apart
 *    (stride = d*sizeof(elem) for a dense matrix; larger for records such as {u32 id, vec}),
 *    writing n floats to `out`.
 */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 0 = scalar, 1 = AVX2+FMA. The level the dispatched entry points use. */
int fk_simd_level(void);
/* Name of the level ("scalar", "avx2+fma"), for `fathom info` and benchmark output. */
const char *fk_simd_name(void);

/* ---- one query against one vector ---- */
float    fk_l2sq_f32(const float *a, const float *b, size_t d);
/* Prefetches the `lines` 64-byte cache lines from p (a graph node's neighbour list before it is expanded). */
static inline void fk_prefetch(const void *p, int lines) {
    for (int i = 0; i < lines; i++) __builtin_prefetch((const char *)p + 64 * i, 0, 3);
}
/* Squared L2 from q to rows ids[0..n) of base (row stride d), prefetching every row first. */
void     fk_l2sq_f32_gather(const float *q, const float *base, const uint32_t *ids, size_t n, size_t d, float *out);
float    fk_dot_f32(const float *a, const float *b, size_t d);
uint32_t fk_l2sq_u8(const uint8_t *a, const uint8_t *b, size_t d);
uint32_t fk_dot_u8(const uint8_t *a, const uint8_t *b, size_t d);
uint32_t fk_l2sq_i8(const int8_t *a, const int8_t *b, size_t d);
int32_t  fk_dot_i8(const int8_t *a, const int8_t *b, size_t d);
float    fk_l2sq_f32_u8(const float *q, const uint8_t *b, size_t d);
float    fk_dot_f32_u8(const float *q, const uint8_t *b, size_t d);
float    fk_l2sq_f32_i8(const float *q, const int8_t *b, size_t d);
float    fk_dot_f32_i8(const float *q, const int8_t *b, size_t d);

float    fk_l2sq_f32_scalar(const float *a, const float *b, size_t d);
float    fk_dot_f32_scalar(const float *a, const float *b, size_t d);
uint32_t fk_l2sq_u8_scalar(const uint8_t *a, const uint8_t *b, size_t d);
uint32_t fk_dot_u8_scalar(const uint8_t *a, const uint8_t *b, size_t d);
uint32_t fk_l2sq_i8_scalar(const int8_t *a, const int8_t *b, size_t d);
int32_t  fk_dot_i8_scalar(const int8_t *a, const int8_t *b, size_t d);
float    fk_l2sq_f32_u8_scalar(const float *q, const uint8_t *b, size_t d);
float    fk_dot_f32_u8_scalar(const float *q, const uint8_t *b, size_t d);
float    fk_l2sq_f32_i8_scalar(const float *q, const int8_t *b, size_t d);
float    fk_dot_f32_i8_scalar(const float *q, const int8_t *b, size_t d);

/* ---- one query against a block of n vectors, `stride` bytes apart ---- */
void fk_l2sq_f32_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_u8_batch(const uint8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_u8_batch(const uint8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_i8_batch(const int8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_i8_batch(const int8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_f32_u8_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_u8_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_f32_i8_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_i8_batch(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);

/* ---- added: the batch loops over the portable scalar bodies (tests, benchmarks) ---- */
void fk_l2sq_f32_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_u8_batch_scalar(const uint8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_u8_batch_scalar(const uint8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_i8_batch_scalar(const int8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_i8_batch_scalar(const int8_t *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_f32_u8_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_u8_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_l2sq_f32_i8_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_dot_f32_i8_batch_scalar(const float *q, const void *base, size_t n, size_t d, size_t stride, float *out);

/* ---- benchmark reference: a plain AVX2 C loop (one accumulator, no unrolling); runs the
 *      scalar body on CPUs without AVX2 ---- */
float fk_l2sq_f32_plain_avx2(const float *a, const float *b, size_t d);

#ifdef __cplusplus
}
#endif
#endif

#ifndef FATHOM_CKERNELS_H
#define FATHOM_CKERNELS_H
/*
 * Fathom distance kernels.
 *
 * Every kernel has an AVX-512 body, an AVX2+FMA body (compiled with
 * __attribute__((target(...))), so no global build flags are needed) and a portable scalar
 * body. The un-suffixed entry points dispatch, through CPUID/XGETBV decided once, to the
 * fastest body the CPU supports (or the level set by FATHOM_SIMD / fk_set_simd_level); the
 * `_scalar` entry points always run the portable body. `fk_kernels_at_level` hands out the
 * bodies of any supported level without changing the dispatch (tests, benchmarks).
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

/* ---- SIMD levels: 0 = scalar, 1 = AVX2+FMA, 2 = AVX-512 (AVX512F+BW+VL+DQ with the OS
 *      saving ZMM and opmask state; the integer dot kernels use AVX512_VNNI when the CPU has
 *      it, their AVX2 bodies otherwise). ----
 *
 * The level is decided once, at load time: the highest the CPU supports, lowered by the
 * environment variable FATHOM_SIMD ("scalar"/"0", "avx2"/"1", "avx512"/"2"; other values
 * are ignored). The LVQ kernels (fk_lvq.h) follow the same level. */

/* The level the dispatched entry points use. */
int fk_simd_level(void);
/* Name of that level ("scalar", "avx2+fma", "avx512", "avx512+vnni"), for diagnostics
 * (Distance.simdName) and benchmark output. */
const char *fk_simd_name(void);
/* The highest level the CPU (and OS) supports. */
int fk_simd_max_level(void);
/* Makes the dispatched entry points (these and the LVQ ones) use `level`, clamped to
 * fk_simd_max_level(); a negative level restores the default (CPU, then FATHOM_SIMD, read
 * again). Returns the level now in use. Process-wide: calls already running on other
 * threads finish on the body they started with; float results can differ between levels in
 * the last bits (summation order), integer results cannot. */
int fk_set_simd_level(int level);

/* ---- The kernels, as an X-macro list: X(NAME, RT, QT, BT) for the kernel fk_NAME that
 *      scores a QT query against BT vectors and returns RT. Every kernel has four entry
 *      points, declared below from this list:
 *        RT   fk_NAME(const QT *q, const BT *b, size_t d)          one query, one vector
 *        RT   fk_NAME_scalar(const QT *q, const BT *b, size_t d)   the portable body, always
 *        void fk_NAME_batch(const QT *q, const void *base, size_t n, size_t d, size_t stride,
 *                           float *out)                          one query, a block of n
 *                                                                vectors `stride` BYTES apart
 *        void fk_NAME_batch_scalar(...)                          the batch loop over the
 *                                                                portable body (tests, benchmarks)
 *      FK_KERNELS_IDOT: the integer dot kernels, whose AVX-512 bodies need AVX512_VNNI (on an
 *      AVX-512 CPU without VNNI they keep the AVX2 bodies); FK_KERNELS_BASE: the others. ---- */
#define FK_KERNELS_BASE(X)                         \
    X(l2sq_f32, float, float, float)               \
    X(dot_f32, float, float, float)                \
    X(l2sq_u8, uint32_t, uint8_t, uint8_t)         \
    X(l2sq_i8, uint32_t, int8_t, int8_t)           \
    X(l2sq_f32_u8, float, float, uint8_t)          \
    X(dot_f32_u8, float, float, uint8_t)           \
    X(l2sq_f32_i8, float, float, int8_t)           \
    X(dot_f32_i8, float, float, int8_t)
#define FK_KERNELS_IDOT(X)                         \
    X(dot_u8, uint32_t, uint8_t, uint8_t)          \
    X(dot_i8, int32_t, int8_t, int8_t)
#define FK_KERNELS(X) FK_KERNELS_BASE(X) FK_KERNELS_IDOT(X)

#define FK_DECLARE_KERNEL(NAME, RT, QT, BT)                                                  \
    RT fk_##NAME(const QT *q, const BT *b, size_t d);                                        \
    RT fk_##NAME##_scalar(const QT *q, const BT *b, size_t d);                               \
    void fk_##NAME##_batch(const QT *q, const void *base, size_t n, size_t d, size_t stride, float *out); \
    void fk_##NAME##_batch_scalar(const QT *q, const void *base, size_t n, size_t d, size_t stride, float *out);
FK_KERNELS(FK_DECLARE_KERNEL)

/* The bodies of one level, called directly: a level above fk_simd_max_level() gives the
 * highest supported one (check `level`), a negative one the scalar table. Static storage;
 * changes nothing. One single-vector and one batch pointer per kernel: NAME, NAME_batch. */
#define FK_KERNEL_TABLE_FIELDS(NAME, RT, QT, BT)                                             \
    RT (*NAME)(const QT *q, const BT *b, size_t d);                                          \
    void (*NAME##_batch)(const QT *q, const void *base, size_t n, size_t d, size_t stride, float *out);
typedef struct fk_kernel_table {
    int level;
    const char *name;
    FK_KERNELS(FK_KERNEL_TABLE_FIELDS)
} fk_kernel_table;
const fk_kernel_table *fk_kernels_at_level(int level);

/* Prefetches the `lines` 64-byte cache lines from p (a graph node's neighbour list before it is expanded). */
static inline void fk_prefetch(const void *p, int lines) {
    for (int i = 0; i < lines; i++) __builtin_prefetch((const char *)p + 64 * i, 0, 3);
}
/* Squared L2 from q to rows ids[0..n) of base (row stride d), prefetching every row first. */
void fk_l2sq_f32_gather(const float *q, const float *base, const uint32_t *ids, size_t n, size_t d, float *out);

/* ---- benchmark reference: a plain AVX2 C loop (one accumulator, no unrolling); runs the
 *      scalar body on CPUs without AVX2 ---- */
float fk_l2sq_f32_plain_avx2(const float *a, const float *b, size_t d);

#ifdef __cplusplus
}
#endif
#endif

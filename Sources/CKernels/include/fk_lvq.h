#ifndef FATHOM_FK_LVQ_H
#define FATHOM_FK_LVQ_H
/*
 * LVQ (locally-adaptive vector quantization) codes and the kernels that score a float query
 * directly against them. docs/codecs.md has the formats, formulas and error bounds.
 *
 * One code per vector, `fk_lvq_code_size(kind, d)` bytes, no alignment required:
 *
 *   offset 0: u16 scale  (fp16, little-endian)   s = Δ of the (primary) level
 *   offset 2: u16 bias   (fp16, little-endian)   b = the vector's minimum, rounded down
 *   offset 4: codes
 *     FK_LVQ8   d bytes, c_j in 0...255                              -> d + 4 bytes
 *     FK_LVQ4   ceil(d/2) bytes, c_j in 0...15, dim 2k in the LOW    -> ceil(d/2) + 4 bytes
 *               nibble of byte k, dim 2k+1 in the high nibble (an odd d leaves the last
 *               high nibble 0)
 *     FK_LVQ4X8 the FK_LVQ4 nibbles, then d residual bytes r_j       -> ceil(d/2) + d + 4 bytes
 *
 * Reconstruction x̂_j:
 *   LVQ8 / LVQ4:  s·c_j + b
 *   LVQ4x8:       s'·(255·c_j + r_j) + b'  with s' = s/255, b' = b − s/2 (both computed in
 *                 float exactly like this); the 4-bit part alone is the LVQ4 reconstruction.
 *
 * Kernels (AVX-512 and AVX2+FMA bodies with run-time dispatch at the level of ckernels.h's
 * fk_simd_level(), plus `_scalar` portable bodies):
 *   fk_lvqK_dot(q, qsum, code, d, norm) returns <q, x̂> = s·Σq_j·c_j + b·qsum, where
 *   qsum = Σq_j is precomputed once per query; if `norm` is not NULL it also stores ||x̂||²,
 *   computed in the same pass from exact integer sums Σc_j, Σc_j² (||x̂||² = s²Σc² + 2sbΣc +
 *   d·b², combined in double). Integer sums are exact for d <= 65535.
 *   Query pointers need 4-byte alignment only; code pointers none. Nothing allocates.
 */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FK_LVQ8 0
#define FK_LVQ4 1
#define FK_LVQ4X8 2

#define FK_LVQ_METRIC_L2 0 /* out = ||q − x̂||² = ||q||² − 2<q,x̂> + ||x̂||², clamped at 0 */
#define FK_LVQ_METRIC_IP 1 /* out = −<q, x̂> (smaller is nearer) */

/* ---- IEEE binary16 <-> binary32 by bit manipulation (round to nearest even; overflow to
 *      infinity, subnormals kept, NaN stays NaN) ---- */
uint16_t fk_f32_to_f16(float x);
float fk_f16_to_f32(uint16_t h);

/* Bytes per code (0 for an unknown kind). */
size_t fk_lvq_code_size(int kind, size_t d);

/* Encodes d floats (finite, within the fp16 range ±65504) into one code. The bias is the
 * minimum rounded DOWN to fp16 and the scale (max − bias)/(2^B − 1) rounded UP, so every
 * component lies inside the code's range and |x_j − x̂_j| <= s/2 (LVQ8, LVQ4) or
 * s/(2·255) (LVQ4x8), up to float rounding. */
void fk_lvq_encode(int kind, const float *x, size_t d, void *code);
/* Decodes one code into d floats (for LVQ4x8 the full two-level reconstruction). */
void fk_lvq_decode(int kind, const void *code, size_t d, float *out);

/* ---- one query against one code ---- */
float fk_lvq8_dot(const float *q, float qsum, const void *code, size_t d, float *norm);
float fk_lvq4_dot(const float *q, float qsum, const void *code, size_t d, float *norm);
float fk_lvq4x8_dot(const float *q, float qsum, const void *code, size_t d, float *norm);
float fk_lvq8_dot_scalar(const float *q, float qsum, const void *code, size_t d, float *norm);
float fk_lvq4_dot_scalar(const float *q, float qsum, const void *code, size_t d, float *norm);
float fk_lvq4x8_dot_scalar(const float *q, float qsum, const void *code, size_t d, float *norm);

/* ---- one query against n codes that start `stride` BYTES apart (stride >= code size, e.g.
 *      records {u32 id, code}); writes n distances per `metric` (FK_LVQ_METRIC_*).
 *      qsum = Σq_j, qnorm = ||q||² (only read for L2). FK_LVQ4 over LVQ4x8 codes scores
 *      their primary (4-bit) level. ---- */
void fk_lvq_batch(int kind, int metric, const float *q, float qsum, float qnorm,
                  const void *base, size_t n, size_t d, size_t stride, float *out);
void fk_lvq_batch_scalar(int kind, int metric, const float *q, float qsum, float qnorm,
                         const void *base, size_t n, size_t d, size_t stride, float *out);

/* ---- the bodies of one SIMD level (0 scalar, 1 AVX2+FMA, 2 AVX-512), called directly; a
 *      level above fk_simd_max_level() gives the highest supported one (check `level`), a
 *      negative one the scalar table. Changes nothing (tests, benchmarks). ---- */
typedef struct fk_lvq_kernel_table {
    int level;
    float (*lvq8_dot)(const float *q, float qsum, const void *code, size_t d, float *norm);
    float (*lvq4_dot)(const float *q, float qsum, const void *code, size_t d, float *norm);
    float (*lvq4x8_dot)(const float *q, float qsum, const void *code, size_t d, float *norm);
    void (*batch)(int kind, int metric, const float *q, float qsum, float qnorm,
                  const void *base, size_t n, size_t d, size_t stride, float *out);
} fk_lvq_kernel_table;
const fk_lvq_kernel_table *fk_lvq_kernels_at_level(int level);

#ifdef __cplusplus
}
#endif
#endif

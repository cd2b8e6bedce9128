#include "fk_crc32c.h"
#include <string.h>

static uint32_t table8[8][256];
static int table_ready = 0;

static void build_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
        table8[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = table8[0][i];
        for (int t = 1; t < 8; t++) { c = table8[0][c & 0xFF] ^ (c >> 8); table8[t][i] = c; }
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t fk_crc32c_scalar(uint32_t crc, const void *data, size_t n) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_tables();
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint64_t w; memcpy(&w, p, 8);
        w ^= c;
        c = table8[7][w & 0xFF] ^ table8[6][(w >> 8) & 0xFF] ^ table8[5][(w >> 16) & 0xFF] ^
            table8[4][(w >> 24) & 0xFF] ^ table8[3][(w >> 32) & 0xFF] ^ table8[2][(w >> 40) & 0xFF] ^
            table8[1][(w >> 48) & 0xFF] ^ table8[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) c = table8[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
#include <pthread.h>

/* Three-way interleaved hardware CRC (after Mark Adler's crc32c.c, zlib licence): the crc32
 * instruction has a latency of 3 cycles and a throughput of 1, so three independent streams
 * over consecutive blocks run ~3x faster than one; the streams are joined by "shifting" a CRC
 * over a block of zeros, a linear map applied with four 256-entry tables per block length. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) { if (vec & 1) sum ^= *mat; vec >>= 1; mat++; }
    return sum;
}
static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}
/* The operator that appends `len` zero bytes (len a power of two) to a CRC state. */
static void zeros_op(uint32_t *even, size_t len) {
    uint32_t odd[32], row = 1;
    odd[0] = 0x82F63B78u;
    for (int n = 1; n < 32; n++) { odd[n] = row; row <<= 1; }
    gf2_square(even, odd);      /* two zero bits */
    gf2_square(odd, even);      /* four zero bits */
    do {
        gf2_square(even, odd);  /* 8·2^k bits */
        len >>= 1;
        if (len == 0) return;
        gf2_square(odd, even);
        len >>= 1;
    } while (len);
    for (int n = 0; n < 32; n++) even[n] = odd[n];
}
static void zeros_tables(uint32_t zeros[4][256], size_t len) {
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        zeros[0][n] = gf2_times(op, n);
        zeros[1][n] = gf2_times(op, n << 8);
        zeros[2][n] = gf2_times(op, n << 16);
        zeros[3][n] = gf2_times(op, n << 24);
    }
}
static inline uint32_t shift(uint32_t zeros[4][256], uint32_t crc) {
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^ zeros[3][crc >> 24];
}
/* Block lengths: a 4 KiB page is one LONG triple, one SHORT triple and 256 serial bytes. */
#define CRC_LONG 1024
#define CRC_SHORT 256
static uint32_t crc_long[4][256], crc_short[4][256];
static int shift_ready = 0;
static pthread_once_t shift_once = PTHREAD_ONCE_INIT;
static void make_shift_tables(void) {
    zeros_tables(crc_long, CRC_LONG);
    zeros_tables(crc_short, CRC_SHORT);
    __atomic_store_n(&shift_ready, 1, __ATOMIC_RELEASE);
}

/* While at least 3·block bytes remain: three streams over consecutive blocks, joined. */
__attribute__((target("sse4.2")))
static inline uint64_t triples(uint64_t c0, const uint8_t **pp, size_t *np, size_t block, uint32_t zeros[4][256]) {
    const uint8_t *p = *pp;
    size_t n = *np;
    while (n >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const uint8_t *end = p + block;
        do {
            uint64_t a, b, d;
            memcpy(&a, p, 8); memcpy(&b, p + block, 8); memcpy(&d, p + 2 * block, 8);
            c0 = _mm_crc32_u64(c0, a); c1 = _mm_crc32_u64(c1, b); c2 = _mm_crc32_u64(c2, d);
            p += 8;
        } while (p < end);
        c0 = shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block; n -= 3 * block;
    }
    *pp = p; *np = n;
    return c0;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t n) {
    if (!__atomic_load_n(&shift_ready, __ATOMIC_ACQUIRE)) pthread_once(&shift_once, make_shift_tables);
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c0 = ~crc;
    while (n && ((uintptr_t)p & 7)) { c0 = _mm_crc32_u8((uint32_t)c0, *p++); n--; }
    c0 = triples(c0, &p, &n, CRC_LONG, crc_long);
    c0 = triples(c0, &p, &n, CRC_SHORT, crc_short);
    while (n >= 8) { uint64_t a; memcpy(&a, p, 8); c0 = _mm_crc32_u64(c0, a); p += 8; n -= 8; }
    while (n--) c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return ~(uint32_t)c0;
}
static int hw_state = -1;
uint32_t fk_crc32c(uint32_t crc, const void *data, size_t n) {
    int s = __atomic_load_n(&hw_state, __ATOMIC_RELAXED);
    if (s < 0) { __builtin_cpu_init(); s = __builtin_cpu_supports("sse4.2") ? 1 : 0; __atomic_store_n(&hw_state, s, __ATOMIC_RELAXED); }
    return s ? crc32c_hw(crc, data, n) : fk_crc32c_scalar(crc, data, n);
}
#else
uint32_t fk_crc32c(uint32_t crc, const void *data, size_t n) { return fk_crc32c_scalar(crc, data, n); }
#endif

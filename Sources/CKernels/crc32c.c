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
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = ~crc;
    while (n && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); n--; }
    while (n >= 32) {
        uint64_t a, b, d, e;
        memcpy(&a, p, 8); memcpy(&b, p + 8, 8); memcpy(&d, p + 16, 8); memcpy(&e, p + 24, 8);
        c = _mm_crc32_u64(c, a); c = _mm_crc32_u64(c, b); c = _mm_crc32_u64(c, d); c = _mm_crc32_u64(c, e);
        p += 32; n -= 32;
    }
    while (n >= 8) { uint64_t a; memcpy(&a, p, 8); c = _mm_crc32_u64(c, a); p += 8; n -= 8; }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
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

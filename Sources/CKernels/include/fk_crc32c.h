#ifndef FATHOM_FK_CRC32C_H
#define FATHOM_FK_CRC32C_H
/*
 * CRC32C (Castagnoli), as used by iSCSI, ext4 and RocksDB. Hardware SSE4.2 `crc32`
 * instructions when the CPU has them, three streams interleaved (a 4 KiB page in about a
 * third of the serial time: every re-rank read checks one), a slicing-by-8 table otherwise.
 * `fk_crc32c(0, p, n)` is the CRC of n bytes; pass a previous result to continue a stream.
 */
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
uint32_t fk_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t fk_crc32c_scalar(uint32_t crc, const void *data, size_t n);
#ifdef __cplusplus
}
#endif
#endif

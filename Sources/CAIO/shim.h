#ifndef FATHOM_CAIO_SHIM_H
#define FATHOM_CAIO_SHIM_H
// libaio plus the Linux constants and calls Swift cannot see (Glibc is a prebuilt module:
// O_DIRECT and renameat2 are missing from it).
#include <libaio.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
// O_DIRECT needs _GNU_SOURCE, which would change the system structs Swift shares with other
// modules; its value is fixed by the Linux ABI per architecture.
#ifndef O_DIRECT
#if defined(__aarch64__) || defined(__arm__)
#define O_DIRECT 0200000
#else
#define O_DIRECT 040000
#endif
#endif
static const int caio_O_DIRECT = O_DIRECT;

// Atomically swaps two paths (renameat2 RENAME_EXCHANGE). Returns 0 or -errno.
static inline int caio_rename_exchange(const char *a, const char *b) {
#ifdef SYS_renameat2
    long r = syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, 2 /* RENAME_EXCHANGE */);
    return r == 0 ? 0 : -errno;
#else
    return -ENOSYS;
#endif
}

// Reads /proc/sys/fs/aio-max-nr and aio-nr (for a clear error when io_setup hits the limit).
static inline long caio_read_proc_long(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    if (fscanf(f, "%ld", &v) != 1) v = -1;
    fclose(f);
    return v;
}
#endif

// libFuzzer's driver entry (compiler-rt, LLVM >= 12). SwiftPM renames an executable's `main`
// to `<Target>_main` (and links `main` to it), so the fuzz targets call the driver themselves.
#include <stddef.h>
#include <stdint.h>
typedef int (*fathom_fuzz_callback)(const uint8_t *data, size_t size);
int fathom_fuzz_run(int argc, char **argv, fathom_fuzz_callback callback);

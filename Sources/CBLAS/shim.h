#ifndef FATHOM_CBLAS_SHIM_H
#define FATHOM_CBLAS_SHIM_H
// OpenBLAS: cblas plus the LAPACK routines Fathom uses (exported by the same library).
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
// Symmetric eigendecomposition (divide and conquer), Fortran calling convention.
void ssyevd_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda,
             float *w, float *work, const int *lwork, int *iwork, const int *liwork, int *info);
void sgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, float *a,
             const int *lda, float *s, float *u, const int *ldu, float *vt, const int *ldvt,
             float *work, const int *lwork, int *info);
#endif

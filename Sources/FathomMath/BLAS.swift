import CBLAS

/// Thin wrappers over the OpenBLAS routines Fathom uses.
public enum BLAS {
    /// Sets OpenBLAS's thread count (Fathom uses 1 by default: two vCPUs give about one
    /// core of compute, and sgemm gains nothing from a second thread here).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }

    /// C[m×n] = alpha · A[m×k] · B[n×k]ᵀ + beta · C, all row-major and dense.
    /// This is the shape of "queries × base vectorsᵀ" distance blocks.
    @inlinable
    public static func gemmABt(m: Int, n: Int, k: Int, alpha: Float = 1,
                               a: UnsafePointer<Float>, lda: Int? = nil,
                               b: UnsafePointer<Float>, ldb: Int? = nil,
                               beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda ?? k), b, Int32(ldb ?? k), beta, c, Int32(ldc ?? n))
    }

    /// C[m×n] = alpha · A[m×k] · B[k×n] + beta · C, row-major.
    @inlinable
    public static func gemm(m: Int, n: Int, k: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(k), b, Int32(n), beta, c, Int32(n))
    }

    /// C[k×k] = Aᵀ·A for A[m×k] row-major (upper triangle filled, then mirrored).
    public static func gram(m: Int, k: Int, a: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>, beta: Float = 0) {
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(k), Int32(m), 1, a, Int32(k), beta, c, Int32(k))
        for i in 0..<k { for j in 0..<i { c[i * k + j] = c[j * k + i] } }
    }
}

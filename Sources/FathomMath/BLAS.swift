import CBLAS

/// Thin wrappers over the OpenBLAS routines Fathom uses.
public enum BLAS {
    /// Sets OpenBLAS's thread count for the whole process.
    ///
    /// Process-wide state, so it belongs to the process owner (a CLI's main, a server's
    /// start, a test process's setup), never to a library call. Fathom expects 1: the
    /// builder's k-means gives byte-identical heads for any `BuildOptions.threads` on one
    /// OpenBLAS thread, and a search's BLAS products are tiny (OpenBLAS's own workers would
    /// only spin beside the search threads). A tool that runs one big sgemm (exact ground
    /// truth) may raise it for that work.
    ///
    /// Thread safety: call it while no BLAS routine runs (at start, or between jobs).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }

    /// OpenBLAS's current thread count (process-wide). Thread-safe to read.
    public static var threads: Int { Int(openblas_get_num_threads()) }

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

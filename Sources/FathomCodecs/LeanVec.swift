import CBLAS
import CKernels
import FathomCore
import FathomMath
import Foundation

/// A LeanVec linear dimensionality reduction from `D` to `d` dimensions (arXiv 2312.16335;
/// docs/codecs.md).
///
/// Data vectors are projected with the data matrix `B` (D×d) and queries with the query
/// matrix `A` (D×d); for PCA (in-distribution, "LeanVec-ID") `A == B`. Both sides are centred
/// on the data mean `μ`:
///
/// - **L2:** data `Bᵀ(x − μ)`, queries `Aᵀ(q − μ)`; `‖x − q‖² ≈ ‖Bᵀ(x−μ) − Aᵀ(q−μ)‖²`.
/// - **Inner product / cosine:** data `Bᵀ(x − μ)`, queries `Aᵀq` (mean NOT subtracted);
///   `⟨x, q⟩ ≈ ⟨Bᵀ(x−μ), Aᵀq⟩ + ⟨μ, q⟩`. The second term, ``queryOffset(_:)``, is the same
///   for every candidate of a query, so it never changes the ranking; add it when scores of
///   different sources are compared (e.g. re-ranking with full vectors).
///
/// Matrices are row-major `Matrix` values (D rows, d columns), never mutated once built.
public struct LeanVecProjection: Sendable {
    public enum Kind: UInt32, Sendable, Codable {
        /// Principal components of the data (LeanVec-ID); `A == B`.
        case pca = 1
        /// LeanVec-OOD: `A`, `B` learned from data and queries by Frank-Wolfe.
        case ood = 2
    }

    public let kind: Kind
    /// Input dimension `D`.
    public let inputDim: Int
    /// Output dimension `d`.
    public let outputDim: Int
    /// Data mean `μ` (D floats; all zero for an OOD projection trained with `centerData: false`).
    public let mean: [Float]
    /// `B`, D×d: data vectors map to `Bᵀ(x − μ)`.
    public let dataMatrix: Matrix
    /// `A`, D×d: queries map to `Aᵀ(q − μ)` (L2) or `Aᵀq` (inner product). The same instance
    /// as `dataMatrix` for PCA.
    public let queryMatrix: Matrix
    /// OOD: the final Frank-Wolfe loss `‖QXᵀ − QABᵀXᵀ‖²_F / (n_Q·n_X)` on the training sets;
    /// NaN for PCA.
    public let loss: Float
    /// PCA: fraction of the sample's variance the d kept components explain; NaN for OOD.
    public let explainedVariance: Float
    /// OOD: the loss after every Frank-Wolfe step (not serialized; empty after decode).
    public let lossHistory: [Float]

    /// Assembles a projection from its parts (validated).
    public init(kind: Kind, mean: [Float], dataMatrix: Matrix, queryMatrix: Matrix,
                loss: Float = .nan, explainedVariance: Float = .nan, lossHistory: [Float] = []) throws {
        let D = mean.count, d = dataMatrix.cols
        guard D > 0, d > 0, d <= D, dataMatrix.rows == D, queryMatrix.rows == D, queryMatrix.cols == d else {
            throw FathomError(.invalidArgument,
                              "LeanVec matrices must be D×d with 0 < d <= D = mean.count (got mean \(D), B \(dataMatrix.rows)×\(dataMatrix.cols), A \(queryMatrix.rows)×\(queryMatrix.cols))")
        }
        self.kind = kind
        self.inputDim = D
        self.outputDim = d
        self.mean = mean
        self.dataMatrix = dataMatrix
        self.queryMatrix = queryMatrix
        self.loss = loss
        self.explainedVariance = explainedVariance
        self.lossHistory = lossHistory
    }

    /// The default reduced dimension: `D/2` rounded up to a multiple of 8 (the kernels' lane
    /// width), clamped to `1...D`.
    public static func defaultDim(_ D: Int) -> Int {
        guard D > 0 else { return 0 }
        let half = (D + 1) / 2
        return max(1, min(D, (half + 7) / 8 * 8))
    }

    // MARK: - projection of single vectors

    /// `Bᵀ(x − μ)`: `inputDim` floats in, `outputDim` floats out.
    public func projectData(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        project(x, centred: true, matrix: dataMatrix, into: y)
    }

    /// The query's projection for `metric`: `Aᵀ(q − μ)` for `.l2`, `Aᵀq` for `.ip` and
    /// `.cosine` (then add ``queryOffset(_:)`` to recover `⟨x, q⟩`).
    public func projectQuery(_ q: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, metric: Metric) {
        project(q, centred: metric == .l2, matrix: queryMatrix, into: y)
    }

    /// `⟨μ, q⟩`: with inner product, `⟨x, q⟩ ≈ ⟨projectData(x), projectQuery(q, .ip)⟩ + queryOffset(q)`.
    public func queryOffset(_ q: UnsafePointer<Float>) -> Float {
        mean.withUnsafeBufferPointer { fk_dot_f32($0.baseAddress!, q, inputDim) }
    }

    private func project(_ x: UnsafePointer<Float>, centred: Bool, matrix: Matrix, into y: UnsafeMutablePointer<Float>) {
        let D = inputDim, d = outputDim
        if centred {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: D) { t in
                mean.withUnsafeBufferPointer { mu in
                    for i in 0..<D { t[i] = x[i] - mu[i] }
                }
                cblas_sgemv(CblasRowMajor, CblasTrans, Int32(D), Int32(d), 1, matrix.data, Int32(d),
                            t.baseAddress!, 1, 0, y, 1)
            }
        } else {
            cblas_sgemv(CblasRowMajor, CblasTrans, Int32(D), Int32(d), 1, matrix.data, Int32(d), x, 1, 0, y, 1)
        }
    }

    // MARK: - projection of matrices

    /// Projects every row of `x` (n×D) to `Bᵀ(x − μ)` (n×d).
    public func projectData(_ x: Matrix) -> Matrix {
        let y = Matrix(rows: x.rows, cols: outputDim)
        projectData(x, into: y)
        return y
    }

    /// Projects every row of `x` (n×D) into `y` (n×d).
    public func projectData(_ x: Matrix, into y: Matrix) {
        projectRows(x, centred: true, matrix: dataMatrix, into: y)
    }

    /// Projects every row of `q` (n×D) as ``projectQuery(_:into:metric:)`` does.
    public func projectQueries(_ q: Matrix, metric: Metric) -> Matrix {
        let y = Matrix(rows: q.rows, cols: outputDim)
        projectQueries(q, metric: metric, into: y)
        return y
    }

    public func projectQueries(_ q: Matrix, metric: Metric, into y: Matrix) {
        projectRows(q, centred: metric == .l2, matrix: queryMatrix, into: y)
    }

    /// Blocks of rows are centred into a scratch matrix, then multiplied by sgemm.
    private func projectRows(_ x: Matrix, centred: Bool, matrix: Matrix, into y: Matrix) {
        precondition(x.cols == inputDim && y.cols == outputDim && y.rows == x.rows,
                     "projection of \(x.rows)×\(x.cols) into \(y.rows)×\(y.cols) with D=\(inputDim), d=\(outputDim)")
        let D = inputDim, d = outputDim
        if !centred {
            BLAS.gemm(m: x.rows, n: d, k: D, a: x.data, b: matrix.data, c: y.data)
            return
        }
        let block = max(1, min(x.rows, 1024))
        let scratch = Matrix(rows: block, cols: D)
        var start = 0
        mean.withUnsafeBufferPointer { mu in
            while start < x.rows {
                let rows = min(block, x.rows - start)
                for r in 0..<rows {
                    let src = x.row(start + r), dst = scratch.row(r)
                    for i in 0..<D { dst[i] = src[i] - mu[i] }
                }
                BLAS.gemm(m: rows, n: d, k: D, a: scratch.data, b: matrix.data, c: y.row(start))
                start += rows
            }
        }
    }

    // MARK: - training

    /// The share of `sample`'s variance (about its mean) that the top k principal components
    /// keep, for k = 1 … D: element k−1, non-decreasing, the last 1 (a sample with no
    /// variance keeps everything at every k). The spectrum `trainPCA` would cut.
    public static func keptVariance(sample: Matrix) throws -> [Float] {
        let D = sample.cols
        guard sample.rows >= 1, D >= 1 else {
            throw FathomError(.invalidArgument, "PCA needs a non-empty sample (got \(sample.rows)×\(D))")
        }
        let cov = secondMoment(sample, mean: columnMean(sample))
        let (values, _) = try symmetricEigen(cov, n: D)
        let total = values.reduce(0.0) { $0 + max(0, Double($1)) }
        var acc = 0.0
        var kept = [Float](repeating: 1, count: D)
        guard total > 0 else { return kept }
        for k in 0..<D {   // ssyevd: ascending, so the largest is last
            acc += max(0, Double(values[D - 1 - k]))
            kept[k] = Float(min(1, acc / total))
        }
        kept[D - 1] = 1
        return kept
    }

    /// LeanVec-ID: the top `targetDim` principal components of `sample` (rows are vectors;
    /// use at most ~100K rows: the covariance costs n·D² flops).
    ///
    /// The sample is centred on its mean, the covariance `Σ = XcᵀXc/n` is accumulated blockwise
    /// by `ssyrk`, and `ssyevd` gives its eigenvectors. `B = A` holds the eigenvectors of the
    /// `targetDim` largest eigenvalues as columns (sign fixed so each column's largest-magnitude
    /// entry is positive); ``explainedVariance`` is their share of the trace.
    public static func trainPCA(sample: Matrix, targetDim: Int) throws -> LeanVecProjection {
        let n = sample.rows, D = sample.cols
        guard n >= 1, D >= 1 else {
            throw FathomError(.invalidArgument, "PCA needs a non-empty sample (got \(n)×\(D))")
        }
        guard targetDim >= 1, targetDim <= D else {
            throw FathomError(.invalidArgument, "LeanVec target dimension \(targetDim) must be in 1...\(D)")
        }
        let d = targetDim
        let mean = columnMean(sample)
        let cov = secondMoment(sample, mean: mean)
        let (values, vectors) = try symmetricEigen(cov, n: D)
        // ssyevd: eigenvalues ascending; eigenvector k is row k of `vectors` (row-major view of
        // LAPACK's column-major output).
        let b = Matrix(rows: D, cols: d)
        vectors.withUnsafeBufferPointer { vp in
            for j in 0..<d {
                let src = vp.baseAddress! + (D - 1 - j) * D
                var big: Float = 0
                for i in 0..<D where abs(src[i]) > abs(big) { big = src[i] }
                let sign: Float = big < 0 ? -1 : 1
                for i in 0..<D { b.data[i * d + j] = sign * src[i] }
            }
        }
        var total = 0.0, kept = 0.0
        for (k, v) in values.enumerated() {
            let w = max(0, Double(v))
            total += w
            if k >= D - d { kept += w }
        }
        let explained = total > 0 ? Float(kept / total) : 1
        return try LeanVecProjection(kind: .pca, mean: mean, dataMatrix: b, queryMatrix: b,
                                     explainedVariance: explained)
    }

    /// LeanVec-OOD (pysvs `compute_leanvec_matrices`): learns `A` and `B` minimising
    /// `L(A,B) = ‖QXᵀ − QABᵀXᵀ‖²_F` by block Frank-Wolfe over the spectral-norm ball.
    ///
    /// With `K_Q = QᵀQ/n_Q` and `K_X = XᵀX/n_X` (X centred on its mean unless `centerData` is
    /// false; queries are never centred):
    /// - `L = tr(BAᵀK_Q ABᵀK_X) − 2 tr(K_Q ABᵀK_X) + tr(K_Q K_X)`
    /// - `∇_A = 2K_Q A BᵀK_X B − 2K_Q K_X B`, `∇_B = 2K_X B AᵀK_Q A − 2K_X K_Q A`
    /// - step t (from 0): `γ = 1/(t+1)^0.999`; `A ← (1−γ)A + γ·UVᵀ` with `UΣVᵀ = svd(−∇_A)`,
    ///   then the same for B with the new A; A and B start at 0.
    /// - stop after `maxSteps` or when `t > 1` and `|L_t − L_{t−1}| < relTol·L_{t−1}`.
    ///
    /// At A = B = 0 the A-gradient is exactly zero, so the first A step takes the LMO of the
    /// zero matrix; `sgesvd` returns `U = [I; 0]`, `V = I` for it, exactly what numpy does in
    /// the reference, and the B step then sees a nonzero gradient.
    ///
    /// Centring (the default) makes the learned part approximate `⟨x − μ, q⟩` while `⟨μ, q⟩` is
    /// added exactly (``queryOffset(_:)``), matching how the projection is applied.
    public static func trainOOD(data: Matrix, queries: Matrix, targetDim: Int, maxSteps: Int = 500,
                                relTol: Float = 1e-3, centerData: Bool = true) throws -> LeanVecProjection {
        let D = data.cols
        guard data.rows >= 1, queries.rows >= 1, D >= 1 else {
            throw FathomError(.invalidArgument, "LeanVec-OOD needs non-empty data and queries")
        }
        guard queries.cols == D else {
            throw FathomError(.dimensionMismatch, "training queries have \(queries.cols) dimensions, data \(D)")
        }
        guard targetDim >= 1, targetDim <= D else {
            throw FathomError(.invalidArgument, "LeanVec target dimension \(targetDim) must be in 1...\(D)")
        }
        guard maxSteps >= 1 else { throw FathomError(.invalidArgument, "maxSteps must be at least 1") }
        let d = targetDim
        let mean = centerData ? columnMean(data) : [Float](repeating: 0, count: D)
        let kx = secondMoment(data, mean: mean)
        let kq = secondMoment(queries, mean: nil)
        let constant = frobeniusDot(kq.data, kx.data, D * D)

        let a = Matrix(rows: D, cols: d), b = Matrix(rows: D, cols: d)
        let p = Matrix(rows: D, cols: d)     // K_Q A
        let r = Matrix(rows: D, cols: d)     // K_X B
        let m = Matrix(rows: d, cols: d)     // Aᵀ K_Q A
        let nn = Matrix(rows: d, cols: d)    // Bᵀ K_X B
        let g = Matrix(rows: D, cols: d)     // gradient, then the LMO direction
        let lmo = try FrankWolfeLMO(D: D, d: d)
        var history = [Float]()
        var prev = Double.nan
        /// One block step on X (A with K = K_Q, or B with K = K_X), the other block entering
        /// through its product with its K (`other`: R or P) and Gram matrix (`otherGram`: N or
        /// M): ∇_X = 2·(K·X)·otherGram − 2·K·other, X ← (1−γ)X + γ·LMO(∇_X), then
        /// `product` = K·X and `gram` = Xᵀ·K·X for the next step.
        func step(_ x: Matrix, k: Matrix, other: Matrix, otherGram: Matrix, product: Matrix, gram: Matrix,
                  gamma: Float) throws {
            BLAS.gemm(m: D, n: d, k: D, alpha: -2, a: k.data, b: other.data, beta: 0, c: g.data)
            BLAS.gemm(m: D, n: d, k: d, alpha: 2, a: product.data, b: otherGram.data, beta: 1, c: g.data)
            try lmo.direction(gradient: g)
            blend(x, g, gamma)
            BLAS.gemm(m: D, n: d, k: D, a: k.data, b: x.data, c: product.data)
            gemmAtB(D, d, x, product, gram)
        }

        for t in 0..<maxSteps {
            let gamma = Float(1 / pow(Double(t + 1), 0.999))
            // A step: ∇_A = 2·P·N − 2·K_Q·R; then the B step: ∇_B = 2·R·M − 2·K_X·P
            try step(a, k: kq, other: r, otherGram: nn, product: p, gram: m, gamma: gamma)
            try step(b, k: kx, other: p, otherGram: m, product: r, gram: nn, gamma: gamma)
            // L = ⟨M, N⟩ − 2⟨R, P⟩ + ⟨K_Q, K_X⟩
            let loss = frobeniusDot(m.data, nn.data, d * d) - 2 * frobeniusDot(r.data, p.data, D * d) + constant
            history.append(Float(loss))
            if t > 1 && abs(loss - prev) < Double(relTol) * prev { break }
            prev = loss
        }
        return try LeanVecProjection(kind: .ood, mean: mean, dataMatrix: b, queryMatrix: a,
                                     loss: history.last ?? .nan, lossHistory: history)
    }

    // MARK: - serialization

    /// Current version of the ``encode()`` layout.
    public static let formatVersion: UInt32 = 1
    static let magic: [UInt8] = Array("FTHMLEAN".utf8)
    static let headerSize = 32

    /// Serializes the projection, all little-endian:
    ///
    /// | offset | size | field |
    /// |---|---|---|
    /// | 0 | 8 | magic `FTHMLEAN` |
    /// | 8 | 4 | u32 version (1) |
    /// | 12 | 4 | u32 kind (1 = pca, 2 = ood) |
    /// | 16 | 4 | u32 D |
    /// | 20 | 4 | u32 d |
    /// | 24 | 4 | f32 loss (NaN for pca) |
    /// | 28 | 4 | f32 explained variance (NaN for ood) |
    /// | 32 | 4·D | f32 μ |
    /// | 32+4D | 4·D·d | f32 A, row-major D×d |
    /// | 32+4D+4Dd | 4·D·d | f32 B, row-major D×d |
    /// | 32+4D+8Dd | 4 | u32 CRC32C of all preceding bytes |
    public func encode() -> [UInt8] {
        let D = inputDim, d = outputDim
        var out = [UInt8]()
        out.reserveCapacity(LeanVecProjection.encodedSize(D: D, d: d))
        out += LeanVecProjection.magic
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func f32s(_ p: UnsafePointer<Float>, _ n: Int) {
            for i in 0..<n { u32(p[i].bitPattern) }
        }
        u32(LeanVecProjection.formatVersion)
        u32(kind.rawValue)
        u32(UInt32(D))
        u32(UInt32(d))
        u32(loss.bitPattern)
        u32(explainedVariance.bitPattern)
        mean.withUnsafeBufferPointer { f32s($0.baseAddress!, D) }
        f32s(queryMatrix.data, D * d)
        f32s(dataMatrix.data, D * d)
        let crc = out.withUnsafeBytes { fk_crc32c(0, $0.baseAddress, $0.count) }
        u32(crc)
        return out
    }

    static func encodedSize(D: Int, d: Int) -> Int { headerSize + 4 * D + 8 * D * d + 4 }

    /// Reads what ``encode()`` wrote. Throws `FathomError(.corruptIndex)` on a wrong magic,
    /// size, checksum or field, and `.incompatibleIndex` on another format version.
    public static func decode(_ bytes: [UInt8]) throws -> LeanVecProjection {
        func corrupt(_ msg: String, _ offset: Int? = nil) -> FathomError {
            FathomError(.corruptIndex, "LeanVec projection: \(msg)", offset: offset.map { UInt64($0) })
        }
        guard bytes.count >= headerSize + 4 else {
            throw corrupt("\(bytes.count) bytes is shorter than the \(headerSize + 4)-byte minimum")
        }
        guard Array(bytes[0..<8]) == magic else { throw corrupt("bad magic (expected FTHMLEAN)", 0) }
        func u32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        let version = u32(8)
        guard version == formatVersion else {
            throw FathomError(.incompatibleIndex,
                              "LeanVec projection format version \(version); this build reads version \(formatVersion)")
        }
        guard let kind = Kind(rawValue: u32(12)) else { throw corrupt("unknown kind \(u32(12))", 12) }
        let D = Int(u32(16)), d = Int(u32(20))
        guard D >= 1, D <= 1 << 20, d >= 1, d <= D else { throw corrupt("bad dimensions D=\(D), d=\(d)", 16) }
        let expected = encodedSize(D: D, d: d)
        guard bytes.count == expected else {
            throw corrupt("\(bytes.count) bytes, expected \(expected) for D=\(D), d=\(d)")
        }
        let crc = bytes.withUnsafeBytes { fk_crc32c(0, $0.baseAddress, expected - 4) }
        guard crc == u32(expected - 4) else { throw corrupt("checksum mismatch", expected - 4) }
        let loss = Float(bitPattern: u32(24)), explained = Float(bitPattern: u32(28))
        var off = headerSize
        func floats(into p: UnsafeMutablePointer<Float>, _ n: Int) throws {
            for i in 0..<n {
                let v = Float(bitPattern: u32(off + 4 * i))
                guard v.isFinite else { throw corrupt("non-finite value", off + 4 * i) }
                p[i] = v
            }
            off += 4 * n
        }
        var mean = [Float](repeating: 0, count: D)
        try mean.withUnsafeMutableBufferPointer { try floats(into: $0.baseAddress!, D) }
        let a = Matrix(rows: D, cols: d), b = Matrix(rows: D, cols: d)
        try floats(into: a.data, D * d)
        try floats(into: b.data, D * d)
        if kind == .pca {
            guard memcmp(a.data, b.data, D * d * 4) == 0 else { throw corrupt("PCA projection with A ≠ B") }
            return try LeanVecProjection(kind: kind, mean: mean, dataMatrix: b, queryMatrix: b,
                                         loss: loss, explainedVariance: explained)
        }
        return try LeanVecProjection(kind: kind, mean: mean, dataMatrix: b, queryMatrix: a,
                                     loss: loss, explainedVariance: explained)
    }
}

// MARK: - linear algebra helpers

/// Column means, accumulated in Double.
func columnMean(_ x: Matrix) -> [Float] {
    let n = x.rows, D = x.cols
    var acc = [Double](repeating: 0, count: D)
    acc.withUnsafeMutableBufferPointer { s in
        for r in 0..<n {
            let row = x.row(r)
            for i in 0..<D { s[i] += Double(row[i]) }
        }
    }
    let inv = 1 / Double(max(n, 1))
    return acc.map { Float($0 * inv) }
}

/// `(X − 1μᵀ)ᵀ(X − 1μᵀ) / n` (or `XᵀX / n` without a mean), D×D, full (mirrored). Rows are
/// centred in blocks into a scratch matrix and accumulated with ssyrk.
func secondMoment(_ x: Matrix, mean: [Float]?) -> Matrix {
    let n = x.rows, D = x.cols
    let c = Matrix(rows: D, cols: D)
    let block = max(1, min(n, 4096))
    let scratch = mean == nil ? nil : Matrix(rows: block, cols: D)
    var start = 0
    while start < n {
        let rows = min(block, n - start)
        let src: UnsafeMutablePointer<Float>
        if let scratch, let mean {
            mean.withUnsafeBufferPointer { mu in
                for r in 0..<rows {
                    let s = x.row(start + r), t = scratch.row(r)
                    for i in 0..<D { t[i] = s[i] - mu[i] }
                }
            }
            src = scratch.data
        } else {
            src = x.row(start)
        }
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(D), Int32(rows), 1, src, Int32(D),
                    start == 0 ? 0 : 1, c.data, Int32(D))
        start += rows
    }
    let inv = 1 / Float(n)
    for i in 0..<D {
        for j in i..<D {
            let v = c.data[i * D + j] * inv
            c.data[i * D + j] = v
            c.data[j * D + i] = v
        }
    }
    return c
}

/// Eigen-decomposition of a symmetric n×n matrix by LAPACK `ssyevd` (workspace queried first).
/// Returns eigenvalues ascending and the eigenvectors as rows of an n×n row-major array.
func symmetricEigen(_ m: Matrix, n: Int) throws -> (values: [Float], vectors: [Float]) {
    var a = Array(UnsafeBufferPointer(start: m.data, count: n * n))
    var w = [Float](repeating: 0, count: n)
    var nn = Int32(n), lda = Int32(n), info: Int32 = 0
    var lwork: Int32 = -1, liwork: Int32 = -1
    var wq: Float = 0
    var iwq: Int32 = 0
    ssyevd_("V", "U", &nn, &a, &lda, &w, &wq, &lwork, &iwq, &liwork, &info)
    guard info == 0 else { throw FathomError(.invalidArgument, "ssyevd workspace query failed (info \(info))") }
    lwork = Int32(wq.rounded(.up))
    liwork = max(iwq, 1)
    var work = [Float](repeating: 0, count: Int(max(lwork, 1)))
    var iwork = [Int32](repeating: 0, count: Int(liwork))
    ssyevd_("V", "U", &nn, &a, &lda, &w, &work, &lwork, &iwork, &liwork, &info)
    guard info == 0 else {
        throw FathomError(.invalidArgument, "eigen-decomposition did not converge (ssyevd info \(info)); check the sample for NaN/inf")
    }
    // Column-major column k (eigenvector k) is row k of the row-major view.
    return (w, a)
}

/// Σ a_i·b_i in Double.
func frobeniusDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Double {
    var s = 0.0
    for i in 0..<n { s += Double(a[i]) * Double(b[i]) }
    return s
}

/// x ← (1 − γ)·x + γ·y (element-wise over D×d).
private func blend(_ x: Matrix, _ y: Matrix, _ gamma: Float) {
    let n = x.rows * x.cols
    let keep = 1 - gamma
    for i in 0..<n { x.data[i] = keep * x.data[i] + gamma * y.data[i] }
}

/// C[d×d] = Xᵀ·Y for X, Y of D×d, row-major.
private func gemmAtB(_ D: Int, _ d: Int, _ x: Matrix, _ y: Matrix, _ c: Matrix) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(d), Int32(d), Int32(D), 1,
                x.data, Int32(d), y.data, Int32(d), 0, c.data, Int32(d))
}

/// The Frank-Wolfe linear-minimisation oracle over the spectral-norm ball: for a gradient G
/// (D×d), returns U·Vᵀ where U·Σ·Vᵀ = svd(−G) (thin), via LAPACK `sgesvd`.
///
/// A row-major D×d matrix is LAPACK's column-major d×D matrix H = (−G)ᵀ = U_h·S·Vt_h, so
/// −G = Vt_hᵀ·S·U_hᵀ and U·Vᵀ = (U_h·Vt_h)ᵀ, whose row-major storage is the column-major
/// product U_h·Vt_h: one sgemm, no transposes.
private final class FrankWolfeLMO {
    let D: Int, d: Int
    var a: [Float], s: [Float], u: [Float], vt: [Float], work: [Float]
    var lwork: Int32

    init(D: Int, d: Int) throws {
        self.D = D; self.d = d
        a = [Float](repeating: 0, count: D * d)
        s = [Float](repeating: 0, count: d)
        u = [Float](repeating: 0, count: d * d)
        vt = [Float](repeating: 0, count: d * D)
        var m = Int32(d), n = Int32(D), lda = Int32(d), ldu = Int32(d), ldvt = Int32(d)
        var q: Float = 0, lw: Int32 = -1, info: Int32 = 0
        sgesvd_("S", "S", &m, &n, &a, &lda, &s, &u, &ldu, &vt, &ldvt, &q, &lw, &info)
        guard info == 0 else { throw FathomError(.invalidArgument, "sgesvd workspace query failed (info \(info))") }
        lwork = Int32(q.rounded(.up))
        work = [Float](repeating: 0, count: Int(max(lwork, 1)))
    }

    /// Replaces `g` (the gradient) by the LMO direction U·Vᵀ of svd(−g).
    func direction(gradient g: Matrix) throws {
        let count = D * d
        a.withUnsafeMutableBufferPointer { p in
            for i in 0..<count { p[i] = -g.data[i] }
        }
        var m = Int32(d), n = Int32(D), lda = Int32(d), ldu = Int32(d), ldvt = Int32(d), info: Int32 = 0
        var lw = lwork
        sgesvd_("S", "S", &m, &n, &a, &lda, &s, &u, &ldu, &vt, &ldvt, &work, &lw, &info)
        guard info == 0 else {
            throw FathomError(.invalidArgument, "SVD did not converge in LeanVec-OOD (sgesvd info \(info)); check the data for NaN/inf")
        }
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, Int32(d), Int32(D), Int32(d), 1,
                    u, Int32(d), vt, Int32(d), 0, g.data, Int32(d))
    }
}

import Fathom

/// Seeded synthetic vectors from an anisotropic Gaussian mixture.
///
/// The model, per vector: pick cluster c (weights mildly uneven), draw z ~ N(0, I_r) in an
/// `intrinsicDim`-dimensional latent space, scale it by a decaying spectrum s_j = 1/√(1+j)
/// and a per-cluster spread, and map it to `dim` dimensions with a fixed random basis A:
///
///     x = A·(m_c + spread_c · s ⊙ z) + ε,     ε ~ N(0, noise² I_dim)
///
/// so clusters are anisotropic, the data has intrinsic dimension ≈ r, and a seed reproduces
/// the set exactly. Queries come from the same mixture (a separate random stream);
/// with `ood` they are then shifted and rotated: each is reflected through a fixed random
/// Householder plane and moved by a fixed offset of about one cluster radius, which is the
/// "queries differ from the data" case LeanVec-OOD targets.
///
/// Thread safety: an immutable value; share it across threads, each filling its own buffer.
public struct SyntheticGenerator: Sendable {
    public let dim: Int
    public let clusters: Int
    public let intrinsicDim: Int
    public let seed: UInt64
    public let noise: Float

    let basis: [Float]          // r × dim, row-major (rows are latent directions)
    let centers: [Float]        // clusters × r
    let spreads: [Float]        // clusters
    let cumulativeWeights: [Double]
    let spectrum: [Float]       // r
    let oodNormal: [Float]      // dim, unit (Householder reflection)
    let oodShift: [Float]       // dim

    /// - Parameters:
    ///   - dim: output dimension.
    ///   - clusters: mixture components (≥ 1).
    ///   - intrinsicDim: latent dimension r (1...dim); default min(dim, 32).
    ///   - seed: reproduces the dataset.
    public init(dim: Int, clusters: Int, intrinsicDim: Int? = nil, seed: UInt64, noise: Float = 0.05) {
        precondition(dim > 0 && clusters > 0)
        let r = min(dim, max(1, intrinsicDim ?? min(dim, 32)))
        self.dim = dim; self.clusters = clusters; self.intrinsicDim = r; self.seed = seed; self.noise = noise
        var rng = SeededRandom(seed: seed ^ 0xF47A_0001)
        var basis = [Float](repeating: 0, count: r * dim)
        let scale = Float(1 / Double(dim).squareRoot())
        for i in 0..<(r * dim) { basis[i] = Float(rng.gaussian()) * scale * 4 }
        var centers = [Float](repeating: 0, count: clusters * r)
        for i in 0..<(clusters * r) { centers[i] = Float(rng.gaussian()) * 2.0 }
        var spreads = [Float](repeating: 0, count: clusters)
        for c in 0..<clusters { spreads[c] = Float(0.6 + 0.8 * rng.uniform()) }
        var w = [Double](repeating: 0, count: clusters)
        var acc = 0.0
        for c in 0..<clusters { acc += 0.5 + rng.uniform(); w[c] = acc }
        for c in 0..<clusters { w[c] /= acc }
        var spectrum = [Float](repeating: 0, count: r)
        for j in 0..<r { spectrum[j] = Float(1 / (1 + Double(j)).squareRoot()) }
        var normal = [Float](repeating: 0, count: dim)
        var nn: Float = 0
        for j in 0..<dim { normal[j] = Float(rng.gaussian()); nn += normal[j] * normal[j] }
        for j in 0..<dim { normal[j] /= nn.squareRoot() }
        var shift = [Float](repeating: 0, count: dim)
        for j in 0..<dim { shift[j] = Float(rng.gaussian()) * scale * 3 }
        self.basis = basis; self.centers = centers; self.spreads = spreads
        self.cumulativeWeights = w; self.spectrum = spectrum; self.oodNormal = normal; self.oodShift = shift
    }

    /// Which stream to draw from: base vectors or queries (independent draws).
    public enum Stream: Sendable { case base, queries }

    /// Fills `out` (rows × dim floats) with rows `first ..< first+rows` of the stream, and
    /// `labels` (if given) with each row's cluster. Rows are a pure function of
    /// (seed, stream, row index), so chunks can be generated in any order.
    public func generate(_ stream: Stream, first: Int, rows: Int, ood: Bool = false,
                         into out: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>? = nil) {
        let r = intrinsicDim
        let latent = Matrix(rows: rows, cols: r)
        let streamKey: UInt64 = stream == .base ? 0xBA5E : 0x0E7
        for i in 0..<rows {
            // Per-row generator: reproducible regardless of chunking.
            var rng = SeededRandom(seed: seed &* 0x9E37_79B9_7F4A_7C15 ^ streamKey &+ UInt64(first + i) &* 0xD1B5_4A32_D192_ED03)
            let u = rng.uniform()
            var c = 0
            var lo = 0, hi = clusters - 1
            while lo < hi { let mid = (lo + hi) / 2; if cumulativeWeights[mid] < u { lo = mid + 1 } else { hi = mid } }
            c = lo
            labels?[i] = Int32(c)
            let row = latent.row(i)
            let s = spreads[c]
            for j in 0..<r { row[j] = centers[c * r + j] + s * spectrum[j] * Float(rng.gaussian()) }
            let o = out + i * dim
            for j in 0..<dim { o[j] = noise * Float(rng.gaussian()) }
        }
        // out += latent · basis   (rows × r) · (r × dim)
        basis.withUnsafeBufferPointer { b in
            BLAS.gemm(m: rows, n: dim, k: r, a: latent.data, b: b.baseAddress!, beta: 1, c: out)
        }
        if ood {
            for i in 0..<rows {
                let o = out + i * dim
                var p: Float = 0
                for j in 0..<dim { p += o[j] * oodNormal[j] }
                for j in 0..<dim { o[j] = o[j] - 2 * p * oodNormal[j] + oodShift[j] }
            }
        }
    }
}

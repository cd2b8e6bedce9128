import CKernels
import FathomCore
import FathomMath

/// The LVQ encodings Fathom stores (docs/codecs.md).
public enum LVQKind: String, Sendable, Codable, CaseIterable {
    /// 8 bits per dimension: `d + 4` bytes per vector.
    case lvq8
    /// 4 bits per dimension, two dimensions a byte (low nibble first): `ceil(d/2) + 4` bytes.
    case lvq4
    /// Two-level: the `lvq4` code followed by an 8-bit residual per dimension:
    /// `ceil(d/2) + d + 4` bytes. Its first `ceil(d/2) + 4` bytes are a valid `lvq4` code.
    case lvq4x8

    @usableFromInline var cKind: Int32 {
        switch self {
        case .lvq8: return Int32(FK_LVQ8)
        case .lvq4: return Int32(FK_LVQ4)
        case .lvq4x8: return Int32(FK_LVQ4X8)
        }
    }
}

/// Locally-adaptive vector quantization of vectors that are already projected and centred
/// (e.g. the output of ``LeanVecProjection/projectData(_:into:)``).
///
/// Each vector is stored as `[fp16 scale][fp16 bias][codes]` (little-endian, no alignment
/// needed): `bias` is the vector's minimum (rounded down to fp16), `scale` the step
/// `(max − bias)/(2^B − 1)` (rounded up), and `code_j = round((x_j − bias)/scale)`.
/// Reconstruction is `x̂_j = scale·code_j + bias`; for ``LVQKind/lvq4x8`` it is
/// `scale/255·(255·c_j + r_j) + bias − scale/2`.
///
/// Scoring never decodes: a ``PreparedQuery`` carries the query, `Σq` and `‖q‖²`, and the
/// kernels compute `⟨q, x̂⟩ = scale·⟨q, c⟩ + bias·Σq` and, for L2, `‖x̂‖²` from the codes in the
/// same pass: `‖q − x̂‖² = ‖q‖² − 2⟨q, x̂⟩ + ‖x̂‖²`.
///
/// Values must be finite and within the fp16 range (±65504); the projection's centring keeps
/// them small. Thread-safe (a value type with no state beyond its configuration).
public struct LVQCodec: Sendable, Hashable {
    public let kind: LVQKind
    public let dim: Int

    public init(kind: LVQKind, dim: Int) {
        precondition(dim >= 0 && dim <= 65535, "LVQ dimension must be in 0...65535")
        self.kind = kind
        self.dim = dim
    }

    /// Bytes of one code: `d + 4` (lvq8), `ceil(d/2) + 4` (lvq4), `ceil(d/2) + d + 4` (lvq4x8).
    @inlinable public var bytesPerVector: Int { LVQCodec.bytesPerVector(kind: kind, dim: dim) }

    /// Bytes of the primary (4-bit) level of a code: equals ``bytesPerVector`` except for
    /// ``LVQKind/lvq4x8``, whose primary level is its first `ceil(d/2) + 4` bytes.
    @inlinable public var primaryBytesPerVector: Int {
        kind == .lvq4x8 ? LVQCodec.bytesPerVector(kind: .lvq4, dim: dim) : bytesPerVector
    }

    @inlinable public static func bytesPerVector(kind: LVQKind, dim: Int) -> Int {
        switch kind {
        case .lvq8: return dim + 4
        case .lvq4: return (dim + 1) / 2 + 4
        case .lvq4x8: return (dim + 1) / 2 + dim + 4
        }
    }

    /// Encodes `dim` floats into `bytesPerVector` bytes at `into` (no alignment needed).
    @inlinable
    public func encode(_ x: UnsafePointer<Float>, into code: UnsafeMutableRawPointer) {
        fk_lvq_encode(kind.cKind, x, dim, code)
    }

    /// Encodes every row of `m` (`m.cols == dim`) into a dense array of codes.
    public func encode(_ m: Matrix) -> [UInt8] {
        precondition(m.cols == dim, "matrix has \(m.cols) columns, codec expects \(dim)")
        let size = bytesPerVector
        return [UInt8](unsafeUninitializedCapacity: size * m.rows) { buf, count in
            for i in 0..<m.rows { fk_lvq_encode(kind.cKind, m.row(i), dim, buf.baseAddress! + i * size) }
            count = size * m.rows
        }
    }

    /// Decodes one code into `dim` floats (the full two-level reconstruction for lvq4x8).
    @inlinable
    public func decode(_ code: UnsafeRawPointer, into x: UnsafeMutablePointer<Float>) {
        fk_lvq_decode(kind.cKind, code, dim, x)
    }

    /// Decodes only the primary 4-bit level of an lvq4x8 code (same as ``decode(_:into:)``
    /// for the other kinds).
    @inlinable
    public func decodePrimary(_ code: UnsafeRawPointer, into x: UnsafeMutablePointer<Float>) {
        fk_lvq_decode(kind == .lvq4x8 ? LVQKind.lvq4.cKind : kind.cKind, code, dim, x)
    }

    /// The step `Δ` and the bias of a code (for error bounds and diagnostics).
    public func parameters(_ code: UnsafeRawPointer) -> (scale: Float, bias: Float) {
        let p = code.assumingMemoryBound(to: UInt8.self)
        let s = UInt16(p[0]) | UInt16(p[1]) << 8
        let b = UInt16(p[2]) | UInt16(p[3]) << 8
        return (fk_f16_to_f32(s), fk_f16_to_f32(b))
    }

    // MARK: - scoring

    /// A query ready to be scored against codes: its values plus `Σq` and `‖q‖²`.
    ///
    /// The query must be in the same space as the encoded vectors: for LeanVec that is
    /// `projectQuery(q, metric:)` (mean subtracted for L2, not for inner product). Reuse one
    /// per search thread with ``update(_:)`` to avoid allocating per query.
    public struct PreparedQuery: Sendable {
        public private(set) var values: [Float]
        /// Σ q_j.
        public private(set) var sum: Float
        /// ‖q‖².
        public private(set) var normSquared: Float

        public init(dim: Int) {
            values = [Float](repeating: 0, count: dim)
            sum = 0
            normSquared = 0
        }

        public init(_ q: UnsafePointer<Float>, dim: Int) {
            self.init(dim: dim)
            update(q)
        }

        /// Replaces the query (same dimension), reusing the storage.
        public mutating func update(_ q: UnsafePointer<Float>) {
            var s = 0.0, n = 0.0
            let d = values.count
            values.withUnsafeMutableBufferPointer { v in
                for j in 0..<d {
                    let x = q[j]
                    v[j] = x
                    s += Double(x)
                    n += Double(x) * Double(x)
                }
            }
            sum = Float(s)
            normSquared = Float(n)
        }

        public var dim: Int { values.count }
    }

    /// Precomputes what scoring needs (`Σq`, `‖q‖²`) for a query of `dim` floats.
    public func prepare(query: UnsafePointer<Float>) -> PreparedQuery { PreparedQuery(query, dim: dim) }

    @usableFromInline static func cMetric(_ m: Metric) -> Int32 {
        m == .l2 ? Int32(FK_LVQ_METRIC_L2) : Int32(FK_LVQ_METRIC_IP)
    }

    /// Scores the query against `count` codes that start `stride` bytes apart (stride ≥
    /// ``bytesPerVector``; e.g. records `{u32 id, code}` with `codes` pointing at the first
    /// code), writing distances to `out`: squared L2 for `.l2`, `−⟨q, x̂⟩` for `.ip` and
    /// `.cosine` (smaller is nearer). lvq4x8 codes are scored with both levels.
    public func distances(_ prepared: PreparedQuery, codes: UnsafeRawPointer, count: Int, stride: Int,
                          metric: Metric, out: UnsafeMutablePointer<Float>) {
        precondition(prepared.dim == dim && stride >= bytesPerVector)
        prepared.values.withUnsafeBufferPointer { q in
            fk_lvq_batch(kind.cKind, LVQCodec.cMetric(metric), q.baseAddress!, prepared.sum, prepared.normSquared,
                         codes, count, dim, stride, out)
        }
    }

    /// Like ``distances(_:codes:count:stride:metric:out:)`` but for lvq4x8 uses only the
    /// 4-bit primary level (the first stage of two-stage scoring); stride may then be as small
    /// as ``primaryBytesPerVector``. For lvq8 / lvq4 it is the same as `distances`.
    public func primaryDistances(_ prepared: PreparedQuery, codes: UnsafeRawPointer, count: Int, stride: Int,
                                 metric: Metric, out: UnsafeMutablePointer<Float>) {
        precondition(prepared.dim == dim && stride >= primaryBytesPerVector)
        let k = kind == .lvq4x8 ? LVQKind.lvq4.cKind : kind.cKind
        prepared.values.withUnsafeBufferPointer { q in
            fk_lvq_batch(k, LVQCodec.cMetric(metric), q.baseAddress!, prepared.sum, prepared.normSquared,
                         codes, count, dim, stride, out)
        }
    }

    /// Distance from a query given as raw values (`dim` floats, their sum and squared norm,
    /// as ``PreparedQuery`` holds them) to one code: the form for loops that score codes one
    /// at a time (graph search), without touching an array per call.
    @inline(__always)
    public func distance(query q: UnsafePointer<Float>, sum: Float, normSquared: Float,
                         code: UnsafeRawPointer, metric: Metric) -> Float {
        var out: Float = 0
        fk_lvq_batch(kind.cKind, LVQCodec.cMetric(metric), q, sum, normSquared, code, 1, dim, bytesPerVector, &out)
        return out
    }

    /// Distance from the query to one code (see ``distances(_:codes:count:stride:metric:out:)``).
    public func distance(_ prepared: PreparedQuery, code: UnsafeRawPointer, metric: Metric) -> Float {
        var out: Float = 0
        distances(prepared, codes: code, count: 1, stride: bytesPerVector, metric: metric, out: &out)
        return out
    }

    /// `⟨q, x̂⟩` and `‖x̂‖²` for one code, through the dispatched kernel.
    public func dotAndNorm(_ prepared: PreparedQuery, code: UnsafeRawPointer) -> (dot: Float, norm: Float) {
        var norm: Float = 0
        let dot: Float = prepared.values.withUnsafeBufferPointer { q in
            switch kind {
            case .lvq8: return fk_lvq8_dot(q.baseAddress!, prepared.sum, code, dim, &norm)
            case .lvq4: return fk_lvq4_dot(q.baseAddress!, prepared.sum, code, dim, &norm)
            case .lvq4x8: return fk_lvq4x8_dot(q.baseAddress!, prepared.sum, code, dim, &norm)
            }
        }
        return (dot, norm)
    }
}

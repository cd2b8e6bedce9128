import CKernels
import FathomCore

/// Swift entry points to the SIMD kernels in `CKernels` (AVX-512 or AVX2+FMA with a scalar
/// fallback, chosen at run time; `FATHOM_SIMD` lowers the level), plus metric-level helpers.
public enum Distance {
    /// The instruction set the kernels run on: `"avx512+vnni"`, `"avx512"`, `"avx2+fma"` or `"scalar"`.
    public static var simdName: String { String(cString: fk_simd_name()) }

    @inlinable @inline(__always)
    public static func l2sq(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ d: Int) -> Float {
        fk_l2sq_f32(a, b, d)
    }

    /// Hints the CPU to load `lines` cache lines from `p` (no effect on results). Thread-safe.
    @inlinable @inline(__always)
    public static func prefetch(_ p: UnsafeRawPointer, lines: Int) { fk_prefetch(p, Int32(lines)) }

    /// Squared L2 from `q` to rows `ids[0..<n]` of the row-major `base` (row stride `d`),
    /// prefetching every row before scoring (same values as ``l2sq(_:_:_:)``). Thread-safe.
    @inlinable @inline(__always)
    public static func l2sqGather(_ q: UnsafePointer<Float>, _ base: UnsafePointer<Float>, ids: UnsafePointer<UInt32>,
                                  count n: Int, _ d: Int, into out: UnsafeMutablePointer<Float>) {
        fk_l2sq_f32_gather(q, base, ids, n, d, out)
    }

    @inlinable @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ d: Int) -> Float {
        fk_dot_f32(a, b, d)
    }

    /// Distance between a float query and a float vector under `metric` (smaller is nearer;
    /// cosine inputs are expected normalized, so it is scored like `ip`).
    @inlinable @inline(__always)
    public static func distance(_ metric: Metric, _ q: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ d: Int) -> Float {
        metric == .l2 ? fk_l2sq_f32(q, x, d) : -fk_dot_f32(q, x, d)
    }

    /// Scores a float query against `n` stored vectors of `type` placed `stride` bytes apart,
    /// writing metric distances to `out`. Integer vectors are scored against the float query
    /// (mixed kernels), so one query representation serves every element type.
    @inlinable
    public static func batch(_ metric: Metric, _ type: ElementType, query: UnsafePointer<Float>,
                             base: UnsafeRawPointer, n: Int, d: Int, stride: Int,
                             out: UnsafeMutablePointer<Float>) {
        switch (metric, type) {
        case (.l2, .float32): fk_l2sq_f32_batch(query, base, n, d, stride, out)
        case (.l2, .uint8): fk_l2sq_f32_u8_batch(query, base, n, d, stride, out)
        case (.l2, .int8): fk_l2sq_f32_i8_batch(query, base, n, d, stride, out)
        case (_, .float32): fk_dot_f32_batch(query, base, n, d, stride, out); negate(out, n)
        case (_, .uint8): fk_dot_f32_u8_batch(query, base, n, d, stride, out); negate(out, n)
        case (_, .int8): fk_dot_f32_i8_batch(query, base, n, d, stride, out); negate(out, n)
        }
    }

    /// Distance from a float query to one stored vector of `type`.
    @inlinable @inline(__always)
    public static func one(_ metric: Metric, _ type: ElementType, query: UnsafePointer<Float>,
                           vector: UnsafeRawPointer, d: Int) -> Float {
        switch (metric, type) {
        case (.l2, .float32): return fk_l2sq_f32(query, vector.assumingMemoryBound(to: Float.self), d)
        case (.l2, .uint8): return fk_l2sq_f32_u8(query, vector.assumingMemoryBound(to: UInt8.self), d)
        case (.l2, .int8): return fk_l2sq_f32_i8(query, vector.assumingMemoryBound(to: Int8.self), d)
        case (_, .float32): return -fk_dot_f32(query, vector.assumingMemoryBound(to: Float.self), d)
        case (_, .uint8): return -fk_dot_f32_u8(query, vector.assumingMemoryBound(to: UInt8.self), d)
        case (_, .int8): return -fk_dot_f32_i8(query, vector.assumingMemoryBound(to: Int8.self), d)
        }
    }

    @inlinable @inline(__always)
    static func negate(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { p[i] = -p[i] }
    }

    /// Scales `v` to unit length in place; returns false (leaving `v` unchanged) for a zero vector.
    @discardableResult
    public static func normalize(_ v: UnsafeMutablePointer<Float>, _ d: Int) -> Bool {
        let n2 = fk_dot_f32(v, v, d)
        guard n2 > 0, n2.isFinite else { return false }
        let inv = 1 / n2.squareRoot()
        for i in 0..<d { v[i] *= inv }
        return true
    }
}

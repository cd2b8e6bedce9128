import FathomCore

/// A dense, row-major, 64-byte-aligned matrix of `Float` that owns its storage.
///
/// The one container Fathom's math works on: rows are contiguous, so kernels and BLAS
/// read them without copies. It is a reference type so that large matrices are never
/// copied by accident; treat a matrix as immutable once shared across threads.
public final class Matrix: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled `rows × cols` matrix.
    public init(rows: Int, cols: Int) {
        precondition(rows >= 0 && cols >= 0)
        self.rows = rows
        self.cols = cols
        let count = max(rows * cols, 1)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
        data = raw.bindMemory(to: Float.self, capacity: count)
        data.initialize(repeating: 0, count: count)
    }

    /// A matrix holding a copy of `values` (row-major, `rows × cols`).
    public convenience init(rows: Int, cols: Int, values: [Float]) {
        precondition(values.count == rows * cols)
        self.init(rows: rows, cols: cols)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: rows * cols) }
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    /// Pointer to row `i`.
    @inlinable public func row(_ i: Int) -> UnsafeMutablePointer<Float> { data + i * cols }

    /// Bytes of storage.
    public var byteCount: Int { rows * cols * 4 }

    /// Row `i` copied into an array (for tests and small tools).
    public func rowArray(_ i: Int) -> [Float] { Array(UnsafeBufferPointer(start: row(i), count: cols)) }

    /// Squared L2 norm of every row.
    public func rowNormsSquared() -> [Float] {
        var out = [Float](repeating: 0, count: rows)
        for i in 0..<rows { out[i] = Distance.dot(row(i), row(i), cols) }
        return out
    }
}

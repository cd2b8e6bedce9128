import Fathom
import FathomTools
import Foundation

/// Writes a seeded synthetic float32 dataset as .fbin in `dir` (`base`, and `queries` when
/// `nq > 0`) and returns the matrices (`queries` has one zero row when `nq` is 0).
///
/// Thread safety: writes only the two files named; callable from any thread.
@discardableResult
public func writeSynthetic(dir: TempDir, n: Int, d: Int, nq: Int = 0, clusters: Int = 20, seed: UInt64 = 7,
                           base: String = "base.fbin", queries: String = "query.fbin") throws -> (base: Matrix, queries: Matrix) {
    let gen = SyntheticGenerator(dim: d, clusters: clusters, intrinsicDim: min(d, 12), seed: seed)
    let b = Matrix(rows: n, cols: d)
    gen.generate(.base, first: 0, rows: n, into: b.data)
    let w = try VectorFileWriter(path: dir.file(base), format: .fbin, elementType: .float32, dimension: d)
    try w.append(UnsafeRawPointer(b.data), count: n)
    try w.close()
    let q = Matrix(rows: max(nq, 1), cols: d)
    if nq > 0 {
        gen.generate(.queries, first: 0, rows: nq, into: q.data)
        let qw = try VectorFileWriter(path: dir.file(queries), format: .fbin, elementType: .float32, dimension: d)
        try qw.append(UnsafeRawPointer(q.data), count: nq)
        try qw.close()
    }
    return (b, q)
}

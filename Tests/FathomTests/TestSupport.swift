import FathomTools
import Foundation
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// A temporary directory removed when the value is released.
final class TempDir {
    let path: String
    init(_ name: String = "fathom-test") {
        path = NSTemporaryDirectory() + "/\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

/// Writes a seeded synthetic float32 dataset (and queries) as .fbin; returns the matrices.
@discardableResult
func writeSynthetic(dir: TempDir, n: Int, d: Int, nq: Int = 0, clusters: Int = 20, seed: UInt64 = 7,
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

/// Exact top-k by a plain scalar scan (the reference the tests compare against).
func bruteForce(_ base: Matrix, _ q: UnsafePointer<Float>, k: Int, metric: Metric) -> [UInt32] {
    var all = [(Float, UInt32)]()
    for i in 0..<base.rows {
        var acc: Double = 0
        let r = base.row(i)
        for j in 0..<base.cols {
            if metric == .l2 { let t = Double(q[j]) - Double(r[j]); acc += t * t } else { acc -= Double(q[j]) * Double(r[j]) }
        }
        all.append((Float(acc), UInt32(i)))
    }
    all.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
    return all.prefix(k).map(\.1)
}

/// Recall@k of `index` at `probes` over the rows of `queries`, against an exact scan of `base` (l2).
func recallAt(_ index: VectorIndex, base: Matrix, queries q: Matrix, probes: Int, k: Int = 10) throws -> Double {
    var hits = 0
    for i in 0..<q.rows {
        let got = Set(try index.search(Array(UnsafeBufferPointer(start: q.row(i), count: q.cols)), k: k,
                                       parameters: SearchParameters(probes: probes)).map(\.id))
        hits += bruteForce(base, q.row(i), k: k, metric: .l2).filter { got.contains($0) }.count
    }
    return Double(hits) / Double(q.rows * k)
}

import Foundation
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

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

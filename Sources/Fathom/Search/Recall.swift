import FathomStorage

/// Recall@k as big-ann-benchmarks computes it: a returned id counts if it is among the
/// true k nearest, where the true set is extended by every ground-truth neighbour whose
/// distance ties the k-th (within 1e-6 relative); the result is averaged over queries.
public enum Recall {
    /// Recall of `results[q]` (ids, any order) against `gt`, for the first `results.count` queries.
    public static func compute(results: [[UInt32]], gt: GroundTruth, k: Int) -> Double {
        precondition(k <= gt.k, "ground truth has \(gt.k) neighbours per query, fewer than k = \(k)")
        var total = 0.0
        for (q, res) in results.enumerated() {
            total += Double(hits(res, gt: gt, query: q, k: k)) / Double(k)
        }
        return results.isEmpty ? 0 : total / Double(results.count)
    }

    /// Number of ids of `res` in the (tie-extended) true top-k of query `q`.
    public static func hits(_ res: [UInt32], gt: GroundTruth, query q: Int, k: Int) -> Int {
        let row = gt.neighbors(of: q)
        var limit = k
        if let dists = gt.distances {
            let base = q * gt.k
            let kth = dists[base + k - 1]
            let tol = max(abs(kth) * 1e-6, 1e-6)
            while limit < gt.k && abs(dists[base + limit] - kth) <= tol { limit += 1 }
        }
        let truth = Set(row.prefix(limit).map { UInt32(bitPattern: $0) })
        var h = 0
        for id in res.prefix(k) where truth.contains(id) { h += 1 }
        return h
    }
}

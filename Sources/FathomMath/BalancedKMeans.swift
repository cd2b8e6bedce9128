import FathomCore
import Foundation

/// Hierarchical balanced k-means (SPTAG's recipe, simplified) that splits a point set into
/// many small clusters of even size and returns one real point per cluster: the heads.
///
/// Each tree node of `s` points is split into `k = min(branching, s / leafSize)` children by
/// k-means whose assignment cost is `‖x − c‖² + λ·|C|` (|C| = the cluster's size in the
/// previous iteration), which keeps children even. λ is set per node from the data:
/// `λ = balance · mean(‖x − c‖²) / mean(|C|)`, so a cluster twice the average size pays
/// `balance` times the mean distortion. Nodes larger than a batch train on a random
/// mini-batch; all points are then assigned once. A node at most `1.5 × leafSize` is a
/// leaf, and its head is the member nearest the leaf's mean ("snapped" to a real vector).
public struct BalancedKMeans: Sendable {
    public var branching = 32
    public var maxIterations = 16
    public var batchSize = 8192
    public var balance: Float = 1.0
    public var seed: UInt64 = 42

    public init() {}

    /// Threads that split tree nodes (each level's nodes are independent). The heads do not
    /// depend on it: every node draws from its own generator, seeded by `seed` and its range.
    public var threads = 1

    /// Picks about `targetHeads` heads from `points` (rows of a float matrix, squared L2).
    /// - Returns: row indices into `points`, one per leaf, in tree order.
    public func selectHeads(points: Matrix, targetHeads: Int, progress: ProgressReporter = .silent) -> [Int] {
        let m = points.rows
        guard m > 0 else { return [] }
        let target = max(1, min(targetHeads, m))
        // Splits into k = round(s / leaf) children and leaves of ≤ 1.5 × leaf end up about
        // 2/3 of the nominal size on average (measured: fashion-mnist, 60K points, target 6000
        // → 8978 leaves), so the nominal size is set 1.5× above the mean we want.
        let leaf = 1.5 * Double(m) / Double(target)
        let perm = UnsafeMutablePointer<Int32>.allocate(capacity: m)
        defer { perm.deallocate() }
        for i in 0..<m { perm[i] = Int32(i) }
        let T = max(1, threads)
        let scratches = (0..<T).map { _ in Scratch(d: points.cols, k: branching, block: 2048) }
        var heads = [(lo: Int, row: Int)]()
        heads.reserveCapacity(target + target / 4)
        progress.begin("train: balanced k-means (\(target) heads from \(m) points, \(T) thread(s))", total: UInt64(m))
        // Level by level: the nodes of a level own disjoint ranges of `perm`.
        var level: [(lo: Int, hi: Int)] = [(0, m)]
        let shared = KMeansShared(points: points, perm: perm)
        while !level.isEmpty {
            let nodes = level
            var results = [NodeResult](repeating: .leaf(0), count: nodes.count)
            results.withUnsafeMutableBufferPointer { out in
                let outP = out.baseAddress!
                let box = KMeansLevel(nodes: nodes, out: outP)
                let next = KMeansCounter()
                let work: @Sendable (Int) -> Void = { t in
                    while true {
                        let i = next.next()
                        if i >= box.nodes.count { break }
                        box.out[i] = self.processNode(shared, lo: box.nodes[i].lo, hi: box.nodes[i].hi, leaf: leaf,
                                                      scratch: scratches[t], progress: progress)
                    }
                }
                if T == 1 || nodes.count == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: min(T, nodes.count), execute: work) }
            }
            level = []
            for (i, r) in results.enumerated() {
                switch r {
                case .leaf(let row): heads.append((nodes[i].lo, row))
                case .split(let children): level.append(contentsOf: children)
                }
            }
        }
        progress.end("\(heads.count) heads")
        // Tree order: leaves by the start of their range (the depth-first order).
        heads.sort { $0.lo < $1.lo }
        return heads.map(\.row)
    }

    enum NodeResult { case leaf(Int); case split([(lo: Int, hi: Int)]) }

    /// Splits one node (or makes it a leaf) using its own generator; touches only
    /// `perm[lo..<hi]` and `scratch`.
    func processNode(_ sh: KMeansShared, lo: Int, hi: Int, leaf: Double, scratch: Scratch, progress: ProgressReporter) -> NodeResult {
        let s = hi - lo
        let points = sh.points, perm = sh.perm
        if Double(s) <= leaf * 1.5 || s <= 2 {
            progress.advance(UInt64(s))
            return .leaf(Int(leafHead(points: points, perm: perm, lo: lo, hi: hi, scratch: scratch)))
        }
        var rng = SeededRandom(seed: seed ^ (UInt64(lo) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(hi) &* 0xC2B2_AE3D_27D4_EB4F))
        let k = max(2, min(branching, Int((Double(s) / leaf).rounded())))
        let assign = splitNode(points: points, idx: perm + lo, s: s, k: k, rng: &rng, scratch: scratch)
        // Counting sort of the node's range by child.
        var counts = [Int](repeating: 0, count: k)
        for a in assign { counts[Int(a)] += 1 }
        var starts = [Int](repeating: 0, count: k)
        for c in 1..<k { starts[c] = starts[c - 1] + counts[c - 1] }
        let old = Array(UnsafeBufferPointer(start: perm + lo, count: s))
        var pos = starts
        for i in 0..<s { let c = Int(assign[i]); perm[lo + pos[c]] = old[i]; pos[c] += 1 }
        var children = [(lo: Int, hi: Int)]()
        for c in 0..<k where counts[c] > 0 {
            let a = lo + starts[c]
            if counts[c] == s {
                // k-means could not split (duplicates): cut the range in equal parts.
                for p in 0..<k {
                    let x = lo + s * p / k, y = lo + s * (p + 1) / k
                    if y > x { children.append((x, y)) }
                }
                break
            }
            children.append((a, a + counts[c]))
        }
        return .split(children)
    }

    /// Per-thread k-means buffers: one thread uses a scratch at a time.
    final class Scratch: @unchecked Sendable {
        let block: Int
        let k: Int
        let x: Matrix        // gathered points
        let dots: Matrix     // block × k
        let centroids: Matrix
        var cnorm: [Float]
        init(d: Int, k: Int, block: Int) {
            self.block = block; self.k = k
            x = Matrix(rows: block, cols: d)
            dots = Matrix(rows: block, cols: k)
            centroids = Matrix(rows: k, cols: d)
            cnorm = [Float](repeating: 0, count: k)
        }
    }

    /// Member of the range nearest to the range's mean.
    func leafHead(points: Matrix, perm: UnsafeMutablePointer<Int32>, lo: Int, hi: Int, scratch: Scratch) -> Int32 {
        let d = points.cols
        let mean = scratch.centroids.row(0)
        mean.initialize(repeating: 0, count: d)
        for i in lo..<hi { let r = points.row(Int(perm[i])); for j in 0..<d { mean[j] += r[j] } }
        let inv = 1 / Float(hi - lo)
        for j in 0..<d { mean[j] *= inv }
        var best = perm[lo], bestD = Float.infinity
        for i in lo..<hi {
            let dd = Distance.l2sq(mean, points.row(Int(perm[i])), d)
            if dd < bestD { bestD = dd; best = perm[i] }
        }
        return best
    }

    /// Balanced k-means on the `s` points `idx[0..<s]`; returns each point's child in 0..<k.
    func splitNode(points: Matrix, idx: UnsafeMutablePointer<Int32>, s: Int, k: Int,
                   rng: inout SeededRandom, scratch: Scratch) -> [Int32] {
        let d = points.cols
        let c = scratch.centroids
        // Training set: all points, or a random mini-batch.
        let batch: [Int32]
        if s <= batchSize { batch = Array(UnsafeBufferPointer(start: idx, count: s)) }
        else { batch = rng.sample(batchSize, from: s).map { idx[$0] } }
        let b = batch.count
        // Best of 3 random seedings (lowest plain distortion on the batch).
        var bestSeed = [Int](), bestCost = Float.infinity
        var assign = [Int32](repeating: 0, count: b)
        var sizes = [Float](repeating: 0, count: k)
        for _ in 0..<3 {
            let seeds = rng.sample(k, from: b)
            for (ci, si) in seeds.enumerated() { c.row(ci).update(from: points.row(Int(batch[si])), count: d) }
            let cost = assignBlockwise(points: points, ids: batch, k: k, lambda: 0, sizes: sizes, out: &assign, scratch: scratch)
            if cost < bestCost { bestCost = cost; bestSeed = seeds }
        }
        for (ci, si) in bestSeed.enumerated() { c.row(ci).update(from: points.row(Int(batch[si])), count: d) }
        var lambda: Float = 0
        var prevCost = Float.infinity
        for _ in 0..<maxIterations {
            let cost = assignBlockwise(points: points, ids: batch, k: k, lambda: lambda, sizes: sizes, out: &assign, scratch: scratch)
            // Update centroids.
            for ci in 0..<k { c.row(ci).initialize(repeating: 0, count: d) }
            for ci in 0..<k { sizes[ci] = 0 }
            for i in 0..<b {
                let a = Int(assign[i]); sizes[a] += 1
                let r = points.row(Int(batch[i])); let cr = c.row(a)
                for j in 0..<d { cr[j] += r[j] }
            }
            for ci in 0..<k {
                if sizes[ci] > 0 {
                    let inv = 1 / sizes[ci]; let cr = c.row(ci)
                    for j in 0..<d { cr[j] *= inv }
                } else {
                    c.row(ci).update(from: points.row(Int(batch[rng.below(b)])), count: d)
                }
            }
            // λ from the data: a cluster twice the mean size pays `balance` × mean distortion.
            let meanDist = cost / Float(b)
            lambda = balance * meanDist / (Float(b) / Float(k))
            if prevCost.isFinite && abs(prevCost - cost) <= 1e-3 * prevCost { break }
            prevCost = cost
        }
        // Final assignment of all points, with sizes scaled to the whole node.
        let scale = Float(s) / Float(b)
        let scaled = sizes.map { $0 * scale }
        var all = [Int32](repeating: 0, count: s)
        let ids = Array(UnsafeBufferPointer(start: idx, count: s))
        _ = assignBlockwise(points: points, ids: ids, k: k, lambda: lambda / scale, sizes: scaled, out: &all, scratch: scratch)
        return all
    }

    /// Assigns each point to argmin ‖x − c‖² + λ·size, in blocks through sgemm. Returns the
    /// summed plain distortion.
    func assignBlockwise(points: Matrix, ids: [Int32], k: Int, lambda: Float, sizes: [Float],
                         out: inout [Int32], scratch: Scratch) -> Float {
        let d = points.cols
        let c = scratch.centroids
        for ci in 0..<k { scratch.cnorm[ci] = Distance.dot(c.row(ci), c.row(ci), d) }
        var total: Float = 0
        var start = 0
        while start < ids.count {
            let rows = min(scratch.block, ids.count - start)
            for i in 0..<rows { scratch.x.row(i).update(from: points.row(Int(ids[start + i])), count: d) }
            BLAS.gemmABt(m: rows, n: k, k: d, a: scratch.x.data, b: c.data, c: scratch.dots.data, ldc: scratch.k)
            for i in 0..<rows {
                let xr = scratch.x.row(i)
                let xn = Distance.dot(xr, xr, d)
                let dr = scratch.dots.row(i)
                var best = 0, bestScore = Float.infinity, bestDist: Float = 0
                for ci in 0..<k {
                    let dist = max(0, xn + scratch.cnorm[ci] - 2 * dr[ci])
                    let score = dist + lambda * sizes[ci]
                    if score < bestScore { bestScore = score; best = ci; bestDist = dist }
                }
                out[start + i] = Int32(best)
                total += bestDist
            }
            start += rows
        }
        return total
    }
}

/// What every k-means thread shares: the points (read-only) and the permutation, of which
/// each node of a level owns a disjoint range.
struct KMeansShared: @unchecked Sendable {
    let points: Matrix
    let perm: UnsafeMutablePointer<Int32>
}

/// One level's nodes and their result slots (slot i written only by the thread that took node i).
struct KMeansLevel: @unchecked Sendable {
    let nodes: [(lo: Int, hi: Int)]
    let out: UnsafeMutablePointer<BalancedKMeans.NodeResult>
}

final class KMeansCounter: @unchecked Sendable {
    // Invariant: `value` is read and written only under `lock`.
    private let lock = NSLock()
    private var value = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; let v = value; value += 1; return v }
}

extension BalancedKMeans {
    /// Splits `points` in two (SPFresh's posting split): 2-means from the two mutually far
    /// points (the farthest from the mean, then the farthest from it), `iterations` rounds of
    /// nearest-centre assignment in which each side keeps at least `minShare` of the points
    /// (points are taken across by their distance difference when a side is short), then the
    /// point nearest each centre. Deterministic; squared L2.
    /// - Returns: per point whether it is on the second side, and the two centre points
    ///   (row indices); nil for fewer than 2 points or all points equal.
    public static func split(points: Matrix, minShare: Double = 0.3, iterations: Int = 8) -> (second: [Bool], first: Int, other: Int)? {
        let n = points.rows, d = points.cols
        guard n >= 2 else { return nil }
        let ca = UnsafeMutablePointer<Float>.allocate(capacity: d), cb = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { ca.deallocate(); cb.deallocate() }
        ca.initialize(repeating: 0, count: d)
        for i in 0..<n { let r = points.row(i); for j in 0..<d { ca[j] += r[j] } }
        for j in 0..<d { ca[j] /= Float(n) }
        func farthest(from c: UnsafePointer<Float>) -> (Int, Float) {
            var best = 0, bd: Float = -1
            for i in 0..<n { let v = Distance.l2sq(points.row(i), c, d); if v > bd { bd = v; best = i } }
            return (best, bd)
        }
        let (a, _) = farthest(from: ca)
        let (b, db) = farthest(from: points.row(a))
        guard db > 0 else { return nil }
        ca.update(from: points.row(a), count: d); cb.update(from: points.row(b), count: d)
        var second = [Bool](repeating: false, count: n)
        var delta = [(Float, Int)](repeating: (0, 0), count: n)
        let least = max(1, Int((minShare * Double(n)).rounded(.up)))
        for _ in 0..<max(1, iterations) {
            var nb = 0
            for i in 0..<n {
                let x = points.row(i)
                let v = Distance.l2sq(x, ca, d) - Distance.l2sq(x, cb, d)   // > 0: nearer b
                delta[i] = (v, i); second[i] = v > 0; if v > 0 { nb += 1 }
            }
            if nb < least || n - nb < least {
                delta.sort { $0.0 > $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }   // most b-ward first
                let take = nb < least ? least : n - least
                for (r, e) in delta.enumerated() { second[e.1] = r < take }
            }
            ca.initialize(repeating: 0, count: d); cb.initialize(repeating: 0, count: d)
            var na = 0
            nb = 0
            for i in 0..<n {
                let r = points.row(i)
                if second[i] { nb += 1; for j in 0..<d { cb[j] += r[j] } } else { na += 1; for j in 0..<d { ca[j] += r[j] } }
            }
            for j in 0..<d { ca[j] /= Float(max(na, 1)); cb[j] /= Float(max(nb, 1)) }
        }
        var first = -1, other = -1
        var bestA = Float.infinity, bestB = Float.infinity
        for i in 0..<n {
            if second[i] { let v = Distance.l2sq(points.row(i), cb, d); if v < bestB { bestB = v; other = i } }
            else { let v = Distance.l2sq(points.row(i), ca, d); if v < bestA { bestA = v; first = i } }
        }
        guard first >= 0, other >= 0 else { return nil }
        return (second, first, other)
    }
}

import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// The head count chosen for recall (docs/build.md, "How many heads"): a small SPANN
/// partition is built on a sample of the input at several heads-per-vector ratios, and the
/// fewest vectors per head (the most heads, so the shortest postings) whose partition still
/// holds the target share of each held-out query's true neighbours in its nearest
/// `targetProbes` postings wins. The memory budget and the serving-RAM target then bound
/// that choice from above (``BuildPlanner``); they do not make it.
///
/// The model is the partition's own: the sample's heads come from the build's balanced
/// k-means, each neighbour joins its postings by the build's closure rule over its 64
/// nearest heads, and the query probes its `targetProbes` nearest heads exactly. What it
/// leaves out (the router's approximate head search, the codes' error, the posting cap)
/// costs real recall a few points, which is why the target is met at the low end of the
/// probes range (8 of "8–12"). The trial at `m` vectors per head on a sample of S vectors
/// stands for the full build at the same `m`: the same share of a head's region is covered
/// by a query's k nearest neighbours at any density.
///
/// Value type, immutable once made; thread-safe.
public struct HeadCalibration: Sendable, Equatable, Codable {
    /// One ratio tried: `pointsPerHead` is the k-means target (sample rows / heads asked),
    /// `heads` what k-means made, `recall` the share of the queries' 10 nearest neighbours
    /// found in their `targetProbes` nearest postings.
    public struct Trial: Sendable, Equatable, Codable {
        public var pointsPerHead: Double
        public var heads: Int
        public var recall: Double
    }
    public var targetRecall: Double
    public var targetProbes: Int
    /// Sample rows the partitions were built on, and held-out queries drawn from the input.
    public var sampleRows: Int
    public var queries: Int
    public var trials: [Trial]
    /// Vectors per head chosen (the build asks k-means for n / this many heads).
    public var pointsPerHead: Double
    /// The target was reached (false: not even at the coarsest ratio tried; the plan then
    /// keeps the serving-RAM ratio).
    public var reachedTarget: Bool
    /// Wall time of the calibration (sampling passes and trials); the plan counts it.
    public var seconds: Double

    /// Heads per vector chosen.
    public var headRatio: Double { 1 / pointsPerHead }

    /// One line: the trials and the choice.
    public var summary: String {
        let t = trials.sorted { $0.pointsPerHead < $1.pointsPerHead }
            .map { String(format: "%.0f/head → %.3f", $0.pointsPerHead, $0.recall) }.joined(separator: ", ")
        return String(format: "recall@10 in the %d nearest postings on a %d-vector sample, %d held-out queries: %@; ",
                      targetProbes, sampleRows, queries, t)
            + (reachedTarget ? String(format: "%.0f vectors per head is the finest partition reaching %.2f", pointsPerHead, targetRecall)
                             : String(format: "no ratio up to %.0f vectors per head reached %.2f", pointsPerHead, targetRecall))
    }

    /// Vectors-per-head ratios tried, finest first (each ~√2 apart).
    /// Coarser partitions are not tried: past 64 vectors per head a probe reads several
    /// pages and scores hundreds of codes, and more probes of a finer partition cost less.
    static let grid: [Double] = [8, 11, 16, 22, 32, 45, 64]
    /// Below this many vectors the sample is the whole input and too small to model; the
    /// plan keeps the serving-RAM ratio.
    public static let minimumVectors = 2_000
    static let neighbours = 10

    /// Runs the trials on `sample` (rows are already finite and, for cosine, normalized);
    /// `queryRows` of them are held out as queries. Deterministic for a seed.
    static func run(sample: Matrix, queryRows: [Int], metric: Metric, replicas: Int, rngFactor: Float,
                    targetRecall: Double, targetProbes: Int, seed: UInt64, threads: Int,
                    progress: ProgressReporter) -> HeadCalibration {
        let t0 = Date()
        let d = sample.cols
        let isQuery = Set(queryRows)
        let baseRows = (0..<sample.rows).filter { !isQuery.contains($0) }
        let B = baseRows.count, Q = queryRows.count
        let base = Matrix(rows: B, cols: d)
        for (i, r) in baseRows.enumerated() { base.row(i).update(from: sample.row(r), count: d) }
        let queries = Matrix(rows: Q, cols: d)
        for (i, r) in queryRows.enumerated() { queries.row(i).update(from: sample.row(r), count: d) }
        let k = min(neighbours, B)
        // Exact neighbours of each query among the base rows, by the index's metric.
        let truth = nearest(queries, in: base, k: k, metric: metric)
        // Every base row some query needs, once.
        var needed = [Int32](), slot = [Int32: Int]()
        for id in truth where slot[id] == nil { slot[id] = needed.count; needed.append(id) }
        let nbr = Matrix(rows: needed.count, cols: d)
        for (i, id) in needed.enumerated() { nbr.row(i).update(from: base.row(Int(id)), count: d) }

        var trials = [Trial]()
        func trial(_ m: Double) -> Trial {
            if let t = trials.first(where: { $0.pointsPerHead == m }) { return t }
            var km = BalancedKMeans()
            km.seed = seed
            km.threads = threads
            let rows = km.selectHeads(points: base, targetHeads: max(1, Int((Double(B) / m).rounded())))
            let H = rows.count
            let heads = Matrix(rows: H, cols: d)
            for (i, r) in rows.enumerated() { heads.row(i).update(from: base.row(r), count: d) }
            // Postings of the needed rows: the closure rule over their 64 nearest heads.
            let K = min(64, H)
            let cand = nearest(nbr, in: heads, k: K, metric: .l2, withDistances: true)
            var member = [[UInt32]](repeating: [], count: needed.count)
            let ids = UnsafeMutablePointer<UInt32>.allocate(capacity: K)
            let dist = UnsafeMutablePointer<Float>.allocate(capacity: K)
            let chosen = UnsafeMutablePointer<Int>.allocate(capacity: 8)
            defer { ids.deallocate(); dist.deallocate(); chosen.deallocate() }
            for i in 0..<needed.count {
                for j in 0..<K { ids[j] = UInt32(cand.ids[i * K + j]); dist[j] = cand.distances[i * K + j] }
                let c = rngSelect(candidates: ids, distances: dist, count: K, replicas: replicas, rngFactor: rngFactor,
                                  heads: heads, out: chosen)
                member[i] = (0..<c).map { ids[chosen[$0]] }
            }
            // Each query probes its `targetProbes` nearest heads exactly.
            let P = min(targetProbes, H)
            let probed = nearest(queries, in: heads, k: P, metric: .l2)
            var found = 0
            for q in 0..<Q {
                let mine = Set(probed[(q * P)..<(q * P + P)].map { UInt32($0) })
                for j in 0..<k where member[slot[truth[q * k + j]]!].contains(where: mine.contains) { found += 1 }
            }
            let t = Trial(pointsPerHead: m, heads: H, recall: Double(found) / Double(max(1, Q * k)))
            trials.append(t)
            progress.note(String(format: "plan: calibration %.0f vectors/head (%d heads on %d rows): recall@10 at %d probes %.3f",
                                 m, H, B, P, t.recall))
            return t
        }
        // Recall grows with the vectors per head: bisect the grid for the finest that reaches
        // the target (the coarsest when none does).
        var lo = 0, hi = grid.count - 1
        var reached = trial(grid[hi]).recall >= targetRecall
        if reached {
            while lo < hi {
                let mid = (lo + hi) / 2
                if trial(grid[mid]).recall >= targetRecall { hi = mid } else { lo = mid + 1 }
            }
        }
        let m = grid[hi]
        reached = trial(m).recall >= targetRecall
        return HeadCalibration(targetRecall: targetRecall, targetProbes: targetProbes, sampleRows: B, queries: Q,
                               trials: trials, pointsPerHead: m, reachedTarget: reached,
                               seconds: Date().timeIntervalSince(t0))
    }

    /// The `k` rows of `base` nearest each row of `queries` (squared L2; inner product for
    /// .ip, largest first), row-major `queries.rows × k` ids, nearest first; distances too
    /// when asked. Blocks of 256 queries × 4,096 base rows through sgemm.
    static func nearest(_ queries: Matrix, in base: Matrix, k: Int, metric: Metric,
                        withDistances: Bool = false) -> (ids: [Int32], distances: [Float]) {
        let d = base.cols, nq = queries.rows, nb = base.rows
        var ids = [Int32](repeating: 0, count: nq * k)
        var dists = [Float](repeating: 0, count: withDistances ? nq * k : 0)
        guard k > 0, nb > 0 else { return (ids, dists) }
        let bn = (0..<nb).map { Distance.dot(base.row($0), base.row($0), d) }
        let qb = 256, bb = 4096
        let dots = UnsafeMutablePointer<Float>.allocate(capacity: qb * bb)
        defer { dots.deallocate() }
        let heaps = (0..<qb).map { _ in TopK(capacity: k) }
        var q0 = 0
        while q0 < nq {
            let qn = min(qb, nq - q0)
            for h in heaps { h.reset() }
            var b0 = 0
            while b0 < nb {
                let bnum = min(bb, nb - b0)
                BLAS.gemmABt(m: qn, n: bnum, k: d, a: queries.row(q0), b: base.row(b0), c: dots, ldc: bnum)
                for i in 0..<qn {
                    let row = dots + i * bnum
                    let h = heaps[i]
                    if metric == .ip {
                        for j in 0..<bnum { h.push(-row[j], UInt32(b0 + j)) }
                    } else {
                        let xn = Distance.dot(queries.row(q0 + i), queries.row(q0 + i), d)
                        for j in 0..<bnum {
                            let dd = max(0, xn + bn[b0 + j] - 2 * row[j])
                            if dd <= h.bound { h.push(dd, UInt32(b0 + j)) }
                        }
                    }
                }
                b0 += bnum
            }
            for i in 0..<qn {
                let sorted = heaps[i].drainSorted()
                for (j, e) in sorted.enumerated() {
                    ids[(q0 + i) * k + j] = Int32(e.id)
                    if withDistances { dists[(q0 + i) * k + j] = e.distance }
                }
            }
            q0 += qn
        }
        return (ids, dists)
    }

    static func nearest(_ queries: Matrix, in base: Matrix, k: Int, metric: Metric) -> [Int32] {
        nearest(queries, in: base, k: k, metric: metric, withDistances: false).ids
    }
}

extension IndexBuilder {
    /// Draws the calibration sample and runs ``HeadCalibration`` on it; nil when the input
    /// is too small to model or the head ratio is given.
    ///
    /// The sample is not a uniform subsample: at a sampling rate f a vector's replicas
    /// cover a share 1/f larger of its neighbourhood's heads, so a uniform sample finds
    /// every neighbour at any ratio (measured: recall 0.99–1.00 from 8 to 128 vectors per
    /// head on a 10% sample of a 1M set whose full index needs 8 probes for 0.96). Instead
    /// it is `balls` regions of the input at full density: the `calibrationSample / balls`
    /// vectors nearest each of a few random input vectors, found in one sequential pass
    /// (a distance to each centre per vector) and read in a second. Queries are drawn from
    /// the inner half of each ball, whose neighbours lie inside it.
    static func calibrate(input: String, header: VectorFileHeader, options: BuildOptions,
                          progress: ProgressReporter) throws -> HeadCalibration? {
        let n = header.count, d = header.dimension
        guard options.headRatio == nil, n >= HeadCalibration.minimumVectors else { return nil }
        let t0 = Date()
        let balls = 4
        let perBall = max(1, min(n / balls, options.calibrationSample / balls))
        var rng = SeededRandom(seed: options.seed ^ 0xCA11_B8A7)
        let centreIds = rng.sample(balls, from: n)
        let centres = Matrix(rows: balls, cols: d)
        do {
            let f = try RandomAccessFile(path: input)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: d * header.elementType.size, alignment: 64)
            defer { raw.deallocate() }
            for (i, id) in centreIds.enumerated() {
                try f.read(into: raw, count: d * header.elementType.size,
                           at: UInt64(header.dataOffset) + UInt64(id) * UInt64(header.recordStride) + UInt64(header.recordPrefix))
                ElementConversion.toFloat(UnsafeRawPointer(raw), header.elementType, count: d, into: centres.row(i))
                if options.metric == .cosine { Distance.normalize(centres.row(i), d) }
            }
        }
        let chunkRows = max(1, min(65536, (32 << 20) / (d * 4)))
        let chunk = Matrix(rows: chunkRows, cols: d)
        // Pass 1: the ball members (the perBall nearest of each centre).
        let near = (0..<balls).map { _ in TopK(capacity: perBall) }
        let dist = UnsafeMutablePointer<Float>.allocate(capacity: chunkRows)
        defer { dist.deallocate() }
        var row = 0
        do {
            let reader = try VectorFileReader(path: input)
            progress.begin("plan: calibration regions (\(balls) × \(perBall) vectors of \(n))", total: UInt64(2 * n))
            while true {
                let got = try reader.readFloats(maxRows: chunkRows, into: chunk.data)
                if got == 0 { break }
                if options.metric == .cosine { for i in 0..<got { Distance.normalize(chunk.row(i), d) } }
                for b in 0..<balls {
                    Distance.batch(.l2, .float32, query: centres.row(b), base: UnsafeRawPointer(chunk.data), n: got, d: d, stride: d * 4, out: dist)
                    let h = near[b]
                    for i in 0..<got where dist[i] <= h.bound && dist[i].isFinite { h.push(dist[i], UInt32(row + i)) }
                }
                row += got
                progress.advance(UInt64(got))
            }
        }
        guard row == n else { throw FathomError(.malformedFile, "input ended after \(row) of \(n) vectors while sampling", path: input) }
        // Members once (balls may overlap), and each ball's inner half for the queries.
        var members = Set<Int>()
        var inner = [Int]()
        for h in near {
            let sorted = h.drainSorted()
            for (j, e) in sorted.enumerated() {
                if members.insert(Int(e.id)).inserted && j < sorted.count / 2 { inner.append(Int(e.id)) }
            }
        }
        let ids = members.sorted()
        // Pass 2: read the members (checked as the build checks its sample).
        let sample = try readRows(ids, input: input, header: header, metric: options.metric, chunkRows: chunkRows, progress: progress)
        progress.end()
        // Queries: up to 100 per ball from its inner half, as rows of `sample`.
        let position = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        inner.sort()
        let Q = min(inner.count, 100 * balls)
        var qrng = SeededRandom(seed: options.seed ^ 0x0E57)
        let queryRows = qrng.sample(Q, from: inner.count).map { position[inner[$0]]! }
        var c = HeadCalibration.run(sample: sample, queryRows: queryRows, metric: options.metric, replicas: options.replicas,
                                    rngFactor: options.rngFactor, targetRecall: options.targetRecall,
                                    targetProbes: options.targetProbes, seed: options.seed, threads: options.threads,
                                    progress: progress)
        c.seconds = Date().timeIntervalSince(t0)   // the two passes over the input included
        return c
    }
}

import Fathom

/// Exact k-nearest-neighbour search by brute force: the ground truth recall is measured
/// against.
///
/// Distances are screened in blocks with OpenBLAS sgemm (‖q‖² + ‖x‖² − 2⟨q,x⟩), and every
/// pair that may enter a query's top-k (its float estimate within a rounding bound of the
/// current k-th distance) is re-scored exactly in Float64 from the raw vector. Results are
/// therefore exact, with ties broken by the smaller id, and the cost stays that of sgemm.
///
/// Thread safety: stateless; calls may run on any thread. sgemm runs on the OpenBLAS
/// threads the process owner set (``BLAS/setThreads(_:)``).
public enum ExactSearch {
    /// Plan for a memory budget: how many query rows and base rows to hold at once.
    struct Plan { var queryBlock: Int; var baseChunk: Int }

    static func plan(nq: Int, n: Int, d: Int, k: Int, elementSize: Int, budget: UInt64) throws -> Plan {
        // Fixed overheads: the process itself (~48 MiB) and the result heaps.
        let fixed: UInt64 = 48 << 20
        guard budget > fixed + (8 << 20) else {
            throw FathomError(.memoryBudget, "memory budget \(formatBytes(budget)) is below the \(formatBytes(fixed + (8 << 20))) minimum for exact search",
                              remedies: [.raiseMemoryBudget(atLeast: fixed + (9 << 20))])
        }
        var avail = budget - fixed
        // Per query row: float query + raw query + heap (k × 8 B) + result (k × 8 B).
        let perQuery = UInt64(d * 4 + d * elementSize + k * 16 + 64)
        // Per base row: raw + float copy + norm, plus one column of the distance block per query.
        var qb = min(nq, 4096)
        while qb > 1 && UInt64(qb) * perQuery > avail / 2 { qb /= 2 }
        avail -= UInt64(qb) * perQuery
        let perBase = UInt64(d * elementSize + d * 4 + 4 + qb * 4)
        var bc = Int(min(UInt64(max(n, 1)), avail / perBase))
        bc = min(bc, 16384)
        guard bc >= 64 else {
            throw FathomError(.memoryBudget, "memory budget \(formatBytes(budget)) leaves room for only \(bc) base rows per block (d = \(d))",
                              remedies: [.raiseMemoryBudget(atLeast: fixed + perQuery * UInt64(qb) + perBase * 64 * 2)])
        }
        return Plan(queryBlock: max(qb, 1), baseChunk: bc)
    }

    /// Exact top-`k` of every query in `queries` over the base file at `basePath`.
    ///
    /// - Parameters:
    ///   - basePath: base vectors (any supported format); streamed in chunks, never loaded whole.
    ///   - queries: query vectors as floats, `nq × d` (already normalized for cosine by the caller
    ///     or not: this function normalizes both sides for `.cosine`).
    ///   - k: neighbours per query (≤ n).
    ///   - metric: `.l2` (squared distance ascending), `.ip` and `.cosine` (similarity descending).
    ///   - memoryBudget: bytes; blocks are sized to stay within it.
    /// - Returns: ground truth whose `distances` hold squared L2 for `.l2`, and the inner product
    ///   (cosine similarity for `.cosine`) for the others, as the big-ann files do.
    public static func groundTruth(basePath: String, queries: Matrix, k: Int, metric: Metric,
                                   memoryBudget: UInt64, allowed: [Bool]? = nil,
                                   progress: ProgressReporter = .silent) throws -> GroundTruth {
        let probe = try VectorFileReader(path: basePath)
        let n = probe.count, d = probe.dimension, et = probe.elementType
        guard queries.cols == d else {
            throw FathomError(.dimensionMismatch, "queries have dimension \(queries.cols) but the base vectors have \(d)", path: basePath)
        }
        let eligible = allowed.map { $0.filter { $0 }.count } ?? n
        guard k >= 1, k <= eligible else {
            throw FathomError(.invalidArgument, "k = \(k) must be between 1 and the number of \(allowed == nil ? "base vectors" : "vectors matching the filter") (\(eligible))")
        }
        let nq = queries.rows
        let p = try plan(nq: nq, n: n, d: d, k: k, elementSize: et.size, budget: memoryBudget)
        var ids = [Int32](repeating: 0, count: nq * k)
        var dists = [Float](repeating: 0, count: nq * k)
        let blocks = (nq + p.queryBlock - 1) / p.queryBlock
        progress.begin("ground truth (\(blocks) query block\(blocks == 1 ? "" : "s") × \(n) base vectors)", total: UInt64(blocks) * UInt64(n))
        var qStart = 0
        while qStart < nq {
            let qb = min(p.queryBlock, nq - qStart)
            try searchBlock(reader: VectorFileReader(path: basePath), queries: queries, qStart: qStart, qCount: qb,
                            k: k, metric: metric, baseChunk: p.baseChunk, allowed: allowed, progress: progress,
                            ids: &ids, dists: &dists)
            qStart += qb
        }
        progress.end()
        return GroundTruth(count: nq, k: k, ids: ids, distances: dists)
    }

    static func searchBlock(reader: VectorFileReader, queries: Matrix, qStart: Int, qCount: Int, k: Int,
                            metric: Metric, baseChunk: Int, allowed: [Bool]?, progress: ProgressReporter,
                            ids: inout [Int32], dists: inout [Float]) throws {
        let d = reader.dimension, et = reader.elementType
        let q = Matrix(rows: qCount, cols: d)
        var qNorm = [Float](repeating: 0, count: qCount)
        var qD = [Double](repeating: 0, count: qCount * d)
        for i in 0..<qCount {
            q.row(i).update(from: queries.row(qStart + i), count: d)
            if metric == .cosine { Distance.normalize(q.row(i), d) }
            qNorm[i] = Distance.dot(q.row(i), q.row(i), d)
            for j in 0..<d { qD[i * d + j] = Double(q.row(i)[j]) }
        }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: baseChunk * d * et.size, alignment: 64)
        defer { raw.deallocate() }
        let xb = Matrix(rows: baseChunk, cols: d)
        let block = Matrix(rows: qCount, cols: baseChunk)
        var xNorm = [Float](repeating: 0, count: baseChunk)
        var xInvNorm = [Double](repeating: 1, count: baseChunk)
        var heaps = [TopK]()
        heaps.reserveCapacity(qCount)
        for _ in 0..<qCount { heaps.append(TopK(capacity: k)) }
        // Relative rounding bound of a float32 dot product of length d (γ_d ≈ d·u).
        let relErr = Float(d + 8) * Float(Float.ulpOfOne) * 2
        var base = 0
        while true {
            let rows = try reader.read(maxRows: baseChunk, into: raw)
            if rows == 0 { break }
            ElementConversion.toFloat(UnsafeRawPointer(raw), et, count: rows * d, into: xb.data)
            for i in 0..<rows {
                let r = xb.row(i)
                var nn = Distance.dot(r, r, d)
                if metric == .cosine {
                    let norm = nn.squareRoot()
                    xInvNorm[i] = norm > 0 ? 1 / Double(norm) : 1
                    if norm > 0 { for j in 0..<d { r[j] /= norm } }
                    nn = Distance.dot(r, r, d)
                }
                xNorm[i] = nn
            }
            BLAS.gemmABt(m: qCount, n: rows, k: d, a: q.data, b: xb.data, c: block.data, ldc: baseChunk)
            xNorm.withUnsafeBufferPointer { xn in
                qD.withUnsafeBufferPointer { qd in
                    for qi in 0..<qCount {
                        let dotRow = block.row(qi)
                        let qn = qNorm[qi]
                        let qrow = qd.baseAddress! + qi * d
                        let heap = heaps[qi]
                        var bound = heap.bound
                        for i in 0..<rows {
                            let dot = dotRow[i]
                            let approx: Float
                            let slack: Float
                            if metric == .l2 {
                                approx = qn + xn[i] - 2 * dot
                                slack = relErr * (qn + xn[i])
                            } else {
                                approx = -dot
                                slack = relErr * (qn + xn[i])
                            }
                            if approx - slack > bound { continue }
                            if let allowed, !allowed[base + i] { continue }
                            let exact = exactDistance(metric, qrow, raw + i * d * et.size, et, d, invNorm: xInvNorm[i])
                            if heap.push(exact, UInt32(base + i)) { bound = heap.bound }
                        }
                    }
                }
            }
            base += rows
            progress.advance(UInt64(rows))
        }
        for qi in 0..<qCount {
            let sorted = heaps[qi].drainSorted()
            for (j, e) in sorted.enumerated() {
                ids[(qStart + qi) * k + j] = Int32(bitPattern: e.id)
                dists[(qStart + qi) * k + j] = metric == .l2 ? e.distance : -e.distance
            }
        }
    }

    /// Exact distance in Float64 between a (float) query and a raw stored vector.
    @inline(__always)
    static func exactDistance(_ metric: Metric, _ q: UnsafePointer<Double>, _ x: UnsafeMutableRawPointer,
                              _ et: ElementType, _ d: Int, invNorm: Double) -> Float {
        var acc = 0.0
        switch et {
        case .float32:
            let p = x.assumingMemoryBound(to: Float.self)
            if metric == .l2 { for j in 0..<d { let t = q[j] - Double(p[j]); acc += t * t } }
            else { for j in 0..<d { acc += q[j] * Double(p[j]) } }
        case .uint8:
            let p = x.assumingMemoryBound(to: UInt8.self)
            if metric == .l2 { for j in 0..<d { let t = q[j] - Double(p[j]); acc += t * t } }
            else { for j in 0..<d { acc += q[j] * Double(p[j]) } }
        case .int8:
            let p = x.assumingMemoryBound(to: Int8.self)
            if metric == .l2 { for j in 0..<d { let t = q[j] - Double(p[j]); acc += t * t } }
            else { for j in 0..<d { acc += q[j] * Double(p[j]) } }
        }
        if metric == .l2 { return Float(acc) }
        if metric == .cosine { acc *= invNorm }
        return Float(-acc)
    }
}

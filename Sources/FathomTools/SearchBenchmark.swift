import Fathom
import Foundation

/// One row of the search report (the CLI's search command prints one per probes setting):
/// the figures of one probes setting over a query set. A value type, `Sendable`.
public struct SearchReportRow: Sendable, Codable {
    public var probes: Int
    public var qps: Double
    public var recall: Double?
    public var mean_us: Double
    public var p50_us: Double
    public var p99_us: Double
    public var p999_us: Double
    /// IO requests per query (after coalescing neighbouring pages).
    public var mean_ios: Double
    public var mean_kib: Double
    /// 4 KiB pages read per query.
    public var mean_pages: Double = 0
    /// Dependent IO round trips per query.
    public var mean_round_trips: Double = 0
    /// Postings scored per query.
    public var mean_postings: Double = 0
    public var threads: Int
    public var failed_queries: Int
    /// Filtered runs: mean estimated selectivity and mean candidates scored per query.
    public var selectivity: Double? = nil
    public var mean_candidates: Double? = nil
    /// Filtered runs: queries answered by the exact path.
    public var exact_path_queries: Int? = nil
    /// Filtered runs: queries per plan the planner chose (`walk`, `exact`, `walk+exact`).
    public var filter_plans: [String: Int]? = nil
    /// Filtered runs: postings skipped unread (summaries) and posting rounds, per query.
    public var mean_postings_skipped: Double? = nil
    public var mean_filter_rounds: Double? = nil
}

/// Runs a query set against an index at several settings and measures it the way
/// DiskANN's search tool does (QPS over the whole batch, per-query latency percentiles,
/// IOs and KiB read per query, recall@k).
///
/// Thread safety: stateless; ``run(index:queries:k:probes:threads:window:gt:base:filters:postFilter:progress:)``
/// may be called from any thread, and runs its own search threads.
public enum SearchBenchmark {
    /// A result as recall and a result file see it: its label, as the 32-bit id an .ibin ground
    /// truth holds (labels ≥ 2^32 − 1 cannot appear in one: ``LabelMap/maxLabel`` tells).
    @inline(__always)
    public static func resultKey(_ n: Neighbor) -> UInt32 { UInt32(exactly: n.label) ?? UInt32.max - 1 }

    /// - Returns: one row per entry of `probes`, plus the labels of the last run (for `--output`;
    ///   recall compares labels with the ground truth: build it in label space).
    /// - Parameter window: queries in flight per thread (``QueryExecutor``: plain and filtered
    ///   queries alike), 1: one at a time.
    public static func run(index: VectorIndex, queries: Matrix, k: Int, probes: [Int], threads: Int,
                           window: Int = 1,
                           gt: GroundTruth?, base: SearchParameters = SearchParameters(),
                           filters: [PreparedFilter?]? = nil, postFilter: Bool = false,
                           progress: ProgressReporter = .silent) throws -> (rows: [SearchReportRow], ids: [[UInt32]], dists: [[Float]]) {
        let nq = queries.rows
        guard queries.cols == index.dimension else {
            throw FathomError(.dimensionMismatch, "queries have dimension \(queries.cols) but the index has \(index.dimension)")
        }
        if let gt {
            guard gt.count >= nq else {
                throw FathomError(.invalidArgument, "ground truth covers \(gt.count) queries but there are \(nq)")
            }
            guard gt.k >= k else {
                throw FathomError(.invalidArgument, "ground truth has \(gt.k) neighbours per query, fewer than k = \(k)")
            }
        }
        var rows = [SearchReportRow]()
        var lastIds = [[UInt32]](), lastDists = [[Float]]()
        for p in probes {
            var tuned = base
            tuned.probes = p
            let params = tuned
            let t = max(1, min(threads, nq))
            var lat = [Double](repeating: 0, count: nq)
            var qstats = [QueryStats?](repeating: nil, count: nq)   // nil: the query failed
            var ids = [[UInt32]](repeating: [], count: nq)
            var dists = [[Float]](repeating: [], count: nq)
            var failures = [FathomError?](repeating: nil, count: nq)
            let start = DispatchTime.now().uptimeNanoseconds
            lat.withUnsafeMutableBufferPointer { latB in
            qstats.withUnsafeMutableBufferPointer { statsB in
            ids.withUnsafeMutableBufferPointer { idsB in
            dists.withUnsafeMutableBufferPointer { distsB in
            failures.withUnsafeMutableBufferPointer { failB in
                let statsP = SendablePointer(statsB.baseAddress!)
                let latP = SendablePointer(latB.baseAddress!), idsP = SendablePointer(idsB.baseAddress!)
                let distsP = SendablePointer(distsB.baseAddress!), failP = SendablePointer(failB.baseAddress!)
                if postFilter {
                    postFiltered(index: index, queries: queries, k: k, parameters: params, filters: filters, threads: t,
                                 lat: latP, stats: statsP, ids: idsP, dists: distsP, failures: failP)
                    return
                }
                // Every other query runs on the executor, `window` in flight per thread; a
                // query's latency runs from its start to its answer.
                let begun = UnsafeMutablePointer<UInt64>.allocate(capacity: nq)
                defer { begun.deallocate() }
                let begunP = SendablePointer(begun)
                do {
                    let qb = UnsafeBufferPointer(start: queries.data, count: nq * queries.cols)
                    index.search(batch: qb, count: nq, k: k, parameters: params, filters: filters, threads: t, window: window,
                                 started: { begunP.p[$0] = DispatchTime.now().uptimeNanoseconds },
                                 completed: { i, r, st in
                                     latP.p[i] = Double(DispatchTime.now().uptimeNanoseconds - begunP.p[i]) / 1000
                                     switch r {
                                     case .success(let hits):
                                         statsP.p[i] = st
                                         idsP.p[i] = hits.map(Self.resultKey); distsP.p[i] = hits.map(\.distance)
                                     case .failure(let e): failP.p[i] = e
                                     }
                                 })
                }
            }}}}}
            let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let failed = failures.compactMap { $0 }
            if failed.count == nq, let e = failed.first { throw e }
            let okLat = zip(lat, failures).filter { $0.1 == nil }.map(\.0).sorted()
            func pct(_ p: Double) -> Double { okLat.isEmpty ? 0 : okLat[min(okLat.count - 1, Int(Double(okLat.count) * p))] }
            var recall: Double? = nil
            if let gt { recall = Recall.compute(results: ids, gt: gt, k: k) }
            let okCount = Double(max(okLat.count, 1))
            let answered = qstats.compactMap { $0 }
            func mean(_ f: (QueryStats) -> Int) -> Double { Double(answered.reduce(0) { $0 + f($1) }) / okCount }
            rows.append(SearchReportRow(probes: p, qps: Double(nq) / wall, recall: recall,
                                        mean_us: okLat.reduce(0, +) / okCount, p50_us: pct(0.5), p99_us: pct(0.99),
                                        p999_us: pct(0.999), mean_ios: mean(\.ioRequests),
                                        mean_kib: mean(\.bytesRead) / 1024, mean_pages: mean(\.pagesRead),
                                        mean_round_trips: mean(\.roundTrips), mean_postings: mean(\.postingsRead), threads: t,
                                        failed_queries: failed.count,
                                        selectivity: filters.map { fs in fs.compactMap { $0?.selectivity }.reduce(0, +) / Double(max(1, fs.compactMap { $0 }.count)) },
                                        mean_candidates: mean(\.candidatesScored),
                                        exact_path_queries: filters == nil ? nil : answered.filter(\.exactPath).count,
                                        filter_plans: filters == nil ? nil : Dictionary(answered.compactMap { $0.filterPlan?.kind.rawValue }.map { ($0, 1) }, uniquingKeysWith: +),
                                        mean_postings_skipped: filters == nil ? nil : mean(\.postingsSkipped),
                                        mean_filter_rounds: filters == nil ? nil : mean { $0.filterPlan?.rounds ?? 0 }))
            if !failed.isEmpty { progress.note("probes \(p): \(failed.count) queries failed; first: \(failed[0])") }
            lastIds = ids; lastDists = dists
        }
        return (rows, lastIds, lastDists)
    }

    /// The post-filtering baseline: each query asks for k / selectivity × 2 unfiltered
    /// neighbours, one query at a time per thread, and keeps the first k that match.
    private static func postFiltered(index: VectorIndex, queries: Matrix, k: Int, parameters: SearchParameters,
                             filters: [PreparedFilter?]?, threads: Int,
                             lat: SendablePointer<Double>, stats: SendablePointer<QueryStats?>, ids: SendablePointer<[UInt32]>,
                             dists: SendablePointer<[Float]>, failures: SendablePointer<FathomError?>) {
        let nq = queries.rows
        let next = WorkCounter()
        let work: @Sendable (Int) -> Void = { _ in
            do {
                try index.withSearcher { s in
                    let widest = min(index.count, (filters ?? []).compactMap { $0 }.map { Int(Double(k) * 2 / max($0.selectivity, 1e-4)) }.max() ?? k)
                    let out = UnsafeMutablePointer<Neighbor>.allocate(capacity: max(k, widest))
                    defer { out.deallocate() }
                    while true {
                        let i = next.next()
                        if i >= nq { break }
                        let q = UnsafeBufferPointer(start: queries.row(i), count: queries.cols)
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        do {
                            var n = 0
                            if let f = filters?[i] ?? nil {
                                let kk = min(index.count, Int(Double(k) * 2 / max(f.selectivity, 1e-4)))
                                let m = try s.search(q, k: kk, parameters: parameters, into: out)
                                for j in 0..<m where n < k && index.matches(f, id: out[j].id) { out[n] = out[j]; n += 1 }
                            } else {
                                n = try s.search(q, k: k, parameters: parameters, into: out)
                            }
                            lat.p[i] = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1000
                            stats.p[i] = s.stats
                            ids.p[i] = (0..<n).map { Self.resultKey(out[$0]) }
                            dists.p[i] = (0..<n).map { out[$0].distance }
                        } catch let e as FathomError {
                            failures.p[i] = e
                        }
                    }
                }
            } catch {
                let e = error as? FathomError ?? FathomError(.io, "\(error)")
                while true { let i = next.next(); if i >= nq { break }; failures.p[i] = e }
            }
        }
        if threads == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: work) }
    }

    /// The rows as a DiskANN-style table.
    public static func table(_ rows: [SearchReportRow], k: Int) -> String {
        func col(_ text: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - text.count)) + text }
        let filtered = rows.contains { $0.selectivity != nil }
        var heads = ["probes", "QPS", "mean_us", "p50_us", "p99_us", "p99.9_us", "postings", "IOs", "RTs", "pages", "recall@\(k)"]
        var widths = [7, 10, 10, 10, 10, 10, 9, 7, 5, 7, 10]
        if filtered { heads += ["selectivity", "candidates", "skipped", "rounds", "plans"]; widths += [12, 11, 8, 7, 0] }
        var s = zip(heads, widths).map { col($0, $1) }.joined(separator: " ") + "\n"
        for r in rows {
            let cells: [String] = [String(r.probes), String(format: "%.1f", r.qps), String(format: "%.1f", r.mean_us),
                         String(format: "%.1f", r.p50_us), String(format: "%.1f", r.p99_us), String(format: "%.1f", r.p999_us),
                         String(format: "%.1f", r.mean_postings), String(format: "%.1f", r.mean_ios),
                         String(format: "%.1f", r.mean_round_trips), String(format: "%.1f", r.mean_pages),
                         r.recall.map { String(format: "%.4f", $0) } ?? "-"]
                + (filtered ? [String(format: "%.4f", r.selectivity ?? 0), String(format: "%.1f", r.mean_candidates ?? 0),
                               String(format: "%.1f", r.mean_postings_skipped ?? 0), String(format: "%.2f", r.mean_filter_rounds ?? 0),
                               " " + (r.filter_plans ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")] : [])
            s += zip(cells, widths).map { col($0, $1) }.joined(separator: " ") + "\n"
        }
        return s
    }
}

/// A pointer that may cross threads; the code using it guarantees disjoint access.
private struct SendablePointer<T>: @unchecked Sendable {
    let p: UnsafeMutablePointer<T>
    init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

/// Hands out query numbers to the search threads (lock-based; uncontended here).
private final class WorkCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; let v = value; value += 1; return v }
}

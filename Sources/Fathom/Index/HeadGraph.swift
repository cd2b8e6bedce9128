import FathomCore
import Foundation
import FathomMath

/// The in-RAM navigation graph over the heads: fixed degree, built Vamana-style
/// (incremental greedy search + robust prune with α), searched with a best-first beam.
///
/// Distances are squared L2 (for cosine the heads are unit vectors, so L2 order equals
/// cosine order; for ip the partition geometry is Euclidean). The graph is built on float32
/// head vectors; a serving index may drop them and search the same topology over compressed
/// heads through ``search(_:k:listSize:scratch:outIds:outDist:limit:)`` with any
/// ``HeadDistance``.
public final class HeadGraph: @unchecked Sendable {
    // Invariant: immutable after `build`/`init(loading:)` returns; safe to share across threads.
    public let count: Int
    public let degree: Int
    public let dimension: Int
    /// Heads, count × dimension, row-major (nil once a serving index dropped them for
    /// compressed heads).
    public let vectors: Matrix?
    /// count × degree neighbour ids, `UInt32.max` = empty slot.
    public let neighbors: UnsafeMutablePointer<UInt32>
    public private(set) var entry: UInt32

    public static let empty = UInt32.max

    public convenience init(vectors: Matrix, degree: Int, neighbors: [UInt32]? = nil, entry: UInt32 = 0) {
        self.init(count: vectors.rows, dimension: vectors.cols, vectors: vectors, degree: degree, neighbors: neighbors, entry: entry)
    }

    /// The topology alone (heads kept elsewhere, e.g. compressed).
    public init(count: Int, dimension: Int, vectors: Matrix?, degree: Int, neighbors: [UInt32]? = nil, entry: UInt32 = 0) {
        self.vectors = vectors
        self.count = count
        self.degree = degree
        self.dimension = dimension
        let total = count * degree
        let storage = UnsafeMutablePointer<UInt32>.allocate(capacity: max(1, total))
        if let nb = neighbors {
            precondition(nb.count == total)
            nb.withUnsafeBufferPointer { storage.initialize(from: $0.baseAddress!, count: total) }
        } else {
            storage.initialize(repeating: HeadGraph.empty, count: max(1, total))
        }
        self.neighbors = storage
        self.entry = entry
    }

    deinit { neighbors.deallocate() }

    /// Bytes of RAM the graph and head vectors take.
    public var memoryBytes: Int { count * degree * 4 + (vectors?.byteCount ?? 0) }

    /// The same topology without the float heads (they are then scored through a
    /// ``HeadDistance`` over another representation).
    public func droppingVectors() -> HeadGraph {
        let nb = [UInt32](UnsafeBufferPointer(start: neighbors, count: count * degree))
        return HeadGraph(count: count, dimension: dimension, vectors: nil, degree: degree, neighbors: nb, entry: entry)
    }

    // MARK: search

    /// Per-thread scratch for searches: visited marks (epoch-stamped, so clearing is O(1)),
    /// the beam and the neighbour batch. Reuse one per thread; never share between threads.
    public final class Scratch {
        var visited: [UInt32]
        var epoch: UInt32 = 0
        var beamDist: [Float]
        var beamId: [UInt32]
        var beamDone: [Bool]
        var beamCount = 0
        /// Every node whose distance was computed in the last search (for graph building).
        var evaluated: [(Float, UInt32)] = []
        var trackEvaluated = false
        /// The unvisited neighbours of the node being expanded and their distances.
        private(set) var gatherIds = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        private(set) var gatherDist = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        private var gatherCapacity = 1

        public init(graphSize: Int, beam: Int) {
            visited = [UInt32](repeating: 0, count: graphSize)
            beamDist = [Float](repeating: 0, count: beam + 1)
            beamId = [UInt32](repeating: 0, count: beam + 1)
            beamDone = [Bool](repeating: false, count: beam + 1)
        }

        deinit { gatherIds.deallocate(); gatherDist.deallocate() }

        func ensure(beam: Int, graphSize: Int) {
            if beamDist.count < beam + 1 {
                beamDist = [Float](repeating: 0, count: beam + 1)
                beamId = [UInt32](repeating: 0, count: beam + 1)
                beamDone = [Bool](repeating: false, count: beam + 1)
            }
            if visited.count < graphSize { visited += [UInt32](repeating: 0, count: graphSize - visited.count) }
        }

        func ensure(gather degree: Int) {
            guard gatherCapacity < degree else { return }
            gatherIds.deallocate(); gatherDist.deallocate()
            gatherIds = .allocate(capacity: degree)
            gatherDist = .allocate(capacity: degree)
            gatherCapacity = degree
        }
    }

    /// Best-first beam search for the `k` heads nearest to `query` (squared L2).
    /// - Parameters:
    ///   - listSize: beam width L (≥ k); larger is more accurate and slower.
    ///   - limit: only nodes with id < limit are considered (used while building).
    /// - Returns: the number of results written to `outIds`/`outDist` (nearest first).
    @discardableResult
    public func search(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch s: Scratch,
                       outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>,
                       limit: Int? = nil) -> Int {
        guard let v = vectors else { preconditionFailure("HeadGraph.search(query:) needs the float heads; use search(_: HeadDistance, …)") }
        return search(FloatHeads(query: query, heads: v), k: k, listSize: listSize, scratch: s,
                      outIds: outIds, outDist: outDist, limit: limit)
    }

    /// Best-first beam search for the `k` heads nearest by `metric` (see the float form).
    @discardableResult
    /// - Parameter entries: where the beam starts (e.g. the nearest ``HeadPivots``); nil: the
    ///   graph's single entry.
    public func search<M: HeadDistance>(_ metric: M, k: Int, listSize: Int, scratch s: Scratch,
                                        outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>,
                                        limit: Int? = nil, entries: UnsafeBufferPointer<UInt32>? = nil) -> Int {
        s.ensure(gather: degree)
        return beamSearch(metric, k: k, listSize: listSize, scratch: s, limit: limit ?? count, entries: entries,
                          gatherIds: s.gatherIds, gatherDist: s.gatherDist, outIds: outIds, outDist: outDist)
    }

    /// The beam search behind every head search. The beam starts at `entries` (those with id
    /// < `n`; none valid: the graph's entry); it then expands its nearest unexpanded node
    /// until none is left: the node's unvisited neighbours with id < `n` are collected into
    /// `gatherIds` (room for `degree`), scored in one ``HeadDistance/distances(_:count:into:)``
    /// call and inserted in neighbour-list order. Every distance computed is recorded in
    /// `scratch.evaluated` when tracking. Returns the number of results, nearest first.
    @inline(__always)
    func beamSearch<M: HeadDistance>(_ metric: M, k: Int, listSize: Int, scratch s: Scratch, limit n: Int,
                                     entries: UnsafeBufferPointer<UInt32>?,
                                     gatherIds: UnsafeMutablePointer<UInt32>, gatherDist: UnsafeMutablePointer<Float>,
                                     outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        if n == 0 { return 0 }
        let L = max(listSize, k)
        s.ensure(beam: L, graphSize: count)
        s.epoch &+= 1
        if s.epoch == 0 { for i in 0..<s.visited.count { s.visited[i] = 0 }; s.epoch = 1 }
        let epoch = s.epoch
        let track = s.trackEvaluated
        let nbLines = (degree * 4 + 63) / 64
        s.evaluated.removeAll(keepingCapacity: true)
        return s.visited.withUnsafeMutableBufferPointer { vis -> Int in
            s.beamDist.withUnsafeMutableBufferPointer { bd -> Int in
                s.beamId.withUnsafeMutableBufferPointer { bi -> Int in
                    s.beamDone.withUnsafeMutableBufferPointer { bdone -> Int in
                        let vis = vis.baseAddress!
                        var beam = Beam(dist: bd.baseAddress!, ids: bi.baseAddress!, done: bdone.baseAddress!, width: L)
                        if let entries {
                            for e in entries where Int(e) < n && vis[Int(e)] != epoch {
                                vis[Int(e)] = epoch
                                let dv = metric.distance(Int(e))
                                if track { s.evaluated.append((dv, e)) }
                                _ = beam.insert(dv, e)
                            }
                        }
                        if beam.count == 0 {
                            let e = Int(entry) < n ? entry : 0
                            vis[Int(e)] = epoch
                            let dv = metric.distance(Int(e))
                            if track { s.evaluated.append((dv, e)) }
                            _ = beam.insert(dv, e)
                        }
                        var cursor = 0
                        while cursor < beam.count {
                            // nearest unexpanded
                            beam.done[cursor] = true
                            let nb = neighbors + Int(beam.ids[cursor]) * degree
                            var m = 0
                            for j in 0..<degree {
                                let v = nb[j]
                                if v == HeadGraph.empty { break }
                                let vi = Int(v)
                                if vi >= n || vis[vi] == epoch { continue }
                                vis[vi] = epoch
                                gatherIds[m] = v; m += 1
                            }
                            metric.distances(gatherIds, count: m, into: gatherDist)
                            var nextCursor = beam.count
                            for j in 0..<m {
                                let dv = gatherDist[j], v = gatherIds[j]
                                if track { s.evaluated.append((dv, v)) }
                                let pos = beam.insert(dv, v)
                                if pos < 0 { continue }
                                // Its neighbour list is read when it is expanded: fetch it now.
                                if M.prefetchesNeighbors {
                                    Distance.prefetch(UnsafeRawPointer(neighbors + Int(v) * degree), lines: nbLines)
                                }
                                if pos < nextCursor { nextCursor = pos }
                            }
                            // advance to the nearest unexpanded entry
                            var c = min(nextCursor, cursor + 1)
                            while c < beam.count && beam.done[c] { c += 1 }
                            cursor = c
                        }
                        let r = min(k, beam.count)
                        for i in 0..<r { outIds[i] = beam.ids[i]; outDist[i] = beam.dist[i] }
                        return r
                    }
                }
            }
        }
    }

    // MARK: build

    /// Builds the graph over `vectors` (Vamana: insert in random order; each node's
    /// candidates are the nodes its search evaluated; robust prune with α keeps
    /// diverse neighbours; reverse edges are added and pruned on overflow).
    public static func build(vectors: Matrix, degree: Int = 32, buildList: Int = 64, alpha: Float = 1.2,
                             seed: UInt64 = 42, progress: ProgressReporter = .silent) -> HeadGraph {
        let g = HeadGraph(vectors: vectors, degree: degree)
        let n = vectors.rows
        guard n > 1 else { return g }
        let d = vectors.cols
        // Entry: the node nearest the mean.
        let mean = [Float](unsafeUninitializedCapacity: d) { b, c in
            b.initialize(repeating: 0); c = d
            for i in 0..<n { let r = vectors.row(i); for j in 0..<d { b[j] += r[j] } }
            for j in 0..<d { b[j] /= Float(n) }
        }
        var best = 0, bestD = Float.infinity
        mean.withUnsafeBufferPointer { m in
            for i in 0..<n { let dd = Distance.l2sq(m.baseAddress!, vectors.row(i), d); if dd < bestD { bestD = dd; best = i } }
        }
        // Insertion order: random, entry first. Nodes are relabelled so that inserted
        // nodes are exactly 0..<t; instead we keep ids and track insertion via `inserted`.
        var rng = SeededRandom(seed: seed)
        var order = Array(0..<n)
        order.swapAt(0, best)
        for i in stride(from: n - 1, to: 1, by: -1) { order.swapAt(i, 1 + rng.below(i)) }
        g.entry = UInt32(best)
        let work = LinkWork(graphSize: n, buildList: buildList, degree: degree)
        let alpha2 = alpha * alpha
        progress.begin("train: head graph (\(n) heads, degree \(degree))", total: UInt64(n))
        for t in 1..<n {
            // The search only walks edges, and only inserted nodes have edges (plus the entry).
            var entry = g.entry
            withUnsafePointer(to: &entry) { e in
                g.link(node: order[t], entries: UnsafeBufferPointer(start: e, count: 1), alpha2: alpha2, work: work)
            }
            if t & 1023 == 0 { progress.advance(1024) }
        }
        progress.end()
        return g
    }

    /// NSG-style reachability repair: every head searches for its own vector (beam 64 from
    /// the nearest ``HeadPivots``); a head that its own search does not find gets an edge
    /// from the nearest head the search did reach (into a free slot, else replacing that
    /// head's farthest neighbour). Two rounds. Measured on syn10M (471,583 heads): 12,953
    /// postings were empty because their head could not be reached even from its own vector
    /// (2,020 had no in-edge at all), so neither the build nor a query ever chose them.
    /// The searches run on `threads` threads and only read; the edits are applied after, in
    /// head order, so the graph does not depend on `threads`. Returns the heads repaired per round.
    @discardableResult
    func repairReachability(threads: Int, nodes: Int? = nil, pivots given: HeadPivots? = nil,
                            progress: ProgressReporter = .silent) -> [Int] {
        // `nodes`: only the first `nodes` heads exist (the update writer's spare capacity
        // beyond them is neither searched nor repaired); `pivots`: where beams start.
        let n = nodes ?? count
        guard n > 1, let vectors else { return [] }
        let pivots = given ?? HeadPivots(heads: n)
        let T = max(1, threads)
        let L = 64
        var repaired = [Int]()
        for round in 0..<2 {
            let nearestFound = UnsafeMutablePointer<UInt32>.allocate(capacity: n)
            defer { nearestFound.deallocate() }
            let box = RepairShared(graph: self, vectors: vectors, pivots: pivots, out: nearestFound)
            progress.begin("train: head graph reachability check, round \(round + 1) (\(n) heads, \(T) thread(s))", total: UInt64(n))
            DispatchQueue.concurrentPerform(iterations: T) { t in
                let lo = n * t / T, hi = n * (t + 1) / T
                let scratch = Scratch(graphSize: box.graph.count, beam: L)
                let ids = UnsafeMutablePointer<UInt32>.allocate(capacity: L)
                let dist = UnsafeMutablePointer<Float>.allocate(capacity: L)
                let pd = UnsafeMutablePointer<Float>.allocate(capacity: box.pivots.count)
                let entries = UnsafeMutablePointer<UInt32>.allocate(capacity: HeadPivots.seeds)
                defer { ids.deallocate(); dist.deallocate(); pd.deallocate(); entries.deallocate() }
                for h in lo..<hi {
                    let metric = FloatHeads(query: box.vectors.row(h), heads: box.vectors)
                    let e = UnsafeBufferPointer(start: entries, count: box.pivots.nearest(metric, scratch: pd, out: entries))
                    let found = box.graph.search(metric, k: L, listSize: L, scratch: scratch, outIds: ids, outDist: dist, limit: n, entries: e)
                    var hit = false, first = UInt32.max
                    for i in 0..<found {
                        if ids[i] == UInt32(h) { hit = true; break }
                        if first == UInt32.max { first = ids[i] }
                    }
                    box.out[h] = hit ? UInt32(h) : first
                    if (h - lo) & 4095 == 4095 && t == 0 { progress.advance(UInt64(4096 * T)) }
                }
            }
            progress.end()
            var fixed = 0
            for h in 0..<n where nearestFound[h] != UInt32(h) && nearestFound[h] != UInt32.max {
                let r = Int(nearestFound[h])
                let nb = neighbors + r * degree
                var c = 0, farthest = 0
                var farthestD = -Float.infinity
                var present = false
                while c < degree && nb[c] != HeadGraph.empty {
                    if nb[c] == UInt32(h) { present = true; break }
                    let dd = Distance.l2sq(vectors.row(r), vectors.row(Int(nb[c])), dimension)
                    if dd > farthestD { farthestD = dd; farthest = c }
                    c += 1
                }
                if present { continue }
                if c < degree { nb[c] = UInt32(h) } else { nb[farthest] = UInt32(h) }
                fixed += 1
            }
            repaired.append(fixed)
            progress.note("train: head graph: \(fixed) heads their own search did not reach got an in-edge (round \(round + 1))")
            if fixed == 0 { break }
        }
        return repaired
    }

    /// Links node `p` (its vector already in ``vectors``) into the graph the way the build
    /// inserts every head: a beam search from `entries` for its nearest linked nodes, robust
    /// prune of the nodes that search evaluated (at most 3·degree, nearest first) into p's
    /// list, then a reverse edge from each kept neighbour (pruned on overflow). Used by the
    /// build and by the update writer's split (a new head joins the graph). Writes the graph:
    /// only on a graph no reader shares.
    func link(node p: Int, entries: UnsafeBufferPointer<UInt32>, alpha2: Float, work: LinkWork) {
        work.scratch.ensure(beam: work.buildList, graphSize: count)
        _ = searchGathered(vectors!.row(p), k: work.buildList, listSize: work.buildList, entries: entries,
                           scratch: work.scratch, gatherIds: work.gatherIds, gatherDist: work.gatherDist,
                           outIds: work.outIds, outDist: work.outDist)
        var pool = work.scratch.evaluated.filter { Int($0.1) != p }
        if pool.count > 3 * degree {
            pool.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
            pool.removeLast(pool.count - 3 * degree)
        }
        robustPrune(node: p, candidates: &pool, alpha2: alpha2)
        let nb = neighbors + p * degree
        for j in 0..<degree {
            let v = nb[j]
            if v == HeadGraph.empty { break }
            addReverse(from: Int(v), to: UInt32(p), alpha2: alpha2, pool: &pool)
        }
    }

    /// The first `n` heads' topology (and float heads when `keepingVectors`), copied: a
    /// graph whose nodes beyond `n` have no edges in or out (the update writer's spare
    /// capacity) publishes its used part this way.
    func prefix(_ n: Int, keepingVectors: Bool) -> HeadGraph {
        precondition(n <= count)
        var v: Matrix? = nil
        if keepingVectors, let src = vectors {
            let m = Matrix(rows: n, cols: dimension)
            m.data.update(from: src.data, count: n * dimension)
            v = m
        }
        let nb = [UInt32](UnsafeBufferPointer(start: neighbors, count: n * degree))
        return HeadGraph(count: n, dimension: dimension, vectors: v, degree: degree, neighbors: nb, entry: entry)
    }

    /// A copy with room for `capacity` ≥ ``count`` nodes (float heads required): the new
    /// nodes have zero vectors and no edges, so no search reaches them until they are linked.
    func withCapacity(_ capacity: Int) -> HeadGraph {
        precondition(capacity >= count && vectors != nil)
        let m = Matrix(rows: capacity, cols: dimension)
        m.data.update(from: vectors!.data, count: count * dimension)
        var nb = [UInt32](repeating: HeadGraph.empty, count: capacity * degree)
        nb.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: neighbors, count: count * degree) }
        return HeadGraph(count: capacity, dimension: dimension, vectors: m, degree: degree, neighbors: nb, entry: entry)
    }

    /// Keeps at most `degree` candidates, nearest first, dropping a candidate v when an
    /// already kept u has α²·d(u,v) ≤ d(p,v) (squared distances).
    func robustPrune(node p: Int, candidates: inout [(Float, UInt32)], alpha2: Float) {
        let d = dimension
        let vectors = self.vectors!
        candidates.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        // dedupe
        var uniq = [(Float, UInt32)]()
        uniq.reserveCapacity(candidates.count)
        var last = UInt32.max
        var seen = Set<UInt32>()
        for c in candidates where c.1 != last && !seen.contains(c.1) { uniq.append(c); last = c.1; seen.insert(c.1) }
        let nb = neighbors + p * degree
        var kept = 0
        var alive = [Bool](repeating: true, count: uniq.count)
        for i in 0..<uniq.count where alive[i] {
            let (_, u) = uniq[i]
            nb[kept] = u; kept += 1
            if kept == degree { break }
            let ur = vectors.row(Int(u))
            for j in (i + 1)..<uniq.count where alive[j] {
                let (dpv, v) = uniq[j]
                if alpha2 * Distance.l2sq(ur, vectors.row(Int(v)), d) <= dpv { alive[j] = false }
            }
        }
        for j in kept..<degree { nb[j] = HeadGraph.empty }
    }

    /// Adds the reverse edge v → p unless p is occluded by one of v's neighbours (the RNG
    /// test against p only: O(degree) distances instead of a full re-prune); a full list
    /// then drops its farthest neighbour.
    func addReverse(from v: Int, to p: UInt32, alpha2: Float, pool: inout [(Float, UInt32)]) {
        let nb = neighbors + v * degree
        let d = dimension
        let vectors = self.vectors!
        let vr = vectors.row(v)
        let pr = vectors.row(Int(p))
        let dvp = Distance.l2sq(vr, pr, d)
        var c = 0
        var farthest = -1
        var farthestD = -Float.infinity
        while c < degree && nb[c] != HeadGraph.empty {
            let u = nb[c]
            if u == p { return }
            let ur = vectors.row(Int(u))
            if alpha2 * Distance.l2sq(ur, pr, d) <= dvp { return }      // occluded
            let dvu = Distance.l2sq(vr, ur, d)
            if dvu > farthestD { farthestD = dvu; farthest = c }
            c += 1
        }
        if c < degree { nb[c] = p; return }
        if dvp < farthestD { nb[farthest] = p }
    }
}

/// How the head graph's search measures the query against head `i` (squared L2 in some
/// representation of the heads). A value type, so the search loop is specialized for each
/// implementation and calls no protocol per distance.
public protocol HeadDistance {
    func distance(_ i: Int) -> Float
    /// The distances to heads `ids[0..<count]` into `out`, in order (the unvisited
    /// neighbours of an expanded node). Default: one ``distance(_:)`` each.
    func distances(_ ids: UnsafePointer<UInt32>, count: Int, into out: UnsafeMutablePointer<Float>)
    /// Whether the search prefetches the neighbour list of every node entering its beam
    /// (where the graph does not fit the caches, as in the build). Default: no.
    static var prefetchesNeighbors: Bool { get }
}

extension HeadDistance {
    @inline(__always)
    public func distances(_ ids: UnsafePointer<UInt32>, count: Int, into out: UnsafeMutablePointer<Float>) {
        for j in 0..<count { out[j] = distance(Int(ids[j])) }
    }
    public static var prefetchesNeighbors: Bool { false }
}

/// A search's beam: `count` (≤ `width`) nodes sorted by distance, each marked once expanded.
struct Beam {
    let dist: UnsafeMutablePointer<Float>
    let ids: UnsafeMutablePointer<UInt32>
    let done: UnsafeMutablePointer<Bool>
    let width: Int
    var count = 0

    /// Inserts `v` (unexpanded) in distance order, after any entry at the same distance,
    /// unless the beam is full and `dv` is no nearer than its last entry (then -1); a full
    /// beam drops its last entry. Returns the position.
    @inline(__always)
    mutating func insert(_ dv: Float, _ v: UInt32) -> Int {
        if count == width && dv >= dist[width - 1] { return -1 }
        var pos = count < width ? count : width - 1
        while pos > 0 && dist[pos - 1] > dv {
            dist[pos] = dist[pos - 1]; ids[pos] = ids[pos - 1]; done[pos] = done[pos - 1]
            pos -= 1
        }
        dist[pos] = dv; ids[pos] = v; done[pos] = false
        if count < width { count += 1 }
        return pos
    }
}

/// Float32 heads.
public struct FloatHeads: HeadDistance {
    let query: UnsafePointer<Float>
    let heads: Matrix
    public init(query: UnsafePointer<Float>, heads: Matrix) { self.query = query; self.heads = heads }
    @inline(__always) public func distance(_ i: Int) -> Float { Distance.l2sq(query, heads.row(i), heads.cols) }
}

/// Entry points of head searches (a two-level head index): `count` ≈ √H heads spread over
/// the head order (k-means tree order, so they cover every region). A search scores them
/// all first and starts its beam at the nearest few, instead of walking from the graph's
/// single entry across regions: at 496K heads a 64-wide beam from one entry missed a
/// query's nearest postings often enough to cost 0.05 of recall at 8 probes.
public struct HeadPivots: Sendable {
    public let ids: [UInt32]
    /// Pivots a beam starts from.
    public static let seeds = 4

    public init(heads H: Int) {
        let P = max(1, min(H, max(64, min(1024, Int(Double(H).squareRoot())))))
        ids = (0..<P).map { UInt32($0 * H / P) }
    }

    public var count: Int { ids.count }

    /// Writes the ids of the `seeds` pivots nearest by `distances` (one per pivot) into
    /// `out`, nearest first; returns how many.
    @inline(__always)
    public func nearest(distances dist: UnsafePointer<Float>, out: UnsafeMutablePointer<UInt32>) -> Int {
        let s = min(Self.seeds, ids.count)
        var bestD = (Float.infinity, Float.infinity, Float.infinity, Float.infinity)
        var best = (0, 0, 0, 0)
        for i in 0..<ids.count {
            let v = dist[i]
            if v >= bestD.3 { continue }
            if v < bestD.0 { bestD = (v, bestD.0, bestD.1, bestD.2); best = (i, best.0, best.1, best.2) }
            else if v < bestD.1 { bestD = (bestD.0, v, bestD.1, bestD.2); best = (best.0, i, best.1, best.2) }
            else if v < bestD.2 { bestD = (bestD.0, bestD.1, v, bestD.2); best = (best.0, best.1, i, best.2) }
            else { bestD.3 = v; best.3 = i }
        }
        out[0] = ids[best.0]
        if s > 1 { out[1] = ids[best.1] }
        if s > 2 { out[2] = ids[best.2] }
        if s > 3 { out[3] = ids[best.3] }
        return s
    }

    /// The same, scoring each pivot with `metric`.
    @inline(__always)
    public func nearest<M: HeadDistance>(_ metric: M, scratch dist: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<UInt32>) -> Int {
        for (i, h) in ids.enumerated() { dist[i] = metric.distance(Int(h)) }
        return nearest(distances: UnsafePointer(dist), out: out)
    }
}

/// What the reachability check's threads share: the graph and heads (read only during the
/// searches) and one output slot per head, written by the thread that owns that head.
struct RepairShared: @unchecked Sendable {
    let graph: HeadGraph
    let vectors: Matrix
    let pivots: HeadPivots
    let out: UnsafeMutablePointer<UInt32>
}

/// The buffers one ``HeadGraph/link(node:entries:alpha2:work:)`` caller reuses across links.
///
/// Thread safety: one thread at a time.
final class LinkWork {
    let buildList: Int
    let scratch: HeadGraph.Scratch
    let outIds: UnsafeMutablePointer<UInt32>
    let outDist: UnsafeMutablePointer<Float>
    let gatherIds: UnsafeMutablePointer<UInt32>
    let gatherDist: UnsafeMutablePointer<Float>

    init(graphSize: Int, buildList: Int, degree: Int) {
        self.buildList = buildList
        scratch = HeadGraph.Scratch(graphSize: graphSize, beam: buildList)
        scratch.trackEvaluated = true
        outIds = .allocate(capacity: buildList); outDist = .allocate(capacity: buildList)
        gatherIds = .allocate(capacity: degree); gatherDist = .allocate(capacity: degree)
    }
    deinit { outIds.deallocate(); outDist.deallocate(); gatherIds.deallocate(); gatherDist.deallocate() }
}

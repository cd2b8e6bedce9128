import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

// A query over shards (docs/scale-out.md): a router holding only the model's heads routes it
// exactly as a single index would (same probes, same pruning), asks each shard that owns a
// routed posting for exactly those postings, and merges the answers so that the result is
// the single index's: uncompressed postings give exact distances (top-k of the union);
// compressed ones give each shard's re-ranked candidates with their code estimates, and the
// router keeps the query's re-rank set (the best `rerank` estimates over all shards, which
// every shard's own best `rerank` contain) before ranking by exact distance.

/// One candidate of a shard's answer to a query over named postings.
///
/// A value type (`Sendable`).
public struct ShardCandidate: Sendable, Hashable, Codable {
    /// The vector's global id (a shard keeps the model's ids).
    public var id: UInt32
    public var label: UInt64
    /// Exact distance, as ``Neighbor/distance`` reports it.
    public var distance: Float
    /// Compressed postings: the code's estimate the candidate was kept by (nil: exact scores).
    public var estimate: Float?

    public init(id: UInt32, label: UInt64, distance: Float, estimate: Float?) {
        self.id = id; self.label = label; self.distance = distance; self.estimate = estimate
    }
}

extension VectorIndex {
    /// Searches exactly `postings` (head ids of this index; no routing): a shard's part of a
    /// query that a router (``ModelRouter``) planned. Returns the k best by exact distance
    /// for uncompressed postings; for compressed ones, every candidate it re-ranked (the
    /// best `rerank` by code estimate) with estimate and exact distance, best estimate first.
    /// Thread-safe (borrows a pooled searcher).
    public func search(_ query: [Float], k: Int, parameters: SearchParameters = SearchParameters(),
                       postings: [UInt32]) throws -> [ShardCandidate] {
        try withSearcher { try $0.search(query, k: k, parameters: parameters, postings: postings) }
    }
}

extension Searcher {
    /// ``VectorIndex/search(_:k:parameters:postings:)`` on this searcher (its thread's).
    public func search(_ query: [Float], k: Int, parameters: SearchParameters, postings: [UInt32]) throws -> [ShardCandidate] {
        try query.withUnsafeBufferPointer { q in
            var answer = [ShardCandidate](), failure: Error? = nil, given = false
            try QueryExecutor.run(engine: engine, window: 1, searcher: { _ in self },
                                  next: {
                                      if given { return nil }
                                      given = true
                                      return QueryExecutor.Query(id: 0, vector: q, filter: nil, postings: postings)
                                  },
                                  k: k, parameters: parameters,
                                  out: { _, s, error in
                                      if let error { failure = error } else { answer = s.finishCandidates() }
                                  })
            if let failure { throw failure }
            return answer
        }
    }
}

/// Merges shards' answers to one routed query into the single index's answer.
///
/// Thread safety: stateless.
public enum ShardMerge {
    /// The `k` nearest of the answers, each id once (a vector replicated in several shards'
    /// postings is met in several answers). Exact answers (no estimates): the k best by
    /// distance. Compressed: the `rerank` best estimates over all answers, then the k best of
    /// those by exact distance — the set a single index re-ranks. Ties break by id.
    public static func merge(_ answers: [[ShardCandidate]], k: Int, rerank: Int) -> [Neighbor] {
        var best = [UInt32: ShardCandidate]()
        var estimated = false
        for a in answers {
            for c in a {
                if c.estimate != nil { estimated = true }
                if best[c.id] == nil { best[c.id] = c }
            }
        }
        var all = Array(best.values)
        if estimated {
            all.sort { ($0.estimate ?? .infinity, $0.id) < ($1.estimate ?? .infinity, $1.id) }
            all = Array(all.prefix(max(rerank, k)))
        }
        all.sort { ($0.distance, $0.id) < ($1.distance, $1.id) }
        return all.prefix(k).map { Neighbor(id: $0.id, distance: $0.distance, label: $0.label) }
    }
}

/// What a router holds: a model's heads and head graph (in the form the codec serves them)
/// and how a plain query of a single index is routed and pruned.
///
/// Thread safety: immutable after init, except a lock-guarded pool of routing scratch;
/// ``route(_:k:parameters:)`` may be called from any number of threads.
public final class ModelRouter: @unchecked Sendable {
    public let model: ModelManifest
    public let path: String
    let router: any HeadRouter
    let codec: any RecordCodec
    private let lock = NSLock()
    private var scratches = [RouteScratch]()

    /// Opens the model directory at `path` (``ModelManifest/load(directory:)`` checks it).
    public init(modelDirectory path: String) throws {
        self.path = path
        let m = try ModelManifest.load(directory: path)
        model = m
        let layout = IndexLayout(directory: path)
        let (heads, _) = try layout.readHeads()
        guard heads.rows == m.heads, heads.cols == m.dimension else {
            throw FathomError(.corruptIndex, "heads.bin holds \(heads.rows) × \(heads.cols), model.json says \(m.heads) × \(m.dimension) — train the model again", path: layout.headsPath)
        }
        let graph = try layout.readGraph(heads: heads)
        guard let kind = PostingCodec(rawValue: m.codec) else {
            throw FathomError(.corruptIndex, "model codec '\(m.codec)' is unknown — train the model again", path: path + "/" + ModelManifest.fileName)
        }
        codec = try RecordCodecs.load(kind, metric: m.metric, elementType: m.element_type, dimension: m.dimension, codecPath: layout.codecPath)
        router = try codec.makeRouter(graph: graph, routerDimension: m.router_dimension)
    }

    public var headCount: Int { router.count }
    /// RAM of the heads and graph, in bytes.
    public var memoryBytes: Int { router.headBytes + router.graphBytes + codec.servingBytes }

    /// Candidates every shard re-ranks and the merge keeps (``ShardMerge``): what a single
    /// index of this model re-ranks (k for uncompressed postings, which need none).
    public func rerankDepth(k: Int, parameters p: SearchParameters) -> Int {
        codec.kind == .none ? k : max(k, p.rerank ?? codec.defaultRerank(k: k))
    }

    /// The postings a single index of this model reads for `query`: the same argument checks,
    /// routing and pruning (``SearchParameters/probes``, `headListSize`, `maxDistRatio`).
    public func route(_ query: [Float], k: Int, parameters p: SearchParameters) throws -> [UInt32] {
        let d = model.dimension
        guard k >= 1 else { throw FathomError(.invalidArgument, "k = \(k): k must be at least 1") }
        guard k <= model.count else { throw FathomError(.invalidArgument, "k = \(k) exceeds the \(model.count) vectors in the index") }
        guard p.probes >= 1 else { throw FathomError(.invalidArgument, "probes = \(p.probes) must be at least 1") }
        if let r = p.rerank, r < 1 { throw FathomError(.invalidArgument, "rerank = \(r) must be at least 1") }
        guard query.count == d else { throw FathomError(.dimensionMismatch, "query has dimension \(query.count) but the index has \(d)") }
        var q = query
        for j in 0..<d where !q[j].isFinite {
            throw FathomError(.nonFiniteValue, "query component \(j) is \(q[j]); queries must be finite")
        }
        if model.metric == .cosine {
            let ok = q.withUnsafeMutableBufferPointer { Distance.normalize($0.baseAddress!, d) }
            guard ok else { throw FathomError(.invalidArgument, "the query is all zeros: it has no direction under the cosine metric") }
        }
        let (probes, list) = router.routeWidth(p)
        let scratch = takeScratch()
        defer { giveBack(scratch) }
        let ids = UnsafeMutablePointer<UInt32>.allocate(capacity: list)
        let dist = UnsafeMutablePointer<Float>.allocate(capacity: list)
        defer { ids.deallocate(); dist.deallocate() }
        let found = q.withUnsafeBufferPointer { router.route($0.baseAddress!, k: probes, listSize: list, scratch: scratch, outIds: ids, outDist: dist) }
        var lists = [UInt32]()
        routePrune(found: found, ids: ids, distances: dist, ratio: p.maxDistRatio, into: &lists)
        return lists
    }

    private func takeScratch() -> RouteScratch {
        lock.lock()
        if let s = scratches.popLast() { lock.unlock(); return s }
        lock.unlock()
        return router.makeScratch()
    }

    private func giveBack(_ s: RouteScratch) { lock.lock(); scratches.append(s); lock.unlock() }
}

/// What a shard says it is: the model it was built with and the heads it holds.
///
/// A value type (`Sendable`).
public struct ShardDescription: Sendable, Codable, Equatable {
    public var model_fingerprint: String?
    public var shard: ShardInfo?
    public init(model_fingerprint: String?, shard: ShardInfo?) { self.model_fingerprint = model_fingerprint; self.shard = shard }
}

/// Where a shard lives: one replica of it, in this process (``LocalShard``) or behind a
/// network endpoint (FathomServer's HTTP client). ``ShardedSearch`` only calls these.
///
/// Thread safety: implementations must allow concurrent calls.
public protocol ShardClient: Sendable {
    /// How this replica is named in errors and metrics (e.g. its URL).
    var name: String { get }
    /// The shard's model fingerprint and head range (its manifest's).
    func describe() async throws -> ShardDescription
    /// ``VectorIndex/search(_:k:parameters:postings:)`` on the shard.
    func search(_ query: [Float], k: Int, parameters: SearchParameters, postings: [UInt32]) async throws -> [ShardCandidate]
}

/// A shard opened in this process.
///
/// Thread safety: as ``VectorIndex`` (any number of concurrent searches).
public struct LocalShard: ShardClient {
    public let index: VectorIndex
    public var name: String { index.path }
    public init(_ index: VectorIndex) { self.index = index }

    public func describe() async throws -> ShardDescription {
        ShardDescription(model_fingerprint: index.manifest.model_fingerprint, shard: index.manifest.shard)
    }

    public func search(_ query: [Float], k: Int, parameters: SearchParameters, postings: [UInt32]) async throws -> [ShardCandidate] {
        try index.search(query, k: k, parameters: parameters, postings: postings)
    }
}

/// One call to a shard replica, for metrics: which shard, which replica, how long, whether it answered.
public struct ShardCall: Sendable {
    public var shard: Int
    public var replica: String
    public var seconds: Double
    public var succeeded: Bool
}

/// A query over the shards of one model: route (``ModelRouter``), ask each shard owning a
/// routed posting for exactly those postings (replicas tried in turn until one answers),
/// merge (``ShardMerge``). The answer equals a single index's of the same model at the
/// same parameters.
///
/// Thread safety: immutable after ``connect(router:replicas:)``; any number of concurrent
/// searches (a lock-guarded counter spreads them over the replicas).
public final class ShardedSearch: @unchecked Sendable {
    public let router: ModelRouter
    /// Replicas of each shard, by shard number.
    public let replicas: [[any ShardClient]]
    /// Heads each shard holds.
    public let ranges: [Range<Int>]
    private let lock = NSLock()
    private var turn = 0

    init(router: ModelRouter, replicas: [[any ShardClient]], ranges: [Range<Int>]) {
        self.router = router; self.replicas = replicas; self.ranges = ranges
    }

    /// Asks every replica what it is and checks that the shards are exactly 0 ..< N of the
    /// router's model, each built with its fingerprint. A replica that does not answer is
    /// kept (it is retried per query) as long as another replica of its shard answers.
    public static func connect(router: ModelRouter, replicas given: [Int: [any ShardClient]]) async throws -> ShardedSearch {
        var described = [Int: ShardInfo]()
        var count: Int? = nil
        for (i, clients) in given.sorted(by: { $0.key < $1.key }) {
            var lastError: Error? = nil
            for c in clients {
                let d: ShardDescription
                do { d = try await c.describe() } catch { lastError = error; continue }
                try router.model.checkBuiltWith(fingerprint: d.model_fingerprint, what: "shard \(i) at \(c.name)", shard: i, modelPath: router.path)
                guard let s = d.shard, s.index == i else {
                    throw FathomError(.invalidArgument, "\(c.name) is \(d.shard.map { "shard \($0.index)/\($0.count)" } ?? "not a shard"), not shard \(i): give each shard's URL under its own number")
                }
                if let n = count, n != s.count {
                    throw FathomError(.invalidArgument, "\(c.name) is shard \(s.index)/\(s.count), another shard says \(n) shards: the shards come from different shard builds")
                }
                count = s.count
                described[i] = s
            }
            guard described[i] != nil else {
                throw FathomError(.io, "no replica of shard \(i) answered (\(clients.map(\.name).joined(separator: ", ")))", cause: lastError)
            }
        }
        guard let n = count else { throw FathomError(.invalidArgument, "no shards given") }
        let missing = (0..<n).filter { given[$0] == nil }
        guard missing.isEmpty, given.keys.allSatisfy({ $0 < n }) else {
            throw FathomError(.invalidArgument, "the model is served by \(n) shards; shard(s) \(missing.map(String.init).joined(separator: ", ")) have no URL\(given.keys.contains { $0 >= n } ? " and some numbers are ≥ \(n)" : "")")
        }
        let ranges = (0..<n).map { described[$0]!.head_begin..<described[$0]!.head_end }
        return ShardedSearch(router: router, replicas: (0..<n).map { given[$0]! }, ranges: ranges)
    }

    /// The replica a query tries first (the queries take the replicas in turn).
    private func nextTurn() -> Int {
        lock.lock(); defer { lock.unlock() }
        let t = turn
        turn &+= 1
        return t
    }

    /// The shard holding posting `h`.
    func owner(of h: Int) -> Int {
        var lo = 0, hi = ranges.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if ranges[mid].lowerBound <= h { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    /// The `k` nearest neighbours of `query` over the shards. `observe` sees every call to a
    /// replica (for metrics). Fails only when every replica of a needed shard fails.
    public func search(_ query: [Float], k: Int, parameters p: SearchParameters = SearchParameters(),
                       observe: @escaping @Sendable (ShardCall) -> Void = { _ in }) async throws -> [Neighbor] {
        let lists = try router.route(query, k: k, parameters: p)
        let rerank = router.rerankDepth(k: k, parameters: p)
        var planned = p
        planned.rerank = rerank
        let params = planned
        var perShard = [Int: [UInt32]]()
        for h in lists { perShard[owner(of: Int(h)), default: []].append(h) }
        let start = nextTurn()
        let answers = try await withThrowingTaskGroup(of: [ShardCandidate].self) { group in
            for (i, postings) in perShard {
                let clients = replicas[i]
                group.addTask {
                    var failures = [String]()
                    var last: Error? = nil
                    for a in 0..<clients.count {
                        let c = clients[(start + a) % clients.count]
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        do {
                            let r = try await c.search(query, k: k, parameters: params, postings: postings)
                            observe(ShardCall(shard: i, replica: c.name, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, succeeded: true))
                            return r
                        } catch {
                            observe(ShardCall(shard: i, replica: c.name, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, succeeded: false))
                            // A query the shard refuses (a bad argument) fails the same on every replica.
                            if let f = error as? FathomError, f.code == .invalidArgument || f.code == .dimensionMismatch || f.code == .nonFiniteValue { throw f }
                            failures.append("\(c.name): \(error)")
                            last = error
                        }
                    }
                    throw FathomError(.io, "every replica of shard \(i) failed: \(failures.joined(separator: "; "))", cause: last)
                }
            }
            var all = [[ShardCandidate]]()
            for try await a in group { all.append(a) }
            return all
        }
        return ShardMerge.merge(answers, k: k, rerank: rerank)
    }
}

import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// One thread's search machinery, reused from query to query: its IO engine, a reader of
/// each store, the codec's scorer, head-search scratch, dedup set and heaps. A steady-state
/// query allocates only its result array.
///
/// Every search, plain or filtered, is the same pipeline (docs/search.md):
/// **route** (head graph → candidate postings and their distances) → **plan** (which
/// postings: pruning, filter summaries, probes) → **fetch** (``PostingReader``: one round
/// trip, postings coalesced into few requests) → **score** (``QueryScorer`` over whole
/// postings) → **dedup** → **re-rank** (``VectorReader``: one round trip, when the scores
/// are estimates) → top-k.
///
/// Thread safety: a `Searcher` belongs to one thread at a time (``VectorIndex`` hands them
/// out from a pool).
public final class Searcher {
    let index: VectorIndex
    let engine: IOEngine
    let postings: PostingReader
    let vectors: VectorReader
    let scorer: QueryScorer
    let routeScratch: HeadRouter.Scratch
    var candIds: UnsafeMutablePointer<UInt32>
    var candDist: UnsafeMutablePointer<Float>
    var candCapacity: Int
    /// Postings chosen by the plan for the current round trip.
    var lists = [UInt32]()
    let query: UnsafeMutablePointer<Float>
    var scores: UnsafeMutablePointer<Float>
    var scoreCapacity: Int
    /// The k best by exact distance.
    var heap: TopK
    /// Compressed indexes: the best by code score, re-ranked into `heap`.
    var candidates: TopK
    var rerankIds: UnsafeMutablePointer<UInt32>
    var rerankDist: UnsafeMutablePointer<Float>
    var rerankCapacity = 0
    var outDist: UnsafeMutablePointer<Float>
    var outIds: UnsafeMutablePointer<UInt32>
    var seenKeys: [UInt32] = []
    var seenStamp: [UInt32] = []
    var seenEpoch: UInt32 = 0
    var seenMask = 0
    var seenCount = 0
    /// Counters of the last query.
    public internal(set) var stats = QueryStats()
    // Pipelined queries: the phase, its requests not yet completed, the first error.
    var phase = Phase.idle
    var pending = 0
    var asyncVerify = true
    var asyncError: FathomError? = nil
    /// An id ≥ count met while scoring (a corrupt posting read with checksums off): the id,
    /// its posting and its record.
    var badId: (id: UInt32, list: UInt32, record: Int)? = nil
    /// Filtered queries: the compiled predicate's working memory (FilteredSearch.swift).
    let filterScratch = FilterScratch()

    init(index: VectorIndex, engine: IOEngine) throws {
        self.index = index
        self.engine = engine
        postings = index.postingStore.makeReader(engine: engine)
        vectors = index.vectorStore.makeReader(engine: engine)
        scorer = index.makeScorer()
        routeScratch = index.router.makeScratch()
        candCapacity = 128
        candIds = .allocate(capacity: candCapacity)
        candDist = .allocate(capacity: candCapacity)
        query = .allocate(capacity: max(index.dimension, 1))
        scoreCapacity = max(1, index.manifest.parameters.posting_capacity)
        scores = .allocate(capacity: scoreCapacity)
        heap = TopK(capacity: 10)
        candidates = TopK(capacity: 100)
        rerankIds = .allocate(capacity: 1)
        rerankDist = .allocate(capacity: 1)
        outDist = .allocate(capacity: 10)
        outIds = .allocate(capacity: 10)
    }

    deinit {
        candIds.deallocate(); candDist.deallocate(); query.deallocate(); scores.deallocate()
        outDist.deallocate(); outIds.deallocate(); rerankIds.deallocate(); rerankDist.deallocate()
    }

    func ensureRerank(_ r: Int) {
        guard r > rerankCapacity else { return }
        rerankIds.deallocate(); rerankDist.deallocate()
        rerankCapacity = r
        rerankIds = .allocate(capacity: r)
        rerankDist = .allocate(capacity: r)
    }

    func ensureRouteCapacity(_ list: Int) {
        if list > candCapacity {
            candIds.deallocate(); candDist.deallocate()
            candCapacity = list
            candIds = .allocate(capacity: list); candDist = .allocate(capacity: list)
        }
    }

    /// Prepares the query: dimension and finiteness checks, conversion, normalization.
    func load(_ q: UnsafeBufferPointer<Float>) throws {
        let d = index.dimension
        guard q.count == d else {
            throw FathomError(.dimensionMismatch, "query has dimension \(q.count) but the index has \(d)")
        }
        for j in 0..<d {
            let v = q[j]
            guard v.isFinite else { throw FathomError(.nonFiniteValue, "query component \(j) is \(v); queries must be finite") }
            query[j] = v
        }
        if index.metric == .cosine {
            guard Distance.normalize(query, d) else {
                throw FathomError(.invalidArgument, "the query is all zeros: it has no direction under the cosine metric")
            }
        }
    }

    /// The `k` nearest neighbours of `q`, nearest first.
    public func search(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters,
                       filter: PreparedFilter? = nil) throws -> [Neighbor] {
        let out = UnsafeMutablePointer<Neighbor>.allocate(capacity: max(k, 1))
        defer { out.deallocate() }
        let n = try search(q, k: k, parameters: p, filter: filter, into: out)
        return Array(UnsafeBufferPointer(start: out, count: n))
    }

    /// Non-allocating form: writes up to `k` neighbours to `out`, returns how many.
    public func search(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters,
                       filter: PreparedFilter? = nil, into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        try prepare(q, k: k, parameters: p)
        if let filter { return try searchFiltered(k: k, parameters: p, filter: filter, into: out) }
        routeAndPlan(parameters: p)
        // fetch + score + dedup
        try fetchAndScore(verify: p.verifyChecksums)
        // re-rank
        if !scorer.exact { try rerank() }
        return finish(k: k, into: out)
    }

    /// Route and plan of a plain query: the `probes` nearest heads, pruned to those within
    /// `maxDistRatio` × the nearest non-zero head distance, into `lists`; sizes the dedup set.
    func routeAndPlan(parameters p: SearchParameters) {
        let probes = min(p.probes, index.graph.count)
        let found = route(count: probes, listSize: max(p.headListSize ?? max(2 * probes, 64), probes))
        var ref = candDist[0]
        if ref <= 0 { for i in 1..<max(found, 1) where candDist[i] > 0 { ref = candDist[i]; break } }
        let limit = ref > 0 ? ref * p.maxDistRatio : Float.infinity
        lists.removeAll(keepingCapacity: true)
        var records = 0
        for i in 0..<found {
            if candDist[i] > limit { break }
            lists.append(candIds[i])
            records += index.postingStore.count(of: Int(candIds[i]))
        }
        resetSeen(expected: records)
    }

    // MARK: pipelined form (several queries in flight on one thread; see SearchPipeline)

    /// Where an asynchronous query stands.
    enum Phase { case idle, postings, vectors }

    /// Starts a plain query without waiting: validates and routes it, stages its posting
    /// reads and returns them (to be submitted on the thread's ``AsyncIOEngine``). Empty
    /// requests mean the phase needs no IO: call ``advance()`` at once.
    func start(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters) throws -> UnsafeBufferPointer<ReadRequest> {
        try prepare(q, k: k, parameters: p)
        routeAndPlan(parameters: p)
        asyncVerify = p.verifyChecksums
        asyncError = nil
        phase = .postings
        let (rq, c) = lists.withUnsafeBufferPointer { postings.stage($0) }
        stats.add(c, postings: true)
        pending = rq.count
        if rq.isEmpty { try fetchAndScore(verify: p.verifyChecksums) }   // a store without IO
        return rq
    }

    /// Takes the completion of request `r` of the current phase.
    func complete(_ r: Int, _ result: Result<Int, FathomError>) {
        pending -= 1
        let e: FathomError?
        switch phase {
        case .postings:
            let recordBytes = index.postingStore.recordBytes
            e = postings.deliver(r, result, verify: asyncVerify) { h, records, count in
                _ = collect(records, count: count, recordBytes: recordBytes, list: h)
            }
        case .vectors:
            let d = index.dimension, metric = index.metric, type = index.vectorStore.elementType
            let heap = heap, ids = rerankIds
            e = vectors.deliver(r, result) { i, v in
                heap.push(Distance.one(metric, type, query: query, vector: v, d: d), ids[i])
            }
        case .idle:
            e = nil
        }
        if let e, asyncError == nil { asyncError = e }
    }

    /// After every request of the phase completed: stages the next phase's reads and
    /// returns them, or returns nil when the query is answered (then ``finish(k:into:)``).
    /// Throws the phase's first read or checksum error.
    func advance() throws -> UnsafeBufferPointer<ReadRequest>? {
        if let e = asyncError { phase = .idle; throw e }
        if phase == .postings { do { try checkIds() } catch { phase = .idle; throw error } }
        if phase == .postings && !scorer.exact {
            phase = .vectors
            ensureRerank(candidates.capacity)
            let n = candidates.drainSorted(distances: rerankDist, ids: rerankIds)
            let (rq, c) = vectors.stage(UnsafeBufferPointer(start: rerankIds, count: n))
            stats.add(c, postings: false)
            pending = rq.count
            if !rq.isEmpty { return rq }
            // A store without IO for these rows stages nothing: read them at once.
            if n > 0 { do { try rankExactly(UnsafeBufferPointer(start: rerankIds, count: n)) } catch { phase = .idle; throw error } }
        }
        phase = .idle
        return nil
    }

    /// Checks the arguments and loads the query; resets the counters and heaps for it.
    func prepare(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters) throws {
        guard k >= 1 else { throw FathomError(.invalidArgument, "k = \(k): k must be at least 1") }
        guard k <= index.count else {
            throw FathomError(.invalidArgument, "k = \(k) exceeds the \(index.count) vectors in the index")
        }
        guard p.probes >= 1 else { throw FathomError(.invalidArgument, "probes = \(p.probes) must be at least 1") }
        if let r = p.rerank, r < 1 { throw FathomError(.invalidArgument, "rerank = \(r) must be at least 1") }
        try load(q)
        stats = QueryStats()
        badId = nil
        begin(k: k, parameters: p)
    }

    /// Sizes the heaps for `k` (and the re-rank depth) and prepares the scorer for the query.
    func begin(k: Int, parameters p: SearchParameters) {
        if heap.capacity != k {
            heap = TopK(capacity: k)
            outDist.deallocate(); outIds.deallocate()
            outDist = .allocate(capacity: k); outIds = .allocate(capacity: k)
        }
        heap.reset()
        if !scorer.exact {
            let r = max(k, p.rerank ?? index.defaultRerank(k: k))
            if candidates.capacity != r { candidates = TopK(capacity: r) }
            candidates.reset()
        }
        scorer.prepare(query)
    }

    /// Head-graph search for the `count` nearest heads into `candIds` / `candDist`.
    func route(count: Int, listSize: Int) -> Int {
        let list = max(listSize, count)
        ensureRouteCapacity(list)
        return index.router.route(query, k: count, listSize: list, scratch: routeScratch, outIds: candIds, outDist: candDist)
    }

    /// Reads the postings in `lists` (one round trip) and scores every record. Returns how
    /// many distinct records scored within the current bound.
    @discardableResult
    func fetchAndScore(verify: Bool) throws -> Int {
        var passing = 0
        let recordBytes = index.postingStore.recordBytes
        try lists.withUnsafeBufferPointer { l in
            let c = try postings.fetch(l, verify: verify) { h, records, count in
                passing += collect(records, count: count, recordBytes: recordBytes, list: h)
            }
            stats.add(c, postings: true)
        }
        try checkIds()
        return passing
    }

    /// Throws if scoring met an id that no vector has.
    func checkIds() throws {
        guard let bad = badId else { return }
        badId = nil
        let store = index.postingStore
        throw FathomError(.corruptIndex, "posting \(bad.list) holds id \(bad.id), but the index has \(index.count) vectors: postings.dat is corrupt (read with checksums off?) — run `fathom verify` and rebuild",
                          path: index.path + "/postings.dat",
                          offset: store.offset(of: Int(bad.list)) + UInt64(bad.record * store.recordBytes))
    }

    /// Scores one posting's records and offers them to the heap (exact scores) or to the
    /// candidate heap (estimates). Distances are computed for the whole posting in one
    /// kernel call; only records under the heap's bound are deduplicated. (Filtered
    /// queries score only their matching records: `collectFiltered`.)
    @inline(__always)
    func collect(_ records: UnsafeRawPointer, count: Int, recordBytes: Int, list: UInt32) -> Int {
        if count > scoreCapacity {
            scores.deallocate(); scoreCapacity = count; scores = .allocate(capacity: count)
        }
        scorer.score(records + 4, count: count, stride: recordBytes, into: scores)
        stats.candidatesScored += count
        let target = scorer.exact ? heap : candidates
        var bound = target.bound
        var passing = 0
        let n = UInt32(index.count)
        let tombstones = index.tombstones
        for j in 0..<count {
            let id = UInt32(littleEndian: records.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
            // A corrupt id (possible with checksums off) fails the query: it must never reach
            // the attributes, vectors.dat or the results.
            if id >= n { if badId == nil { badId = (id, list, j) }; continue }
            let dist = scores[j]
            if dist > bound { continue }
            if tombstones.contains(id) { continue }
            if !insertSeen(id) { continue }
            passing += 1
            if target.push(dist, id) { bound = target.bound }
        }
        return passing
    }

    /// Bi-granular second stage: reads the candidates' full vectors (one round trip) and
    /// ranks them by exact distance.
    func rerank() throws {
        ensureRerank(candidates.capacity)
        let n = candidates.drainSorted(distances: rerankDist, ids: rerankIds)
        try rankExactly(UnsafeBufferPointer(start: rerankIds, count: n))
    }

    /// Reads the full vectors of `ids` and offers their exact distances to the heap.
    func rankExactly(_ ids: UnsafeBufferPointer<UInt32>) throws {
        let d = index.dimension, metric = index.metric, type = index.vectorStore.elementType
        let heap = heap
        let c = try vectors.fetch(ids) { i, v in
            heap.push(Distance.one(metric, type, query: query, vector: v, d: d), ids[i])
        }
        stats.add(c, postings: false)
    }

    /// Bytes of scratch this searcher holds (IO buffers, dedup table, heaps, routing state).
    var scratchBytes: Int {
        postings.scratchBytes + vectors.scratchBytes + routeScratch.bytes + seenKeys.count * 8
            + scoreCapacity * 4 + candCapacity * 8 + (candidates.capacity + heap.capacity) * 8 + rerankCapacity * 8
            + filterScratch.bytes
    }

    func finish(k: Int, into out: UnsafeMutablePointer<Neighbor>) -> Int {
        let r = heap.drainSorted(distances: outDist, ids: outIds)
        let cos = index.metric == .cosine
        let labels = index.labels
        for i in 0..<r { out[i] = Neighbor(id: outIds[i], distance: cos ? 1 + outDist[i] : outDist[i], label: labels.label(of: outIds[i])) }
        return r
    }

    /// Doubles the dedup table, keeping its members (rare: only when a query meets more
    /// distinct ids than planned, e.g. filtered probing far past the usual postings).
    func growSeen() {
        let old = (0..<seenKeys.count).filter { seenStamp[$0] == seenEpoch }.map { seenKeys[$0] }
        let size = seenKeys.count * 2
        seenKeys = [UInt32](repeating: 0, count: size)
        seenStamp = [UInt32](repeating: 0, count: size)
        seenMask = size - 1
        seenEpoch = 1
        seenCount = 0
        for id in old { _ = insertSeen(id) }
    }

    // MARK: dedup set (open addressing, epoch-stamped so a reset is O(1))

    func resetSeen(expected: Int) {
        var size = 64
        while size < expected * 2 { size <<= 1 }
        if seenKeys.count < size {
            seenKeys = [UInt32](repeating: 0, count: size)
            seenStamp = [UInt32](repeating: 0, count: size)
            seenEpoch = 0
        }
        seenMask = seenKeys.count - 1
        seenCount = 0
        seenEpoch &+= 1
        if seenEpoch == 0 {
            for i in 0..<seenStamp.count { seenStamp[i] = 0 }
            seenEpoch = 1
        }
    }

    /// Returns true if `id` was not yet in the set (and adds it).
    @inline(__always)
    func insertSeen(_ id: UInt32) -> Bool {
        if (seenCount + 1) * 2 > seenKeys.count { growSeen() }
        var h = Int(truncatingIfNeeded: (UInt64(id) &* 0x9E37_79B9_7F4A_7C15) >> 32) & seenMask
        return seenKeys.withUnsafeMutableBufferPointer { keys in
            seenStamp.withUnsafeMutableBufferPointer { stamp in
                while true {
                    if stamp[h] != seenEpoch { stamp[h] = seenEpoch; keys[h] = id; seenCount += 1; return true }
                    if keys[h] == id { return false }
                    h = (h + 1) & seenMask
                }
            }
        }
    }
}

import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// One thread's search machinery, reused from query to query: a reader of each store, the
/// codec's scorer, head-search scratch, dedup set and heaps, and the state of the query it
/// answers. A steady-state query allocates only its result array.
///
/// Every search, plain or filtered, is the same pipeline (docs/search.md):
/// **route** (head graph → candidate postings and their distances) → **plan** (which
/// postings: pruning, filter summaries, probes) → **fetch** (``PostingReader``: postings
/// coalesced into few requests, one round trip a round) → **score** (``QueryScorer`` over
/// whole postings) → **accept** (ids, tombstones, filter codes and predicate, dedup) →
/// **re-rank** (``VectorReader``: one round trip, when the scores are estimates) → top-k.
///
/// The query is a reified plan run in steps by the one executor (``QueryExecutor``):
/// ``start(_:k:parameters:filter:)`` validates and plans it and stages its first phase's
/// reads; the executor submits them on the thread's ``IOEngine`` and hands each completion
/// to ``complete(_:_:)``; once a phase's reads are all delivered, ``advance()`` stages the
/// next phase (another round of postings for a filtered walk, the re-rank rows, a batch of
/// the exact path) or ends the query, and ``finish(into:)`` writes its neighbours. A
/// synchronous ``search(_:k:parameters:filter:)`` is the executor's window-1 case; a batch
/// keeps several searchers' queries in flight on one engine.
///
/// Thread safety: a `Searcher` belongs to one thread at a time (``VectorIndex`` hands them
/// out from a pool).
public final class Searcher {
    let context: SearchContext
    /// This searcher's IO engine (its own IO context).
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
    /// Rows of the current vectors phase (re-rank candidates, or a batch of the exact path).
    var rerankIds: UnsafeMutablePointer<UInt32>
    var rerankDist: UnsafeMutablePointer<Float>
    var rerankCapacity = 0
    /// Listed queries (a shard's part of a routed query): the re-ranked rows' exact distances
    /// and how many rows were re-ranked, kept for ``finishCandidates()``.
    var rerankExact: UnsafeMutablePointer<Float>
    var rerankCount = 0
    var keepRerank = false
    var outDist: UnsafeMutablePointer<Float>
    var outIds: UnsafeMutablePointer<UInt32>
    var seenKeys: [UInt32] = []
    var seenStamp: [UInt32] = []
    var seenEpoch: UInt32 = 0
    var seenMask = 0
    var seenCount = 0
    /// Counters of the last query.
    public internal(set) var stats = QueryStats()

    // The query in progress (its plan and where it stands).
    /// Which plan answers the query.
    enum Kind { case plain, walk, exact }
    /// What the staged reads fetch; `.idle`: the query is answered (or none is running).
    enum Step { case idle, postings, vectors }
    var kind = Kind.plain
    var step = Step.idle
    var k = 1
    var verify = true
    /// The phase's requests, how many were submitted and how many of those are not yet complete.
    var staged = UnsafeBufferPointer<ReadRequest>(start: nil, count: 0)
    var submitted = 0
    var pending = 0
    /// The phase's first read or checksum error (thrown by `advance`).
    var phaseError: FathomError? = nil
    /// Distinct records of the current posting round that scored within the bound.
    var roundPassing = 0
    /// An id ≥ count met while scoring (a corrupt posting read with checksums off): the id,
    /// its posting and its record.
    var badId: (id: UInt32, list: UInt32, record: Int)? = nil
    /// Filtered queries: the bound filter, the walk's state, the exact path's ids
    /// (FilteredSearch.swift).
    var filter: FilterContext? = nil
    var walk = FilterWalk()
    var readSoFar = [UInt32]()
    var exactIds = [UInt32]()
    var exactCursor = 0
    /// Filtered queries: the compiled predicate's working memory.
    let filterScratch = FilterScratch()

    init(context: SearchContext, engine: IOEngine) {
        self.context = context
        self.engine = engine
        postings = context.postingStore.makeReader()
        vectors = context.vectorStore.makeReader()
        scorer = context.makeScorer()
        routeScratch = context.router.makeScratch()
        candCapacity = 128
        candIds = .allocate(capacity: candCapacity)
        candDist = .allocate(capacity: candCapacity)
        query = .allocate(capacity: max(context.dimension, 1))
        scoreCapacity = max(1, context.postingCapacity)
        scores = .allocate(capacity: scoreCapacity)
        heap = TopK(capacity: 10)
        candidates = TopK(capacity: 100)
        rerankIds = .allocate(capacity: 1)
        rerankDist = .allocate(capacity: 1)
        rerankExact = .allocate(capacity: 1)
        outDist = .allocate(capacity: 10)
        outIds = .allocate(capacity: 10)
    }

    deinit {
        candIds.deallocate(); candDist.deallocate(); query.deallocate(); scores.deallocate()
        outDist.deallocate(); outIds.deallocate(); rerankIds.deallocate(); rerankDist.deallocate()
        rerankExact.deallocate()
    }

    func ensureRerank(_ r: Int) {
        guard r > rerankCapacity else { return }
        rerankIds.deallocate(); rerankDist.deallocate(); rerankExact.deallocate()
        rerankCapacity = r
        rerankIds = .allocate(capacity: r)
        rerankDist = .allocate(capacity: r)
        rerankExact = .allocate(capacity: r)
    }

    func ensureRouteCapacity(_ list: Int) {
        if list > candCapacity {
            candIds.deallocate(); candDist.deallocate()
            candCapacity = list
            candIds = .allocate(capacity: list); candDist = .allocate(capacity: list)
        }
    }

    // MARK: the synchronous query (the executor's window-1 case)

    /// The `k` nearest neighbours of `q`, nearest first (with `filter`, only vectors matching
    /// it: min(k, number of matches) of them).
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
        var given = false, written = 0
        var failure: Error? = nil
        try QueryExecutor.run(engine: engine, window: 1, searcher: { _ in self },
                              next: { () -> QueryExecutor.Query? in
                                  if given { return nil }
                                  given = true
                                  return QueryExecutor.Query(id: 0, vector: q, filter: filter)
                              },
                              k: k, parameters: p,
                              out: { _, s, error in
                                  if let error { failure = error } else { written = s.finish(into: out) }
                              })
        if let failure { throw failure }
        return written
    }

    // MARK: the steps the executor drives

    /// Validates and plans a query and stages its first phase (``staged``; possibly no
    /// requests, or ``step`` `.idle` when the plan needs no reads at all).
    /// With `postings`, the query reads exactly those postings (a shard's part of a query a
    /// router planned: no routing here) and keeps its re-ranked candidates for
    /// ``finishCandidates()``.
    func start(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters, filter f: PreparedFilter?,
               postings: [UInt32]? = nil) throws {
        step = .idle
        staged = UnsafeBufferPointer(start: nil, count: 0)
        submitted = 0; pending = 0; phaseError = nil
        keepRerank = false; rerankCount = 0
        try prepare(q, k: k, parameters: p)
        if let postings {
            guard f == nil else { throw FathomError(.invalidArgument, "a search of named postings takes no filter") }
            filter = nil
            kind = .plain
            keepRerank = true
            try planListed(postings)
            stagePostings()
            return
        }
        if let f { try startFiltered(parameters: p, filter: f); return }
        filter = nil
        kind = .plain
        routeAndPlan(parameters: p)
        stagePostings()
    }

    /// The plan of a listed query: the given postings, each checked to be a head of this index.
    func planListed(_ postings: [UInt32]) throws {
        lists.removeAll(keepingCapacity: true)
        var records = 0
        let H = context.headCount
        for h in postings {
            guard Int(h) < H else {
                throw FathomError(.invalidArgument, "posting \(h) does not exist: the index has \(H) heads")
            }
            lists.append(h)
            records += context.postingStore.count(of: Int(h))
        }
        resetSeen(expected: records)
    }

    /// Whether staged requests still wait for room on the engine.
    var waitingToSubmit: Bool { submitted < staged.count }
    /// Whether every request of the phase was submitted and has completed.
    var phaseDone: Bool { submitted == staged.count && pending == 0 }

    /// Submits as many of the phase's remaining requests as the engine has room for, tagged
    /// `slot << 32 | request`.
    func submit(slot: Int) throws {
        let n = min(staged.count - submitted, engine.capacity - engine.inFlight)
        guard n > 0 else { return }
        try engine.submit(UnsafeBufferPointer(rebasing: staged[submitted..<(submitted + n)]),
                          tag: UInt64(slot) << 32 | UInt64(submitted), path: step == .vectors ? vectors.path : postings.path)
        submitted += n
        pending += n
    }

    /// Takes the completion of request `r` of the current phase.
    func complete(_ r: Int, _ result: Result<Int, FathomError>) {
        pending -= 1
        let e: FathomError?
        switch step {
        case .postings:
            e = postings.deliver(r, result, verify: verify) { h, records, count in
                roundPassing += collect(records, count: count, list: h)
            }
        case .vectors:
            e = vectors.deliver(r, result, verify: verify) { i, v in offerExact(i, v) }
        case .idle:
            e = nil
        }
        if let e, phaseError == nil { phaseError = e }
    }

    /// After every request of the phase completed: stages the next phase and returns true
    /// (its requests may be none: call again), or returns false when the query is answered
    /// (then ``finish(into:)``). Throws the phase's first read or checksum error.
    func advance() throws -> Bool {
        do {
            if let e = phaseError { phaseError = nil; throw e }
            switch step {
            case .idle:
                return false
            case .postings:
                try checkIds()
                if kind == .walk && walkRoundDone() && walkStageNext() { return true }
                return try afterPostings()
            case .vectors:
                if kind == .exact { return stageExactBatch() || done() }
                return try endRanking()
            }
        } catch {
            step = .idle
            throw error
        }
    }

    /// The postings are scored: stage the re-rank rows (estimated scores), or end the ranking.
    func afterPostings() throws -> Bool {
        if !scorer.exact {
            ensureRerank(candidates.capacity)
            rerankCount = candidates.drainSorted(distances: rerankDist, ids: rerankIds)
            stageVectors(rerankCount)
            return true
        }
        return try endRanking()
    }

    /// The ranking of the plan is complete: a walk that found fewer than k matches falls
    /// back to the exact path; anything else is answered.
    func endRanking() throws -> Bool {
        if kind == .walk && heap.count < k {
            startExactFallback()
            if stageExactBatch() { return true }
        }
        return done()
    }

    /// Ends the query: records the filter plan; returns false (nothing more to read).
    func done() -> Bool {
        if filter != nil { stats.filterPlan = walk.plan; filter = nil }
        step = .idle
        return false
    }

    /// Stages the reads of `lists` and scores the postings held in RAM at once.
    func stagePostings() {
        let (rq, c) = lists.withUnsafeBufferPointer { postings.stage($0) }
        stats.add(c, postings: true)
        beginPhase(.postings, rq)
        roundPassing = 0
        stats.postingsRead += postings.visitResident { h, records, count in
            roundPassing += collect(records, count: count, list: h)
        }
    }

    /// Stages the reads of the first `n` rows of `rerankIds` and ranks the rows held in RAM.
    func stageVectors(_ n: Int) {
        let (rq, c) = vectors.stage(UnsafeBufferPointer(start: rerankIds, count: n))
        stats.add(c, postings: false)
        beginPhase(.vectors, rq)
        vectors.visitResident { i, v in offerExact(i, v) }
    }

    func beginPhase(_ s: Step, _ rq: UnsafeBufferPointer<ReadRequest>) {
        step = s
        staged = rq
        submitted = 0; pending = 0; phaseError = nil
    }

    // MARK: plan and score

    /// Prepares the query: dimension and finiteness checks, conversion, normalization.
    func load(_ q: UnsafeBufferPointer<Float>) throws {
        let d = context.dimension
        guard q.count == d else {
            throw FathomError(.dimensionMismatch, "query has dimension \(q.count) but the index has \(d)")
        }
        for j in 0..<d {
            let v = q[j]
            guard v.isFinite else { throw FathomError(.nonFiniteValue, "query component \(j) is \(v); queries must be finite") }
            query[j] = v
        }
        if context.metric == .cosine {
            guard Distance.normalize(query, d) else {
                throw FathomError(.invalidArgument, "the query is all zeros: it has no direction under the cosine metric")
            }
        }
    }

    /// Route and plan of a plain query: the `probes` nearest heads, pruned to those within
    /// `maxDistRatio` × the nearest non-zero head distance, into `lists`; sizes the dedup set.
    func routeAndPlan(parameters p: SearchParameters) {
        let (probes, list) = context.router.routeWidth(p)
        let found = route(count: probes, listSize: list)
        routePrune(found: found, ids: candIds, distances: candDist, ratio: p.maxDistRatio, into: &lists)
        var records = 0
        for h in lists { records += context.postingStore.count(of: Int(h)) }
        resetSeen(expected: records)
    }

    /// Checks the arguments and loads the query; resets the counters and heaps for it.
    func prepare(_ q: UnsafeBufferPointer<Float>, k: Int, parameters p: SearchParameters) throws {
        guard k >= 1 else { throw FathomError(.invalidArgument, "k = \(k): k must be at least 1") }
        guard k <= context.count else {
            throw FathomError(.invalidArgument, "k = \(k) exceeds the \(context.count) vectors in the index")
        }
        guard p.probes >= 1 else { throw FathomError(.invalidArgument, "probes = \(p.probes) must be at least 1") }
        if let r = p.rerank, r < 1 { throw FathomError(.invalidArgument, "rerank = \(r) must be at least 1") }
        try load(q)
        stats = QueryStats()
        badId = nil
        verify = p.verifyChecksums
        self.k = k
        if heap.capacity != k {
            heap = TopK(capacity: k)
            outDist.deallocate(); outIds.deallocate()
            outDist = .allocate(capacity: k); outIds = .allocate(capacity: k)
        }
        heap.reset()
        if !scorer.exact {
            let r = max(k, p.rerank ?? context.defaultRerank(k))
            if candidates.capacity != r { candidates = TopK(capacity: r) }
            candidates.reset()
        }
        scorer.prepare(query)
    }

    /// Head-graph search for the `count` nearest heads into `candIds` / `candDist`.
    func route(count: Int, listSize: Int) -> Int {
        let list = max(listSize, count)
        ensureRouteCapacity(list)
        return context.router.route(query, k: count, listSize: list, scratch: routeScratch, outIds: candIds, outDist: candDist)
    }

    /// Throws if scoring met an id that no vector has.
    func checkIds() throws {
        guard let bad = badId else { return }
        badId = nil
        let store = context.postingStore
        throw FathomError(.corruptIndex, "posting \(bad.list) holds id \(bad.id), but the index has \(context.count) vectors: postings.dat is corrupt (read with checksums off?)",
                          path: context.path + "/postings.dat",
                          offset: store.offset(of: Int(bad.list)) + UInt64(bad.record * store.recordBytes), remedies: [.verifyAndRebuild])
    }

    /// Scores one posting's records and offers them to the heap (exact scores) or to the
    /// candidate heap (estimates); returns how many distinct records scored within the
    /// heap's bound. The one collect of every plan:
    /// - **accept**: a corrupt id (possible with checksums off) fails the query (it must
    ///   never reach the attributes, vectors.dat or the results); deleted ids are dropped;
    ///   with a filter, the codes and then the compiled predicate keep the matching records
    ///   (a block at a time) before any distance;
    /// - **score**: the whole posting in one kernel call (plain queries, or when most records
    ///   match), else the survivors gathered into one contiguous block and scored in one call;
    /// - **offer**: only records under the heap's bound are deduplicated and pushed.
    @inline(__always)
    func collect(_ records: UnsafeRawPointer, count: Int, list: UInt32) -> Int {
        let recordBytes = context.postingStore.recordBytes
        if count > scoreCapacity {
            scores.deallocate(); scoreCapacity = count; scores = .allocate(capacity: count)
        }
        let n = UInt32(context.count)
        let tombstones = context.tombstones
        let target = scorer.exact ? heap : candidates
        var bound = target.bound
        var passing = 0
        guard let f = filter else {
            scorer.score(records + 4, count: count, stride: recordBytes, into: scores)
            stats.candidatesScored += count
            for j in 0..<count {
                let id = UInt32(littleEndian: records.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
                if id >= n { if badId == nil { badId = (id, list, j) }; continue }
                let dist = scores[j]
                if dist > bound || tombstones.contains(id) || !insertSeen(id) { continue }
                passing += 1
                if target.push(dist, id) { bound = target.bound }
            }
            return passing
        }
        let sc = f.scratch
        sc.reserveRows(count, recordBytes: recordBytes)
        let ids = sc.ids, slots = sc.slots
        var m = 0
        for j in 0..<count {
            let id = UInt32(littleEndian: records.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
            if id >= n { if badId == nil { badId = (id, list, j) }; continue }
            if tombstones.contains(id) { continue }
            ids[m] = id; slots[m] = Int32(j); m += 1
        }
        sc.records += m
        m = f.filter.codes.select(ids, aux: slots, count: m, quantized: f.attrs.quantized)
        if m > 0 && (!f.filter.codes.decides || f.attrs.hasUncodedRows) {
            m = f.filter.program.select(ids, aux: slots, count: m, table: f.attrs.table, scratch: sc)
        }
        sc.matched += m
        if m == 0 { return 0 }
        let whole = 2 * m >= count
        if whole {
            scorer.score(records + 4, count: count, stride: recordBytes, into: scores)
            stats.candidatesScored += count
        } else {
            let g = sc.gathered
            for i in 0..<m {
                (g + i * recordBytes).copyMemory(from: records + Int(slots[i]) * recordBytes, byteCount: recordBytes)
            }
            scorer.score(UnsafeRawPointer(g) + 4, count: m, stride: recordBytes, into: scores)
            stats.candidatesScored += m
        }
        for i in 0..<m {
            let dist = whole ? scores[Int(slots[i])] : scores[i]
            if dist > bound || !insertSeen(ids[i]) { continue }
            passing += 1
            if target.push(dist, ids[i]) { bound = target.bound }
        }
        return passing
    }

    /// Offers row `rerankIds[i]`'s exact distance to the heap.
    @inline(__always)
    func offerExact(_ i: Int, _ v: UnsafeRawPointer) {
        let dist = Distance.one(context.metric, context.vectorStore.elementType, query: query, vector: v, d: context.dimension)
        heap.push(dist, rerankIds[i])
        if keepRerank { rerankExact[i] = dist }
    }

    /// Bytes of scratch this searcher holds (IO buffers, dedup table, heaps, routing state).
    var scratchBytes: Int {
        postings.scratchBytes + vectors.scratchBytes + routeScratch.bytes + seenKeys.count * 8
            + scoreCapacity * 4 + candCapacity * 8 + (candidates.capacity + heap.capacity) * 8 + rerankCapacity * 8
            + filterScratch.bytes
    }

    /// Writes the answered query's neighbours (at most k) to `out`, nearest first; returns how many.
    func finish(into out: UnsafeMutablePointer<Neighbor>) -> Int {
        let r = heap.drainSorted(distances: outDist, ids: outIds)
        let cos = context.metric == .cosine
        let labels = context.labels
        for i in 0..<r { out[i] = Neighbor(id: outIds[i], distance: cos ? 1 + outDist[i] : outDist[i], label: labels.label(of: outIds[i])) }
        return r
    }

    /// A listed query's answer: uncompressed postings, its k best (exact distances); compressed
    /// ones, every re-ranked candidate with its code estimate and exact distance (a router
    /// picks the query's re-rank set from all shards' estimates: ``ShardMerge``).
    func finishCandidates() -> [ShardCandidate] {
        let cos = context.metric == .cosine
        let labels = context.labels
        func shown(_ d: Float) -> Float { cos ? 1 + d : d }
        if scorer.exact {
            let r = heap.drainSorted(distances: outDist, ids: outIds)
            return (0..<r).map { ShardCandidate(id: outIds[$0], label: labels.label(of: outIds[$0]), distance: shown(outDist[$0]), estimate: nil) }
        }
        heap.reset()
        return (0..<rerankCount).map {
            ShardCandidate(id: rerankIds[$0], label: labels.label(of: rerankIds[$0]), distance: shown(rerankExact[$0]), estimate: rerankDist[$0])
        }
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

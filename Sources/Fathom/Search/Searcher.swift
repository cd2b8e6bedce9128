import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// One thread's search machinery: its own IO engine (libaio context), aligned read
/// buffers, head-search scratch, dedup set and result heap, all reused from query to query,
/// so a steady-state query allocates only its result array.
///
/// Query path (SPANN): head-graph search → query-aware pruning → every chosen posting read
/// in one batch → each posting scored as its read completes → replicas deduplicated → top-k.
public final class Searcher {
    let index: VectorIndex
    let engine: IOEngine
    let headScratch: HeadGraph.Scratch
    var candIds: UnsafeMutablePointer<UInt32>
    var candDist: UnsafeMutablePointer<Float>
    var candCapacity: Int
    var pageBuffer: UnsafeMutableRawPointer
    var slots: Int
    let slotBytes: Int
    var requests: UnsafeMutablePointer<ReadRequest>
    var postingOf: UnsafeMutablePointer<Int>
    let query: UnsafeMutablePointer<Float>
    var scores: UnsafeMutablePointer<Float>
    var scoreCapacity: Int
    var heap: TopK
    var outDist: UnsafeMutablePointer<Float>
    var outIds: UnsafeMutablePointer<UInt32>
    var seenKeys: [UInt32] = []
    var seenStamp: [UInt32] = []
    var seenEpoch: UInt32 = 0
    var seenMask = 0
    var seenCount = 0
    /// Counters of the last query.
    public internal(set) var stats = QueryStats()
    // Compressed indexes: the projected query, its prepared form, the candidate heap and
    // the re-rank read buffers.
    var projected: UnsafeMutablePointer<Float>
    var prepared: LVQCodec.PreparedQuery
    var candidates: TopK
    var rerankSlots = 0
    var rerankSlotBytes = 0
    var rerankBuffer: UnsafeMutableRawPointer
    var rerankRequests: UnsafeMutablePointer<ReadRequest>
    var rerankIds: UnsafeMutablePointer<UInt32>
    var rerankDist: UnsafeMutablePointer<Float>

    init(index: VectorIndex, engine: IOEngine) throws {
        self.index = index
        self.engine = engine
        headScratch = HeadGraph.Scratch(graphSize: index.graph.count, beam: 128)
        candCapacity = 128
        candIds = .allocate(capacity: candCapacity)
        candDist = .allocate(capacity: candCapacity)
        slotBytes = (index.maxPostingPages + 1) * 4096
        slots = 64
        pageBuffer = .allocate(byteCount: slots * slotBytes, alignment: 4096)
        requests = .allocate(capacity: slots)
        postingOf = .allocate(capacity: slots)
        query = .allocate(capacity: max(index.dimension, 1))
        let cap = max(1, index.manifest.parameters.posting_capacity)
        scoreCapacity = cap
        scores = .allocate(capacity: cap)
        heap = TopK(capacity: 10)
        let reduced = index.codec?.reducedDim ?? 1
        projected = .allocate(capacity: reduced)
        prepared = LVQCodec.PreparedQuery(dim: reduced)
        candidates = TopK(capacity: 100)
        rerankSlotBytes = ((index.manifest.dimension * index.storedType.size + 4095) / 4096 + 1) * 4096
        rerankBuffer = .allocate(byteCount: 4096, alignment: 4096)
        rerankRequests = .allocate(capacity: 1)
        rerankIds = .allocate(capacity: 1)
        rerankDist = .allocate(capacity: 1)
        outDist = .allocate(capacity: 10)
        outIds = .allocate(capacity: 10)
    }

    deinit {
        candIds.deallocate(); candDist.deallocate(); pageBuffer.deallocate()
        requests.deallocate(); postingOf.deallocate(); query.deallocate(); scores.deallocate()
        outDist.deallocate(); outIds.deallocate()
        projected.deallocate(); rerankBuffer.deallocate(); rerankRequests.deallocate()
        rerankIds.deallocate(); rerankDist.deallocate()
    }

    func ensureRerank(_ r: Int) {
        guard r > rerankSlots else { return }
        rerankBuffer.deallocate(); rerankRequests.deallocate(); rerankIds.deallocate(); rerankDist.deallocate()
        rerankSlots = r
        rerankBuffer = .allocate(byteCount: r * rerankSlotBytes, alignment: 4096)
        rerankRequests = .allocate(capacity: r)
        rerankIds = .allocate(capacity: r)
        rerankDist = .allocate(capacity: r)
    }

    func ensureCapacity(probes: Int, list: Int) {
        if list > candCapacity {
            candIds.deallocate(); candDist.deallocate()
            candCapacity = list
            candIds = .allocate(capacity: list); candDist = .allocate(capacity: list)
        }
        if probes > slots {
            pageBuffer.deallocate(); requests.deallocate(); postingOf.deallocate()
            slots = probes
            pageBuffer = .allocate(byteCount: slots * slotBytes, alignment: 4096)
            requests = .allocate(capacity: slots)
            postingOf = .allocate(capacity: slots)
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
        guard k >= 1 else { throw FathomError(.invalidArgument, "k = \(k): k must be at least 1") }
        guard k <= index.count else {
            throw FathomError(.invalidArgument, "k = \(k) exceeds the \(index.count) vectors in the index")
        }
        if heap.capacity != k {
            heap = TopK(capacity: k)
            outDist.deallocate(); outIds.deallocate()
            outDist = .allocate(capacity: k); outIds = .allocate(capacity: k)
        }
        guard p.probes >= 1 else { throw FathomError(.invalidArgument, "probes = \(p.probes) must be at least 1") }
        try load(q)
        stats = QueryStats()
        if let filter { return try searchFiltered(k: k, parameters: p, filter: filter, into: out) }
        let g = index.graph
        let probes = min(p.probes, g.count)
        let list = max(p.headListSize ?? max(2 * probes, 64), probes)
        ensureCapacity(probes: probes, list: list)
        let found = g.search(query, k: probes, listSize: list, scratch: headScratch, outIds: candIds, outDist: candDist)

        // Query-aware pruning against the nearest non-zero head distance.
        var ref = candDist[0]
        if ref <= 0 { for i in 1..<max(found, 1) where candDist[i] > 0 { ref = candDist[i]; break } }
        let limit = ref > 0 ? ref * p.maxDistRatio : Float.infinity
        let table = index.table
        let fd = index.postingsFile.fd
        var nreq = 0
        for i in 0..<found {
            if candDist[i] > limit { break }
            let e = table[Int(candIds[i])]
            if e.count == 0 { continue }
            let pageStart = e.offset & ~4095
            requests[nreq] = ReadRequest(fd: fd, offset: pageStart, length: Int(e.pages) * 4096,
                                         buffer: pageBuffer + nreq * slotBytes)
            postingOf[nreq] = Int(candIds[i])
            nreq += 1
        }
        heap.reset()
        let codec = index.codec
        if let codec { prepareCompact(codec, k: k, parameters: p) }
        resetSeen(expected: nreq * max(index.manifest.parameters.posting_capacity, 1))
        var firstError: FathomError? = nil
        let recordBytes = index.manifest.record_bytes
        let d = index.dimension
        let metric = index.metric
        let et = index.elementType
        try engine.read(UnsafeBufferPointer(start: requests, count: nreq), path: index.postingsPath) { i, result in
            switch result {
            case .failure(let e):
                if firstError == nil { firstError = e }
            case .success:
                let h = postingOf[i]
                let e = table[h]
                let base = UnsafeRawPointer(requests[i].buffer) + Int(e.offset & 4095)
                let bytes = Int(e.count) * recordBytes
                if p.verifyChecksums {
                    let c = crc32c(base, bytes, 0)
                    if c != e.crc {
                        if firstError == nil {
                            firstError = FathomError(.corruptIndex, String(format: "posting %d fails its checksum (stored %08x, read %08x): postings.dat is corrupt — run `fathom verify` and rebuild", h, e.crc, c), path: index.postingsPath, offset: e.offset)
                        }
                        return
                    }
                }
                stats.postingsRead += 1
                stats.bytesRead += requests[i].length
                if let codec {
                    scoreCodes(base, count: Int(e.count), recordBytes: recordBytes, codec: codec, metric: metric)
                } else {
                    scorePosting(base, count: Int(e.count), recordBytes: recordBytes, d: d, metric: metric, type: et)
                }
            }
        }
        if let e = firstError { throw e }
        if codec != nil { try rerank() }
        return finish(k: k, into: out)
    }

    /// Compressed indexes: sizes the candidate heap to the re-rank depth and projects the
    /// query once (LeanVec) for scoring codes.
    func prepareCompact(_ codec: CompactCodec, k: Int, parameters p: SearchParameters) {
        let r = max(k, p.rerank ?? max(20, k * (codec.lvq.kind == .lvq4 ? 4 : 2)))
        if candidates.capacity != r { candidates = TopK(capacity: r) }
        candidates.reset()
        codec.projection.projectQuery(query, into: projected, metric: index.metric)
        prepared.update(projected)
    }

    /// Scores LVQ codes of the projected vectors; the best `rerank` go to the candidate heap.
    @inline(__always)
    func scoreCodes(_ base: UnsafeRawPointer, count: Int, recordBytes: Int, codec: CompactCodec, metric: Metric) {
        if count > scoreCapacity {
            scores.deallocate(); scoreCapacity = count; scores = .allocate(capacity: count)
        }
        codec.lvq.distances(prepared, codes: base + 4, count: count, stride: recordBytes,
                            metric: metric == .l2 ? .l2 : .ip, out: scores)
        stats.candidatesScored += count
        var bound = candidates.bound
        for j in 0..<count {
            let dist = scores[j]
            if dist > bound { continue }
            let id = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
            if !insertSeen(id) { continue }
            if candidates.push(dist, id) { bound = candidates.bound }
        }
    }

    /// Bi-granular second stage: reads the candidates' full vectors from vectors.dat in one
    /// batch and ranks them by exact distance.
    func rerank() throws {
        let n = candidates.drainSorted(distances: rerankDistScratch(), ids: rerankIdsScratch())
        ensureRerank(n)
        let vecBytes = index.manifest.dimension * index.storedType.size
        let placement = index.vectorPlacement
        let fd = index.vectorsFile.fd
        for i in 0..<n {
            let off = placement.offset(Int(rerankIds[i]))
            let start = off & ~4095
            let len = Int((off + UInt64(vecBytes) - start + 4095) / 4096 * 4096)
            rerankRequests[i] = ReadRequest(fd: fd, offset: start, length: len, buffer: rerankBuffer + i * rerankSlotBytes)
        }
        var firstError: FathomError? = nil
        let d = index.dimension, metric = index.metric, type = index.storedType
        try engine.read(UnsafeBufferPointer(start: rerankRequests, count: n), path: index.vectorsPath) { i, result in
            switch result {
            case .failure(let e):
                if firstError == nil { firstError = e }
            case .success:
                let off = placement.offset(Int(rerankIds[i]))
                let v = UnsafeRawPointer(rerankRequests[i].buffer) + Int(off - rerankRequests[i].offset)
                stats.bytesRead += rerankRequests[i].length
                stats.vectorsReranked += 1
                heap.push(Distance.one(metric, type, query: query, vector: v, d: d), rerankIds[i])
            }
        }
        if let e = firstError { throw e }
    }

    // The candidate heap drains into these (sized to its capacity).
    func rerankDistScratch() -> UnsafeMutablePointer<Float> { ensureRerank(candidates.capacity); return rerankDist }
    func rerankIdsScratch() -> UnsafeMutablePointer<UInt32> { ensureRerank(candidates.capacity); return rerankIds }

    @inline(__always)
    func scorePosting(_ base: UnsafeRawPointer, count: Int, recordBytes: Int, d: Int, metric: Metric, type: ElementType) {
        if count > scoreCapacity {
            scores.deallocate(); scoreCapacity = count; scores = .allocate(capacity: count)
        }
        Distance.batch(metric, type, query: query, base: base + 4, n: count, d: d, stride: recordBytes, out: scores)
        stats.candidatesScored += count
        var bound = heap.bound
        for j in 0..<count {
            let dist = scores[j]
            if dist > bound { continue }
            let id = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
            if !insertSeen(id) { continue }
            if heap.push(dist, id) { bound = heap.bound }
        }
    }

    func finish(k: Int, into out: UnsafeMutablePointer<Neighbor>) -> Int {
            let r = heap.drainSorted(distances: outDist, ids: outIds)
        let cos = index.metric == .cosine
        for i in 0..<r { out[i] = Neighbor(id: outIds[i], distance: cos ? 1 + outDist[i] : outDist[i]) }
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

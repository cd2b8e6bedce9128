import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// How a ``MutableVectorIndex`` keeps its index good under a stream of updates (SPFresh's
/// LIRE, docs/updates.md "Keeping quality: split, merge, reassign").
///
/// Thread safety: a value; copied into the writer at open.
public struct UpdatePolicy: Sendable, Equatable {
    /// RAM the delta tier may hold, in bytes: records appended to lists since each list was
    /// last written, and inserted full vectors not yet spilled to disk. Past it, maintenance
    /// writes the largest delta lists into postings.upd and the vectors into vectors.upd
    /// until the tier is under half of it. Default 64 MiB.
    public var deltaMemory: Int = 64 << 20
    /// A list holding more records than this splits in two (nil: chosen from the built index:
    /// its longest list, at least twice the mean, at most the posting capacity).
    public var splitAbove: Int?
    /// A list whose live records fall below this is merged into its neighbours (nil: chosen
    /// from the built index: half the 1st percentile of its posting lengths, at most
    /// capacity / 16). Only a list that lost records to deletes merges.
    public var mergeBelow: Int?
    /// After a split, the vectors of this many postings nearest the split one are checked
    /// for a nearer new head (LIRE's reassignment); the split list's own vectors always are.
    public var reassignNeighbors: Int = 8
    /// A sweep over every list (dropping deleted records, merging lists grown small) starts
    /// once this fraction of the live vectors was deleted since the last sweep.
    public var sweepAfterDeletedFraction: Double = 0.05
    /// Whether maintenance runs on a background thread after each flush (default false: only
    /// when ``MutableVectorIndex/maintain()`` is called; `fathom insert` and `fathom delete`
    /// turn it on and call `maintain()` before they exit).
    public var background: Bool = false

    public init() {}
}

/// What maintenance did since the writer opened (work replayed from the log not counted),
/// and the state of the delta tier.
public struct MaintenanceStats: Sendable, Equatable, Codable {
    /// Lists split in two (each adds a head).
    public var splits = 0
    /// Lists merged away (each retires a head).
    public var merges = 0
    /// Vectors moved to other postings (LIRE reassignment and merges): each gets a new id.
    public var reassigned = 0
    /// Vectors of lists near a split that joined a new head as well (LIRE reassignment).
    public var attached = 0
    /// Lists written into postings.upd (folds of the delta, reclaims, split halves).
    public var relocated = 0
    /// Inserted vectors written to vectors.upd.
    public var spilledRows = 0
    /// Deleted records dropped from lists in place.
    public var reclaimedRecords = 0
    /// Sweeps over every list started.
    public var sweeps = 0
    /// Heads now (built + split; none removed), and how many of them are retired.
    public var heads = 0, retiredHeads = 0
    /// RAM of the delta tier now, and its bound (``UpdatePolicy/deltaMemory``).
    public var deltaBytes = 0, deltaBound = 0
}

extension WriterState {
    /// RAM of the delta tier: delta lists and inserted vectors held in RAM.
    var deltaBytes: Int { delta.bytes + vectors.residentBytes }

    var currentStats: MaintenanceStats {
        var s = stats
        s.heads = headCount; s.retiredHeads = retired.deleted
        s.deltaBytes = deltaBytes; s.deltaBound = policy.deltaMemory
        return s
    }

    /// Whether there is maintenance to do.
    var needsMaintenance: Bool {
        !oversized.isEmpty || deltaBytes > policy.deltaMemory || sweepCursor != nil || sweepDue || splitsSinceRepair > 0
    }

    private var sweepDue: Bool {
        tombstones.deleted - deletedAtLastSweep > Int(policy.sweepAfterDeletedFraction * Double(max(idOf.count, 1)))
    }

    /// One unit of maintenance, logged in the write-ahead log's pending group (the caller
    /// commits and publishes it). Returns whether it did anything. Order: oversized lists
    /// split; a delta tier over its bound is brought under half of it (vectors spilled, the
    /// largest delta lists written out); after enough deletes, a sweep reclaims deleted
    /// records and merges small lists, a bounded slice of heads per unit; last, after splits,
    /// the head graph's reachability is repaired.
    func maintainOnce() throws -> Bool {
        // Lowest head first: the order, and so the index, does not depend on hashing.
        while let h = oversized.min() {
            oversized.remove(h)
            if retired.contains(UInt32(h)) || count(h) <= splitAbove { continue }
            try split(h)
            return true
        }
        if deltaBytes > policy.deltaMemory || (reducing && deltaBytes > policy.deltaMemory / 2) {
            reducing = true
            let unspilled = (vectors.count - spilledRows) * vectors.rowBytes
            if unspilled > 0 && unspilled > policy.deltaMemory / 4 { try spill(); return true }
            if delta.records > 0 { try relocateLargestDeltas(); return true }
            if unspilled > 0 { try spill(); return true }
            // Nothing left to write out (what stays is the last, partly spilled chunk).
        }
        reducing = false
        if sweepCursor == nil && sweepDue {
            sweepCursor = 0
            deletedAtLastSweep = tombstones.deleted
            stats.sweeps += 1
        }
        if let c = sweepCursor {
            try sweep(from: c)
            return true
        }
        if splitsSinceRepair > 0 {
            wal.appendRepair(heads: UInt32(headCount))
            applyRepair()
            return true
        }
        return false
    }

    // MARK: jobs

    /// Splits list h (SPFresh's split with LIRE's reassignment, docs/updates.md). The full
    /// vectors of its live records are clustered in two by a balanced 2-means
    /// (``BalancedKMeans/split(points:minShare:iterations:)``; full vectors, not codes: a
    /// codec trained before the data drifted can miss most of the new vectors' variance); the
    /// vector nearest each centre gives the two heads (real vectors, as the build's heads
    /// are): h moves to the first and is linked again, a new head joins the graph at the
    /// second. Each record then goes where the build's rule, over the new heads, puts its
    /// vector: into either half or both (a boundary vector keeps a replica on each side); a
    /// vector the rule puts in neither moves (assigned again: a new id, the old one deleted).
    /// Last, the vectors of the `reassignNeighbors` lists nearest h that the rule now gives
    /// to a new head are attached to it (they stay in their own lists too) while it has room
    /// under the split threshold (so a split always leaves shorter lists).
    func split(_ h: Int) throws {
        let n = try loadLive(h)
        if n <= splitAbove { try writeList(h, n); return }
        let d = base.dimension, rb = recordBytes
        let X = Matrix(rows: n, cols: d)
        for i in 0..<n { try readVector(recordId(i), into: X.row(i)) }
        guard let halves = BalancedKMeans.split(points: X) else { try writeList(h, n); return }
        let old = UnsafeMutablePointer<Float>.allocate(capacity: d), u = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { old.deallocate(); u.deallocate() }
        old.update(from: heads.row(h), count: d)
        let va = X.row(halves.first), vb = X.row(halves.other)
        let sideB = halves.second
        let g = headCount
        wal.appendSplit(head: UInt32(h), newHead: UInt32(g), headVector: va, newVector: vb)
        applySplit(head: h, headVector: va, newVector: vb)
        stats.splits += 1
        // Where the rule puts each record: either half or both (a boundary vector keeps a
        // replica on each side), neither (it moves). When replicas would leave a half nearly
        // as long as the list was, the 2-means sides are used alone, so a split always shortens.
        var inA = [Bool](repeating: false, count: n), inB = [Bool](repeating: false, count: n)
        var sizeA = 0, sizeB = 0
        for i in 0..<n {
            let chosen = localAssign(X.row(i), near: [h, g])
            inA[i] = chosen.contains(UInt32(h)); inB[i] = chosen.contains(UInt32(g))
            if inA[i] { sizeA += 1 }
            if inB[i] { sizeB += 1 }
        }
        if max(sizeA, sizeB) > n * 17 / 20 || min(sizeA, sizeB) < n * 3 / 20 {
            for i in 0..<n { inA[i] = !sideB[i]; inB[i] = sideB[i] }
        }
        var a = [UInt8](), b = [UInt8]()
        a.reserveCapacity(n * rb); b.reserveCapacity(n * rb)
        var kept = Set<UInt32>()
        var moves = [Int]()
        jobRecords.withUnsafeBytes { r in
            for i in 0..<n {
                let rec = UnsafeRawBufferPointer(rebasing: r[(i * rb)..<((i + 1) * rb)])
                if inA[i] { a.append(contentsOf: rec) }
                if inB[i] { b.append(contentsOf: rec) }
                if inA[i] || inB[i] { kept.insert(recordId(i)) } else { moves.append(i) }
            }
        }
        let moverIds = moves.map { recordId($0) }   // before jobRecords holds another list
        try relocate(h, records: a)
        try relocate(g, records: b)
        try files.syncPostings()
        // Vectors of the lists nearest h that the rule now gives to a new head.
        for p in try neighbourLists(of: old, excluding: [h, g]) {
            let m = try loadLive(p)
            for i in 0..<m {
                let id = recordId(i)
                if kept.contains(id) { continue }
                try readVector(id, into: u)
                guard min(Distance.l2sq(u, va, d), Distance.l2sq(u, vb, d)) < Distance.l2sq(u, heads.row(p), d) else { continue }
                let chosen = localAssign(u, near: [h, g, p])
                for x in [h, g] where chosen.contains(UInt32(x)) && count(x) < splitAbove {
                    try jobRecords.withUnsafeBytes { r in
                        let rec = r.baseAddress! + i * rb
                        wal.appendAttach(head: UInt32(x), record: rec)
                        applyAttach(head: x, record: rec)
                    }
                    kept.insert(id)
                    stats.attached += 1
                }
            }
        }
        // The movers go where the build's rule puts them (a head search, as an insert).
        for (i, id) in zip(moves, moverIds) {
            try checkRoom(1)
            try logAndApply(.upsert, label: label(of: id), vector: X.row(i), attributes: attributeRow(of: id))
            stats.reassigned += 1
        }
        for x in [h, g] where count(x) > splitAbove && count(x) < n { oversized.insert(x) }
    }

    /// Merges list h away (SPFresh): h is retired (never assigned or routed to again), its
    /// list emptied, and each of its live vectors assigned again by the build's rule.
    func merge(_ h: Int, live n: Int) throws {
        let ids: [UInt32] = jobRecords.withUnsafeBytes { r in
            (0..<n).map { UInt32(littleEndian: r.loadUnaligned(fromByteOffset: $0 * recordBytes, as: UInt32.self)) }
        }
        wal.appendRetire(head: UInt32(h))
        retired.insert(UInt32(h))
        try relocate(h, records: [])
        stats.merges += 1
        try reassign(ids)
    }

    /// Moves each vector to the postings the build's rule now picks: an upsert of its label
    /// (a new id; the old id's records everywhere become deleted ones, reclaimed in place).
    func reassign(_ ids: [UInt32]) throws {
        let v = UnsafeMutablePointer<Float>.allocate(capacity: base.dimension)
        defer { v.deallocate() }
        var done = Set<UInt32>()
        for id in ids where !tombstones.contains(id) && done.insert(id).inserted {
            try readVector(id, into: v)
            try checkRoom(1)
            try logAndApply(.upsert, label: label(of: id), vector: v, attributes: attributeRow(of: id))
            stats.reassigned += 1
        }
    }

    /// Writes list h's live records (stored + delta, deleted dropped) to postings.upd, or
    /// splits or merges it when its live size says so.
    func fold(_ h: Int) throws {
        let n = try loadLive(h)
        if n > splitAbove { try split(h); return }
        if n < mergeBelow && n < count(h) && !retired.contains(UInt32(h)) && headCount - retired.deleted > 1 { try merge(h, live: n); return }
        try writeList(h, n)
    }

    /// The delta lists holding the most records, written out (256 per unit).
    func relocateLargestDeltas() throws {
        var order = (0..<headCount).filter { delta.counts[$0] > 0 }
        if order.count > 256 {
            order.sort { delta.counts[$0] > delta.counts[$1] || (delta.counts[$0] == delta.counts[$1] && $0 < $1) }
            order.removeLast(order.count - 256)
        }
        for h in order { try fold(h) }
        try files.syncPostings()
    }

    /// The inserted vectors still only in RAM, written to vectors.upd.
    func spill() throws {
        let rows = vectors.count
        try files.writeSpilled(vectors, from: spilledRows, to: rows)
        try files.syncVectors()
        wal.appendSpill(rows: UInt64(rows))
        stats.spilledRows += rows - spilledRows
        applySpill(rows: rows)
    }

    /// A slice of the sweep: lists from `cursor` on (up to 256 read), each rewritten when a
    /// fifth or more of its records are deleted, merged when deletes took it below `mergeBelow`.
    func sweep(from cursor: Int) throws {
        var h = cursor, read = 0
        while h < headCount && read < 256 {
            if !retired.contains(UInt32(h)) && count(h) > 0 {
                read += 1
                let total = count(h)
                let n = try loadLive(h)
                if n < mergeBelow && n < total && headCount - retired.deleted > 1 { try merge(h, live: n) }
                else if (total - n) * 5 >= total { try writeList(h, n) }
            }
            h += 1
        }
        try files.syncPostings()
        sweepCursor = h < headCount ? h : nil
    }

    // MARK: pieces

    var recordBytes: Int { base.postingStore.recordBytes }

    /// The id of record `i` of `jobRecords`.
    func recordId(_ i: Int) -> UInt32 {
        jobRecords.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: i * recordBytes, as: UInt32.self)) }
    }

    /// Loads list h's live records (stored list, then delta; deleted ids dropped) into
    /// `jobRecords`; returns how many. Counts the deleted ones it met as reclaimable.
    @discardableResult
    func loadLive(_ h: Int) throws -> Int {
        let rb = recordBytes
        jobRecords.removeAll(keepingCapacity: true)
        let stored = storedCount(h)
        if stored > 0 {
            let e = moved[h] ? relocated[h] : base.table[h]
            let buf = UnsafeMutableRawPointer.allocate(byteCount: stored * rb, alignment: 16)
            defer { buf.deallocate() }
            if moved[h] { try files.readPosting(e, into: buf, recordBytes: rb, list: h) }
            else { try files.readBasePosting(e, into: buf, recordBytes: rb, list: h) }
            appendLive(UnsafeRawPointer(buf), stored)
        }
        let (p, c) = delta.records(of: h)
        if let p, c > 0 { appendLive(p, c) }
        return jobRecords.count / rb
    }

    private func appendLive(_ p: UnsafeRawPointer, _ n: Int) {
        let rb = recordBytes
        for i in 0..<n {
            let id = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * rb, as: UInt32.self))
            if tombstones.contains(id) { continue }
            jobRecords.append(contentsOf: UnsafeRawBufferPointer(start: p + i * rb, count: rb))
        }
    }

    /// Writes the `n` records of `jobRecords` as list h.
    func writeList(_ h: Int, _ n: Int) throws {
        let dropped = count(h) - n
        try relocate(h, records: Array(jobRecords[0..<(n * recordBytes)]))
        stats.reclaimedRecords += max(0, dropped)
    }

    /// Appends `records` to postings.upd as h's list (not yet synced), logs it and applies it.
    func relocate(_ h: Int, records: [UInt8]) throws {
        let rb = recordBytes
        let e = try records.withUnsafeBytes { try files.appendPosting($0.baseAddress, count: records.count / rb, recordBytes: rb) }
        wal.appendRelocate(head: UInt32(h), entry: e)
        applyRelocate(head: h, entry: e)
        stats.relocated += 1
    }

    /// The build's rule for a vector known to lie near heads `near`: the RNG closure rule over
    /// the `candidate_heads` nearest of those heads and their graph neighbours,
    /// scored exactly. For the records of a list being split this is the graph search's
    /// answer without the search (their nearest heads are around it), at a fraction of the
    /// cost. Returns the chosen heads (in `assigned`).
    func localAssign(_ v: UnsafePointer<Float>, near: [Int]) -> UnsafeBufferPointer<UInt32> {
        let a = assigner, d = base.dimension, R = graph.degree
        let p = base.manifest.parameters
        localCandidates.removeAll(keepingCapacity: true)
        localSeen.removeAll(keepingCapacity: true)
        func add(_ x: UInt32) {
            if x != HeadGraph.empty, Int(x) < headCount, !retired.contains(x), localSeen.insert(x).inserted {
                localCandidates.append((Distance.l2sq(v, heads.row(Int(x)), d), x))
            }
        }
        for x in near { add(UInt32(x)) }
        for x in near {
            let nb = graph.neighbors + x * R
            for j in 0..<R { add(nb[j]) }
        }
        localCandidates.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        let K = min(localCandidates.count, max(1, p.candidate_heads))   // candIds holds candidate_heads + 33
        for i in 0..<K { a.candDist[i] = localCandidates[i].0; a.candIds[i] = localCandidates[i].1 }
        let m = rngSelect(candidates: a.candIds, distances: a.candDist, count: K, replicas: min(WriteAheadLog.maxHeads, max(1, p.replicas)),
                          rngFactor: Float(p.rng_factor), heads: heads, out: a.chosen)
        for c in 0..<m { assigned[c] = a.candIds[a.chosen[c]] }
        return UnsafeBufferPointer(start: assigned, count: m)
    }

    /// The `reassignNeighbors` live heads nearest `v`, but `excluding`.
    func neighbourLists(of v: UnsafePointer<Float>, excluding: [Int]) throws -> [Int] {
        let k = policy.reassignNeighbors
        guard k > 0 else { return [] }
        let a = assigner
        let want = min(k + excluding.count + retired.deleted, headCount, 64)
        let found = graph.search(FloatHeads(query: v, heads: heads), k: want, listSize: max(want, 32), scratch: a.scratch,
                                 outIds: a.candIds, outDist: a.candDist, entries: pivots.nearest(v, scratch: a.pivotDist, out: a.entries))
        var out = [Int]()
        for i in 0..<found {
            let p = Int(a.candIds[i])
            if out.count == k { break }
            if excluding.contains(p) || retired.contains(UInt32(p)) { continue }
            out.append(p)
        }
        return out
    }

    // MARK: applying (live and replay alike)

    /// Head h moves to `hv`; a new head (the next id) at `gv` joins the graph.
    func applySplit(head h: Int, headVector hv: UnsafePointer<Float>, newVector gv: UnsafePointer<Float>) {
        let d = base.dimension
        let g = headCount
        if g == graph.count { growHeads() }
        heads.row(h).update(from: hv, count: d)
        heads.row(g).update(from: gv, count: d)
        headCount += 1
        // h is linked again where it now is (its old in-edges stay as long edges), then g joins.
        let a = assigner
        graph.link(node: h, entries: pivots.nearest(hv, scratch: a.pivotDist, out: a.entries), alpha2: 1.2 * 1.2, work: linkWork)
        graph.link(node: g, entries: pivots.nearest(gv, scratch: a.pivotDist, out: a.entries), alpha2: 1.2 * 1.2, work: linkWork)
        delta.addList()
        // g's lists hold records of h's list (its summary covered them) and what joins later.
        if !summaries.isEmpty { summaries.append(summaries[h]); attributeSnapshot = nil }
        relocated.append(PostingEntry(offset: 0, count: 0, pages: 0, crc: 0))
        moved.append(true)
        movedHeads.append(h)
        routerDirty = true
        splitsSinceRepair += 1
    }

    /// The build's reachability repair over the heads now (a relinked head drops out-edges
    /// that other heads may have been reachable through only): every head searches for its
    /// own vector, one that is not found gets an in-edge. Deterministic, so replay repeats it.
    func applyRepair() {
        graph.repairReachability(threads: 1, nodes: headCount, pivots: pivots.pivots)
        routerDirty = true
        splitsSinceRepair = 0
    }

    /// Room for more heads: a graph, assignment scratch and retired set 1/8 larger.
    func growHeads() {
        let capacity = graph.count + max(64, graph.count / 8)
        graph = graph.withCapacity(capacity)
        let K = max(1, min(base.manifest.parameters.candidate_heads, headCount))
        assigner = AssignWorker(heads: capacity, beam: K + 32, degree: graph.degree, pivots: pivots.count,
                                encodeScratch: base.codec.encodeScratchFloats)
        linkWork = LinkWork(graphSize: capacity, buildList: 64, degree: graph.degree)
        retired = retired.copy(capacity: capacity)
    }

    /// h's list is now exactly `e` in postings.upd; its delta is folded in.
    func applyRelocate(head h: Int, entry e: PostingEntry) {
        moved[h] = true
        relocated[h] = e
        delta.clear(head: h)
    }

    /// A copy of `record` joins head h's delta.
    func applyAttach(head h: Int, record: UnsafeRawPointer) {
        delta.append(head: h, record: record)
        widenSummary(h, id: UInt32(littleEndian: record.loadUnaligned(as: UInt32.self)))
        if count(h) > splitAbove { oversized.insert(h) }
    }

    /// The first `rows` inserted vectors are in vectors.upd.
    func applySpill(rows: Int) {
        spilledRows = rows
        vectors.drop(below: rows)
        files.openVectorStore()
    }
}

/// The files maintenance writes beside the built ones (docs/format.md, "Update files"):
/// `postings.upd` (lists rewritten by splits, merges and folds, page-aligned, each with
/// its CRC32C in the log record that points at it) and `vectors.upd` (inserted full vectors,
/// placed as in vectors.dat). Both start with a 4 KiB header page whose common header names
/// the index version (its manifest checksum). The log is the truth: a file's bytes past
/// what the log points at are a job cut short and are cut at the next writable open.
///
/// Thread safety: one owner (the writer, under its lock); the stores it hands out are
/// immutable and shared.
final class UpdateFiles {
    static let postingsName = "postings.upd", vectorsName = "vectors.upd"
    static let postingsMagic = "FTHMPUPD", vectorsMagic = "FTHMVUPD"

    let directory: String, identity: UInt64, dimension: Int
    /// Whether this owner writes the files, and whether searches read them with O_DIRECT.
    let writable: Bool, direct: Bool
    let placement: IndexLayout.VectorPlacement
    /// The built files, read by jobs (the page cache path).
    let basePostings: RandomAccessFile
    let baseVectors: RandomAccessFile
    private var postingsLog: LogFile?
    private var vectorsLog: LogFile?
    private var postingsPlain: RandomAccessFile?
    private var vectorsPlain: RandomAccessFile?
    /// What searches read through (O_DIRECT when the index's IO path is).
    private(set) var postingsReader: RandomAccessFile?
    private(set) var vectorStore: DiskVectorStore?

    var postingsPath: String { directory + "/" + Self.postingsName }
    var vectorsPath: String { directory + "/" + Self.vectorsName }

    init(directory: String, identity: UInt64, dimension: Int, writable: Bool, direct: Bool) throws {
        self.directory = directory; self.identity = identity; self.dimension = dimension
        self.writable = writable; self.direct = direct
        placement = IndexLayout.VectorPlacement(rowBytes: dimension * 4)
        let layout = IndexLayout(directory: directory)
        basePostings = try RandomAccessFile(path: layout.postingsPath)
        baseVectors = try RandomAccessFile(path: layout.vectorsPath)
        if FileManager.default.fileExists(atPath: postingsPath) { try openPostings(create: false) }
        if FileManager.default.fileExists(atPath: vectorsPath) { try openVectors(create: false) }
    }

    private func header(magic: String) -> [UInt8] {
        let h = IndexFileHeader(magic: magic, count: 0, dimension: UInt32(dimension), elementType: 0,
                                payloadOffset: 4096, payloadBytes: 0, recordBytes: 0, aux: identity)
        return h.encode() + [UInt8](repeating: 0, count: 4096 - IndexFileHeader.size)
    }

    /// Opens (creating, with its header page, when `create`) one update file; checks that
    /// its header names this version.
    private func open(_ path: String, magic: String, create: Bool) throws -> (LogFile?, RandomAccessFile) {
        var log: LogFile? = nil
        if writable {
            let l = try LogFile(path: path, create: create)
            // A header page of zeros: its write never reached the disk (a power cut before the
            // creation's fsync returned); nothing the log points at can follow it, so start again.
            var first = [UInt8](repeating: 0, count: IndexFileHeader.size)
            if l.size >= 4096 { _ = try first.withUnsafeMutableBytes { try l.read(into: $0.baseAddress!, count: IndexFileHeader.size, at: 0) } }
            if l.size < 4096 || first.allSatisfy({ $0 == 0 }) {
                try l.truncate(to: 0)
                try header(magic: magic).withUnsafeBytes { try l.append($0.baseAddress!, count: 4096) }
                try l.sync()
                try fsyncDirectory(directory)
            }
            log = l
        }
        let plain = try RandomAccessFile(path: path)
        if plain.size >= 4096 {
            let h = try plain.readHeader(magic: magic)
            guard h.aux == identity else {
                throw FathomError(.corruptIndex, String(format: "%@ belongs to another version of the index (manifest %08llx, the index is %08llx)", (path as NSString).lastPathComponent, h.aux, identity), path: path, offset: 52)
            }
        }
        return (log, plain)
    }

    private func openPostings(create: Bool) throws {
        (postingsLog, postingsPlain) = try open(postingsPath, magic: Self.postingsMagic, create: create)
        postingsReader = direct ? try RandomAccessFile(path: postingsPath, direct: true) : postingsPlain
    }

    private func openVectors(create: Bool) throws {
        (vectorsLog, vectorsPlain) = try open(vectorsPath, magic: Self.vectorsMagic, create: create)
    }

    /// The store searches read spilled rows through (made once rows exist).
    func openVectorStore() {
        guard vectorStore == nil, let plain = vectorsPlain else { return }
        let file = direct ? ((try? RandomAccessFile(path: vectorsPath, direct: true)) ?? plain) : plain
        vectorStore = DiskVectorStore(file: file, path: vectorsPath, dimension: dimension, elementType: .float32)
    }

    private var postingsSize: UInt64 { postingsLog.map { UInt64($0.size) } ?? postingsPlain?.size ?? 0 }
    private var vectorsSize: UInt64 { vectorsLog.map { UInt64($0.size) } ?? vectorsPlain?.size ?? 0 }

    /// A relocation record's list must lie inside postings.upd, page-aligned, its pages
    /// holding its records.
    func checkPosting(_ e: PostingEntry, recordBytes: Int) throws {
        if e.count == 0 { return }
        let end = e.offset.addingReportingOverflow(UInt64(e.pages) * 4096)
        guard e.offset >= 4096, e.offset % 4096 == 0, !end.overflow, end.partialValue <= postingsSize,
              UInt64(e.pages) * 4096 >= UInt64(e.count) * UInt64(recordBytes) else {
            throw FathomError(.corruptIndex, "a relocated list of \(e.count) records at byte \(e.offset) (\(e.pages) pages) does not lie inside \(Self.postingsName) (\(postingsSize) bytes)", path: postingsPath, offset: e.offset, remedies: [.verifyAndRebuild])
        }
    }

    /// A spill record's rows must be in vectors.upd.
    func checkSpilled(rows: Int) throws {
        guard rows == 0 || placement.offset(rows - 1) + UInt64(placement.rowBytes) <= vectorsSize else {
            throw FathomError(.corruptIndex, "the log says \(rows) inserted vectors are in \(Self.vectorsName), which holds \(vectorsSize) bytes", path: vectorsPath, remedies: [.verifyAndRebuild])
        }
    }

    /// Cuts what a job wrote past what the log points at (writable open).
    func cut(postingsEnd: UInt64?, spilledRows: Int) throws {
        if let l = postingsLog {
            let end = Int(max(postingsEnd ?? 4096, 4096))
            if l.size > end { try l.truncate(to: end); try l.sync() }
        }
        if let l = vectorsLog {
            let end = spilledRows == 0 ? 4096 : Int(placement.offset(spilledRows - 1)) + placement.rowBytes
            if l.size > end { try l.truncate(to: end); try l.sync() }
        }
        if spilledRows > 0 { openVectorStore() }
    }

    /// Appends `count` records as one page-aligned list; returns its entry (CRC32C of the records).
    func appendPosting(_ p: UnsafeRawPointer?, count: Int, recordBytes: Int) throws -> PostingEntry {
        if count == 0 { return PostingEntry(offset: 0, count: 0, pages: 0, crc: 0) }
        if postingsLog == nil { try openPostings(create: true) }
        let l = postingsLog!
        let bytes = count * recordBytes
        let pages = (bytes + 4095) / 4096
        let at = (l.size + 4095) & ~4095
        let buf = UnsafeMutableRawPointer.allocate(byteCount: pages * 4096, alignment: 4096)
        defer { buf.deallocate() }
        buf.copyMemory(from: p!, byteCount: bytes)
        (buf + bytes).initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096 - bytes)
        try l.write(UnsafeRawPointer(buf), count: pages * 4096, at: at)
        return PostingEntry(offset: UInt64(at), count: UInt32(count), pages: UInt32(pages), crc: crc32c(p!, bytes, 0))
    }

    func syncPostings() throws { try postingsLog?.sync() }
    func syncVectors() throws { try vectorsLog?.sync() }

    /// Writes inserted rows `from ..< to` of `arena` at their places in vectors.upd.
    func writeSpilled(_ arena: VectorArena, from: Int, to: Int) throws {
        guard to > from else { return }
        if vectorsLog == nil { try openVectors(create: true) }
        let l = vectorsLog!
        let start = placement.offset(from), end = placement.offset(to - 1) + UInt64(placement.rowBytes)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Int(end - start), alignment: 64)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: Int(end - start))
        for r in from..<to { (buf + Int(placement.offset(r) - start)).copyMemory(from: arena.row(r), byteCount: placement.rowBytes) }
        try l.write(UnsafeRawPointer(buf), count: Int(end - start), at: Int(start))
    }

    /// Reads a relocated list, checking its CRC32C.
    func readPosting(_ e: PostingEntry, into buf: UnsafeMutableRawPointer, recordBytes: Int, list h: Int) throws {
        guard let f = postingsPlain else {
            throw FathomError(.corruptIndex, "the log relocates list \(h), but \(Self.postingsName) is missing", path: postingsPath, remedies: [.verifyAndRebuild])
        }
        try f.read(into: buf, count: Int(e.count) * recordBytes, at: e.offset)
        if let error = e.checksumError(UnsafeRawPointer(buf), recordBytes: recordBytes, list: h, path: postingsPath) { throw error }
    }

    /// Reads a built list from postings.dat, checking its CRC32C.
    func readBasePosting(_ e: PostingEntry, into buf: UnsafeMutableRawPointer, recordBytes: Int, list h: Int) throws {
        try basePostings.read(into: buf, count: Int(e.count) * recordBytes, at: e.offset)
        if let error = e.checksumError(UnsafeRawPointer(buf), recordBytes: recordBytes, list: h, path: basePostings.path) { throw error }
    }

    /// Reads inserted row `row` from vectors.upd.
    func readSpilled(row: Int, into out: UnsafeMutablePointer<Float>) throws {
        guard let f = vectorsPlain else {
            throw FathomError(.corruptIndex, "inserted vector \(row) should be in \(Self.vectorsName), which is missing", path: vectorsPath, remedies: [.verifyAndRebuild])
        }
        try f.read(into: out, count: placement.rowBytes, at: placement.offset(row))
    }
}

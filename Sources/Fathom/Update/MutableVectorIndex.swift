import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// An index opened for updates (SPFresh-style, docs/updates.md): `insert`, `delete`,
/// `upsert` by external label, made durable by `flush()` (one write and one fsync of the
/// write-ahead log for every update since the last flush: group commit) and then visible
/// to searches.
///
/// How an update reaches searches — on the same seams as the static index, no second
/// search path: an inserted vector is assigned to its nearest heads by the build's rule
/// (head-graph search, then the RNG closure rule `rngSelect` over `candidate_heads` heads,
/// at most `replicas` of them), encoded with the index's codec, and appended to those heads'
/// lists in a ``DeltaPostings`` (RAM) that ``LayeredPostingStore`` serves after the base
/// posting; its full vector goes to the re-rank tier's delta (``LayeredVectorStore``); its
/// label to the ``LabelMap``. A delete sets the id's bit in ``Tombstones``, which the
/// searcher skips like a duplicate. Every flush publishes a new immutable snapshot
/// (a ``VectorIndex`` over the layered stores), swapped in under a lock.
///
/// At open the log is replayed (a torn tail — a commit cut by a crash or power loss — is
/// cut off), so every acknowledged update is back. `checkpoint()` folds everything into a
/// new index version by rebuilding it and publishing it atomically as the build does.
///
/// Thread safety: any number of threads may search (``snapshot()``, ``search(_:k:parameters:)``)
/// while one thread at a time updates (updates and flushes serialize on an internal lock);
/// searches never wait for updates beyond the pointer swap. One process at a time may open a
/// directory for writing (an exclusive `flock` on `DIR.fathom-write.lock`).
public final class MutableVectorIndex: @unchecked Sendable {
    public let path: String
    let writable: Bool
    let io: IOMode
    let serveMemory: UInt64?
    private var lock: FileLock?
    private let writeLock = NSLock()
    /// The writer's state over the current base version (guarded by writeLock; replaced by a checkpoint).
    private var w: WriterState

    // Published state.
    private let snapLock = NSLock()
    private var current: VectorIndex

    /// Lock file of writers of `directory`.
    public static func lockPath(_ directory: String) -> String { directory + ".fathom-write.lock" }

    /// Opens `directory` for updates: takes the writer lock, opens the index, replays its
    /// write-ahead log (cutting a torn tail) and publishes the first snapshot.
    /// - Throws: `.io` if another writer holds the directory (naming its pid); `.invalidArgument`
    ///   for an index these updates do not support yet (attributes; uint8/int8 vectors).
    public static func open(at directory: String, io: IOMode = .auto, serveMemory: UInt64? = nil) throws -> MutableVectorIndex {
        try MutableVectorIndex(directory: directory, writable: true, io: io, serveMemory: serveMemory)
    }

    init(directory: String, writable: Bool, io: IOMode, serveMemory: UInt64?) throws {
        path = directory
        self.writable = writable; self.io = io; self.serveMemory = serveMemory
        if writable {
            _ = try Manifest.load(directory: directory)   // a clear error before creating a lock file
            let (l, holder) = try FileLock.tryLock(Self.lockPath(directory))
            guard let l else {
                throw FathomError(.io, "the index \(directory) is open for writing by another process (pid \(holder.map(String.init) ?? "unknown")); one writer at a time — its lock is \(Self.lockPath(directory))", path: directory)
            }
            lock = l
        }
        w = try WriterState(directory: directory, writable: writable, io: io, serveMemory: serveMemory)
        current = w.makeSnapshot()
    }

    /// Records replayed from the log at open (or after the last checkpoint), and bytes of torn
    /// tail found (and cut, writable).
    public var replayedRecords: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.replayedRecords }
    public var tornBytes: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.tornBytes }

    /// Releases the writer lock (pending, unflushed updates are dropped). Searches of
    /// snapshots taken before keep working.
    public func close() { writeLock.lock(); lock?.release(); lock = nil; writeLock.unlock() }

    // MARK: reading

    /// The current snapshot: an immutable ``VectorIndex`` with every update flushed before
    /// this call. Thread-safe; never waits for a writer.
    public func snapshot() -> VectorIndex { snapLock.lock(); defer { snapLock.unlock() }; return current }

    /// Searches the current snapshot. Results carry labels.
    public func search(_ query: [Float], k: Int, parameters: SearchParameters = SearchParameters()) throws -> [Neighbor] {
        try snapshot().search(query, k: k, parameters: parameters)
    }

    /// Live vectors (flushed inserts included, deleted excluded) in the current snapshot.
    public var count: Int { snapshot().liveCount }
    public var dimension: Int { snapshot().dimension }
    /// The largest label in the index (updates applied so far, flushed or not).
    public var maxLabel: UInt64? { writeLock.lock(); defer { writeLock.unlock() }; return w.maxLabel }
    /// Whether `label` is in the index (as of the updates applied so far, flushed or not).
    public func contains(_ label: UInt64) -> Bool { writeLock.lock(); defer { writeLock.unlock() }; return w.idOf[label] != nil }
    /// Updates applied but not yet flushed.
    public var pendingUpdates: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.wal.pendingRecords }
    /// Size of the write-ahead log known durable, in bytes.
    public var durableLogBytes: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.wal.durableBytes }
    /// Updates in the log (replayed at open and flushed since).
    public var loggedUpdates: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.wal.committedRecords }

    // MARK: updates

    /// Inserts `vector` under `label`. Takes effect for searches at the next ``flush()``,
    /// which also makes it durable.
    /// - Throws: `.dimensionMismatch`, `.nonFiniteValue`, `.invalidArgument` (a label already in
    ///   the index: use ``upsert(label:vector:)`` to replace it; a zero vector under cosine).
    public func insert(label: UInt64, vector: [Float]) throws {
        try vector.withUnsafeBufferPointer { try update(.insert, label: label, vector: $0) }
    }

    /// Inserts `vector` under `label`, replacing the vector the label had, if any.
    public func upsert(label: UInt64, vector: [Float]) throws {
        try vector.withUnsafeBufferPointer { try update(.upsert, label: label, vector: $0) }
    }

    /// Deletes the vector with `label`; returns false (and logs nothing) for a label not in
    /// the index. Takes effect at the next ``flush()``.
    @discardableResult
    public func delete(label: UInt64) throws -> Bool {
        writeLock.lock(); defer { writeLock.unlock() }
        try checkWritable()
        guard w.apply(delete: label) else { return false }
        w.wal.append(.delete, label: label, vector: nil)
        w.unpublished = true
        return true
    }

    /// Inserts (or with `replace`, upserts) `count` vectors stored row-major in `vectors`
    /// under `labels`, then flushes: all of them are checked first (a bad row or a label
    /// already present rejects the whole batch, naming the row), then logged, applied, and
    /// made durable with one fsync.
    public func insert(labels: [UInt64], vectors v: UnsafeBufferPointer<Float>, replace: Bool = false) throws {
        writeLock.lock()
        do {
            defer { writeLock.unlock() }
            try checkWritable()
            let d = w.base.dimension
            guard v.count == labels.count * d else {
                throw FathomError(.dimensionMismatch, "\(v.count) values for \(labels.count) vectors of dimension \(d)")
            }
            var seen = Set<UInt64>()
            for (i, l) in labels.enumerated() {
                do { try w.check(UnsafeBufferPointer(rebasing: v[i * d ..< (i + 1) * d])) }
                catch var e as FathomError { e.message = "row \(i): " + e.message; throw e }
                if !replace, w.idOf[l] != nil { throw FathomError(.invalidArgument, "row \(i): label \(l) is already in the index; upsert replaces it") }
                guard seen.insert(l).inserted else { throw FathomError(.invalidArgument, "row \(i): label \(l) appears twice in the batch") }
            }
            try w.checkRoom(labels.count)
            for (i, l) in labels.enumerated() {
                try w.logAndApply(replace ? .upsert : .insert, label: l, vector: v.baseAddress! + i * d)
            }
            w.unpublished = true
        }
        try flush()
    }

    func update(_ op: WriteAheadLog.Op, label: UInt64, vector: UnsafeBufferPointer<Float>) throws {
        writeLock.lock(); defer { writeLock.unlock() }
        try checkWritable()
        try w.check(vector)
        if op == .insert, w.idOf[label] != nil {
            throw FathomError(.invalidArgument, "label \(label) is already in the index; upsert replaces it")
        }
        try w.checkRoom(1)
        try w.logAndApply(op, label: label, vector: vector.baseAddress!)
        w.unpublished = true
    }

    /// Makes every update since the last flush durable (one write + one fsync of the log) and
    /// visible to searches (a new snapshot). On failure (a full disk, an IO error) nothing of
    /// this group is acknowledged, searches keep the last snapshot, and the next flush
    /// retries the group; what earlier flushes acknowledged is untouched.
    public func flush() throws {
        writeLock.lock(); defer { writeLock.unlock() }
        try checkWritable()
        try w.wal.commit()
        if w.unpublished { publish(w.makeSnapshot()); w.unpublished = false }
    }

    /// Folds every update into a new index version: flushes, writes the live vectors and
    /// their labels (deleted ones dropped) next to the index, rebuilds it with the manifest's
    /// parameters and publishes it atomically as ``IndexBuilder/build()`` does (the new directory has
    /// no log: the log is truncated by the same rename). A crash at any point leaves the old
    /// version with its log, or the new one. Internal ids change; labels do not. Searches
    /// continue on the old snapshot until the new one is published. Updates wait meanwhile.
    ///
    /// A rebuild, not SPFresh's in-place split/merge (docs/updates.md). An index trained with
    /// LeanVec-OOD queries is rebuilt with the default (PCA) projection.
    public func checkpoint(memoryBudget: UInt64 = 2 << 30, progress: ProgressReporter = .silent) throws {
        writeLock.lock(); defer { writeLock.unlock() }
        try checkWritable()
        try w.wal.commit()
        if w.unpublished { publish(w.makeSnapshot()); w.unpublished = false }
        let input = path + ".fathom-checkpoint.fbin", labelsPath = path + ".fathom-checkpoint.labels"
        defer { try? FileManager.default.removeItem(atPath: input); try? FileManager.default.removeItem(atPath: labelsPath) }
        try w.writeLive(vectors: input, labels: labelsPath)
        let m = w.base.manifest
        var o = BuildOptions()
        o.metric = m.metric; o.memoryBudget = memoryBudget; o.headRatio = m.parameters.head_ratio
        // Posting pages are re-planned for the new count (the old size may not hold the
        // inserted vectors' replicas: the plan's slot invariant would refuse).
        o.replicas = m.parameters.replicas
        o.graphDegree = m.parameters.graph_degree; o.candidateHeads = m.parameters.candidate_heads
        o.rngFactor = Float(m.parameters.rng_factor); o.seed = m.parameters.seed
        o.codec = PostingCodec(rawValue: m.codec ?? "none") ?? .none
        o.reduceDims = m.reduced_dimension; o.routerDims = m.router_dimension; o.labels = labelsPath
        try IndexBuilder(input: input, output: path, options: o, progress: progress).build()
        w = try WriterState(directory: path, writable: true, io: io, serveMemory: serveMemory)
        publish(w.makeSnapshot())
    }

    private func publish(_ snap: VectorIndex) {
        snapLock.lock()
        let old = current
        current = snap
        snapLock.unlock()
        // The superseded snapshot (and its pooled searchers) is freed when its last reader
        // lets go of it, here or after a search still running on it.
        _ = old
    }

    private func checkWritable() throws {
        guard writable, lock != nil else {
            throw FathomError(.invalidArgument, "the index \(path) is not open for writing (opened read-only, or closed)", path: path)
        }
    }
}

/// What a ``MutableVectorIndex`` writer keeps over one base version: the float heads and
/// graph it assigns with, the delta postings, vectors and labels, the tombstones, the label
/// → id map and the log. Not thread-safe (its owner's writer lock guards it).
final class WriterState {
    let base: VectorIndex
    let wal: WriteAheadLog
    let heads: Matrix
    let graph: HeadGraph
    /// The build's head-search entry points (the same pivots, so inserts and the build
    /// assign alike).
    let pivots: SearchPivots
    /// The build's assignment scratch (head search, candidates, encode scratch).
    let assigner: AssignWorker
    let assigned: UnsafeMutablePointer<UInt32>
    let record: UnsafeMutableRawPointer
    let work: UnsafeMutablePointer<Float>
    let delta: DeltaPostings
    let vectors: RowArena
    let labelRows: RowArena
    var tombstones: Tombstones
    var idOf: [UInt64: UInt32] = [:]
    var maxLabel: UInt64? = nil
    var unpublished = false
    var replayedRecords = 0
    var tornBytes = 0

    init(directory: String, writable: Bool, io: IOMode, serveMemory: UInt64?) throws {
        let b = try VectorIndex.open(at: directory, io: io, serveMemory: serveMemory)
        base = b
        guard b.attributes == nil else {
            throw FathomError(.invalidArgument, "the index has attributes: updates of attributed indexes are not supported yet (rebuild with the new vectors)", path: directory)
        }
        guard b.elementType == .float32 else {
            throw FathomError(.invalidArgument, "the index stores \(b.elementType.rawValue) vectors: updates support float32 indexes only so far", path: directory)
        }
        // The writer assigns with the float heads, as the build does.
        if let v = b.graph.vectors {
            graph = b.graph; heads = v
        } else {
            let layout = IndexLayout(directory: directory)
            let (h, _) = try layout.readHeads()
            heads = h; graph = try layout.readGraph(heads: h)
        }
        let K = max(1, min(b.manifest.parameters.candidate_heads, graph.count))
        pivots = SearchPivots(heads: heads)
        assigner = AssignWorker(heads: graph.count, beam: K + 32, degree: graph.degree, pivots: pivots.count,
                                encodeScratch: b.codec.encodeScratchFloats)
        assigned = .allocate(capacity: WriteAheadLog.maxHeads)
        record = .allocate(byteCount: b.postingStore.recordBytes, alignment: 16)
        work = .allocate(capacity: b.dimension)
        delta = DeltaPostings(heads: b.postingStore.listCount, recordBytes: b.postingStore.recordBytes)
        vectors = RowArena(rowBytes: b.dimension * 4)
        labelRows = RowArena(rowBytes: 8)
        tombstones = Tombstones(capacity: b.count + 4096)
        idOf.reserveCapacity(b.count)
        for i in 0..<b.count { idOf[b.labels.label(of: UInt32(i))] = UInt32(i) }
        maxLabel = b.labels.maxLabel
        wal = try WriteAheadLog(directory: directory, dimension: b.dimension, identity: Self.identity(b.manifest), writable: writable)
        var replayError: FathomError? = nil
        let replayed = try wal.replay(writable: writable) { op, label, v, heads, offset in
            if replayError != nil { return }
            do {
                switch op {
                case .insert: try self.apply(insert: label, vector: v!, replace: false, heads: heads)
                case .upsert: try self.apply(insert: label, vector: v!, replace: true, heads: heads)
                case .delete: _ = self.apply(delete: label)
                }
            } catch var e as FathomError {
                e.message = "replaying the record at byte \(offset): " + e.message
                e.path = directory + "/" + WriteAheadLog.fileName; e.offset = UInt64(offset)
                replayError = e
            }
        }
        if let replayError { throw replayError }
        replayedRecords = replayed.records
        tornBytes = replayed.tornBytes
    }

    deinit {
        assigned.deallocate(); record.deallocate(); work.deallocate()
    }

    static func identity(_ m: Manifest) -> UInt64 { UInt64(m.manifest_crc32c ?? "0", radix: 16) ?? 0 }

    func check(_ v: UnsafeBufferPointer<Float>) throws {
        let d = base.dimension
        guard v.count == d else {
            throw FathomError(.dimensionMismatch, "the vector has dimension \(v.count) but the index has \(d)")
        }
        for j in 0..<d where !v[j].isFinite {
            throw FathomError(.nonFiniteValue, "component \(j) is \(v[j]); vectors must be finite")
        }
        if base.metric == .cosine && !v.contains(where: { $0 != 0 }) {
            throw FathomError(.invalidArgument, "the vector is all zeros: it has no direction under the cosine metric")
        }
    }

    func checkRoom(_ more: Int) throws {
        guard base.count + vectors.count + more < Int(UInt32.max) else {
            throw FathomError(.invalidArgument, "the index would exceed 2^32 − 2 rows; checkpoint it first")
        }
    }

    /// The postings a new vector joins: the build's rule (assign stage of IndexBuilder) —
    /// the `candidate_heads` nearest heads by graph search, kept by the RNG closure rule, at
    /// most `replicas`. Leaves the (normalized) vector in `work` and the heads in `assigned`.
    func assign(_ v: UnsafePointer<Float>) -> UnsafeBufferPointer<UInt32> {
        let d = base.dimension
        work.update(from: v, count: d)
        if base.metric == .cosine { _ = Distance.normalize(work, d) }
        let p = base.manifest.parameters
        let K = max(1, min(p.candidate_heads, graph.count))
        let a = assigner
        let found = graph.search(FloatHeads(query: work, heads: heads), k: K, listSize: K + 32, scratch: a.scratch, outIds: a.candIds, outDist: a.candDist,
                                 entries: pivots.nearest(work, scratch: a.pivotDist, out: a.entries))
        let m = rngSelect(candidates: a.candIds, distances: a.candDist, count: found, replicas: min(WriteAheadLog.maxHeads, max(1, p.replicas)),
                          rngFactor: Float(p.rng_factor), heads: heads, out: a.chosen)
        for c in 0..<m { assigned[c] = a.candIds[a.chosen[c]] }
        return UnsafeBufferPointer(start: assigned, count: m)
    }

    /// Logs and applies an insert or upsert (the caller checked it).
    func logAndApply(_ op: WriteAheadLog.Op, label: UInt64, vector v: UnsafePointer<Float>) throws {
        let h = assign(v)
        wal.append(op, label: label, vector: v, heads: h)
        try apply(insert: label, vector: v, replace: op == .upsert, heads: h)
    }

    /// Applies an insert or upsert assigned to `postings` (shared by updates and replay).
    func apply(insert label: UInt64, vector v: UnsafePointer<Float>, replace: Bool, heads postings: UnsafeBufferPointer<UInt32>) throws {
        for h in postings where Int(h) >= graph.count {
            throw FathomError(.corruptIndex, "an insert of label \(label) names posting \(h), but the index has \(graph.count)")
        }
        if let old = idOf[label] {
            guard replace else { throw FathomError(.invalidArgument, "label \(label) is already in the index; upsert replaces it") }
            markDeleted(old)
        }
        let d = base.dimension
        let id = UInt32(base.count + vectors.count)
        if postings.baseAddress != UnsafePointer(assigned) {   // replay: `work` does not hold it yet
            work.update(from: v, count: d)
            if base.metric == .cosine { _ = Distance.normalize(work, d) }
        }
        record.storeBytes(of: id.littleEndian, as: UInt32.self)
        base.codec.encode(work, scratch: assigner.encodeScratch, into: record + 4)   // as the build's assign encodes
        for h in postings { delta.append(head: Int(h), record: record) }
        vectors.append(work)
        var l = label.littleEndian
        labelRows.append(&l)
        idOf[label] = id
        if maxLabel == nil || label > maxLabel! { maxLabel = label }
    }

    /// Applies a delete; false for a label not in the index.
    func apply(delete label: UInt64) -> Bool {
        guard let id = idOf.removeValue(forKey: label) else { return false }
        markDeleted(id)
        return true
    }

    func markDeleted(_ id: UInt32) {
        if tombstones.wordCount * 64 <= Int(id) { tombstones = tombstones.copy(capacity: Int(id) * 2 + 4096) }
        tombstones.insert(id)
    }

    /// A snapshot of the state: the base's seams composed with the delta.
    func makeSnapshot() -> VectorIndex {
        VectorIndex(
            deriving: base,
            postingStore: LayeredPostingStore(base: base.postingStore, delta: delta.snapshot()),
            vectorStore: LayeredVectorStore(base: base.vectorStore, baseCount: base.count, delta: vectors, deltaCount: vectors.count),
            count: base.count + vectors.count,
            labels: LabelMap(base: base.labels.base, baseCount: base.count, delta: labelRows, deltaCount: labelRows.count, maxLabel: maxLabel),
            tombstones: tombstones.copy(capacity: tombstones.wordCount * 64))
    }

    /// Writes the live vectors (id order) as .fbin and their labels as text (for a checkpoint).
    func writeLive(vectors path: String, labels labelsPath: String) throws {
        let d = base.dimension
        let out = try VectorFileWriter(path: path, format: .fbin, elementType: .float32, dimension: d)
        var text = ""
        let layout = IndexLayout(directory: base.path)
        let file = try RandomAccessFile(path: layout.vectorsPath)
        let placement = IndexLayout.VectorPlacement(rowBytes: d * 4)
        let row = UnsafeMutableRawPointer.allocate(byteCount: d * 4, alignment: 64)
        defer { row.deallocate() }
        let total = base.count + vectors.count
        let labels = LabelMap(base: base.labels.base, baseCount: base.count, delta: labelRows, deltaCount: labelRows.count)
        for id in 0..<total where !tombstones.contains(UInt32(id)) {
            if id < base.count {
                try file.read(into: row, count: d * 4, at: placement.offset(id))
                try out.append(UnsafeRawPointer(row), count: 1)
            } else {
                try out.append(UnsafeRawPointer(vectors.row(id - base.count)), count: 1)
            }
            text += String(labels.label(of: UInt32(id))); text += "\n"
        }
        try out.close()
        let w = try SequentialFileWriter(path: labelsPath, bufferBytes: 1 << 20)
        try w.write([UInt8](text.utf8)); try w.finish()
    }
}

extension VectorIndex {
    /// Opens the index at `path` as its updates left it: the built version plus every update
    /// its write-ahead log holds (read-only: the log is replayed, never cut, and no lock is
    /// taken). An index without a log opens as ``open(at:io:engine:serveMemory:warn:)`` does.
    public static func openCurrent(at path: String, io: IOMode = .auto, serveMemory: UInt64? = nil) throws -> VectorIndex {
        guard FileManager.default.fileExists(atPath: path + "/" + WriteAheadLog.fileName) else {
            return try VectorIndex.open(at: path, io: io, serveMemory: serveMemory)
        }
        return try MutableVectorIndex(directory: path, writable: false, io: io, serveMemory: serveMemory).snapshot()
    }
}

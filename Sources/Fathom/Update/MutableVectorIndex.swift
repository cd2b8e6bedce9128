import FathomCodecs
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
    let policy: UpdatePolicy
    private var lock: FileLock?
    // The maintenance thread (woken after each flush, one unit at a time under the writer
    // lock); it holds the index weakly, so dropping the index ends it.
    private var worker: MaintenanceWorker?
    private var failure: FathomError?
    private let writeLock = NSLock()
    /// The writer's state over the current base version (guarded by writeLock; replaced by a checkpoint).
    private var w: WriterState

    // Published state.
    private let snapLock = NSLock()
    private var current: VectorIndex

    /// Lock file of writers of `directory`.
    public static func lockPath(_ directory: String) -> String { directory + ".fathom-write.lock" }

    /// Opens `directory` for updates: takes the writer lock, opens the index, replays its
    /// write-ahead log (cutting a torn tail) and publishes the first snapshot. Maintenance
    /// (split, merge, reassign, reclaim; the delta tier within `policy.deltaMemory`) runs when
    /// ``maintain()`` is called, and with `policy.background` also on a thread of its own
    /// after each flush.
    /// - Throws: `.io` if another writer holds the directory (naming its pid); `.invalidArgument`
    ///   for an index these updates do not support yet (uint8/int8 vectors).
    public static func open(at directory: String, io: IOMode = .auto, serveMemory: UInt64? = nil,
                            policy: UpdatePolicy = UpdatePolicy()) throws -> MutableVectorIndex {
        let w = try MutableVectorIndex(directory: directory, writable: true, io: io, serveMemory: serveMemory, policy: policy)
        if policy.background { w.startMaintenance() }
        return w
    }

    init(directory: String, writable: Bool, io: IOMode, serveMemory: UInt64?, policy: UpdatePolicy = UpdatePolicy()) throws {
        path = directory
        self.writable = writable; self.io = io; self.serveMemory = serveMemory; self.policy = policy
        if writable {
            let m = try Manifest.load(directory: directory)   // a clear error before creating a lock file
            if let sh = m.shard {
                throw FathomError(.invalidArgument, "the index is shard \(sh.index)/\(sh.count) of a model: shards are read-only (rebuild the shards from the updated input)", path: directory)
            }
            let (l, holder) = try FileLock.tryLock(Self.lockPath(directory))
            guard let l else {
                throw FathomError(.io, "the index \(directory) is open for writing by another process (pid \(holder.map(String.init) ?? "unknown")); one writer at a time — its lock is \(Self.lockPath(directory))", path: directory)
            }
            lock = l
        }
        w = try WriterState(directory: directory, writable: writable, io: io, serveMemory: serveMemory, policy: policy)
        current = w.makeSnapshot()
    }

    /// Records replayed from the log at open (or after the last checkpoint), and bytes of torn
    /// tail found (and cut, writable).
    public var replayedRecords: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.replayedRecords }
    public var tornBytes: Int { writeLock.lock(); defer { writeLock.unlock() }; return w.tornBytes }

    /// Stops the maintenance thread (after the unit it is running) and releases the writer
    /// lock (pending, unflushed updates are dropped). Searches of snapshots taken before keep
    /// working.
    public func close() {
        stopMaintenance()
        writeLock.lock(); lock?.release(); lock = nil; writeLock.unlock()
    }

    deinit {
        // Possibly on the maintenance thread itself (its last strong reference): stop it
        // without waiting for it.
        worker?.stop()
    }

    // MARK: maintenance

    /// The writer's state, for tests (not thread-safe: only while nothing else runs).
    var writerForTesting: WriterState? { writeLock.lock(); defer { writeLock.unlock() }; return w }

    /// What maintenance did since open, and the delta tier's RAM and bound. Thread-safe.
    public var maintenanceStats: MaintenanceStats { writeLock.lock(); defer { writeLock.unlock() }; return w.currentStats }

    /// The error that stopped background maintenance, if any (an IO error, a full disk):
    /// updates keep working and stay durable; maintenance resumes at the next open or
    /// ``maintain()``. Thread-safe.
    public var maintenanceError: FathomError? { writeLock.lock(); defer { writeLock.unlock() }; return failure }

    /// Runs maintenance until none is due (splits, merges, reassignment, the delta tier
    /// under its bound, a due sweep finished), each unit durable and published as it
    /// completes. Safe beside searches and the background thread. Returns the stats after.
    @discardableResult
    public func maintain() throws -> MaintenanceStats {
        while true {
            writeLock.lock()
            do {
                try checkWritable()
                let did = try runUnit()
                let stats = w.currentStats
                writeLock.unlock()
                if !did { return stats }
            } catch {
                writeLock.unlock()
                throw error
            }
        }
    }

    /// One unit under the writer lock (held by the caller): pending updates are flushed
    /// first, so the unit's records follow them in the log; then the unit is committed and
    /// published.
    private func runUnit() throws -> Bool {
        guard w.needsMaintenance else { return false }
        try w.wal.commit()
        guard try w.maintainOnce() else { return false }
        try w.wal.commit()
        publish(w.makeSnapshot())
        w.unpublished = false
        return true
    }

    private func startMaintenance() {
        let w = MaintenanceWorker()
        worker = w
        let t = Thread { [weak self] in
            while w.waitForWork() {
                guard let me = self else { break }
                me.runPendingUnits(w)
            }
            w.finished.signal()
        }
        t.name = "fathom-maintenance"
        t.qualityOfService = .utility
        w.thread = t
        t.start()
    }

    /// Runs units until none is due, the worker is stopped or a unit fails (the failure is
    /// kept for ``maintenanceError``).
    private func runPendingUnits(_ w: MaintenanceWorker) {
        while !w.isStopping {
            writeLock.lock()
            if lock == nil || failure != nil { writeLock.unlock(); return }
            do {
                let did = try runUnit()
                writeLock.unlock()
                if !did { return }
            } catch let e as FathomError {
                failure = e
                writeLock.unlock()
                return
            } catch {
                failure = FathomError(.io, "background maintenance failed", path: path, cause: error)
                writeLock.unlock()
                return
            }
        }
    }

    private func signalMaintenance() { worker?.signal() }

    /// Stops the thread after its current unit; waits for it unless called on it.
    private func stopMaintenance() {
        guard let w = worker else { return }
        worker = nil
        w.stop()
        if Thread.current !== w.thread { w.finished.wait() }
    }

    // MARK: reading

    /// The current snapshot: an immutable ``VectorIndex`` with every update flushed before
    /// this call. Thread-safe; never waits for a writer.
    public func snapshot() -> VectorIndex { snapLock.lock(); defer { snapLock.unlock() }; return current }

    /// Searches the current snapshot. Results carry labels.
    public func search(_ query: [Float], k: Int, parameters: SearchParameters = SearchParameters()) throws -> [Neighbor] {
        try snapshot().search(query, k: k, parameters: parameters)
    }

    /// The index's attribute columns (with the dictionaries of its category and tags columns),
    /// nil if it has none: what ``insert(label:vector:attributes:)`` expects. Thread-safe.
    public var attributeSchema: AttributeSchema? { writeLock.lock(); defer { writeLock.unlock() }; return w.attributeCodec?.schema }
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

    /// Inserts `vector` under `label`, with its attribute row when the index has attributes
    /// (column name → value, every column of the index; filters see it at once, docs/updates.md
    /// "Attributes"). Takes effect for searches at the next ``flush()``, which also makes it
    /// durable. Thread-safe (serialized with the other updates).
    /// - Throws: `.dimensionMismatch`, `.nonFiniteValue`, `.invalidArgument` (a label already in
    ///   the index: use ``upsert(label:vector:attributes:)`` to replace it; a zero vector under
    ///   cosine; attributes missing for an index that has them, given for one that has none, or
    ///   not fitting its columns — the error names the column and value). Nothing is applied
    ///   on error.
    public func insert(label: UInt64, vector: [Float], attributes: [String: AttributeValue]? = nil) throws {
        try vector.withUnsafeBufferPointer { try update(.insert, label: label, vector: $0, attributes: attributes) }
    }

    /// Inserts `vector` (and its attribute row) under `label`, replacing what the label had,
    /// if any. Errors and thread safety as ``insert(label:vector:attributes:)``.
    public func upsert(label: UInt64, vector: [Float], attributes: [String: AttributeValue]? = nil) throws {
        try vector.withUnsafeBufferPointer { try update(.upsert, label: label, vector: $0, attributes: attributes) }
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
    /// under `labels`, with `attributes[i]` the attribute row of vector i when the index has
    /// attributes, then flushes: all of them are checked first (a bad row, a bad attribute row
    /// or a label already present rejects the whole batch, naming the row — "row 3: attribute
    /// column …" — and the column), then logged, applied, and made durable with one fsync.
    /// Thread-safe (serialized with the other updates).
    public func insert(labels: [UInt64], vectors v: UnsafeBufferPointer<Float>, replace: Bool = false,
                       attributes: [[String: AttributeValue]]? = nil) throws {
        writeLock.lock()
        do {
            defer { writeLock.unlock() }
            try checkWritable()
            let d = w.base.dimension
            guard v.count == labels.count * d else {
                throw FathomError(.dimensionMismatch, "\(v.count) values for \(labels.count) vectors of dimension \(d)")
            }
            if let attributes, attributes.count != labels.count {
                throw FathomError(.invalidArgument, "\(attributes.count) attribute rows for \(labels.count) vectors (one row per vector)")
            }
            var seen = Set<UInt64>()
            var rows = [[UInt8]?]()
            rows.reserveCapacity(labels.count)
            for (i, l) in labels.enumerated() {
                do {
                    try w.check(UnsafeBufferPointer(rebasing: v[i * d ..< (i + 1) * d]))
                    rows.append(try w.encodeAttributes(attributes?[i]))
                } catch var e as FathomError { e.message = "row \(i): " + e.message; throw e }
                if !replace, w.idOf[l] != nil { throw FathomError(.invalidArgument, "row \(i): label \(l) is already in the index; upsert replaces it") }
                guard seen.insert(l).inserted else { throw FathomError(.invalidArgument, "row \(i): label \(l) appears twice in the batch") }
            }
            try w.checkRoom(labels.count)
            for (i, l) in labels.enumerated() {
                try w.logAndApply(replace ? .upsert : .insert, label: l, vector: v.baseAddress! + i * d, attributes: rows[i])
            }
            w.unpublished = true
        }
        try flush()
    }

    func update(_ op: WriteAheadLog.Op, label: UInt64, vector: UnsafeBufferPointer<Float>, attributes: [String: AttributeValue]?) throws {
        writeLock.lock(); defer { writeLock.unlock() }
        try checkWritable()
        try w.check(vector)
        let row = try w.encodeAttributes(attributes)
        if op == .insert, w.idOf[label] != nil {
            throw FathomError(.invalidArgument, "label \(label) is already in the index; upsert replaces it")
        }
        try w.checkRoom(1)
        try w.logAndApply(op, label: label, vector: vector.baseAddress!, attributes: row)
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
        if w.needsMaintenance { signalMaintenance() }
    }

    /// Folds every update into a new index version: flushes, writes the live vectors, their
    /// labels and their attribute rows (deleted ones dropped) next to the index, rebuilds it
    /// (attributes with the index's column types; new codes, dictionaries and summaries) with the manifest's
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
        let attributesPath = path + ".fathom-checkpoint.attributes.jsonl"
        defer {
            for p in [input, labelsPath, attributesPath] { try? FileManager.default.removeItem(atPath: p) }
        }
        let schema = w.base.attributes?.table.schema
        try w.writeLive(vectors: input, labels: labelsPath, attributes: schema == nil ? nil : attributesPath)
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
        if let schema { o.attributes = attributesPath; o.attributeSchema = schema.withoutDictionaries }
        try IndexBuilder(input: input, output: path, options: o, progress: progress).build()
        w = try WriterState(directory: path, writable: true, io: io, serveMemory: serveMemory, policy: policy)
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
/// graph it assigns with (grown by splits, with retired heads), the delta postings, the
/// relocated lists (postings.upd), the inserted vectors (RAM, then vectors.upd) and labels,
/// the tombstones, the label → id map and the log. Not thread-safe (its owner's writer lock
/// guards it). Maintenance (split, merge, reassign, relocation, spill) is in
/// `Maintenance.swift`.
final class WriterState {
    let base: VectorIndex
    let directory: String
    let wal: WriteAheadLog
    let policy: UpdatePolicy
    /// Heads of the built version, and heads now (splits add heads).
    let baseHeads: Int
    var headCount: Int
    /// The head graph with spare capacity (rows at or above `headCount` are unlinked) and
    /// its float heads: the writer assigns with them, as the build does.
    var graph: HeadGraph
    var heads: Matrix { graph.vectors! }
    /// The build's head-search entry points (the same pivots, so inserts and the build
    /// assign alike; pivots stay base heads).
    let pivots: SearchPivots
    /// The build's assignment scratch (head search, candidates, encode scratch).
    var assigner: AssignWorker
    var linkWork: LinkWork
    /// Heads merged away: kept in the graph as waypoints, never assigned or routed to.
    var retired: Tombstones
    /// The router of the last snapshot (without the retired filter) and the heads moved since.
    var router: any HeadRouter
    var movedHeads: [Int] = []
    var routerDirty = false
    let assigned: UnsafeMutablePointer<UInt32>
    let record: UnsafeMutableRawPointer
    let work: UnsafeMutablePointer<Float>
    let delta: DeltaPostings
    /// Lists rewritten into postings.upd (`moved[h]`: h's stored list is `relocated[h]`).
    var relocated: [PostingEntry]
    var moved: [Bool]
    let files: UpdateFiles
    let vectors: VectorArena
    /// Inserted rows written to vectors.upd.
    var spilledRows = 0
    let labelRows: RowArena
    var tombstones: Tombstones
    var idOf: [UInt64: UInt32] = [:]
    var maxLabel: UInt64? = nil
    var unpublished = false
    var replayedRecords = 0
    var tornBytes = 0
    /// Maintenance bookkeeping (Maintenance.swift).
    var oversized = Set<Int>()
    var stats = MaintenanceStats()
    var sweepCursor: Int? = nil
    var deletedAtLastSweep = 0
    /// A delta tier over its bound is brought under half of it before maintenance stops.
    var reducing = false
    /// A job's records (one list at a time).
    var jobRecords = [UInt8]()
    /// ``localAssign(_:near:)``'s candidates.
    var localCandidates = [(Float, UInt32)]()
    var localSeen = Set<UInt32>()
    /// Splits since the graph's reachability was last repaired.
    var splitsSinceRepair = 0
    /// Attributes (nil / empty when the index has none): the row form of the built table, the
    /// rows of inserted ids (id `base.count + i` is row i), and one summary per head, widened
    /// by every record a list receives (an insert, a split's copy, an attach), so the summaries
    /// never skip a list holding a matching row.
    let attributeCodec: AttributeRowCodec?
    let attributeRows: AttributeRowStore?
    var summaries: [AttributeSummary]
    /// The attribute store of the last snapshot (nil once rows or summaries changed) and the
    /// built-plus-inserted table with the number of inserted rows it holds.
    var attributeSnapshot: AttributeStore?
    var attributeTable: (table: AttributeTable, rows: Int)?
    /// Posting size thresholds: a list over `splitAbove` records splits, a list whose live
    /// records fall under `mergeBelow` merges.
    let splitAbove: Int
    let mergeBelow: Int

    init(directory: String, writable: Bool, io: IOMode, serveMemory: UInt64?, policy: UpdatePolicy = UpdatePolicy()) throws {
        let b = try VectorIndex.open(at: directory, io: io, serveMemory: serveMemory)
        base = b
        self.directory = directory
        self.policy = policy
        if let a = b.attributes {
            attributeCodec = AttributeRowCodec(schema: a.table.schema)
            attributeRows = AttributeRowStore(schema: a.table.schema)
            summaries = a.summaries
            attributeSnapshot = a
            attributeTable = (a.table, 0)
        } else {
            attributeCodec = nil; attributeRows = nil; summaries = []; attributeSnapshot = nil; attributeTable = nil
        }
        guard b.elementType == .float32 else {
            throw FathomError(.invalidArgument, "the index stores \(b.elementType.rawValue) vectors: updates support float32 indexes only so far", path: directory)
        }
        // The writer assigns with the float heads, as the build does.
        let built: HeadGraph
        if b.graph.vectors != nil {
            built = b.graph
        } else {
            let layout = IndexLayout(directory: directory)
            let (h, _) = try layout.readHeads()
            built = try layout.readGraph(heads: h)
        }
        baseHeads = built.count
        headCount = built.count
        pivots = SearchPivots(heads: built.vectors!)
        let capacity = built.count + max(64, built.count / 8)
        graph = built.withCapacity(capacity)
        router = b.router
        retired = Tombstones(capacity: capacity)
        let K = max(1, min(b.manifest.parameters.candidate_heads, built.count))
        assigner = AssignWorker(heads: capacity, beam: K + 32, degree: graph.degree, pivots: pivots.count,
                                encodeScratch: b.codec.encodeScratchFloats)
        linkWork = LinkWork(graphSize: capacity, buildList: 64, degree: graph.degree)
        assigned = .allocate(capacity: WriteAheadLog.maxHeads)
        record = .allocate(byteCount: b.postingStore.recordBytes, alignment: 16)
        work = .allocate(capacity: b.dimension)
        delta = DeltaPostings(heads: built.count, recordBytes: b.postingStore.recordBytes)
        relocated = [PostingEntry](repeating: PostingEntry(offset: 0, count: 0, pages: 0, crc: 0), count: built.count)
        moved = [Bool](repeating: false, count: built.count)
        vectors = VectorArena(rowBytes: b.dimension * 4)
        labelRows = RowArena(rowBytes: 8)
        tombstones = Tombstones(capacity: b.count + 4096)
        let cap = max(1, b.manifest.parameters.posting_capacity)
        splitAbove = policy.splitAbove ?? Self.splitThreshold(table: b.table, capacity: cap)
        mergeBelow = policy.mergeBelow ?? Self.mergeThreshold(table: b.table, capacity: cap)
        idOf.reserveCapacity(b.count)
        for i in 0..<b.count { idOf[b.labels.label(of: UInt32(i))] = UInt32(i) }
        maxLabel = b.labels.maxLabel
        let identity = Self.identity(b.manifest)
        wal = try WriteAheadLog(directory: directory, dimension: b.dimension, recordBytes: b.postingStore.recordBytes, identity: identity, writable: writable)
        files = try UpdateFiles(directory: directory, identity: identity, dimension: b.dimension, writable: writable, direct: b.ioMode == .aio)
        var replayError: FathomError? = nil
        let replayed = try wal.replay(writable: writable) { rec, offset in
            if replayError != nil { return }
            do {
                try self.replay(rec)
            } catch var e as FathomError {
                e.message = "replaying the record at byte \(offset): " + e.message
                e.path = directory + "/" + WriteAheadLog.fileName; e.offset = UInt64(offset)
                replayError = e
            } catch {
                replayError = FathomError(.io, "replaying the record at byte \(offset)", path: directory + "/" + WriteAheadLog.fileName, offset: UInt64(offset), cause: error)
            }
        }
        if let replayError { throw replayError }
        replayedRecords = replayed.records
        tornBytes = replayed.tornBytes
        // What a job wrote past its last logged record (a crash before its commit) is cut.
        if writable { try files.cut(postingsEnd: relocated.indices.filter { moved[$0] }.map { relocated[$0].offset + UInt64(relocated[$0].pages) * 4096 }.max(), spilledRows: spilledRows) }
    }

    deinit {
        assigned.deallocate(); record.deallocate(); work.deallocate()
    }

    static func identity(_ m: Manifest) -> UInt64 { UInt64(m.manifest_crc32c ?? "0", radix: 16) ?? 0 }

    /// The split threshold chosen from the built index: a list longer than every list the
    /// build made (and than twice the mean), at most the posting capacity, has outgrown its
    /// head.
    static func splitThreshold(table: [PostingEntry], capacity: Int) -> Int {
        let counts = table.map { Int($0.count) }
        guard let longest = counts.max(), longest > 0 else { return capacity }
        let mean = Double(counts.reduce(0, +)) / Double(max(counts.filter { $0 > 0 }.count, 1))
        return max(2, min(capacity, max(longest, Int((2 * mean).rounded(.up)))))
    }

    /// The merge threshold chosen from the built index: half the 1st percentile of its
    /// non-empty posting lengths, at most a sixteenth of the capacity, at least 2 — a list
    /// far smaller than nearly every list the build made costs a probe for little.
    static func mergeThreshold(table: [PostingEntry], capacity: Int) -> Int {
        var counts = table.map { Int($0.count) }.filter { $0 > 0 }
        guard !counts.isEmpty else { return 2 }
        counts.sort()
        return max(2, min(capacity / 16, counts[counts.count / 100] / 2))
    }

    /// Applies one replayed record (inserts, deletes, and what maintenance decided).
    func replay(_ rec: WriteAheadLog.Record) throws {
        switch rec {
        case .insert(let label, let v, let heads, let upsert, let attributes):
            try apply(insert: label, vector: v, replace: upsert, heads: heads, attributes: attributes)
        case .delete(let label):
            _ = apply(delete: label)
        case .split(let h, let g, let hv, let gv):
            guard Int(h) < headCount, Int(g) == headCount else {
                throw FathomError(.corruptIndex, "a split of head \(h) into new head \(g), but the index has \(headCount) heads")
            }
            applySplit(head: Int(h), headVector: hv, newVector: gv)
        case .retire(let h):
            guard Int(h) < headCount else { throw FathomError(.corruptIndex, "retires head \(h), but the index has \(headCount) heads") }
            retired.insert(h)
        case .relocate(let h, let e):
            guard Int(h) < headCount else { throw FathomError(.corruptIndex, "relocates head \(h), but the index has \(headCount) heads") }
            try files.checkPosting(e, recordBytes: base.postingStore.recordBytes)
            applyRelocate(head: Int(h), entry: e)
        case .attach(let h, let rec):
            let id = UInt32(littleEndian: rec.loadUnaligned(as: UInt32.self))
            guard Int(h) < headCount, Int(id) < idCount else {
                throw FathomError(.corruptIndex, "attaches id \(id) to head \(h), but the index has \(idCount) ids and \(headCount) heads")
            }
            applyAttach(head: Int(h), record: rec)
        case .repair(let heads):
            guard Int(heads) == headCount else { throw FathomError(.corruptIndex, "repairs the graph over \(heads) heads, but the index has \(headCount)") }
            applyRepair()
        case .spill(let rows):
            guard Int(rows) <= vectors.count else {
                throw FathomError(.corruptIndex, "spills \(rows) inserted vectors, but \(vectors.count) were inserted")
            }
            try files.checkSpilled(rows: Int(rows))
            applySpill(rows: Int(rows))
        }
    }

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

    /// Records in head h's stored list (base or relocated), without its delta.
    @inline(__always) func storedCount(_ h: Int) -> Int {
        moved[h] ? Int(relocated[h].count) : (h < baseHeads ? Int(base.table[h].count) : 0)
    }
    /// Records in head h's list (stored + delta; deleted ones included).
    @inline(__always) func count(_ h: Int) -> Int { storedCount(h) + Int(delta.counts[h]) }

    /// The postings a new vector joins: the build's rule (assign stage of IndexBuilder) —
    /// the `candidate_heads` nearest live heads by graph search, kept by the RNG closure
    /// rule, at most `replicas`. Leaves the (normalized) vector in `work` and the heads in
    /// `assigned`.
    func assign(_ v: UnsafePointer<Float>) -> UnsafeBufferPointer<UInt32> {
        let d = base.dimension
        work.update(from: v, count: d)
        if base.metric == .cosine { _ = Distance.normalize(work, d) }
        let p = base.manifest.parameters
        let K = max(1, min(p.candidate_heads, headCount))
        let a = assigner
        var found = graph.search(FloatHeads(query: work, heads: heads), k: K, listSize: K + 32, scratch: a.scratch, outIds: a.candIds, outDist: a.candDist,
                                 entries: pivots.nearest(work, scratch: a.pivotDist, out: a.entries))
        if retired.deleted > 0 {
            var kept = 0
            for i in 0..<found where !retired.contains(a.candIds[i]) {
                a.candIds[kept] = a.candIds[i]; a.candDist[kept] = a.candDist[i]; kept += 1
            }
            found = kept
        }
        let m = rngSelect(candidates: a.candIds, distances: a.candDist, count: found, replicas: min(WriteAheadLog.maxHeads, max(1, p.replicas)),
                          rngFactor: Float(p.rng_factor), heads: heads, out: a.chosen)
        for c in 0..<m { assigned[c] = a.candIds[a.chosen[c]] }
        return UnsafeBufferPointer(start: assigned, count: m)
    }

    /// The attribute row of an update in the log's form: nil for an index without attributes.
    /// - Throws: `.invalidArgument` for a row missing (the index has attributes), given (it has
    ///   none), or not fitting the index's columns (naming the column and value).
    func encodeAttributes(_ values: [String: AttributeValue]?) throws -> [UInt8]? {
        guard let codec = attributeCodec else {
            guard values == nil else {
                throw FathomError(.invalidArgument, "attributes were given but the index has none to filter on (rebuild it with attributes)", path: directory)
            }
            return nil
        }
        guard let values else {
            throw FathomError(.invalidArgument, "attributes missing: the index has attribute columns (\(codec.schema.names.joined(separator: ", "))) and every inserted vector needs its row of them", path: directory)
        }
        return try codec.encode(values)
    }

    /// The attribute row of id `id` in the log's form (nil without attributes): what a vector
    /// maintenance moves to a new id carries along.
    func attributeRow(of id: UInt32) -> [UInt8]? {
        guard let codec = attributeCodec, let rows = attributeRows, let a = base.attributes else { return nil }
        return Int(id) < base.count ? codec.encode(row: Int(id), of: a.table) : rows.encode(row: Int(id) - base.count)
    }

    /// Widens head h's summary by id `id`'s attributes (a record joined h's list).
    func widenSummary(_ h: Int, id: UInt32) {
        guard let rows = attributeRows, let a = base.attributes else { return }
        if Int(id) < base.count { summaries[h].add(row: Int(id), table: a.table) }
        else { summaries[h].add(row: Int(id) - base.count, of: rows) }
        attributeSnapshot = nil
    }

    /// Logs and applies an insert or upsert (the caller checked it, and encoded its attributes).
    func logAndApply(_ op: WriteAheadLog.Op, label: UInt64, vector v: UnsafePointer<Float>, attributes: [UInt8]?) throws {
        let h = assign(v)
        wal.append(op, label: label, vector: v, heads: h, attributes: attributes)
        try (attributes ?? []).withUnsafeBytes { a in
            try apply(insert: label, vector: v, replace: op == .upsert, heads: h, attributes: attributes == nil ? nil : a)
        }
    }

    /// Applies an insert or upsert assigned to `postings` with its attribute row (shared by
    /// updates and replay; nothing is applied when it throws).
    func apply(insert label: UInt64, vector v: UnsafePointer<Float>, replace: Bool, heads postings: UnsafeBufferPointer<UInt32>,
               attributes: UnsafeRawBufferPointer?) throws {
        for h in postings where Int(h) >= headCount {
            throw FathomError(.corruptIndex, "an insert of label \(label) names posting \(h), but the index has \(headCount)")
        }
        if (attributes == nil) != (attributeRows == nil) {
            throw FathomError(.corruptIndex, attributes == nil ? "an insert of label \(label) carries no attributes, but the index has them"
                                                              : "an insert of label \(label) carries attributes, but the index has none")
        }
        if replace == false, idOf[label] != nil {
            throw FathomError(.invalidArgument, "label \(label) is already in the index; upsert replaces it")
        }
        if let rows = attributeRows, let attributes {
            do { try rows.append(attributes) }
            catch let e as FathomError { throw FathomError(.corruptIndex, "an insert of label \(label): " + e.message) }
        }
        if let old = idOf[label] { markDeleted(old) }
        let d = base.dimension
        let id = UInt32(base.count + vectors.count)
        if postings.baseAddress != UnsafePointer(assigned) {   // replay: `work` does not hold it yet
            work.update(from: v, count: d)
            if base.metric == .cosine { _ = Distance.normalize(work, d) }
        }
        record.storeBytes(of: id.littleEndian, as: UInt32.self)
        base.codec.encode(work, scratch: assigner.encodeScratch, into: record + 4)   // as the build's assign encodes
        for h in postings {
            delta.append(head: Int(h), record: record)
            if count(Int(h)) > splitAbove { oversized.insert(Int(h)) }
            widenSummary(Int(h), id: id)
        }
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

    /// Ids of this version (base rows and every inserted row).
    var idCount: Int { base.count + vectors.count }

    /// The label of internal id `id`.
    func label(of id: UInt32) -> UInt64 {
        Int(id) < base.count ? base.labels.label(of: id)
            : UInt64(littleEndian: labelRows.row(Int(id) - base.count).load(as: UInt64.self))
    }

    /// A snapshot of the state: the base's seams composed with the updates.
    func makeSnapshot() -> VectorIndex {
        if routerDirty {
            let g = graph.prefix(headCount, keepingVectors: router.graph.vectors != nil)
            router = router.grown(graph: g, heads: heads, changed: movedHeads)
            movedHeads.removeAll()
            routerDirty = false
        }
        let searchRouter: any HeadRouter = retired.deleted > 0
            ? RetiredHeadsRouter(inner: router, retired: retired.copy(capacity: retired.wordCount * 64)) : router
        var attributes: AttributeStore? = nil
        if let a = base.attributes, let rows = attributeRows {
            if attributeSnapshot == nil {
                if attributeTable?.rows != rows.count { attributeTable = (rows.table(after: a.table), rows.count) }
                attributeSnapshot = AttributeStore(table: attributeTable!.table, quantized: a.quantized, summaries: summaries)
            }
            attributes = attributeSnapshot
        }
        return VectorIndex(
            deriving: base,
            attributes: attributes,
            router: searchRouter,
            postingStore: UpdatedPostingStore(base: base.postingStore, relocated: relocated, moved: moved,
                                              file: files.postingsReader, delta: delta.snapshot()),
            vectorStore: UpdatedVectorStore(base: base.vectorStore, baseCount: base.count, spilled: files.vectorStore, arena: vectors.snapshot()),
            count: idCount,
            labels: LabelMap(base: base.labels.base, baseCount: base.count, delta: labelRows, deltaCount: labelRows.count, maxLabel: maxLabel),
            tombstones: tombstones.copy(capacity: tombstones.wordCount * 64))
    }

    /// Reads the full vector of id `id` (as stored: normalized for cosine) into `out`.
    func readVector(_ id: UInt32, into out: UnsafeMutablePointer<Float>) throws {
        let d = base.dimension, i = Int(id)
        if i < base.count {
            try files.baseVectors.read(into: out, count: d * 4, at: files.placement.offset(i))
        } else if i - base.count >= vectors.firstResident {
            out.update(from: vectors.row(i - base.count).assumingMemoryBound(to: Float.self), count: d)
        } else {
            try files.readSpilled(row: i - base.count, into: out)
        }
    }

    /// Writes the live vectors (id order) as .fbin, their labels as text and, with
    /// `attributesPath`, their attribute rows as JSON lines (for a checkpoint).
    func writeLive(vectors path: String, labels labelsPath: String, attributes attributesPath: String? = nil) throws {
        let d = base.dimension
        let out = try VectorFileWriter(path: path, format: .fbin, elementType: .float32, dimension: d)
        var text = ""
        let row = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { row.deallocate() }
        for id in 0..<idCount where !tombstones.contains(UInt32(id)) {
            try readVector(UInt32(id), into: row)
            try out.append(UnsafeRawPointer(row), count: 1)
            text += String(label(of: UInt32(id))); text += "\n"
        }
        try out.close()
        let w = try SequentialFileWriter(path: labelsPath, bufferBytes: 1 << 20)
        try w.write([UInt8](text.utf8)); try w.finish()
        if let attributesPath, let a = base.attributes, let rows = attributeRows {
            let table = attributeTable?.rows == rows.count ? attributeTable!.table : rows.table(after: a.table)
            let j = try SequentialFileWriter(path: attributesPath, bufferBytes: 1 << 20)
            var line = ""
            for id in 0..<idCount where !tombstones.contains(UInt32(id)) {
                line.removeAll(keepingCapacity: true)
                table.appendJSONLine(row: id, to: &line)
                try j.write([UInt8](line.utf8))
            }
            try j.finish()
        }
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
        return try MutableVectorIndex(directory: path, writable: false, io: io, serveMemory: serveMemory, policy: UpdatePolicy()).snapshot()
    }
}

/// The maintenance thread's wake-ups and stop flag, apart from the index so that the thread
/// holds the index only while it runs a unit.
///
/// Thread safety: all members are guarded by `wake`; `finished` is signalled once, when the
/// thread ends.
final class MaintenanceWorker: @unchecked Sendable {
    private let wake = NSCondition()
    private var wakeups = 0
    private var stopping = false
    let finished = DispatchSemaphore(value: 0)
    var thread: Thread?

    func signal() { wake.lock(); wakeups += 1; wake.signal(); wake.unlock() }
    func stop() { wake.lock(); stopping = true; wake.broadcast(); wake.unlock() }
    var isStopping: Bool { wake.lock(); defer { wake.unlock() }; return stopping }

    /// Waits for a wake-up; false once stopped.
    func waitForWork() -> Bool {
        wake.lock(); defer { wake.unlock() }
        while wakeups == 0 && !stopping { wake.wait() }
        wakeups = 0
        return !stopping
    }
}

import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// The records inserted since the base version, per posting: each head's list of
/// `{UInt32 id, code}` records in the index's posting encoding. Lists only grow; a list that
/// must grow past its capacity is copied into a new, larger one, so a published snapshot
/// (the lists and their counts at publication) never sees a change.
///
/// Thread safety: the writer appends; ``snapshot()`` results are immutable and shared.
final class DeltaPostings {
    final class List: @unchecked Sendable {
        let records: UnsafeMutableRawPointer
        let capacity: Int
        init(capacity: Int, recordBytes: Int) {
            self.capacity = capacity
            records = .allocate(byteCount: capacity * recordBytes, alignment: 64)
        }
        deinit { records.deallocate() }
    }

    /// What a search sees: per head the list (nil: none) and how many of its records.
    struct Snapshot: @unchecked Sendable {
        let lists: [List?]
        let counts: [Int32]
        let records: Int
        let bytes: Int
    }

    let recordBytes: Int
    private(set) var lists: [List?]
    private(set) var counts: [Int32]
    private(set) var records = 0
    private(set) var bytes = 0

    init(heads: Int, recordBytes: Int) {
        self.recordBytes = recordBytes
        lists = [List?](repeating: nil, count: heads)
        counts = [Int32](repeating: 0, count: heads)
    }

    /// Appends one record (4-byte id + code at `record`) to head `h`'s list.
    func append(head h: Int, record: UnsafeRawPointer) {
        let n = Int(counts[h])
        var list = lists[h]
        if list == nil || n == list!.capacity {
            let bigger = List(capacity: max(8, n * 2), recordBytes: recordBytes)
            if let old = list { bigger.records.copyMemory(from: old.records, byteCount: n * recordBytes) }
            bytes += (bigger.capacity - (list?.capacity ?? 0)) * recordBytes
            lists[h] = bigger
            list = bigger
        }
        (list!.records + n * recordBytes).copyMemory(from: record, byteCount: recordBytes)
        counts[h] = Int32(n + 1)
        records += 1
    }

    /// Adds an empty list for a new head (a split's).
    func addList() { lists.append(nil); counts.append(0) }

    /// Empties head `h`'s list (its records were written to disk by a relocation). A
    /// published snapshot keeps the old list alive for as long as it needs it.
    func clear(head h: Int) {
        if let l = lists[h] { bytes -= l.capacity * recordBytes }
        records -= Int(counts[h])
        lists[h] = nil
        counts[h] = 0
    }

    /// The records of head `h`'s list (valid until the next append to it).
    func records(of h: Int) -> (UnsafeRawPointer?, Int) {
        (lists[h].map { UnsafeRawPointer($0.records) }, Int(counts[h]))
    }

    func snapshot() -> Snapshot { Snapshot(lists: lists, counts: counts, records: records, bytes: bytes) }
}

/// Where each posting of an updated index lives: the built postings (`base`, heads below
/// its list count), the lists a maintenance job rewrote into `postings.upd` (a relocation:
/// a split's halves, a list folded with its delta and rid of deleted records, an emptied
/// retired head), then each list's delta records in RAM. Posting h is its stored list (base
/// or relocated) followed by its delta records, visited as two runs of one list.
///
/// Thread safety: immutable and shared, like every store.
final class UpdatedPostingStore: PostingStore, @unchecked Sendable {
    let base: PostingStore
    /// Per head: where its stored list is in postings.upd, when `moved[h]`.
    let relocated: [PostingEntry]
    let moved: [Bool]
    /// postings.upd, opened for the base's IO path (nil: nothing relocated yet).
    let file: RandomAccessFile?
    let delta: DeltaPostings.Snapshot

    init(base: PostingStore, relocated: [PostingEntry], moved: [Bool], file: RandomAccessFile?, delta: DeltaPostings.Snapshot) {
        precondition(relocated.count == delta.counts.count && moved.count == relocated.count && relocated.count >= base.listCount)
        self.base = base; self.relocated = relocated; self.moved = moved; self.file = file; self.delta = delta
    }

    var recordBytes: Int { base.recordBytes }
    var listCount: Int { relocated.count }
    /// Records of h's stored list (base or relocated), without its delta.
    @inline(__always) func storedCount(of h: Int) -> Int {
        moved[h] ? Int(relocated[h].count) : (h < base.listCount ? base.count(of: h) : 0)
    }
    func count(of h: Int) -> Int { storedCount(of: h) + Int(delta.counts[h]) }
    func offset(of h: Int) -> UInt64 { moved[h] ? relocated[h].offset : (h < base.listCount ? base.offset(of: h) : 0) }
    /// The base's, the delta lists', and per head its relocation entry and moved flag.
    var residentBytes: Int { base.residentBytes + delta.bytes + relocated.count * (MemoryLayout<PostingEntry>.stride + 1) }
    func makeReader() -> PostingReader { UpdatedPostingReader(store: self, base: base.makeReader()) }
    var path: String { file?.path ?? "postings.upd" }
}

final class UpdatedPostingReader: PostingReader {
    let store: UpdatedPostingStore
    let base: PostingReader
    /// Lists of the staged fetch: all of them (for the delta), those the base reads, and
    /// the relocated ones (sorted by offset).
    var staged = [UInt32]()
    var baseLists = [UInt32]()
    var order = [UInt32]()
    let plan = ReadPlan(arenaBytes: 64 << 10)
    /// The base's requests, then this reader's own.
    let requests = RequestList()
    var baseRequests = 0

    init(store: UpdatedPostingStore, base: PostingReader) { self.store = store; self.base = base }

    var scratchBytes: Int { base.scratchBytes + (staged.capacity + baseLists.capacity + order.capacity) * 4 + plan.scratchBytes + requests.bytes }
    var path: String { base.path }

    func stage(_ lists: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        staged.removeAll(keepingCapacity: true); baseLists.removeAll(keepingCapacity: true); order.removeAll(keepingCapacity: true)
        staged.append(contentsOf: lists)
        let moved = store.moved, relocated = store.relocated, nb = store.base.listCount
        for h in lists {
            if moved[Int(h)] { if relocated[Int(h)].count > 0 { order.append(h) } } else if Int(h) < nb { baseLists.append(h) }
        }
        let (rb, cb) = baseLists.withUnsafeBufferPointer { base.stage($0) }
        requests.reset()
        for r in rb { requests.append(r) }
        baseRequests = rb.count
        var counts = cb
        plan.reset()
        if !order.isEmpty, let file = store.file {
            order.sort { relocated[Int($0)].offset < relocated[Int($1)].offset }
            for h in order {
                let e = relocated[Int(h)]
                plan.add(fd: file.fd, start: e.offset, end: e.offset + UInt64(e.pages) * 4096, gap: 4096, maxBytes: 128 << 10)
            }
            let (ru, total) = plan.finish()
            for r in ru { requests.append(r) }
            counts.requests += ru.count; counts.bytes += total; counts.roundTrips = 1; counts.items += order.count
        }
        return (requests.buffer, counts)
    }

    /// The base's resident lists, then every staged list's delta records.
    func visitResident(visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> Int {
        var n = try base.visitResident(visit: visit)
        let d = store.delta
        for h in staged {
            let c = Int(d.counts[Int(h)])
            if c == 0 { continue }
            n += 1
            try visit(h, UnsafeRawPointer(d.lists[Int(h)].unsafelyUnwrapped.records), c)
        }
        return n
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> FathomError? {
        if r < baseRequests { return try base.deliver(r, result, verify: verify, visit: visit) }
        if case .failure(let e) = result { return e }
        let relocated = store.relocated
        return try plan.visitLists(of: r - baseRequests, order: order, entry: { relocated[$0] }, recordBytes: store.recordBytes,
                                   path: store.path, verify: verify, visit: visit)
    }
}

/// The full vectors of inserted rows (ids ≥ the base count), in RAM until a maintenance job
/// spills them to vectors.upd. Rows sit in chunks of 64 KiB; a chunk whose rows are all on
/// disk is let go (freed once no published snapshot holds it), which bounds the RAM.
///
/// Thread safety: the writer appends and drops; ``snapshot()`` results are immutable and shared.
final class VectorArena {
    final class Chunk: @unchecked Sendable {
        let rows: UnsafeMutableRawPointer
        init(bytes: Int) { rows = .allocate(byteCount: bytes, alignment: 64) }
        deinit { rows.deallocate() }
    }

    /// What a search sees: the chunks held at publication, the row count, and the first row
    /// still in RAM (rows below it are read from vectors.upd).
    struct Snapshot: @unchecked Sendable {
        let chunks: [Chunk?]
        let count: Int
        let firstResident: Int
        let chunkRows: Int
        let rowBytes: Int
        @inline(__always) func row(_ i: Int) -> UnsafeRawPointer {
            UnsafeRawPointer(chunks[i / chunkRows].unsafelyUnwrapped.rows) + (i % chunkRows) * rowBytes
        }
    }

    let rowBytes: Int
    /// Rows per chunk: 64 KiB of rows (at least 1), so the chunk that stays after a spill is small.
    let chunkRows: Int
    private(set) var chunks = [Chunk?]()
    private(set) var count = 0
    /// Rows below this are no longer in RAM.
    private(set) var firstResident = 0

    init(rowBytes: Int) { self.rowBytes = rowBytes; chunkRows = max(1, (64 << 10) / max(rowBytes, 1)) }

    func append(_ p: UnsafeRawPointer) {
        let c = count / chunkRows
        if c == chunks.count { chunks.append(Chunk(bytes: chunkRows * rowBytes)) }
        (chunks[c]!.rows + (count % chunkRows) * rowBytes).copyMemory(from: p, byteCount: rowBytes)
        count += 1
    }

    /// Row `i` (i ≥ ``firstResident``).
    func row(_ i: Int) -> UnsafeRawPointer {
        UnsafeRawPointer(chunks[i / chunkRows].unsafelyUnwrapped.rows) + (i % chunkRows) * rowBytes
    }

    /// Rows below `rows` are on disk: lets go of every chunk they fill entirely.
    func drop(below rows: Int) {
        let full = min(rows, count) / chunkRows
        for c in 0..<full { chunks[c] = nil }
        firstResident = max(firstResident, full * chunkRows)
    }

    /// Bytes of the chunks held.
    var residentBytes: Int { (chunks.count - firstResident / chunkRows) * chunkRows * rowBytes + chunks.count * 8 }

    func snapshot() -> Snapshot {
        Snapshot(chunks: chunks, count: count, firstResident: firstResident, chunkRows: chunkRows, rowBytes: rowBytes)
    }
}

/// The re-rank tier of an updated index: vectors.dat for the built rows (ids below
/// `baseCount`), then the inserted rows: those a maintenance job spilled to vectors.upd
/// (read like vectors.dat, by their row among the inserted) and those still in RAM.
///
/// Thread safety: immutable and shared.
final class UpdatedVectorStore: VectorStore, @unchecked Sendable {
    let base: VectorStore
    let baseCount: Int
    /// vectors.upd (rows 0 ..< arena.firstResident of the inserted), nil before any spill.
    let spilled: VectorStore?
    let arena: VectorArena.Snapshot

    init(base: VectorStore, baseCount: Int, spilled: VectorStore?, arena: VectorArena.Snapshot) {
        self.base = base; self.baseCount = baseCount; self.spilled = spilled; self.arena = arena
    }

    var elementType: ElementType { base.elementType }
    var dimension: Int { base.dimension }
    var checksumBytes: Int { base.checksumBytes }
    func makeReader() -> VectorReader { UpdatedVectorReader(store: self, base: base.makeReader(), spilled: spilled?.makeReader()) }
}

final class UpdatedVectorReader: VectorReader {
    let store: UpdatedVectorStore
    let base: VectorReader
    let spilled: VectorReader?
    /// Staged ids per tier (in storage that stays put until the last delivery: the readers
    /// keep pointers to it) and each one's position in the caller's ids.
    var baseIds = IdBuffer(), spillIds = IdBuffer()
    var basePos = [Int32](), spillPos = [Int32](), arenaPos = [Int32]()
    var staged = UnsafeBufferPointer<UInt32>(start: nil, count: 0)
    let requests = RequestList()
    var baseRequests = 0

    init(store: UpdatedVectorStore, base: VectorReader, spilled: VectorReader?) {
        self.store = store; self.base = base; self.spilled = spilled
    }

    var scratchBytes: Int {
        base.scratchBytes + (spilled?.scratchBytes ?? 0) + (baseIds.capacity + spillIds.capacity) * 4
            + (basePos.capacity + spillPos.capacity + arenaPos.capacity) * 4 + requests.bytes
    }
    var path: String { base.path }

    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        staged = ids
        baseIds.reset(ids.count); spillIds.reset(ids.count)
        basePos.removeAll(keepingCapacity: true); spillPos.removeAll(keepingCapacity: true); arenaPos.removeAll(keepingCapacity: true)
        let b = store.baseCount, firstResident = store.arena.firstResident
        for (i, id) in ids.enumerated() {
            let v = Int(id)
            if v < b { baseIds.append(id); basePos.append(Int32(i)) }
            else if v - b < firstResident { spillIds.append(UInt32(v - b)); spillPos.append(Int32(i)) }
            else { arenaPos.append(Int32(i)) }
        }
        requests.reset()
        var (rb, counts) = base.stage(baseIds.buffer)
        for r in rb { requests.append(r) }
        baseRequests = rb.count
        if let spilled, spillIds.count > 0 {
            let (rs, cs) = spilled.stage(spillIds.buffer)
            for r in rs { requests.append(r) }
            counts.requests += cs.requests; counts.bytes += cs.bytes; counts.roundTrips = max(counts.roundTrips, cs.roundTrips)
            counts.items += cs.items
        }
        counts.items += arenaPos.count
        rb = requests.buffer
        return (rb, counts)
    }

    /// The base's resident rows, then the inserted rows still in RAM.
    func visitResident(visit: (Int, UnsafeRawPointer) throws -> Void) rethrows {
        let pos = basePos
        try base.visitResident { i, row in try visit(Int(pos[i]), row) }
        let b = store.baseCount, arena = store.arena
        for p in arenaPos { try visit(Int(p), arena.row(Int(staged[Int(p)]) - b)) }
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError? {
        if r < baseRequests {
            let pos = basePos
            return try base.deliver(r, result, verify: verify) { i, row in try visit(Int(pos[i]), row) }
        }
        let pos = spillPos
        return try spilled!.deliver(r - baseRequests, result, verify: verify) { i, row in try visit(Int(pos[i]), row) }
    }
}

/// A growable id buffer whose storage stays put between a stage and its deliveries.
/// Thread safety: one owner (a reader).
final class IdBuffer {
    private(set) var base = UnsafeMutablePointer<UInt32>.allocate(capacity: 64)
    private(set) var capacity = 64
    private(set) var count = 0

    deinit { base.deallocate() }

    func reset(_ atLeast: Int) {
        count = 0
        if atLeast > capacity { base.deallocate(); capacity = atLeast; base = .allocate(capacity: atLeast) }
    }
    func append(_ v: UInt32) { base[count] = v; count += 1 }
    var buffer: UnsafeBufferPointer<UInt32> { UnsafeBufferPointer(start: base, count: count) }
}

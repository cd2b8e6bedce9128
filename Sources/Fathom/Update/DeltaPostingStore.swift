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

    func snapshot() -> Snapshot { Snapshot(lists: lists, counts: counts, records: records, bytes: bytes) }
}

/// A base ``PostingStore`` plus the records inserted since (``DeltaPostings``): posting h is
/// the base's records followed by its delta records, visited as two runs of one list. The
/// delta lives in RAM, so it adds no IO and no round trip; the base keeps its own reads.
///
/// Thread safety: immutable and shared, like every store.
final class LayeredPostingStore: PostingStore, @unchecked Sendable {
    let base: PostingStore
    let delta: DeltaPostings.Snapshot

    init(base: PostingStore, delta: DeltaPostings.Snapshot) {
        precondition(delta.counts.count == base.listCount)
        self.base = base; self.delta = delta
    }

    var recordBytes: Int { base.recordBytes }
    var listCount: Int { base.listCount }
    func count(of h: Int) -> Int { base.count(of: h) + Int(delta.counts[h]) }
    func offset(of h: Int) -> UInt64 { base.offset(of: h) }
    var residentBytes: Int { base.residentBytes + delta.bytes + delta.counts.count * 12 }
    func makeReader() -> PostingReader { LayeredPostingReader(store: self, base: base.makeReader()) }
}

final class LayeredPostingReader: PostingReader {
    let store: LayeredPostingStore
    let base: PostingReader
    /// Lists of the staged fetch.
    var staged = [UInt32]()

    init(store: LayeredPostingStore, base: PostingReader) { self.store = store; self.base = base }

    var scratchBytes: Int { base.scratchBytes + staged.capacity * 4 }
    var path: String { base.path }

    func stage(_ lists: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        staged.removeAll(keepingCapacity: true)
        staged.append(contentsOf: lists)
        return base.stage(lists)
    }

    /// The base's resident lists, then every staged list's delta records (a list with both
    /// is visited as two runs).
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
        try base.deliver(r, result, verify: verify, visit: visit)
    }
}

/// The base index's vectors.dat plus the full vectors of inserted rows (ids ≥ `baseCount`)
/// held in RAM (rebuilt from the write-ahead log at open).
///
/// Thread safety: immutable and shared; the arena's rows below `baseCount + deltaCount`
/// never change.
final class LayeredVectorStore: VectorStore, @unchecked Sendable {
    let base: VectorStore
    let baseCount: Int
    let delta: RowArena
    let deltaCount: Int

    init(base: VectorStore, baseCount: Int, delta: RowArena, deltaCount: Int) {
        self.base = base; self.baseCount = baseCount; self.delta = delta; self.deltaCount = deltaCount
    }

    var elementType: ElementType { base.elementType }
    var dimension: Int { base.dimension }
    func makeReader() -> VectorReader { LayeredVectorReader(store: self, base: base.makeReader()) }
}

final class LayeredVectorReader: VectorReader {
    let store: LayeredVectorStore
    let base: VectorReader
    /// The staged ids below the base count (in storage that stays put until the last
    /// delivery: the base reader keeps a pointer to it), and each one's position in the
    /// caller's ids.
    var baseIds = UnsafeMutablePointer<UInt32>.allocate(capacity: 64)
    var baseCapacity = 64
    var baseCount = 0
    var basePos = [Int32]()
    /// Positions of staged ids in the delta.
    var deltaPos = [Int32]()
    var staged = UnsafeBufferPointer<UInt32>(start: nil, count: 0)

    init(store: LayeredVectorStore, base: VectorReader) { self.store = store; self.base = base }
    deinit { baseIds.deallocate() }

    var scratchBytes: Int { base.scratchBytes + (baseCapacity + basePos.capacity + deltaPos.capacity) * 4 }
    var path: String { base.path }

    var baseBuffer: UnsafeBufferPointer<UInt32> { UnsafeBufferPointer(start: baseIds, count: baseCount) }

    func split(_ ids: UnsafeBufferPointer<UInt32>) {
        if ids.count > baseCapacity {
            baseIds.deallocate(); baseCapacity = ids.count; baseIds = .allocate(capacity: baseCapacity)
        }
        baseCount = 0
        basePos.removeAll(keepingCapacity: true); deltaPos.removeAll(keepingCapacity: true)
        let b = UInt32(store.baseCount)
        for (i, id) in ids.enumerated() {
            if id < b { baseIds[baseCount] = id; baseCount += 1; basePos.append(Int32(i)) } else { deltaPos.append(Int32(i)) }
        }
        staged = ids
    }

    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        split(ids)
        var r = base.stage(baseBuffer)
        r.counts.items += deltaPos.count
        return r
    }

    /// The base's resident rows, then the inserted rows (from the arena).
    func visitResident(visit: (Int, UnsafeRawPointer) throws -> Void) rethrows {
        let pos = basePos
        try base.visitResident { i, row in try visit(Int(pos[i]), row) }
        let b = store.baseCount
        for p in deltaPos { try visit(Int(p), UnsafeRawPointer(store.delta.row(Int(staged[Int(p)]) - b))) }
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError? {
        let pos = basePos
        return try base.deliver(r, result) { i, row in try visit(Int(pos[i]), row) }
    }
}

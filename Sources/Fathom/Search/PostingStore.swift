import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// Where posting lists live (FAISS's `InvertedLists`): the search pipeline asks a store for
/// a set of lists and gets each list's records back as a contiguous buffer of
/// `{UInt32 id, code}` records, `recordBytes` apart. The store knows nothing about what the
/// codes mean (that is the ``QueryScorer``'s business) nor which lists to read (the router's).
///
/// Implementations: ``DiskPostingStore`` (postings.dat through an ``IOEngine``, O_DIRECT),
/// ``ResidentPostingStore`` (the same bytes held in RAM). A delta store for updates or a
/// composite over shards is another implementation of this protocol.
///
/// Thread safety: a store is immutable and shared by every search thread; each thread reads
/// through its own ``PostingReader`` (its own buffers).
public protocol PostingStore: AnyObject, Sendable {
    /// Bytes of one record (4-byte id + code).
    var recordBytes: Int { get }
    /// Number of lists (one per head).
    var listCount: Int { get }
    /// Records in list `h`.
    func count(of h: Int) -> Int
    /// Byte offset of list `h` in postings.dat (for error messages).
    func offset(of h: Int) -> UInt64
    /// RAM this store keeps resident for serving, in bytes (its table, or all of it).
    var residentBytes: Int { get }
    /// A reader for one thread (its buffers; the thread's executor does the IO).
    func makeReader() -> PostingReader
}

/// What one fetch cost: IO requests (after coalescing), bytes (whole 4 KiB pages), dependent
/// round trips (0 for a resident store, else 1), and lists or rows delivered.
public struct IOCounts: Sendable, Equatable {
    public var requests = 0
    public var bytes = 0
    public var roundTrips = 0
    public var items = 0
    public init(requests: Int = 0, bytes: Int = 0, roundTrips: Int = 0, items: Int = 0) {
        self.requests = requests; self.bytes = bytes; self.roundTrips = roundTrips; self.items = items
    }
}

/// One thread's access to a ``PostingStore``. Never shared between threads.
///
/// A fetch is asynchronous, in steps driven by the query executor (``Searcher``):
/// `stage` coalesces the lists' reads into requests (in this reader's buffers) for the
/// caller to submit on the thread's ``IOEngine``; `visitResident` visits at once the staged
/// lists (or parts of lists) that need no IO (a RAM tier, the delta of updates); `deliver`
/// takes each request's completion and visits its lists. `visit(h, records, count)` gets
/// a list's records as one contiguous buffer, valid only during the call.
public protocol PostingReader: AnyObject {
    /// Bytes of buffers this reader holds.
    var scratchBytes: Int { get }
    /// The file its requests read (for the IO engine's error messages).
    var path: String { get }
    /// Stages the reads of lists `lists` (head ids; empty lists are skipped): the requests
    /// of one round trip, and what they cost (0 requests and round trips when no list
    /// needs IO).
    func stage(_ lists: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts)
    /// Visits the staged lists held in RAM; returns how many lists (or list parts) it visited.
    func visitResident(visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> Int
    /// Visits the lists of staged request `r`; returns the error of this request (a failed
    /// read, or with `verify` a list failing its CRC32C, naming the file and offset), if any.
    /// The lists of a failed request are not visited.
    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> FathomError?
}

extension PostingEntry {
    /// The error of posting `h` whose `count` records of `recordBytes` start at `base`, if
    /// their CRC32C differs from the table's (the one posting checksum check: disk reads,
    /// resident loads and the verifier).
    func checksumError(_ base: UnsafeRawPointer, recordBytes: Int, list h: Int, path: String) -> FathomError? {
        let c = crc32c(base, Int(count) * recordBytes, 0)
        if c == crc { return nil }
        return FathomError(.corruptIndex, String(format: "posting %d fails its checksum (stored %08x, read %08x): postings.dat is corrupt", h, crc, c), path: path, offset: offset, remedies: [.verifyAndRebuild])
    }
}

/// postings.dat on SSD, read with the thread's IO engine (libaio + O_DIRECT by default).
///
/// Postings are laid out in head order (the clustering tree's order). The reader sorts a
/// query's postings by offset and coalesces postings whose pages touch or lie at most
/// ``mergeGapPages`` apart into one request of at most ``maxRequestBytes``: on this class of
/// SSD a 16–64 KiB read costs about as much as a 4 KiB one, while every extra request costs
/// a slot of the device's IOPS. (In 384 dimensions a query's nearest postings are rarely
/// neighbours in any linear order: docs/search.md has the measurement.)
public final class DiskPostingStore: PostingStore, @unchecked Sendable {
    // Invariant: immutable after init.
    public let recordBytes: Int
    let table: [PostingEntry]
    let file: RandomAccessFile
    let path: String
    /// Largest hole (in 4 KiB pages) between two postings that one request still spans.
    public let mergeGapPages: Int
    /// Largest single request, in bytes.
    public let maxRequestBytes: Int

    init(table: [PostingEntry], file: RandomAccessFile, path: String, recordBytes: Int,
         mergeGapPages: Int = 1, maxRequestBytes: Int = 128 << 10) {
        self.table = table; self.file = file; self.path = path; self.recordBytes = recordBytes
        self.mergeGapPages = mergeGapPages
        let longest = Int(table.map(\.pages).max() ?? 1) * 4096
        self.maxRequestBytes = max(maxRequestBytes, longest)
    }

    public var listCount: Int { table.count }
    public func count(of h: Int) -> Int { Int(table[h].count) }
    public func offset(of h: Int) -> UInt64 { table[h].offset }
    public var residentBytes: Int { table.count * MemoryLayout<PostingEntry>.stride }
    public func makeReader() -> PostingReader { DiskPostingReader(store: self) }
}

final class DiskPostingReader: PostingReader {
    let store: DiskPostingStore
    /// Lists of the current fetch, sorted by offset.
    var order = [UInt32]()
    let plan = ReadPlan(arenaBytes: 256 << 10)

    init(store: DiskPostingStore) { self.store = store }

    var scratchBytes: Int { order.capacity * 4 + plan.scratchBytes }
    var path: String { store.path }

    func stage(_ lists: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        let table = store.table
        order.removeAll(keepingCapacity: true)
        plan.reset()
        for h in lists where table[Int(h)].count > 0 { order.append(h) }
        if order.isEmpty { return (plan.requests.buffer, IOCounts()) }
        order.sort { table[Int($0)].offset < table[Int($1)].offset }
        let gap = UInt64(store.mergeGapPages) * 4096, maxBytes = UInt64(store.maxRequestBytes), fd = store.file.fd
        for h in order {
            let e = table[Int(h)]
            let start = e.offset & ~4095
            plan.add(fd: fd, start: start, end: start + UInt64(e.pages) * 4096, gap: gap, maxBytes: maxBytes)
        }
        let (rq, total) = plan.finish()
        return (rq, IOCounts(requests: rq.count, bytes: total, roundTrips: 1, items: order.count))
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> FathomError? {
        if case .failure(let e) = result { return e }
        let table = store.table
        return try plan.visitLists(of: r, order: order, entry: { table[$0] }, recordBytes: store.recordBytes,
                                   path: store.path, verify: verify, visit: visit)
    }

    func visitResident(visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> Int { 0 }
}

/// The postings held in RAM (loaded once at open): for indexes small enough, or a serving
/// memory budget large enough, to keep every list resident. No IO at query time.
public final class ResidentPostingStore: PostingStore, @unchecked Sendable {
    // Invariant: immutable after init.
    public let recordBytes: Int
    let table: [PostingEntry]
    let bytes: UnsafeMutableRawPointer
    let byteCount: Int
    let path: String

    /// Reads all of postings.dat (checking every posting's checksum once).
    init(table: [PostingEntry], file: RandomAccessFile, path: String, recordBytes: Int) throws {
        self.table = table; self.recordBytes = recordBytes; self.path = path
        byteCount = Int(file.size)
        bytes = .allocate(byteCount: max(byteCount, 1), alignment: 4096)
        do { try file.read(into: bytes, count: byteCount, at: 0) } catch { bytes.deallocate(); throw error }
        for (h, e) in table.enumerated() where e.count > 0 {
            if let error = e.checksumError(bytes + Int(e.offset), recordBytes: recordBytes, list: h, path: path) {
                bytes.deallocate()
                throw error
            }
        }
    }

    deinit { bytes.deallocate() }

    public var listCount: Int { table.count }
    public func count(of h: Int) -> Int { Int(table[h].count) }
    public func offset(of h: Int) -> UInt64 { table[h].offset }
    public var residentBytes: Int { byteCount + table.count * MemoryLayout<PostingEntry>.stride }
    public func makeReader() -> PostingReader { ResidentPostingReader(store: self) }
}

final class ResidentPostingReader: PostingReader {
    let store: ResidentPostingStore
    /// The lists of the staged fetch.
    var staged = [UInt32]()
    init(store: ResidentPostingStore) { self.store = store }
    var scratchBytes: Int { staged.capacity * 4 }
    var path: String { store.path }

    func stage(_ lists: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        staged.removeAll(keepingCapacity: true)
        staged.append(contentsOf: lists)
        return (UnsafeBufferPointer(start: nil, count: 0), IOCounts())
    }

    func visitResident(visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> Int {
        // Checksums were verified when the store was loaded.
        var n = 0
        for h in staged {
            let e = store.table[Int(h)]
            if e.count == 0 { continue }
            n += 1
            try visit(h, UnsafeRawPointer(store.bytes) + Int(e.offset), Int(e.count))
        }
        return n
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> FathomError? { nil }
}

/// How a reader turns sorted byte ranges into few requests: ranges that touch or lie at
/// most `gap` apart join the current request while it stays within `maxBytes`; each request
/// remembers which of the added items (in order of addition) it carries; every request gets
/// its slice of one 4 KiB-aligned arena that grows as needed. Shared by the posting and
/// vector readers: the one place where reads are coalesced.
final class ReadPlan {
    let requests = RequestList()
    /// First item of each request; `first[r + 1]` ends it.
    private var first = [Int]()
    private var items = 0
    private var runStart: UInt64 = 0, runEnd: UInt64 = 0, fd: Int32 = -1
    private var total = 0
    private(set) var arena: UnsafeMutableRawPointer
    private(set) var arenaBytes: Int

    init(arenaBytes: Int) {
        self.arenaBytes = arenaBytes
        arena = .allocate(byteCount: arenaBytes, alignment: 4096)
    }
    deinit { arena.deallocate() }

    func reset() { requests.reset(); first.removeAll(keepingCapacity: true); items = 0; total = 0 }

    /// Adds the next item's page-aligned range `[start, end)` (ranges come sorted by start).
    func add(fd: Int32, start: UInt64, end: UInt64, gap: UInt64, maxBytes: UInt64) {
        if items > 0 && start <= runEnd + gap && max(end, runEnd) - runStart <= maxBytes {
            runEnd = max(runEnd, end)
        } else {
            close()
            first.append(items)
            self.fd = fd; runStart = start; runEnd = end
        }
        items += 1
    }

    private func close() {
        guard items > 0 else { return }
        total += Int(runEnd - runStart)
        requests.append(ReadRequest(fd: fd, offset: runStart, length: Int(runEnd - runStart), buffer: arena))
    }

    /// Ends the plan: the requests, pointed at the arena, and their total bytes.
    func finish() -> (UnsafeBufferPointer<ReadRequest>, Int) {
        close()
        first.append(items)
        if total > arenaBytes {
            arena.deallocate()
            arenaBytes = max(total, arenaBytes * 2)
            arena = .allocate(byteCount: arenaBytes, alignment: 4096)
        }
        requests.placeBuffers(in: arena)
        return (requests.buffer, total)
    }

    /// The items request `r` carries.
    func items(of r: Int) -> Range<Int> { first[r]..<first[r + 1] }

    /// Visits the posting lists request `r` carries (item i is list `order[i]`, placed at
    /// `entry(list)`), each checked against its CRC32C when `verify`; returns the first list
    /// that fails (and does not visit it). The one delivery loop of every posting reader.
    func visitLists(of r: Int, order: [UInt32], entry: (Int) -> PostingEntry, recordBytes: Int, path: String, verify: Bool,
                    visit: (UInt32, UnsafeRawPointer, Int) throws -> Void) rethrows -> FathomError? {
        let req = requests[r]
        var failure: FathomError? = nil
        for i in items(of: r) {
            let h = order[i]
            let e = entry(Int(h))
            let base = UnsafeRawPointer(req.buffer) + Int(e.offset - req.offset)
            if verify, let error = e.checksumError(base, recordBytes: recordBytes, list: Int(h), path: path) {
                if failure == nil { failure = error }
                continue
            }
            try visit(h, base, Int(e.count))
        }
        return failure
    }

    var scratchBytes: Int { arenaBytes + requests.bytes + first.capacity * 8 }
}

/// A reader's growable list of read requests, in storage that stays put between a stage
/// and its deliveries (the pointers handed to the IO engine stay valid).
final class RequestList {
    private(set) var base: UnsafeMutablePointer<ReadRequest>
    private(set) var count = 0
    private var capacity = 64

    init() { base = .allocate(capacity: capacity) }
    deinit { base.deallocate() }

    func reset() { count = 0 }

    func append(_ r: ReadRequest) {
        if count == capacity {
            let bigger = UnsafeMutablePointer<ReadRequest>.allocate(capacity: capacity * 2)
            bigger.initialize(from: base, count: count)
            base.deallocate()
            base = bigger
            capacity *= 2
        }
        (base + count).initialize(to: r)
        count += 1
    }

    subscript(_ i: Int) -> ReadRequest { base[i] }

    /// Points the requests, in order, at consecutive ranges of `arena`.
    func placeBuffers(in arena: UnsafeMutableRawPointer) {
        var cursor = 0
        for r in 0..<count { base[r].buffer = arena + cursor; cursor += base[r].length }
    }

    var buffer: UnsafeBufferPointer<ReadRequest> { UnsafeBufferPointer(start: base, count: count) }
    var bytes: Int { capacity * MemoryLayout<ReadRequest>.stride }
}

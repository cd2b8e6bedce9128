import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// Where the full-precision vectors live (the re-rank tier of a compressed index, and the
/// source of the exact filtered path): vectors.dat, rows placed so that a row never
/// straddles a page when it fits in one (docs/format.md).
///
/// Thread safety: a store is immutable and shared; each thread reads through its own
/// ``VectorReader``.
public protocol VectorStore: AnyObject, Sendable {
    /// Element type of the stored rows.
    var elementType: ElementType { get }
    /// Components per row.
    var dimension: Int { get }
    /// Bytes of RAM the store's page checksums take while open.
    var checksumBytes: Int { get }
    /// A reader for one thread (its buffers; the thread's executor does the IO).
    func makeReader() -> VectorReader
}

/// One thread's access to a ``VectorStore``. Never shared between threads.
///
/// Reads run in the same steps as a ``PostingReader``'s: `stage` the rows' reads (rows on
/// the same page share one request) for the caller to submit, `visitResident` the rows held
/// in RAM, `deliver` each request's completion. `visit(i, row)` gets row `ids[i]`, valid
/// only during the call.
public protocol VectorReader: AnyObject {
    /// Bytes of buffers this reader holds.
    var scratchBytes: Int { get }
    /// The file its requests read (for the IO engine's error messages).
    var path: String { get }
    /// Stages the reads of rows `ids` (one round trip); `ids` must stay valid until the last
    /// delivery. `counts.items` counts every row, with IO or not.
    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts)
    /// Visits the staged rows held in RAM.
    func visitResident(visit: (Int, UnsafeRawPointer) throws -> Void) rethrows
    /// Visits the rows of staged request `r`; returns its error (a failed read, or with
    /// `verify` a page failing its CRC32C, naming the file and offset), if any. The rows of a
    /// failed request are not visited.
    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError?
}

/// vectors.dat on SSD through the thread's IO engine. With page checksums (vectors.crc),
/// every page a read brings is checked against its CRC32C before its rows are used. A shard's
/// vectors.dat holds only its members, densely in id order: `rows` maps a global id to its
/// row (``ShardRows``).
public final class DiskVectorStore: VectorStore, @unchecked Sendable {
    // Invariant: immutable after init.
    public let elementType: ElementType
    public let dimension: Int
    let placement: IndexLayout.VectorPlacement
    let file: RandomAccessFile
    let path: String
    /// CRC32C of each 4 KiB payload page (page i starts at byte 4096 + 4096·i); nil for
    /// files without checksums (indexes built before vectors.crc, update files).
    let pageChecksums: [UInt32]?
    let rows: ShardRows?

    init(file: RandomAccessFile, path: String, dimension: Int, elementType: ElementType,
         pageChecksums: [UInt32]? = nil, rows: ShardRows? = nil) {
        self.file = file; self.path = path; self.dimension = dimension; self.elementType = elementType
        self.pageChecksums = pageChecksums; self.rows = rows
        placement = IndexLayout.VectorPlacement(rowBytes: dimension * elementType.size)
    }

    public var checksumBytes: Int { (pageChecksums?.count ?? 0) * 4 }

    /// Where vector `id`'s row starts in vectors.dat.
    @inline(__always) func offset(of id: UInt32) -> UInt64 {
        placement.offset(rows.map { $0.row(of: id) } ?? Int(id))
    }

    public func makeReader() -> VectorReader { DiskVectorReader(store: self) }

    /// The error of the first page of `req` (whole payload pages) that fails its checksum.
    func checksumError(_ req: ReadRequest) -> FathomError? {
        guard let sums = pageChecksums else { return nil }
        return sums.withUnsafeBufferPointer { s -> FathomError? in
            let first = Int((req.offset - 4096) / 4096)
            for p in 0..<(req.length / 4096) {
                let page = first + p, at = req.offset + UInt64(p * 4096)
                let c = crc32c(UnsafeRawPointer(req.buffer) + p * 4096, 4096, 0)
                if page < s.count, c == s[page] { continue }
                return FathomError(.corruptIndex, page < s.count
                    ? String(format: "page %d fails its checksum (stored %08x, read %08x): vectors.dat is corrupt", page, s[page], c)
                    : "page \(page) is past the \(s.count) pages vectors.crc covers: vectors.dat and vectors.crc disagree",
                    path: path, offset: at, remedies: [.verifyAndRebuild])
            }
            return nil
        }
    }
}

final class DiskVectorReader: VectorReader {
    let store: DiskVectorStore
    /// Positions into the staged ids, sorted by row offset.
    var order = [Int32]()
    let plan = ReadPlan(arenaBytes: 64 << 10)
    var staged = UnsafeBufferPointer<UInt32>(start: nil, count: 0)

    init(store: DiskVectorStore) { self.store = store }

    var scratchBytes: Int { order.capacity * 4 + plan.scratchBytes }
    var path: String { store.path }

    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        let n = ids.count
        staged = ids
        plan.reset()
        if n == 0 { return (plan.requests.buffer, IOCounts()) }
        let placement = store.placement
        let rowBytes = UInt64(placement.rowBytes)
        order.removeAll(keepingCapacity: true)
        for i in 0..<n { order.append(Int32(i)) }
        order.sort { ids[Int($0)] < ids[Int($1)] }   // row offsets grow with the id (a shard's rows too)
        let fd = store.file.fd
        for i in order {
            let off = store.offset(of: ids[Int(i)])
            // Rows on the same page share a request; a gap would cost a whole extra page.
            plan.add(fd: fd, start: off & ~4095, end: (off + rowBytes + 4095) & ~4095, gap: 0, maxBytes: .max)
        }
        let (rq, total) = plan.finish()
        return (rq, IOCounts(requests: rq.count, bytes: total, roundTrips: 1, items: n))
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, verify: Bool,
                 visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError? {
        if case .failure(let e) = result { return e }
        let req = plan.requests[r]
        if verify, let e = store.checksumError(req) { return e }
        for j in plan.items(of: r) {
            let i = Int(order[j])
            let off = store.offset(of: staged[i])
            try visit(i, UnsafeRawPointer(req.buffer) + Int(off - req.offset))
        }
        return nil
    }

    func visitResident(visit: (Int, UnsafeRawPointer) throws -> Void) rethrows {}
}

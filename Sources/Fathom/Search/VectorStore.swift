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
    /// A reader for one thread, reading through `engine`.
    func makeReader(engine: IOEngine) -> VectorReader
}

/// One thread's access to a ``VectorStore``. Never shared between threads.
public protocol VectorReader: AnyObject {
    /// Bytes of buffers this reader holds.
    var scratchBytes: Int { get }
    /// Reads the rows `ids` in one round trip (rows on the same or adjacent pages share one
    /// request) and calls `visit(i, row)` for `ids[i]` as its page arrives; `row` is valid
    /// only during the call. A failed read throws after the other rows were visited.
    /// Returns what the fetch cost.
    func fetch(_ ids: UnsafeBufferPointer<UInt32>,
               visit: (Int, UnsafeRawPointer) throws -> Void) throws -> IOCounts

    /// The asynchronous form (see ``PostingReader/stage(_:)``): stages the rows' reads and
    /// returns them for the caller to submit. `ids` must stay valid until the last delivery.
    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts)
    /// Visits the rows of staged request `r`; returns its error, if any.
    func deliver(_ r: Int, _ result: Result<Int, FathomError>, visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError?
}

/// vectors.dat on SSD through the thread's IO engine.
public final class DiskVectorStore: VectorStore, @unchecked Sendable {
    // Invariant: immutable after init.
    public let elementType: ElementType
    public let dimension: Int
    let placement: IndexLayout.VectorPlacement
    let file: RandomAccessFile
    let path: String

    init(file: RandomAccessFile, path: String, dimension: Int, elementType: ElementType) {
        self.file = file; self.path = path; self.dimension = dimension; self.elementType = elementType
        placement = IndexLayout.VectorPlacement(rowBytes: dimension * elementType.size)
    }

    public func makeReader(engine: IOEngine) -> VectorReader { DiskVectorReader(store: self, engine: engine) }
}

final class DiskVectorReader: VectorReader {
    let store: DiskVectorStore
    let engine: IOEngine
    /// Positions into the staged ids, sorted by row offset.
    var order = [Int32]()
    let plan = ReadPlan(arenaBytes: 64 << 10)
    var staged = UnsafeBufferPointer<UInt32>(start: nil, count: 0)

    init(store: DiskVectorStore, engine: IOEngine) {
        self.store = store
        self.engine = engine
    }

    var scratchBytes: Int { order.capacity * 4 + plan.scratchBytes }

    func stage(_ ids: UnsafeBufferPointer<UInt32>) -> (requests: UnsafeBufferPointer<ReadRequest>, counts: IOCounts) {
        let n = ids.count
        staged = ids
        plan.reset()
        if n == 0 { return (plan.requests.buffer, IOCounts()) }
        let placement = store.placement
        let rowBytes = UInt64(placement.rowBytes)
        order.removeAll(keepingCapacity: true)
        for i in 0..<n { order.append(Int32(i)) }
        order.sort { ids[Int($0)] < ids[Int($1)] }   // row offsets grow with the id
        let fd = store.file.fd
        for i in order {
            let off = placement.offset(Int(ids[Int(i)]))
            // Rows on the same page share a request; a gap would cost a whole extra page.
            plan.add(fd: fd, start: off & ~4095, end: (off + rowBytes + 4095) & ~4095, gap: 0, maxBytes: .max)
        }
        let (rq, total) = plan.finish()
        return (rq, IOCounts(requests: rq.count, bytes: total, roundTrips: 1, items: n))
    }

    func deliver(_ r: Int, _ result: Result<Int, FathomError>, visit: (Int, UnsafeRawPointer) throws -> Void) rethrows -> FathomError? {
        if case .failure(let e) = result { return e }
        let req = plan.requests[r]
        let placement = store.placement
        for j in plan.items(of: r) {
            let i = Int(order[j])
            let off = placement.offset(Int(staged[i]))
            try visit(i, UnsafeRawPointer(req.buffer) + Int(off - req.offset))
        }
        return nil
    }

    func fetch(_ ids: UnsafeBufferPointer<UInt32>,
               visit: (Int, UnsafeRawPointer) throws -> Void) throws -> IOCounts {
        let (rq, counts) = stage(ids)
        try readStaged(rq, engine: engine, path: store.path) { try deliver($0, $1, visit: visit) }
        return counts
    }
}

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
    func fetch(_ ids: UnsafeBufferPointer<UInt32>, 
               visit: (Int, UnsafeRawPointer) throws -> Void) throws -> IOCounts
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
    /// Positions into the caller's ids, sorted by row offset.
    var order = [Int32]()
    var runFirst = [Int]()
    var requests = [ReadRequest]()
    var arena: UnsafeMutableRawPointer
    var arenaBytes: Int

    init(store: DiskVectorStore, engine: IOEngine) {
        self.store = store
        self.engine = engine
        arenaBytes = 64 << 10
        arena = .allocate(byteCount: arenaBytes, alignment: 4096)
    }

    deinit { arena.deallocate() }

    var scratchBytes: Int { arenaBytes + order.capacity * 4 + requests.capacity * MemoryLayout<ReadRequest>.stride }

    func fetch(_ ids: UnsafeBufferPointer<UInt32>, 
               visit: (Int, UnsafeRawPointer) throws -> Void) throws -> IOCounts {
        let n = ids.count
        if n == 0 { return IOCounts() }
        let placement = store.placement
        let rowBytes = placement.rowBytes
        order.removeAll(keepingCapacity: true)
        for i in 0..<n { order.append(Int32(i)) }
        order.sort { ids[Int($0)] < ids[Int($1)] }   // row offsets grow with the id
        runFirst.removeAll(keepingCapacity: true)
        requests.removeAll(keepingCapacity: true)
        var total = 0
        var runStart: UInt64 = 0, runEnd: UInt64 = 0
        let fd = store.file.fd
        for (j, i) in order.enumerated() {
            let off = placement.offset(Int(ids[Int(i)]))
            let s = off & ~4095
            let end = (off + UInt64(rowBytes) + 4095) & ~4095
            if j > 0 && s <= runEnd { runEnd = max(runEnd, end); continue }
            if j > 0 { total += Int(runEnd - runStart); requests.append(ReadRequest(fd: fd, offset: runStart, length: Int(runEnd - runStart), buffer: arena)) }
            runFirst.append(j)
            runStart = s; runEnd = end
        }
        total += Int(runEnd - runStart)
        requests.append(ReadRequest(fd: fd, offset: runStart, length: Int(runEnd - runStart), buffer: arena))
        runFirst.append(n)
        if total > arenaBytes {
            arena.deallocate()
            arenaBytes = max(total, arenaBytes * 2)
            arena = .allocate(byteCount: arenaBytes, alignment: 4096)
        }
        var cursor = 0
        for r in 0..<requests.count { requests[r].buffer = arena + cursor; cursor += requests[r].length }
        var counts = IOCounts(requests: requests.count, bytes: total, roundTrips: 1, items: 0)
        var firstError: FathomError? = nil
        try requests.withUnsafeBufferPointer { rq in
            try engine.read(rq, path: store.path) { r, result in
                if case .failure(let e) = result { if firstError == nil { firstError = e }; return }
                let req = rq[r]
                for j in runFirst[r]..<runFirst[r + 1] {
                    let i = Int(order[j])
                    let off = placement.offset(Int(ids[i]))
                    counts.items += 1
                    try visit(i, UnsafeRawPointer(req.buffer) + Int(off - req.offset))
                }
            }
        }
        if let e = firstError { throw e }
        return counts
    }
}

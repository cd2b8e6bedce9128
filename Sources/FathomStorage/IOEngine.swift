import CAIO
import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One read of a batch: `length` bytes at `offset` of `fd` into `buffer`.
/// For O_DIRECT files, offset, length and buffer must be 4096-aligned.
public struct ReadRequest {
    public var fd: Int32
    public var offset: UInt64
    public var length: Int
    public var buffer: UnsafeMutableRawPointer
    public init(fd: Int32, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) {
        self.fd = fd; self.offset = offset; self.length = length; self.buffer = buffer
    }
}


/// Reads blocks asynchronously. One engine belongs to one thread at a time (each search
/// thread owns its own, as SPTAG gives each thread its own aio context).
///
/// Reads are submitted without waiting and reaped later, each identified by the tag it was
/// submitted with, so one thread can keep the reads of several independent operations in
/// flight (a search thread pipelining queries) and score one posting while others are
/// still being read. A failed read is reported as its completion's result and does not stop
/// the others. (The search's query executor drives it: Fathom/Search/QueryExecutor.swift.)
public protocol IOEngine: AnyObject {
    /// A short name for reports ("libaio", "pread", ...).
    var name: String { get }
    /// Whether the engine reads with O_DIRECT (bypassing the page cache).
    var direct: Bool { get }
    /// Reads submitted and not yet reaped.
    var inFlight: Int { get }
    /// The most reads that may be in flight.
    var capacity: Int { get }
    /// Starts `requests` without waiting; request `i` completes with tag `tag + i`. Throws
    /// when more than `capacity − inFlight` are given or the kernel refuses them (then none
    /// of the requests from the first refused one on are in flight).
    func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws
    /// Waits for at least `min` completions (0: only those already done) and reports each
    /// as `(tag, bytes read or error)`; returns how many were reported.
    @discardableResult
    func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int
}

/// Reads `rq` fully with `pread` (retrying short reads and EINTR), starting `done` bytes in.
/// The end of the file inside the range is an error: the file is truncated.
func preadFully(_ rq: ReadRequest, path: String, from done: Int = 0) -> Result<Int, FathomError> {
    var done = done
    while done < rq.length {
        let r = pread(rq.fd, rq.buffer + done, rq.length - done, off_t(rq.offset) + off_t(done))
        if r < 0 {
            if errno == EINTR { continue }
            return .failure(FathomError.system("read", path: path, errno: errno, offset: rq.offset + UInt64(done)))
        }
        if r == 0 {
            return .failure(FathomError(.corruptIndex, "unexpected end of file inside a read: the file is truncated; rebuild the index", path: path, offset: rq.offset + UInt64(done)))
        }
        done += r
    }
    return .success(done)
}

/// Linux native async IO (libaio): `io_submit` for a batch, completions reaped with
/// `io_getevents`. Handles partial submission, `EAGAIN` and `EINTR`; requests the kernel
/// refuses complete with the error at the next `reap`. A context the system's `aio-max-nr`
/// cannot grant raises a `resourceLimit` error that says how to fix it.
public final class AIOEngine: IOEngine {
    public let name = "libaio"
    public let direct = true
    let depth: Int
    var ctx: io_context_t?
    let iocbs: UnsafeMutablePointer<iocb>
    let iocbPtrs: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    let events: UnsafeMutablePointer<io_event>
    // Per control block: the request (to finish a short read), its tag and its file's path;
    // the free blocks; requests refused by the kernel, completed at the next reap.
    var slotRequests: [ReadRequest]
    var slotTags: [UInt64]
    var slotPaths: [String]
    var free: [Int32]
    var refused: [(tag: UInt64, error: FathomError)] = []
    public private(set) var inFlight = 0
    public var capacity: Int { depth }
    /// `io_submit` calls made so far (tests prove one per round trip with it).
    public private(set) var submits = 0

    /// - Parameter depth: the most reads in flight at once (the context's queue depth).
    public init(depth: Int) throws {
        self.depth = max(1, depth)
        var c: io_context_t? = nil
        var r = io_setup(Int32(self.depth), &c)
        var tries = 0
        while r == -EAGAIN && tries < 3 { usleep(1000); r = io_setup(Int32(self.depth), &c); tries += 1 }
        if r < 0 {
            if r == -EAGAIN {
                let maxNr = caio_read_proc_long("/proc/sys/fs/aio-max-nr")
                let nr = caio_read_proc_long("/proc/sys/fs/aio-nr")
                throw FathomError(.resourceLimit, "io_setup(\(self.depth)) refused: the system's async-IO limit is reached (aio-nr \(nr) of aio-max-nr \(maxNr))", errno: EAGAIN,
                                  remedies: [.useFewerThreads, .raiseSystemLimit(name: "fs.aio-max-nr", atLeast: max(1048576, Int(maxNr) * 2))])
            }
            throw FathomError.system("io_setup", path: nil, errno: -r)
        }
        ctx = c
        iocbs = .allocate(capacity: self.depth)
        iocbPtrs = .allocate(capacity: self.depth)
        events = .allocate(capacity: self.depth)
        slotRequests = [ReadRequest](repeating: ReadRequest(fd: -1, offset: 0, length: 0, buffer: UnsafeMutableRawPointer(bitPattern: 1)!), count: self.depth)
        slotTags = [UInt64](repeating: 0, count: self.depth)
        slotPaths = [String](repeating: "", count: self.depth)
        free = (0..<Int32(self.depth)).reversed().map { $0 }
    }

    deinit {
        if let c = ctx { io_destroy(c) }
        iocbs.deallocate(); iocbPtrs.deallocate(); events.deallocate()
    }

    public func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws {
        let n = requests.count
        if n == 0 { return }
        guard n <= free.count else {
            throw FathomError(.resourceLimit, "\(n) reads asked with room for \(free.count) (queue depth \(depth))", path: path)
        }
        for i in 0..<n {
            let slot = Int(free.removeLast())
            let rq = requests[i]
            let cb = iocbs + slot
            io_prep_pread(cb, rq.fd, rq.buffer, rq.length, Int64(rq.offset))
            cb.pointee.data = UnsafeMutableRawPointer(bitPattern: slot + 1)
            slotRequests[slot] = rq; slotTags[slot] = tag + UInt64(i); slotPaths[slot] = path
            iocbPtrs[i] = cb
        }
        inFlight += n
        var submitted = 0, retries = 0
        while submitted < n {
            let r = io_submit(ctx, n - submitted, iocbPtrs + submitted)
            submits += 1
            if r > 0 { submitted += Int(r); retries = 0; continue }
            if r == -EINTR { continue }
            if r == -EAGAIN && retries < 1000 { retries += 1; usleep(50); continue }
            // The kernel refuses the rest: each completes with the error at the next reap.
            let e = r < 0 ? -Int32(r) : EIO
            for i in submitted..<n {
                let slot = Int(bitPattern: iocbPtrs[i]!.pointee.data) - 1
                free.append(Int32(slot))
                refused.append((tag + UInt64(i), FathomError.system("io_submit", path: path, errno: e, offset: requests[i].offset)))
            }
            break
        }
    }

    @discardableResult
    public func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int {
        var reported = 0
        while let f = refused.popLast() {
            inFlight -= 1; reported += 1
            try completed(f.tag, .failure(f.error))
        }
        if inFlight == 0 { return reported }
        while true {
            let got = io_getevents(ctx, Swift.max(0, Swift.min(min - reported, inFlight)), depth, events, nil)
            if got == -EINTR { continue }
            if got < 0 { throw FathomError.system("io_getevents", path: nil, errno: -got) }
            for e in 0..<Int(got) {
                let slot = Int(bitPattern: events[e].data) - 1
                let res = Int(bitPattern: UInt(events[e].res))
                let rq = slotRequests[slot], tag = slotTags[slot], path = slotPaths[slot]
                free.append(Int32(slot))
                inFlight -= 1
                try completed(tag, Self.result(res, rq, path: path))
            }
            return reported + Int(got)
        }
    }

    /// A completion's result: bytes, an error naming the file and offset, or a short read
    /// finished synchronously (end of file is an error).
    static func result(_ res: Int, _ rq: ReadRequest, path: String) -> Result<Int, FathomError> {
        if res < 0 { return .failure(FathomError.system("read", path: path, errno: Int32(-res), offset: rq.offset)) }
        return preadFully(rq, path: path, from: res)
    }
}

/// A pool of `pread`s: the fallback where O_DIRECT or libaio is unavailable (tmpfs, some
/// network filesystems). `submit` reads the batch at once, on up to `width` threads (so a
/// batch still overlaps its IO), and `reap` hands out the completions, in request order.
/// Reads go through the page cache.
public final class PreadEngine: IOEngine {
    public let name = "pread"
    public let direct: Bool
    let width: Int
    /// Completions read and not yet reaped (reaped from the front).
    var done: [(tag: UInt64, result: Result<Int, FathomError>)] = []
    var head = 0
    public var inFlight: Int { done.count - head }
    public var capacity: Int { Int(Int32.max) }

    public init(direct: Bool = false, width: Int = 8) { self.direct = direct; self.width = max(1, width) }

    public func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws {
        let n = requests.count
        if head == done.count { done.removeAll(keepingCapacity: true); head = 0 }
        if n <= 1 || width == 1 {
            for i in 0..<n { done.append((tag + UInt64(i), preadFully(requests[i], path: path))) }
            return
        }
        let results = UnsafeMutablePointer<Result<Int, FathomError>>.allocate(capacity: n)
        results.initialize(repeating: .success(0), count: n)
        defer { results.deinitialize(count: n); results.deallocate() }
        struct Shared: @unchecked Sendable {   // disjoint slots per iteration
            let requests: UnsafeBufferPointer<ReadRequest>
            let results: UnsafeMutablePointer<Result<Int, FathomError>>
        }
        let shared = Shared(requests: requests, results: results)
        let lanes = min(width, n)
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var i = lane
            while i < n {
                shared.results[i] = preadFully(shared.requests[i], path: path)
                i += lanes
            }
        }
        for i in 0..<n { done.append((tag + UInt64(i), results[i])) }
    }

    @discardableResult
    public func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int {
        var reported = 0
        while head < done.count {
            let c = done[head]
            head += 1; reported += 1
            try completed(c.tag, c.result)
        }
        return reported
    }
}

/// Wraps another engine and injects faults, for tests: reads that cover an offset in
/// `failOffsets` (a bad sector; the error names that offset), or a random fraction
/// `failRate`, fail with `errno` (EIO by default);
/// with `shortReads`, successful reads report half their length.
public final class FaultInjectingEngine: IOEngine {
    public var name: String { "faulty(\(inner.name))" }
    public var direct: Bool { inner.direct }
    public var inFlight: Int { inner.inFlight }
    public var capacity: Int { inner.capacity }
    let inner: IOEngine
    public var failOffsets: Set<UInt64>
    public var failRate: Double
    public var errno: Int32
    public var shortReads: Bool
    var rng: UInt64
    /// The request and path of every read in flight, by tag.
    var submitted: [UInt64: (ReadRequest, String)] = [:]
    /// Number of faults injected so far.
    public private(set) var injected = 0

    public init(wrapping inner: IOEngine, failOffsets: Set<UInt64> = [], failRate: Double = 0,
                errno: Int32 = EIO, shortReads: Bool = false, seed: UInt64 = 1) {
        self.inner = inner; self.failOffsets = failOffsets; self.failRate = failRate
        self.errno = errno; self.shortReads = shortReads; self.rng = seed | 1
    }

    public func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws {
        try inner.submit(requests, tag: tag, path: path)
        for i in 0..<requests.count { submitted[tag + UInt64(i)] = (requests[i], path) }
    }

    @discardableResult
    public func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int {
        try inner.reap(min: min) { tag, result in
            let (rq, path) = submitted.removeValue(forKey: tag)!
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            let roll = Double(rng >> 11) * 0x1.0p-53
            let bad = failOffsets.first { $0 >= rq.offset && $0 < rq.offset + UInt64(rq.length) }
            if bad != nil || roll < failRate {
                injected += 1
                try completed(tag, .failure(FathomError.system("read (injected fault)", path: path, errno: errno, offset: bad ?? rq.offset)))
            } else if shortReads, case .success(let n) = result {
                injected += 1
                try completed(tag, .failure(FathomError(.io, "short read: \(n / 2) of \(n) bytes (injected)", path: path, offset: rq.offset)))
            } else {
                try completed(tag, result)
            }
        }
    }
}

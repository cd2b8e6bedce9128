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


/// Reads batches of blocks. One engine belongs to one thread at a time (each search
/// thread owns its own, as SPTAG gives each thread its own aio context).
///
/// `read` submits every request of the batch at once and calls `completed(i, result)` as
/// each read `i` finishes, in completion order, so the caller can score a posting while
/// the others are still in flight. `result` is the number of bytes read or a
/// `FathomError`; a failed read is reported to `completed` and does not stop the others.
public protocol IOEngine: AnyObject {
    /// A short name for reports ("libaio", "pread", ...).
    var name: String { get }
    /// Whether the engine reads with O_DIRECT (bypassing the page cache).
    var direct: Bool { get }
    func read(_ requests: UnsafeBufferPointer<ReadRequest>, path: String,
              completed: (Int, Result<Int, FathomError>) throws -> Void) throws
}

/// An engine that keeps the reads of several independent operations in flight at once (a
/// search thread pipelining queries): reads are submitted without waiting and reaped later,
/// each identified by the tag it was submitted with. Never mix `read` and `submit`/`reap` on
/// one engine while asynchronous reads are in flight.
public protocol AsyncIOEngine: IOEngine {
    /// Reads submitted and not yet reaped.
    var inFlight: Int { get }
    /// The most reads that may be in flight.
    var capacity: Int { get }
    /// Starts `requests` without waiting; request `i` completes with tag `tag + i`. Throws
    /// when more than `capacity − inFlight` are given or the kernel refuses them.
    func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws
    /// Waits for at least `min` completions (0: only those already done) and reports each
    /// as `(tag, bytes read or error)`; returns how many were reported.
    @discardableResult
    func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int
}

/// Linux native async IO (libaio): one `io_submit` for the batch, completions reaped with
/// `io_getevents`. Handles partial submission, `EAGAIN` and `EINTR`; a context the
/// system's `aio-max-nr` cannot grant raises a `resourceLimit` error that says how to fix it.
public final class AIOEngine: AsyncIOEngine {
    public let name = "libaio"
    public let direct = true
    let depth: Int
    var ctx: io_context_t?
    let iocbs: UnsafeMutablePointer<iocb>
    let iocbPtrs: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    let events: UnsafeMutablePointer<io_event>
    // Asynchronous reads: their own control blocks, a free list, and per block the request
    // (to finish a short read), its tag and its file's path.
    var asyncIocbs: UnsafeMutablePointer<iocb>? = nil
    var asyncRequests: [ReadRequest] = []
    var asyncTags: [UInt64] = []
    var asyncPaths: [String] = []
    var free: [Int32] = []
    public private(set) var inFlight = 0
    public var capacity: Int { depth }
    /// `io_submit` calls made so far (tests prove one per round trip with it).
    public private(set) var submits = 0

    /// - Parameter depth: the most reads one batch may hold (the context's queue depth).
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
                throw FathomError(.resourceLimit, "io_setup(\(self.depth)) refused: the system's async-IO limit is reached (aio-nr \(nr) of aio-max-nr \(maxNr)). Use fewer search threads, or raise it: sysctl -w fs.aio-max-nr=\(max(1048576, Int(maxNr) * 2))", errno: EAGAIN)
            }
            throw FathomError.system("io_setup", path: nil, errno: -r)
        }
        ctx = c
        iocbs = .allocate(capacity: self.depth)
        iocbPtrs = .allocate(capacity: self.depth)
        events = .allocate(capacity: self.depth)
    }

    deinit {
        if let c = ctx { io_destroy(c) }
        iocbs.deallocate(); iocbPtrs.deallocate(); events.deallocate(); asyncIocbs?.deallocate()
    }

    public func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws {
        let n = requests.count
        if n == 0 { return }
        if asyncIocbs == nil {
            asyncIocbs = .allocate(capacity: depth)
            asyncRequests = [ReadRequest](repeating: ReadRequest(fd: -1, offset: 0, length: 0, buffer: UnsafeMutableRawPointer(bitPattern: 1)!), count: depth)
            asyncTags = [UInt64](repeating: 0, count: depth)
            asyncPaths = [String](repeating: "", count: depth)
            free = (0..<Int32(depth)).reversed().map { $0 }
        }
        guard n <= free.count else {
            throw FathomError(.resourceLimit, "\(n) reads asked with room for \(free.count) (queue depth \(depth))", path: path)
        }
        for i in 0..<n {
            let slot = Int(free.removeLast())
            let rq = requests[i]
            let cb = asyncIocbs! + slot
            io_prep_pread(cb, rq.fd, rq.buffer, rq.length, Int64(rq.offset))
            cb.pointee.data = UnsafeMutableRawPointer(bitPattern: slot + 1)
            asyncRequests[slot] = rq; asyncTags[slot] = tag + UInt64(i); asyncPaths[slot] = path
            iocbPtrs[i] = cb
        }
        var submitted = 0, retries = 0
        while submitted < n {
            let r = io_submit(ctx, n - submitted, iocbPtrs + submitted)
            submits += 1
            if r > 0 { submitted += Int(r); inFlight += Int(r); retries = 0; continue }
            if r == -EINTR { continue }
            if r == -EAGAIN && retries < 1000 { retries += 1; usleep(50); continue }
            // Give the unsubmitted blocks back and fail.
            for i in submitted..<n { free.append(Int32(Int(bitPattern: iocbPtrs[i]!.pointee.data) - 1)) }
            throw FathomError.system("io_submit", path: path, errno: r < 0 ? -Int32(r) : EIO, offset: requests[submitted].offset)
        }
    }

    @discardableResult
    public func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int {
        if inFlight == 0 { return 0 }
        while true {
            let got = io_getevents(ctx, Swift.min(min, inFlight), depth, events, nil)
            if got == -EINTR { continue }
            if got < 0 { throw FathomError.system("io_getevents", path: nil, errno: -got) }
            for e in 0..<Int(got) {
                let slot = Int(bitPattern: events[e].data) - 1
                let res = Int(bitPattern: UInt(events[e].res))
                let rq = asyncRequests[slot], tag = asyncTags[slot], path = asyncPaths[slot]
                free.append(Int32(slot))
                inFlight -= 1
                try completed(tag, Self.result(res, rq, path: path))
            }
            return Int(got)
        }
    }

    /// A completion's result: bytes, an error naming the file and offset, or a short read
    /// finished synchronously (end of file is an error).
    static func result(_ res: Int, _ rq: ReadRequest, path: String) -> Result<Int, FathomError> {
        if res < 0 { return .failure(FathomError.system("read", path: path, errno: Int32(-res), offset: rq.offset)) }
        var done = res
        while done < rq.length {
            let r = pread(rq.fd, rq.buffer + done, rq.length - done, off_t(rq.offset) + off_t(done))
            if r < 0 { if errno == EINTR { continue }; return .failure(FathomError.system("read", path: path, errno: errno, offset: rq.offset + UInt64(done))) }
            if r == 0 { return .failure(FathomError(.corruptIndex, "short read: the file ends inside a read; it is truncated — rebuild the index", path: path, offset: rq.offset + UInt64(done))) }
            done += r
        }
        return .success(done)
    }

    public func read(_ requests: UnsafeBufferPointer<ReadRequest>, path: String,
                     completed: (Int, Result<Int, FathomError>) throws -> Void) throws {
        var start = 0
        while start < requests.count {
            let n = min(depth, requests.count - start)
            try readWindow(requests, start: start, count: n, path: path, completed: completed)
            start += n
        }
    }

    private func readWindow(_ requests: UnsafeBufferPointer<ReadRequest>, start: Int, count n: Int, path: String,
                            completed: (Int, Result<Int, FathomError>) throws -> Void) throws {
        for i in 0..<n {
            let rq = requests[start + i]
            io_prep_pread(iocbs + i, rq.fd, rq.buffer, rq.length, Int64(rq.offset))
            iocbs[i].data = UnsafeMutableRawPointer(bitPattern: i + 1)
            iocbPtrs[i] = iocbs + i
        }
        var submitted = 0
        var pending = 0
        var retries = 0
        // Submit everything; io_submit may take fewer than asked.
        while submitted < n {
            let r = io_submit(ctx, n - submitted, iocbPtrs + submitted)
            submits += 1
            if r > 0 { submitted += Int(r); pending += Int(r); retries = 0; continue }
            if r == -EINTR { continue }
            if r == -EAGAIN && pending > 0 {
                // Queue full: reap some completions, then retry.
                pending -= try reap(min: 1, requests: requests, start: start, path: path, completed: completed)
                continue
            }
            if r == -EAGAIN && retries < 100 { retries += 1; usleep(100); continue }
            let e = r < 0 ? -Int32(r) : EIO
            // Report every unsubmitted request as failed; still reap those in flight.
            for i in submitted..<n {
                try completed(start + i, .failure(FathomError.system("io_submit", path: path, errno: e, offset: requests[start + i].offset)))
            }
            break
        }
        while pending > 0 {
            pending -= try reap(min: 1, requests: requests, start: start, path: path, completed: completed)
        }
    }

    private func reap(min: Int, requests: UnsafeBufferPointer<ReadRequest>, start: Int, path: String,
                      completed: (Int, Result<Int, FathomError>) throws -> Void) throws -> Int {
        while true {
            let got = io_getevents(ctx, min, depth, events, nil)
            if got == -EINTR { continue }
            if got < 0 { throw FathomError.system("io_getevents", path: path, errno: -got) }
            for e in 0..<Int(got) {
                let i = Int(bitPattern: events[e].data) - 1
                let res = Int(bitPattern: UInt(events[e].res))
                try completed(start + i, Self.result(res, requests[start + i], path: path))
            }
            return Int(got)
        }
    }
}

/// A pool of `pread`s: the fallback where O_DIRECT or libaio is unavailable (tmpfs, some
/// network filesystems). The reads of a batch run on up to `width` threads at once (so a
/// batch still overlaps its IO), then complete in request order on the calling thread.
/// Reads go through the page cache.
public final class PreadEngine: IOEngine {
    public let name = "pread"
    public let direct: Bool
    let width: Int
    public init(direct: Bool = false, width: Int = 8) { self.direct = direct; self.width = max(1, width) }

    static func readFully(_ rq: ReadRequest, path: String) -> Result<Int, FathomError> {
        var done = 0
        while done < rq.length {
            let r = pread(rq.fd, rq.buffer + done, rq.length - done, off_t(rq.offset) + off_t(done))
            if r < 0 {
                if errno == EINTR { continue }
                return .failure(FathomError.system("read", path: path, errno: errno, offset: rq.offset + UInt64(done)))
            }
            if r == 0 {
                return .failure(FathomError(.corruptIndex, "unexpected end of file inside a read; the file is truncated — rebuild the index", path: path, offset: rq.offset + UInt64(done)))
            }
            done += r
        }
        return .success(done)
    }

    public func read(_ requests: UnsafeBufferPointer<ReadRequest>, path: String,
                     completed: (Int, Result<Int, FathomError>) throws -> Void) throws {
        let n = requests.count
        if n <= 1 || width == 1 {
            for i in 0..<n { try completed(i, Self.readFully(requests[i], path: path)) }
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
                shared.results[i] = PreadEngine.readFully(shared.requests[i], path: path)
                i += lanes
            }
        }
        for i in 0..<n { try completed(i, results[i]) }
    }
}

/// Wraps another engine and injects faults, for tests: reads that cover an offset in
/// `failOffsets` (a bad sector; the error names that offset), or a random fraction
/// `failRate`, fail with `errno` (EIO by default);
/// with `shortReads`, successful reads report half their length.
public final class FaultInjectingEngine: IOEngine {
    public var name: String { "faulty(\(inner.name))" }
    public var direct: Bool { inner.direct }
    let inner: IOEngine
    public var failOffsets: Set<UInt64>
    public var failRate: Double
    public var errno: Int32
    public var shortReads: Bool
    var rng: UInt64
    /// Number of faults injected so far.
    public private(set) var injected = 0

    public init(wrapping inner: IOEngine, failOffsets: Set<UInt64> = [], failRate: Double = 0,
                errno: Int32 = EIO, shortReads: Bool = false, seed: UInt64 = 1) {
        self.inner = inner; self.failOffsets = failOffsets; self.failRate = failRate
        self.errno = errno; self.shortReads = shortReads; self.rng = seed | 1
    }

    public func read(_ requests: UnsafeBufferPointer<ReadRequest>, path: String,
                     completed: (Int, Result<Int, FathomError>) throws -> Void) throws {
        try inner.read(requests, path: path) { i, result in
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            let roll = Double(rng >> 11) * 0x1.0p-53
            let rq = requests[i]
            let bad = failOffsets.first { $0 >= rq.offset && $0 < rq.offset + UInt64(rq.length) }
            if bad != nil || roll < failRate {
                injected += 1
                try completed(i, .failure(FathomError.system("read (injected fault)", path: path, errno: errno, offset: bad ?? rq.offset)))
            } else if shortReads, case .success(let n) = result {
                injected += 1
                try completed(i, .failure(FathomError(.io, "short read: \(n / 2) of \(n) bytes (injected)", path: path, offset: requests[i].offset)))
            } else {
                try completed(i, result)
            }
        }
    }
}

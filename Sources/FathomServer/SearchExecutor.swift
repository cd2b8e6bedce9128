import Dispatch
import Foundation

/// Why the executor did not run (or did not finish waiting for) a job. A value type, `Sendable`.
public enum AdmissionError: Error, Sendable, Equatable {
    /// Every worker is busy and the queue holds `queueLimit` jobs already (HTTP 429).
    case queueFull(queueLimit: Int)
    /// The job's deadline passed before its result arrived (HTTP 504). A job already running
    /// stops at its next check of ``JobDeadline/hasPassed`` (or runs to its end if it has
    /// none); its result is dropped.
    case deadlineExceeded(timeoutMs: Int)
    /// The executor is shutting down and takes no new jobs (HTTP 503).
    case shuttingDown
}

/// A job's deadline as the job sees it. Work made of steps (the queries of a batch) checks
/// ``hasPassed`` between steps and stops: its caller was answered with
/// ``AdmissionError/deadlineExceeded(timeoutMs:)`` at the deadline already. A value type, `Sendable`.
public struct JobDeadline: Sendable {
    /// When the caller stops waiting (nil: never).
    public let at: DispatchTime?
    public init(at: DispatchTime?) { self.at = at }
    /// Whether the deadline has passed (always false without one).
    public var hasPassed: Bool { at.map { DispatchTime.now() >= $0 } ?? false }
}

/// Admission control for the synchronous library searches: a fixed pool of worker threads
/// (the bound on concurrent searches) and a bounded FIFO queue in front of it.
///
/// The library's search is synchronous and blocks on disk IO, so it must not run on the
/// event loop or Swift's cooperative pool. `run(deadline:_:)` hands the job to a worker and
/// suspends; if `deadline` passes first, the caller is resumed with
/// ``AdmissionError/deadlineExceeded(timeoutMs:)``. A job that already started sees the
/// deadline through its ``JobDeadline`` and stops at its next step; it then returns its
/// searcher to the index's pool: nothing leaks. A job whose deadline passed while it was
/// still queued is skipped.
///
/// Thread-safety: all methods may be called from any thread or task; state is guarded by
/// one lock.
public final class SearchExecutor: @unchecked Sendable {
    /// Most jobs running at once (the number of worker threads).
    public let maxConcurrent: Int
    /// Most jobs waiting for a worker; one more is refused with ``AdmissionError/queueFull(queueLimit:)``.
    public let queueLimit: Int

    private final class Job: @unchecked Sendable {
        let work: @Sendable () -> Void
        let deadline: DispatchTime?
        init(work: @escaping @Sendable () -> Void, deadline: DispatchTime?) { self.work = work; self.deadline = deadline }
    }

    private let cond = NSCondition()
    private var queue: [Job] = []
    private var queueHead = 0
    private var running = 0
    private var stopping = false
    private var threads: [Thread] = []
    private var exited = 0

    /// Starts `maxConcurrent` worker threads.
    public init(maxConcurrent: Int, queueLimit: Int) {
        precondition(maxConcurrent >= 1 && queueLimit >= 0)
        self.maxConcurrent = maxConcurrent
        self.queueLimit = queueLimit
        for i in 0..<maxConcurrent {
            // Workers hold the executor until `shutdown()` lets them exit.
            let t = Thread { self.workerLoop() }
            t.name = "fathom-search-\(i)"
            t.stackSize = 1 << 20
            threads.append(t)
            t.start()
        }
    }

    /// Jobs waiting for a worker now.
    public var queueDepth: Int { cond.lock(); defer { cond.unlock() }; return queue.count - queueHead }
    /// Jobs running on a worker now.
    public var inFlight: Int { cond.lock(); defer { cond.unlock() }; return running }

    private func workerLoop() {
        while true {
            cond.lock()
            while queue.count == queueHead && !stopping { cond.wait() }
            if queue.count == queueHead && stopping {
                exited += 1; cond.broadcast(); cond.unlock(); return
            }
            let job = queue[queueHead]
            queueHead += 1
            if queueHead > 64 && queueHead * 2 > queue.count { queue.removeFirst(queueHead); queueHead = 0 }
            running += 1
            cond.unlock()
            job.work()
            cond.lock(); running -= 1; cond.broadcast(); cond.unlock()
        }
    }

    /// Runs `body` on a worker thread and returns its result, or throws ``AdmissionError``.
    ///
    /// - Parameters:
    ///   - timeoutMs: the caller stops waiting after this many milliseconds (nil: no deadline).
    ///   - onDrop: called (once) instead of `body` when the job never runs: refused, or
    ///     expired while queued. Owners of resources handed to `body` release them here.
    ///   - body: the synchronous work; it runs at most once. It gets the job's deadline and
    ///     should stop early once it has passed (its result is dropped then).
    public func run<T: Sendable>(timeoutMs: Int?, onDrop: @escaping @Sendable () -> Void = {},
                                 _ body: @escaping @Sendable (JobDeadline) -> T) async throws -> T {
        let deadline = timeoutMs.map { DispatchTime.now() + .milliseconds($0) }
        let jobDeadline = JobDeadline(at: deadline)
        let box = OnceBox<Result<T, AdmissionError>>()
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            box.install { r in
                switch r {
                case .success(let v): c.resume(returning: v)
                case .failure(let e): c.resume(throwing: e)
                }
            }
            let job = Job(work: {
                if let deadline, DispatchTime.now() >= deadline {
                    onDrop()
                    box.complete(.failure(.deadlineExceeded(timeoutMs: timeoutMs ?? 0)))
                    return
                }
                let v = body(jobDeadline)
                box.complete(.success(v))
            }, deadline: deadline)
            cond.lock()
            if stopping {
                cond.unlock(); onDrop(); box.complete(.failure(.shuttingDown)); return
            }
            // Admit: a free worker, or room in the queue.
            let waiting = queue.count - queueHead
            if running + waiting >= maxConcurrent + queueLimit {
                cond.unlock(); onDrop(); box.complete(.failure(.queueFull(queueLimit: queueLimit))); return
            }
            queue.append(job)
            cond.signal()
            cond.unlock()
            if let deadline, let ms = timeoutMs {
                DispatchQueue.global().asyncAfter(deadline: deadline) {
                    box.complete(.failure(.deadlineExceeded(timeoutMs: ms)))
                }
            }
        }
    }

    /// ``run(timeoutMs:onDrop:_:)`` for work that ignores its deadline (it runs to its end).
    public func run<T: Sendable>(timeoutMs: Int?, onDrop: @escaping @Sendable () -> Void = {},
                                 _ body: @escaping @Sendable () -> T) async throws -> T {
        try await run(timeoutMs: timeoutMs, onDrop: onDrop) { (_: JobDeadline) in body() }
    }

    /// Stops taking jobs, lets the queued and running ones finish, and joins the workers.
    /// Blocking; call it from a thread that may block (not the event loop).
    public func shutdown() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while exited < threads.count { cond.wait() }
        cond.unlock()
    }
}

/// A result delivered once: the first `complete` wins, later ones are ignored.
final class OnceBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var sink: ((T) -> Void)?
    private var pending: T?
    private var done = false

    func install(_ s: @escaping (T) -> Void) {
        lock.lock()
        if let p = pending { pending = nil; lock.unlock(); s(p); return }
        sink = s
        lock.unlock()
    }

    func complete(_ v: T) {
        lock.lock()
        if done { lock.unlock(); return }
        done = true
        if let s = sink { sink = nil; lock.unlock(); s(v); return }
        pending = v
        lock.unlock()
    }
}

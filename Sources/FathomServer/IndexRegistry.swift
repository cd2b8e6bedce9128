import Fathom
import Foundation

/// One opened generation of an index directory: a ``VectorIndex`` plus the number of
/// queries using it. A writable generation also holds the directory's writer
/// (``MutableVectorIndex``) and the snapshot it last published, with its version.
///
/// A generation is retired when a reload replaces it; it lets go of its `VectorIndex`
/// (closing its files and freeing its RAM) when its last query ends.
///
/// Thread-safety: safe to share; the reference count and the index slot are guarded by a lock.
public final class IndexGeneration: @unchecked Sendable {
    /// 1 for the index opened at start, +1 for each successful reload.
    public let number: Int
    /// When this generation was opened.
    public let openedAt: Date
    /// The writer of a writable index (nil: read-only). Used only on the index's write queue.
    let writer: MutableVectorIndex?
    private let lock = NSLock()
    private var _index: VectorIndex?
    private var _version: Int?
    private var writerClosed = false
    private var users = 0
    private var retired = false
    private let onClose: @Sendable (IndexGeneration) -> Void

    init(number: Int, index: VectorIndex, writer: MutableVectorIndex? = nil, version: Int? = nil,
         onClose: @escaping @Sendable (IndexGeneration) -> Void) {
        self.number = number
        self.openedAt = Date()
        self._index = index
        self.writer = writer
        self._version = version
        self.onClose = onClose
    }

    /// Takes a reference; nil if the generation is already closed.
    func acquire() -> (index: VectorIndex, version: Int?)? {
        lock.lock(); defer { lock.unlock() }
        guard let i = _index else { return nil }
        users += 1
        return (i, _version)
    }

    /// Writable generations: makes `snapshot` (the writer's, just after a flush) the one new
    /// searches see, as `version`. Searches already running keep the snapshot they took.
    func publish(_ snapshot: VectorIndex, version: Int) {
        lock.lock(); defer { lock.unlock() }
        guard _index != nil else { return }
        _index = snapshot
        _version = version
    }

    func release() {
        lock.lock()
        users -= 1
        let closing = retired && users == 0 ? _index : nil
        if closing != nil { _index = nil }
        lock.unlock()
        if let closing { close(closing) }
    }

    func retire() {
        lock.lock()
        retired = true
        let closing = users == 0 ? _index : nil
        if closing != nil { _index = nil }
        lock.unlock()
        if let closing { close(closing) }
    }

    /// Releases the writer's lock (its snapshots keep serving searches). Idempotent.
    func closeWriter() {
        lock.lock()
        let w = writerClosed ? nil : writer
        writerClosed = true
        lock.unlock()
        w?.close()
    }

    /// Whether the writer can take writes (writable and not closed by a reload).
    var isWritable: Bool { lock.lock(); defer { lock.unlock() }; return writer != nil && !writerClosed }

    /// Last reference: the index (with its pooled searchers) deallocates, closing its files
    /// and IO contexts, once the caller drops `index`.
    private func close(_ index: VectorIndex) {
        onClose(self)
    }

    /// Whether the generation still holds its index open.
    public var isOpen: Bool { lock.lock(); defer { lock.unlock() }; return _index != nil }
    /// Queries using this generation now.
    public var activeQueries: Int { lock.lock(); defer { lock.unlock() }; return users }
    /// Writable generations: the version now served (the updates in the index's log), else nil.
    public var version: Int? { lock.lock(); defer { lock.unlock() }; return _version }
}

/// A borrowed generation: the caller must call `release()` exactly once (from any thread).
/// While held, the generation's index stays open even if a reload retired it.
public struct IndexLease: Sendable {
    public let index: VectorIndex
    public let generation: IndexGeneration
    /// Writable indexes: the version of `index` (updates in the log when it was published).
    public let version: Int?
    /// Gives the reference back (closing a retired generation after its last query).
    public func release() { generation.release() }
}

/// Why an index cannot be used now. A value type, `Sendable`.
public enum IndexAvailability: Error, Sendable, Equatable {
    case unknown(name: String)
    case notReady(name: String, reason: String)
}

/// Why a write was refused before it reached the writer. A value type, `Sendable`.
public enum WriteRefusal: Error, Sendable, Equatable {
    /// The index is served read-only (no `--writable NAME`): HTTP 409.
    case readOnly(name: String)
    /// `limit` writes already wait for this index's writer: HTTP 429.
    case queueFull(name: String, limit: Int)
    /// The directory was republished (e.g. by `fathom build`) under the writer: writes would
    /// go to the old version's log, so they are refused until a reload opens the new one: HTTP 409.
    case replaced(name: String, directory: String)
}

/// How a served index opens its directory: read-only (a ``VectorIndex`` with its log's
/// updates), or as the directory's writer. A value type, `Sendable`.
public struct IndexOpening: Sendable {
    public var readOnly: @Sendable (String) throws -> VectorIndex
    public var writer: @Sendable (String) throws -> MutableVectorIndex
    public init(readOnly: @escaping @Sendable (String) throws -> VectorIndex,
                writer: @escaping @Sendable (String) throws -> MutableVectorIndex) {
        self.readOnly = readOnly; self.writer = writer
    }
}

/// One served index name and its current generation.
///
/// A read-only index opens its directory as a ``VectorIndex`` (the built version plus the
/// updates its log holds, read-only). A writable one (`--writable NAME`) opens it with
/// ``MutableVectorIndex/open(at:io:serveMemory:)``: the server is then the directory's one
/// writer, searches see the snapshot published after each acknowledged write, and writes run
/// one at a time on the index's write queue (``write(queueLimit:_:)``).
///
/// Thread-safety: all methods may be called concurrently; `current` is swapped under a lock,
/// reloads of one index are serialised (a reload while another runs is refused), and the
/// writes and reloads of a writable index serialize on its write lock.
public final class ServedIndex: @unchecked Sendable {
    public let name: String
    public let directory: String
    /// Whether the server is the directory's writer (`--writable NAME`).
    public let writable: Bool
    let opening: IndexOpening
    private let lock = NSLock()
    private var current: IndexGeneration?
    private var reloading = false
    private var lastError: String?
    private var writerFailure: String?
    private var nextNumber = 1
    private var openGenerations = 0
    private var servedSignature: DirectorySignature?
    private var failedSignature: DirectorySignature?
    private var pendingWrites = 0
    /// Held by a write (checks, apply, flush, publish) and by a writable index's reload.
    private let writeLock = NSLock()
    private let writeQueue: DispatchQueue
    let onChange: @Sendable () -> Void

    init(name: String, directory: String, writable: Bool, opening: IndexOpening, onChange: @escaping @Sendable () -> Void) {
        self.name = name; self.directory = directory; self.writable = writable; self.opening = opening; self.onChange = onChange
        writeQueue = DispatchQueue(label: "fathom-write-\(name)")
    }

    /// The generation number now serving (0 while none is open).
    public var generation: Int { lock.lock(); defer { lock.unlock() }; return current?.number ?? 0 }
    /// Generations holding files open (the current one plus retired ones still in use).
    public var openGenerationCount: Int { lock.lock(); defer { lock.unlock() }; return openGenerations }
    /// Whether a reload is in progress.
    public var isReloading: Bool { lock.lock(); defer { lock.unlock() }; return reloading }
    /// The current generation, if any.
    public var currentGeneration: IndexGeneration? { lock.lock(); defer { lock.unlock() }; return current }
    /// Why the first open failed, if it did.
    public var failure: String? { lock.lock(); defer { lock.unlock() }; return lastError }
    /// Writes waiting for the writer or running now.
    public var queuedWrites: Int { lock.lock(); defer { lock.unlock() }; return pendingWrites }

    /// Whether the directory was republished since the serving generation was opened (and
    /// the new one has not already failed to open): what `--watch` reloads on.
    public var isRepublished: Bool {
        guard let now = DirectorySignature.of(directory) else { return false }
        lock.lock(); defer { lock.unlock() }
        return current != nil && !reloading && now != servedSignature && now != failedSignature
    }

    /// Borrows the current generation for one request.
    public func lease() throws -> IndexLease {
        while true {
            lock.lock()
            guard let g = current else {
                let reason = lastError ?? "the index is being opened"
                lock.unlock()
                throw IndexAvailability.notReady(name: name, reason: reason)
            }
            lock.unlock()
            // A generation retired and closed between the two steps: take the new current one.
            if let (i, v) = g.acquire() { return IndexLease(index: i, generation: g, version: v) }
        }
    }

    /// Opens the directory as a new generation and swaps it in; the old generation closes
    /// when its last query ends. Throws the open error (the old generation keeps serving),
    /// or `ReloadInProgress` when another reload of this index is running.
    ///
    /// A writable index is re-opened: writes wait, the old generation's writer is closed
    /// (its snapshot keeps serving the searches running on it), and the directory is opened
    /// for writing again, replaying its log. If that open fails, searches continue on the old
    /// generation's last snapshot and writes answer 503 until a reload succeeds.
    @discardableResult
    public func reload() throws -> IndexGeneration {
        lock.lock()
        if reloading { lock.unlock(); throw ReloadInProgress(name: name) }
        reloading = true
        lock.unlock()
        defer { lock.lock(); reloading = false; lock.unlock(); onChange() }
        if writable { writeLock.lock() }
        defer { if writable { writeLock.unlock() } }
        return try openGeneration()
    }

    /// Opens and swaps in a new generation. For a writable index the caller holds `writeLock`.
    private func openGeneration() throws -> IndexGeneration {
        // Taken before the open: a publish during the open shows as a change next time.
        let signature = DirectorySignature.of(directory)
        let idx: VectorIndex
        var writer: MutableVectorIndex? = nil
        var version: Int? = nil
        do {
            if writable {
                // One writer per directory, in this process too: the old one lets go first.
                currentGeneration?.closeWriter()
                let w = try opening.writer(directory)
                writer = w; idx = w.snapshot(); version = w.loggedUpdates
            } else {
                idx = try opening.readOnly(directory)
            }
        } catch {
            lock.lock()
            if current == nil { lastError = "\(error)" }
            if writable { writerFailure = "\(error)" }
            failedSignature = signature
            lock.unlock()
            throw error
        }
        lock.lock()
        let g = IndexGeneration(number: nextNumber, index: idx, writer: writer, version: version) { [weak self] _ in
            guard let self else { return }
            self.lock.lock(); self.openGenerations -= 1; self.lock.unlock()
            self.onChange()
        }
        nextNumber += 1
        openGenerations += 1
        let old = current
        current = g
        lastError = nil
        writerFailure = nil
        servedSignature = signature
        failedSignature = nil
        lock.unlock()
        old?.retire()
        return g
    }

    /// Runs one write on this index's writer: queued behind the writes before it (at most
    /// `queueLimit` wait; one more is refused with ``WriteRefusal/queueFull(name:limit:)``),
    /// then `body` runs on the write queue holding the write lock, with the current
    /// generation and its writer. `body` applies and flushes the write and publishes the
    /// writer's new snapshot to the generation before it returns.
    ///
    /// A write that fails in the library for another reason than its input (an IO error or a
    /// full disk while flushing) may have left updates applied but not durable in the
    /// writer; the index is then re-opened from its log (a new generation) so that nothing
    /// unacknowledged is published by a later flush.
    public func write<T: Sendable>(queueLimit: Int, _ body: @escaping @Sendable (IndexGeneration, MutableVectorIndex) throws -> T) async throws -> T {
        guard writable else { throw WriteRefusal.readOnly(name: name) }
        guard admitWrite(queueLimit: queueLimit) else { throw WriteRefusal.queueFull(name: name, limit: queueLimit) }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            writeQueue.async { [self] in
                let r = Result { try self.writeNow(body) }
                lock.lock(); pendingWrites -= 1; lock.unlock()
                c.resume(with: r)
            }
        }
    }

    /// Counts a write in, unless `queueLimit` already wait besides the one running.
    private func admitWrite(queueLimit: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard pendingWrites <= queueLimit else { return false }
        pendingWrites += 1
        return true
    }

    static let inputErrors: Set<FathomError.Code> = [.invalidArgument, .dimensionMismatch, .nonFiniteValue]

    private func writeNow<T>(_ body: (IndexGeneration, MutableVectorIndex) throws -> T) throws -> T {
        writeLock.lock(); defer { writeLock.unlock() }
        lock.lock()
        let g = current, failure = writerFailure, served = servedSignature, first = lastError
        lock.unlock()
        guard let g, g.isWritable, let w = g.writer else {
            let why = failure.map { "its writer could not be re-opened (\($0)); searches continue on the last snapshot; reload to retry" }
                ?? first ?? "the index is being opened"
            throw IndexAvailability.notReady(name: name, reason: why)
        }
        guard let now = DirectorySignature.of(directory), now == served else {
            throw WriteRefusal.replaced(name: name, directory: directory)
        }
        do { return try body(g, w) } catch let e as FathomError where !Self.inputErrors.contains(e.code) {
            lock.lock()
            let free = !reloading
            if free { reloading = true }
            lock.unlock()
            if free {
                // (A reload waiting for the write lock re-opens it anyway.)
                _ = try? openGeneration()
                lock.lock(); reloading = false; lock.unlock()
                onChange()
            }
            throw e
        }
    }

    /// Closes the writer of a writable index (at shutdown), after the write running now.
    func closeWriter() {
        guard writable else { return }
        writeLock.lock(); defer { writeLock.unlock() }
        currentGeneration?.closeWriter()
    }
}

/// What identifies one published generation of an index directory: the directory's and its
/// manifest's device, inode and modification time (symlinks followed). The build's atomic
/// publish (rename or RENAME_EXCHANGE) changes it. A value type, `Sendable`.
public struct DirectorySignature: Sendable, Hashable {
    var dirDevice: UInt64, dirInode: UInt64, manifestInode: UInt64, manifestMtimeNs: Int64

    /// The signature of `directory` now, or nil when it or its manifest.json cannot be read.
    public static func of(_ directory: String) -> DirectorySignature? {
        var d = stat(), m = stat()
        guard stat(directory, &d) == 0, stat(directory + "/manifest.json", &m) == 0 else { return nil }
        return DirectorySignature(dirDevice: UInt64(d.st_dev), dirInode: UInt64(d.st_ino), manifestInode: UInt64(m.st_ino),
                                  manifestMtimeNs: Int64(m.st_mtim.tv_sec) * 1_000_000_000 + Int64(m.st_mtim.tv_nsec))
    }
}

/// A reload was asked for while one of the same index is still running. A value type, `Sendable`.
public struct ReloadInProgress: Error, Sendable { public let name: String }

/// The indexes a server serves, by name.
///
/// Thread-safety: the set of names is fixed at init; each ``ServedIndex`` is thread-safe.
public final class IndexRegistry: Sendable {
    public let indexes: [String: ServedIndex]
    /// Names in the order given on the command line.
    public let names: [String]

    init(_ specs: [IndexSpec], opening: IndexOpening, onChange: @escaping @Sendable () -> Void) {
        var d = [String: ServedIndex]()
        for s in specs { d[s.name] = ServedIndex(name: s.name, directory: s.directory, writable: s.writable, opening: opening, onChange: onChange) }
        indexes = d
        names = specs.map(\.name)
    }

    public subscript(name: String) -> ServedIndex? { indexes[name] }

    /// Every index has an open generation.
    public var allReady: Bool { names.allSatisfy { indexes[$0]!.generation > 0 } }
}

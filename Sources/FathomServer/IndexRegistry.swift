import Fathom
import Foundation

/// One opened generation of an index directory: a ``VectorIndex`` plus the number of
/// queries using it.
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
    private let lock = NSLock()
    private var _index: VectorIndex?
    private var users = 0
    private var retired = false
    private let onClose: @Sendable (IndexGeneration) -> Void

    init(number: Int, index: VectorIndex, onClose: @escaping @Sendable (IndexGeneration) -> Void) {
        self.number = number
        self.openedAt = Date()
        self._index = index
        self.onClose = onClose
    }

    /// Takes a reference; nil if the generation is already closed.
    func acquire() -> VectorIndex? {
        lock.lock(); defer { lock.unlock() }
        guard let i = _index else { return nil }
        users += 1
        return i
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

    /// Last reference: the index (with its pooled searchers) deallocates, closing its files
    /// and IO contexts, once the caller drops `index`.
    private func close(_ index: VectorIndex) {
        onClose(self)
    }

    /// Whether the generation still holds its index open.
    public var isOpen: Bool { lock.lock(); defer { lock.unlock() }; return _index != nil }
    /// Queries using this generation now.
    public var activeQueries: Int { lock.lock(); defer { lock.unlock() }; return users }
}

/// A borrowed generation: the caller must call `release()` exactly once (from any thread).
/// While held, the generation's index stays open even if a reload retired it.
public struct IndexLease: Sendable {
    public let index: VectorIndex
    public let generation: IndexGeneration
    /// Gives the reference back (closing a retired generation after its last query).
    public func release() { generation.release() }
}

/// Why an index cannot be used now. A value type, `Sendable`.
public enum IndexAvailability: Error, Sendable, Equatable {
    case unknown(name: String)
    case notReady(name: String, reason: String)
}

/// One served index name and its current generation.
///
/// Thread-safety: all methods may be called concurrently; `current` is swapped under a lock,
/// and reloads of one index are serialised (a reload while another runs is refused).
public final class ServedIndex: @unchecked Sendable {
    public let name: String
    public let directory: String
    let open: @Sendable (String) throws -> VectorIndex
    private let lock = NSLock()
    private var current: IndexGeneration?
    private var reloading = false
    private var lastError: String?
    private var nextNumber = 1
    private var openGenerations = 0
    private var servedSignature: DirectorySignature?
    private var failedSignature: DirectorySignature?
    let onChange: @Sendable () -> Void

    init(name: String, directory: String, open: @escaping @Sendable (String) throws -> VectorIndex,
         onChange: @escaping @Sendable () -> Void) {
        self.name = name; self.directory = directory; self.open = open; self.onChange = onChange
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
            if let i = g.acquire() { return IndexLease(index: i, generation: g) }
        }
    }

    /// Opens the directory as a new generation and swaps it in; the old generation closes
    /// when its last query ends. Throws the open error (the old generation keeps serving),
    /// or `ReloadInProgress` when another reload of this index is running.
    @discardableResult
    public func reload() throws -> IndexGeneration {
        lock.lock()
        if reloading { lock.unlock(); throw ReloadInProgress(name: name) }
        reloading = true
        lock.unlock()
        defer { lock.lock(); reloading = false; lock.unlock(); onChange() }
        // Taken before the open: a publish during the open shows as a change next time.
        let signature = DirectorySignature.of(directory)
        let idx: VectorIndex
        do { idx = try open(directory) } catch {
            lock.lock(); if current == nil { lastError = "\(error)" }; failedSignature = signature; lock.unlock()
            throw error
        }
        lock.lock()
        let g = IndexGeneration(number: nextNumber, index: idx) { [weak self] _ in
            guard let self else { return }
            self.lock.lock(); self.openGenerations -= 1; self.lock.unlock()
            self.onChange()
        }
        nextNumber += 1
        openGenerations += 1
        let old = current
        current = g
        lastError = nil
        servedSignature = signature
        failedSignature = nil
        lock.unlock()
        old?.retire()
        return g
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

    init(_ specs: [(name: String, directory: String)], open: @escaping @Sendable (String) throws -> VectorIndex,
         onChange: @escaping @Sendable () -> Void) {
        var d = [String: ServedIndex]()
        for s in specs { d[s.name] = ServedIndex(name: s.name, directory: s.directory, open: open, onChange: onChange) }
        indexes = d
        names = specs.map(\.name)
    }

    public subscript(name: String) -> ServedIndex? { indexes[name] }

    /// Every index has an open generation.
    public var allReady: Bool { names.allSatisfy { indexes[$0]!.generation > 0 } }
}

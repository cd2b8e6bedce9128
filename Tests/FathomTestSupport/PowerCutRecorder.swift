import Fathom
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Power-loss simulation in the manner of ALICE (Pillai et al., OSDI 2014), through the storage
/// layer's seam (``FileOperations``): bound around a piece of work with ``record(_:)``, it
/// performs every call on the real file system and logs, for the tree under `root`, every
/// write (with its bytes), ftruncate, `O_TRUNC` open, fsync of a file, fsync of a directory,
/// and every namespace change (create, mkdir, rename, `RENAME_EXCHANGE`, unlink, rmdir) in
/// the order the calls completed. ``materialize(_:into:)`` then writes, into a fresh
/// directory, a state a power cut at any point of that log could leave on disk.
///
/// The model (docs/reliability.md, "Power-loss model") — what Linux ext4 (data=ordered) and
/// xfs guarantee, taken conservatively:
/// - **File data and size.** Writes and truncations of a file issued before the last
///   completed `fsync` of that file are durable. Any subset of those issued after it may
///   survive, each whole, dropped, torn (any subset of its 4 KiB pages, holes read as zeros)
///   or as zeros (the size reached the disk, the data did not, as xfs can leave it). An fsync
///   of a file makes nothing of the namespace durable, not even its own name.
/// - **Namespace.** A rename or exchange is atomic in its directory. Changes of a directory
///   issued before the last completed fsync of that directory are durable.
///   ``NamespaceModel/journaled`` (ext4, xfs): the namespace changes reach the disk in the
///   order they were issued (one journal), so a cut keeps a prefix of them that holds at least
///   every durable one. ``NamespaceModel/perDirectory`` (stricter, POSIX): each directory
///   keeps its own prefix, independently of the others.
///
/// The recorder starts from the tree as it is at init (taken as durable); a path outside
/// `root` is passed through and not logged. `skipSync` names files whose fsyncs are performed
/// but not logged: a test uses it to simulate code that forgot one, which the checks of the
/// materialized states must then catch.
///
/// ```swift
/// let rec = try PowerCutRecorder(root: dir.path + "/root")
/// try rec.record { try IndexBuilder(input: …, output: dir.path + "/root/idx", options: o).build() }
/// #expect(rec.modelMismatches().isEmpty)           // the seam saw every change
/// try rec.materialize(.init(position: 17, seed: 3), into: dir.path + "/cut")
/// ```
///
/// Thread safety: `Sendable`; every call and the log are behind one lock, so the recorded
/// order is the order the calls completed in, from any thread of the bound work (work handed
/// to Dispatch threads outside the bound task is not seen: ``modelMismatches(ignoring:)``
/// reports what the log missed).
public final class PowerCutRecorder: FileOperations, @unchecked Sendable {
    /// How the namespace changes after the last directory fsync survive a cut.
    public enum NamespaceModel: String, Sendable, CaseIterable {
        /// One ordered journal (ext4, xfs): a prefix of all the changes.
        case journaled
        /// Each directory its own prefix (stricter than ext4 and xfs).
        case perDirectory
    }

    /// What becomes of the writes after the last fsync (and the namespace changes after the
    /// last durable one).
    public enum Loss: String, Sendable, CaseIterable {
        /// Everything issued survives (what a kill -9 leaves).
        case keepNothingLost
        /// Only what was durable survives.
        case loseEverything
        /// A seeded random choice per write and per directory.
        case random
    }

    /// A cut: the first `position` logged events happened, the rest did not; `seed` draws the
    /// random choices.
    public struct Cut: Sendable, CustomStringConvertible {
        public var position: Int
        public var seed: UInt64
        public var loss: Loss
        public var namespace: NamespaceModel
        public init(position: Int, seed: UInt64, loss: Loss = .random, namespace: NamespaceModel = .journaled) {
            self.position = position; self.seed = seed; self.loss = loss; self.namespace = namespace
        }
        public var description: String { "cut at event \(position) (\(loss.rawValue), \(namespace.rawValue), seed \(seed))" }
    }

    /// What a materialized cut did to the writes after the durability points.
    public struct Outcome: Sendable, CustomStringConvertible {
        public var pendingWrites = 0, kept = 0, dropped = 0, torn = 0, zeroed = 0
        public var pendingNamespaceChanges = 0, keptNamespaceChanges = 0
        public var description: String {
            "\(pendingWrites) unsynced writes/truncations (\(kept) kept, \(dropped) dropped, \(torn) torn, \(zeroed) zeroed), \(keptNamespaceChanges) of \(pendingNamespaceChanges) unsynced namespace changes kept"
        }
    }

    /// One directory entry change: `name` in directory node `dir` now names `node` (nil: removed).
    struct Change { var dir: Int; var name: String; var node: Int? }

    enum Event {
        case write(node: Int, offset: Int, bytes: [UInt8])
        case truncate(node: Int, size: Int)
        case fileSync(node: Int)
        case dirSync(node: Int)
        case namespace(what: String, changes: [Change])
    }

    /// The recorded tree's root (absolute, no trailing slash).
    public let root: String
    private let skipSync: @Sendable (String) -> Bool
    private let lock = NSLock()
    private var events: [Event] = []
    private var isDirectory: [Bool] = []            // by node
    private var initialContent: [Int: [UInt8]] = [:]
    private var initialEntries: [Int: [String: Int]] = [:]
    private var liveEntries: [Int: [String: Int]] = [:]
    private var nodeOfInode: [UInt64: Int] = [:]
    private var device: UInt64 = 0

    /// Snapshots the tree under `root` (its current bytes count as durable).
    public init(root: String, skipSync: @escaping @Sendable (String) -> Bool = { _ in false }) throws {
        let r = Self.normalize(root)
        self.root = r
        self.skipSync = skipSync
        var st = stat()
        guard lstat(r, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw FathomError(.fileNotFound, "the recorded root must be a directory", path: r)
        }
        device = UInt64(st.st_dev)
        _ = try snapshot(r, st)
        liveEntries = initialEntries
    }

    private func newNode(directory: Bool, inode: UInt64?) -> Int {
        isDirectory.append(directory)
        let n = isDirectory.count - 1
        if let inode { nodeOfInode[inode] = n }
        if directory { initialEntries[n] = [:]; liveEntries[n] = [:] } else { initialContent[n] = [] }
        return n
    }

    private func snapshot(_ path: String, _ st: stat) throws -> Int {
        if st.st_mode & S_IFMT == S_IFDIR {
            let n = newNode(directory: true, inode: UInt64(st.st_ino))
            for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
                var cst = stat()
                guard lstat(path + "/" + name, &cst) == 0 else { continue }
                let t = cst.st_mode & S_IFMT
                guard t == S_IFDIR || t == S_IFREG else { continue }
                initialEntries[n]![name] = try snapshot(path + "/" + name, cst)
            }
            return n
        }
        let n = newNode(directory: false, inode: UInt64(st.st_ino))
        initialContent[n] = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return n
    }

    /// Runs `body` with this recorder as the storage layer's file operations.
    @discardableResult
    public func record<R>(_ body: () throws -> R) rethrows -> R {
        try StorageIO.$fileOperations.withValue(self, operation: body)
    }

    /// Events logged so far: a cut position between 0 and this.
    public var position: Int { lock.lock(); defer { lock.unlock() }; return events.count }

    /// The positions right after each logged fsync (of a file or a directory).
    public var syncPositions: [Int] {
        lock.lock(); defer { lock.unlock() }
        return events.indices.filter { if case .fileSync = events[$0] { return true }; if case .dirSync = events[$0] { return true }; return false }.map { $0 + 1 }
    }

    /// Counts of the logged events by kind (for a test's summary line).
    public var summary: String {
        lock.lock(); defer { lock.unlock() }
        var w = 0, t = 0, fs = 0, ds = 0, ns = 0
        for e in events {
            switch e {
            case .write: w += 1
            case .truncate: t += 1
            case .fileSync: fs += 1
            case .dirSync: ds += 1
            case .namespace: ns += 1
            }
        }
        return "\(events.count) events: \(w) writes, \(t) truncations, \(fs) file fsyncs, \(ds) directory fsyncs, \(ns) namespace changes"
    }

    // MARK: resolving paths and descriptors

    /// The directory node and entry name of `path`, if it lies under the root (its parent
    /// must exist in the model).
    /// `path` absolute, without empty, `.` or `..` components (no symbolic links resolved).
    static func normalize(_ path: String) -> String {
        let abs = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var parts = [Substring]()
        for c in abs.split(separator: "/") where c != "." {
            if c == ".." { _ = parts.popLast() } else { parts.append(c) }
        }
        return "/" + parts.joined(separator: "/")
    }

    private func locate(_ path: String) -> (dir: Int, name: String)? {
        let p = Self.normalize(path)
        guard p.hasPrefix(root + "/") else { return nil }
        let parts = p.dropFirst(root.count + 1).split(separator: "/").map(String.init)
        guard let last = parts.last else { return nil }
        var dir = 0
        for c in parts.dropLast() {
            guard let next = liveEntries[dir]?[c], isDirectory[next] else { return nil }
            dir = next
        }
        return (dir, last)
    }

    private func node(of fd: Int32) -> (node: Int, directory: Bool)? {
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_dev) == device, let n = nodeOfInode[UInt64(st.st_ino)] else { return nil }
        return (n, isDirectory[n])
    }

    private func log(_ what: String, _ changes: [Change]) {
        for c in changes {
            if let n = c.node { liveEntries[c.dir]![c.name] = n } else { liveEntries[c.dir]![c.name] = nil }
        }
        events.append(.namespace(what: what, changes: changes))
    }

    // MARK: FileOperations

    public func read(_ file: OpenFile, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        try SystemFileOperations().read(file, into: buffer, count: count, at: offset)
    }

    public func write(_ file: OpenFile, _ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        lock.lock(); defer { lock.unlock() }
        try SystemFileOperations().write(file, buffer, count: count, at: offset)
        if let (n, dir) = node(of: file.descriptor), !dir {
            events.append(.write(node: n, offset: offset, bytes: [UInt8](UnsafeRawBufferPointer(start: buffer, count: count))))
        }
    }

    public func sync(_ file: OpenFile) throws {
        lock.lock(); defer { lock.unlock() }
        try SystemFileOperations().sync(file)
        guard let (n, dir) = node(of: file.descriptor), !skipSync(file.path) else { return }
        events.append(dir ? .dirSync(node: n) : .fileSync(node: n))
    }

    public func open(_ path: String, flags: Int32, permissions: mode_t) throws -> Int32 {
        lock.lock(); defer { lock.unlock() }
        var st = stat()
        let existed = lstat(path, &st) == 0
        let fd = try SystemFileOperations.open(path, flags: flags, permissions: permissions)
        guard let (dir, name) = locate(path) else { return fd }
        var fst = stat()
        guard fstat(fd, &fst) == 0, UInt64(fst.st_dev) == device else { return fd }
        if !existed, flags & O_CREAT != 0 {
            let n = newNode(directory: false, inode: UInt64(fst.st_ino))
            log("create \(path)", [Change(dir: dir, name: name, node: n)])
        } else if flags & O_TRUNC != 0, flags & (O_WRONLY | O_RDWR) != 0, let n = nodeOfInode[UInt64(fst.st_ino)] {
            events.append(.truncate(node: n, size: 0))
        }
        return fd
    }

    public func truncate(_ file: OpenFile, to size: Int) throws {
        lock.lock(); defer { lock.unlock() }
        try SystemFileOperations.truncate(file, to: size)
        if let (n, dir) = node(of: file.descriptor), !dir { events.append(.truncate(node: n, size: size)) }
    }

    public func rename(_ from: String, to: String) throws {
        lock.lock(); defer { lock.unlock() }
        let src = locate(from), dst = locate(to)
        try SystemFileOperations.rename(from, to: to)
        if let src, let dst, let n = liveEntries[src.dir]?[src.name], !(src.dir == dst.dir && src.name == dst.name) {
            log("rename \(from) → \(to)", [Change(dir: src.dir, name: src.name, node: nil), Change(dir: dst.dir, name: dst.name, node: n)])
        }
    }

    public func exchange(_ a: String, _ b: String) throws -> Bool {
        lock.lock(); defer { lock.unlock() }
        let la = locate(a), lb = locate(b)
        guard try SystemFileOperations.exchange(a, b) else { return false }
        if let la, let lb, let na = liveEntries[la.dir]?[la.name], let nb = liveEntries[lb.dir]?[lb.name] {
            log("exchange \(a) ↔ \(b)", [Change(dir: la.dir, name: la.name, node: nb), Change(dir: lb.dir, name: lb.name, node: na)])
        }
        return true
    }

    public func removeFile(_ path: String) throws {
        lock.lock(); defer { lock.unlock() }
        let l = locate(path)
        try SystemFileOperations.removeFile(path)
        if let l, liveEntries[l.dir]?[l.name] != nil { log("unlink \(path)", [Change(dir: l.dir, name: l.name, node: nil)]) }
    }

    public func removeDirectory(_ path: String) throws {
        lock.lock(); defer { lock.unlock() }
        let l = locate(path)
        try SystemFileOperations.removeDirectory(path)
        if let l, liveEntries[l.dir]?[l.name] != nil { log("rmdir \(path)", [Change(dir: l.dir, name: l.name, node: nil)]) }
    }

    public func makeDirectory(_ path: String, permissions: mode_t) throws {
        lock.lock(); defer { lock.unlock() }
        var st = stat()
        let existed = lstat(path, &st) == 0
        try SystemFileOperations.makeDirectory(path, permissions: permissions)
        guard !existed, let l = locate(path), lstat(path, &st) == 0 else { return }
        let n = newNode(directory: true, inode: UInt64(st.st_ino))
        log("mkdir \(path)", [Change(dir: l.dir, name: l.name, node: n)])
    }

    // MARK: materializing a cut

    /// Writes into `destination` (created; must not exist) the tree a power cut at
    /// `cut.position` may leave under the root (see the type's model), choosing what survives
    /// of the unsynced writes and namespace changes with `cut.seed`.
    @discardableResult
    public func materialize(_ cut: Cut, into destination: String) throws -> Outcome {
        lock.lock()
        let evs = Array(events.prefix(max(0, min(cut.position, events.count))))
        let isDir = isDirectory, content0 = initialContent, entries0 = initialEntries
        lock.unlock()
        var rng = SeededRandom(seed: cut.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(cut.position))
        var outcome = Outcome()
        let c = evs.count

        // Durability points: the last fsync of each file and of each directory before the cut.
        var lastFileSync = [Int: Int](), lastDirSync = [Int: Int]()
        for (i, e) in evs.enumerated() {
            if case .fileSync(let n) = e { lastFileSync[n] = i }
            if case .dirSync(let n) = e { lastDirSync[n] = i }
        }

        // Namespace: per directory, its changes in order (event index, change).
        var perDir = [Int: [(Int, Change)]]()
        for (i, e) in evs.enumerated() {
            if case .namespace(_, let changes) = e { for ch in changes { perDir[ch.dir, default: []].append((i, ch)) } }
        }
        var keepBefore = [Int: Int]()   // per directory: its changes at events < this survive
        switch cut.namespace {
        case .journaled:
            // The newest change a directory fsync made durable bounds the prefix from below.
            var floor = 0
            for (dir, list) in perDir {
                guard let s = lastDirSync[dir] else { continue }
                if let last = list.last(where: { $0.0 < s }) { floor = max(floor, last.0 + 1) }
            }
            let boundaries = Array(Set(perDir.values.flatMap { $0.map { $0.0 + 1 } }.filter { $0 > floor })).sorted()
            let t: Int
            switch cut.loss {
            case .keepNothingLost: t = c
            case .loseEverything: t = floor
            case .random: t = ([floor] + boundaries)[Int(rng.next() % UInt64(boundaries.count + 1))]
            }
            for dir in perDir.keys { keepBefore[dir] = t }
            let ops = Set(perDir.values.flatMap { $0.map(\.0) })
            outcome.pendingNamespaceChanges = ops.filter { $0 >= floor }.count
            outcome.keptNamespaceChanges = ops.filter { $0 >= floor && $0 < t }.count
        case .perDirectory:
            for (dir, list) in perDir {
                let ops = Array(Set(list.map(\.0))).sorted()
                let durable = lastDirSync[dir].map { s in ops.filter { $0 < s }.count } ?? 0
                let k: Int
                switch cut.loss {
                case .keepNothingLost: k = ops.count
                case .loseEverything: k = durable
                case .random: k = durable + Int(rng.next() % UInt64(ops.count - durable + 1))
                }
                keepBefore[dir] = k < ops.count ? ops[k] : c
                outcome.pendingNamespaceChanges += ops.count - durable
                outcome.keptNamespaceChanges += k - durable
            }
        }
        var entries = entries0
        for (i, e) in evs.enumerated() {
            guard case .namespace(_, let changes) = e else { continue }
            for ch in changes where i < keepBefore[ch.dir, default: c] {
                if entries[ch.dir] == nil { entries[ch.dir] = [:] }
                entries[ch.dir]![ch.name] = ch.node
            }
        }

        // File data: durable up to the file's last fsync; what follows survives as drawn.
        var content = content0
        for (i, e) in evs.enumerated() {
            let (n, isData): (Int, Bool) = {
                switch e {
                case .write(let n, _, _), .truncate(let n, _): return (n, true)
                default: return (0, false)
                }
            }()
            guard isData else { continue }
            var bytes = content[n] ?? []
            let durable = i < (lastFileSync[n] ?? -1)
            if !durable { outcome.pendingWrites += 1 }
            switch e {
            case .truncate(_, let size):
                if durable || cut.loss == .keepNothingLost || (cut.loss == .random && rng.next() % 2 == 0) {
                    if !durable { outcome.kept += 1 }
                    if size < bytes.count { bytes.removeLast(bytes.count - size) } else { bytes += [UInt8](repeating: 0, count: size - bytes.count) }
                } else { outcome.dropped += 1 }
            case .write(_, let offset, let data):
                var fate = 0   // 0 whole, 1 dropped, 2 torn, 3 zeros
                if !durable {
                    switch cut.loss {
                    case .keepNothingLost: fate = 0
                    case .loseEverything: fate = 1
                    case .random:
                        let r = rng.next() % 100
                        fate = r < 35 ? 0 : r < 60 ? 1 : r < 85 ? 2 : 3
                    }
                    switch fate { case 0: outcome.kept += 1; case 1: outcome.dropped += 1; case 2: outcome.torn += 1; default: outcome.zeroed += 1 }
                }
                func put(_ from: Int, _ to: Int, zeros: Bool) {   // data[from..<to] at offset + from
                    let end = offset + to
                    if bytes.count < end { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
                    if !zeros { for j in from..<to { bytes[offset + j] = data[j] } }
                }
                switch fate {
                case 0: put(0, data.count, zeros: false)
                case 1: break
                case 2:
                    // Each 4 KiB page of the file the write touches survives or not.
                    var from = 0
                    while from < data.count {
                        let to = min(data.count, (offset + from) / 4096 * 4096 + 4096 - offset)
                        if rng.next() % 2 == 0 { put(from, to, zeros: false) }
                        from = to
                    }
                default:
                    if bytes.count < offset + data.count { put(max(0, bytes.count - offset), data.count, zeros: true) }
                }
            default: break
            }
            content[n] = bytes
        }

        // Write the tree.
        let fm = FileManager.default
        guard !fm.fileExists(atPath: destination) else {
            throw FathomError(.invalidArgument, "the destination of a materialized cut must not exist", path: destination)
        }
        func emit(_ node: Int, _ path: String, depth: Int) throws {
            guard depth < 64 else { return }
            if isDir[node] {
                try fm.createDirectory(atPath: path, withIntermediateDirectories: false)
                for (name, child) in (entries[node] ?? [:]).sorted(by: { $0.key < $1.key }) { try emit(child, path + "/" + name, depth: depth + 1) }
            } else {
                guard fm.createFile(atPath: path, contents: Data(content[node] ?? [])) else {
                    throw FathomError(.io, "cannot write a materialized file", path: path)
                }
            }
        }
        try emit(0, destination, depth: 0)
        return outcome
    }

    /// Differences between the real tree under the root and the model with every logged
    /// event applied (empty: the seam saw every change of the recorded work). Paths for which
    /// `ignoring` is true (relative to the root) are not compared.
    public func modelMismatches(ignoring: (String) -> Bool = { _ in false }) throws -> [String] {
        let scratch = NSTemporaryDirectory() + "/fathom-model-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try materialize(Cut(position: Int.max, seed: 0, loss: .keepNothingLost), into: scratch)
        func tree(_ base: String) -> [String: Data?] {
            var out = [String: Data?]()
            guard let e = FileManager.default.enumerator(atPath: base) else { return out }
            while let rel = e.nextObject() as? String {
                guard !ignoring(rel) else { continue }
                var st = stat()
                guard lstat(base + "/" + rel, &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR { out[rel] = .some(nil) }
                else if st.st_mode & S_IFMT == S_IFREG { out[rel] = FileManager.default.contents(atPath: base + "/" + rel) }
            }
            return out
        }
        let real = tree(root), model = tree(scratch)
        var problems = [String]()
        for (k, v) in real.sorted(by: { $0.key < $1.key }) {
            guard let m = model[k] else { problems.append("\(k): on disk, not in the model"); continue }
            if m != v { problems.append("\(k): the model's bytes differ from the disk's (\(m?.count ?? -1) vs \(v?.count ?? -1) bytes)") }
        }
        for k in model.keys.sorted() where real[k] == nil { problems.append("\(k): in the model, not on disk") }
        return problems
    }
}

import CAIO
import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Thin typed wrappers over open/pread/pwrite/fstat/fsync/close, modelled on swift-system's
// `FileDescriptor`: every failure becomes a `FathomError.system(...)` that carries the path
// (ENOSPC/EDQUOT -> `.diskFull`, ENOENT/EISDIR -> `.fileNotFound`, the rest -> `.io`),
// EINTR is retried, and short reads/writes are looped. Used by the vector-file readers and
// writers; internal to FathomStorage.

// File-scope shims: inside `SystemFile` the names `close`, `stat`, ... are its own members.
private func sysOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func sysClose(_ fd: Int32) -> Int32 { close(fd) }
private func sysFsync(_ fd: Int32) -> Int32 { fsync(fd) }
private func sysFstat(_ fd: Int32, _ st: inout stat) -> Int32 { fstat(fd, &st) }
private func sysPread(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int, _ off: off_t) -> Int { pread(fd, p, n, off) }
private func sysFcntlGetFlags(_ fd: Int32) -> Int32 { fcntl(fd, F_GETFL) }
private func sysFcntlSetFlags(_ fd: Int32, _ flags: Int32) -> Int32 { fcntl(fd, F_SETFL, flags) }
private func sysPwrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int, _ off: off_t) -> Int { pwrite(fd, p, n, off) }
private func sysFtruncate(_ fd: Int32, _ size: off_t) -> Int32 { ftruncate(fd, size) }
private func sysStatvfs(_ path: String, _ st: inout statvfs) -> Int32 { statvfs(path, &st) }

/// An open file descriptor plus the path it was opened from (for error messages).
///
/// A value type with no ownership semantics, like swift-system's `FileDescriptor`: whoever
/// opens it must `close()` it exactly once. Reads and writes take explicit offsets
/// (`pread`/`pwrite`), so a `SystemFile` carries no cursor.
struct SystemFile {
    /// The raw descriptor.
    let rawValue: Int32
    /// The path the descriptor was opened from.
    let path: String

    /// How a file is opened.
    enum AccessMode {
        case readOnly, writeOnly, readWrite
        var flags: Int32 {
            switch self {
            case .readOnly: return O_RDONLY
            case .writeOnly: return O_WRONLY
            case .readWrite: return O_RDWR
            }
        }
    }

    /// Creation options (`O_CREAT`, `O_TRUNC`, `O_EXCL`).
    struct OpenOptions: OptionSet {
        let rawValue: Int32
        static let create = OpenOptions(rawValue: O_CREAT)
        static let truncate = OpenOptions(rawValue: O_TRUNC)
        static let exclusiveCreate = OpenOptions(rawValue: O_EXCL)
        /// Bypass the page cache (reads and writes must be 4 KiB-aligned).
        static let direct = OpenOptions(rawValue: fathomODirect)
    }

    /// What `fstat` says about the file.
    struct Status {
        /// Size in bytes.
        var size: Int
        /// `S_IFMT` bits of `st_mode`.
        var type: mode_t
        var isRegularFile: Bool { type == S_IFREG }
        var isDirectory: Bool { type == S_IFDIR }
    }

    /// Opens `path` (always with `O_CLOEXEC`); `permissions` apply when the file is created.
    /// A file opened for reading must be a regular file: a directory, FIFO, socket or device is
    /// a `fileNotFound` error (opened non-blocking first, so that a FIFO without a writer
    /// cannot hang the open).
    static func open(_ path: String, _ mode: AccessMode, options: OpenOptions = [],
                     permissions: mode_t = 0o644) throws -> SystemFile {
        let probe = mode == .readOnly ? O_NONBLOCK : 0
        while true {
            let fd = sysOpen(path, mode.flags | options.rawValue | O_CLOEXEC | probe, permissions)
            if fd >= 0 {
                let f = SystemFile(rawValue: fd, path: path)
                if mode == .readOnly {
                    do {
                        let st = try f.status()
                        guard st.isRegularFile else {
                            let what = st.isDirectory ? "a directory" : (st.type == S_IFIFO ? "a FIFO" : (st.type == S_IFSOCK ? "a socket" : "a device"))
                            throw FathomError(.fileNotFound, "is \(what), not a regular file", path: path)
                        }
                        guard sysFcntlSetFlags(fd, sysFcntlGetFlags(fd) & ~O_NONBLOCK) == 0 else {
                            throw FathomError.system("fcntl", path: path, errno: errno)
                        }
                    } catch { f.closeIgnoringErrors(); throw error }
                }
                return f
            }
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system(options.contains(.create) ? "create" : "open", path: path, errno: e)
        }
    }

    /// `fstat`.
    func status() throws -> Status {
        var st = stat()
        guard sysFstat(rawValue, &st) == 0 else { throw FathomError.system("fstat", path: path, errno: errno) }
        return Status(size: Int(st.st_size), type: st.st_mode & S_IFMT)
    }

    /// Reads up to `count` bytes at `offset`, looping over short reads and EINTR; returns the
    /// number of bytes read, which is less than `count` only at the end of the file.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        if FaultInjector.armed, let fault = FaultInjector.hit(.read, path) {
            throw FathomError.system("read", path: path, errno: fault.errno, offset: UInt64(offset))
        }
        var done = 0
        while done < count {
            let r = sysPread(rawValue, buffer + done, count - done, off_t(offset + done))
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FathomError.system("read", path: path, errno: e, offset: UInt64(offset + done))
            }
            if r == 0 { break }
            done += r
        }
        return done
    }

    /// Writes all `count` bytes at `offset`, looping over short writes and EINTR.
    /// ENOSPC/EDQUOT surface as `FathomError.Code.diskFull`.
    func write(_ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        var done = 0
        if FaultInjector.armed, let fault = FaultInjector.hit(.write, path) {
            if fault == .shortWrite && count > 1 {
                // Part of the bytes reach the file, then the device fails.
                done = max(0, sysPwrite(rawValue, buffer, count / 2, off_t(offset)))
                throw FathomError.system("write (short: \(done) of \(count) bytes written)", path: path, errno: EIO, offset: UInt64(offset + done))
            }
            throw FathomError.system("write", path: path, errno: fault.errno, offset: UInt64(offset))
        }
        while done < count {
            let r = sysPwrite(rawValue, buffer + done, count - done, off_t(offset + done))
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FathomError.system("write", path: path, errno: e, offset: UInt64(offset + done))
            }
            if r == 0 {  // should not happen for regular files; avoid spinning forever
                throw FathomError.system("write", path: path, errno: EIO, offset: UInt64(offset + done))
            }
            done += r
        }
    }

    /// `fsync`: data and metadata reach the device.
    func sync() throws {
        if FaultInjector.armed, let fault = FaultInjector.hit(.fsync, path) {
            throw FathomError.system("fsync", path: path, errno: fault.errno)
        }
        while sysFsync(rawValue) != 0 {
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("fsync", path: path, errno: e)
        }
    }

    /// `ftruncate`: cuts (or zero-extends) the file to `size` bytes.
    func truncate(to size: Int) throws {
        while sysFtruncate(rawValue, off_t(size)) != 0 {
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("ftruncate", path: path, errno: e, offset: UInt64(size))
        }
    }

    /// `close`. Not retried on EINTR (on Linux the descriptor is released regardless).
    func close() throws {
        guard sysClose(rawValue) == 0 else { throw FathomError.system("close", path: path, errno: errno) }
    }

    /// `close`, ignoring errors (for deinit and error paths).
    func closeIgnoringErrors() { _ = sysClose(rawValue) }
}

// Little-endian integer loads/stores at arbitrary alignment.
extension UnsafeRawPointer {
    @inline(__always) func loadLE<T: FixedWidthInteger>(fromByteOffset off: Int = 0, as: T.Type) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: off, as: T.self))
    }
}

extension UnsafeMutableRawPointer {
    @inline(__always) func storeLE<T: FixedWidthInteger>(_ value: T, toByteOffset off: Int = 0) {
        storeBytes(of: value.littleEndian, toByteOffset: off, as: T.self)
    }
}

// MARK: - Directory entries: rename, exchange, remove (each followed by the caller's fsync of
// the directories involved), and the advisory lock of a build.

/// `rename(2)`: replaces `to` atomically (a directory only replaces an empty one).
public func renamePath(_ from: String, _ to: String) throws {
    guard Glibc.rename(from, to) == 0 else {
        let e = errno
        throw FathomError.system("rename to \(to)", path: from, errno: e)
    }
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two existing paths atomically. Returns false, without
/// touching either, when the kernel or file system does not support the exchange.
public func exchangePaths(_ a: String, _ b: String) throws -> Bool {
    let r = caio_rename_exchange(a, b)
    if r == 0 { return true }
    let e = -r
    if e == ENOSYS || e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP { return false }
    throw FathomError.system("renameat2(RENAME_EXCHANGE) with \(b)", path: a, errno: e)
}

/// Removes a file or a directory tree (no error if it is already gone), deepest entries first.
/// The caller fsyncs the parent directory to make the removal durable.
public func removeTree(_ path: String) throws {
    var st = stat()
    guard lstat(path, &st) == 0 else {
        if errno == ENOENT { return }
        throw FathomError.system("lstat", path: path, errno: errno)
    }
    if st.st_mode & S_IFMT == S_IFDIR {
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: path) }
        catch { throw FathomError(.io, "cannot list the directory (\(error.localizedDescription))", path: path) }
        for e in entries { try removeTree(path + "/" + e) }
        guard rmdir(path) == 0 || errno == ENOENT else { throw FathomError.system("rmdir", path: path, errno: errno) }
    } else {
        guard unlink(path) == 0 || errno == ENOENT else { throw FathomError.system("unlink", path: path, errno: errno) }
    }
}

/// An exclusive advisory lock (`flock`) on a lock file, held until `release()` or
/// deinit. The file holds the pid of its holder, for the error a second locker gets.
/// flock locks belong to the open file description, so two lockers in one process exclude
/// each other as two processes do.
public final class FileLock: @unchecked Sendable {
    public let path: String
    private var fd: Int32

    /// Takes the lock without waiting; nil (and the holder's pid, if it wrote one) when another
    /// open file description holds it.
    public static func tryLock(_ path: String) throws -> (lock: FileLock?, holder: Int32?) {
        let f = try SystemFile.open(path, .readWrite, options: [.create], permissions: 0o644)
        while flock(f.rawValue, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            if e == EINTR { continue }
            defer { f.closeIgnoringErrors() }
            if e == EWOULDBLOCK {
                var buf = [UInt8](repeating: 0, count: 32)
                let n = (try? buf.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: 32, at: 0) }) ?? 0
                let text = String(decoding: buf.prefix(n), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                return (nil, Int32(text))
            }
            throw FathomError.system("flock", path: path, errno: e)
        }
        do {
            guard ftruncate(f.rawValue, 0) == 0 else { throw FathomError.system("ftruncate", path: path, errno: errno) }
            try Array("\(getpid())\n".utf8).withUnsafeBytes { try f.write($0.baseAddress!, count: $0.count, at: 0) }
        } catch { f.closeIgnoringErrors(); throw error }
        return (FileLock(path: path, fd: f.rawValue), nil)
    }

    private init(path: String, fd: Int32) { self.path = path; self.fd = fd }

    /// Releases the lock (closing the descriptor releases it; the file stays, so that a
    /// concurrent locker never locks an unlinked inode).
    public func release() {
        if fd >= 0 { _ = Glibc.close(fd); fd = -1 }
    }

    deinit { release() }
}

/// Bytes free to an unprivileged writer on the file system holding `path` (statvfs f_bavail).
public func freeDiskBytes(_ path: String) throws -> UInt64 {
    var st = statvfs()
    guard sysStatvfs(path, &st) == 0 else {
        throw FathomError(.io, "cannot read the free space (statvfs: \(String(cString: strerror(errno))))", path: path)
    }
    return UInt64(st.f_bavail) * UInt64(st.f_frsize)
}

/// fsyncs a directory (after creating, renaming or deleting entries in it).
public func fsyncDirectory(_ path: String) throws {
    let d = try SystemFile.openDirectory(path)
    defer { d.closeIgnoringErrors() }
    try d.sync()
}

extension SystemFile {
    /// Opens a directory read-only (to fsync it).
    static func openDirectory(_ path: String) throws -> SystemFile {
        while true {
            let fd = sysOpen(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
            if fd >= 0 { return SystemFile(rawValue: fd, path: path) }
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("open directory", path: path, errno: e)
        }
    }
}

// MARK: - Fault injection

/// Injectable file-system faults for tests: every `read`, `write` and `fsync` of the storage
/// layer (`SystemFile`, hence every index, vector, ground-truth and scratch file and every
/// directory fsync) first asks `hit`, which fails the N-th call (counted over the calls
/// whose path starts with `pathPrefix`, so tests running in parallel do not disturb each
/// other) with EIO, ENOSPC or a short write. Disarmed, the cost is one load of `armed`.
public enum FaultInjector {
    public enum Operation: String, Sendable, CaseIterable { case read, write, fsync }
    public enum Fault: Sendable, Equatable {
        case eio, enospc
        /// Half the bytes are written, then EIO (writes only; on reads and fsyncs: EIO).
        case shortWrite
        var errno: Int32 { self == .enospc ? ENOSPC : EIO }
    }
    /// One call of the storage layer, as counted: operation, file name, and how many such
    /// calls on that file came before it (a distinct call site of a build).
    public struct Call: Hashable, Sendable, CustomStringConvertible {
        public var operation: Operation
        public var file: String
        public var ordinal: Int
        public var description: String { "\(operation.rawValue) #\(ordinal) of \(file)" }
    }

    nonisolated(unsafe) static var armed = false
    private static let lock = NSLock()
    nonisolated(unsafe) private static var prefix = ""
    nonisolated(unsafe) private static var target: (call: Int, fault: Fault, operations: Set<Operation>)?
    nonisolated(unsafe) private static var calls: [Call] = []
    nonisolated(unsafe) private static var perFile: [String: Int] = [:]
    nonisolated(unsafe) private static var fired: Call?
    nonisolated(unsafe) private static var matched = 0

    /// Starts counting the calls under `pathPrefix`; with `fault`, the `failAt`-th call (from 0)
    /// among those of `operations` fails. One arming at a time per process.
    public static func arm(pathPrefix: String, failAt: Int? = nil, fault: Fault = .eio,
                           operations: Set<Operation> = Set(Operation.allCases)) {
        lock.lock(); defer { lock.unlock() }
        prefix = pathPrefix; calls = []; perFile = [:]; fired = nil; matched = 0
        target = failAt.map { ($0, fault, operations) }
        armed = true
    }

    /// Stops; returns the calls counted and the one that failed, if any.
    @discardableResult
    public static func disarm() -> (calls: [Call], fired: Call?) {
        lock.lock(); defer { lock.unlock() }
        armed = false
        let r = (calls, fired)
        calls = []; perFile = [:]; target = nil; fired = nil
        return r
    }

    static func hit(_ op: Operation, _ path: String) -> Fault? {
        lock.lock(); defer { lock.unlock() }
        guard armed, path.hasPrefix(prefix) else { return nil }
        let name = String(path.dropFirst(prefix.count))
        let key = op.rawValue + " " + name
        let call = Call(operation: op, file: name, ordinal: perFile[key, default: 0])
        perFile[key, default: 0] += 1
        guard let t = target, t.operations.contains(op) else { calls.append(call); return nil }
        let index = matched
        matched += 1
        calls.append(call)
        guard index == t.call, fired == nil else { return nil }
        fired = call
        return op == .write ? t.fault : (t.fault == .enospc ? .enospc : .eio)
    }
}

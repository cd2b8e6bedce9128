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
// writers; internal to FathomStorage. Reads, writes and fsyncs go through the task's
// `FileOperations` (FileOperations.swift): the seam tests inject faults at.

// File-scope shims: inside `SystemFile` the names `close`, `stat`, ... are its own members.
private func sysOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func sysClose(_ fd: Int32) -> Int32 { close(fd) }
private func sysFstat(_ fd: Int32, _ st: inout stat) -> Int32 { fstat(fd, &st) }
private func sysFcntlGetFlags(_ fd: Int32) -> Int32 { fcntl(fd, F_GETFL) }
private func sysFcntlSetFlags(_ fd: Int32, _ flags: Int32) -> Int32 { fcntl(fd, F_SETFL, flags) }
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
        let fd = try StorageIO.fileOperations.open(path, flags: mode.flags | options.rawValue | O_CLOEXEC | probe, permissions: permissions)
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

    /// `fstat`.
    func status() throws -> Status {
        var st = stat()
        guard sysFstat(rawValue, &st) == 0 else { throw FathomError.system("fstat", path: path, errno: errno) }
        return Status(size: Int(st.st_size), type: st.st_mode & S_IFMT)
    }

    /// The file as the file-operations seam sees it.
    var openFile: OpenFile { OpenFile(descriptor: rawValue, path: path) }

    /// Reads up to `count` bytes at `offset`, looping over short reads and EINTR; returns the
    /// number of bytes read, which is less than `count` only at the end of the file.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        try StorageIO.fileOperations.read(openFile, into: buffer, count: count, at: offset)
    }

    /// Writes all `count` bytes at `offset`, looping over short writes and EINTR.
    /// ENOSPC/EDQUOT surface as `FathomError.Code.diskFull`.
    func write(_ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        try StorageIO.fileOperations.write(openFile, buffer, count: count, at: offset)
    }

    /// `fsync`: data and metadata reach the device.
    func sync() throws {
        try StorageIO.fileOperations.sync(openFile)
    }

    /// `ftruncate`: cuts (or zero-extends) the file to `size` bytes.
    func truncate(to size: Int) throws {
        try StorageIO.fileOperations.truncate(openFile, to: size)
    }

    /// `close`. Not retried on EINTR (on Linux the descriptor is released regardless).
    func close() throws {
        guard sysClose(rawValue) == 0 else { throw FathomError.system("close", path: path, errno: errno) }
    }

    /// `close`, ignoring errors (for deinit and error paths).
    func closeIgnoringErrors() { _ = sysClose(rawValue) }
}

// Little-endian integer loads/stores at arbitrary alignment: the one encoder of the index
// files' binary fields. Thread safety: as the memory they touch.
extension UnsafeRawPointer {
    /// The little-endian `T` at byte offset `off` (any alignment).
    @inline(__always) public func loadLE<T: FixedWidthInteger>(fromByteOffset off: Int = 0, as: T.Type) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: off, as: T.self))
    }
}

extension UnsafeMutableRawPointer {
    /// Stores `value` little-endian at byte offset `off` (any alignment).
    @inline(__always) public func storeLE<T: FixedWidthInteger>(_ value: T, toByteOffset off: Int = 0) {
        storeBytes(of: value.littleEndian, toByteOffset: off, as: T.self)
    }
}

// MARK: - Directory entries: rename, exchange, remove (each followed by the caller's fsync of
// the directories involved), and the advisory lock of a build.

/// `rename(2)`: replaces `to` atomically (a directory only replaces an empty one).
public func renamePath(_ from: String, _ to: String) throws {
    try StorageIO.fileOperations.rename(from, to: to)
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two existing paths atomically. Returns false, without
/// touching either, when the kernel or file system does not support the exchange.
public func exchangePaths(_ a: String, _ b: String) throws -> Bool {
    try StorageIO.fileOperations.exchange(a, b)
}

/// Creates `path` and any missing parent directories (`mkdir -p`, mode 0755); an existing
/// directory is not an error. The caller fsyncs the parents that must keep the new entries.
/// Each mkdir goes through the task's ``FileOperations``. Thread safety: any thread (two
/// callers creating the same directory both succeed).
public func createDirectories(_ path: String) throws {
    var st = stat()
    if stat(path, &st) == 0 {
        guard st.st_mode & S_IFMT == S_IFDIR else { throw FathomError.system("mkdir", path: path, errno: ENOTDIR) }
        return
    }
    let parent = (path as NSString).deletingLastPathComponent
    if !parent.isEmpty && parent != path { try createDirectories(parent) }
    try StorageIO.fileOperations.makeDirectory(path, permissions: 0o755)
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
        catch { throw FathomError(.io, "cannot list the directory", path: path, cause: error) }
        for e in entries { try removeTree(path + "/" + e) }
        try StorageIO.fileOperations.removeDirectory(path)
    } else {
        try StorageIO.fileOperations.removeFile(path)
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
            try f.truncate(to: 0)
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

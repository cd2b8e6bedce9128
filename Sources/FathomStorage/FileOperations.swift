import CAIO
import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The seam between the storage layer and the kernel. Every open, read, write, ftruncate and
// fsync of `SystemFile` (hence of every index, vector, ground-truth, log and scratch file,
// and every directory fsync) and every rename, exchange, unlink, rmdir and mkdir of the
// storage layer (`renamePath`, `exchangePaths`, `removeTree`, `createDirectories`) goes
// through the `FileOperations` bound for the current task; production binds nothing and gets the system calls. Tests bind a
// fault-injecting implementation around the work they watch (FathomTestSupport's
// FaultInjector), or one that records every call to rebuild what a power cut would leave
// (PowerCutRecorder): a scoped value, not a global switch, so tests running at once never see
// each other's faults.

/// An open file as ``FileOperations`` sees it: its descriptor and the path it was opened
/// from (for error messages and for choosing which files to watch).
///
/// Thread safety: an immutable value, `Sendable`; it owns nothing (whoever opened the
/// descriptor closes it).
public struct OpenFile: Sendable {
    /// The raw file descriptor.
    public let descriptor: Int32
    /// The path the descriptor was opened from.
    public let path: String
    /// The open descriptor `descriptor`, opened from `path`.
    public init(descriptor: Int32, path: String) { self.descriptor = descriptor; self.path = path }
}

/// The calls the storage layer makes to the file system: reads, writes and fsyncs of open
/// files, and (with default implementations that make the system calls) opens, truncations
/// and the namespace changes. Implementations report a failure
/// as a `FathomError` (``FathomError/system(_:path:errno:offset:)``: `diskFull` for ENOSPC,
/// `io` for the rest) naming the file and the offset.
///
/// Thread safety: implementations are `Sendable` and called from any thread, for different
/// files at once.
public protocol FileOperations: Sendable {
    /// Reads up to `count` bytes at `offset`; returns how many were read, fewer than `count`
    /// only at the end of the file.
    func read(_ file: OpenFile, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int
    /// Writes all `count` bytes at `offset`.
    func write(_ file: OpenFile, _ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws
    /// fsync: data and metadata reach the device.
    func sync(_ file: OpenFile) throws

    // The namespace and size calls (default implementations: the system calls, below), so
    // that a recording implementation sees every operation that changes what is on disk.

    /// `open(2)` (EINTR retried): returns the new descriptor. With `O_CREAT` it may create
    /// the file, with `O_TRUNC` it cuts it to 0 bytes.
    func open(_ path: String, flags: Int32, permissions: mode_t) throws -> Int32
    /// `ftruncate(2)`: cuts (or zero-extends) the file to `size` bytes.
    func truncate(_ file: OpenFile, to size: Int) throws
    /// `rename(2)`: `from` replaces `to` atomically.
    func rename(_ from: String, to: String) throws
    /// `renameat2(RENAME_EXCHANGE)`: swaps two existing paths atomically; false, touching
    /// neither, when the kernel or file system does not support it.
    func exchange(_ a: String, _ b: String) throws -> Bool
    /// `unlink(2)`; a missing file is not an error.
    func removeFile(_ path: String) throws
    /// `rmdir(2)` of an empty directory; a missing one is not an error.
    func removeDirectory(_ path: String) throws
    /// `mkdir(2)`; an existing directory is not an error.
    func makeDirectory(_ path: String, permissions: mode_t) throws
}

extension FileOperations {
    public func open(_ path: String, flags: Int32, permissions: mode_t) throws -> Int32 {
        try SystemFileOperations.open(path, flags: flags, permissions: permissions)
    }
    public func truncate(_ file: OpenFile, to size: Int) throws { try SystemFileOperations.truncate(file, to: size) }
    public func rename(_ from: String, to: String) throws { try SystemFileOperations.rename(from, to: to) }
    public func exchange(_ a: String, _ b: String) throws -> Bool { try SystemFileOperations.exchange(a, b) }
    public func removeFile(_ path: String) throws { try SystemFileOperations.removeFile(path) }
    public func removeDirectory(_ path: String) throws { try SystemFileOperations.removeDirectory(path) }
    public func makeDirectory(_ path: String, permissions: mode_t) throws {
        try SystemFileOperations.makeDirectory(path, permissions: permissions)
    }
}

/// The production ``FileOperations``: `pread`, `pwrite` and `fsync`, EINTR retried, short
/// reads and writes looped.
///
/// Thread safety: stateless, `Sendable`.
public struct SystemFileOperations: FileOperations {
    /// The system calls (no state).
    public init() {}

    public func read(_ file: OpenFile, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        try Self.transfer("read", file, count: count, at: offset) { pread(file.descriptor, buffer + $0, count - $0, off_t(offset + $0)) }
    }

    public func write(_ file: OpenFile, _ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        let done = try Self.transfer("write", file, count: count, at: offset) { pwrite(file.descriptor, buffer + $0, count - $0, off_t(offset + $0)) }
        if done < count {  // pwrite returned 0: should not happen for regular files; do not spin forever
            throw FathomError.system("write", path: file.path, errno: EIO, offset: UInt64(offset + done))
        }
    }

    /// Calls `io(done)` (one pread or pwrite of the bytes from `done` on) until `count` bytes
    /// moved or it returns 0, retrying EINTR; returns the bytes moved. Other errors are thrown
    /// naming `what`, the file and the offset.
    private static func transfer(_ what: String, _ file: OpenFile, count: Int, at offset: Int, _ io: (Int) -> Int) throws -> Int {
        var done = 0
        while done < count {
            let r = io(done)
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FathomError.system(what, path: file.path, errno: e, offset: UInt64(offset + done))
            }
            if r == 0 { break }
            done += r
        }
        return done
    }

    public func sync(_ file: OpenFile) throws {
        while fsync(file.descriptor) != 0 {
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("fsync", path: file.path, errno: e)
        }
    }

    // The system calls behind the protocol's default namespace implementations (static, so
    // that an implementation passing a call through reaches them by name).

    /// `open(2)`, EINTR retried; a failure is `create` / `open` naming `path`.
    public static func open(_ path: String, flags: Int32, permissions: mode_t) throws -> Int32 {
        while true {
            let fd = sysOpenPath(path, flags, permissions)
            if fd >= 0 { return fd }
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system(flags & O_CREAT != 0 ? "create" : "open", path: path, errno: e)
        }
    }

    /// `ftruncate(2)`, EINTR retried.
    public static func truncate(_ file: OpenFile, to size: Int) throws {
        while ftruncate(file.descriptor, off_t(size)) != 0 {
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("ftruncate", path: file.path, errno: e, offset: UInt64(size))
        }
    }

    /// `rename(2)`.
    public static func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else {
            let e = errno
            throw FathomError.system("rename to \(to)", path: from, errno: e)
        }
    }

    /// `renameat2(RENAME_EXCHANGE)`; false when unsupported.
    public static func exchange(_ a: String, _ b: String) throws -> Bool {
        let r = caio_rename_exchange(a, b)
        if r == 0 { return true }
        let e = -r
        if e == ENOSYS || e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP { return false }
        throw FathomError.system("renameat2(RENAME_EXCHANGE) with \(b)", path: a, errno: e)
    }

    /// `unlink(2)`; ENOENT is not an error.
    public static func removeFile(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw FathomError.system("unlink", path: path, errno: errno) }
    }

    /// `rmdir(2)`; ENOENT is not an error.
    public static func removeDirectory(_ path: String) throws {
        guard rmdir(path) == 0 || errno == ENOENT else { throw FathomError.system("rmdir", path: path, errno: errno) }
    }

    /// `mkdir(2)`; EEXIST for a directory is not an error.
    public static func makeDirectory(_ path: String, permissions: mode_t) throws {
        guard mkdir(path, permissions) != 0 else { return }
        let e = errno
        var st = stat()
        if e == EEXIST, stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { return }
        throw FathomError.system("mkdir", path: path, errno: e)
    }
}

private func sysOpenPath(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { Glibc.open(path, flags, mode) }

/// Where the storage layer finds its ``FileOperations``.
public enum StorageIO {
    /// The file operations of the current task: ``SystemFileOperations`` unless a caller
    /// bound others for a scope (`StorageIO.$fileOperations.withValue(ops) { … }`).
    ///
    /// Thread safety: a task-local value. A binding applies to the calls made by the task
    /// (or, outside a task, the thread) that bound it, and to its child tasks; work handed to
    /// other threads (Dispatch) uses the system calls.
    @TaskLocal public static var fileOperations: any FileOperations = SystemFileOperations()
}

/// Test-only pauses at named points of a stage, for crash tests that must kill a process
/// inside a stage too short to hit at a random moment (tools/crashtest-stages: the publish of
/// a build, the flush of `fathom delete`). Inert unless the environment variable
/// `FATHOM_CRASHTEST_PAUSE_MS` is set when the process starts: then each ``point(_:)`` prints
/// `crashtest: point NAME` on stderr and sleeps that many milliseconds. Production never sets
/// it (docs/reliability.md).
///
/// Thread safety: callable from any thread (the setting is read once, then immutable).
public enum CrashTestPause {
    static let milliseconds: UInt32? = ProcessInfo.processInfo.environment["FATHOM_CRASHTEST_PAUSE_MS"].flatMap { UInt32($0) }

    /// Pauses at `name` when crash-test pauses are on; otherwise returns at once.
    public static func point(_ name: String) {
        guard let ms = milliseconds else { return }
        fflush(nil)   // every stdio stream: what the process printed is visible to the watcher before it pauses
        FileHandle.standardError.write("crashtest: point \(name)\n".data(using: .utf8)!)
        usleep(ms * 1000)
    }
}

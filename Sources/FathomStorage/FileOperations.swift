import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The seam between the storage layer and the kernel for the data calls on an open file.
// Every read, write and fsync of `SystemFile` (hence of every index, vector, ground-truth,
// log and scratch file, and every directory fsync) goes through the `FileOperations` bound
// for the current task; production binds nothing and gets the system calls. Tests bind a
// fault-injecting implementation around the work they watch (FathomTestSupport's
// FaultInjector): a scoped value, not a global switch, so tests running at once never see
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

/// The data calls the storage layer makes on an open file. Implementations report a failure
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
}

/// The production ``FileOperations``: `pread`, `pwrite` and `fsync`, EINTR retried, short
/// reads and writes looped.
///
/// Thread safety: stateless, `Sendable`.
public struct SystemFileOperations: FileOperations {
    /// The system calls (no state).
    public init() {}

    public func read(_ file: OpenFile, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        var done = 0
        while done < count {
            let r = pread(file.descriptor, buffer + done, count - done, off_t(offset + done))
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FathomError.system("read", path: file.path, errno: e, offset: UInt64(offset + done))
            }
            if r == 0 { break }
            done += r
        }
        return done
    }

    public func write(_ file: OpenFile, _ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        var done = 0
        while done < count {
            let r = pwrite(file.descriptor, buffer + done, count - done, off_t(offset + done))
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FathomError.system("write", path: file.path, errno: e, offset: UInt64(offset + done))
            }
            if r == 0 {  // should not happen for regular files; avoid spinning forever
                throw FathomError.system("write", path: file.path, errno: EIO, offset: UInt64(offset + done))
            }
            done += r
        }
    }

    public func sync(_ file: OpenFile) throws {
        while fsync(file.descriptor) != 0 {
            let e = errno
            if e == EINTR { continue }
            throw FathomError.system("fsync", path: file.path, errno: e)
        }
    }
}

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

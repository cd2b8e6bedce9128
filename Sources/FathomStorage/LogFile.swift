import FathomCore
import Foundation

/// A file opened for reading and appending at explicit offsets, for logs (the update
/// write-ahead log): `append` writes at the end, `sync` fsyncs, `truncate` cuts a torn or
/// failed tail. Every call goes through the storage layer's syscall wrapper (`SystemFile`),
/// hence through the task's ``FileOperations``, where tests inject EIO, ENOSPC and short writes.
///
/// Thread safety: not synchronized; one owner at a time (the index writer, under its lock).
public final class LogFile {
    public let path: String
    let file: SystemFile
    /// Bytes in the file as this owner knows it (the offset of the next append).
    public private(set) var size: Int

    /// Opens (with `create`: creating if missing) `path` for reading and writing.
    public init(path: String, create: Bool) throws {
        self.path = path
        file = try SystemFile.open(path, .readWrite, options: create ? [.create] : [])
        do { size = try file.status().size } catch { file.closeIgnoringErrors(); throw error }
    }

    deinit { file.closeIgnoringErrors() }

    /// Reads up to `count` bytes at `offset`; returns how many were read (fewer at the end).
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        try file.read(into: buffer, count: count, at: offset)
    }

    /// Writes `count` bytes at the end. On failure the file may hold part of them: the caller
    /// cuts them with `truncate(to:)` (the size known here is unchanged).
    public func append(_ p: UnsafeRawPointer, count: Int) throws {
        try file.write(p, count: count, at: size)
        size += count
    }

    /// Writes `count` bytes at `offset` (a header) without moving the end.
    public func write(_ p: UnsafeRawPointer, count: Int, at offset: Int) throws {
        try file.write(p, count: count, at: offset)
        size = max(size, offset + count)
    }

    /// fsync: what was appended reaches the device.
    public func sync() throws { try file.sync() }

    /// Cuts the file to `newSize` bytes.
    public func truncate(to newSize: Int) throws {
        try file.truncate(to: newSize)
        size = newSize
    }
}

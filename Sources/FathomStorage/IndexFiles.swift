import CKernels
import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The 64-byte header every index file starts with (layout: docs/format.md).
public struct IndexFileHeader: Sendable, Equatable {
    public static let size = 64
    public static let version: UInt32 = 1

    public var magic: String          // exactly 8 ASCII bytes
    public var version: UInt32 = IndexFileHeader.version
    public var count: UInt64
    public var dimension: UInt32
    public var elementType: UInt32
    public var payloadOffset: UInt64
    public var payloadBytes: UInt64
    public var recordBytes: UInt32
    public var aux: UInt64

    public init(magic: String, count: UInt64, dimension: UInt32, elementType: UInt32 = 0,
                payloadOffset: UInt64 = 64, payloadBytes: UInt64, recordBytes: UInt32, aux: UInt64 = 0) {
        precondition(magic.utf8.count == 8)
        self.magic = magic; self.count = count; self.dimension = dimension; self.elementType = elementType
        self.payloadOffset = payloadOffset; self.payloadBytes = payloadBytes; self.recordBytes = recordBytes; self.aux = aux
    }

    /// Element type code used in headers.
    public static func code(_ t: ElementType) -> UInt32 { t == .float32 ? 0 : (t == .uint8 ? 1 : 2) }
    public static func elementType(code: UInt32) -> ElementType? { [ElementType.float32, .uint8, .int8][safe: Int(code)] }

    public func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64)
        for (i, c) in magic.utf8.enumerated() { b[i] = c }
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[at + i] = x } } }
        put(version, 8); put(UInt32(64), 12); put(count, 16); put(dimension, 24); put(elementType, 28)
        put(payloadOffset, 32); put(payloadBytes, 40); put(recordBytes, 48); put(aux, 52)
        let crc = b.withUnsafeBytes { fk_crc32c(0, $0.baseAddress, 60) }
        put(crc, 60)
        return b
    }

    /// Parses and checks a header: magic, header checksum, version.
    public static func decode(_ b: UnsafeRawBufferPointer, expectedMagic: String, path: String) throws -> IndexFileHeader {
        guard b.count >= 64 else {
            throw FathomError(.corruptIndex, "file is \(b.count) bytes, shorter than its 64-byte header; the index is truncated — rebuild it", path: path, offset: 0)
        }
        let magic = String(decoding: b[0..<8], as: UTF8.self)
        guard magic == expectedMagic else {
            throw FathomError(.corruptIndex, "bad magic '\(magic.filter { $0.isASCII && !$0.isNewline })', expected '\(expectedMagic)': not a Fathom \(expectedMagic) file or corrupt", path: path, offset: 0)
        }
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            var v: T = 0
            withUnsafeMutableBytes(of: &v) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: b[at..<(at + MemoryLayout<T>.size)])) }
            return T(littleEndian: v)
        }
        let stored = get(60, UInt32.self)
        let actual = fk_crc32c(0, b.baseAddress, 60)
        guard stored == actual else {
            throw FathomError(.corruptIndex, String(format: "header checksum mismatch (stored %08x, computed %08x): the file is corrupt — rebuild the index", stored, actual), path: path, offset: 60)
        }
        let version = get(8, UInt32.self)
        guard version == IndexFileHeader.version else {
            throw FathomError(.incompatibleIndex, "format version \(version); this Fathom reads version \(IndexFileHeader.version) — rebuild the index with this version", path: path, offset: 8)
        }
        var h = IndexFileHeader(magic: magic, count: get(16, UInt64.self), dimension: get(24, UInt32.self),
                                elementType: get(28, UInt32.self), payloadOffset: get(32, UInt64.self),
                                payloadBytes: get(40, UInt64.self), recordBytes: get(48, UInt32.self), aux: get(52, UInt64.self))
        h.version = version
        return h
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { i >= 0 && i < count ? self[i] : nil }
}

/// A file opened for reading at explicit offsets (`pread`), optionally with O_DIRECT.
/// Immutable after open; `read` is safe from several threads at once.
public final class RandomAccessFile: @unchecked Sendable {
    public let path: String
    public let size: UInt64
    let file: SystemFile
    /// The descriptor (for IO engines).
    public var fd: Int32 { file.rawValue }

    public init(path: String, direct: Bool = false) throws {
        self.path = path
        let f = try SystemFile.open(path, .readOnly, options: direct ? [.direct] : [])
        let st: SystemFile.Status
        do { st = try f.status() } catch { f.closeIgnoringErrors(); throw error }
        guard st.isRegularFile else {
            f.closeIgnoringErrors()
            throw FathomError(.fileNotFound, st.isDirectory ? "is a directory, not a file" : "not a regular file", path: path)
        }
        file = f
        size = UInt64(st.size)
    }

    deinit { file.closeIgnoringErrors() }

    /// Reads exactly `count` bytes at `offset`; a read past the end of the file is a
    /// `corruptIndex` error naming the offset.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws {
        let got = try file.read(into: buffer, count: count, at: Int(offset))
        guard got == count else {
            throw FathomError(.corruptIndex, "unexpected end of file: wanted \(count) bytes, the file ends at \(size); it is truncated — rebuild the index", path: path, offset: offset + UInt64(got))
        }
    }

    /// Reads and checks the header.
    public func readHeader(magic: String) throws -> IndexFileHeader {
        var buf = [UInt8](repeating: 0, count: 64)
        let n = Int(min(64, size))
        try buf.withUnsafeMutableBytes { try read(into: $0.baseAddress!, count: n, at: 0) }
        let h = try buf.withUnsafeBytes { try IndexFileHeader.decode(UnsafeRawBufferPointer(rebasing: $0[0..<n]), expectedMagic: magic, path: path) }
        let (end, overflow) = h.payloadOffset.addingReportingOverflow(h.payloadBytes)
        guard !overflow, end <= size else {
            throw FathomError(.corruptIndex, "header says the payload ends at byte \(overflow ? "overflow" : String(end)) but the file has \(size) bytes: truncated — rebuild the index", path: path, offset: 32)
        }
        return h
    }
}

/// Writes a file front to back through a large buffer; can patch earlier bytes (the header)
/// before `finish`, which flushes and fsyncs (the descriptor closes on release).
public final class SequentialFileWriter {
    public let path: String
    let file: SystemFile
    let buffer: UnsafeMutableRawPointer
    let capacity: Int
    var used = 0
    /// Bytes written so far (the offset of the next byte).
    public private(set) var offset: UInt64 = 0
    /// CRC32C of each 4 KiB page from `pageChecksumsFrom` on, when asked for.
    var pages: PageChecksums?

    /// - Parameter pageChecksumsFrom: when given (a multiple of 4096), the writer keeps the
    ///   CRC32C of every 4 KiB page of the bytes it writes from that offset on
    ///   (``pageChecksums``); patches before that offset do not change them.
    public init(path: String, bufferBytes: Int = 8 << 20, pageChecksumsFrom: UInt64? = nil) throws {
        precondition(bufferBytes % 4096 == 0 && (pageChecksumsFrom ?? 0) % 4096 == 0)
        self.path = path
        file = try SystemFile.open(path, .writeOnly, options: [.create, .truncate])
        capacity = bufferBytes
        buffer = .allocate(byteCount: bufferBytes, alignment: 4096)
        pages = pageChecksumsFrom.map { PageChecksums(from: $0) }
    }

    /// The CRC32C of each 4 KiB page written from `pageChecksumsFrom` on (the last page may
    /// be partial: pad to a whole page first); nil if the writer was not asked to keep them.
    public var pageChecksums: [UInt32]? {
        guard var p = pages else { return nil }
        if used > 0 { p.feed(buffer, count: used, at: offset - UInt64(used)) }
        return p.finish()
    }

    deinit {
        buffer.deallocate()
        file.closeIgnoringErrors()
    }

    public func write(_ p: UnsafeRawPointer, count: Int) throws {
        var src = p, left = count
        while left > 0 {
            if used == capacity { try flush() }
            let k = min(left, capacity - used)
            (buffer + used).copyMemory(from: src, byteCount: k)
            used += k; src += k; left -= k
            offset += UInt64(k)
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { if $0.count > 0 { try write($0.baseAddress!, count: $0.count) } }
    }

    public func write<T>(array: [T]) throws {
        try array.withUnsafeBytes { if $0.count > 0 { try write($0.baseAddress!, count: $0.count) } }
    }

    /// Writes zeros up to absolute offset `to`.
    public func pad(to target: UInt64) throws {
        precondition(target >= offset)
        var left = Int(target - offset)
        while left > 0 {
            if used == capacity { try flush() }
            let k = min(left, capacity - used)
            (buffer + used).initializeMemory(as: UInt8.self, repeating: 0, count: k)
            used += k; left -= k; offset += UInt64(k)
        }
    }

    func flush() throws {
        try file.write(buffer, count: used, at: Int(offset) - used)
        pages?.feed(buffer, count: used, at: offset - UInt64(used))
        used = 0
    }

    /// Overwrites bytes already written (e.g. the header) at `at`.
    public func patch(_ bytes: [UInt8], at: UInt64) throws {
        try flush()
        try bytes.withUnsafeBytes { try file.write($0.baseAddress!, count: $0.count, at: Int(at)) }
    }

    /// Flushes and fsyncs the file.
    public func finish() throws {
        try flush()
        try file.sync()
    }
}


/// CRC32C of every 4 KiB page of a byte stream fed in order (any split), from offset `from` on.
struct PageChecksums {
    let from: UInt64
    var crcs = [UInt32]()
    /// CRC of the page being filled, and its bytes so far.
    var current: UInt32 = 0
    var filled = 0

    init(from: UInt64) { self.from = from }

    /// Feeds `count` bytes that sit at file offset `at` (offsets must arrive in order).
    mutating func feed(_ p: UnsafeRawPointer, count: Int, at: UInt64) {
        var p = p, n = count
        if at < from {
            let skip = Int(min(UInt64(n), from - at))
            p += skip; n -= skip
        }
        while n > 0 {
            let k = min(n, 4096 - filled)
            current = fk_crc32c(current, p, k)
            filled += k; p += k; n -= k
            if filled == 4096 { crcs.append(current); current = 0; filled = 0 }
        }
    }

    func finish() -> [UInt32] { filled > 0 ? crcs + [current] : crcs }
}

/// CRC32C of a file's bytes (streamed in 4 MiB blocks).
public func fileCRC32C(_ path: String) throws -> (bytes: UInt64, crc: UInt32) {
    let f = try RandomAccessFile(path: path)
    let block = 4 << 20
    let buf = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
    defer { buf.deallocate() }
    var crc: UInt32 = 0
    var off: UInt64 = 0
    while off < f.size {
        let k = Int(min(UInt64(block), f.size - off))
        try f.read(into: buf, count: k, at: off)
        crc = fk_crc32c(crc, buf, k)
        off += UInt64(k)
    }
    return (f.size, crc)
}

/// CRC32C of `count` bytes at `p`, continuing from `crc` (0 to start).
@inlinable public func crc32c(_ p: UnsafeRawPointer, _ count: Int, _ crc: UInt32) -> UInt32 {
    fk_crc32c(crc, p, count)
}

/// CRC32C of a string's UTF-8 bytes, continuing from `seed`.
public func crc32c(_ s: String, seed: UInt32) -> UInt32 {
    var s = s
    return s.withUTF8 { fk_crc32c(seed, $0.baseAddress, $0.count) }
}

/// The self-checksum of manifest.json's bytes: the CRC32C (8 hex digits) of the bytes with the
/// 8 characters of `manifest_crc32c`'s value replaced by `0`s (as the builder seals it), so
/// that any change to any byte is detected; nil when the key or a value of that shape is
/// missing. Thread safety: a pure function.
public func manifestSelfChecksum(_ data: [UInt8]) -> String? {
    var bytes = data
    let key = Array("\"manifest_crc32c\"".utf8)
    guard let k = bytes.firstRange(of: key) else { return nil }
    // The value: the 8 bytes after the next quote following the key.
    var i = k.upperBound
    while i < bytes.count && bytes[i] != UInt8(ascii: "\"") { i += 1 }
    guard i + 9 < bytes.count, bytes[i + 9] == UInt8(ascii: "\"") else { return nil }
    for j in 0..<8 { bytes[i + 1 + j] = UInt8(ascii: "0") }
    return String(format: "%08x", bytes.withUnsafeBytes { fk_crc32c(0, $0.baseAddress, $0.count) })
}

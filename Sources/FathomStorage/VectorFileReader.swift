import FathomCore
import Foundation

/// Streams the vectors of a file front to back (or from a ``seek(toRow:)`` position) without
/// ever loading the whole file.
///
/// Rows come out dense and row-major: the dimension prefixes of fvecs/bvecs are stripped,
/// and every record's prefix is checked against the dimension of record 0 as the record is
/// delivered (a change is a `.malformedFile` error naming the record and its byte offset; the
/// rows before it are delivered by earlier calls).
/// Data is read with `pread` in blocks of `blockBytes` (4 MiB by default) through an internal
/// buffer; large reads of prefix-free formats (fbin, u8bin, i8bin, npy) go straight into the
/// caller's memory.
///
/// ```swift
/// let reader = try VectorFileReader(path: "base.u8bin")
/// let chunk = UnsafeMutablePointer<Float>.allocate(capacity: 10_000 * reader.dimension)
/// while true {
///     let rows = try reader.readFloats(maxRows: 10_000, into: chunk)
///     if rows == 0 { break }
///     // use rows × reader.dimension floats at chunk
/// }
/// ```
///
/// Not thread-safe: use one reader per thread (readers are cheap; each owns one descriptor).
public final class VectorFileReader {
    /// What the file holds, as validated at open.
    public let header: VectorFileHeader
    /// Number of vectors in the file.
    public var count: Int { header.count }
    /// Components per vector.
    public var dimension: Int { header.dimension }
    /// Type of each component as stored.
    public var elementType: ElementType { header.elementType }
    /// The file's layout.
    public var format: VectorFileFormat { header.format }
    /// Index of the next row ``read(maxRows:into:)`` returns (0...count).
    public private(set) var position: Int = 0

    private let file: SystemFile
    private let blockBytes: Int
    private let blockRows: Int
    private var buffer: UnsafeMutableRawPointer?
    private var bufferFirstRow = 0
    private var bufferRows = 0

    /// Opens and validates `path` (see ``VectorFileHeader/inspect(path:format:)``).
    ///
    /// - Parameters:
    ///   - path: the vector file.
    ///   - format: its layout; `nil` picks it from the extension.
    ///   - blockBytes: size of each `pread` through the internal buffer (rounded down to whole
    ///     records, at least one record).
    /// - Throws: `FathomError` (`.fileNotFound`, `.io`, `.malformedFile`, `.unsupportedFormat`).
    public init(path: String, format: VectorFileFormat? = nil, blockBytes: Int = 4 << 20) throws {
        let file = try SystemFile.open(path, .readOnly)
        do {
            header = try VectorFileHeader.inspect(file: file, format: format)
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        self.file = file
        blockRows = max(1, blockBytes / max(header.recordStride, 1))
        self.blockBytes = blockRows * header.recordStride
    }

    deinit {
        buffer?.deallocate()
        file.closeIgnoringErrors()
    }

    /// Reads the next rows, at most `maxRows`, into `into` as dense row-major components of
    /// ``elementType`` (`rows × dimension × elementType.size` bytes).
    ///
    /// - Returns: the number of rows read; 0 at the end of the file.
    /// - Throws: `.malformedFile` if a record's dimension differs from record 0's, or the file
    ///   became shorter than at open; `.io` on read errors; `.invalidArgument` if `maxRows < 0`.
    ///   After an error, ``position`` is the row that failed (rows before it in this call were
    ///   copied but are not counted).
    public func read(maxRows: Int, into: UnsafeMutableRawPointer) throws -> Int {
        try transfer(maxRows: maxRows, into: into, asFloats: false)
    }

    /// Like ``read(maxRows:into:)``, converting uint8/int8 components to `Float`
    /// (`rows × dimension` floats).
    public func readFloats(maxRows: Int, into: UnsafeMutablePointer<Float>) throws -> Int {
        try transfer(maxRows: maxRows, into: UnsafeMutableRawPointer(into), asFloats: true)
    }

    /// Moves the read position to `row` (0...count; `count` means the end).
    ///
    /// - Throws: `.invalidArgument` if `row` is out of range.
    public func seek(toRow row: Int) throws {
        guard row >= 0, row <= count else {
            throw FathomError(.invalidArgument, "cannot seek to row \(row): the file has \(count) rows", path: header.path)
        }
        position = row
    }

    // MARK: - Internals

    private func transfer(maxRows: Int, into dst: UnsafeMutableRawPointer, asFloats: Bool) throws -> Int {
        guard maxRows >= 0 else {
            throw FathomError(.invalidArgument, "maxRows must be non-negative, got \(maxRows)", path: header.path)
        }
        let n = min(maxRows, count - position)
        guard n > 0 else { return 0 }
        let d = dimension, et = elementType
        let rowBytes = header.rowBytes
        let stride = header.recordStride, prefix = header.recordPrefix
        let convert = asFloats && et != .float32
        let outRowBytes = convert ? d * 4 : rowBytes
        var done = 0
        while done < n {
            let out = dst + done * outRowBytes
            if position >= bufferFirstRow, position < bufferFirstRow + bufferRows, let buffer {
                let take = min(n - done, bufferFirstRow + bufferRows - position)
                let src = UnsafeRawPointer(buffer + (position - bufferFirstRow) * stride + prefix)
                if prefix == 0 {
                    if convert {
                        ElementConversion.toFloat(src, et, count: take * d, into: out.assumingMemoryBound(to: Float.self))
                    } else {
                        out.copyMemory(from: src, byteCount: take * rowBytes)
                    }
                } else {
                    for r in 0..<take {
                        // Check each record's prefix as it is delivered, so the rows before a
                        // bad record still come out and the error names the exact record.
                        let found = (src + r * stride - prefix).loadLE(as: Int32.self)
                        if Int(found) != d {
                            position += r
                            throw FathomError(.malformedFile,
                                              TexmexCheck.changeMessage(record: position, found: Int(found), expected: d, format: format),
                                              path: header.path, offset: UInt64(header.recordOffset(position)))
                        }
                        if convert {
                            ElementConversion.toFloat(src + r * stride, et, count: d,
                                                      into: (out + r * outRowBytes).assumingMemoryBound(to: Float.self))
                        } else {
                            (out + r * rowBytes).copyMemory(from: src + r * stride, byteCount: rowBytes)
                        }
                    }
                }
                position += take
                done += take
            } else if prefix == 0, !convert, (n - done) * rowBytes >= blockBytes {
                // Large request, contiguous rows: read straight into the caller's memory.
                let rows = n - done
                try readExactly(into: out, count: rows * rowBytes, row: position)
                position += rows
                done += rows
            } else {
                try fill(from: position)
            }
        }
        return n
    }

    /// Loads the block of records starting at `row` into the buffer, checking prefixes.
    private func fill(from row: Int) throws {
        let buf: UnsafeMutableRawPointer
        if let buffer { buf = buffer } else {
            buf = .allocate(byteCount: blockBytes, alignment: 4096)
            buffer = buf
        }
        bufferRows = 0
        let rows = min(blockRows, count - row)
        try readExactly(into: buf, count: rows * header.recordStride, row: row)
        bufferFirstRow = row
        bufferRows = rows
    }

    private func readExactly(into p: UnsafeMutableRawPointer, count bytes: Int, row: Int) throws {
        let offset = header.recordOffset(row)
        let got = try file.read(into: p, count: bytes, at: offset)
        guard got == bytes else {
            let end = offset + got
            throw FathomError(.malformedFile,
                              "unexpected end of file at byte \(end) while reading row \(row + got / header.recordStride) of \(count): the file had \(header.fileSize) bytes when it was opened and is now shorter (truncated or rewritten while being read?)",
                              path: header.path, offset: UInt64(end))
        }
    }
}

import FathomCore
import Foundation

/// Writes vectors to a file in any ``VectorFileFormat``, front to back, through a buffer.
///
/// - fbin/u8bin/i8bin: an 8-byte header whose `n` is written as 0 and patched by ``close(sync:)``.
/// - fvecs/bvecs: each record gets its int32 dimension prefix.
/// - npy: a version 1.0 header of fixed width (128 bytes, so the data starts on a 64-byte
///   boundary as numpy does), rewritten with the final shape by ``close(sync:)``: the dict is
///   padded with spaces and ends with a newline.
///
/// Call ``close(sync:)``: until then the header does not describe the data, which readers
/// reject as a size mismatch. A writer released without `close` closes its descriptor and
/// leaves that incomplete file. A full device surfaces as `FathomError.Code.diskFull`.
///
/// An fvecs/bvecs file with no rows is empty, and empty files are not readable (the dimension
/// is unknown).
///
/// Not thread-safe.
public final class VectorFileWriter {
    /// The file being written.
    public let path: String
    /// Its layout.
    public let format: VectorFileFormat
    /// Type of each component.
    public let elementType: ElementType
    /// Components per vector.
    public let dimension: Int
    /// Rows appended so far.
    public private(set) var count = 0

    /// Total size of the fixed-width npy header this writer emits.
    static let npyHeaderSize = 128

    private let file: SystemFile
    private let buffer: UnsafeMutableRawPointer
    private let capacity: Int
    private var used = 0
    private var bufferFileOffset: Int  // file offset of buffer[0]
    private var closed = false

    /// Creates (or truncates) `path` and writes a provisional header.
    ///
    /// - Parameters:
    ///   - path: the destination.
    ///   - format: the layout.
    ///   - elementType: must fit the format: float32 for fbin/fvecs, uint8 for u8bin/bvecs,
    ///     int8 for i8bin; npy takes any.
    ///   - dimension: components per vector, ≥ 1.
    ///   - bufferBytes: size of the write buffer.
    /// - Throws: `.invalidArgument` for a type the format cannot hold or a bad dimension;
    ///   `.io`, `.fileNotFound` or `.diskFull` if the file cannot be created.
    public init(path: String, format: VectorFileFormat, elementType: ElementType, dimension: Int,
                bufferBytes: Int = 4 << 20) throws {
        guard format.supports(elementType) else {
            let fitting = VectorFileFormat.allCases.filter { $0.supports(elementType) }.map(\.rawValue).joined(separator: ", ")
            throw FathomError(.invalidArgument,
                              "format \(format.rawValue) stores \(format.elementType!.rawValue), not \(elementType.rawValue); formats that hold \(elementType.rawValue): \(fitting)",
                              path: path)
        }
        let limit = format.isBigANN ? Int(UInt32.max) : Int(Int32.max)
        guard dimension >= 1, dimension <= limit else {
            throw FathomError(.invalidArgument, "dimension must be between 1 and \(limit) for \(format.rawValue), got \(dimension)", path: path)
        }
        self.path = path
        self.format = format
        self.elementType = elementType
        self.dimension = dimension
        file = try SystemFile.open(path, .writeOnly, options: [.create, .truncate])
        capacity = max(bufferBytes, 4096)
        buffer = .allocate(byteCount: capacity, alignment: 4096)
        bufferFileOffset = 0
        // Every stored property is set: if this throws, deinit closes the file and frees the buffer.
        let header = makeHeader(rows: 0)
        try header.withUnsafeBytes { if $0.count > 0 { try file.write($0.baseAddress!, count: $0.count, at: 0) } }
        bufferFileOffset = header.count
    }

    deinit {
        if !closed { file.closeIgnoringErrors() }
        buffer.deallocate()
    }

    /// Appends `count` rows of dense row-major components (`count × dimension ×
    /// elementType.size` bytes at `rows`).
    ///
    /// - Throws: `.invalidArgument` after ``close(sync:)`` or past the format's row limit
    ///   (2^32 − 1 for fbin/u8bin/i8bin); `.diskFull` or `.io` when a buffer flush fails.
    public func append(_ rows: UnsafeRawPointer, count: Int) throws {
        guard !closed else { throw FathomError(.invalidArgument, "append after close", path: path) }
        guard count >= 0 else { throw FathomError(.invalidArgument, "row count must be non-negative, got \(count)", path: path) }
        guard count > 0 else { return }
        if format.isBigANN, self.count + count > Int(UInt32.max) {
            throw FathomError(.invalidArgument,
                              "\(format.rawValue) holds at most \(UInt32.max) rows (its header stores n as uint32); split the data or use npy",
                              path: path)
        }
        let rowBytes = dimension * elementType.size
        if format.recordPrefix == 0 {
            try put(rows, count * rowBytes)
        } else {
            var prefix = Int32(dimension).littleEndian
            for r in 0..<count {
                try withUnsafeBytes(of: &prefix) { try put($0.baseAddress!, 4) }
                try put(rows + r * rowBytes, rowBytes)
            }
        }
        self.count += count
    }

    /// Flushes the buffer, writes the final header (fbin/u8bin/i8bin: `n`; npy: the shape),
    /// optionally fsyncs, and closes the file. Calling it again does nothing.
    ///
    /// - Parameter sync: `fsync` before closing, so the data is durable when this returns.
    /// - Throws: `.diskFull` or `.io`; the descriptor is closed either way.
    public func close(sync: Bool = true) throws {
        guard !closed else { return }
        closed = true
        do {
            try flush()
            if format.isBigANN || format == .npy {
                let header = makeHeader(rows: count)
                try header.withUnsafeBytes { try file.write($0.baseAddress!, count: $0.count, at: 0) }
            }
            if sync { try file.sync() }
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        try file.close()
    }

    // MARK: - Internals

    private func put(_ p: UnsafeRawPointer, _ n: Int) throws {
        if used + n > capacity { try flush() }
        if n >= capacity {
            try file.write(p, count: n, at: bufferFileOffset)
            bufferFileOffset += n
            return
        }
        (buffer + used).copyMemory(from: p, byteCount: n)
        used += n
    }

    private func flush() throws {
        guard used > 0 else { return }
        try file.write(buffer, count: used, at: bufferFileOffset)
        bufferFileOffset += used
        used = 0
    }

    private func makeHeader(rows: Int) -> [UInt8] {
        switch format {
        case .fbin, .u8bin, .i8bin:
            var h = [UInt8](repeating: 0, count: 8)
            h.withUnsafeMutableBytes {
                $0.baseAddress!.storeLE(UInt32(rows), toByteOffset: 0)
                $0.baseAddress!.storeLE(UInt32(dimension), toByteOffset: 4)
            }
            return h
        case .fvecs, .bvecs:
            return []
        case .npy:
            return Self.npyHeader(elementType: elementType, shape: [rows, dimension], totalSize: Self.npyHeaderSize)
        }
    }

    /// A version 1.0 .npy header (magic through padding) for a C-order array, padded with
    /// spaces and a final newline to `totalSize` bytes (`nil`: the next multiple of 64).
    static func npyHeader(elementType: ElementType, shape: [Int], totalSize: Int? = nil) -> [UInt8] {
        let descr: String
        switch elementType {
        case .float32: descr = "<f4"
        case .uint8: descr = "|u1"
        case .int8: descr = "|i1"
        }
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        let dict = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        let unpadded = 10 + dict.utf8.count + 1
        let total = totalSize ?? (unpadded + 63) / 64 * 64
        precondition(unpadded <= total && total - 10 <= Int(UInt16.max), "npy header does not fit in \(total) bytes")
        var out: [UInt8] = NpyHeader.magic + [1, 0]
        let headerLen = total - 10
        out += [UInt8(headerLen & 0xff), UInt8(headerLen >> 8)]
        out += Array(dict.utf8)
        out += [UInt8](repeating: 0x20, count: total - unpadded)
        out.append(0x0A)
        return out
    }
}

import FathomCore
import FathomStorage
import Foundation

/// External labels: a `UInt64` per vector, chosen by the user (`BuildOptions.labels` at build,
/// `MutableVectorIndex.insert(label:…)`), returned with every result. Internal ids stay the
/// dense `UInt32` row numbers the postings hold; an index built without labels has
/// label = row number (and no labels.bin).
///
/// labels.bin (docs/format.md): the common 64-byte header with magic `FTHMLABL`, `count` = n,
/// `dimension` = 1, `recordBytes` = 8, payload at 64: n × UInt64 little-endian, the label of
/// row i at 64 + 8·i.
public enum LabelsFile {
    public static let name = "labels.bin"
    static let magic = "FTHMLABL"

    /// Parses a text labels file: one decimal `UInt64` per line (surrounding blanks allowed,
    /// a final newline optional). With `expected`, the file must hold exactly that many.
    /// With `unique`, a repeated label is an error naming both lines.
    public static func parseText(path: String, expected: Int? = nil, unique: Bool = true) throws -> [UInt64] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FathomError(.fileNotFound, "cannot read the labels file", path: path)
        }
        var labels = [UInt64]()
        var firstLine = [UInt64: Int]()
        var line = 1, offset = 0, start = 0
        let bytes = [UInt8](data)
        func take(_ end: Int) throws {
            var s = start, e = end
            while s < e && (bytes[s] == 32 || bytes[s] == 9 || bytes[s] == 13) { s += 1 }
            while e > s && (bytes[e - 1] == 32 || bytes[e - 1] == 9 || bytes[e - 1] == 13) { e -= 1 }
            if s == e {
                if end == bytes.count { return }   // after the final newline
                throw FathomError(.malformedFile, "line \(line) is empty: a labels file holds one decimal label per line", path: path, offset: UInt64(start))
            }
            let token = String(decoding: bytes[s..<e], as: UTF8.self)
            guard let v = UInt64(token) else {
                throw FathomError(.malformedFile, "line \(line): '\(token.prefix(40))' is not a decimal label in 0 … 2^64 − 1", path: path, offset: UInt64(s))
            }
            if unique {
                if let prev = firstLine[v] {
                    throw FathomError(.invalidArgument, "line \(line): label \(v) repeats line \(prev); labels must be unique", path: path, offset: UInt64(s))
                }
                firstLine[v] = line
            }
            labels.append(v)
        }
        while offset < bytes.count {
            if bytes[offset] == 10 { try take(offset); line += 1; start = offset + 1 }
            offset += 1
        }
        try take(bytes.count)
        if let expected, labels.count != expected {
            throw FathomError(.invalidArgument, "the labels file has \(labels.count) labels for \(expected) vectors: give one label per vector, in input order", path: path)
        }
        return labels
    }

    /// Writes labels.bin (fsynced).
    public static func write(_ labels: [UInt64], path: String) throws {
        let header = IndexFileHeader(magic: magic, count: UInt64(labels.count), dimension: 1, elementType: 0,
                                     payloadOffset: 64, payloadBytes: UInt64(labels.count * 8), recordBytes: 8, aux: 0)
        let w = try SequentialFileWriter(path: path, bufferBytes: 1 << 20)
        try w.write(header.encode())
        try w.write(array: labels.map { $0.littleEndian })
        try w.finish()
    }

    /// Reads labels.bin, which must hold `count` labels.
    public static func read(path: String, count: Int) throws -> [UInt64] {
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: magic)
        guard h.count == UInt64(count), h.recordBytes == 8, h.payloadBytes == UInt64(count) * 8, h.payloadOffset == 64 else {
            throw FathomError(.corruptIndex, "labels.bin holds \(h.count) labels (\(h.payloadBytes) bytes) for \(count) vectors", path: path, offset: 16)
        }
        var labels = [UInt64](repeating: 0, count: count)
        try labels.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: count * 8, at: 64) }
        for i in 0..<count { labels[i] = UInt64(littleEndian: labels[i]) }
        return labels
    }
}

/// Id → label of one index version (a snapshot): the base rows' labels (nil: row numbers),
/// then the labels of inserted rows from an append-only arena.
///
/// Thread safety: immutable and shared (the arena's rows below `deltaCount` never change).
public final class LabelMap: @unchecked Sendable {
    let base: [UInt64]?
    let baseCount: Int
    let delta: RowArena?
    let deltaCount: Int

    /// The largest label (nil: no rows).
    public let maxLabel: UInt64?

    init(base: [UInt64]?, baseCount: Int, delta: RowArena? = nil, deltaCount: Int = 0, maxLabel: UInt64? = nil) {
        self.base = base; self.baseCount = baseCount; self.delta = delta; self.deltaCount = deltaCount
        self.maxLabel = maxLabel ?? (base.map { $0.max() } ?? (baseCount > 0 ? UInt64(baseCount - 1) : nil))
    }

    /// The label of internal id `id` (< baseCount + deltaCount).
    @inline(__always)
    public func label(of id: UInt32) -> UInt64 {
        let i = Int(id)
        if i < baseCount { return base?[i] ?? UInt64(i) }
        return delta!.row(i - baseCount).loadUnaligned(as: UInt64.self)
    }

    /// RAM of the label table, in bytes.
    var residentBytes: Int { (base?.count ?? 0) * 8 + deltaCount * 8 }
}

/// Append-only storage of fixed-size rows in chunks that never move: a writer appends past
/// the rows a published snapshot covers while readers of that snapshot read the rows below
/// its count. The chunk table is allocated once (`maxRows` rows), so it never moves either.
///
/// Thread safety: one appender (the index writer); readers only touch rows published to
/// them through a lock (which orders the appender's writes before their reads).
final class RowArena: @unchecked Sendable {
    let rowBytes: Int
    let chunkRows: Int
    let maxChunks: Int
    private let chunks: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private(set) var count = 0

    init(rowBytes: Int, chunkRows: Int = 4096, maxRows: Int = 1 << 28) {
        self.rowBytes = rowBytes; self.chunkRows = chunkRows
        maxChunks = (maxRows + chunkRows - 1) / chunkRows
        chunks = .allocate(capacity: maxChunks)
        chunks.initialize(repeating: nil, count: maxChunks)
    }

    deinit {
        for c in 0..<maxChunks { chunks[c]?.deallocate() }
        chunks.deallocate()
    }

    @inline(__always)
    func row(_ i: Int) -> UnsafeMutableRawPointer {
        chunks[i / chunkRows].unsafelyUnwrapped + (i % chunkRows) * rowBytes
    }

    /// Appends one row (copied from `p`); returns its index.
    @discardableResult
    func append(_ p: UnsafeRawPointer) -> Int {
        let c = count / chunkRows
        precondition(c < maxChunks, "row arena full")
        if chunks[c] == nil { chunks[c] = .allocate(byteCount: chunkRows * rowBytes, alignment: 64) }
        row(count).copyMemory(from: p, byteCount: rowBytes)
        count += 1
        return count - 1
    }

    var residentBytes: Int { (count + chunkRows - 1) / chunkRows * chunkRows * rowBytes + maxChunks * 8 }
}

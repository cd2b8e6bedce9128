import FathomCodecs
import FathomCore
import FathomStorage
import Foundation

/// The attributes of an index (attrs.bin) and the per-posting summaries (summaries.bin):
/// raw values for exact checks, OSQ codes for the cheap per-record test, and for every
/// posting what values it holds, so postings that cannot match are never read.
struct AttributeStore: Sendable {
    let table: AttributeTable
    let quantized: QuantizedAttributes
    let summaries: [AttributeSummary]

    static let attrsMagic = "FTHMATTR", summariesMagic = "FTHMSUMM"
    static let attrsFile = "attrs.bin", summariesFile = "summaries.bin"

    static func writeAttributes(table: AttributeTable, quantized: QuantizedAttributes, path: String) throws {
        let t = table.encode(), q = quantized.encode()
        let w = try SequentialFileWriter(path: path)
        let h = IndexFileHeader(magic: attrsMagic, count: UInt64(table.count), dimension: UInt32(table.schema.columns.count),
                                payloadBytes: UInt64(8 + t.count + q.count), recordBytes: UInt32(quantized.bytesPerVector),
                                aux: UInt64(t.count))
        try w.write(h.encode())
        try w.write(array: [UInt64(t.count)])
        try w.write(t); try w.write(q)
        try w.finish()
    }

    static func readAttributes(path: String) throws -> (AttributeTable, QuantizedAttributes) {
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: attrsMagic)
        var body = [UInt8](repeating: 0, count: Int(h.payloadBytes))
        try body.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: 64) }
        let tBytes = Int(h.aux)
        guard 8 + tBytes <= body.count else {
            throw FathomError(.corruptIndex, "attribute table of \(tBytes) bytes overruns the payload", path: path, offset: 52)
        }
        do {
            let table = try AttributeTable.decode(Array(body[8..<(8 + tBytes)]))
            let q = try QuantizedAttributes.decode(Array(body[(8 + tBytes)...]), schema: table.schema)
            return (table, q)
        } catch let e as FathomError {
            throw FathomError(.corruptIndex, e.message, path: path, offset: 64)
        }
    }

    static func writeSummaries(_ s: [AttributeSummary], path: String) throws {
        let blobs = s.map { $0.encode() }
        var offsets = [UInt64]()
        var at: UInt64 = UInt64(8 * blobs.count)
        for b in blobs { offsets.append(at); at += UInt64(b.count) }
        let w = try SequentialFileWriter(path: path)
        let h = IndexFileHeader(magic: summariesMagic, count: UInt64(s.count), dimension: 0, payloadBytes: at, recordBytes: 0)
        try w.write(h.encode())
        try w.write(array: offsets)
        for b in blobs { try w.write(b) }
        try w.finish()
    }

    static func readSummaries(path: String, heads: Int) throws -> [AttributeSummary] {
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: summariesMagic)
        guard Int(h.count) == heads else {
            throw FathomError(.corruptIndex, "\(h.count) summaries for \(heads) postings", path: path, offset: 16)
        }
        var body = [UInt8](repeating: 0, count: Int(h.payloadBytes))
        try body.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: 64) }
        return try body.withUnsafeBytes { b in
            var out = [AttributeSummary]()
            out.reserveCapacity(heads)
            for i in 0..<heads {
                let off = Int(b.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
                guard off >= heads * 8, off < b.count else {
                    throw FathomError(.corruptIndex, "summary \(i) offset \(off) out of range", path: path, offset: 64 + UInt64(i * 8))
                }
                do { out.append(try AttributeSummary.decode(UnsafeRawBufferPointer(rebasing: b[off...])).summary) }
                catch let e as FathomError { throw FathomError(.corruptIndex, e.message, path: path, offset: 64 + UInt64(off)) }
            }
            return out
        }
    }
}

/// A filter prepared against an index once and reused for every query that carries it:
/// the exact predicate, its per-cell lookup tables and its estimated selectivity.
public struct PreparedFilter: Sendable {
    public let bound: BoundFilter
    let codes: CodeFilter
    /// Estimated fraction of vectors that match (from the quantized histograms).
    public let selectivity: Double
    /// Source text, for reports.
    public let text: String
}

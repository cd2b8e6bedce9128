import FathomCodecs
import FathomCore
import FathomStorage
import Foundation

/// The attributes of an index (attrs.bin) and the per-posting summaries (summaries.bin):
/// raw values for exact checks, OSQ codes for the cheap per-record test, and for every
/// posting what values it holds, so postings that cannot match are never read.
///
/// An updated index's snapshot layers the rows of inserted vectors under the built table
/// (`table.count` > `quantized.count`): those rows have no codes, so the code test passes
/// them and the exact predicate decides (``hasUncodedRows``).
struct AttributeStore: Sendable {
    let table: AttributeTable
    let quantized: QuantizedAttributes
    let summaries: [AttributeSummary]
    /// Identifies this store: a filter prepared against another one (an earlier snapshot)
    /// is prepared again (its per-posting bits are this store's summaries).
    let token = Token()
    final class Token: Sendable {}
    /// Rows past the codes (inserted after the build): the exact predicate checks them.
    var hasUncodedRows: Bool { table.count > quantized.count }

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
        try body.withUnsafeMutableBytes { if $0.count > 0 { try f.read(into: $0.baseAddress!, count: $0.count, at: 64) } }
        // The payload: u64 table length (= aux), the table, the quantized codes.
        let stored = body.count >= 8 ? body.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) } : 0
        guard body.count >= 8, h.aux <= UInt64(body.count - 8), stored == h.aux else {
            throw FathomError(.corruptIndex, "attribute table of \(h.aux) bytes (payload says \(stored)) overruns the payload of \(body.count) bytes", path: path, offset: 52)
        }
        let tBytes = Int(h.aux)
        let table: AttributeTable, q: QuantizedAttributes
        do { table = try AttributeTable.decode(Array(body[8..<(8 + tBytes)])) }
        catch let e as FathomError { throw FathomError(.corruptIndex, "attribute table: " + e.message, path: path, offset: 72) }
        do { q = try QuantizedAttributes.decode(Array(body[(8 + tBytes)...]), schema: table.schema) }
        catch let e as FathomError { throw FathomError(.corruptIndex, "quantized attributes: " + e.message, path: path, offset: 72 + UInt64(tBytes)) }
        guard q.count == table.count, h.count == UInt64(table.count) else {
            throw FathomError(.corruptIndex, "header says \(h.count) rows, the table holds \(table.count) and the codes \(q.count)", path: path, offset: 16)
        }
        return (table, q)
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
        guard heads >= 0, h.count == UInt64(heads) else {
            throw FathomError(.corruptIndex, "\(h.count) summaries for \(heads) postings", path: path, offset: 16)
        }
        // The payload: one u64 offset (from the payload start) per summary, then the summaries.
        guard UInt64(heads) <= h.payloadBytes / 8 else {
            throw FathomError(.corruptIndex, "payload of \(h.payloadBytes) bytes cannot hold the offsets of \(heads) summaries", path: path, offset: 40)
        }
        var body = [UInt8](repeating: 0, count: Int(h.payloadBytes))
        try body.withUnsafeMutableBytes { if $0.count > 0 { try f.read(into: $0.baseAddress!, count: $0.count, at: 64) } }
        return try body.withUnsafeBytes { b in
            var out = [AttributeSummary]()
            out.reserveCapacity(heads)
            for i in 0..<heads {
                let raw = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
                guard raw >= UInt64(heads * 8), raw < UInt64(b.count) else {
                    throw FathomError(.corruptIndex, "summary \(i) offset \(raw) out of range [\(heads * 8), \(b.count))", path: path, offset: 64 + UInt64(i * 8))
                }
                let off = Int(raw)
                do { out.append(try AttributeSummary.decode(UnsafeRawBufferPointer(rebasing: b[off...])).summary) }
                catch let e as FathomError { throw FathomError(.corruptIndex, e.message, path: path, offset: 64 + UInt64(off)) }
            }
            return out
        }
    }
}

/// A filter prepared against an index once and reused for every query that carries it:
/// the exact predicate, its per-cell lookup tables, its compiled block program and its
/// estimated selectivity. Immutable and `Sendable`: share it between threads.
public struct PreparedFilter: Sendable {
    public let bound: BoundFilter
    let codes: CodeFilter
    /// The exact predicate as a flat program over the raw columns (block evaluation).
    let program: FilterProgram
    /// Estimated fraction of vectors that match (from the quantized histograms).
    public let selectivity: Double
    /// Source text, for reports.
    public let text: String
    /// Bit h set: posting h is non-empty and its summary may match (the summaries tested
    /// once per filter, not per query).
    let postingBits: [UInt64]
    /// Postings whose summaries may match, when at most ``listedPostingsLimit`` do (the walk
    /// then ranks them directly instead of routing through the head graph).
    let postingList: [UInt32]?
    static let listedPostingsLimit = 2048
    /// The attribute store this filter was prepared against.
    let store: AttributeStore.Token

    /// Prepares `bound` for an index whose attributes are `a` and whose postings hold
    /// `postingCounts(h)` records each (`heads` of them).
    init(bound: BoundFilter, store a: AttributeStore, heads: Int, postingCount: (Int) -> Int, text: String) {
        self.bound = bound
        store = a.token
        codes = bound.cellMask(quantized: a.quantized)
        program = FilterProgram(bound, table: a.table)
        selectivity = bound.estimateSelectivity(quantized: a.quantized, table: a.table)
        self.text = text
        var bits = [UInt64](repeating: 0, count: (heads + 63) / 64)
        var list = [UInt32]()
        for h in 0..<min(heads, a.summaries.count) where postingCount(h) > 0 && bound.mayMatch(summary: a.summaries[h]) {
            bits[h >> 6] |= 1 << UInt64(h & 63)
            if list.count <= Self.listedPostingsLimit { list.append(UInt32(h)) }
        }
        postingBits = bits
        postingList = list.count <= Self.listedPostingsLimit ? list : nil
        let admitted = bits.reduce(0) { $0 + $1.nonzeroBitCount }
        admittedFraction = heads > 0 ? Double(admitted) / Double(heads) : 0
    }

    /// Fraction of the postings whose summaries may match.
    let admittedFraction: Double

    @inline(__always) func postingMayMatch(_ h: Int) -> Bool { postingBits[h >> 6] & (1 << UInt64(h & 63)) != 0 }
}

import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// One entry of the posting table (docs/format.md, postings.idx).
public struct PostingEntry: Sendable, Equatable {
    /// Byte offset of the posting in postings.dat.
    public var offset: UInt64
    public var count: UInt32
    public var pages: UInt32
    public var crc: UInt32
}

/// File names of an index directory and the code that reads and writes each file
/// (formats: docs/format.md).
struct IndexLayout {
    let directory: String

    static let headsMagic = "FTHMHEAD", graphMagic = "FTHMGRPH", tableMagic = "FTHMPIDX"
    static let postingsMagic = "FTHMPDAT", vectorsMagic = "FTHMVECS", vectorChecksumsMagic = "FTHMVCRC"
    /// The files an index consists of (listed in the manifest). Indexes built before
    /// vectors.crc existed lack it; they open, and their vectors.dat pages are not checked.
    static let dataFiles = ["heads.bin", "graph.bin", "postings.idx", "postings.dat", "vectors.dat", vectorChecksumsFile]
    static let vectorChecksumsFile = "vectors.crc"

    /// Build-time files that are not part of a published index (deleted before the publish).
    static func isScratch(_ name: String) -> Bool {
        name == "stats.json" || name == "fingerprint" || name.hasPrefix("stage-") || name.hasSuffix(".tmp")
    }

    var headsPath: String { directory + "/heads.bin" }
    var graphPath: String { directory + "/graph.bin" }
    var tablePath: String { directory + "/postings.idx" }
    var postingsPath: String { directory + "/postings.dat" }
    var vectorsPath: String { directory + "/vectors.dat" }
    var vectorChecksumsPath: String { directory + "/" + Self.vectorChecksumsFile }
    static let codecFile = "codec.bin"
    var codecPath: String { directory + "/" + Self.codecFile }
    var statsPath: String { directory + "/stats.json" }

    // heads.bin
    func writeHeads(_ heads: Matrix, ids: [UInt32]) throws {
        let H = heads.rows, d = heads.cols
        let w = try SequentialFileWriter(path: headsPath)
        let h = IndexFileHeader(magic: Self.headsMagic, count: UInt64(H), dimension: UInt32(d), elementType: 0,
                                payloadBytes: UInt64(H * d * 4 + H * 4), recordBytes: UInt32(d * 4))
        try w.write(h.encode())
        try w.write(UnsafeRawPointer(heads.data), count: H * d * 4)
        try w.write(array: ids)
        try w.finish()
    }

    func readHeads() throws -> (Matrix, [UInt32]) {
        let f = try RandomAccessFile(path: headsPath)
        let h = try f.readHeader(magic: Self.headsMagic)
        // payloadBytes is bounded by the file size (readHeader), so a count that matches it fits an Int.
        guard h.dimension > 0, let need = Self.product(h.count, UInt64(h.dimension) * 4 + 4), need == h.payloadBytes else {
            throw FathomError(.corruptIndex, "header says \(h.count) heads of dimension \(h.dimension) but the payload has \(h.payloadBytes) bytes", path: headsPath, offset: 16)
        }
        let H = Int(h.count), d = Int(h.dimension)
        let m = Matrix(rows: H, cols: d)
        try f.read(into: m.data, count: H * d * 4, at: 64)
        var ids = [UInt32](repeating: 0, count: H)
        try ids.withUnsafeMutableBytes { if H > 0 { try f.read(into: $0.baseAddress!, count: H * 4, at: 64 + UInt64(H * d * 4)) } }
        return (m, ids)
    }

    func headCount() throws -> Int {
        let h = try RandomAccessFile(path: headsPath).readHeader(magic: Self.headsMagic)
        guard h.count <= h.payloadBytes else {
            throw FathomError(.corruptIndex, "header says \(h.count) heads but the payload has \(h.payloadBytes) bytes", path: headsPath, offset: 16)
        }
        return Int(h.count)
    }

    /// `a × b`, or nil when the product overflows 64 bits (header fields are untrusted).
    static func product(_ a: UInt64, _ b: UInt64) -> UInt64? {
        let (r, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : r
    }

    // graph.bin
    func writeGraph(_ g: HeadGraph) throws {
        let w = try SequentialFileWriter(path: graphPath)
        let h = IndexFileHeader(magic: Self.graphMagic, count: UInt64(g.count), dimension: UInt32(g.degree),
                                payloadBytes: UInt64(g.count * g.degree * 4), recordBytes: UInt32(g.degree * 4),
                                aux: UInt64(g.entry))
        try w.write(h.encode())
        try w.write(UnsafeRawPointer(g.neighbors), count: g.count * g.degree * 4)
        try w.finish()
    }

    func readGraph(heads: Matrix) throws -> HeadGraph {
        let f = try RandomAccessFile(path: graphPath)
        let h = try f.readHeader(magic: Self.graphMagic)
        guard h.count == UInt64(heads.rows), h.dimension > 0,
              let need = Self.product(h.count, UInt64(h.dimension) * 4), need == h.payloadBytes else {
            throw FathomError(.corruptIndex, "graph of \(h.count) nodes × degree \(h.dimension) does not match \(heads.rows) heads / its payload of \(h.payloadBytes) bytes", path: graphPath, offset: 16)
        }
        let H = heads.rows, R = Int(h.dimension)
        guard h.aux < UInt64(max(H, 1)) else {
            throw FathomError(.corruptIndex, "entry point \(h.aux) is not a head id (< \(H))", path: graphPath, offset: 52)
        }
        var nb = [UInt32](repeating: 0, count: H * R)
        try nb.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: H * R * 4, at: 64) }
        for (i, v) in nb.enumerated() where v != HeadGraph.empty && Int(v) >= H {
            throw FathomError(.corruptIndex, "neighbour id \(v) is out of range (\(H) heads)", path: graphPath, offset: 64 + UInt64(i * 4))
        }
        return HeadGraph(vectors: heads, degree: R, neighbors: nb, entry: UInt32(h.aux))
    }

    // vectors.dat: rows never straddle a 4 KiB page when a row fits in one, so re-ranking
    // reads exactly one page per vector (docs/format.md).
    struct VectorPlacement {
        let rowBytes: Int
        /// Rows per page (0: rows larger than a page, stored back to back).
        let rowsPerPage: Int
        init(rowBytes: Int) { self.rowBytes = rowBytes; rowsPerPage = rowBytes <= 4096 ? 4096 / rowBytes : 0 }
        @inline(__always) func offset(_ id: Int) -> UInt64 {
            rowsPerPage > 0
                ? 4096 + UInt64(id / rowsPerPage) * 4096 + UInt64((id % rowsPerPage) * rowBytes)
                : 4096 + UInt64(id) * UInt64(rowBytes)
        }
        func payloadBytes(count: Int) -> UInt64 {
            count == 0 ? 0 : offset(count - 1) + UInt64(rowBytes) - 4096
        }
    }

    /// A writer of vectors.dat (or of `path`, renamed to it later) that keeps its page checksums
    /// for ``finishVectors(_:count:dimension:type:)``.
    func createVectors(count: Int, dimension: Int, type: ElementType, path: String? = nil) throws -> SequentialFileWriter {
        let w = try SequentialFileWriter(path: path ?? vectorsPath, pageChecksumsFrom: 4096)
        try w.pad(to: 4096)
        return w
    }

    /// Appends rows `first ..< first + count` (dense, `rowBytes` each) at their placed offsets.
    func appendVectors(_ w: SequentialFileWriter, _ rows: UnsafeRawPointer, first: Int, count: Int, placement: VectorPlacement) throws {
        for i in 0..<count {
            try w.pad(to: placement.offset(first + i))
            try w.write(rows + i * placement.rowBytes, count: placement.rowBytes)
        }
    }

    func finishVectors(_ w: SequentialFileWriter, count: Int, dimension: Int, type: ElementType) throws {
        let placement = VectorPlacement(rowBytes: dimension * type.size)
        let h = IndexFileHeader(magic: Self.vectorsMagic, count: UInt64(count), dimension: UInt32(dimension),
                                elementType: IndexFileHeader.code(type), payloadOffset: 4096,
                                payloadBytes: placement.payloadBytes(count: count), recordBytes: UInt32(placement.rowBytes),
                                aux: UInt64(placement.rowsPerPage))
        precondition(w.offset == 4096 + h.payloadBytes)
        // Whole pages, so every one-page read stays inside the file.
        try w.pad(to: (w.offset + 4095) / 4096 * 4096)
        try w.patch(h.encode(), at: 0)
        try w.finish()
        try writeVectorChecksums(w.pageChecksums!)
    }

    // vectors.crc: the CRC32C of each 4 KiB page of vectors.dat's payload, checked as
    // re-ranking reads the page (docs/format.md).
    func writeVectorChecksums(_ crcs: [UInt32]) throws {
        try Self.writeRecords(path: vectorChecksumsPath, magic: Self.vectorChecksumsMagic, count: crcs.count, dimension: 1,
                              recordBytes: 4, aux: 4096) { p, i in p.storeLE(crcs[i]) }
    }

    /// Writes a file of `count` fixed-size little-endian records after the common header:
    /// `fill(p, i)` stores record i at `p`.
    static func writeRecords(path: String, magic: String, count: Int, dimension: UInt32, recordBytes: Int, aux: UInt64,
                             fill: (UnsafeMutableRawPointer, Int) -> Void) throws {
        let w = try SequentialFileWriter(path: path)
        let h = IndexFileHeader(magic: magic, count: UInt64(count), dimension: dimension,
                                payloadBytes: UInt64(count * recordBytes), recordBytes: UInt32(recordBytes), aux: aux)
        try w.write(h.encode())
        var raw = [UInt8](repeating: 0, count: count * recordBytes)
        raw.withUnsafeMutableBytes { b in for i in 0..<count { fill(b.baseAddress! + i * recordBytes, i) } }
        try w.write(raw)
        try w.finish()
    }

    /// Whole 4 KiB pages after vectors.dat's header page in a file of `size` bytes.
    static func vectorPayloadPages(fileSize size: UInt64) -> Int { size > 4096 ? Int((size - 4096) / 4096) : 0 }

    /// The page checksums of vectors.dat, whose payload spans `payloadPages` pages.
    func readVectorChecksums(payloadPages: Int) throws -> [UInt32] {
        let path = vectorChecksumsPath
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: Self.vectorChecksumsMagic)
        guard h.aux == 4096, h.recordBytes == 4, h.count == UInt64(payloadPages), h.payloadBytes == h.count * 4 else {
            throw FathomError(.corruptIndex, "holds \(h.count) checksums of \(h.aux)-byte pages; vectors.dat has \(payloadPages) pages of 4096 bytes", path: path, offset: 16)
        }
        var raw = [UInt8](repeating: 0, count: payloadPages * 4)
        if payloadPages > 0 { try raw.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: h.payloadOffset) } }
        return raw.withUnsafeBytes { b in (0..<payloadPages).map { b.baseAddress!.loadLE(fromByteOffset: $0 * 4, as: UInt32.self) } }
    }

    // postings.idx
    func writePostingTable(_ entries: [PostingEntry]) throws {
        try Self.writeRecords(path: tablePath, magic: Self.tableMagic, count: entries.count, dimension: 0,
                              recordBytes: 24, aux: 4096) { p, i in
            let e = entries[i]
            p.storeLE(e.offset, toByteOffset: 0)
            p.storeLE(e.count, toByteOffset: 8)
            p.storeLE(e.pages, toByteOffset: 12)
            p.storeLE(e.crc, toByteOffset: 16)
        }
    }

    /// Reads the posting table and checks every entry against the postings file's size.
    func readPostingTable(postingsBytes: UInt64, recordBytes: Int) throws -> [PostingEntry] {
        let f = try RandomAccessFile(path: tablePath)
        let h = try f.readHeader(magic: Self.tableMagic)
        guard h.recordBytes == 24, let need = Self.product(h.count, 24), need == h.payloadBytes else {
            throw FathomError(.corruptIndex, "posting table header is inconsistent (\(h.count) entries, \(h.payloadBytes) bytes)", path: tablePath, offset: 16)
        }
        guard recordBytes > 0 else {
            throw FathomError(.corruptIndex, "record size \(recordBytes) is not positive", path: directory + "/manifest.json")
        }
        let H = Int(h.count)   // fits: H × 24 = payloadBytes ≤ the file size
        var raw = [UInt8](repeating: 0, count: H * 24)
        try raw.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: H * 24, at: 64) }
        var out = [PostingEntry]()
        out.reserveCapacity(H)
        try raw.withUnsafeBytes { b in
            for i in 0..<H {
                let p = b.baseAddress! + i * 24
                let e = PostingEntry(offset: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                                     count: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                                     pages: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
                                     crc: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
                // Overflow-checked: offset, count and pages are untrusted. An empty posting
                // has no pages (readers size their buffers by the largest); a non-empty one
                // must lie whole inside postings.dat, in exactly the pages it needs.
                var fits = e.count == 0 && e.pages == 0
                if e.count > 0, e.offset >= 4096, e.offset < postingsBytes,
                   let bytes = Self.product(UInt64(e.count), UInt64(recordBytes)), bytes <= postingsBytes {
                    let expectPages = (e.offset % 4096 + bytes + 4095) / 4096
                    let end = e.offset - e.offset % 4096 + UInt64(e.pages) * 4096   // < 2^64: offset < 2^63, pages < 2^32
                    fits = UInt64(e.pages) == expectPages && end <= postingsBytes
                }
                guard fits else {
                    throw FathomError(.corruptIndex, "posting \(i) (offset \(e.offset), \(e.count) records, \(e.pages) pages) does not fit postings.dat of \(postingsBytes) bytes", path: tablePath, offset: 64 + UInt64(i * 24))
                }
                out.append(e)
            }
        }
        return out
    }

    func writeStats(_ s: Manifest.Stats) throws {
        let data = try JSONEncoder().encode(s)
        let w = try SequentialFileWriter(path: statsPath, bufferBytes: 1 << 16)
        try w.write([UInt8](data)); try w.finish()
    }

    func readStats() throws -> Manifest.Stats {
        guard let d = FileManager.default.contents(atPath: statsPath) else {
            throw FathomError(.fileNotFound, "no stats", path: statsPath)
        }
        return try JSONDecoder().decode(Manifest.Stats.self, from: d)
    }
}

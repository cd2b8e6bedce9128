import FathomCore
@testable import FathomStorage
import FathomTestSupport
import Foundation
import Testing

struct FormatCase: Sendable, CustomStringConvertible {
    var format: VectorFileFormat
    var type: ElementType
    var description: String { "\(format.rawValue)/\(type.rawValue)" }
}

let allFormatCases: [FormatCase] = [
    FormatCase(format: .fbin, type: .float32), FormatCase(format: .u8bin, type: .uint8),
    FormatCase(format: .i8bin, type: .int8), FormatCase(format: .fvecs, type: .float32),
    FormatCase(format: .bvecs, type: .uint8), FormatCase(format: .npy, type: .float32),
    FormatCase(format: .npy, type: .uint8), FormatCase(format: .npy, type: .int8),
]

/// Components of `bytes` (row-major, `type`) as floats, the reference for readFloats/rowFloats.
func referenceFloats(_ bytes: [UInt8], _ type: ElementType) -> [Float] {
    switch type {
    case .float32: return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    case .uint8: return bytes.map { Float($0) }
    case .int8: return bytes.map { Float(Int8(bitPattern: $0)) }
    }
}

/// Reads a file to its end through `read(maxRows, into)` (a reader's `read` or `readFloats`),
/// asking for `sizes` rows in turn (cycled), into `capacity` elements first set to `fill`,
/// `rowLength` elements a row; `afterEach` gets the rows read so far after every request.
/// Returns the elements and the rows read.
func readToEnd<T>(capacity: Int, fill: T, rowLength: Int, requests sizes: [Int],
                  _ read: (Int, UnsafeMutablePointer<T>) throws -> Int,
                  afterEach: (Int) -> Void = { _ in }) rethrows -> (out: [T], rows: Int) {
    var out = [T](repeating: fill, count: capacity)
    var got = 0, i = 0
    try out.withUnsafeMutableBufferPointer { o in
        while true {
            let k = try read(sizes[i % sizes.count], o.baseAddress! + got * rowLength)
            if k == 0 { break }
            got += k; i += 1
            afterEach(got)
        }
    }
    return (out, got)
}

@Suite("Vector files: round trips")
struct VectorFileRoundTripTests {
    let n = 1037, d = 13

    func makeData(_ c: FormatCase) -> [UInt8] {
        c.type == .float32 ? randomFloatBytes(n * d, seed: 11) : randomBytes(n * d, seed: 12)
    }

    /// Writes `data` in uneven appends through a small buffer.
    func write(_ data: [UInt8], _ c: FormatCase, to path: String, rows: Int) throws {
        let w = try VectorFileWriter(path: path, format: c.format, elementType: c.type, dimension: d, bufferBytes: 4096)
        let rowBytes = d * c.type.size
        var r = 0
        var step = 0
        let steps = [1, 5, 0, 333, 2, 97]
        try data.withUnsafeBytes { b in
            while r < rows {
                let k = min(steps[step % steps.count], rows - r)
                try w.append(b.baseAddress! + r * rowBytes, count: k)
                r += k; step += 1
            }
        }
        #expect(w.count == rows)
        try w.close()
        try w.close()  // idempotent
    }

    @Test("write, stream in odd chunks, mmap: byte-equal", arguments: allFormatCases)
    func roundTrip(_ c: FormatCase) throws {
        let dir = FormatTestDir()
        let path = dir.file("v.\(c.format.rawValue)")
        let data = makeData(c)
        try write(data, c, to: path, rows: n)
        let rowBytes = d * c.type.size

        let h = try VectorFileHeader.inspect(path: path)
        #expect(h.format == c.format && h.elementType == c.type && h.count == n && h.dimension == d)
        #expect(h.recordPrefix == c.format.recordPrefix)
        #expect(h.recordStride == rowBytes + h.recordPrefix)
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        #expect(h.fileSize == size && size == h.dataOffset + n * h.recordStride)
        if c.format == .npy { #expect(h.dataOffset == 128) }

        // Streaming: small internal blocks and odd request sizes (crossing block edges).
        for blockBytes in [100, 1000, 4 << 20] {
            let reader = try VectorFileReader(path: path, blockBytes: blockBytes)
            let (out, got) = try readToEnd(capacity: n * rowBytes, fill: UInt8(0), rowLength: rowBytes,
                                           requests: [1, 7, 3, 64, 500, 2, 29], { try reader.read(maxRows: $0, into: $1) },
                                           afterEach: { #expect(reader.position == $0) })
            #expect(got == n)
            #expect(out == data, "blockBytes \(blockBytes)")
            var more = out
            #expect(try reader.read(maxRows: 10, into: &more) == 0)
        }

        // One large read (the direct path for prefix-free formats).
        let big = try VectorFileReader(path: path, blockBytes: 512)
        var all = [UInt8](repeating: 0, count: n * rowBytes)
        #expect(try all.withUnsafeMutableBytes { try big.read(maxRows: n + 100, into: $0.baseAddress!) } == n)
        #expect(all == data)

        // Floats, in chunks.
        let ref = referenceFloats(data, c.type)
        let fr = try VectorFileReader(path: path, blockBytes: 333)
        let (floats, fgot) = try readToEnd(capacity: n * d, fill: Float.nan, rowLength: d, requests: [41]) {
            try fr.readFloats(maxRows: $0, into: $1)
        }
        #expect(fgot == n)
        #expect(floats == ref)

        // Seek.
        let sr = try VectorFileReader(path: path, blockBytes: 1000)
        try sr.seek(toRow: 500)
        var three = [UInt8](repeating: 0, count: 3 * rowBytes)
        #expect(try sr.read(maxRows: 3, into: &three) == 3)
        #expect(three[...] == data[500 * rowBytes ..< 503 * rowBytes])
        try sr.seek(toRow: 2)
        #expect(try sr.read(maxRows: 1, into: &three) == 1)
        #expect(three[0..<rowBytes] == data[2 * rowBytes ..< 3 * rowBytes])
        try sr.seek(toRow: n)
        #expect(try sr.read(maxRows: 1, into: &three) == 0)
        expectFathomError(.invalidArgument, ["row \(n + 1)"]) { try sr.seek(toRow: n + 1) }

        // mmap.
        let m = try MappedVectorFile(path: path)
        #expect(m.header == h)
        var row = [Float](repeating: 0, count: d)
        for i in 0..<n {
            let bytes = Array(UnsafeRawBufferPointer(start: m.row(i), count: rowBytes))
            #expect(bytes[...] == data[i * rowBytes ..< (i + 1) * rowBytes])
            m.rowFloats(i, into: &row)
            #expect(row[...] == ref[i * d ..< (i + 1) * d])
        }
    }

    @Test("zero rows: fbin and npy are readable and empty", arguments: [FormatCase(format: .fbin, type: .float32),
                                                                        FormatCase(format: .npy, type: .int8)])
    func zeroRows(_ c: FormatCase) throws {
        let dir = FormatTestDir()
        let path = dir.file("empty.\(c.format.rawValue)")
        let w = try VectorFileWriter(path: path, format: c.format, elementType: c.type, dimension: 7)
        try w.close(sync: false)
        let r = try VectorFileReader(path: path)
        #expect(r.count == 0 && r.dimension == 7 && r.elementType == c.type)
        var buf = [UInt8](repeating: 0, count: 64)
        #expect(try r.read(maxRows: 5, into: &buf) == 0)
        #expect(try MappedVectorFile(path: path).count == 0)
    }

    @Test("file bytes match the documented layouts")
    func exactBytes() throws {
        let dir = FormatTestDir()
        let rows: [Float] = [1, 2, 3, -1, -2, -3]
        for (format, expected) in [
            (VectorFileFormat.fbin, le32(UInt32(2)) + le32(UInt32(3)) + leFloats(rows)),
            (.fvecs, le32(Int32(3)) + leFloats([1, 2, 3]) + le32(Int32(3)) + leFloats([-1, -2, -3])),
        ] {
            let p = dir.file("x.\(format.rawValue)")
            let w = try VectorFileWriter(path: p, format: format, elementType: .float32, dimension: 3)
            try rows.withUnsafeBytes { try w.append($0.baseAddress!, count: 2) }
            try w.close()
            #expect([UInt8](FileManager.default.contents(atPath: p)!) == expected, "\(format)")
        }
        // npy: the header numpy itself writes for this array (np.save of a (2, 3) '<f4').
        let p = dir.file("x.npy")
        let w = try VectorFileWriter(path: p, format: .npy, elementType: .float32, dimension: 3)
        try rows.withUnsafeBytes { try w.append($0.baseAddress!, count: 2) }
        try w.close()
        let bytes = [UInt8](FileManager.default.contents(atPath: p)!)
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        let header: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, 118, 0] + Array(dict.utf8)
            + [UInt8](repeating: 0x20, count: 128 - 10 - dict.utf8.count - 1) + [0x0A]
        #expect(bytes.count == 128 + 24)
        #expect(Array(bytes[0..<128]) == header)
        #expect(Array(bytes[128...]) == leFloats(rows))
    }

    @Test("a file large enough for several 4 MiB blocks streams intact")
    func multiBlock() throws {
        let dir = FormatTestDir()
        let path = dir.file("big.bvecs")
        let n = 50_000, d = 200  // 10 MB of records: three default blocks
        let data = randomBytes(n * d, seed: 3)
        let w = try VectorFileWriter(path: path, format: .bvecs, elementType: .uint8, dimension: d)
        try data.withUnsafeBytes { try w.append($0.baseAddress!, count: n) }
        try w.close(sync: false)
        let r = try VectorFileReader(path: path)
        let (out, got) = try readToEnd(capacity: n * d, fill: UInt8(0), rowLength: d, requests: [7_777]) {
            try r.read(maxRows: $0, into: $1)
        }
        #expect(got == n && out == data)
    }

    @Test("fromPath picks formats by extension")
    func formatFromPath() throws {
        #expect(try VectorFileFormat.fromPath("/a/b/base.fbin") == .fbin)
        #expect(try VectorFileFormat.fromPath("disk_index.bin") == .fbin)
        #expect(try VectorFileFormat.fromPath("x.U8BIN") == .u8bin)
        #expect(try VectorFileFormat.fromPath("x.i8bin") == .i8bin)
        #expect(try VectorFileFormat.fromPath("sift_base.fvecs") == .fvecs)
        #expect(try VectorFileFormat.fromPath("bigann.bvecs") == .bvecs)
        #expect(try VectorFileFormat.fromPath("emb.npy") == .npy)
        expectFathomError(.unsupportedFormat, [".txt", ".fbin", ".bin", ".u8bin", ".i8bin", ".fvecs", ".bvecs", ".npy"]) {
            _ = try VectorFileFormat.fromPath("vectors.txt")
        }
        expectFathomError(.unsupportedFormat, ["no extension"]) { _ = try VectorFileFormat.fromPath("dir.d/vectors") }
        expectFathomError(.unsupportedFormat, ["ground truth"]) { _ = try VectorFileFormat.fromPath("gt.ibin") }
        #expect(VectorFileFormat.npy.elementType == nil)
        #expect(VectorFileFormat.bvecs.elementType == .uint8)
        #expect(VectorFileFormat.i8bin.elementType == .int8)
    }

    @Test("writer rejects element types the format cannot hold")
    func writerTypeCheck() throws {
        let dir = FormatTestDir()
        for (f, t) in [(VectorFileFormat.fbin, ElementType.uint8), (.fvecs, .int8), (.u8bin, .float32), (.bvecs, .int8), (.i8bin, .uint8)] {
            expectFathomError(.invalidArgument, [f.rawValue, t.rawValue]) {
                _ = try VectorFileWriter(path: dir.file("x.\(f.rawValue)"), format: f, elementType: t, dimension: 4)
            }
        }
        expectFathomError(.invalidArgument, ["dimension"]) {
            _ = try VectorFileWriter(path: dir.file("x.fbin"), format: .fbin, elementType: .float32, dimension: 0)
        }
        let w = try VectorFileWriter(path: dir.file("y.fbin"), format: .fbin, elementType: .float32, dimension: 2)
        try w.close()
        let row: [Float] = [1, 2]
        expectFathomError(.invalidArgument, ["after close"]) { try row.withUnsafeBytes { try w.append($0.baseAddress!, count: 1) } }
    }

    @Test("a full device surfaces as diskFull", .enabled(if: FileManager.default.fileExists(atPath: "/dev/full")))
    func diskFull() throws {
        expectFathomError(.diskFull, ["No space left"]) {
            let w = try VectorFileWriter(path: "/dev/full", format: .fbin, elementType: .float32, dimension: 4)
            let row: [Float] = [1, 2, 3, 4]
            try row.withUnsafeBytes { try w.append($0.baseAddress!, count: 1) }
            try w.close(sync: false)
        }
    }

    @Test("ElementConversion converts each type exactly")
    func conversion() {
        let u: [UInt8] = [0, 1, 127, 128, 255]
        var out = [Float](repeating: 0, count: 5)
        ElementConversion.toFloat(u, .uint8, count: 5, into: &out)
        #expect(out == [0, 1, 127, 128, 255])
        let i: [Int8] = [-128, -1, 0, 1, 127]
        ElementConversion.toFloat(i, .int8, count: 5, into: &out)
        #expect(out == [-128, -1, 0, 1, 127])
        // float32 from an unaligned source
        var bytes = [UInt8](repeating: 0, count: 1 + 20)
        bytes.replaceSubrange(1..., with: leFloats([1.5, -2, 3, .infinity, 0]))
        bytes.withUnsafeBytes { ElementConversion.toFloat($0.baseAddress! + 1, .float32, count: 5, into: &out) }
        #expect(out == [1.5, -2, 3, .infinity, 0])
    }
}

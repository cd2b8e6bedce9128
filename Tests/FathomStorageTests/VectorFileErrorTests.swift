import FathomCore
@testable import FathomStorage
import FathomTestSupport
import Foundation
import Testing

/// An .npy file: the given header dict (padded like numpy to a 64-byte boundary) and data.
func npyFile(dict: String, data: [UInt8], major: UInt8 = 1) -> [UInt8] {
    let prelude = major == 1 ? 10 : 12
    var text = Array(dict.utf8)
    let total = (prelude + text.count + 1 + 63) / 64 * 64
    text += [UInt8](repeating: 0x20, count: total - prelude - text.count - 1) + [0x0A]
    var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [major, 0]
    if major == 1 {
        out += [UInt8(text.count & 0xff), UInt8(text.count >> 8)]
    } else {
        out += le32(UInt32(text.count))
    }
    return out + text + data
}

@Suite("Vector files: bad input")
struct VectorFileErrorTests {
    // MARK: big-ann

    @Test("truncated .fbin: names the missing bytes and where the file ends")
    func truncatedFbin() throws {
        let dir = FormatTestDir()
        let bytes = le32(UInt32(10)) + le32(UInt32(4)) + randomFloatBytes(40, seed: 1)
        let p = dir.write("t.fbin", Array(bytes.dropLast(5)))
        for open in [{ _ = try VectorFileHeader.inspect(path: p) }, { _ = try VectorFileReader(path: p) },
                     { _ = try MappedVectorFile(path: p) }] as [() throws -> Void] {
            let e = expectFathomError(.malformedFile, ["10 × 4", "168 bytes", "163 bytes", "truncated", "5 bytes missing"], offset: 163, open)
            #expect(e?.path == p)
        }
    }

    @Test("header whose n·d overflows 64 bits")
    func overflow() throws {
        let dir = FormatTestDir()
        let p1 = dir.write("o1.fbin", le32(UInt32.max) + le32(UInt32.max) + [1, 2, 3, 4])
        expectFathomError(.malformedFile, ["n = 4294967295", "d = 4294967295", "overflows"], offset: 0) {
            _ = try VectorFileHeader.inspect(path: p1)
        }
        // n·d fits but n·d·4 does not
        let p2 = dir.write("o2.fbin", le32(UInt32(1 << 31)) + le32(UInt32(1 << 31)) + [0, 0, 0, 0])
        expectFathomError(.malformedFile, ["overflows"], offset: 0) { _ = try VectorFileHeader.inspect(path: p2) }
    }

    @Test("header that disagrees with the file size")
    func sizeMismatch() throws {
        let dir = FormatTestDir()
        // too many bytes
        let p = dir.write("m.u8bin", le32(UInt32(3)) + le32(UInt32(4)) + randomBytes(20, seed: 2))
        expectFathomError(.malformedFile, ["3 × 4 uint8 = 20 bytes", "28 bytes", "8 unexpected bytes"], offset: 20) {
            _ = try VectorFileHeader.inspect(path: p)
        }
        // a u8bin named .fbin: the message suggests the right format
        let q = dir.write("m.fbin", le32(UInt32(5)) + le32(UInt32(4)) + randomBytes(20, seed: 2))
        expectFathomError(.malformedFile, ["5 × 4 float32", "fits u8bin"], offset: 28) { _ = try VectorFileHeader.inspect(path: q) }
        // explicit format overrides the extension and then it reads fine
        #expect(try VectorFileHeader.inspect(path: q, format: .u8bin).count == 5)
        // header shorter than 8 bytes
        let s = dir.write("s.i8bin", [1, 0, 0])
        expectFathomError(.malformedFile, ["incomplete", "3 bytes", "needs 8"], offset: 3) { _ = try VectorFileHeader.inspect(path: s) }
        // dimension 0
        let z = dir.write("z.fbin", le32(UInt32(3)) + le32(UInt32(0)))
        expectFathomError(.malformedFile, ["dimension 0"], offset: 4) { _ = try VectorFileHeader.inspect(path: z) }
    }

    @Test("empty file, in every format", arguments: VectorFileFormat.allCases)
    func emptyFile(_ f: VectorFileFormat) throws {
        let dir = FormatTestDir()
        let p = dir.write("e.\(f.rawValue)", [])
        expectFathomError(.malformedFile, ["empty", "0 bytes"], offset: 0) { _ = try VectorFileReader(path: p) }
    }

    @Test("a directory instead of a file")
    func directory() throws {
        let dir = FormatTestDir()
        let p = dir.file("vectors.fbin")
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: false)
        let e = expectFathomError(.fileNotFound, ["directory"]) { _ = try VectorFileHeader.inspect(path: p) }
        #expect(e?.path == p)
        expectFathomError(.fileNotFound, ["directory"]) { _ = try MappedVectorFile(path: dir.path) }
        expectFathomError(.fileNotFound, ["directory"]) { _ = try GroundTruth.read(path: dir.path) }
    }

    @Test("missing file")
    func missing() throws {
        let dir = FormatTestDir()
        let p = dir.file("nope.fbin")
        let e = expectFathomError(.fileNotFound, ["No such file"]) { _ = try VectorFileReader(path: p) }
        #expect(e?.path == p && e?.errno == ENOENT)
        expectFathomError(.fileNotFound) { _ = try GroundTruth.read(path: dir.file("nope.ibin")) }
    }

    @Test("a file truncated after it was opened: error with the offset")
    func truncatedWhileReading() throws {
        let dir = FormatTestDir()
        let n = 100, d = 8
        let p = dir.write("shrink.fbin", le32(UInt32(n)) + le32(UInt32(d)) + randomFloatBytes(n * d, seed: 4))
        let r = try VectorFileReader(path: p, blockBytes: 32 * 10)
        var buf = [Float](repeating: 0, count: n * d)
        #expect(try r.read(maxRows: 10, into: &buf) == 10)
        #expect(truncate(p, off_t(8 + 50 * d * 4 + 7)) == 0)
        let e = expectFathomError(.malformedFile, ["unexpected end of file", "row 50", "shorter"], offset: UInt64(8 + 50 * d * 4 + 7)) {
            while try r.read(maxRows: 10, into: &buf) > 0 {}
        }
        #expect(e?.path == p)
        #expect(r.position == 50)
    }

    // MARK: fvecs / bvecs

    @Test(".fvecs whose dimension changes mid-file: the error names the record")
    func fvecsDimensionChange() throws {
        let dir = FormatTestDir()
        let rec4 = { (s: UInt64) in le32(Int32(4)) + randomFloatBytes(4, seed: s) }
        // Same size as four 4-d records: only the per-record check can catch it.
        var bytes = rec4(1) + rec4(2) + rec4(3) + le32(Int32(5)) + randomFloatBytes(4, seed: 4) + rec4(5)
        let p = dir.write("change.fvecs", bytes)
        #expect(try VectorFileHeader.inspect(path: p).count == 5)
        let frag = ["record 3", "dimension 5", "record 0 has 4", "changes mid-file"]
        expectFathomError(.malformedFile, frag, offset: 60) { _ = try MappedVectorFile(path: p) }
        let r = try VectorFileReader(path: p, blockBytes: 40)  // two records per block
        var buf = [Float](repeating: 0, count: 5 * 4)
        #expect(try r.read(maxRows: 3, into: &buf) == 3)
        expectFathomError(.malformedFile, frag, offset: 60) { _ = try r.read(maxRows: 2, into: &buf) }
        // A real size change (5 floats): inspect itself finds the record.
        bytes = rec4(1) + rec4(2) + rec4(3) + le32(Int32(5)) + randomFloatBytes(5, seed: 4)
        let q = dir.write("change2.fvecs", bytes)
        expectFathomError(.malformedFile, frag, offset: 60) { _ = try VectorFileHeader.inspect(path: q) }
    }

    @Test(".bvecs with a truncated last record, and a non-positive dimension")
    func bvecsTruncated() throws {
        let dir = FormatTestDir()
        let rec = le32(Int32(3)) + [1, 2, 3]
        let p = dir.write("t.bvecs", rec + rec + Array(rec.prefix(5)))
        expectFathomError(.malformedFile, ["7-byte records", "5 bytes are left over after 2 records", "truncated"], offset: 14) {
            _ = try VectorFileHeader.inspect(path: p)
        }
        let q = dir.write("neg.bvecs", le32(Int32(-3)) + [1, 2, 3])
        expectFathomError(.malformedFile, ["record 0 has dimension -3", "positive"], offset: 0) { _ = try VectorFileHeader.inspect(path: q) }
        let s = dir.write("short.bvecs", [3, 0])
        expectFathomError(.malformedFile, ["incomplete", "2 bytes"], offset: 2) { _ = try VectorFileHeader.inspect(path: s) }
    }

    // MARK: npy

    @Test("hand-built npy v1 with numpy's exact header bytes")
    func npyNumpyHeader() throws {
        let dir = FormatTestDir()
        let values: [Float] = (0..<12).map { Float($0) * 0.5 }
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
        // Exactly what np.save(f, np.arange(12, dtype='<f4').reshape(3, 4)) writes: header length 118 (0x76).
        var bytes: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 0x01, 0x00, 0x76, 0x00] + Array(dict.utf8)
        bytes += [UInt8](repeating: 0x20, count: 118 - dict.utf8.count - 1) + [0x0A]
        #expect(bytes.count == 128)
        let p = dir.write("np.npy", bytes + leFloats(values))
        let h = try VectorFileHeader.inspect(path: p)
        #expect(h.format == .npy && h.elementType == .float32 && h.count == 3 && h.dimension == 4 && h.dataOffset == 128)
        let m = try MappedVectorFile(path: p)
        var row = [Float](repeating: 0, count: 4)
        m.rowFloats(2, into: &row)
        #expect(row == [4, 4.5, 5, 5.5])
    }

    @Test("npy v2 and v3 headers round trip")
    func npyVersion2() throws {
        let dir = FormatTestDir()
        let n = 37, d = 5
        let data = randomBytes(n * d, seed: 9)
        // Write with the writer (v1), then rebuild the same array with v2/v3 headers.
        let v1 = dir.file("v1.npy")
        let w = try VectorFileWriter(path: v1, format: .npy, elementType: .int8, dimension: d)
        try data.withUnsafeBytes { try w.append($0.baseAddress!, count: n) }
        try w.close()
        for major: UInt8 in [2, 3] {
            let p = dir.write("v\(major).npy", npyFile(dict: "{'descr': '|i1', 'fortran_order': False, 'shape': (\(n), \(d)), }", data: data, major: major))
            let h = try VectorFileHeader.inspect(path: p)
            #expect(h.dataOffset % 64 == 0 && h.count == n && h.dimension == d && h.elementType == .int8)
            let r = try VectorFileReader(path: p, blockBytes: 17)
            let (out, got) = try readToEnd(capacity: n * d, fill: UInt8(0), rowLength: d, requests: [4]) {
                try r.read(maxRows: $0, into: $1)
            }
            #expect(got == n && out == data)
            let m = try MappedVectorFile(path: p), m1 = try MappedVectorFile(path: v1)
            for i in 0..<n {
                #expect(Array(UnsafeRawBufferPointer(start: m.row(i), count: d)) == Array(UnsafeRawBufferPointer(start: m1.row(i), count: d)))
            }
        }
    }

    @Test("npy header dict: any key order, whitespace, quotes, 1-D shape, Python 2 longs")
    func npyDictTolerance() throws {
        let dir = FormatTestDir()
        let data = randomBytes(6, seed: 1)
        let cases: [(String, Int, Int, ElementType)] = [
            ("{'shape': (2, 3), 'fortran_order': False, 'descr': '|u1'}", 2, 3, .uint8),
            ("{ \"descr\" :\t'<u1' ,\n 'fortran_order':False,'shape':( 3 , 2 , ) }", 3, 2, .uint8),
            ("{'descr': '|i1', 'fortran_order': False, 'shape': (2L, 3L), }", 2, 3, .int8),
            ("{'descr': '|u1', 'fortran_order': False, 'shape': (6,), }", 1, 6, .uint8),  // 1-D: one vector
        ]
        for (i, c) in cases.enumerated() {
            let p = dir.write("d\(i).npy", npyFile(dict: c.0, data: data))
            let h = try VectorFileHeader.inspect(path: p)
            #expect(h.count == c.1 && h.dimension == c.2 && h.elementType == c.3, "\(c.0)")
        }
        let f = dir.write("f.npy", npyFile(dict: "{'descr': '=f4', 'fortran_order': False, 'shape': (1, 1), }", data: leFloats([2])))
        #expect(try VectorFileHeader.inspect(path: f).elementType == .float32)
    }

    @Test(".npy in Fortran order")
    func npyFortran() throws {
        let dir = FormatTestDir()
        let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"
        let p = dir.write("f.npy", npyFile(dict: dict, data: leFloats([1, 2, 3, 4])))
        let valueOffset = 10 + dict.utf8.distance(from: dict.utf8.startIndex, to: dict.range(of: "True")!.lowerBound)
        expectFathomError(.unsupportedFormat, ["Fortran", "C-order", "ascontiguousarray"], offset: UInt64(valueOffset)) {
            _ = try VectorFileReader(path: p)
        }
    }

    @Test(".npy with an unsupported dtype (<f8)")
    func npyDtype() throws {
        let dir = FormatTestDir()
        let p = dir.write("d.npy", npyFile(dict: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", data: [UInt8](repeating: 0, count: 32)))
        expectFathomError(.unsupportedFormat, ["'<f8'", "float64", "'<f4'", "'|u1'", "'|i1'"], offset: 20) {
            _ = try VectorFileHeader.inspect(path: p)
        }
        let b = dir.write("b.npy", npyFile(dict: "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", data: [UInt8](repeating: 0, count: 16)))
        expectFathomError(.unsupportedFormat, ["'>f4'", "big-endian float32"]) { _ = try VectorFileHeader.inspect(path: b) }
        let s = dir.write("s.npy", npyFile(dict: "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (2,), }", data: [UInt8](repeating: 0, count: 16)))
        expectFathomError(.unsupportedFormat, ["structured"]) { _ = try VectorFileHeader.inspect(path: s) }
    }

    @Test(".npy with the wrong magic, an unknown version, a bad dict, a bad shape or size")
    func npyMalformed() throws {
        let dir = FormatTestDir()
        var bytes = npyFile(dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", data: leFloats([1, 2]))
        bytes[1] = UInt8(ascii: "X")
        let p = dir.write("m.npy", bytes)
        expectFathomError(.malformedFile, ["not an .npy file", "magic", "\\x93XUMPY"], offset: 0) { _ = try VectorFileHeader.inspect(path: p) }

        bytes[1] = UInt8(ascii: "N"); bytes[6] = 4
        let v = dir.write("v.npy", bytes)
        expectFathomError(.unsupportedFormat, ["version 4.0", "1.0, 2.0, 3.0"], offset: 6) { _ = try VectorFileHeader.inspect(path: v) }

        let bad = dir.write("b.npy", npyFile(dict: "{'descr': '<f4' 'fortran_order': False, 'shape': (1, 2), }", data: leFloats([1, 2])))
        expectFathomError(.malformedFile, ["cannot parse", "expected ',' or '}'", "'descr'"], offset: 10 + 16) {
            _ = try VectorFileHeader.inspect(path: bad)
        }
        let missing = dir.write("k.npy", npyFile(dict: "{'descr': '<f4', 'shape': (1, 2), }", data: leFloats([1, 2])))
        expectFathomError(.malformedFile, ["no 'fortran_order' key"]) { _ = try VectorFileHeader.inspect(path: missing) }

        let threeD = dir.write("3d.npy", npyFile(dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 1), }", data: leFloats([1, 2])))
        expectFathomError(.unsupportedFormat, ["(1, 2, 1)", "3-D", "2-D"]) { _ = try VectorFileHeader.inspect(path: threeD) }

        let short = dir.write("short.npy", npyFile(dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", data: leFloats([1, 2])))
        expectFathomError(.malformedFile, ["(3, 2)", "truncated", "16 bytes missing"], offset: 128 + 8) {
            _ = try VectorFileHeader.inspect(path: short)
        }
        var hdr = npyFile(dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", data: [])
        hdr[8] = 0xFF; hdr[9] = 0x7F  // header length 32767, beyond the file
        let cut = dir.write("cut.npy", hdr)
        expectFathomError(.malformedFile, ["header length", "truncated"], offset: 8) { _ = try VectorFileHeader.inspect(path: cut) }
    }
}

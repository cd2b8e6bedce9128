import FathomCore
@testable import FathomStorage
import FathomTestSupport
import Foundation
import Testing

@Suite("Ground truth files")
struct GroundTruthTests {
    func sample(nq: Int = 7, k: Int = 5, distances: Bool = true) -> GroundTruth {
        let ids = (0..<nq * k).map { Int32(($0 * 7919) % 1000) }
        let d = distances ? (0..<nq * k).map { Float($0 % k) + Float($0 / k) * 0.25 } : nil
        return GroundTruth(count: nq, k: k, ids: ids, distances: d)
    }

    @Test(".ibin round trip and layout")
    func ibinRoundTrip() throws {
        let dir = FormatTestDir()
        let gt = sample()
        let p = dir.file("gt.ibin")
        try gt.write(path: p)
        let bytes = [UInt8](FileManager.default.contents(atPath: p)!)
        #expect(bytes.count == 8 + 8 * 35)
        #expect(Array(bytes[0..<8]) == le32(UInt32(7)) + le32(UInt32(5)))
        let back = try GroundTruth.read(path: p)
        #expect(back == gt)
        #expect(back.neighbors(of: 2) == gt.ids[10..<15])
        #expect(back.distances(of: 6)! == gt.distances![30..<35])
    }

    @Test(".ivecs round trip (ids only)")
    func ivecsRoundTrip() throws {
        let dir = FormatTestDir()
        let gt = sample(nq: 4, k: 3, distances: false)
        let p = dir.file("gt.ivecs")
        try gt.write(path: p, sync: false)
        let bytes = [UInt8](FileManager.default.contents(atPath: p)!)
        #expect(bytes.count == 4 * 16 && Array(bytes[0..<4]) == le32(Int32(3)))
        #expect(try GroundTruth.read(path: p) == gt)
        // ibin needs distances
        expectFathomError(.invalidArgument, ["no distances", ".ivecs"]) { try gt.write(path: dir.file("x.ibin")) }
    }

    @Test(".ibin whose size is not 8 + 8·nq·k")
    func ibinBadSize() throws {
        let dir = FormatTestDir()
        // ids only
        let idsOnly = dir.write("ids.ibin", le32(UInt32(2)) + le32(UInt32(3)) + [UInt8](repeating: 1, count: 24))
        expectFathomError(.malformedFile, ["2 queries × 3 neighbours", "56 bytes", "32 bytes", "ids only"], offset: 32) {
            _ = try GroundTruth.read(path: idsOnly)
        }
        // truncated
        let t = dir.write("t.ibin", le32(UInt32(2)) + le32(UInt32(3)) + [UInt8](repeating: 1, count: 40))
        expectFathomError(.malformedFile, ["truncated", "8 bytes missing"], offset: 48) { _ = try GroundTruth.read(path: t) }
        // overflow
        let o = dir.write("o.ibin", le32(UInt32.max) + le32(UInt32.max) + [0, 0, 0, 0])
        expectFathomError(.malformedFile, ["overflows"], offset: 0) { _ = try GroundTruth.read(path: o) }
        let e = dir.write("e.ibin", [])
        expectFathomError(.malformedFile, ["empty"], offset: 0) { _ = try GroundTruth.read(path: e) }
    }

    @Test(".ivecs whose k changes names the record")
    func ivecsChange() throws {
        let dir = FormatTestDir()
        let rec = { (k: Int32) in le32(k) + [UInt8](repeating: 0, count: 8) }
        let p = dir.write("c.ivecs", rec(2) + rec(2) + rec(3))  // same size, k lies
        expectFathomError(.malformedFile, ["record 2", "k = 3", "record 0 has 2"], offset: 24) { _ = try GroundTruth.read(path: p) }
        let q = dir.write("t.ivecs", rec(2) + rec(2) + [2, 0, 0])
        expectFathomError(.malformedFile, ["3 bytes are left over after 2 records"], offset: 24) { _ = try GroundTruth.read(path: q) }
    }
}

/// The real datasets shipped next to the package; skipped when the folder is absent.
@Suite("Shipped datasets", .enabled(if: FileManager.default.fileExists(atPath: sharedDatasets + "/fashion-mnist-784/base.u8bin")))
struct ShippedDatasetTests {
    let folder = sharedDatasets + "/fashion-mnist-784"

    @Test("fashion-mnist base.u8bin: header, streaming and mmap agree")
    func fashionBase() throws {
        let h = try VectorFileHeader.inspect(path: folder + "/base.u8bin")
        #expect(h.format == .u8bin && h.elementType == .uint8)
        #expect(h.count == 60_000 && h.dimension == 784 && h.dataOffset == 8 && h.fileSize == 47_040_008)

        let r = try VectorFileReader(path: folder + "/base.u8bin")
        let m = try MappedVectorFile(path: folder + "/base.u8bin")
        var floats = [Float](repeating: 0, count: 3 * 784)
        #expect(try r.readFloats(maxRows: 3, into: &floats) == 3)
        var row = [Float](repeating: 0, count: 784)
        for i in 0..<3 {
            m.rowFloats(i, into: &row)
            #expect(row[...] == floats[i * 784 ..< (i + 1) * 784])
        }
        #expect(floats.allSatisfy { $0 >= 0 && $0 <= 255 } && floats.contains { $0 > 0 })
        // The last row through a seek.
        try r.seek(toRow: 59_999)
        var last = [UInt8](repeating: 0, count: 784)
        #expect(try r.read(maxRows: 10, into: &last) == 1)
        #expect(last == Array(UnsafeRawBufferPointer(start: m.row(59_999), count: 784)))
    }

    @Test("fashion-mnist gt.ibin: 10,000 × 100 with ascending distances")
    func fashionGroundTruth() throws {
        let gt = try GroundTruth.read(path: folder + "/gt.ibin")
        #expect(gt.count == 10_000 && gt.k == 100)
        #expect(gt.ids.allSatisfy { $0 >= 0 && $0 < 60_000 })
        let d = try #require(gt.distances(of: 0))
        #expect(zip(d, d.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(try VectorFileHeader.inspect(path: folder + "/query.u8bin").count == 10_000)
    }

    @Test("pypi-minilm base.fbin: unit-norm float32 rows",
          .enabled(if: FileManager.default.fileExists(atPath: sharedDatasets + "/pypi-minilm-384/base.fbin")))
    func pypiBase() throws {
        let m = try MappedVectorFile(path: sharedDatasets + "/pypi-minilm-384/base.fbin")
        #expect(m.count == 60_000 && m.dimension == 384 && m.elementType == .float32)
        var row = [Float](repeating: 0, count: 384)
        m.rowFloats(12_345, into: &row)
        let norm = row.reduce(0) { $0 + $1 * $1 }.squareRoot()
        #expect(abs(norm - 1) < 1e-3)
    }
}

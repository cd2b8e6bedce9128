// Fuzz target: the checksummed binary blobs inside index files, decoded directly (inside
// attrs.bin, codec.bin and summaries.bin they sit behind a CRC the indexfiles target cannot
// forge). Byte 0 picks the decoder (byte % 4): AttributeTable.decode, QuantizedAttributes.decode
// (with the fixed table's schema), AttributeSummary.decode, LeanVecProjection.decode; the rest
// is the blob. When byte 0 < 128 the harness rewrites the blob's trailing CRC32C (all blobs but
// summaries end with a u32 CRC32C of the preceding bytes), so mutations reach the structural
// checks; byte 0 >= 128 keeps the CRC as the input has it. A decoded value is then used: every
// table cell read, codes of every row, a summary tested by a filter, a vector projected.
import Fathom
import FathomCodecs
import FuzzSupport
import Foundation

final class Fixture: @unchecked Sendable {
    let table: AttributeTable
    let quantized: QuantizedAttributes
    let filter: BoundFilter
    init() throws {
        let csv = scratch + "/blobs.csv"
        writeFile(csv, Array(attributeCSV(rows: 30).utf8))
        table = try AttributeTable.loadCSV(path: csv, expectedRows: nil)
        quantized = try QuantizedAttributes(table: table)
        filter = try FilterParser.parse("price < 20 AND (color = 'red' OR tags HAS 't3') AND year BETWEEN 1995 AND 2005").bind(to: table.schema)
    }
}
nonisolated(unsafe) var fixture: Fixture! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    guard size >= 1 else { return 0 }
    let pick = Int(data[0])
    var blob = [UInt8](UnsafeBufferPointer(start: data + 1, count: size - 1))
    if pick < 128 && pick % 4 != 2 && blob.count >= 4 {
        let c = blob.withUnsafeBytes { crc32c($0.baseAddress!, blob.count - 4, 0) }
        for j in 0..<4 { blob[blob.count - 4 + j] = UInt8(truncatingIfNeeded: c >> (8 * UInt32(j))) }
    }
    switch pick % 4 {
    case 0:
        expectingFathomErrors("AttributeTable.decode") {
            let t = try AttributeTable.decode(blob)
            var h = 0
            for r in 0..<(t.columns.isEmpty ? 0 : t.count) { for c in 0..<t.columns.count { h &+= t.value(row: r, column: c).description.utf8.count } }
            if h == 0x5EED_F00D { print("") }
        }
    case 1:
        expectingFathomErrors("QuantizedAttributes.decode") {
            let q = try QuantizedAttributes.decode(blob, schema: fixture.table.schema)
            if q.count == fixture.table.count {
                _ = fixture.filter.matchingRows(in: fixture.table, quantized: q)
                _ = fixture.filter.estimateSelectivity(quantized: q, table: fixture.table)
                let mask = fixture.filter.cellMask(quantized: q)
                _ = mask.passesEverything
            }
        }
    case 2:
        expectingFathomErrors("AttributeSummary.decode") {
            let s = try AttributeSummary.decode(blob)
            _ = fixture.filter.mayMatch(summary: s)
        }
    default:
        expectingFathomErrors("LeanVecProjection.decode") {
            let p = try LeanVecProjection.decode(blob)
            let x = [Float](repeating: 0.25, count: p.inputDim)
            var y = [Float](repeating: 0, count: p.outputDim)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { p.projectData(xp.baseAddress!, into: $0.baseAddress!) } }
        }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    do { fixture = try Fixture() } catch { fatalError("cannot build the blobs fixture: \(error)") }
    writeSeedsIfAsked("blobs") { dir in
        func seed(_ name: String, _ sel: UInt8, _ bytes: [UInt8]) { writeFile(dir + "/" + name, [sel] + bytes) }
        let t = fixture.table.encode(), q = fixture.quantized.encode()
        seed("table", 0, t); seed("table-truncated", 0, Array(t.prefix(t.count / 2)))
        seed("quantized", 1, q); seed("quantized-truncated", 1, Array(q.prefix(q.count / 2)))
        let s = AttributeSummary.summarize(ids: [0, 3, 7, 11], table: fixture.table, quantized: fixture.quantized)
        seed("summary", 2, s.encode())
        seed("summary-all", 2, AttributeSummary.summarize(ids: Array(0..<30), table: fixture.table).encode())
        // A small PCA projection 6 → 3 of seeded data.
        let m = Matrix(rows: 40, cols: 6)
        for i in 0..<(40 * 6) { m.data[i] = Float((i * 7919) % 101) / 101 - 0.5 }
        let lv = try LeanVecProjection.trainPCA(sample: m, targetDim: 3).encode()
        seed("leanvec", 3, lv); seed("leanvec-truncated", 3, Array(lv.prefix(40)))
        var badCRC = lv; badCRC[badCRC.count - 1] ^= 0xFF
        seed("leanvec-bad-crc", 131, badCRC)
    }
    return 0
}

@_cdecl("FuzzBlobs_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

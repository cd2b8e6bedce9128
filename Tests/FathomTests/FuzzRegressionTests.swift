import FathomTools
import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
#if canImport(Glibc)
import Glibc
#endif

/// Replays inputs found by the libFuzzer targets (fuzz/, `tools/fuzz`, docs/reliability.md)
/// from `Tests/FathomTests/FuzzRegressions/`: each is malformed and must fail with a
/// `FathomError`, never trap. A file is named `<target>-<what>[.ext]` and replayed the way that
/// target's harness runs it:
///
/// - `vectorfiles-*.{fbin,u8bin,fvecs,bvecs,npy}`: inspect, read all rows, map (format from the extension);
/// - `groundtruth-*.{ibin,ivecs}`: `GroundTruth.read`;
/// - `attributes-*.{csv,jsonl}`: `AttributeTable.loadCSV` / `loadJSONLines`;
/// - `filter-*`: `FilterParser.parse` + bind to the fuzz schema;
/// - `manifest-*`: the bytes as manifest.json (self-checksum filled in) of a valid index;
/// - `indexfiles-*`: byte 0 picks the index file (byte % 6 of heads.bin, graph.bin,
///   postings.idx, codec.bin, attrs.bin, summaries.bin; (byte / 6) odd: the plain index),
///   the rest replaces it (header CRC recomputed when byte 0 < 128; manifest size/CRC updated);
/// - `blobs-*`: byte 0 % 4 picks `AttributeTable.decode`, `QuantizedAttributes.decode`,
///   `AttributeSummary.decode` or `LeanVecProjection.decode` (trailing CRC re-sealed when byte 0 < 128).
///
/// Every input must fail: one that opens and searches cleanly is a failure too. An input that
/// still crashes is added with a `.disabled("crash found by fuzzing: …")` test of its own until
/// the bug is fixed (none at present).
@Suite struct FuzzRegressionTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("FuzzRegressions").path

    static var inputs: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") && !$0.hasSuffix(".valid") }.sorted()
    }

    /// Inputs that are valid (`*.valid`): findings of a harness's property checks, not errors.
    static var validInputs: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".valid") }.sorted()
    }

    @Test(arguments: inputs)
    func replayFailsWithAFathomError(_ name: String) throws {
        #expect(throws: FathomError.self, "\(name)") { try Self.replay(name) }
    }

    /// Every fuzz target (fuzz/Sources/Fuzz*) has at least one replayed input, so an empty
    /// folder or a target without cases fails here instead of passing with zero cases.
    @Test func everyFuzzTargetHasACase() throws {
        let sources = URL(fileURLWithPath: Self.directory).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fuzz/Sources").path
        let targets = try FileManager.default.contentsOfDirectory(atPath: sources)
            .filter { $0.hasPrefix("Fuzz") && $0 != "FuzzSupport" }.map { $0.dropFirst(4).lowercased() }
        #expect(targets.count >= 7, "fuzz targets found: \(targets)")
        for t in targets {
            #expect(Self.inputs.contains { $0.hasPrefix(t + "-") }, "no regression input for fuzz target \(t)")
        }
    }

    /// The inputs that trapped (or ran out of memory) before the readers checked their header
    /// counts (found by `tools/fuzz indexfiles`): each must now be a `corruptIndex` error naming
    /// the file and offset.
    @Test(arguments: [
        ("indexfiles-summaries-count-beyond-int.bin", "summaries.bin"),      // Int(h.count), count ≥ 2^63
        ("indexfiles-summaries-offset-beyond-int.bin", "summaries.bin"),     // Int(offset), offset ≥ 2^63
        ("indexfiles-summaries-offsets-past-payload.bin", "summaries.bin"),  // offset table past the payload
        ("indexfiles-postings-idx-count-beyond-int.bin", "postings.idx"),    // Int(h.count)
        ("indexfiles-postings-idx-count-times-24-overflows.bin", "postings.idx"),
        ("indexfiles-postings-idx-entry-end-overflows.bin", "postings.idx"), // offset + pages × 4096
        ("indexfiles-graph-count-beyond-int.bin", "graph.bin"),
        // found after the fixes (tools/fuzz 90 indexfiles): an empty posting claiming 2^16+ pages
        // made every searcher allocate 64 × that many pages (OOM under libFuzzer's 2 GiB limit)
        ("indexfiles-postings-idx-empty-posting-huge-pages.bin", "postings.idx"),
    ])
    func formerCrashIsACorruptIndexError(_ name: String, _ file: String) throws {
        do {
            try Self.replay(name)
            Issue.record("\(name): opened and searched without an error")
        } catch let e as FathomError {
            #expect(e.code == .corruptIndex, "\(name): \(e)")
            #expect(e.path?.hasSuffix("/" + file) == true, "\(name): \(e)")
            #expect(e.offset != nil, "\(name): \(e)")
        }
        // `fathom verify` reports the same file (its checksum in the manifest was forged too).
        try Self.replay(name) { dir in
            let problems = IndexVerifier.verify(directory: dir)
            #expect(problems.contains { $0.file.hasSuffix("/" + file) && $0.offset != nil }, "\(name): verify found \(problems)")
        }
    }

    /// The filter target's round-trip property (print the parsed tree, parse it again: same
    /// tree), for the filter inputs here. Found by `tools/fuzz 60 filter`: a quote followed by
    /// a combining mark (`''\u{064F}`) forms one Character with it, so the printer does not
    /// double it and the canonical text does not parse (Sources/Fathom/Filter, not fixed here).
    @Test(.disabled("fuzz finding: FilterExpression.description does not escape a quote that starts a grapheme cluster (filter-quote-before-combining-mark.valid)"))
    func filterCanonicalTextRoundTrips() throws {
        for name in Self.inputs + Self.validInputs where name.hasPrefix("filter-") {
            let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: Self.directory + "/" + name)), as: UTF8.self)
            guard let parsed = try? FilterParser.parse(text) else { continue }
            let printed = parsed.expression.description
            #expect(try FilterParser.parse(printed).expression == parsed.expression, "\(name): printed as \(printed.debugDescription)")
        }
    }

    // MARK: - Replay, as the fuzz harnesses do

    /// Replays `name`; index inputs are checked by `check` on the patched index directory
    /// (default: open and search it).
    static func replay(_ name: String, check: (String) throws -> Void = FuzzReference.openAndSearch) throws {
        let path = directory + "/" + name
        let target = String(name.prefix { $0 != "-" })
        let ext = (name as NSString).pathExtension.lowercased()
        switch target {
        case "vectorfiles":
            _ = try VectorFileHeader.inspect(path: path)
            let r = try VectorFileReader(path: path, blockBytes: 512)
            if r.count > 0 {
                let rows = min(r.count, 16)
                let buf = UnsafeMutablePointer<Float>.allocate(capacity: rows * r.dimension)
                defer { buf.deallocate() }
                while try r.readFloats(maxRows: rows, into: buf) > 0 {}
            }
            let m = try MappedVectorFile(path: path)
            if m.count > 0 {
                let row = UnsafeMutablePointer<Float>.allocate(capacity: m.dimension)
                defer { row.deallocate() }
                for i in 0..<m.count { m.rowFloats(i, into: row) }
            }
        case "groundtruth":
            _ = try GroundTruth.read(path: path)
        case "attributes":
            if ext == "jsonl" { _ = try AttributeTable.loadJSONLines(path: path, expectedRows: nil) }
            else { _ = try AttributeTable.loadCSV(path: path, expectedRows: nil) }
        case "filter":
            let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
            let dir = TempDir("fathom-fuzz-regression")
            try Data(FuzzReference.attributeCSV(rows: 40).utf8).write(to: URL(fileURLWithPath: dir.file("t.csv")))
            let table = try AttributeTable.loadCSV(path: dir.file("t.csv"), expectedRows: nil)
            let bound = try FilterParser.parse(text).bind(to: table.schema)
            _ = bound.matchingRows(in: table)
        case "blobs":
            // As fuzz/Sources/FuzzBlobs: byte 0 % 4 picks the decoder; < 128 re-seals the trailing CRC.
            let input = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            guard let pick = input.first.map(Int.init) else { return }
            var blob = Array(input.dropFirst())
            if pick < 128 && pick % 4 != 2 && blob.count >= 4 {
                let c = blob.withUnsafeBytes { crc32c($0.baseAddress!, blob.count - 4, 0) }
                for j in 0..<4 { blob[blob.count - 4 + j] = UInt8(truncatingIfNeeded: c >> (8 * UInt32(j))) }
            }
            switch pick % 4 {
            case 0: _ = try AttributeTable.decode(blob)
            case 1:
                let dir = TempDir("fathom-fuzz-regression")
                try Data(FuzzReference.attributeCSV(rows: 30).utf8).write(to: URL(fileURLWithPath: dir.file("t.csv")))
                let table = try AttributeTable.loadCSV(path: dir.file("t.csv"), expectedRows: nil)
                _ = try QuantizedAttributes.decode(blob, schema: table.schema)
            case 2: _ = try AttributeSummary.decode(blob)
            default: _ = try LeanVecProjection.decode(blob)
            }
        case "manifest":
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            let ref = try FuzzReference.shared()
            let full = bytes.firstRange(of: Array("lvq".utf8)) != nil || bytes.firstRange(of: Array("\"attributes\"".utf8)) != nil
            let work = TempDir("fathom-fuzz-regression")
            try FuzzReference.link(full ? ref.full : ref.plain, into: work.path)
            unlink(work.file("manifest.json"))
            FuzzReference.sealManifestBytes(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: work.file("manifest.json")))
            try check(work.path)
        case "indexfiles":
            let input = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            guard let pick = input.first.map(Int.init) else { return }
            let ref = try FuzzReference.shared()
            let names = FuzzReference.indexFiles
            let name = names[pick % names.count]
            var which = (pick / names.count) % 2
            let manifests = try [ref.full, ref.plain].map {
                try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: $0 + "/manifest.json")))
            }
            if which == 1 && !manifests[1].files.contains(where: { $0.name == name }) { which = 0 }
            var m = manifests[which]
            guard let i = m.files.firstIndex(where: { $0.name == name }) else { return }
            var bytes = Array(input.dropFirst())
            if pick < 128 && bytes.count >= 64 && bytes.starts(with: Array("FTHM".utf8)) {
                let c = bytes.withUnsafeBytes { crc32c($0.baseAddress!, 60, 0) }
                for j in 0..<4 { bytes[60 + j] = UInt8(truncatingIfNeeded: c >> (8 * UInt32(j))) }
            }
            m.files[i].bytes = UInt64(bytes.count)
            m.files[i].crc32c = String(format: "%08x", bytes.withUnsafeBytes { crc32c($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count, 0) })
            let work = TempDir("fathom-fuzz-regression")
            try FuzzReference.link(which == 0 ? ref.full : ref.plain, into: work.path)
            unlink(work.file(name)); unlink(work.file("manifest.json"))
            try Data(bytes).write(to: URL(fileURLWithPath: work.file(name)))
            try m.sealedData().write(to: URL(fileURLWithPath: work.file("manifest.json")))
            try check(work.path)
        default:
            Issue.record("\(name): unknown fuzz target '\(target)' (see FuzzRegressionTests)")
            throw FathomError(.invalidArgument, "unknown fuzz target")
        }
    }
}

/// The fixtures of fuzz/Sources/FuzzSupport, rebuilt identically (same data, options, seeds),
/// so that index inputs found by the fuzzer replay against the same reference indexes.
final class FuzzReference: @unchecked Sendable {
    static let n = 300, d = 16
    static let indexFiles = ["heads.bin", "graph.bin", "postings.idx", "codec.bin", "attrs.bin", "summaries.bin"]
    static let query: [Float] = (0..<d).map { Float(($0 * 37) % 11) / 11 - 0.5 }
    let dir = TempDir("fathom-fuzz-reference")
    let plain: String, full: String

    private static let lock = NSLock()
    nonisolated(unsafe) private static var instance: FuzzReference?

    static func shared() throws -> FuzzReference {
        lock.lock(); defer { lock.unlock() }
        if let instance { return instance }
        let r = try FuzzReference()
        instance = r
        return r
    }

    private init() throws {
        plain = dir.file("plain"); full = dir.file("full")
        let gen = SyntheticGenerator(dim: Self.d, clusters: 8, intrinsicDim: 6, seed: 7)
        let m = Matrix(rows: Self.n, cols: Self.d)
        gen.generate(.base, first: 0, rows: Self.n, into: m.data)
        let w = try VectorFileWriter(path: dir.file("base.fbin"), format: .fbin, elementType: .float32, dimension: Self.d)
        try w.append(UnsafeRawPointer(m.data), count: Self.n)
        try w.close(sync: false)
        try Data(Self.attributeCSV(rows: Self.n).utf8).write(to: URL(fileURLWithPath: dir.file("attrs.csv")))
        var o = BuildOptions(); o.codec = .none
        o.memoryBudget = 256 << 20; o.headRatio = 0.1; o.postingPages = 1; o.graphDegree = 8
        o.candidateHeads = 16; o.replicas = 4; o.seed = 3
        try IndexBuilder(input: dir.file("base.fbin"), output: plain, options: o).build()
        o.codec = .lvq8; o.reduceDims = 8; o.attributes = dir.file("attrs.csv")
        try IndexBuilder(input: dir.file("base.fbin"), output: full, options: o).build()
    }

    static func attributeCSV(rows: Int) -> String {
        var s = "year:int,price:float,color:category,tags:tags\n"
        let colors = ["red", "green", "blue", "it's", "x,y"]
        for i in 0..<rows {
            let color = colors[i % colors.count]
            let quoted = color.contains(",") ? "\"\(color)\"" : color
            s += "\(1990 + i % 35),\(Double(i % 97) * 1.25),\(quoted),t\(i % 7);t\(i % 3 + 10)\n"
        }
        return s
    }

    static func link(_ index: String, into dir: String) throws {
        for f in try FileManager.default.contentsOfDirectory(atPath: index) {
            guard Glibc.link(index + "/" + f, dir + "/" + f) == 0 else {
                throw FathomError(.io, "link \(f): errno \(errno)")
            }
        }
    }

    static func sealManifestBytes(_ bytes: inout [UInt8]) {
        let key = Array("\"manifest_crc32c\"".utf8)
        guard let k = bytes.firstRange(of: key) else { return }
        var i = k.upperBound
        while i < bytes.count && bytes[i] != UInt8(ascii: "\"") { i += 1 }
        guard i + 9 < bytes.count, bytes[i + 9] == UInt8(ascii: "\"") else { return }
        for j in 0..<8 { bytes[i + 1 + j] = UInt8(ascii: "0") }
        let hex = Array(String(format: "%08x", bytes.withUnsafeBytes { crc32c($0.baseAddress!, $0.count, 0) }).utf8)
        for j in 0..<8 { bytes[i + 1 + j] = hex[j] }
    }

    static func openAndSearch(_ dir: String) throws {
        let index = try VectorIndex.open(at: dir, io: .pread, warn: { _ in })
        guard index.dimension == d else { return }
        _ = try index.search(query, k: 5, parameters: SearchParameters(probes: 4))
        if index.manifest.attributes != nil {
            let f = try index.prepareFilter("price < 50 AND tags HAS ANY ('t1', 't10')")
            _ = try index.search(query, k: 5, parameters: SearchParameters(probes: 4), filter: f)
        }
    }
}

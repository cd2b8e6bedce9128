import FathomTools
import FathomTestSupport
import Foundation
import Testing
@testable import Fathom

/// Runs the `fathom` executable built next to the test bundle.
func runFathom(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("fathom").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    let p = Process()
    p.executableURL = dir.appendingPathComponent("fathom")
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

@Suite struct CLITests {
    @Test func genGtBuildSearchEndToEnd() throws {
        let dir = TempDir()
        var r = try runFathom(["gen", "--n", "3000", "--dim", "24", "--queries", "40", "--out", dir.file("b.fbin"),
                               "--query-out", dir.file("q.fbin"), "--attributes", dir.file("a.csv"), "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try runFathom(["gt", "--base", dir.file("b.fbin"), "--queries", dir.file("q.fbin"), "-k", "20", "--output", dir.file("gt.ibin"), "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let gt = try GroundTruth.read(path: dir.file("gt.ibin"))
        #expect(gt.count == 40 && gt.k == 20)
        r = try runFathom(["build", "--input", dir.file("b.fbin"), "--output", dir.file("idx"), "--memory-budget", "256MiB", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try runFathom(["search", "--index", dir.file("idx"), "--queries", dir.file("q.fbin"), "--gt", dir.file("gt.ibin"),
                           "-k", "10", "--probes", "4,64", "--threads", "1", "--json", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        struct Out: Decodable { struct Row: Decodable { var probes: Int; var recall: Double; var qps: Double; var mean_us: Double; var p99_us: Double; var mean_ios: Double; var mean_kib: Double; var mean_postings: Double; var mean_round_trips: Double } ; var rows: [Row] }
        let out = try JSONDecoder().decode(Out.self, from: Data(r.stdout.utf8))
        #expect(out.rows.map(\.probes) == [4, 64])
        #expect(out.rows[1].recall >= 0.97, "recall at 64 probes: \(out.rows[1].recall)")
        // Probes 4: at most 4 posting reads per query, and exactly what the library counts for
        // the same queries and settings; more probes read more and find more.
        let index = try VectorIndex.open(at: dir.file("idx"), io: .pread)
        let queries = try Matrix.load(vectorFile: dir.file("q.fbin"))
        var reads = 0
        try index.withSearcher { s in
            let buf = UnsafeMutablePointer<Neighbor>.allocate(capacity: 10); defer { buf.deallocate() }
            for i in 0..<queries.rows {
                _ = try s.search(UnsafeBufferPointer(start: queries.row(i), count: queries.cols), k: 10,
                                 parameters: SearchParameters(probes: 4), filter: nil, into: buf)
                #expect(s.stats.postingsRead >= 1 && s.stats.postingsRead <= 4)
                reads += s.stats.postingsRead
            }
        }
        #expect(abs(out.rows[0].mean_postings - Double(reads) / 40) < 1e-9, "CLI \(out.rows[0].mean_postings), library \(Double(reads) / 40)")
        #expect(out.rows[1].mean_postings > out.rows[0].mean_postings)
        // The default index is compressed: postings in one round trip, then the re-rank reads.
        #expect(out.rows[0].mean_round_trips == 2)
        #expect(out.rows[0].recall < out.rows[1].recall && out.rows[0].recall >= 0.5, "recall at 4 probes: \(out.rows[0].recall)")
        r = try runFathom(["info", dir.file("idx")])
        #expect(r.status == 0 && r.stdout.contains("heads:") && r.stdout.contains("RAM to serve"))
        r = try runFathom(["info", dir.file("b.fbin")])
        #expect(r.status == 0 && r.stdout.contains("vectors:       3000"))
        // attribute CSV: header + one row per vector
        let csv = try String(contentsOfFile: dir.file("a.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 3001 && csv[0] == "id,uniform,correlated,category,cluster,tags")
    }

    @Test func errorsExitWithDocumentedCodes() throws {
        let dir = TempDir()
        var r = try runFathom(["info", dir.file("missing.fbin")])
        #expect(r.status == 3 && r.stderr.contains("missing.fbin"), "\(r.status) \(r.stderr)")
        FileManager.default.createFile(atPath: dir.file("trunc.fbin"), contents: Data([10, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3]))
        r = try runFathom(["build", "--input", dir.file("trunc.fbin"), "--output", dir.file("idx"), "--quiet"])
        #expect(r.status == 4 && r.stderr.contains("trunc.fbin"), "\(r.status) \(r.stderr)")
        r = try runFathom(["search", "--index", dir.file("nope"), "--queries", dir.file("trunc.fbin"), "-k", "0"])
        #expect(r.status == 64, "\(r.status) \(r.stderr)")
        r = try runFathom(["gt", "--base", dir.path, "--queries", dir.path, "--output", dir.file("g.ibin")])
        #expect(r.status == 3 && r.stderr.contains("directory"), "\(r.status) \(r.stderr)")
    }
}

@Suite struct ExactSearchTests {
    @Test(arguments: [Metric.l2, .ip, .cosine])
    func groundTruthMatchesScalarReference(metric: Metric) throws {
        let dir = TempDir()
        // uint8 data with many exact ties, small memory budget to force several blocks.
        var rng = SeededRandom(seed: 8)
        let n = 3000, d = 20, nq = 25
        var base = [UInt8](repeating: 0, count: n * d)
        for i in 0..<base.count { base[i] = UInt8(rng.below(4)) }
        let w = try VectorFileWriter(path: dir.file("b.u8bin"), format: .u8bin, elementType: .uint8, dimension: d)
        try base.withUnsafeBytes { try w.append($0.baseAddress!, count: n) }
        try w.close()
        let q = Matrix(rows: nq, cols: d)
        for i in 0..<(nq * d) { q.data[i] = Float(rng.below(4)) + 0.5 }
        let gt = try ExactSearch.groundTruth(basePath: dir.file("b.u8bin"), queries: q, k: 15, metric: metric, memoryBudget: 64 << 20)
        let bm = Matrix(rows: n, cols: d)
        for i in 0..<(n * d) { bm.data[i] = Float(base[i]) }
        for qi in 0..<nq {
            var qq = q.rowArray(qi)
            if metric == .cosine {
                let norm = qq.map { $0 * $0 }.reduce(0, +).squareRoot()
                qq = qq.map { $0 / norm }
            }
            var all = [(Double, Int)]()
            for i in 0..<n {
                var acc = 0.0, nn = 0.0
                for j in 0..<d {
                    let x = Double(base[i * d + j])
                    if metric == .l2 { let t = Double(qq[j]) - x; acc += t * t } else { acc -= Double(qq[j]) * x }
                    nn += x * x
                }
                if metric == .cosine { acc = nn > 0 ? acc / nn.squareRoot() : 0 }
                all.append((Double(Float(acc)), i))
            }
            // Exact up to ties: every returned id is within the true top 15 (ties at the 15th
            // distance may be broken either way by rounding), ids are distinct, and the reported
            // distances match the reference and are sorted.
            let byId = Dictionary(uniqueKeysWithValues: all.map { ($0.1, $0.0) })
            let kth = all.map(\.0).sorted()[14]
            let ids = gt.neighbors(of: qi).map { Int($0) }
            #expect(Set(ids).count == 15)
            for (j, id) in ids.enumerated() {
                #expect(byId[id]! <= kth + 1e-5 * abs(kth) + 1e-6, "query \(qi): id \(id) is not among the true top 15")
                let reported = Double(gt.distances![qi * 15 + j])
                let expected = metric == .l2 ? byId[id]! : -byId[id]!
                #expect(abs(reported - expected) <= 1e-4 * max(1, abs(expected)))
            }
            let ds = gt.distances![(qi * 15)..<(qi * 15 + 15)]
            #expect(metric == .l2 ? ds.elementsEqual(ds.sorted()) : ds.elementsEqual(ds.sorted(by: >)))
        }
    }
}

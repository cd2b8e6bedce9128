import FathomTools
import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

@Suite struct BuildTests {
    func smallOptions() -> BuildOptions {
        var o = BuildOptions(); o.codec = .none
        o.memoryBudget = 512 << 20
        o.headRatio = 0.05
        o.postingPages = 5        // 5 × 4096 / (4 + 32·4) = 155 records: heads × cap ≥ n × 5.28 expected replicas
        return o
    }

    @Test func everyVectorInAPostingAndNoPostingOverCap() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 3000, d: 32)
        var o = smallOptions()
        o.postingPages = 1        // 31 records: forces cuts and orphan handling
        o.headRatio = 0.25        // 750 heads × 31 slots ≥ 3000 × 5.28 expected records (the plan's invariant)
        let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        let layout = IndexLayout(directory: dir.file("idx"))
        let pbytes = m.files.first { $0.name == "postings.dat" }!.bytes
        let table = try layout.readPostingTable(postingsBytes: pbytes, recordBytes: m.record_bytes)
        let cap = m.parameters.posting_capacity
        #expect(cap == 4096 / (4 + 32 * 4))
        var seen = [Int](repeating: 0, count: 3000)
        let f = try RandomAccessFile(path: layout.postingsPath)
        // Orphans may take a posting up to cap + slack (an eighth of the cap) records.
        let slack = BuildPlanner.slackFor(cap)
        for e in table {
            #expect(Int(e.count) <= cap + slack)
            #expect(Int(e.pages) <= ((cap + slack) * m.record_bytes + 4095) / 4096 + 1)
            guard e.count > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: Int(e.count) * m.record_bytes)
            try buf.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: e.offset) }
            for r in 0..<Int(e.count) {
                let id = buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: r * m.record_bytes, as: UInt32.self) }
                seen[Int(id)] += 1
            }
            // A posting never spans more pages than its size needs.
            let bytes = UInt64(e.count) * UInt64(m.record_bytes)
            #expect(UInt64(e.pages) == (bytes + 4095) / 4096)
        }
        #expect(seen.allSatisfy { $0 >= 1 }, "every vector lies in at least one posting")
        #expect(seen.allSatisfy { $0 <= 8 })
        #expect(m.stats.cut_records > 0, "the small cap must have cut some records")
    }

    @Test func resumedBuildEqualsUninterrupted() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 2000, d: 16)
        let full = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("full"), options: smallOptions()).build()
        for stage in ["train", "assign", "pack"] {
            var o = smallOptions()
            o.stopAfterStage = stage
            let out = dir.file("resumed-\(stage)")
            #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: out, options: o).build() }
            #expect(!FileManager.default.fileExists(atPath: out), "nothing is published by an interrupted build")
            #expect(FileManager.default.fileExists(atPath: out + ".fathom-build/stage-\(stage).json"))
            let resumed = try IndexBuilder(input: dir.file("base.fbin"), output: out, options: smallOptions()).build()
            #expect(resumed.files == full.files, "resume after \(stage) gives the same files, byte for byte")
            #expect(!FileManager.default.fileExists(atPath: out + ".fathom-build"))
        }
    }

    @Test func republishReplacesOnlyWithCompleteIndex() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 1500, d: 16)
        let out = dir.file("idx")
        let first = try IndexBuilder(input: dir.file("base.fbin"), output: out, options: smallOptions()).build()
        // An interrupted rebuild with another seed leaves the old index untouched.
        var o = smallOptions(); o.seed = 99; o.stopAfterStage = "assign"
        #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: out, options: o).build() }
        #expect(try Manifest.load(directory: out) == first)
        o.stopAfterStage = nil
        let second = try IndexBuilder(input: dir.file("base.fbin"), output: out, options: o).build()
        #expect(try Manifest.load(directory: out) == second)
        #expect(second.parameters.seed == 99)
        // A destination that is not an index is never replaced.
        let other = dir.file("notindex")
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: other + "/precious.txt", contents: Data("x".utf8))
        #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: other, options: smallOptions()).build() }
        #expect(FileManager.default.fileExists(atPath: other + "/precious.txt"))
    }

    @Test func budgetTooSmallIsRefusedWithNumbers() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 1000, d: 16)
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 16 << 20; o.headRatio = 0.1
        let e = try #require(throws: FathomError.self, "expected a memory budget error") {
            try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("x"), options: o).plan()
        }
        #expect(e.code == .memoryBudget)
        #expect(e.remedies.contains(.raiseMemoryBudget(atLeast: nil)), "\(e)")
    }

    @Test func nanInputIsAnErrorNamingTheRow() throws {
        let dir = TempDir()
        var v = [Float](repeating: 1, count: 100 * 8)
        for i in 0..<v.count { v[i] = Float(i % 13) }
        v[37 * 8 + 3] = .nan
        let w = try VectorFileWriter(path: dir.file("nan.fbin"), format: .fbin, elementType: .float32, dimension: 8)
        try v.withUnsafeBytes { try w.append($0.baseAddress!, count: 100) }
        try w.close()
        var o = smallOptions(); o.headRatio = 0.1
        let e = try #require(throws: FathomError.self, "expected a non-finite error") {
            try IndexBuilder(input: dir.file("nan.fbin"), output: dir.file("x"), options: o).build()
        }
        #expect(e.code == .nonFiniteValue)
        #expect(e.message.contains("vector 37"))
        #expect(e.offset == 8 + UInt64(37 * 8 + 3) * 4)
    }

    @Test func headGraphFindsTrueNearestHead() throws {
        let gen = SyntheticGenerator(dim: 32, clusters: 30, intrinsicDim: 16, seed: 3)
        let heads = Matrix(rows: 3000, cols: 32)
        gen.generate(.base, first: 0, rows: 3000, into: heads.data)
        let g = HeadGraph.build(vectors: heads, degree: 32, buildList: 64, seed: 1)
        let q = Matrix(rows: 500, cols: 32)
        gen.generate(.queries, first: 0, rows: 500, into: q.data)
        let s = HeadGraph.Scratch(graphSize: 3000, beam: 64)
        let ids = UnsafeMutablePointer<UInt32>.allocate(capacity: 64); defer { ids.deallocate() }
        let ds = UnsafeMutablePointer<Float>.allocate(capacity: 64); defer { ds.deallocate() }
        var hits = 0
        let defaults = SearchParameters()
        for i in 0..<500 {
            g.search(q.row(i), k: defaults.probes, listSize: max(2 * defaults.probes, 64), scratch: s, outIds: ids, outDist: ds)
            if ids[0] == bruteForce(heads, q.row(i), k: 1, metric: .l2)[0] { hits += 1 }
        }
        #expect(Double(hits) / 500 >= 0.99, "true nearest head found for \(hits)/500 queries")
    }
}

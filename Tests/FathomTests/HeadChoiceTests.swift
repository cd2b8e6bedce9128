import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Issue 19: the head count chosen for recall, orphans placed by their nearest heads.
@Suite struct HeadChoiceTests {
    /// Every record of every posting: (posting, vector id).
    func members(_ dir: String) throws -> (Manifest, [[UInt32]]) {
        let m = try Manifest.load(directory: dir)
        let layout = IndexLayout(directory: dir)
        let pbytes = m.files.first { $0.name == "postings.dat" }!.bytes
        let table = try layout.readPostingTable(postingsBytes: pbytes, recordBytes: m.record_bytes)
        let f = try RandomAccessFile(path: layout.postingsPath)
        var out = [[UInt32]]()
        for e in table {
            var ids = [UInt32]()
            if e.count > 0 {
                var buf = [UInt8](repeating: 0, count: Int(e.count) * m.record_bytes)
                try buf.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: e.offset) }
                for r in 0..<Int(e.count) {
                    ids.append(buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: r * m.record_bytes, as: UInt32.self) })
                }
            }
            out.append(ids)
        }
        return (m, out)
    }

    /// Duplicates pile records onto the same heads: 40 copies of one vector among 3,000
    /// all find the same nearest heads, each over its 31-record cap, and the copies with the
    /// largest ids lose every record (a real case: repeated texts in embedding sets). Each orphan must go back to
    /// one of its `replicas` nearest heads (exact, by brute force over the heads, ties
    /// counted), no posting may pass cap + slack, and no vector may be lost.
    @Test func orphansLandInOneOfTheirNearestHeads() throws {
        let dir = TempDir()
        let n = 3000, d = 32
        let (base, _) = try writeSynthetic(dir: dir, n: n, d: d, clusters: 6)
        for i in 1..<40 { base.row(i).update(from: base.row(0), count: d) }
        let w = try VectorFileWriter(path: dir.file("dups.fbin"), format: .fbin, elementType: .float32, dimension: d)
        try w.append(UnsafeRawPointer(base.data), count: n)
        try w.close()
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 512 << 20
        o.headRatio = 0.2; o.postingPages = 1
        let built = try IndexBuilder(input: dir.file("dups.fbin"), output: dir.file("idx"), options: o)
        let plan = try built.plan()
        try built.build()
        let (m, lists) = try members(dir.file("idx"))
        #expect(m.stats.orphans_fixed > 0, "the cap must orphan some vectors (\(m.stats.cut_records) records cut)")
        #expect(m.stats.orphans_outside_nearest == 0)
        #expect(lists.allSatisfy { $0.count <= plan.postingCapacity + plan.postingSlack })
        var postingsOf = [[Int]](repeating: [], count: n)
        for (h, ids) in lists.enumerated() { for id in ids { postingsOf[Int(id)].append(h) } }
        #expect(postingsOf.allSatisfy { !$0.isEmpty }, "every vector lies in a posting")
        // The orphans are copies that kept one record; every copy in a single posting must
        // sit in one of its `replicas` nearest heads (ties at distance 0 count), and so must
        // nearly every other single-posting vector (those are only as exact as the search).
        let (heads, _) = try IndexLayout(directory: dir.file("idx")).readHeads()
        func isNear(_ v: Int) -> Bool {
            let ds = (0..<heads.rows).map { Distance.l2sq(base.row(v), heads.row($0), d) }
            return ds[postingsOf[v][0]] <= ds.sorted()[o.replicas - 1]
        }
        // An orphan keeps one record, so it is a single-posting vector; most are copies (the
        // cap cuts their shared heads first), but a vector whose lists were full elsewhere can
        // be one too.
        let copies = (0..<40).filter { postingsOf[$0].count == 1 }
        let singles = (0..<n).filter { postingsOf[$0].count == 1 }
        #expect(!copies.isEmpty && singles.count >= m.stats.orphans_fixed, "\(copies.count) single copies, \(singles.count) single-posting vectors, \(m.stats.orphans_fixed) orphans")
        #expect(copies.allSatisfy(isNear), "a copy sits alone outside its \(o.replicas) nearest heads")
        let near = singles.filter(isNear).count
        #expect(Double(near) >= 0.98 * Double(singles.count), "\(singles.count - near) of \(singles.count) single-posting vectors outside their nearest heads")
    }

    func calibratedPlan(_ dir: TempDir, targetRecall: Double, budget: UInt64 = 512 << 20) throws -> BuildPlan {
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = budget
        // Two probes: on this small, easy set recall at 8 probes is ~1 at every ratio.
        o.targetRecall = targetRecall; o.targetProbes = 2; o.serveMemoryPerVector = 4096
        return try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).plan()
    }

    /// The recall target moves the head count (same budget): a stricter target needs more
    /// vectors per head, so fewer heads; and the plan says why.
    @Test func headCountFollowsTheRecallTarget() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 20_000, d: 32, clusters: 40)
        let loose = try calibratedPlan(dir, targetRecall: 0.5)
        let strict = try calibratedPlan(dir, targetRecall: 0.9)
        let lc = try #require(loose.calibration), sc = try #require(strict.calibration)
        #expect(sc.reachedTarget && lc.reachedTarget, "\(lc.summary) / \(sc.summary)")
        #expect(lc.pointsPerHead < sc.pointsPerHead, "\(lc.summary) / \(sc.summary)")
        #expect(loose.heads > strict.heads)
        #expect(strict.headChoice.contains("recall calibration"))
        // Recall in the trials grows with the vectors per head (the bisection relies on it).
        let t = sc.trials.sorted { $0.pointsPerHead < $1.pointsPerHead }
        for (a, b) in zip(t, t.dropFirst()) { #expect(b.recall >= a.recall - 0.02, "\(sc.summary)") }
    }

    /// A larger budget never buys a worse partition: the heads come from the calibration,
    /// so the same data at 256 MiB and 2 GiB gets the same heads and recall at fixed probes.
    @Test func recallAtFixedProbesDoesNotFallWhenTheBudgetGrows() throws {
        let dir = TempDir()
        let (base, q) = try writeSynthetic(dir: dir, n: 20_000, d: 32, nq: 100, clusters: 40)
        var recalls = [Double](), heads = [Int]()
        for (i, budget) in [UInt64(256 << 20), 2 << 30].enumerated() {
            var o = BuildOptions(); o.codec = .lvq8; o.memoryBudget = budget
            let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx\(i)"), options: o).build()
            heads.append(m.heads)
            let index = try VectorIndex.open(at: dir.file("idx\(i)"), io: .pread)
            recalls.append(try recallAt(index, base: base, queries: q, probes: 8))
        }
        #expect(heads[0] == heads[1])
        #expect(recalls[1] >= recalls[0] - 0.005, "recall \(recalls[0]) at 256 MiB, \(recalls[1]) at 2 GiB")
        #expect(recalls[1] >= 0.85)
    }
}

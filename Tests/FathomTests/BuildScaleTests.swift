import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// The out-of-core build (issue 11): plan invariants, spilled runs, bucketed pack, threads.
@Suite struct BuildScaleTests {
    func indexFiles(_ dir: String) throws -> [String: Data] {
        var out = [String: Data]()
        for name in IndexLayout.dataFiles + [IndexLayout.codecFile] {
            if let d = FileManager.default.contents(atPath: dir + "/" + name) { out[name] = d }
        }
        return out
    }

    @Test func oneAndTwoThreadsGiveTheSameBytes() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 4000, d: 24)
        var o = BuildOptions(); o.codec = .lvq8; o.memoryBudget = 512 << 20; o.headRatio = 0.05
        o.threads = 1
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("t1"), options: o).build()
        o.threads = 2
        o.sortBufferBytes = 64 << 10     // many runs and buckets: the index must not change
        o.packBucketBytes = 32 << 10
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("t2"), options: o).build()
        let a = try indexFiles(dir.file("t1")), b = try indexFiles(dir.file("t2"))
        #expect(a.count == 7)
        #expect(a.keys.sorted() == b.keys.sorted())
        for (name, bytes) in a { #expect(bytes == b[name], "\(name) differs between 1 and 2 threads") }
    }

    /// The old in-RAM table held heads × cap × 8 + n bytes and every record at once; here the
    /// assignment of 30,000 × ≤ 8 records goes through a 256 KiB sort buffer (≈ 15 runs) and
    /// pack through 64 KiB buckets, in a child process whose VmHWM must stay in the budget.
    @Test func spilledBuildStaysWithinItsBudgetInAChildProcess() throws {
        let dir = TempDir()
        let n = 30_000
        let (base, q) = try writeSynthetic(dir: dir, n: n, d: 16, nq: 30)
        let budget = 192 << 20
        let r = try runFathom(["build", "--input", dir.file("base.fbin"), "--output", dir.file("idx"), "--codec", "none",
                               "--memory-budget", "\(budget)", "--head-ratio", "0.05", "--sort-buffer", "256KiB",
                               "--pack-bucket", "64KiB", "--threads", "2", "--json", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(r.stdout.utf8))
        #expect(m.stats.records > (256 << 10) / 16 * 4, "the records overflow the sort buffer several times")
        #expect(m.build.peak_rss_bytes > 0)
        #expect(m.build.peak_rss_bytes <= UInt64(budget), "peak RSS \(m.build.peak_rss_bytes) over the \(budget)-byte budget")
        // Every vector is in a posting, and the index answers.
        let index = try VectorIndex.open(at: dir.file("idx"), io: .pread)
        #expect(try recallAt(index, base: base, queries: q, probes: 32) >= 0.9)
    }

    @Test func planRefusesBeforeTouchingTheInput() throws {
        let dir = TempDir()
        let missing = dir.file("does-not-exist.fbin")
        let r = try runFathom(["build", "--input", missing, "--output", dir.file("idx"), "--n", "100000000", "--dim", "128",
                               "--type", "u8", "--memory-budget", "256MiB", "--quiet"])
        #expect(r.status == 10, "\(r.stderr)")   // memoryBudget (docs/errors.md)
        #expect(r.stderr.contains("budget") && r.stderr.contains("raise --memory-budget"), "\(r.stderr)")
        #expect(!r.stderr.contains("does-not-exist"), "the input was opened: \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("idx.fathom-build")))
    }

    @Test func planInvariantsAreCheckedWithTheNumbers() throws {
        var o = BuildOptions(); o.memoryBudget = 4 << 30; o.headRatio = 0.001; o.postingPages = 1
        // 1,000 heads × 56 records < 1M × 5.28 expected records.
        let slots = try #require(throws: FathomError.self, "expected the slot check to refuse") {
            try BuildPlanner.plan(shape: BuildShape(count: 1_000_000, dimension: 128, inputType: .uint8),
                                  codec: .lvq8, storedType: .uint8, options: o)
        }
        #expect(slots.code == .invalidArgument)
        #expect(slots.message.contains("slots") && slots.message.contains("5280000"), "\(slots.message)")
        o = BuildOptions(); o.memoryBudget = 128 << 20
        let e = try #require(throws: FathomError.self, "expected the budget to be refused") {
            try BuildPlanner.plan(shape: BuildShape(count: 1_000_000_000, dimension: 128, inputType: .uint8),
                                  codec: .lvq8, storedType: .uint8, options: o)
        }
        #expect(e.code == .memoryBudget)
        #expect(e.remedies.contains(.raiseMemoryBudget(atLeast: nil)), "\(e)")
    }

    @Test func billionScalePlansFitTheirBudgets() throws {
        var o = BuildOptions(); o.memoryBudget = 16 << 30; o.threads = 2
        let a = try BuildPlanner.plan(shape: BuildShape(count: 1_000_000_000, dimension: 128, inputType: .uint8),
                                      codec: .lvq8, storedType: .uint8, options: o)
        #expect(a.peakBytes <= o.memoryBudget)
        #expect(Double(a.heads) * Double(a.postingCapacity) >= 1e9 * a.expectedReplicas)
        #expect(a.stages.map(\.name) == ["train", "assign", "pack"])
        #expect(a.stages.allSatisfy { $0.ram == $0.ramTerms.map(\.1).reduce(0, +) || $0.name == "assign" })
        o.memoryBudget = 64 << 30; o.reduceDims = 192
        let b = try BuildPlanner.plan(shape: BuildShape(count: 1_000_000_000, dimension: 768, inputType: .float32),
                                      codec: .lvq8, storedType: .float32, options: o)
        #expect(b.peakBytes <= o.memoryBudget)
        #expect(b.reducedDimension == 192 && b.recordBytes == 4 + 192 + 4)
        // RAM does not grow with n at a fixed head count: the budget bounds it.
        o = BuildOptions(); o.memoryBudget = 1 << 30; o.headRatio = nil
        let small = try BuildPlanner.plan(shape: BuildShape(count: 10_000_000, dimension: 128, inputType: .float32),
                                          codec: .lvq8, storedType: .float32, options: o)
        let large = try BuildPlanner.plan(shape: BuildShape(count: 100_000_000, dimension: 128, inputType: .float32),
                                          codec: .lvq8, storedType: .float32, options: o)
        #expect(small.peakBytes <= o.memoryBudget && large.peakBytes <= o.memoryBudget)
    }

    @Test func sortRecordsOrderByHeadThenPrimariesThenDistanceThenId() {
        let a = SortRecord.assignment(head: 3, distance: 0.5, id: 9, replicas: 2, primary: true)
        let b = SortRecord.assignment(head: 3, distance: 0.25, id: 10, replicas: 2, primary: true)
        let c = SortRecord.assignment(head: 2, distance: 7, id: 1, replicas: 1, primary: false)
        let d = SortRecord.assignment(head: 3, distance: 0.25, id: 4, replicas: 1, primary: true)
        let e = SortRecord.assignment(head: 3, distance: 0.01, id: 2, replicas: 3, primary: false)
        #expect([a, b, c, d, e].sorted(by: SortRecord.less) == [c, d, b, a, e])
        #expect(e.distance == 0.01 && !e.isPrimary && a.isPrimary)
        for f: Float in [-3, -0.5, 0, 1e-30, 2, 1e30] {
            #expect(SortRecord.distance(fromSortable: SortRecord.sortable(f)) == f)
        }
        #expect(SortRecord.sortable(-1) < SortRecord.sortable(0) && SortRecord.sortable(0) < SortRecord.sortable(1))
        #expect(a.head == 3 && a.distance == 0.5)
    }

    @Test func inPlaceSortMatchesTheStandardSort() {
        var rng = SeededRandom(seed: 5)
        for n in [0, 1, 2, 15, 17, 100, 5000] {
            var xs = (0..<n).map { _ in SortRecord(key: UInt64(rng.below(50)), id: UInt32(rng.below(1000)), aux: 0) }
            let want = xs.sorted(by: SortRecord.less)
            xs.withUnsafeMutableBufferPointer { if n > 0 { sortInPlace($0.baseAddress!, n, by: SortRecord.less) } }
            #expect(xs.map(\.key) == want.map(\.key) && xs.map(\.id) == want.map(\.id))
        }
        var sorted = Array(0..<3000).map(UInt64.init)   // presorted and reversed: the worst cases of naive pivots
        sorted.withUnsafeMutableBufferPointer { sortInPlace($0.baseAddress!, 3000, by: >) }
        #expect(sorted == (0..<3000).reversed().map(UInt64.init))
    }

    /// A resumed build reports the largest peak of all its processes: each stage file keeps
    /// the VmHWM of the process that ran it.
    @Test func peakRSSIsTheMaximumOverResumedProcesses() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 2000, d: 16)
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 256 << 20; o.headRatio = 0.05
        o.stopAfterStage = "train"
        let out = dir.file("idx")
        #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: out, options: o).build() }
        let stage = out + ".fathom-build/stage-train.json"
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: stage))) as! [String: Any]
        #expect((obj["peak_rss_bytes"] as? NSNumber)?.uint64Value ?? 0 > 0)
        // Pretend the first process peaked far above this one.
        let earlier: UInt64 = 7 << 30
        obj["peak_rss_bytes"] = earlier
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: stage))
        o.stopAfterStage = nil
        let m = try IndexBuilder(input: dir.file("base.fbin"), output: out, options: o).build()
        #expect(m.build.peak_rss_bytes == earlier)
    }

    @Test func diskCheckRefusesWithTheNumbers() throws {
        let dir = TempDir()
        var o = BuildOptions(); o.memoryBudget = 64 << 30; o.reduceDims = 192
        let plan = try BuildPlanner.plan(shape: BuildShape(count: 1_000_000_000, dimension: 768, inputType: .float32),
                                         codec: .lvq8, storedType: .float32, options: o)
        #expect(plan.peakDiskBytes > plan.finalDiskBytes)
        do {
            try BuildPlanner.checkDisk(plan: plan, directory: dir.path, reclaimable: 0, oldIndex: 1 << 30)
            Issue.record("a \(plan.peakDiskBytes)-byte build fits this disk?")
        } catch let e as FathomError {
            #expect(e.code == .diskFull)
            #expect(e.message.contains("temporaries") && e.message.contains("old index"), "\(e.message)")
        }
        // A small plan passes.
        let small = try BuildPlanner.plan(shape: BuildShape(count: 1000, dimension: 8, inputType: .float32),
                                          codec: .none, storedType: .float32, options: BuildOptions())
        try BuildPlanner.checkDisk(plan: small, directory: dir.path, reclaimable: 0, oldIndex: 0)
    }
}

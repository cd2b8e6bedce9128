import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Writes a synthetic base.fbin (n × d, and nq queries) into `dir` and builds the index
/// `output` over it: 512 MiB budget, head ratio 0.05, then `configure`.
@discardableResult
func buildSyntheticIndex(_ dir: TempDir, n: Int, d: Int, nq: Int, output: String = "idx",
                         configure: (inout BuildOptions) -> Void) throws -> (base: Matrix, queries: Matrix, manifest: Manifest) {
    let (b, q) = try writeSynthetic(dir: dir, n: n, d: d, nq: nq)
    var o = BuildOptions()
    o.memoryBudget = 512 << 20; o.headRatio = 0.05
    configure(&o)
    let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file(output), options: o).build()
    return (b, q, m)
}

@Suite struct SearchTests {
    static func buildSmall(_ dir: TempDir, metric: Metric = .l2, n: Int = 2000, d: Int = 16) throws -> (Matrix, Matrix) {
        let built = try buildSyntheticIndex(dir, n: n, d: d, nq: 50) { o in
            o.codec = .none; o.postingPages = 2; o.metric = metric
        }
        return (built.base, built.queries)
    }

    @Test(arguments: [Metric.l2, .ip])
    func probingEveryPostingEqualsExactScan(metric: Metric) throws {
        let dir = TempDir()
        let (base, q) = try Self.buildSmall(dir, metric: metric)
        let index = try VectorIndex.open(at: dir.file("idx"))
        let all = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount)
        for i in 0..<q.rows {
            let got = try index.search(Array(UnsafeBufferPointer(start: q.row(i), count: q.cols)), k: 10, parameters: all)
            #expect(got.map(\.id) == bruteForce(base, q.row(i), k: 10, metric: metric), "query \(i)")
            // distances come back sorted and match the metric
            #expect(got.map(\.distance) == got.map(\.distance).sorted())
        }
    }

    @Test func defaultSearchHasHighRecall() throws {
        let dir = TempDir()
        let (base, q) = try Self.buildSmall(dir)
        let index = try VectorIndex.open(at: dir.file("idx"))
        #expect(try recallAt(index, base: base, queries: q, probes: SearchParameters().probes) >= 0.95)
    }

    @Test func injectedIOErrorFailsOnlyThatQuery() throws {
        let dir = TempDir()
        let (_, q) = try Self.buildSmall(dir)
        // Fail the read of the posting nearest to query 0.
        let plain = try VectorIndex.open(at: dir.file("idx"))
        let s = HeadGraph.Scratch(graphSize: plain.headCount, beam: 64)
        let ids = UnsafeMutablePointer<UInt32>.allocate(capacity: 64); defer { ids.deallocate() }
        let ds = UnsafeMutablePointer<Float>.allocate(capacity: 64); defer { ds.deallocate() }
        plain.graph.search(q.row(0), k: 1, listSize: 64, scratch: s, outIds: ids, outDist: ds)
        let badOffset = plain.table[Int(ids[0])].offset & ~4095
        let index = try VectorIndex.open(at: dir.file("idx"), engine: {
            FaultInjectingEngine(wrapping: try AIOEngine(depth: 64), failOffsets: [badOffset])
        })
        let flat = Array(UnsafeBufferPointer(start: q.data, count: q.rows * q.cols))
        let results = flat.withUnsafeBufferPointer { index.search(batch: $0, count: q.rows, k: 10, threads: 2) }
        guard case .failure(let e) = results[0] else { Issue.record("query 0 should fail"); return }
        #expect(e.code == .io)
        #expect(e.offset == badOffset)
        #expect(e.path?.hasSuffix("postings.dat") == true)
        let ok = results.filter { if case .success(let r) = $0 { return r.count == 10 } else { return false } }.count
        #expect(ok > 0, "queries that do not touch the bad posting still succeed")
        // The same searcher keeps working after the failure: a query whose one probed posting
        // is not the bad one gets exactly the answer of the fault-free index.
        let other = try #require((1..<q.rows).first { i in
            plain.graph.search(q.row(i), k: 1, listSize: 64, scratch: s, outIds: ids, outDist: ds)
            return plain.table[Int(ids[0])].offset & ~4095 != badOffset
        })
        let query = Array(UnsafeBufferPointer(start: q.row(other), count: q.cols))
        let again = try index.search(query, k: 5, parameters: SearchParameters(probes: 1))
        #expect(again.count == 5)
        #expect(again == (try plain.search(query, k: 5, parameters: SearchParameters(probes: 1))))
    }

    @Test func preadPoolGivesTheSameResultsAsLibaio() throws {
        let dir = TempDir()
        let (_, q) = try Self.buildSmall(dir)
        let aio = try VectorIndex.open(at: dir.file("idx"), io: .aio)
        let pool = try VectorIndex.open(at: dir.file("idx"), io: .pread)
        #expect(aio.ioEngineName == "libaio" && pool.ioEngineName == "pread")
        for i in 0..<q.rows {
            let query = Array(UnsafeBufferPointer(start: q.row(i), count: q.cols))
            #expect(try aio.search(query, k: 10, parameters: SearchParameters(probes: 16)) ==
                    pool.search(query, k: 10, parameters: SearchParameters(probes: 16)))
        }
    }

    @Test func badQueriesGiveClearErrors() throws {
        let dir = TempDir()
        _ = try Self.buildSmall(dir)
        let index = try VectorIndex.open(at: dir.file("idx"))
        #expect { try index.search([Float](repeating: 0, count: 15), k: 10) } throws: { ($0 as? FathomError)?.code == .dimensionMismatch }
        #expect { try index.search([Float](repeating: 0, count: 16), k: 0) } throws: { ($0 as? FathomError)?.code == .invalidArgument }
        #expect { try index.search([Float](repeating: 0, count: 16), k: 5000) } throws: { ($0 as? FathomError)?.code == .invalidArgument }
        var nan = [Float](repeating: 0, count: 16); nan[3] = .nan
        #expect { try index.search(nan, k: 5) } throws: { ($0 as? FathomError)?.code == .nonFiniteValue }
    }

    @Test func corruptPostingIsDetectedNotReturned() throws {
        let dir = TempDir()
        let (_, q) = try Self.buildSmall(dir)
        let index0 = try VectorIndex.open(at: dir.file("idx"))
        let e = index0.table.first { $0.count > 0 }!
        // Flip a byte inside the first non-empty posting.
        let fd = open(dir.file("idx") + "/postings.dat", O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, off_t(e.offset) + 10); b ^= 0x5A; pwrite(fd, &b, 1, off_t(e.offset) + 10)
        close(fd)
        let index = try VectorIndex.open(at: dir.file("idx"))
        let all = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount)
        #expect { try index.search(Array(UnsafeBufferPointer(start: q.row(0), count: q.cols)), k: 10, parameters: all) } throws: {
            ($0 as? FathomError)?.code == .corruptIndex
        }
    }

    @Test func truncatedIndexFailsToOpen() throws {
        let dir = TempDir()
        _ = try Self.buildSmall(dir)
        let p = dir.file("idx") + "/graph.bin"
        let size = try FileManager.default.attributesOfItem(atPath: p)[.size] as! UInt64
        truncate(p, off_t(size - 100))
        #expect { try VectorIndex.open(at: dir.file("idx")) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
    }
}

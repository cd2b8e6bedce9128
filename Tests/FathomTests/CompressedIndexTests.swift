import FathomTestSupport
import Foundation
import Testing
@testable import Fathom

@Suite struct CompressedIndexTests {
    func build(_ dir: TempDir, codec: PostingCodec, metric: Metric = .l2, trainQueries: String? = nil) throws -> (Matrix, Matrix, Manifest) {
        try buildSyntheticIndex(dir, n: 2000, d: 32, nq: 40, output: "idx-\(codec)") { o in
            o.metric = metric; o.codec = codec; o.trainQueries = trainQueries
        }
    }

    @Test(arguments: [PostingCodec.lvq8, .lvq4, .lvq4x8])
    func rerankingEverythingEqualsExactScan(codec: PostingCodec) throws {
        let dir = TempDir()
        let (base, q, m) = try build(dir, codec: codec)
        #expect(m.codec == codec.rawValue && m.reduced_dimension == 16)
        let index = try VectorIndex.open(at: dir.file("idx-\(codec)"))
        let all = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount, rerank: 2000)
        for i in 0..<q.rows {
            let got = try index.search(Array(UnsafeBufferPointer(start: q.row(i), count: q.cols)), k: 10, parameters: all)
            #expect(got.map(\.id) == bruteForce(base, q.row(i), k: 10, metric: .l2), "query \(i)")
        }
    }

    @Test func defaultsKeepHighRecallAndPostingsShrink() throws {
        let dir = TempDir()
        let (base, q, m) = try build(dir, codec: .lvq8)
        #expect(m.record_bytes == 4 + 16 + 4, "id + 16 one-byte codes + fp16 scale and bias")
        let index = try VectorIndex.open(at: dir.file("idx-lvq8"))
        #expect(try recallAt(index, base: base, queries: q, probes: SearchParameters().probes) >= 0.9)
    }

    @Test func oodProjectionIsRecordedForInnerProduct() throws {
        let dir = TempDir()
        let (base, q, m) = try build(dir, codec: .lvq8, metric: .ip, trainQueries: nil)
        #expect(m.leanvec?.kind == "pca")
        let dir2 = TempDir()
        try writeSynthetic(dir: dir2, n: 2000, d: 32, nq: 300, queries: "train.fbin")
        let (_, _, m2) = try build(dir2, codec: .lvq8, metric: .ip, trainQueries: dir2.file("train.fbin"))
        #expect(m2.leanvec?.kind == "ood" && m2.leanvec?.loss != nil)
        // Same seeded base in both directories: re-ranking every vector of every posting is the
        // exact inner-product answer, and the defaults keep most of it.
        let index = try VectorIndex.open(at: dir2.file("idx-lvq8"))
        let all = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount, rerank: 2000)
        var hits = 0
        for i in 0..<q.rows {
            let query = Array(UnsafeBufferPointer(start: q.row(i), count: q.cols))
            let exact = bruteForce(base, q.row(i), k: 10, metric: .ip)
            #expect(try index.search(query, k: 10, parameters: all).map(\.id) == exact, "query \(i)")
            let got = Set(try index.search(query, k: 10).map(\.id))
            hits += exact.filter { got.contains($0) }.count
        }
        #expect(Double(hits) / Double(q.rows * 10) >= 0.8, "recall@10 at defaults: \(Double(hits) / Double(q.rows * 10))")
    }

    @Test func headsRouteOnAPrefixOfTheCodesDimensions() throws {
        let dir = TempDir()
        let (base, q) = try writeSynthetic(dir: dir, n: 2000, d: 32, nq: 40)
        var o = BuildOptions()
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.codec = .lvq8; o.reduceDims = 32; o.routerDims = 8
        let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        #expect(m.reduced_dimension == 32 && m.router_dimension == 8)
        let index = try VectorIndex.open(at: dir.file("idx"))
        #expect(index.servingMemory.heads == index.headCount * (8 + 4), "LVQ-8 codes of 8 components per head")
        // Every posting probed and re-ranked: the exact answer whatever the router's form.
        let all = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount, rerank: 2000)
        for i in 0..<q.rows {
            let got = try index.search(Array(UnsafeBufferPointer(start: q.row(i), count: q.cols)), k: 10, parameters: all)
            #expect(got.map(\.id) == bruteForce(base, q.row(i), k: 10, metric: .l2), "query \(i)")
        }
        // The 8-dim prefix of a 12-intrinsic-dim set still routes well at a few probes.
        let r = try recallAt(index, base: base, queries: q, probes: 8)
        #expect(r >= 0.85, "recall@10 at 8 probes: \(r)")
        // A router dimension beyond the codes' is refused before any work.
        o.routerDims = 33
        #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("bad"), options: o) }
        // …and so is one given to an uncompressed build, which has no projection to route on.
        o.routerDims = 8; o.codec = .none; o.reduceDims = nil
        #expect(throws: FathomError.self) { try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("bad2"), options: o) }
    }
}

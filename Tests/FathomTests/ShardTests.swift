import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// One model, many shards (docs/scale-out.md): the model's fingerprint, shard builds whose
/// postings add up to the unsharded build record for record, and a query over shards that
/// answers exactly as the single index.
@Suite struct ShardTests {
    static let n = 3000, d = 32

    func options(_ codec: PostingCodec, seed: UInt64 = 42) -> BuildOptions {
        var o = BuildOptions()
        o.codec = codec
        o.memoryBudget = 512 << 20
        o.headRatio = 0.05          // 150 heads
        o.postingPages = codec == .none ? 4 : 1   // caps that cut some records: the union must still match
        o.seed = seed
        return o
    }

    /// Trains a model, builds the unsharded index with it and `shards` shards.
    func trainAndBuild(_ dir: TempDir, codec: PostingCodec, shards: Int) throws -> (model: ModelManifest, full: Manifest, parts: [Manifest]) {
        let input = dir.file("base.fbin")
        let model = try IndexBuilder(input: input, output: dir.file("model"), options: options(codec)).train()
        let full = try IndexBuilder(input: input, output: dir.file("full"), model: dir.file("model")).build()
        let parts = try (0..<shards).map { i in
            try IndexBuilder(input: input, output: dir.file("shard\(i)"), model: dir.file("model"),
                             shard: ShardSpec(index: i, count: shards)).build()
        }
        return (model, full, parts)
    }

    func postings(_ path: String, _ m: Manifest) throws -> (table: [PostingEntry], file: RandomAccessFile) {
        let layout = IndexLayout(directory: path)
        let pbytes = m.files.first { $0.name == "postings.dat" }!.bytes
        return (try layout.readPostingTable(postingsBytes: pbytes, recordBytes: m.record_bytes), try RandomAccessFile(path: layout.postingsPath))
    }

    func bytes(_ f: RandomAccessFile, _ e: PostingEntry, _ recordBytes: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: Int(e.count) * recordBytes)
        if !buf.isEmpty { try buf.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: e.offset) } }
        return buf
    }

    @Test(arguments: [PostingCodec.none, .lvq8])
    func unionOfShardPostingsEqualsUnshardedBuild(codec: PostingCodec) throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: Self.n, d: Self.d)
        let (model, full, parts) = try trainAndBuild(dir, codec: codec, shards: 4)
        #expect(full.model_fingerprint == model.fingerprint)
        #expect(full.stats.cut_records > 0, "the cap must cut records (the orphan rule then spans shards)")
        let (fullTable, fullFile) = try postings(dir.file("full"), full)
        let fullVectors = try RandomAccessFile(path: dir.file("full") + "/vectors.dat")
        let rowBytes = Self.d * 4
        let placement = IndexLayout.VectorPlacement(rowBytes: rowBytes)
        var covered = 0, records = 0
        for (i, m) in parts.enumerated() {
            let s = try #require(m.shard)
            #expect(s.index == i && s.count == 4)
            #expect(s.head_begin..<s.head_end == ShardInfo.headRange(index: i, count: 4, heads: model.heads))
            #expect(m.model_fingerprint == model.fingerprint)
            #expect(IndexVerifier.verify(directory: dir.file("shard\(i)"), progress: .silent).isEmpty)
            let (table, file) = try postings(dir.file("shard\(i)"), m)
            let vectors = try RandomAccessFile(path: dir.file("shard\(i)") + "/vectors.dat")
            var ids = Set<UInt32>()
            for h in 0..<model.heads {
                let mine = s.head_begin..<s.head_end ~= h
                if !mine { #expect(table[h].count == 0); continue }
                covered += 1
                #expect(table[h].count == fullTable[h].count, "posting \(h)")
                let got = try bytes(file, table[h], m.record_bytes)
                #expect(got == (try bytes(fullFile, fullTable[h], full.record_bytes)), "posting \(h): records differ from the unsharded build")
                records += Int(table[h].count)
                for r in 0..<Int(table[h].count) {
                    ids.insert(got.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: r * m.record_bytes, as: UInt32.self) })
                }
            }
            #expect(s.vectors == ids.count)
            // The full vectors of every record it holds, as the unsharded build stores them,
            // densely (its vectors.dat holds its members only).
            let rows = try ShardRows.read(path: dir.file("shard\(i)") + "/rows.bin", count: model.count, members: s.vectors)
            #expect(ids.allSatisfy { rows.contains($0) })
            #expect(vectors.size == 4096 + (placement.payloadBytes(count: s.vectors) + 4095) / 4096 * 4096)
            var a = [UInt8](repeating: 0, count: rowBytes), b = a
            for id in ids {
                try a.withUnsafeMutableBytes { try vectors.read(into: $0.baseAddress!, count: rowBytes, at: placement.offset(rows.row(of: id))) }
                try b.withUnsafeMutableBytes { try fullVectors.read(into: $0.baseAddress!, count: rowBytes, at: placement.offset(Int(id))) }
                #expect(a == b, "vector \(id)")
            }
        }
        #expect(covered == model.heads)
        #expect(records == full.stats.records)
    }

    @Test func plainBuildIsTrainThenBuildWithTheModel() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: Self.n, d: Self.d)
        let input = dir.file("base.fbin")
        let model = try IndexBuilder(input: input, output: dir.file("model"), options: options(.lvq8)).train()
        let plain = try IndexBuilder(input: input, output: dir.file("plain"), options: options(.lvq8)).build()
        let withModel = try IndexBuilder(input: input, output: dir.file("full"), model: dir.file("model")).build()
        #expect(plain.model_fingerprint == model.fingerprint)
        for name in ["heads.bin", "graph.bin", "codec.bin", "postings.idx", "postings.dat", "vectors.dat"] {
            #expect(plain.files.first { $0.name == name } == withModel.files.first { $0.name == name }, "\(name)")
        }
        // The model directory holds the model files and model.json, nothing else.
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: dir.file("model")))
        #expect(names == ["heads.bin", "graph.bin", "codec.bin", "model.json"])
        #expect(try ModelManifest.load(directory: dir.file("model")) == model)
    }

    @Test func modelFingerprintMismatchRefused() async throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: Self.n, d: Self.d)
        let input = dir.file("base.fbin")
        let a = try IndexBuilder(input: input, output: dir.file("modelA"), options: options(.none)).train()
        let b = try IndexBuilder(input: input, output: dir.file("modelB"), options: options(.none, seed: 43)).train()
        #expect(a.fingerprint != b.fingerprint)
        _ = try IndexBuilder(input: input, output: dir.file("shard0"), model: dir.file("modelA"), shard: ShardSpec(index: 0, count: 1)).build()
        let shard = try VectorIndex.open(at: dir.file("shard0"))
        let router = try ModelRouter(modelDirectory: dir.file("modelB"))
        do {
            _ = try await ShardedSearch.connect(router: router, replicas: [0: [LocalShard(shard)]])
            Issue.record("a shard of another model was accepted")
        } catch let e as FathomError {
            #expect(e.code == .incompatibleIndex)
            #expect(e.message.contains(a.fingerprint) && e.message.contains(b.fingerprint), "\(e.message)")
        }
        #expect(throws: FathomError.self) { try b.checkBuiltWith(shard.manifest, indexPath: shard.path, modelPath: dir.file("modelB")) }
        try a.checkBuiltWith(shard.manifest, indexPath: shard.path, modelPath: dir.file("modelA"))
        // An edited model.json is refused with both fingerprints.
        var text = try String(contentsOfFile: dir.file("modelA") + "/model.json", encoding: .utf8)
        text = text.replacingOccurrences(of: "\"replicas\" : 8", with: "\"replicas\" : 7")
        try text.write(toFile: dir.file("modelA") + "/model.json", atomically: true, encoding: .utf8)
        #expect(throws: FathomError.self) { try ModelManifest.load(directory: dir.file("modelA")) }
        // A model of another input shape is refused by a shard build.
        try writeSynthetic(dir: dir, n: 2000, d: Self.d, base: "other.fbin")
        #expect(throws: FathomError.self) {
            try IndexBuilder(input: dir.file("other.fbin"), output: dir.file("x"), model: dir.file("modelB"), shard: ShardSpec(index: 0, count: 2))
        }
    }

    @Test(arguments: [PostingCodec.none, .lvq8])
    func searchOverShardsEqualsSingleIndex(codec: PostingCodec) async throws {
        let dir = TempDir()
        let (_, queries) = try writeSynthetic(dir: dir, n: Self.n, d: Self.d, nq: 60)
        _ = try trainAndBuild(dir, codec: codec, shards: 4)
        let single = try VectorIndex.open(at: dir.file("full"), io: .pread)
        let router = try ModelRouter(modelDirectory: dir.file("model"))
        var shards = [Int: [any ShardClient]]()
        for i in 0..<4 { shards[i] = [LocalShard(try VectorIndex.open(at: dir.file("shard\(i)"), io: .pread))] }
        let sharded = try await ShardedSearch.connect(router: router, replicas: shards)
        var compared = 0
        for probes in [4, 16] {
            let p = SearchParameters(probes: probes)
            for i in 0..<queries.rows {
                let q = Array(UnsafeBufferPointer(start: queries.row(i), count: Self.d))
                let want = try await single.search(q, k: 10, parameters: p)
                let got = try await sharded.search(q, k: 10, parameters: p)
                #expect(got.map(\.id) == want.map(\.id), "query \(i) at \(probes) probes")
                #expect(got.map(\.distance) == want.map(\.distance))
                #expect(got.map(\.label) == want.map(\.label))
                compared += 1
            }
        }
        #expect(compared == 120)
    }

    /// A replica that never answers (a stopped process).
    struct DeadReplica: ShardClient {
        let name: String
        func describe() async throws -> ShardDescription { throw FathomError(.io, "connection refused (test)") }
        func search(_ query: [Float], k: Int, parameters: SearchParameters, postings: [UInt32]) async throws -> [ShardCandidate] {
            throw FathomError(.io, "connection refused (test)")
        }
    }

    final class Calls: @unchecked Sendable {
        let lock = NSLock()
        var failed = 0, answered = 0
        func add(_ c: ShardCall) { lock.lock(); if c.succeeded { answered += 1 } else { failed += 1 }; lock.unlock() }
    }

    @Test func deadReplicaIsRetriedOnTheOther() async throws {
        let dir = TempDir()
        let (_, queries) = try writeSynthetic(dir: dir, n: Self.n, d: Self.d, nq: 20)
        _ = try trainAndBuild(dir, codec: .none, shards: 2)
        let single = try VectorIndex.open(at: dir.file("full"), io: .pread)
        let router = try ModelRouter(modelDirectory: dir.file("model"))
        var shards = [Int: [any ShardClient]]()
        for i in 0..<2 {
            shards[i] = [DeadReplica(name: "dead\(i)"), LocalShard(try VectorIndex.open(at: dir.file("shard\(i)"), io: .pread))]
        }
        let sharded = try await ShardedSearch.connect(router: router, replicas: shards)
        let calls = Calls()
        for i in 0..<queries.rows {
            let q = Array(UnsafeBufferPointer(start: queries.row(i), count: Self.d))
            let got = try await sharded.search(q, k: 10, parameters: SearchParameters(probes: 16), observe: { calls.add($0) })
            let want = try await single.search(q, k: 10, parameters: SearchParameters(probes: 16))
            #expect(got.map(\.id) == want.map(\.id))
        }
        #expect(calls.failed > 0, "the dead replicas were tried")
        #expect(calls.answered >= queries.rows)
        // With every replica of a shard dead, the query fails naming the shard.
        let broken = ShardedSearch(router: router, replicas: [[DeadReplica(name: "x")], [DeadReplica(name: "y")]], ranges: sharded.ranges)
        let q = Array(UnsafeBufferPointer(start: queries.row(0), count: Self.d))
        await #expect(throws: FathomError.self) { try await broken.search(q, k: 10) }
    }
}

/// The commands the scale-out driver runs (docs/scale-out.md), through the `fathom` binary.
@Suite struct ShardCLITests {
    @Test func trainBuildShardsInfoVerify() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 3000, d: 16)
        var r = try runFathom(["train", "--input", dir.file("base.fbin"), "--output", dir.file("model"), "--codec", "lvq8",
                               "--head-ratio", "0.05", "--posting-pages", "1", "--quiet", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let model = try JSONDecoder().decode(ModelManifest.self, from: Data(r.stdout.utf8))
        for i in 0..<2 {
            r = try runFathom(["build", "--input", dir.file("base.fbin"), "--model", dir.file("model"), "--shard", "\(i)/2",
                               "--output", dir.file("shard\(i)"), "--quiet"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout.contains("shard \(i)/2"), "\(r.stdout)")
            r = try runFathom(["info", dir.file("shard\(i)"), "--json"])
            #expect(r.status == 0 && r.stdout.contains("\"model_fingerprint\" : \"\(model.fingerprint)\""), "\(r.stdout)")
            r = try runFathom(["verify", dir.file("shard\(i)"), "--quiet"])
            #expect(r.status == 0, "\(r.stdout)")
        }
        // --shard without --model, and a shard number out of range, are refused.
        r = try runFathom(["build", "--input", dir.file("base.fbin"), "--shard", "0/2", "--output", dir.file("x"), "--quiet"])
        #expect(r.status != 0 && r.stderr.contains("--shard needs --model"), "\(r.stderr)")
        r = try runFathom(["build", "--input", dir.file("base.fbin"), "--model", dir.file("model"), "--shard", "2/2", "--output", dir.file("x"), "--quiet"])
        #expect(r.status == 2, "\(r.status) \(r.stderr)")
    }
}

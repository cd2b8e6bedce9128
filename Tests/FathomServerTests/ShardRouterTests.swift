import AsyncHTTPClient
import Fathom
import FathomServer
import FathomTestSupport
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// `fathom serve --router` over shard servers on loopback (docs/scale-out.md): the same
/// answers as the single index, and no failed query when one replica of a shard stops.
@Suite struct ShardRouterTests {
    /// A started server and the task running it.
    struct Started {
        let running: RunningServer
        let task: Task<Void, Error>
        func stop() async throws { await running.server.shutdown(); try await task.value }
    }

    func start(_ c: ServerConfiguration) async throws -> Started {
        var c = c
        c.host = "127.0.0.1"; c.port = 0; c.handleSignals = false; c.maxConcurrent = 2
        let server = try FathomServer(configuration: c, logger: quietLogger)
        let task = Task { try await server.run() }
        let running = RunningServer(server: server, port: await server.listeningPort())
        var ready = false
        for _ in 0..<1000 {
            if try await running.request(.GET, "/readyz").status == 200 { ready = true; break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(ready, "a server never became ready")
        return Started(running: running, task: task)
    }

    @Test func routerAnswersAsTheSingleIndexAndRetriesADeadReplica() async throws {
        let dir = TempDir()
        let d = 16
        let (_, q) = try writeSynthetic(dir: dir, n: 3000, d: d, nq: 16)
        var o = BuildOptions()
        o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1; o.codec = .lvq8
        let input = dir.file("base.fbin")
        let model = try IndexBuilder(input: input, output: dir.file("model"), options: o).train()
        try IndexBuilder(input: input, output: dir.file("full"), model: dir.file("model")).build()
        for i in 0..<2 {
            try IndexBuilder(input: input, output: dir.file("shard\(i)"), model: dir.file("model"), shard: ShardSpec(index: i, count: 2)).build()
        }
        let single = try VectorIndex.open(at: dir.file("full"), io: .pread)
        // Two replicas of each shard, each an ordinary server of the shard directory.
        var replicas = [[Started]]()
        for i in 0..<2 {
            var pair = [Started]()
            for _ in 0..<2 { pair.append(try await start(ServerConfiguration(indexes: [IndexSpec(name: "s\(i)", directory: dir.file("shard\(i)"))]))) }
            replicas.append(pair)
        }
        var rc = RouterConfiguration(model: dir.file("model"), shards: [:])
        for i in 0..<2 { for r in replicas[i] { try rc.add(parsing: "\(i)=\(r.running.base)") } }
        var c = ServerConfiguration(indexes: [])
        c.router = rc
        let router = try await start(c)

        func searchAll(_ round: String) async throws {
            for i in 0..<q.rows {
                let v = Array(UnsafeBufferPointer(start: q.row(i), count: d))
                let (status, body) = try await router.running.request(.POST, "/v1/indexes/sharded/search", body: searchBody(v, k: 10, probes: 12))
                #expect(status == 200, "\(round): query \(i) failed: \(body)")
                guard status == 200 else { continue }
                let got = try decodeSearch(body).results[0]
                let want = try await single.search(v, k: 10, parameters: SearchParameters(probes: 12))
                #expect(got.ids == want.map(\.id), "\(round): query \(i)")
                #expect(got.labels == want.map(\.label))
            }
        }
        try await searchAll("all replicas up")
        // Stop one replica of shard 0: every query still answers (retried on the other one).
        try await replicas[0][0].stop()
        try await searchAll("one replica of shard 0 stopped")
        let metrics = try await router.running.request(.GET, "/metrics").body
        #expect(metrics.contains("fathom_shard_request_duration_seconds"))
        #expect(metrics.contains("fathom_shard_request_failures_total{shard=\"0\""), "the stopped replica's failures are counted")
        // A router of another model refuses the shards, naming both fingerprints.
        var other = o; other.seed = 99
        let otherModel = try IndexBuilder(input: input, output: dir.file("model2"), options: other).train()
        var rc2 = RouterConfiguration(model: dir.file("model2"), shards: [:])
        for i in 0..<2 { try rc2.add(parsing: "\(i)=\(replicas[i][1].running.base)") }
        var c2 = ServerConfiguration(indexes: [])
        c2.router = rc2; c2.host = "127.0.0.1"; c2.port = 0; c2.handleSignals = false
        let wrong = try FathomServer(configuration: c2, logger: quietLogger)
        let wrongTask = Task { try await wrong.run() }
        let wrongRunning = RunningServer(server: wrong, port: await wrong.listeningPort())
        var refusal = ""
        for _ in 0..<200 {
            let (s, b) = try await wrongRunning.request(.GET, "/readyz")
            #expect(s == 503)
            if b.contains(otherModel.fingerprint) { refusal = b; break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(refusal.contains(model.fingerprint) && refusal.contains(otherModel.fingerprint), "\(refusal)")
        await wrong.shutdown(); _ = try? await wrongTask.value
        // With both replicas of shard 0 stopped, a query that needs shard 0 fails with 502.
        try await replicas[0][1].stop()
        var gateway = 0
        for i in 0..<q.rows {
            let v = Array(UnsafeBufferPointer(start: q.row(i), count: d))
            let (status, body) = try await router.running.request(.POST, "/v1/indexes/sharded/search", body: searchBody(v, k: 10, probes: 12))
            if status == 502 { gateway += 1; #expect(body.contains("every replica of shard 0 failed"), "\(body)") }
            else { #expect(status == 200) }
        }
        #expect(gateway > 0, "some query needs shard 0")
        try await router.stop()
        for r in replicas[1] { try await r.stop() }
    }
}

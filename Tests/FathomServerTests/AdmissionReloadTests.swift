import AsyncHTTPClient
import Fathom
@testable import FathomServer
import FathomTestSupport
import Foundation
import Testing

/// Signals between a test and a job blocked on a worker.
final class Gate: @unchecked Sendable {
    private let s = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var _ran = 0
    func wait() { s.wait() }
    func open(_ n: Int = 1) { for _ in 0..<n { s.signal() } }
    func mark() { lock.lock(); _ran += 1; lock.unlock() }
    var ran: Int { lock.lock(); defer { lock.unlock() }; return _ran }
}

@Suite struct AdmissionTests {
    @Test func fullQueueRefusesAndDeadlineReturnsWhileTheJobFinishes() async throws {
        let ex = SearchExecutor(maxConcurrent: 1, queueLimit: 1)
        let gate = Gate()
        let dropped = Gate()
        // Job 1 occupies the only worker; job 2 waits in the queue with a 50 ms deadline.
        let first = Task { try await ex.run(timeoutMs: nil) { gate.wait(); gate.mark(); return 1 } }
        while ex.inFlight == 0 { try await Task.sleep(for: .milliseconds(1)) }
        let second = Task { try await ex.run(timeoutMs: 50, onDrop: { dropped.mark() }) { gate.mark(); return 2 } }
        while ex.queueDepth == 0 { try await Task.sleep(for: .milliseconds(1)) }
        // Job 3: no room.
        await #expect(throws: AdmissionError.queueFull(queueLimit: 1)) {
            try await ex.run(timeoutMs: nil, onDrop: { dropped.mark() }) { 3 }
        }
        #expect(dropped.ran == 1, "the refused job's resources are released")
        // Job 2's deadline passes while it is queued: 504 for its caller...
        await #expect(throws: AdmissionError.deadlineExceeded(timeoutMs: 50)) { try await second.value }
        gate.open()
        #expect(try await first.value == 1)
        // ...and it never runs: the worker skips it and calls onDrop.
        while ex.queueDepth > 0 || ex.inFlight > 0 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(gate.ran == 1)
        #expect(dropped.ran == 2)
        // A running job past its deadline: the caller gets 504, the job still completes.
        let late = Task { try await ex.run(timeoutMs: 20) { gate.wait(); gate.mark(); return 4 } }
        await #expect(throws: AdmissionError.deadlineExceeded(timeoutMs: 20)) { try await late.value }
        gate.open()
        while gate.ran < 2 { try await Task.sleep(for: .milliseconds(1)) }
        ex.shutdown()
        await #expect(throws: AdmissionError.shuttingDown) { try await ex.run(timeoutMs: nil) { 5 } }
    }

    @Test func httpDeadlineAndQueueFullLeakNothing() async throws {
        let small = try SmallIndex.build(nq: 1)
        let q = small.queries[0]
        let vec = "[" + q.map { "\($0)" }.joined(separator: ",") + "]"
        let slowBatch = "{\"vectors\": [" + Array(repeating: vec, count: 300).joined(separator: ",") + "], \"k\": 10, \"probes\": 1000}"
        try await withServer([IndexSpec(name: "docs", directory: small.path)], configure: { $0.maxConcurrent = 1; $0.queueLimit = 0 }) { s in
            // A batch that cannot finish in 1 ms: 504, its search finishes on the worker afterwards.
            let (st, o) = try await s.json(.POST, "/v1/indexes/docs/search", body: String(slowBatch.dropLast()) + ", \"timeout_ms\": 1}")
            #expect(st == 504 && o["code"] as? String == "deadlineExceeded", "\(o)")
            // (Its search, if it started, runs to its end; wait for the worker to be free.)
            for _ in 0..<2000 where s.server.executor.inFlight > 0 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(s.server.executor.inFlight == 0)
            // While a job holds the only worker (queue 0), a search gets 429. (A job held by a
            // gate, not a large batch: a batch may finish before the second request arrives.)
            let gate = Gate()
            let executor = s.server.executor
            let held = Task { try await executor.run(timeoutMs: nil) { gate.wait(); return 1 } }
            while s.server.executor.inFlight == 0 { try await Task.sleep(for: .milliseconds(1)) }
            let (busy, bo) = try await s.json(.POST, "/v1/indexes/docs/search", body: searchBody(q, k: 1))
            #expect(busy == 429 && bo["code"] as? String == "overloaded", "\(bo)")
            gate.open()
            #expect(try await held.value == 1)
            let (after, ab) = try await s.request(.POST, "/v1/indexes/docs/search", body: slowBatch)
            #expect(after == 200, "\(ab.prefix(200))")
            // Nothing stays pinned: the generation's users drop back to 0.
            let served = s.server.registry["docs"]!
            for _ in 0..<1000 where served.currentGeneration!.activeQueries > 0 || s.server.executor.inFlight > 0 {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(served.currentGeneration!.activeQueries == 0)
            #expect(s.server.executor.inFlight == 0 && s.server.executor.queueDepth == 0)
        }
    }
}

@Suite struct ReloadTests {
    @Test func reloadDuringConcurrentQueriesFailsNoQuery() async throws {
        let small = try SmallIndex.build(nq: 8)
        let index = try VectorIndex.open(at: small.path)
        let want = try small.queries.map { try index.search($0, k: 5, parameters: SearchParameters(probes: 8), filter: nil).map(\.id) }
        try await withServer([IndexSpec(name: "docs", directory: small.path)], configure: { $0.queueLimit = 256 }) { s in
            // Generation 1's index, weakly: it must be freed once its generation closes.
            let (_, _) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(small.queries[0], k: 5))
            weak var firstIndex: VectorIndex?
            do { let l = try s.server.registry["docs"]!.lease(); firstIndex = l.index; l.release() }
            #expect(firstIndex != nil && firstIndex!.pooledSearcherCount >= 1)
            let reloads = 4
            let clients = 6
            let perClient = 25
            let results = try await withThrowingTaskGroup(of: (failures: Int, mismatches: Int, generations: Set<Int>).self) { group in
                for c in 0..<clients {
                    group.addTask {
                        var failures = 0, mismatches = 0
                        var gens = Set<Int>()
                        for i in 0..<perClient {
                            let qi = (c + i) % small.queries.count
                            let (st, body) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(small.queries[qi], k: 5, probes: 8))
                            if st != 200 { failures += 1; continue }
                            let r = try decodeSearch(body)
                            gens.insert(r.generation)
                            if r.results[0].ids != want[qi] { mismatches += 1 }
                        }
                        return (failures, mismatches, gens)
                    }
                }
                group.addTask {
                    var gens = Set<Int>()
                    for _ in 0..<reloads {
                        try await Task.sleep(for: .milliseconds(30))
                        let (st, o) = try await s.json(.POST, "/v1/indexes/docs/reload")
                        if st == 200, let g = o["generation"] as? Int { gens.insert(g) }
                    }
                    return (0, 0, gens)
                }
                var all = [(failures: Int, mismatches: Int, generations: Set<Int>)]()
                for try await r in group { all.append(r) }
                return all
            }
            #expect(results.map(\.failures).reduce(0, +) == 0, "no query fails during reloads")
            #expect(results.map(\.mismatches).reduce(0, +) == 0, "every generation answers the same")
            #expect(s.server.registry["docs"]!.generation == 1 + reloads)
            // Retired generations close after their last query: only the current one stays open.
            let served = s.server.registry["docs"]!
            for _ in 0..<500 where served.openGenerationCount > 1 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(served.openGenerationCount == 1)
            #expect(firstIndex == nil, "a closed generation's index is deallocated (files, IO contexts, RAM)")
            let (_, mb) = try await s.request(.GET, "/metrics")
            #expect(mb.contains("fathom_index_generation{index=\"docs\"} \(1 + reloads)"))
            let (_, io) = try await s.json(.GET, "/v1/indexes/docs")
            #expect(io["generation"] as? Int == 1 + reloads && io["open_generations"] as? Int == 1)
        }
    }

    @Test func reloadPicksUpARepublishedIndex() async throws {
        // Two different indexes; the served directory is swapped from one to the other.
        let dir = TempDir()
        let a = try SmallIndex.build(n: 2000, d: 16, nq: 2, seed: 7, into: dir, name: "a")
        _ = try SmallIndex.build(n: 1500, d: 16, nq: 2, seed: 99, into: dir, name: "b")
        try FileManager.default.createSymbolicLink(atPath: dir.file("live"), withDestinationPath: dir.file("a"))
        let live = dir.file("live")
        try await withServer([IndexSpec(name: "live", directory: live)]) { s in
            let (_, before) = try await s.json(.GET, "/v1/indexes")
            #expect((before["indexes"] as? [[String: Any]])?.first?["count"] as? Int == 2000)
            // Publish b in place of a (rename of a symlink: atomic), then reload.
            try FileManager.default.createSymbolicLink(atPath: dir.file("live.new"), withDestinationPath: dir.file("b"))
            #expect(rename(dir.file("live.new"), live) == 0)
            let (st, o) = try await s.json(.POST, "/v1/indexes/live/reload")
            #expect(st == 200 && o["generation"] as? Int == 2 && o["previous_generation"] as? Int == 1, "\(o)")
            let (_, after) = try await s.json(.GET, "/v1/indexes")
            #expect((after["indexes"] as? [[String: Any]])?.first?["count"] as? Int == 1500)
            let (qs, qb) = try await s.request(.POST, "/v1/indexes/live/search", body: searchBody(a.queries[0], k: 3))
            let gen = try decodeSearch(qb).generation
            #expect(qs == 200 && gen == 2)
        }
    }
}

@Suite struct WatchTests {
    @Test func watchReloadsARepublishedDirectory() async throws {
        let dir = TempDir()
        _ = try SmallIndex.build(n: 2000, d: 16, nq: 1, seed: 7, into: dir, name: "a")
        _ = try SmallIndex.build(n: 1500, d: 16, nq: 1, seed: 99, into: dir, name: "b")
        try FileManager.default.createSymbolicLink(atPath: dir.file("live"), withDestinationPath: dir.file("a"))
        try await withServer([IndexSpec(name: "live", directory: dir.file("live"))], configure: { $0.watchIntervalMs = 20 }) { s in
            let served = s.server.registry["live"]!
            // Nothing changed: no reload.
            try await Task.sleep(for: .milliseconds(150))
            #expect(served.generation == 1)
            try FileManager.default.createSymbolicLink(atPath: dir.file("live.new"), withDestinationPath: dir.file("b"))
            #expect(rename(dir.file("live.new"), dir.file("live")) == 0)
            for _ in 0..<500 where served.generation < 2 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(served.generation == 2)
            let (_, o) = try await s.json(.GET, "/v1/indexes")
            #expect((o["indexes"] as? [[String: Any]])?.first?["count"] as? Int == 1500)
            // A republished directory that fails to open is tried once, not in a loop.
            try FileManager.default.createDirectory(atPath: dir.file("empty"), withIntermediateDirectories: true)
            try "{}".write(toFile: dir.file("empty/manifest.json"), atomically: true, encoding: .utf8)
            try FileManager.default.createSymbolicLink(atPath: dir.file("live.new"), withDestinationPath: dir.file("empty"))
            #expect(rename(dir.file("live.new"), dir.file("live")) == 0)
            try await Task.sleep(for: .milliseconds(200))
            #expect(served.generation == 2 && !served.isRepublished)
            let (st, _) = try await s.request(.POST, "/v1/indexes/live/search", body: searchBody([Float](repeating: 0.5, count: 16), k: 3))
            #expect(st == 200, "generation 2 keeps serving")
        }
    }
}

@Suite struct ShutdownTests {
    @Test func gracefulShutdownFinishesTheInFlightSearch() async throws {
        let small = try SmallIndex.build(nq: 1)
        let vec = "[" + small.queries[0].map { "\($0)" }.joined(separator: ",") + "]"
        let slowBatch = "{\"vectors\": [" + Array(repeating: vec, count: 300).joined(separator: ",") + "], \"k\": 10, \"probes\": 1000}"
        var c = ServerConfiguration(indexes: [IndexSpec(name: "docs", directory: small.path)])
        c.port = 0; c.handleSignals = false; c.maxConcurrent = 1
        let server = try FathomServer(configuration: c, logger: quietLogger)
        let task = Task { try await server.run() }
        let s = RunningServer(server: server, port: await server.listeningPort())
        for _ in 0..<500 where server.registry["docs"]!.generation == 0 { try await Task.sleep(for: .milliseconds(10)) }
        let slow = Task { try await s.request(.POST, "/v1/indexes/docs/search", body: slowBatch) }
        while server.executor.inFlight == 0 { try await Task.sleep(for: .milliseconds(1)) }
        await server.shutdown()
        let (status, body) = try await slow.value
        #expect(status == 200, "the in-flight search is answered during shutdown")
        #expect(try decodeSearch(body).results.count == 300)
        try await task.value
        #expect(server.executor.inFlight == 0 && server.executor.queueDepth == 0)
    }
}

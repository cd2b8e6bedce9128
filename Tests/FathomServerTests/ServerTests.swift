import AsyncHTTPClient
import Fathom
@testable import FathomServer
import FathomTestSupport
import Foundation
import Testing

@Suite struct ServerSearchTests {
    @Test func searchOverHTTPEqualsTheLibrary() async throws {
        let small = try SmallIndex.build()
        let index = try VectorIndex.open(at: small.path)
        try await withServer([IndexSpec(name: "docs", directory: small.path)]) { s in
            // One query per request, default and explicit probes.
            for (i, q) in small.queries.enumerated() {
                for probes in [nil, 8] as [Int?] {
                    let (status, body) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(q, k: 10, probes: probes))
                    #expect(status == 200, "\(body)")
                    let r = try decodeSearch(body)
                    let want = try index.search(q, k: 10, parameters: SearchParameters(probes: probes ?? 32), filter: nil)
                    #expect(r.results.count == 1 && r.generation == 1 && r.index == "docs")
                    #expect(r.results[0].ids == want.map(\.id), "query \(i) probes \(probes ?? 32)")
                    #expect(r.results[0].distances == want.map(\.distance), "query \(i)")
                    #expect(r.results[0].stats.ios > 0 && r.results[0].stats.kib > 0 && r.results[0].stats.us > 0)
                }
            }
            // The whole set as one batch, against the library's batch search.
            let batch = "{\"vectors\": [" + small.queries.map { "[" + $0.map { "\($0)" }.joined(separator: ",") + "]" }.joined(separator: ",") + "], \"k\": 5, \"probes\": 16}"
            let (status, body) = try await s.request(.POST, "/v1/indexes/docs/search", body: batch)
            #expect(status == 200, "\(body)")
            let r = try decodeSearch(body)
            let flat = small.queries.flatMap { $0 }
            let want = flat.withUnsafeBufferPointer { index.search(batch: $0, count: small.queries.count, k: 5, parameters: SearchParameters(probes: 16), threads: 2) }
            #expect(r.results.count == small.queries.count)
            for (i, w) in want.enumerated() {
                let hits = try w.get()
                #expect(r.results[i].ids == hits.map(\.id), "batch query \(i)")
                #expect(r.results[i].distances == hits.map(\.distance))
            }
            // Filtered: the same ids as the library's filtered search, all matching.
            let f = try index.prepareFilter("price < 30 AND color != 'c1'")
            for q in small.queries.prefix(5) {
                let (st, b) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(q, k: 10, filter: "price < 30 AND color != 'c1'"))
                #expect(st == 200, "\(b)")
                let got = try decodeSearch(b).results[0]
                let want = try index.search(q, k: 10, filter: f)
                #expect(got.ids == want.map(\.id))
                #expect(got.ids.allSatisfy { index.matches(f, id: $0) })
            }
        }
    }

    /// Each bad input gets its documented status and error code, and the server keeps serving.
    @Test func badInputMatrix() async throws {
        let small = try SmallIndex.build(n: 2000, d: 16, nq: 1)
        let q = small.queries[0]
        let vec = "[" + q.map { "\($0)" }.joined(separator: ",") + "]"
        try await withServer([IndexSpec(name: "docs", directory: small.path)]) { s in
            let cases: [(String, String, Int, String)] = [
                ("truncated JSON", "{\"vector\": \(vec), \"k\": 1", 400, "malformedJSON"),
                ("not JSON", "vector=1,2,3", 400, "malformedJSON"),
                ("empty body", "", 400, "malformedJSON"),
                ("JSON array", "[1,2]", 400, "invalidArgument"),
                ("dimension one short", "{\"vector\": [" + q.dropLast().map { "\($0)" }.joined(separator: ",") + "], \"k\": 1}", 400, "dimensionMismatch"),
                ("dimension one long", "{\"vector\": [" + (q + [1]).map { "\($0)" }.joined(separator: ",") + "], \"k\": 1}", 400, "dimensionMismatch"),
                ("batch with one bad row", "{\"vectors\": [\(vec), [1,2]], \"k\": 1}", 400, "dimensionMismatch"),
                ("NaN as a string", "{\"vector\": [\"NaN\"" + String(repeating: ",0", count: 15) + "], \"k\": 1}", 400, "nonFiniteValue"),
                ("NaN as null", "{\"vector\": [null" + String(repeating: ",0", count: 15) + "], \"k\": 1}", 400, "nonFiniteValue"),
                // Beyond float32 (a float32 infinity): nonFiniteValue. Beyond Double: the JSON parser refuses it.
                ("number beyond float32", "{\"vector\": [1e39" + String(repeating: ",0", count: 15) + "], \"k\": 1}", 400, "nonFiniteValue"),
                ("number beyond double", "{\"vector\": [1e400" + String(repeating: ",0", count: 15) + "], \"k\": 1}", 400, "malformedJSON"),
                ("a word in the vector", "{\"vector\": [\"x\"" + String(repeating: ",0", count: 15) + "], \"k\": 1}", 400, "invalidArgument"),
                ("k 0", "{\"vector\": \(vec), \"k\": 0}", 400, "invalidArgument"),
                ("k negative", "{\"vector\": \(vec), \"k\": -3}", 400, "invalidArgument"),
                ("k 10^9", "{\"vector\": \(vec), \"k\": 1000000000}", 400, "invalidArgument"),
                ("k above the vector count", "{\"vector\": \(vec), \"k\": 999}", 200, ""),
                ("k a string", "{\"vector\": \(vec), \"k\": \"ten\"}", 400, "invalidArgument"),
                ("probes 0", "{\"vector\": \(vec), \"probes\": 0}", 400, "invalidArgument"),
                ("probes 10^9", "{\"vector\": \(vec), \"probes\": 1000000000}", 400, "invalidArgument"),
                ("timeout 0", "{\"vector\": \(vec), \"timeout_ms\": 0}", 400, "invalidArgument"),
                ("filter syntax error", "{\"vector\": \(vec), \"filter\": \"price < 10 AND\"}", 400, "parse"),
                ("filter unknown column", "{\"vector\": \(vec), \"filter\": \"weight < 10\"}", 400, "parse"),
                ("unknown field", "{\"vector\": \(vec), \"prob\": 8}", 400, "invalidArgument"),
                ("no vector", "{\"k\": 3}", 400, "invalidArgument"),
                ("vector and vectors", "{\"vector\": \(vec), \"vectors\": [\(vec)]}", 400, "invalidArgument"),
                ("empty batch", "{\"vectors\": []}", 400, "invalidArgument"),
            ]
            for (what, body, status, code) in cases {
                let (st, o) = try await s.json(.POST, "/v1/indexes/docs/search", body: body)
                if what == "k above the vector count" {
                    // 999 < 2000 vectors: fine. (The count check is exercised below with a 1000 limit.)
                    #expect(st == 200, "\(what): \(o)")
                    continue
                }
                #expect(st == status, "\(what): got \(st) \(o)")
                #expect(o["code"] as? String == code, "\(what): \(o)")
                #expect(o["message"] is String && o["detail"] is [String: Any], "\(what): \(o)")
            }
            // The filter error carries the caret position of the bad token.
            let (_, f) = try await s.json(.POST, "/v1/indexes/docs/search", body: "{\"vector\": \(vec), \"filter\": \"price < 10 AND\"}")
            let d = f["detail"] as? [String: Any]
            #expect(d?["position"] as? Int == 14, "\(f)")
            #expect((d?["caret"] as? String)?.contains("^") == true)
            // The unknown member is named.
            let (_, u) = try await s.json(.POST, "/v1/indexes/docs/search", body: "{\"vector\": \(vec), \"prob\": 8}")
            #expect((u["detail"] as? [String: Any])?["field"] as? String == "prob")
            // Dimension detail.
            let (_, dm) = try await s.json(.POST, "/v1/indexes/docs/search", body: "{\"vector\": [1,2,3]}")
            #expect((dm["detail"] as? [String: Any])?["expected"] as? Int == 16)
            #expect((dm["detail"] as? [String: Any])?["actual"] as? Int == 3)
            // Unknown index, unknown route.
            let (st404, o404) = try await s.json(.POST, "/v1/indexes/nope/search", body: "{\"vector\": \(vec)}")
            #expect(st404 == 404 && o404["code"] as? String == "unknownIndex")
            let (stInfo, oInfo) = try await s.json(.GET, "/v1/indexes/nope")
            #expect(stInfo == 404 && oInfo["code"] as? String == "unknownIndex")
            let (stRoute, oRoute) = try await s.json(.GET, "/v2/whatever")
            #expect(stRoute == 404 && oRoute["code"] as? String == "notFound")
            // A 10 MB body: 413 (limit 4 MiB by default).
            let big = "{\"vector\": [" + String(repeating: "0.123456789,", count: 10_000_000 / 12) + "0]}"
            let (stBig, bBig) = try await s.request(.POST, "/v1/indexes/docs/search", body: big)
            #expect(stBig == 413, "\(bBig.prefix(200))")
            #expect(bBig.contains("bodyTooLarge"))
            // Still serving after all of that.
            let (ok, _) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(q, k: 3))
            #expect(ok == 200)
        }
    }

    @Test func kAboveTheIndexSizeIsRefused() async throws {
        let small = try SmallIndex.build(n: 300, d: 8, nq: 1)
        let vec = "[" + small.queries[0].map { "\($0)" }.joined(separator: ",") + "]"
        try await withServer([IndexSpec(name: "tiny", directory: small.path)]) { s in
            let (st, o) = try await s.json(.POST, "/v1/indexes/tiny/search", body: "{\"vector\": \(vec), \"k\": 301}")
            #expect(st == 400 && o["code"] as? String == "invalidArgument", "\(o)")
            #expect((o["detail"] as? [String: Any])?["limit"] as? Int == 300)
            let (ok, body) = try await s.request(.POST, "/v1/indexes/tiny/search", body: "{\"vector\": \(vec), \"k\": 300, \"probes\": 60000}")
            #expect(ok == 200, "\(body)")
            // A deadline that is met: an ordinary answer.
            let (timed, tb) = try await s.request(.POST, "/v1/indexes/tiny/search", body: "{\"vector\": \(vec), \"k\": 3, \"timeout_ms\": 60000}")
            #expect(timed == 200, "\(tb)")
            #expect(try decodeSearch(tb).results[0].ids.count == 3)
        }
    }
}

@Suite struct ServerOperationsTests {
    @Test func healthReadinessMetricsInfoAndSpec() async throws {
        let small = try SmallIndex.build(nq: 1)
        try await withServer([IndexSpec(name: "docs", directory: small.path)]) { s in
            let (h, ho) = try await s.json(.GET, "/healthz")
            #expect(h == 200 && ho["status"] as? String == "ok")
            let (r, ro) = try await s.json(.GET, "/readyz")
            #expect(r == 200 && (ro["indexes"] as? [String: Any])?["docs"] as? Int == 1)
            _ = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(small.queries[0], k: 5))
            let (m, mb) = try await s.request(.GET, "/metrics")
            #expect(m == 200)
            for name in ["fathom_http_requests_total{route=\"/v1/indexes/{name}/search\",method=\"POST\",status=\"200\"} 1",
                         "fathom_index_generation{index=\"docs\"} 1", "fathom_search_request_duration_seconds_bucket",
                         "fathom_query_ios_count{index=\"docs\"} 1", "fathom_admission_queue_depth", "fathom_searches_in_flight",
                         "fathom_index_idle_searchers{index=\"docs\"}", "fathom_index_open_generations{index=\"docs\"} 1"] {
                #expect(mb.contains(name), "metrics lack \(name)")
            }
            let (l, lo) = try await s.json(.GET, "/v1/indexes")
            let first = (lo["indexes"] as? [[String: Any]])?.first
            #expect(l == 200 && first?["name"] as? String == "docs" && first?["dimension"] as? Int == 16 && first?["count"] as? Int == 2000)
            let (i, io) = try await s.json(.GET, "/v1/indexes/docs")
            #expect(i == 200 && io["generation"] as? Int == 1)
            let summary = (io["info"] as? [String: Any])?["summary"] as? [String: Any]
            #expect(summary?["count"] as? Int == 2000 && summary?["dimension"] as? Int == 16, "\(io)")
            let (y, yb) = try await s.request(.GET, "/openapi.yaml")
            #expect(y == 200 && yb.hasPrefix("openapi: 3.1"))
        }
    }

    @Test func servedSpecIsDocsOpenapiYaml() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = try String(contentsOf: root.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
        #expect(OpenAPIDocument.yaml + "\n" == file || OpenAPIDocument.yaml == file,
                "Sources/FathomServer/OpenAPIDocument.swift is stale: run tools/sync-openapi")
    }

    @Test func notReadyUntilTheIndexOpens() async throws {
        // A directory that is not an index: the server runs, /readyz and searches answer 503.
        let dir = TempDir()
        try await withServerAllowingNotReady([IndexSpec(name: "broken", directory: dir.path)]) { s in
            let (r, ro) = try await s.json(.GET, "/readyz")
            #expect(r == 503 && ro["code"] as? String == "notReady", "\(ro)")
            let (q, qo) = try await s.json(.POST, "/v1/indexes/broken/search", body: "{\"vector\": [1,2]}")
            #expect(q == 503 && qo["code"] as? String == "notReady", "\(qo)")
            let (h, _) = try await s.json(.GET, "/healthz")
            #expect(h == 200)
            // A reload that fails keeps the state and reports the library's code (409).
            let (rl, rlo) = try await s.json(.POST, "/v1/indexes/broken/reload")
            #expect(rl == 409 && rlo["code"] as? String == "fileNotFound", "\(rlo)")
        }
    }
}

/// Like `withServer` but does not wait for readiness: waits until the first open attempt failed.
func withServerAllowingNotReady(_ indexes: [IndexSpec], _ body: (RunningServer) async throws -> Void) async throws {
    var c = ServerConfiguration(indexes: indexes)
    c.host = "127.0.0.1"; c.port = 0; c.handleSignals = false; c.maxConcurrent = 1
    let server = try FathomServer(configuration: c, logger: quietLogger)
    let task = Task { try await server.run() }
    let running = RunningServer(server: server, port: await server.listeningPort())
    for _ in 0..<500 where indexes.contains(where: { server.registry[$0.name]!.failure == nil }) {
        try await Task.sleep(for: .milliseconds(10))
    }
    do { try await body(running) } catch { await server.shutdown(); _ = try? await task.value; throw error }
    await server.shutdown()
    try await task.value
}

import AsyncHTTPClient
import Fathom
@testable import FathomServer
import FathomTestSupport
import Foundation
import Testing

// The write API (POST/DELETE /v1/indexes/{name}/vectors) on writable indexes.

/// JSON for a batch of vectors.
func vectorsJSON(_ vs: [[Float]]) -> String {
    "[" + vs.map { "[" + $0.map { "\($0)" }.joined(separator: ",") + "]" }.joined(separator: ",") + "]"
}

func insertBody(_ vs: [[Float]], labels: [UInt64]? = nil, upsert: Bool? = nil) -> String {
    var s = "{\"vectors\": \(vectorsJSON(vs))"
    if let labels { s += ", \"labels\": [" + labels.map(String.init).joined(separator: ",") + "]" }
    if let upsert { s += ", \"upsert\": \(upsert)" }
    return s + "}"
}

func deleteBody(_ labels: [UInt64]) -> String { "{\"labels\": [" + labels.map(String.init).joined(separator: ",") + "]}" }

/// `n` vectors of dimension `d` around the point (c, c, …, c), far from the synthetic data.
func cluster(_ c: Float, n: Int, d: Int = 16) -> [[Float]] {
    (0..<n).map { i in (0..<d).map { j in c + Float((i * 7 + j) % 11) * 0.01 } }
}

func decodeInsert(_ body: String) throws -> InsertResponse { try JSONDecoder().decode(InsertResponse.self, from: Data(body.utf8)) }
func decodeDelete(_ body: String) throws -> DeleteResponse { try JSONDecoder().decode(DeleteResponse.self, from: Data(body.utf8)) }

extension RunningServer {
    /// The labels of the `k` nearest neighbours of `v` (every posting read), with the answer's version.
    func labels(near v: [Float], k: Int, index: String = "w") async throws -> (labels: [UInt64], version: Int?) {
        let (st, b) = try await request(.POST, "/v1/indexes/\(index)/search",
                                        body: "{\"vector\": [" + v.map { "\($0)" }.joined(separator: ",") + "], \"k\": \(k), \"probes\": 65536, \"rerank\": 1000}")
        guard st == 200 else { throw APIError(st, "test", "search failed: \(b)") }
        let r = try decodeSearch(b)
        return (r.results[0].labels, r.version)
    }
}

@Suite struct WriteTests {
    /// A writable index keeps its quality as it is written: the server's writer runs
    /// maintenance in the background (splits here, with a small split threshold), and the
    /// next write's snapshot serves the split lists.
    @Test func theWriterSplitsListsInTheBackground() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)],
                             configure: { $0.updatePolicy.splitAbove = 16 }) { s in
            // 120 distinct vectors near (1000, …, 1000), far from the built data: one list takes them.
            let batch: [[Float]] = (0..<120).map { (i: Int) -> [Float] in
                (0..<16).map { (j: Int) -> Float in
                    let wobble = Float((i * 31 + j * 17) % 97) * 0.01
                    return 1000 + wobble + Float(i) * 0.0001
                }
            }
            let labels = (0..<UInt64(batch.count)).map { 20_000 + $0 }
            let (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(batch, labels: labels))
            #expect(st == 200, "\(b)")
            let writer = s.server.registry["w"]!.currentGeneration!.writer!
            for _ in 0..<3000 where writer.maintenanceStats.splits == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(writer.maintenanceStats.splits > 0, "\(writer.maintenanceStats)")
            // One more write publishes a snapshot with the split lists; every inserted vector is found.
            let (st2, b2) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(3000, n: 1), labels: [30_000]))
            #expect(st2 == 200, "\(b2)")
            for i in [0, 57, 119] {
                let (found, _) = try await s.labels(near: batch[i], k: 1)
                #expect(found == [labels[i]], "vector \(i): \(found)")
            }
        }
    }

    /// An index with attributes takes a row with every vector (`attributes`): filters see the
    /// inserted rows at once, values outside the built ranges included; a bad row is a 400
    /// naming `attributes[i]` and nothing is written.
    @Test func insertWithAttributesIsFiltered() async throws {
        let small = try SmallIndex.build(nq: 1)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let batch = cluster(1000, n: 4)
            func body(_ colors: [String]) -> String {
                let rows = colors.enumerated().map { "{\"price\": \(500 + $0.offset), \"color\": \"\($0.element)\"}" }
                return "{\"vectors\": \(vectorsJSON(batch)), \"labels\": [10000, 10001, 10002, 10003], \"attributes\": [" + rows.joined(separator: ",") + "]}"
            }
            for (b, field, needle) in [(body(["c1", "purple", "c2", "c3"]), "attributes[1]", "purple"),
                                       (insertBody(batch, labels: [10_000, 10_001, 10_002, 10_003]), "attributes[0]", "price, color"),
                                       (body(["c1", "c2"]), "attributes", "2 attribute objects for 4 vectors")] {
                let (st, o) = try await s.json(.POST, "/v1/indexes/w/vectors", body: b)
                #expect(st == 400, "\(o)")
                #expect((o["detail"] as? [String: Any])?["field"] as? String == field, "\(o)")
                #expect((o["message"] as? String)?.contains(needle) == true, "\(o)")
            }
            var (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: body(["c1", "c2", "c1", "c3"]))
            #expect(st == 200, "\(b)")
            #expect(try decodeInsert(b).version == 4)
            // price > 400 only holds for the inserted rows (the built prices are below 100).
            (st, b) = try await s.request(.POST, "/v1/indexes/w/search", body: searchBody(batch[0], k: 10, filter: "price > 400 AND color = 'c1'"))
            #expect(st == 200, "\(b)")
            #expect(Set(try decodeSearch(b).results[0].labels) == [10_000, 10_002], "\(b)")
        }
    }

    @Test func insertThenSearchFindsTheNewLabels() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let batch = cluster(1000, n: 5)
            let (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(batch, labels: [10_000, 10_001, 10_002, 10_003, 10_004]))
            #expect(st == 200, "\(b)")
            let r = try decodeInsert(b)
            #expect(r.labels == [10_000, 10_001, 10_002, 10_003, 10_004] && r.count == 5 && r.generation == 1 && r.version == 5 && !r.upsert)
            let (found, version) = try await s.labels(near: batch[0], k: 5)
            #expect(found.first == 10_000, "the vector itself is nearest: \(found)")
            #expect(Set(found) == Set(r.labels), "\(found)")
            #expect(version == 5)
            // Without labels: after the largest label, as `fathom insert` does.
            let (st2, b2) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(2000, n: 2)))
            #expect(st2 == 200, "\(b2)")
            let r2 = try decodeInsert(b2)
            #expect(r2.labels == [10_005, 10_006] && r2.version == 7)
            #expect(try await s.labels(near: cluster(2000, n: 1)[0], k: 1).labels == [10_005])
            // The index's state: live count and version.
            let (_, o) = try await s.json(.GET, "/v1/indexes/w")
            #expect(o["count"] as? Int == 2007 && o["version"] as? Int == 7 && o["writable"] as? Bool == true, "\(o)")
            // Search answers carry labels; for built rows the label is the row number.
            let (_, sb) = try await s.request(.POST, "/v1/indexes/w/search", body: searchBody(small.queries[0], k: 3))
            let res = try decodeSearch(sb).results[0]
            #expect(res.labels == res.ids.map(UInt64.init))
            // Metrics count the acknowledged writes.
            let (_, mb) = try await s.request(.GET, "/metrics")
            #expect(mb.contains("fathom_written_vectors_total{index=\"w\",op=\"insert\"} 7"), "\(mb)")
            #expect(mb.contains("fathom_index_version{index=\"w\"} 7"))
        }
    }

    @Test func upsertReplacesAndDeleteRemoves() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let old = cluster(1000, n: 3), new = cluster(3000, n: 1)
            #expect(try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(old, labels: [7_000, 7_001, 7_002])).status == 200)
            // Insert of an existing label without upsert: 409, nothing of the batch applied.
            let (c, co) = try await s.json(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(4000, n: 1) + new, labels: [7_500, 7_001]))
            #expect(c == 409 && co["code"] as? String == "labelExists", "\(co)")
            #expect((co["detail"] as? [String: Any])?["field"] as? String == "labels[1]")
            #expect(try await s.labels(near: cluster(4000, n: 1)[0], k: 1).labels != [7_500], "the good row of a refused batch is not there")
            // Upsert: label 7001 moves to the new place.
            let (u, ub) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(new, labels: [7_001], upsert: true))
            #expect(u == 200, "\(ub)")
            #expect(try decodeInsert(ub).upsert)
            #expect(try await s.labels(near: new[0], k: 1).labels == [7_001])
            let nearOld = try await s.labels(near: old[1], k: 3).labels
            #expect(!nearOld.contains(7_001) && nearOld.contains(7_000) && nearOld.contains(7_002), "\(nearOld)")
            // Upsert of a label not in the index inserts it.
            #expect(try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(5000, n: 1), labels: [8_000], upsert: true)).status == 200)
            #expect(try await s.labels(near: cluster(5000, n: 1)[0], k: 1).labels == [8_000])
            // Delete: known and unknown labels reported.
            let (d, db) = try await s.request(.DELETE, "/v1/indexes/w/vectors", body: deleteBody([7_000, 123_456_789, 7_001]))
            #expect(d == 200, "\(db)")
            let dr = try decodeDelete(db)
            #expect(dr.deleted == [7_000, 7_001] && dr.unknown == [123_456_789])
            #expect(try await s.labels(near: new[0], k: 1).labels != [7_001])
            let left = try await s.labels(near: old[0], k: 3).labels
            #expect(!left.contains(7_000) && left.contains(7_002), "\(left)")
            // Only unknown labels: nothing written, the version stays.
            let (d2, db2) = try await s.request(.DELETE, "/v1/indexes/w/vectors", body: deleteBody([555_555_555]))
            #expect(d2 == 200)
            let dr2 = try decodeDelete(db2)
            #expect(dr2.deleted.isEmpty && dr2.unknown == [555_555_555] && dr2.version == dr.version, "\(db2)")
            // A built row's label (row 99) is deleted like any other.
            #expect(try decodeDelete(try await s.request(.DELETE, "/v1/indexes/w/vectors", body: deleteBody([99])).body).deleted == [99])
            // Bad deletes.
            for (body, field) in [("{\"labels\": []}", "labels"), (deleteBody([5, 5]), "labels[1]"), ("{\"labels\": [-1]}", "labels[0]"),
                                  ("{\"labels\": [\"x\"]}", "labels[0]"), ("{\"label\": [1]}", "label"), ("{}", "labels")] {
                let (st, o) = try await s.json(.DELETE, "/v1/indexes/w/vectors", body: body)
                #expect(st == 400 && o["code"] as? String == "invalidArgument", "\(body): \(o)")
                #expect((o["detail"] as? [String: Any])?["field"] as? String == field, "\(body): \(o)")
            }
            let (_, mb) = try await s.request(.GET, "/metrics")
            #expect(mb.contains("fathom_written_vectors_total{index=\"w\",op=\"delete\"}"), "\(mb)")
        }
    }

    /// A batch with one bad row changes nothing: each case has a good row first.
    @Test func aBadRowRefusesTheWholeBatch() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let good = cluster(1000, n: 1)[0]
            let g = "[" + good.map { "\($0)" }.joined(separator: ",") + "]"
            let zeros15 = String(repeating: ",0", count: 15)
            #expect(try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(3000, n: 1), labels: [5])).status == 409,
                    "label 5 is a built row")
            let cases: [(String, String, Int, String, String?)] = [
                ("short row", "{\"vectors\": [\(g), [1,2,3]], \"labels\": [900000, 900001]}", 400, "dimensionMismatch", "vectors[1]"),
                ("null (NaN)", "{\"vectors\": [\(g), [1,2,3,null\(String(repeating: ",0", count: 12))]], \"labels\": [900000, 900001]}", 400, "nonFiniteValue", "vectors[1][3]"),
                ("beyond float32", "{\"vectors\": [\(g), [1e39\(zeros15)]], \"labels\": [900000, 900001]}", 400, "nonFiniteValue", "vectors[1][0]"),
                ("\"NaN\"", "{\"vectors\": [\(g), [\"NaN\"\(zeros15)]], \"labels\": [900000, 900001]}", 400, "nonFiniteValue", "vectors[1][0]"),
                ("\"-Infinity\"", "{\"vectors\": [\(g), [\"-Infinity\"\(zeros15)]]}", 400, "nonFiniteValue", "vectors[1][0]"),
                ("beyond double", "{\"vectors\": [\(g), [1e400\(zeros15)]], \"labels\": [900000, 900001]}", 400, "malformedJSON", nil),
                ("a row that is not an array", "{\"vectors\": [\(g), 3]}", 400, "invalidArgument", "vectors[1]"),
                ("label twice", "{\"vectors\": [\(g), \(g)], \"labels\": [900000, 900000]}", 400, "invalidArgument", "labels[1]"),
                ("label present", "{\"vectors\": [\(g), \(g)], \"labels\": [900000, 17]}", 409, "labelExists", "labels[1]"),
                ("label negative", "{\"vectors\": [\(g), \(g)], \"labels\": [900000, -2]}", 400, "invalidArgument", "labels[1]"),
                ("label fractional", "{\"vectors\": [\(g), \(g)], \"labels\": [900000, 2.5]}", 400, "invalidArgument", "labels[1]"),
                ("label beyond 2^64", "{\"vectors\": [\(g), \(g)], \"labels\": [900000, 18446744073709551616]}", 400, "invalidArgument", "labels[1]"),
                ("fewer labels", "{\"vectors\": [\(g), \(g)], \"labels\": [900000]}", 400, "invalidArgument", "labels"),
                ("upsert without labels", "{\"vectors\": [\(g)], \"upsert\": true}", 400, "invalidArgument", "labels"),
                ("upsert not a bool", "{\"vectors\": [\(g)], \"labels\": [900000], \"upsert\": \"yes\"}", 400, "invalidArgument", "upsert"),
                ("empty batch", "{\"vectors\": []}", 400, "invalidArgument", "vectors"),
                ("no vectors", "{\"labels\": [1]}", 400, "invalidArgument", "vectors"),
                ("unknown member", "{\"vectors\": [\(g)], \"label\": [900000]}", 400, "invalidArgument", "label"),
                ("not JSON", "vectors=1", 400, "malformedJSON", nil),
                ("empty body", "", 400, "malformedJSON", nil),
            ]
            for (what, body, status, code, field) in cases {
                let (st, o) = try await s.json(.POST, "/v1/indexes/w/vectors", body: body)
                #expect(st == status && o["code"] as? String == code, "\(what): \(st) \(o)")
                if let field { #expect((o["detail"] as? [String: Any])?["field"] as? String == field, "\(what): \(o)") }
                #expect(o["message"] is String, "\(what)")
            }
            // Nothing was applied: the version is 0, the count the built one, the good row absent.
            let (_, o) = try await s.json(.GET, "/v1/indexes/w")
            #expect(o["version"] as? Int == 0 && o["count"] as? Int == 2000, "\(o)")
            let writer = s.server.registry["w"]!.currentGeneration!.writer!
            #expect(writer.pendingUpdates == 0 && writer.loggedUpdates == 0 && !writer.contains(900_000))
            #expect(try await s.labels(near: good, k: 1).labels != [900_000])
            // A label at 2^64 − 1 is a label like any other; then a plain insert has no label left.
            let (top, tb) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody([good], labels: [UInt64.max]))
            #expect(top == 200 && (try? decodeInsert(tb).labels) == [UInt64.max], "\(tb)")
            #expect(try await s.labels(near: good, k: 1).labels == [UInt64.max])
            let (full, fo) = try await s.json(.POST, "/v1/indexes/w/vectors", body: insertBody([good]))
            #expect(full == 400 && (fo["detail"] as? [String: Any])?["field"] as? String == "labels", "\(fo)")
        }
    }

    @Test func anOversizedWriteBodyIs413AndWritesHaveTheirOwnLimit() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)],
                             configure: { $0.maxBodyBytes = 4096; $0.maxWriteBodyBytes = 64 << 10 }) { s in
            // ~20 KB: above the search limit, under the write limit.
            let ok = insertBody(cluster(1000, n: 100), labels: (0..<100).map { 50_000 + UInt64($0) })
            #expect(ok.utf8.count > 4096 && ok.utf8.count < 64 << 10)
            let (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: ok)
            #expect(st == 200, "\(b.prefix(300))")
            // ~100 KB: 413, nothing written.
            let big = insertBody(cluster(2000, n: 500), labels: (0..<500).map { 60_000 + UInt64($0) })
            #expect(big.utf8.count > 64 << 10)
            let (bs, bo) = try await s.json(.POST, "/v1/indexes/w/vectors", body: big)
            #expect(bs == 413 && bo["code"] as? String == "bodyTooLarge", "\(bo)")
            #expect((bo["detail"] as? [String: Any])?["limit"] as? Int == 64 << 10)
            let (ds, _) = try await s.json(.DELETE, "/v1/indexes/w/vectors", body: deleteBody((0..<20_000).map { UInt64($0) }))
            #expect(ds == 413)
            let (_, o) = try await s.json(.GET, "/v1/indexes/w")
            #expect(o["version"] as? Int == 100 && o["count"] as? Int == 2100, "\(o)")
        }
    }

    @Test func writesToAReadOnlyIndexAreRefusedAndItServesTheLog() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        // Updates written by another writer (as `fathom insert` would), then closed.
        do {
            let w = try MutableVectorIndex.open(at: small.path)
            try w.insert(label: 77_777, vector: cluster(1000, n: 1)[0])
            try w.flush()
            w.close()
        }
        try await withServer([IndexSpec(name: "w", directory: small.path)]) { s in
            let (st, o) = try await s.json(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(2000, n: 1), labels: [1]))
            #expect(st == 409 && o["code"] as? String == "readOnly", "\(o)")
            #expect((o["message"] as? String)?.contains("--writable w") == true)
            let (ds, dobj) = try await s.json(.DELETE, "/v1/indexes/w/vectors", body: deleteBody([77_777]))
            #expect(ds == 409 && dobj["code"] as? String == "readOnly")
            // A read-only index serves the built version plus its log.
            let (found, version) = try await s.labels(near: cluster(1000, n: 1)[0], k: 1)
            #expect(found == [77_777] && version == nil)
            let (_, info) = try await s.json(.GET, "/v1/indexes/w")
            #expect(info["writable"] as? Bool == false && info["count"] as? Int == 2001, "\(info)")
            // GET on the write route: no such route.
            let (gs, go) = try await s.json(.GET, "/v1/indexes/w/vectors")
            #expect(gs == 404 && go["code"] as? String == "notFound", "\(go)")
        }
    }

    @Test func aSecondWriterOfTheDirectoryIsRefused() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        let other = try MutableVectorIndex.open(at: small.path)
        defer { other.close() }
        try await withServerAllowingNotReady([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let (r, ro) = try await s.json(.GET, "/readyz")
            #expect(r == 503 && (ro["message"] as? String)?.contains("open for writing by another process") == true, "\(ro)")
            let (st, o) = try await s.json(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(1000, n: 1)))
            #expect(st == 503 && o["code"] as? String == "notReady", "\(o)")
        }
        // Two writable names on one directory: refused before starting.
        var c = ServerConfiguration(indexes: [IndexSpec(name: "a", directory: small.path, writable: true),
                                              IndexSpec(name: "b", directory: small.path + "/", writable: true)])
        c.handleSignals = false
        #expect(throws: FathomError.self) { _ = try FathomServer(configuration: c, logger: quietLogger) }
    }

    /// Searches that run while batches land see each batch whole or not at all, and exactly
    /// when their version says so.
    @Test func concurrentReadersNeverSeeHalfABatch() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        let batches = 10, per = 8
        let centers = (0..<batches).map { Float(1000 + 100 * $0) }
        let labelsOf = (0..<batches).map { j in (0..<per).map { UInt64(100_000 * (j + 1) + $0) } }
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)], configure: { $0.maxConcurrent = 2; $0.queueLimit = 256 }) { s in
            let writer = Task { () async throws -> [Int] in
                var versions = [Int]()
                for j in 0..<batches {
                    try await Task.sleep(for: .milliseconds(25))   // spread over the readers' run
                    let (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(centers[j], n: per), labels: labelsOf[j]))
                    guard st == 200 else { throw APIError(st, "test", b) }
                    versions.append(try decodeInsert(b).version)
                }
                return versions
            }
            // Readers: (batch, version answered, how many of the batch's labels were found).
            let observations = try await withThrowingTaskGroup(of: [(Int, Int, Int)].self) { group in
                for r in 0..<2 {
                    group.addTask {
                        var seen = [(Int, Int, Int)]()
                        var i = r
                        while seen.count < 60 {
                            let j = i % batches
                            i += 1
                            let (found, version) = try await s.labels(near: cluster(centers[j], n: 1)[0], k: per)
                            seen.append((j, version ?? -1, found.filter { labelsOf[j].contains($0) }.count))
                        }
                        return seen
                    }
                }
                var all = [(Int, Int, Int)]()
                for try await o in group { all += o }
                return all
            }
            let versions = try await writer.value
            #expect(versions == (1...batches).map { $0 * per }, "one version step per row, \(versions)")
            var partial = 0, wrong = 0, sawSome = 0
            for (j, version, n) in observations {
                if n != 0 && n != per { partial += 1 }
                // Batch j is in every version ≥ its acknowledged version, in none before.
                if (n == per) != (version >= versions[j]) { wrong += 1 }
                if n == per { sawSome += 1 }
            }
            #expect(partial == 0, "a search saw part of a batch")
            #expect(wrong == 0, "a search's version disagrees with what it saw")
            // After the last write every batch is found whole.
            for j in 0..<batches { #expect(Set(try await s.labels(near: cluster(centers[j], n: 1)[0], k: per).labels) == Set(labelsOf[j])) }
            #expect(observations.count == 120 && sawSome > 0)
            #expect(Set(observations.map { $0.1 }).count > 2, "the searches ran while batches landed")
        }
    }

    /// A write whose flush fails (here: ENOSPC on the log's fsync) is not acknowledged, and
    /// the server re-opens the index from its log so that the next acknowledged flush does
    /// not carry the failed batch along.
    @Test func aWriteThatFailsToFlushIsDroppedWhole() async throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        try await withServer([IndexSpec(name: "w", directory: small.path, writable: true)]) { s in
            let served = s.server.registry["w"]!
            let faults = FaultInjector(pathPrefix: small.path + "/", failAt: 0, fault: .enospc, operations: [.fsync])
            let failed = cluster(1000, n: 3)
            let flat = failed.flatMap { $0 }
            await #expect(throws: FathomError.self) {
                try await served.write(queueLimit: 4) { _, w in
                    try faults.inject { try flat.withUnsafeBufferPointer { try w.insert(labels: [3_000_000, 3_000_001, 3_000_002], vectors: $0) } }
                }
            }
            #expect(faults.fired?.operation == .fsync, "\(faults.calls)")
            #expect(served.generation == 2, "re-opened from the log")
            let (st, b) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(2000, n: 1), labels: [4_000_000]))
            #expect(st == 200, "\(b)")
            #expect((try? decodeInsert(b).version) == 1, "only the acknowledged write is in the log: \(b)")
            #expect(try await s.labels(near: failed[0], k: 1).labels != [3_000_000])
            #expect(!served.currentGeneration!.writer!.contains(3_000_000))
        }
    }

    /// Reload of a writable index re-opens it (its log replayed); a directory republished
    /// under the writer refuses writes until a reload opens the new version.
    @Test func reloadReopensTheWriterAndARepublishRefusesWrites() async throws {
        let dir = TempDir()
        _ = try SmallIndex.build(n: 2000, d: 16, nq: 1, seed: 7, into: dir, name: "a", attributes: false)
        _ = try SmallIndex.build(n: 1500, d: 16, nq: 1, seed: 99, into: dir, name: "b", attributes: false)
        try FileManager.default.createSymbolicLink(atPath: dir.file("live"), withDestinationPath: dir.file("a"))
        try await withServer([IndexSpec(name: "w", directory: dir.file("live"), writable: true)]) { s in
            #expect(try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(1000, n: 2), labels: [1_000_001, 1_000_002])).status == 200)
            let (rs, ro) = try await s.json(.POST, "/v1/indexes/w/reload")
            #expect(rs == 200 && ro["generation"] as? Int == 2, "\(ro)")
            let (found, version) = try await s.labels(near: cluster(1000, n: 1)[0], k: 2)
            #expect(Set(found) == [1_000_001, 1_000_002] && version == 2, "replayed from the log: \(found) \(String(describing: version))")
            // Republish: the writer's directory is now another index.
            try FileManager.default.createSymbolicLink(atPath: dir.file("live.new"), withDestinationPath: dir.file("b"))
            #expect(rename(dir.file("live.new"), dir.file("live")) == 0)
            let (ws, wo) = try await s.json(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(2000, n: 1), labels: [3]))
            #expect(ws == 409 && wo["code"] as? String == "indexReplaced", "\(wo)")
            let (ds, _) = try await s.json(.DELETE, "/v1/indexes/w/vectors", body: deleteBody([1_000_001]))
            #expect(ds == 409)
            let (rs2, ro2) = try await s.json(.POST, "/v1/indexes/w/reload")
            #expect(rs2 == 200 && ro2["generation"] as? Int == 3, "\(ro2)")
            let (ws2, wb2) = try await s.request(.POST, "/v1/indexes/w/vectors", body: insertBody(cluster(2000, n: 1)))
            #expect(ws2 == 200, "\(wb2)")
            #expect(try decodeInsert(wb2).labels == [1500], "b's labels are its rows 0…1499")
            let (_, info) = try await s.json(.GET, "/v1/indexes/w")
            #expect(info["count"] as? Int == 1501 && info["generation"] as? Int == 3 && info["version"] as? Int == 1, "\(info)")
        }
        // Written to b's log, not a's.
        let a = try VectorIndex.openCurrent(at: dir.file("a")), b = try VectorIndex.openCurrent(at: dir.file("b"))
        #expect(a.count == 2002 && b.count == 1501)
    }
}

@Suite struct DeadlineTests {
    /// Past its deadline a batch stops between queries: the worker is freed and the queries
    /// left are counted (most of the 200).
    @Test func theDeadlineStopsTheRestOfTheBatch() async throws {
        let small = try SmallIndex.build(nq: 1)
        let vec = "[" + small.queries[0].map { "\($0)" }.joined(separator: ",") + "]"
        let batch = "{\"vectors\": [" + Array(repeating: vec, count: 200).joined(separator: ",") + "], \"k\": 10, \"probes\": 1000"
        try await withServer([IndexSpec(name: "docs", directory: small.path)], configure: { $0.maxConcurrent = 1 }) { s in
            let (full, fb) = try await s.request(.POST, "/v1/indexes/docs/search", body: batch + "}")
            #expect(full == 200, "\(fb.prefix(200))")
            // No timing here (unit tests do not time): the abandoned-queries counter shows the
            // batch stopped early. On a starved CPU the worker may not pick the job up within
            // the 5 ms: the job is then dropped whole (nothing abandoned, also a 504), so try
            // again until one batch started.
            var line: Substring?
            var abandoned = 0
            for _ in 0..<20 where abandoned == 0 {
                let (st, o) = try await s.json(.POST, "/v1/indexes/docs/search", body: batch + ", \"timeout_ms\": 5}")
                #expect(st == 504 && o["code"] as? String == "deadlineExceeded", "\(o)")
                for _ in 0..<5000 where s.server.executor.inFlight > 0 { try await Task.sleep(for: .milliseconds(1)) }
                #expect(s.server.executor.inFlight == 0)
                let (_, mb) = try await s.request(.GET, "/metrics")
                line = mb.split(separator: "\n").first { $0.hasPrefix("fathom_search_queries_abandoned_total{index=\"docs\"}") }
                abandoned = line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
            }
            #expect(abandoned > 100, "\(line ?? "no abandoned-queries counter")")
            #expect(s.server.registry["docs"]!.currentGeneration!.activeQueries == 0)
        }
    }
}

@Suite struct WriteProcessTests {
    /// Starts `fathom serve` with `args`; returns the process, its stderr and its base URL.
    static func start(_ args: [String]) throws -> (Process, PipeCollector, String)? {
        let p = Process()
        p.executableURL = fathomExecutable()
        p.arguments = ["serve", "--listen", "127.0.0.1:0", "--max-concurrent", "1"] + args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        let log = PipeCollector(err)
        try p.run()
        var port: Int?
        for _ in 0..<3000 where port == nil && p.isRunning {
            if let r = log.text.range(of: "listening on http://127.0.0.1:") {
                port = Int(log.text[r.upperBound...].prefix { $0.isNumber })
            } else { usleep(10_000) }
        }
        guard let port else { Issue.record("no listening line: \(log.text)"); p.terminate(); return nil }
        let base = "http://127.0.0.1:\(port)"
        var ready = false
        for _ in 0..<1000 where !ready {
            ready = (try? curl([base + "/readyz"]).status) == 200
            if !ready { usleep(10_000) }
        }
        #expect(ready, "\(log.text)")
        return (p, log, base)
    }

    /// A batch answered 200 is there after the server is killed with SIGKILL and restarted.
    @Test func anAcknowledgedBatchSurvivesSIGKILL() throws {
        let small = try SmallIndex.build(nq: 1, attributes: false)
        let args = ["--index", "w=\(small.path)", "--writable", "w"]
        guard let (p, log, base) = try Self.start(args) else { return }
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        let batch = cluster(1000, n: 4)
        let (st, b) = try curl(["-X", "POST", "-H", "Content-Type: application/json", "--data", insertBody(batch, labels: [41, 2_000_001, 2_000_002, 2_000_003], upsert: true),
                                base + "/v1/indexes/w/vectors"])
        #expect(st == 200, "\(b)")
        let (ds, db) = try curl(["-X", "DELETE", "-H", "Content-Type: application/json", "--data", deleteBody([42]), base + "/v1/indexes/w/vectors"])
        #expect(ds == 200 && db.contains("\"deleted\":[42]"), "\(db)")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal)
        #expect(log.text.contains("route=/v1/indexes/{name}/vectors") && log.text.contains("rows=4") && log.text.contains("version=5"), "\(log.text)")
        // Restarted (the lock of the killed writer is gone with it): the batch and the delete are there.
        guard let (p2, _, base2) = try Self.start(args) else { return }
        defer { if p2.isRunning { p2.terminate(); p2.waitUntilExit() } }
        let q = "{\"vector\": [" + batch[0].map { "\($0)" }.joined(separator: ",") + "], \"k\": 4, \"probes\": 65536, \"rerank\": 100}"
        let (ss, sb) = try curl(["-X", "POST", "-H", "Content-Type: application/json", "--data", q, base2 + "/v1/indexes/w/search"])
        #expect(ss == 200, "\(sb)")
        let r = try decodeSearch(sb)
        #expect(Set(r.results[0].labels) == [41, 2_000_001, 2_000_002, 2_000_003] && r.version == 5, "\(sb)")
        let (_, info) = try curl([base2 + "/v1/indexes/w"])
        #expect(info.contains("\"count\":2002"), "2000 built − 1 deleted + 3 inserted (41 replaced): \(info.prefix(300))")
        // --writable must name an --index.
        let bad = Process()
        bad.executableURL = fathomExecutable()
        bad.arguments = ["serve", "--index", "w=\(small.path)", "--writable", "nope", "--listen", "127.0.0.1:0"]
        bad.standardError = Pipe(); bad.standardOutput = Pipe()
        try bad.run(); bad.waitUntilExit()
        #expect(bad.terminationStatus == 2, "invalidArgument (docs/errors.md)")
    }
}

import AsyncHTTPClient
import Fathom
import FathomServer
import FathomTestSupport
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Testing

/// A small index built in the test: `n × d` seeded vectors with attributes `price` (float in
/// [0, 100)) and `color` (c0…c4) unless `attributes` is false (inserts into an index with
/// attributes then need a row of them), plus `nq` queries.
struct SmallIndex: @unchecked Sendable {
    let dir: TempDir
    let queries: [[Float]]
    var path: String { dir.file("idx") }

    static func build(n: Int = 2000, d: Int = 16, nq: Int = 20, seed: UInt64 = 7, into dir: TempDir = TempDir(), name: String = "idx",
                      attributes: Bool = true) throws -> SmallIndex {
        let (_, q) = try writeSynthetic(dir: dir, n: n, d: d, nq: nq, seed: seed)
        var rng = SeededRandom(seed: seed + 1)
        var csv = "id,price:float,color:category\n"
        for i in 0..<n { csv += "\(i),\(rng.uniform() * 100),c\(rng.below(5))\n" }
        try csv.write(toFile: dir.file("attrs.csv"), atomically: true, encoding: .utf8)
        var o = BuildOptions()
        o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 2
        if attributes { o.attributes = dir.file("attrs.csv") }
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file(name), options: o).build()
        let qs = (0..<nq).map { Array(UnsafeBufferPointer(start: q.row($0), count: d)) }
        return SmallIndex(dir: dir, queries: qs)
    }
}

let quietLogger = Logger(label: "fathom.serve.test") { _ in SwiftLogNoOpLogHandler() }

/// A running server on a free loopback port.
struct RunningServer: Sendable {
    let server: FathomServer
    let port: Int
    var base: String { "http://127.0.0.1:\(port)" }

    /// Sends a request; a body goes with `contentType` (none when nil).
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil, bytes: [UInt8]? = nil,
                 contentType: String? = "application/json") async throws -> (status: Int, body: String) {
        var r = HTTPClientRequest(url: base + path)
        r.method = method
        if let body { r.body = .bytes(ByteBuffer(string: body)) }
        if let bytes { r.body = .bytes(ByteBuffer(bytes: bytes)) }
        if body != nil || bytes != nil, let contentType { r.headers.add(name: "Content-Type", value: contentType) }
        let resp = try await HTTPClient.shared.execute(r, timeout: .seconds(60))
        let b = try await resp.body.collect(upTo: 64 << 20)
        return (Int(resp.status.code), String(buffer: b))
    }

    func json(_ method: HTTPMethod, _ path: String, body: String? = nil,
              contentType: String? = "application/json") async throws -> (status: Int, object: [String: Any]) {
        let (s, b) = try await request(method, path, body: body, contentType: contentType)
        let o = (try? JSONSerialization.jsonObject(with: Data(b.utf8))) as? [String: Any]
        return (s, o ?? ["_raw": b])
    }
}

/// Starts a server with `configure` applied, waits until /readyz says ready, runs `body`,
/// then shuts the server down gracefully and waits for it to stop.
func withServer(_ indexes: [IndexSpec], configure: (inout ServerConfiguration) -> Void = { _ in },
                _ body: (RunningServer) async throws -> Void) async throws {
    var c = ServerConfiguration(indexes: indexes)
    c.host = "127.0.0.1"; c.port = 0; c.handleSignals = false; c.maxConcurrent = 2
    configure(&c)
    let server = try FathomServer(configuration: c, logger: quietLogger)
    let task = Task { try await server.run() }
    let port = await server.listeningPort()
    let running = RunningServer(server: server, port: port)
    do {
        var ready = false
        for _ in 0..<500 {
            if try await running.request(.GET, "/readyz").status == 200 { ready = true; break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(ready, "the server never became ready")
        try await body(running)
    } catch {
        await server.shutdown(); _ = try? await task.value
        throw error
    }
    await server.shutdown()
    try await task.value
}

func searchBody(_ v: [Float], k: Int, probes: Int? = nil, filter: String? = nil) -> String {
    var s = "{\"vector\": [" + v.map { "\($0)" }.joined(separator: ",") + "], \"k\": \(k)"
    if let probes { s += ", \"probes\": \(probes)" }
    if let filter { s += ", \"filter\": \"\(filter)\"" }
    return s + "}"
}

/// The decoded search answer.
func decodeSearch(_ body: String) throws -> SearchResponse {
    try JSONDecoder().decode(SearchResponse.self, from: Data(body.utf8))
}

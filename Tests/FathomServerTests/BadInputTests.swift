import AsyncHTTPClient
import Fathom
@testable import FathomServer
import FathomTestSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Bad input over HTTP (docs/serve.md, "Limits and bad input"): each limit answers its status
/// with an error body naming the field and the limit; slow clients are disconnected.
@Suite struct BadInputTests {
    /// One refused request: its status, code, `detail.field` and `detail.limit`.
    func expectRefused(_ s: RunningServer, _ what: String, body: String, contentType: String? = "application/json",
                       status: Int, code: String, field: String?, limit: Int? = nil,
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let (st, o) = try await s.json(.POST, "/v1/indexes/docs/search", body: body, contentType: contentType)
        let detail = o["detail"] as? [String: Any]
        #expect(st == status, "\(what): got \(st) \(o)", sourceLocation: sourceLocation)
        #expect(o["code"] as? String == code, "\(what): \(o)", sourceLocation: sourceLocation)
        #expect(detail?["field"] as? String == field, "\(what): \(o)", sourceLocation: sourceLocation)
        if let limit { #expect(detail?["limit"] as? Int == limit, "\(what): \(o)", sourceLocation: sourceLocation) }
        #expect((o["message"] as? String ?? "").isEmpty == false, "\(what): \(o)", sourceLocation: sourceLocation)
    }

    @Test func limitsContentTypeDepthAndNonFiniteAreNamed() async throws {
        let small = try SmallIndex.build(n: 2000, d: 16, nq: 1)
        let q = small.queries[0]
        let vec = "[" + q.map { "\($0)" }.joined(separator: ",") + "]"
        try await withServer([IndexSpec(name: "docs", directory: small.path)], configure: {
            $0.maxK = 100; $0.maxBatch = 4; $0.maxProbes = 64; $0.maxRerank = 500
            $0.maxBodyBytes = 512 << 10; $0.maxJSONDepth = 8
        }) { s in
            // Numbers out of range: 400 naming the member and its limit.
            try await expectRefused(s, "k above max", body: "{\"vector\": \(vec), \"k\": 101}", status: 400, code: "invalidArgument", field: "k", limit: 100)
            try await expectRefused(s, "k 10^18", body: "{\"vector\": \(vec), \"k\": 1000000000000000000}", status: 400, code: "invalidArgument", field: "k", limit: 100)
            try await expectRefused(s, "k beyond Int", body: "{\"vector\": \(vec), \"k\": 1e30}", status: 400, code: "invalidArgument", field: "k")
            try await expectRefused(s, "probes above max", body: "{\"vector\": \(vec), \"probes\": 65}", status: 400, code: "invalidArgument", field: "probes", limit: 64)
            try await expectRefused(s, "rerank above max", body: "{\"vector\": \(vec), \"rerank\": 1000000000000}", status: 400, code: "invalidArgument", field: "rerank", limit: 500)
            try await expectRefused(s, "rerank 0", body: "{\"vector\": \(vec), \"rerank\": 0}", status: 400, code: "invalidArgument", field: "rerank", limit: 500)
            let five = "{\"vectors\": [" + Array(repeating: vec, count: 5).joined(separator: ",") + "]}"
            try await expectRefused(s, "batch above max", body: five, status: 400, code: "invalidArgument", field: "vectors", limit: 4)
            try await expectRefused(s, "dimension", body: "{\"vectors\": [\(vec), [1, 2]]}", status: 400, code: "dimensionMismatch", field: "vectors[1]")

            // Bare NaN / Infinity (not JSON): named by query and component, before decoding.
            var withNaN = q.map { "\($0)" }
            withNaN[3] = "NaN"
            try await expectRefused(s, "bare NaN", body: "{\"vectors\": [\(vec), [\(withNaN.joined(separator: ","))]], \"k\": 3}",
                                    status: 400, code: "nonFiniteValue", field: "vectors[1][3]")
            var withInf = q.map { "\($0)" }
            withInf[2] = "-Infinity"
            try await expectRefused(s, "bare -Infinity", body: "{\"k\": 3, \"vector\": [\(withInf.joined(separator: ","))]}",
                                    status: 400, code: "nonFiniteValue", field: "vector[2]")
            // A string "NaN" is not a bare token: the decoder names it as before.
            try await expectRefused(s, "NaN string", body: "{\"vector\": [0, \"Infinity\"" + String(repeating: ",0", count: 14) + "]}",
                                    status: 400, code: "nonFiniteValue", field: "vector[1]")

            // Deep JSON: refused by the scan with the limit (Foundation alone says only "not valid JSON").
            let deep = String(repeating: "[", count: 100_000)
            try await expectRefused(s, "100,000 [ as the body", body: deep, status: 400, code: "nestingTooDeep",
                                    field: String(repeating: "[0]", count: 8), limit: 8)
            try await expectRefused(s, "100,000 [ ] balanced", body: "{\"vector\": " + deep + String(repeating: "]", count: 100_000) + "}",
                                    status: 400, code: "nestingTooDeep", field: "vector" + String(repeating: "[0]", count: 7), limit: 8)
            let objects = String(repeating: "{\"a\":", count: 50_000) + "1" + String(repeating: "}", count: 50_000)
            try await expectRefused(s, "nested objects", body: objects, status: 400, code: "nestingTooDeep",
                                    field: Array(repeating: "a", count: 8).joined(separator: "."), limit: 8)
            // At the limit exactly: decoded (and refused for what it is, not for its depth).
            let eight = "{\"vector\": " + String(repeating: "[", count: 7) + String(repeating: "]", count: 7) + "}"
            let (st8, o8) = try await s.json(.POST, "/v1/indexes/docs/search", body: eight)
            #expect(st8 == 400 && o8["code"] as? String != "nestingTooDeep", "\(o8)")

            // Body size: 413 naming the limit (the body here is 600 KB, the limit 512 KiB).
            let big = "{\"vector\": [" + String(repeating: "0.123456789,", count: 600_000 / 12) + "0]}"
            let (stBig, oBig) = try await s.json(.POST, "/v1/indexes/docs/search", body: big)
            #expect(stBig == 413 && oBig["code"] as? String == "bodyTooLarge", "\(oBig)")
            #expect((oBig["detail"] as? [String: Any])?["limit"] as? Int == 512 << 10)

            // Content-Type: JSON only (415), UTF-8 only.
            let good = searchBody(q, k: 3)
            for (ct, what) in [(nil, "no Content-Type"), ("text/plain", "text/plain"),
                               ("application/x-www-form-urlencoded", "curl -d's default"),
                               ("application/json; charset=iso-8859-1", "a Latin-1 charset")] as [(String?, String)] {
                try await expectRefused(s, what, body: good, contentType: ct, status: 415, code: "unsupportedMediaType", field: "Content-Type")
            }
            for ct in ["application/json; charset=UTF-8", "Application/JSON", "application/json;charset=\"utf-8\""] {
                let (st, b) = try await s.request(.POST, "/v1/indexes/docs/search", body: good, contentType: ct)
                #expect(st == 200, "\(ct): \(b)")
            }
            // Still serving after all of that.
            let (ok, _) = try await s.request(.POST, "/v1/indexes/docs/search", body: good)
            #expect(ok == 200)
        }
    }

    @Test func deepJSONAtTheDefaultLimit() async throws {
        // Default configuration: 32 levels; 10^5 '[' refused without a crash, the server serves on.
        let small = try SmallIndex.build(n: 500, d: 8, nq: 1)
        try await withServer([IndexSpec(name: "docs", directory: small.path)]) { s in
            for n in [33, 1000, 100_000] {
                try await expectRefused(s, "\(n) [", body: "{\"vector\": " + String(repeating: "[", count: n) + "}",
                                        status: 400, code: "nestingTooDeep", field: "vector" + String(repeating: "[0]", count: 31), limit: 32)
            }
            let (ok, b) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(small.queries[0], k: 3))
            #expect(ok == 200, "\(b)")
        }
    }

    /// A server of a small index "docs" with the given slow-client settings.
    func withSlowClientServer(_ configure: (inout ServerConfiguration) -> Void,
                              _ body: (RunningServer, SmallIndex) async throws -> Void) async throws {
        let small = try SmallIndex.build(n: 500, d: 8, nq: 1)
        try await withServer([IndexSpec(name: "docs", directory: small.path)], configure: configure) { s in try await body(s, small) }
    }

    /// `times` well-behaved searches, each answered 200.
    func expectGoodSearches(_ s: RunningServer, _ small: SmallIndex, times: Int) async throws {
        for _ in 0..<times {
            let (ok, b) = try await s.request(.POST, "/v1/indexes/docs/search", body: searchBody(small.queries[0], k: 3))
            #expect(ok == 200, "\(b)")
        }
    }

    @Test func slowClientsAreDisconnected() async throws {
        try await withSlowClientServer({ $0.idleTimeoutMs = 500; $0.bodyTimeoutMs = 800 }) { s, small in
            let port = s.port
            // Sends nothing: closed by the idle timeout.
            let silent = try await blocking { try RawConnection(port: port).trickle([], everyMs: 50, forMs: 30_000) }
            #expect(silent != nil, "a silent connection was still open after 30 s (idle timeout 0.5 s)")
            // Headers trickled a byte every 50 ms (each byte resets no timer): closed by the idle timeout.
            let head = Array("POST /v1/indexes/docs/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: \(String(repeating: "a", count: 400))\r\n".utf8)
            let headers = try await blocking { try RawConnection(port: port).trickle(head, everyMs: 50, forMs: 30_000) }
            #expect(headers != nil, "a connection trickling its headers was still open after 30 s")
            // A body trickled a byte every 50 ms (each part is activity, so only the body deadline ends it).
            let full = Array("POST /v1/indexes/docs/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".utf8)
            let body = try await blocking { () throws -> Int? in
                let c = try RawConnection(port: port)
                guard c.send(full) else { return 0 }
                return c.trickle(Array(repeating: UInt8(ascii: " "), count: 1000), everyMs: 50, forMs: 30_000)
            }
            #expect(body != nil, "a connection trickling its body was still open after 30 s (body timeout 0.8 s)")
            // A body cut short by the client closing its side: never a 5xx. The server answers
            // 400 naming what happened, or (when the close wins the race with the answer) only
            // closes the connection.
            let (cut, closed) = try await blocking { () throws -> (String, Bool) in
                let c = try RawConnection(port: port)
                _ = c.send(full + Array("{\"vector\": [".utf8))
                c.shutdownWrite()
                return c.readUntilClosed(withinMs: 30_000)
            }
            #expect(closed, "the connection was still open 30 s after the client's FIN")
            #expect(cut.isEmpty || (cut.hasPrefix("HTTP/1.1 400") && cut.contains("malformedJSON")), "\(cut)")
            let (_, metrics) = try await s.request(.GET, "/metrics")
            #expect(metrics.contains("fathom_http_body_timeouts_total 1"), "\(metrics.split(separator: "\n").filter { $0.contains("timeout") })")
            // A well-behaved client on a kept-alive connection is unaffected: a request, then another.
            try await expectGoodSearches(s, small, times: 2)
        }
    }

    @Test func goodRequestsSucceedWhileSlowConnectionsAreOpen() async throws {
        try await withSlowClientServer({ $0.idleTimeoutMs = 3000; $0.bodyTimeoutMs = 3000 }) { s, small in
            let port = s.port
            // 200 connections: half stuck in their headers, half in their bodies.
            let partialHead = Array("POST /v1/indexes/docs/search HTTP/1.1\r\nHost: x\r\n".utf8)
            let partialBody = Array("POST /v1/indexes/docs/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"vector\": [".utf8)
            let slow = try await blocking { () throws -> [RawConnection] in
                try (0..<200).map { i in
                    let c = try RawConnection(port: port)
                    _ = c.send(i % 2 == 0 ? partialHead : partialBody)
                    return c
                }
            }
            try await expectGoodSearches(s, small, times: 5)
            // Every slow connection is closed by the server within a generous bound.
            let closed = try await blocking { slow.filter { $0.trickle([], everyMs: 50, forMs: 30_000) != nil }.count }
            #expect(closed == 200, "\(200 - closed) of 200 slow connections still open 30 s after the 3 s timeouts")
        }
    }

    @Test func connectionCapQueuesNewConnectionsUntilOneCloses() async throws {
        try await withSlowClientServer({ $0.maxConnections = 4; $0.idleTimeoutMs = 3000 }) { s, _ in
            let port = s.port
            // The readiness client's kept-alive connection is closed by the idle timeout first.
            try await Task.sleep(for: .milliseconds(3500))
            let (answeredEarly, answer, closed) = try await blocking { () throws -> (Bool, String?, Int) in
                // Four silent connections take every slot; a fifth with a complete request is
                // not accepted (no answer) while they are open.
                let silent = try (0..<4).map { _ in try RawConnection(port: port) }
                // (The server accepts in batches: one batch may overshoot the cap. Let the four
                // be accepted before the fifth arrives.)
                usleep(500_000)
                let fifth = try RawConnection(port: port)
                _ = fifth.send(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                let early = fifth.receive(withinMs: 300) != nil
                // The idle timeout frees the slots; then the fifth is accepted and answered.
                let answer = fifth.receive(withinMs: 20_000)
                return (early, answer, silent.filter { $0.trickle([], everyMs: 50, forMs: 30_000) != nil }.count)
            }
            #expect(!answeredEarly, "a fifth connection was answered while 4 connections held the cap of 4")
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "\(answer ?? "no answer")")
            #expect(closed == 4)
        }
    }

    @Test func contentTypeParsing() throws {
        for ok in ["application/json", "application/json; charset=utf-8", " APPLICATION/JSON ;Charset=UTF8", "application/json; foo=bar"] {
            #expect(throws: Never.self, "\(ok)") { try checkJSONContentType(ok) }
        }
        for bad in [nil, "", ";", "text/json", "application/jsonx", "application/json; charset=utf-16", "multipart/form-data"] as [String?] {
            #expect(throws: APIError.self, "\(bad ?? "nil")") { try checkJSONContentType(bad) }
        }
    }
}

/// Runs blocking socket work on a Dispatch thread (not the cooperative pool the server's
/// handlers share).
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
    }
}

/// A raw loopback TCP connection (a blocking POSIX socket) for clients that misbehave.
/// Thread-safety: use from one thread at a time.
final class RawConnection: @unchecked Sendable {
    struct ConnectFailed: Error { var errno: Int32 }
    let fd: Int32

    init(port: Int) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else { let e = errno; close(fd); throw ConnectFailed(errno: e) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends all of `bytes`; false once the connection is closed.
    func send(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) == $0.count }
    }

    /// Closes the sending side (FIN); the server may still answer.
    func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

    /// The first bytes the server sends within `ms` (nil: none, or the connection closed).
    func receive(withinMs ms: Int) -> String? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(ms)) > 0 else { return nil }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
    }

    /// Everything the server sends until it closes the connection, waiting at most `ms`;
    /// and whether it closed.
    func readUntilClosed(withinMs ms: Int) -> (text: String, closed: Bool) {
        let t0 = DispatchTime.now()
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while Int((DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1_000_000) < ms {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return (String(decoding: out, as: UTF8.self), true) }
            out += buf[0..<n]
        }
        return (String(decoding: out, as: UTF8.self), false)
    }

    /// Sends `bytes` one at a time, `everyMs` apart, then keeps waiting, for at most `forMs`:
    /// the milliseconds until the server closed the connection (end of stream or reset),
    /// nil if it was still open at the end. A response the server sends is read and dropped.
    func trickle(_ bytes: [UInt8], everyMs: Int, forMs: Int) -> Int? {
        let t0 = DispatchTime.now()
        func elapsed() -> Int { Int((DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1_000_000) }
        var next = 0
        var buf = [UInt8](repeating: 0, count: 4096)
        while elapsed() < forMs {
            if next < bytes.count {
                if !send([bytes[next]]) { return elapsed() }
                next += 1
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(everyMs)) > 0 {
                if recv(fd, &buf, buf.count, 0) <= 0 { return elapsed() }
            }
        }
        return nil
    }
}

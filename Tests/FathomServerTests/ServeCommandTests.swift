import Fathom
import Foundation
import Testing

/// The `fathom` executable built next to the test bundle.
func fathomExecutable() -> URL {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("fathom").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("fathom")
}

/// Collects a pipe's output on a thread of its own.
final class PipeCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    init(_ pipe: Pipe) {
        let h = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            while true {
                let d = h.availableData
                if d.isEmpty { break }
                lock.lock(); data.append(d); lock.unlock()
            }
        }
    }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: data, as: UTF8.self) }
}

/// Runs curl; returns the HTTP status and the body.
func curl(_ args: [String]) throws -> (status: Int, body: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}"] + args
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let d = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: d, as: UTF8.self)
    guard p.terminationStatus == 0, let nl = text.lastIndex(of: "\n") else { return (-Int(p.terminationStatus), text) }
    return (Int(text[text.index(after: nl)...]) ?? -1, String(text[..<nl]))
}

@Suite struct ServeCommandTests {
    /// `fathom serve` as a process, driven with curl: readiness, a search, SIGHUP reload,
    /// the per-request log line, and a graceful SIGTERM (exit status 0).
    @Test func serveProcessWithCurlSignalsAndLogs() throws {
        let small = try SmallIndex.build(nq: 1)
        let p = Process()
        p.executableURL = fathomExecutable()
        p.arguments = ["serve", "--index", "docs=\(small.path)", "--listen", "127.0.0.1:0", "--max-concurrent", "1"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        let log = PipeCollector(err)
        try p.run()
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        var port: Int?
        for _ in 0..<3000 where port == nil {
            if let r = log.text.range(of: "listening on http://127.0.0.1:") {
                port = Int(log.text[r.upperBound...].prefix { $0.isNumber })
            } else { usleep(10_000) }
        }
        guard let port else { Issue.record("no listening line: \(log.text)"); return }
        let base = "http://127.0.0.1:\(port)"
        #expect(try curl([base + "/healthz"]).status == 200)
        var ready = false
        for _ in 0..<500 where !ready {
            ready = try curl([base + "/readyz"]).status == 200
            if !ready { usleep(10_000) }
        }
        #expect(ready)
        let body = searchBody(small.queries[0], k: 4, probes: 8)
        let (st, b) = try curl(["-X", "POST", "-H", "Content-Type: application/json", "--data", body, base + "/v1/indexes/docs/search"])
        #expect(st == 200, "\(b)")
        let r = try decodeSearch(b)
        #expect(r.results.first?.ids.count == 4)
        let (bad, bb) = try curl(["-X", "POST", "-H", "Content-Type: application/json", "--data", "{\"vector\": [1]}", base + "/v1/indexes/docs/search"])
        #expect(bad == 400 && bb.contains("dimensionMismatch"))
        // curl --data's default Content-Type (form-urlencoded) is refused, naming the header.
        let (form, fb) = try curl(["-X", "POST", "--data", body, base + "/v1/indexes/docs/search"])
        #expect(form == 415 && fb.contains("unsupportedMediaType") && fb.contains("Content-Type: application/json"), "\(fb)")
        // SIGHUP: every index reloads to generation 2.
        kill(p.processIdentifier, SIGHUP)
        var gen2 = false
        for _ in 0..<500 where !gen2 {
            gen2 = try curl([base + "/readyz"]).body.contains("\"docs\":2")
            if !gen2 { usleep(10_000) }
        }
        #expect(gen2, "SIGHUP reloads")
        // SIGTERM: graceful shutdown, exit status 0.
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<1000 where p.isRunning { usleep(10_000) }
        #expect(!p.isRunning, "the server stops after SIGTERM")
        if !p.isRunning { #expect(p.terminationStatus == 0, "\(log.text)") }
        let text = log.text
        #expect(text.contains("route=/v1/indexes/{name}/search") && text.contains("status=200") && text.contains("ios=")
                && text.contains("k=4") && text.contains("probes=8") && text.contains("index=docs"), "\(text)")
    }

    @Test func badServeArgumentsExitWithTheDocumentedCodes() throws {
        func run(_ args: [String]) throws -> Int32 {
            let p = Process()
            p.executableURL = fathomExecutable()
            p.arguments = ["serve"] + args
            p.standardError = Pipe(); p.standardOutput = Pipe()
            try p.run(); p.waitUntilExit()
            return p.terminationStatus
        }
        #expect(try run(["--index", "noequals", "--listen", "127.0.0.1:0"]) == 2)   // invalidArgument (docs/errors.md)
        #expect(try run(["--index", "x=/nonexistent/fathom-index", "--listen", "127.0.0.1:0"]) == 3)   // fileNotFound
        #expect(try run(["--index", "x=/tmp", "--listen", "nonsense"]) == 64, "a usage error (ArgumentParser's validation exit code)")
    }
}

import ArgumentParser
import Fathom
import FathomServer
import Foundation
import Logging

/// `fathom serve`: the indexes as an HTTP/JSON service (docs/serve.md, docs/openapi.yaml).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve indexes over HTTP/JSON (API: docs/openapi.yaml, GET /openapi.yaml).",
        discussion: """
        Routes: POST /v1/indexes/NAME/search, GET /v1/indexes, GET /v1/indexes/NAME,
        POST /v1/indexes/NAME/reload, GET /healthz, GET /readyz, GET /metrics; with
        --writable NAME also POST and DELETE /v1/indexes/NAME/vectors (durable on 200).
        SIGTERM/SIGINT: graceful shutdown (stop accepting, finish in-flight queries).
        SIGHUP: reload every index (open the new generation, close the old after its last query;
        a writable index is re-opened: writes wait, its log is replayed);
        --watch reloads an index by itself when its directory is republished.
        One log line per request on stderr at info. Exit codes: docs/errors.md.
        """
    )

    @Option(name: .customLong("index"), help: ArgumentHelp("An index to serve, as NAME=DIR (repeatable); DIR may be s3://BUCKET/PREFIX, pulled into --cache at start (verified: docs/scale-out.md).", valueName: "name=dir"))
    var indexes: [String] = []
    @OptionGroup var store: ObjectStoreOptions
    @Option(name: .customLong("writable"), help: ArgumentHelp("Open the --index of this NAME for writing (repeatable): the server becomes the directory's one writer and takes POST/DELETE /v1/indexes/NAME/vectors. Other indexes are read-only.", valueName: "name"))
    var writable: [String] = []
    @Option(help: ArgumentHelp("Address to listen on, HOST:PORT (port 0 picks a free one).", valueName: "host:port"))
    var listen: String = "127.0.0.1:7700"
    @Option(name: .customLong("max-concurrent"), help: "Searches running at once (default: the number of CPUs).")
    var maxConcurrent: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(name: .customLong("queue"), help: "Searches waiting for a worker before 429.")
    var queue: Int = 64
    @Option(name: .customLong("max-body"), help: "Largest search request body (413 above).")
    var maxBody: ByteSize = ByteSize(bytes: 4 << 20)
    @Option(name: .customLong("max-write-body"), help: "Largest write request body, POST/DELETE …/vectors (413 above).")
    var maxWriteBody: ByteSize = ByteSize(bytes: 16 << 20)
    @Option(name: .customLong("max-k"), help: "Largest k accepted (400 above).")
    var maxK: Int = 1000
    @Option(name: .customLong("max-batch"), help: "Most queries in one request (400 above).")
    var maxBatch: Int = 1024
    @Option(name: .customLong("timeout-ms"), help: "Deadline for requests without timeout_ms (default: none).")
    var timeoutMs: Int?
    @Option(help: "IO engine: aio (libaio + O_DIRECT), pread, or auto (aio, pread where O_DIRECT is refused).")
    var io: String = "auto"
    @Flag(help: "Run the full verify check on each index (and each reloaded generation) before serving it.")
    var verify = false
    @Flag(help: "Watch the index directories and reload each one when it is republished (e.g. by fathom build).")
    var watch = false
    @Option(name: .customLong("watch-interval"), help: "With --watch: seconds between checks.")
    var watchInterval: Double = 1
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard !indexes.isEmpty else { throw ValidationError("give at least one --index NAME=DIR") }
        guard maxConcurrent >= 1 else { throw ValidationError("--max-concurrent must be at least 1") }
        guard queue >= 0 else { throw ValidationError("--queue must be 0 or more") }
        guard maxK >= 1, maxBatch >= 1 else { throw ValidationError("--max-k and --max-batch must be at least 1") }
        guard maxBody.bytes >= 1024, maxBody.bytes <= 1 << 30 else { throw ValidationError("--max-body must be 1KiB to 1GiB") }
        guard maxWriteBody.bytes >= 1024, maxWriteBody.bytes <= 1 << 30 else { throw ValidationError("--max-write-body must be 1KiB to 1GiB") }
        if let t = timeoutMs { guard t >= 1 else { throw ValidationError("--timeout-ms must be at least 1") } }
        guard watchInterval >= 0.01, watchInterval <= 3600 else { throw ValidationError("--watch-interval must be 0.01 to 3600 seconds") }
        guard ["auto", "aio", "pread"].contains(io) else { throw ValidationError("--io must be auto, aio or pread") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: trace, debug, info, notice, warning, error or critical") }
        _ = try parseListen()
    }

    func parseListen() throws -> (String, Int) {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT, e.g. 127.0.0.1:7700")
        }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ValidationError("--listen must name a host, e.g. 127.0.0.1:7700") }
        return (host, port)
    }

    func run() async throws {
        do {
            let (host, port) = try parseListen()
            var specs = try indexes.map { try IndexSpec(parsing: $0) }
            for w in writable {
                guard let i = specs.firstIndex(where: { $0.name == w }) else {
                    throw FathomError(.invalidArgument, "--writable \(w): no --index named \(w) (names: \(specs.map(\.name).joined(separator: ", ")))")
                }
                specs[i].writable = true
            }
            for i in specs.indices where specs[i].directory.hasPrefix("s3://") {
                guard !specs[i].writable else {
                    throw FathomError(.invalidArgument, "--writable \(specs[i].name): an index in an object store is served read-only (pull it, then serve the local copy writable)")
                }
                specs[i].directory = try await store.localIndex(specs[i].directory, flag: "--index \(specs[i].name)=", quiet: false)
            }
            var c = ServerConfiguration(indexes: specs)
            for s in c.indexes {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: s.directory, isDirectory: &isDir), isDir.boolValue else {
                    throw FathomError(.fileNotFound, "--index \(s.name)=\(s.directory): no such index directory", path: s.directory)
                }
            }
            c.host = host; c.port = port
            c.maxConcurrent = maxConcurrent; c.queueLimit = queue
            c.maxBodyBytes = Int(maxBody.bytes); c.maxWriteBodyBytes = Int(maxWriteBody.bytes); c.maxK = maxK; c.maxBatch = maxBatch
            c.defaultTimeoutMs = timeoutMs
            c.io = io == "aio" ? .aio : (io == "pread" ? .pread : .auto)
            c.verify = verify
            if watch { c.watchIntervalMs = Int(watchInterval * 1000) }
            let level = Logger.Level(rawValue: logLevel) ?? .info
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
            let server = try FathomServer(configuration: c, logger: Logger(label: "fathom.serve"))
            let s = server
            Task {
                let p = await s.listeningPort()
                FileHandle.standardError.write("serve: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(p)\n".data(using: .utf8)!)
            }
            try await server.run()
        } catch let e as FathomError {
            throw report(e, threadsFlag: "--max-concurrent")
        } catch let e as ExitCode {
            throw e
        } catch {
            // Listening failed (address in use, permission): an operating-system error.
            FileHandle.standardError.write("error: serve: \(error)\n".data(using: .utf8)!)
            throw ExitCode(FathomError.Code.io.exitStatus)
        }
    }
}

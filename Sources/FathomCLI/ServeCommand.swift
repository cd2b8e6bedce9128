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

        --router --model DIR --shard-url i=URL …: serve the router of a sharded index instead
        (docs/scale-out.md): it holds the model's heads, routes each query as a single index
        would, asks each shard (an ordinary fathom serve of `build --model DIR --shard i/N`)
        for exactly the postings it owns, retries a failed request on another replica of that
        shard (repeat --shard-url with the same i), and merges. Its index answers as
        POST /v1/indexes/NAME/search (NAME: --router-name); /metrics has per-shard latency.
        """
    )

    @Option(name: .customLong("index"), help: ArgumentHelp("An index to serve, as NAME=DIR (repeatable); DIR may be s3://BUCKET/PREFIX, pulled into --cache at start (verified: docs/scale-out.md).", valueName: "name=dir"))
    var indexes: [String] = []
    @OptionGroup var store: ObjectStoreOptions
    @Option(name: .customLong("writable"), help: ArgumentHelp("Open the --index of this NAME for writing (repeatable): the server becomes the directory's one writer and takes POST/DELETE /v1/indexes/NAME/vectors. Other indexes are read-only.", valueName: "name"))
    var writable: [String] = []
    @OptionGroup var maintenance: MaintenanceOptions
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
    @Option(name: .customLong("max-probes"), help: "Largest probes accepted (400 above).")
    var maxProbes: Int = 65536
    @Option(name: .customLong("max-rerank"), help: "Largest rerank accepted (400 above).")
    var maxRerank: Int = 100_000
    @Option(name: .customLong("max-json-depth"), help: "Deepest nesting of arrays/objects in a JSON body (400 above; requests need 3).")
    var maxJSONDepth: Int = 32
    @Option(name: .customLong("idle-timeout"), help: "Seconds a connection may go without sending a complete request head (idle keep-alive, nothing sent, headers trickled); 0: never close.")
    var idleTimeout: Double = 30
    @Option(name: .customLong("body-timeout"), help: "Seconds a request body may take to arrive after its head before the connection is closed; 0: no limit.")
    var bodyTimeout: Double = 30
    @Option(name: .customLong("max-connections"), help: "Open connections at most; above it new ones wait in the listen backlog; 0: no cap.")
    var maxConnections: Int = 1024
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
    @Flag(help: "Serve the router of a sharded index (with --model and --shard-url) instead of --index.")
    var router = false
    @Option(help: ArgumentHelp("With --router: the model directory (fathom train) the shards were built with.", valueName: "dir"))
    var model: String?
    @Option(name: .customLong("shard-url"), help: ArgumentHelp("With --router: a replica of shard i, as i=http://host:port (the server's index that is shard i) or i=http://host:port/v1/indexes/NAME (repeatable; several URLs for one i are replicas).", valueName: "i=url"))
    var shardURLs: [String] = []
    @Option(name: .customLong("router-name"), help: "With --router: the name the sharded index answers under (POST /v1/indexes/NAME/search).")
    var routerName: String = "sharded"
    @Option(name: .customLong("shard-timeout-ms"), help: "With --router: deadline of one request to a shard replica; past it the next replica is tried.")
    var shardTimeoutMs: Int = 30_000
    @Option(name: .customLong("shard-connect-timeout-ms"), help: "With --router: deadline of connecting to a shard replica; a refused or timed-out connection moves on to the next replica at once.")
    var shardConnectTimeoutMs: Int = 1_000

    func validate() throws {
        if router {
            guard indexes.isEmpty, writable.isEmpty else { throw ValidationError("--router serves no --index or --writable of its own") }
            guard model != nil else { throw ValidationError("--router needs --model DIR (the model the shards were built with)") }
            guard !shardURLs.isEmpty else { throw ValidationError("--router needs at least one --shard-url i=URL") }
            guard shardTimeoutMs >= 1, shardConnectTimeoutMs >= 1 else { throw ValidationError("--shard-timeout-ms and --shard-connect-timeout-ms must be at least 1") }
        } else {
            guard indexes.isEmpty == false else { throw ValidationError("give at least one --index NAME=DIR (or --router)") }
            guard model == nil, shardURLs.isEmpty else { throw ValidationError("--model and --shard-url go with --router") }
        }
        guard maxConcurrent >= 1 else { throw ValidationError("--max-concurrent must be at least 1") }
        guard queue >= 0 else { throw ValidationError("--queue must be 0 or more") }
        guard maxK >= 1, maxBatch >= 1, maxProbes >= 1, maxRerank >= 1 else {
            throw ValidationError("--max-k, --max-batch, --max-probes and --max-rerank must be at least 1")
        }
        guard maxJSONDepth >= 3 else { throw ValidationError("--max-json-depth must be at least 3 (requests nest 3 levels)") }
        guard idleTimeout >= 0, idleTimeout <= 86400, bodyTimeout >= 0, bodyTimeout <= 86400 else {
            throw ValidationError("--idle-timeout and --body-timeout must be 0 (none) to 86400 seconds")
        }
        guard maxConnections >= 0 else { throw ValidationError("--max-connections must be 0 (no cap) or more") }
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
            if router, let model {
                var rc = RouterConfiguration(model: model, shards: [:])
                for u in shardURLs { try rc.add(parsing: u) }
                rc.name = routerName
                rc.shardTimeoutMs = shardTimeoutMs
                rc.shardConnectTimeoutMs = shardConnectTimeoutMs
                c.router = rc
            }
            for s in c.indexes {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: s.directory, isDirectory: &isDir), isDir.boolValue else {
                    throw FathomError(.fileNotFound, "--index \(s.name)=\(s.directory): no such index directory", path: s.directory)
                }
            }
            c.host = host; c.port = port
            c.maxConcurrent = maxConcurrent; c.queueLimit = queue
            c.maxBodyBytes = Int(maxBody.bytes); c.maxWriteBodyBytes = Int(maxWriteBody.bytes); c.maxK = maxK; c.maxBatch = maxBatch
            c.maxProbes = maxProbes; c.maxRerank = maxRerank; c.maxJSONDepth = maxJSONDepth
            c.idleTimeoutMs = idleTimeout > 0 ? max(1, Int(idleTimeout * 1000)) : nil
            c.bodyTimeoutMs = bodyTimeout > 0 ? max(1, Int(bodyTimeout * 1000)) : nil
            c.maxConnections = maxConnections > 0 ? maxConnections : nil
            c.defaultTimeoutMs = timeoutMs
            c.io = io == "aio" ? .aio : (io == "pread" ? .pread : .auto)
            c.verify = verify
            c.updatePolicy = maintenance.policy
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

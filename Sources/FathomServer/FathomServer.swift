import Fathom
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// Settings of a ``FathomServer``. A value type, `Sendable`; read once by ``FathomServer/init(configuration:logger:)``.
public struct ServerConfiguration: Sendable {
    /// Served indexes: a name (the URL segment) and an index directory.
    public var indexes: [IndexSpec]
    /// Address to listen on (loopback by default).
    public var host: String = "127.0.0.1"
    /// Port to listen on; 0 picks a free one (see ``FathomServer/listeningPort()``).
    public var port: Int = 7700
    /// Largest search (and other non-write) request body accepted (413 above).
    public var maxBodyBytes: Int = 4 << 20
    /// Largest body of a write (`POST`/`DELETE /v1/indexes/{name}/vectors`) accepted (413 above).
    public var maxWriteBodyBytes: Int = 16 << 20
    /// Deepest nesting of arrays and objects a JSON body may have (400 `nestingTooDeep`
    /// above, checked by a linear scan before decoding). Requests need 3.
    public var maxJSONDepth: Int = 32
    /// Largest `k` accepted (400 above).
    public var maxK: Int = 1000
    /// Most queries in one batch request (400 above).
    public var maxBatch: Int = 1024
    /// Largest `probes` accepted (400 above; values above the index's head count read every posting).
    public var maxProbes: Int = 65536
    /// Largest `rerank` accepted (400 above).
    public var maxRerank: Int = 100_000
    /// Largest `timeout_ms` accepted (400 above).
    public var maxTimeoutMs: Int = 600_000
    /// A connection with no request in progress is closed when no complete request head
    /// arrives within this time: idle keep-alive connections, connections that send nothing,
    /// and headers trickled byte by byte (nil: never).
    public var idleTimeoutMs: Int? = 30_000
    /// A connection is closed when a request's body has not fully arrived this long after its
    /// head (a body trickled byte by byte; nil: never). Answering the request does not count.
    public var bodyTimeoutMs: Int? = 30_000
    /// Open connections at most; above it the server stops accepting (new connections wait
    /// in the listen backlog) until one closes (nil: no cap). Connections accepted in one
    /// batch may overshoot it by a few.
    public var maxConnections: Int? = 1024
    /// Deadline applied when a request has no `timeout_ms` (nil: none).
    public var defaultTimeoutMs: Int? = nil
    /// Searches running at once (worker threads).
    public var maxConcurrent: Int = ProcessInfo.processInfo.activeProcessorCount
    /// Searches waiting for a worker before 429; also the writes that may wait for one
    /// writable index's writer.
    public var queueLimit: Int = 64
    /// How postings are read.
    public var io: IOMode = .auto
    /// How writable indexes keep their quality as they are written (split, merge, reassign,
    /// the delta tier's RAM bound; docs/updates.md). The default runs maintenance on a
    /// background thread of each writer after its flushes; searches see its work from the
    /// next write's snapshot on.
    public var updatePolicy: UpdatePolicy = {
        var p = UpdatePolicy()
        p.background = true
        return p
    }()
    /// Run the full `fathom verify` check on every generation before serving it.
    public var verify: Bool = false
    /// Poll every index directory this often and reload when it was republished (nil: no
    /// watching; reload with SIGHUP or POST …/reload).
    public var watchIntervalMs: Int? = nil
    /// Graceful shutdown on SIGTERM/SIGINT and reload on SIGHUP (off in tests).
    public var handleSignals: Bool = true
    /// Serve as the router of a sharded index (`--router`) instead of serving indexes:
    /// ``indexes`` must then be empty.
    public var router: RouterConfiguration? = nil

    public init(indexes: [IndexSpec]) { self.indexes = indexes }
}

/// A served index: its name in URLs, its directory, and whether the server is its writer.
/// A value type, `Sendable`.
public struct IndexSpec: Sendable, Hashable {
    public var name: String
    public var directory: String
    /// Open the directory for writing (``MutableVectorIndex``; `--writable NAME`): the index
    /// takes `POST`/`DELETE /v1/indexes/{name}/vectors`. False: read-only, writes get 409.
    public var writable: Bool
    public init(name: String, directory: String, writable: Bool = false) {
        self.name = name; self.directory = directory; self.writable = writable
    }

    /// Parses `NAME=DIR` (the `--index` option). Names are 1–64 of `[A-Za-z0-9._-]`.
    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "=") else {
            throw FathomError(.invalidArgument, "--index \(text): expected NAME=DIR, e.g. --index docs=/data/docs-index")
        }
        let n = String(text[..<eq]), d = String(text[text.index(after: eq)...])
        guard IndexSpec.isValidName(n) else {
            throw FathomError(.invalidArgument, "--index \(text): the name must be 1 to 64 of A-Z a-z 0-9 . _ -")
        }
        guard !d.isEmpty else { throw FathomError(.invalidArgument, "--index \(text): the directory is empty") }
        name = n; directory = d; writable = false
    }

    static func isValidName(_ n: String) -> Bool {
        !n.isEmpty && n.count <= 64 && n.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }
    }
}

/// `fathom serve`: Fathom indexes as an HTTP/JSON service (API in docs/openapi.yaml).
///
/// Built on Hummingbird 2 and swift-service-lifecycle. Searches run on a ``SearchExecutor``
/// (bounded workers and queue, deadlines), never on the event loop; reloads swap index
/// generations without failing queries (``ServedIndex``). It uses only the public API of
/// the `Fathom` library.
///
/// Thread-safety: all methods may be called from any task; ``run()`` once.
public final class FathomServer: Sendable {
    public let configuration: ServerConfiguration
    public let registry: IndexRegistry
    public let executor: SearchExecutor
    public let metrics: ServerMetrics
    let logger: Logger
    private let port = PortBox()
    private let group: ServiceGroup
    /// The router's state (`configuration.router`), nil for a server of indexes.
    private let routerState: RouterState?

    /// Prepares the server; nothing listens or opens until ``run()``.
    public init(configuration: ServerConfiguration, logger: Logger = Logger(label: "fathom.serve")) throws {
        var names = Set<String>()
        for s in configuration.indexes {
            guard IndexSpec.isValidName(s.name) else { throw FathomError(.invalidArgument, "index name '\(s.name)': use 1 to 64 of A-Z a-z 0-9 . _ -") }
            guard names.insert(s.name).inserted else { throw FathomError(.invalidArgument, "index name '\(s.name)' is given twice") }
        }
        if configuration.router != nil {
            guard configuration.indexes.isEmpty else { throw FathomError(.invalidArgument, "a router serves no --index of its own: give either --router or --index") }
        } else {
            guard !configuration.indexes.isEmpty else { throw FathomError(.invalidArgument, "serve needs at least one --index NAME=DIR") }
        }
        guard configuration.maxConcurrent >= 1, configuration.queueLimit >= 0, configuration.maxBodyBytes >= 1024,
              configuration.maxWriteBodyBytes >= 1024, configuration.maxK >= 1, configuration.maxBatch >= 1,
              configuration.maxProbes >= 1, configuration.maxRerank >= 1, configuration.maxTimeoutMs >= 1 else {
            throw FathomError(.invalidArgument, "serve limits must be positive (concurrency ≥ 1, queue ≥ 0, bodies ≥ 1 KiB, k, batch, probes, rerank and timeout ≥ 1)")
        }
        guard configuration.maxJSONDepth >= 3 else {
            throw FathomError(.invalidArgument, "the JSON depth limit is \(configuration.maxJSONDepth): requests nest 3 levels, so it must be at least 3")
        }
        for (what, v) in [("idle timeout", configuration.idleTimeoutMs), ("body timeout", configuration.bodyTimeoutMs),
                          ("connection limit", configuration.maxConnections)] {
            if let v, v < 1 { throw FathomError(.invalidArgument, "the \(what) is \(v): it must be at least 1 (or none)") }
        }
        // Two writable names on one directory would be two writers of it: the second open
        // would fail anyway; say so before starting.
        var writableDirs = [String: String]()
        for s in configuration.indexes where s.writable {
            let key = (s.directory as NSString).standardizingPath
            if let other = writableDirs[key] {
                throw FathomError(.invalidArgument, "indexes '\(other)' and '\(s.name)' are both writable on \(s.directory): one writer per directory")
            }
            writableDirs[key] = s.name
        }
        self.configuration = configuration
        self.logger = logger
        let io = configuration.io, verify = configuration.verify
        let m = ServerMetrics(workers: configuration.maxConcurrent)
        metrics = m
        @Sendable func check(_ dir: String) throws {
            guard verify else { return }
            let problems = IndexVerifier.verify(directory: dir)
            if let first = problems.first {
                throw FathomError(.corruptIndex, "\(problems.count) problem(s) found by verify, first: \(first.message)", path: first.file, offset: first.offset)
            }
        }
        let policy = configuration.updatePolicy
        registry = IndexRegistry(configuration.indexes, opening: IndexOpening(readOnly: { dir in
            try check(dir)
            // The built version plus the updates its log holds (written by `fathom insert`,
            // `fathom delete` or another server's writer), as of this open.
            // (Without a log, `open` keeps the library's warnings, e.g. the pread fallback, in the log.)
            if FileManager.default.fileExists(atPath: dir + "/updates.wal") { return try VectorIndex.openCurrent(at: dir, io: io) }
            return try VectorIndex.open(at: dir, io: io, warn: { logger.warning("\($0)") })
        }, writer: { dir in
            try check(dir)
            return try MutableVectorIndex.open(at: dir, io: io, policy: policy)
        }), onChange: {})
        executor = SearchExecutor(maxConcurrent: configuration.maxConcurrent, queueLimit: configuration.queueLimit)

        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: JSONErrorMiddleware(metrics: m, logger: logger))
        var routerState: RouterState? = nil
        if let rc = configuration.router {
            guard !rc.shards.isEmpty else { throw FathomError(.invalidArgument, "a router needs at least one --shard-url i=URL") }
            guard IndexSpec.isValidName(rc.name) else { throw FathomError(.invalidArgument, "router name '\(rc.name)': use 1 to 64 of A-Z a-z 0-9 . _ -") }
            let state = try RouterState(rc)
            RouterAPI(state: state, metrics: m, configuration: configuration, logger: logger).register(on: router)
            routerState = state
        } else {
            let api = API(registry: registry, executor: executor, metrics: m, configuration: configuration, logger: logger)
            api.register(on: router)
        }
        self.routerState = routerState

        let portBox = port
        let reg = registry
        // Slow clients: the idle timeout closes connections that send no complete head in
        // time; RequestBodyDeadline closes those whose body does not arrive in time.
        let bodyTimeout = configuration.bodyTimeoutMs.map { TimeAmount.milliseconds(Int64($0)) }
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: bodyTimeout.map { t -> [any RemovableChannelHandler] in
                [RequestBodyDeadline(timeout: t, metrics: m, logger: logger)]
            } ?? [],
            idleTimeout: configuration.idleTimeoutMs.map { .milliseconds(Int64($0)) })
        let app = Application(router: router, server: .http1(configuration: http1),
                              configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "fathom",
                                                   availableConnectionsDelegate: configuration.maxConnections.map {
                                                       MaximumAvailableConnections($0, logger: logger)
                                                   }),
                              onServerRunning: { channel in
                                  portBox.set(channel.localAddress?.port ?? 0)
                              },
                              logger: logger)
        var services: [any Service] = [app, routerState.map { RouterConnector(state: $0, logger: logger) as any Service } ?? IndexOpener(registry: reg, logger: logger)]
        if configuration.handleSignals { services.append(ReloadOnHangup(registry: reg, logger: logger)) }
        if let ms = configuration.watchIntervalMs { services.append(WatchDirectories(registry: reg, intervalMs: max(10, ms), logger: logger)) }
        group = ServiceGroup(services: services,
                             gracefulShutdownSignals: configuration.handleSignals ? [.sigterm, .sigint] : [],
                             logger: logger)
    }

    /// Listens, opens the indexes (readiness follows), and serves until graceful shutdown
    /// (SIGTERM/SIGINT or ``shutdown()``): stops accepting, finishes in-flight requests, then
    /// joins the search workers.
    ///
    /// The server owns the process it runs in: it sets OpenBLAS to one thread at start
    /// (``BLAS/setThreads(_:)``; a query's BLAS products are tiny, and OpenBLAS's workers
    /// would only spin beside the search workers).
    public func run() async throws {
        BLAS.setThreads(1)
        do { try await group.run() } catch {
            await stopWorkers()
            await routerState?.shutdown()
            throw error
        }
        await stopWorkers()
        await routerState?.shutdown()
    }

    /// Joins the search workers and lets go of the writers' locks.
    private func stopWorkers() async {
        let e = executor, r = registry
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                e.shutdown()
                for n in r.names { r[n]!.closeWriter() }
                c.resume()
            }
        }
    }

    /// Starts a graceful shutdown.
    public func shutdown() async { await group.triggerGracefulShutdown() }

    /// The port the server listens on, once it does (waits for it).
    public func listeningPort() async -> Int { await port.wait() }
}

/// The port, once known.
final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int?
    private var waiters: [CheckedContinuation<Int, Never>] = []
    func set(_ p: Int) {
        lock.lock(); value = p; let w = waiters; waiters = []; lock.unlock()
        for c in w { c.resume(returning: p) }
    }
    func wait() async -> Int {
        await withCheckedContinuation { c in
            lock.lock()
            if let v = value { lock.unlock(); c.resume(returning: v); return }
            waiters.append(c); lock.unlock()
        }
    }
}

/// Runs blocking work on a Dispatch thread, off the event loop and the cooperative pool.
func offloop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
    }
}

/// Opens every index once the server runs; readiness (/readyz) follows.
struct IndexOpener: Service {
    let registry: IndexRegistry
    let logger: Logger
    func run() async throws {
        for name in registry.names {
            let s = registry[name]!
            let t0 = DispatchTime.now()
            do {
                let g = try await offloop { try s.reload() }
                let ms = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e6
                logger.info("index open", metadata: ["index": "\(name)", "dir": "\(s.directory)", "generation": "\(g.number)", "ms": "\(String(format: "%.1f", ms))"])
            } catch {
                logger.error("index open failed", metadata: ["index": "\(name)", "dir": "\(s.directory)", "error": "\(error)"])
            }
        }
        try? await gracefulShutdown()
    }
}

/// SIGHUP: reload every index.
struct ReloadOnHangup: Service {
    let registry: IndexRegistry
    let logger: Logger
    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            for name in registry.names {
                let s = registry[name]!
                do {
                    let g = try await offloop { try s.reload() }
                    logger.info("reload (SIGHUP)", metadata: ["index": "\(name)", "generation": "\(g.number)"])
                } catch {
                    logger.error("reload (SIGHUP) failed; the old generation keeps serving", metadata: ["index": "\(name)", "error": "\(error)"])
                }
            }
        }
    }
}

/// `--watch`: polls the index directories and reloads the ones republished.
struct WatchDirectories: Service {
    let registry: IndexRegistry
    let intervalMs: Int
    let logger: Logger
    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .milliseconds(intervalMs))
            for name in registry.names {
                let s = registry[name]!
                guard s.isRepublished else { continue }
                do {
                    let g = try await offloop { try s.reload() }
                    logger.info("reload (watch: directory republished)", metadata: ["index": "\(name)", "generation": "\(g.number)"])
                } catch is ReloadInProgress {
                } catch {
                    logger.error("reload (watch) failed; the old generation keeps serving", metadata: ["index": "\(name)", "error": "\(error)"])
                }
            }
        }
    }
}

// MARK: responses

func jsonResponse<T: Encodable>(_ value: T, status: Int = 200) -> Response {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let data = (try? enc.encode(value)) ?? Data("{}".utf8)
    return rawResponse(data, status: status, contentType: "application/json")
}

func rawResponse(_ data: Data, status: Int, contentType: String) -> Response {
    var h = HTTPFields()
    h[.contentType] = contentType
    return Response(status: HTTPResponse.Status(code: status), headers: h, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

func errorResponse(_ e: APIError) -> Response {
    var r = jsonResponse(e.body, status: e.status)
    if e.status == 429 || e.status == 503 { r.headers[.retryAfter] = "1" }
    return r
}

/// Turns any error into the API's error shape. Bad input is a 4xx; only failures of the
/// server's own files, devices or code are a 500.
func apiError(_ error: Error, index: String? = nil) -> APIError {
    switch error {
    case let e as APIError: return e
    case let e as FathomError: return APIError(e, index: index)
    case let e as AdmissionError:
        switch e {
        case .queueFull(let n):
            return APIError(429, ServeErrorCode.overloaded, "every search worker is busy and \(n) searches are queued; retry later",
                            APIErrorDetail(limit: n, index: index))
        case .deadlineExceeded(let ms):
            return APIError(504, ServeErrorCode.deadlineExceeded, "no answer within timeout_ms = \(ms)", APIErrorDetail(field: "timeout_ms", limit: ms, index: index))
        case .shuttingDown:
            return APIError(503, ServeErrorCode.notReady, "the server is shutting down", APIErrorDetail(index: index))
        }
    case let e as IndexAvailability:
        switch e {
        case .unknown(let n):
            return APIError(404, ServeErrorCode.unknownIndex, "no index named '\(n)' is served; GET /v1/indexes lists them", APIErrorDetail(index: n))
        case .notReady(let n, let reason):
            return APIError(503, ServeErrorCode.notReady, "index '\(n)' is not open: \(reason)", APIErrorDetail(index: n))
        }
    case let e as WriteRefusal:
        switch e {
        case .readOnly(let n):
            return APIError(409, ServeErrorCode.readOnly, "index '\(n)' is served read-only: start fathom serve with --writable \(n) to write to it",
                            APIErrorDetail(index: n))
        case .queueFull(let n, let limit):
            return APIError(429, ServeErrorCode.overloaded, "\(limit) writes already wait for the writer of '\(n)'; retry later",
                            APIErrorDetail(limit: limit, index: n))
        case .replaced(let n, let dir):
            return APIError(409, ServeErrorCode.indexReplaced,
                            "the directory \(dir) of '\(n)' was republished (e.g. by fathom build) under the server's writer: writes are refused until a reload opens the new version (POST /v1/indexes/\(n)/reload, SIGHUP or --watch)",
                            APIErrorDetail(index: n))
        }
    case let e as ReloadInProgress:
        return APIError(503, ServeErrorCode.reloading, "a reload of '\(e.name)' is already running", APIErrorDetail(index: e.name))
    case is NIOTooManyBytesError:
        return APIError(413, ServeErrorCode.bodyTooLarge, "the request body is larger than the limit", APIErrorDetail(index: index))
    case let e as HTTPResponseError:
        let code = e.status.code
        let name = code == 404 ? ServeErrorCode.notFound : (code == 405 ? ServeErrorCode.methodNotAllowed
                  : (code == 413 ? ServeErrorCode.bodyTooLarge : (code < 500 ? FathomError.Code.invalidArgument.rawValue : ServeErrorCode.internalError)))
        return APIError(code, name, code == 404 ? "no such route; see GET /openapi.yaml" : e.status.reasonPhrase)
    default:
        return APIError(500, ServeErrorCode.internalError, "unexpected server error: \(error)", APIErrorDetail(index: index))
    }
}

/// JSON errors for what the router itself refuses (unknown routes, methods), with the
/// request counted and logged like the API's own routes.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let metrics: ServerMetrics
    let logger: Logger
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do { return try await next(request, context) } catch {
            let e = apiError(error)
            metrics.request(route: "unmatched", method: request.method.rawValue, status: e.status)
            logger.info("request", metadata: ["method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(e.status)"])
            return errorResponse(e)
        }
    }
}

import AsyncHTTPClient
import Fathom
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle

/// `fathom serve --router`: the router of a sharded index (docs/scale-out.md). It holds the
/// model's heads only, routes each query as a single index would, asks each shard owning a
/// routed posting (an ordinary `fathom serve` of that shard) for exactly those postings,
/// retries a failed request on another replica of the same shard, and merges.
/// A value type, `Sendable`.
public struct RouterConfiguration: Sendable {
    /// The model directory (`fathom train`'s output) the shards were built with.
    public var model: String
    /// Replica URLs of each shard, by shard number: `http://host:port` (the server's one
    /// index that is shard i) or `http://host:port/v1/indexes/NAME`.
    public var shards: [Int: [String]]
    /// The name the sharded index answers under (`POST /v1/indexes/{name}/search`).
    public var name: String = "sharded"
    /// Deadline of one request to a shard replica; past it the next replica is tried.
    public var shardTimeoutMs: Int = 30_000
    /// Deadline of connecting to a shard replica. A refused or timed-out connection fails the
    /// request at once (no reconnect backoff), so the next replica is tried.
    public var shardConnectTimeoutMs: Int = 1_000

    public init(model: String, shards: [Int: [String]]) { self.model = model; self.shards = shards }

    /// Parses `i=URL` (the `--shard-url` option) into `shards`.
    public mutating func add(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "="), let i = Int(text[..<eq]), i >= 0 else {
            throw FathomError(.invalidArgument, "--shard-url \(text): expected i=URL, e.g. --shard-url 0=http://10.0.0.5:7700")
        }
        let url = String(text[text.index(after: eq)...])
        guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
            throw FathomError(.invalidArgument, "--shard-url \(text): the URL must start with http:// or https://")
        }
        shards[i, default: []].append(url)
    }
}

/// One replica of a shard behind `fathom serve`, asked over HTTP/JSON.
///
/// Thread safety: concurrent calls are safe (the resolved index name is lock-guarded).
final class HTTPShardClient: ShardClient, @unchecked Sendable {
    let name: String
    let base: String
    let shard: Int
    let timeout: TimeAmount
    let client: HTTPClient
    private let lock = NSLock()
    private var indexName: String?

    init(url: String, shard: Int, timeoutMs: Int, client: HTTPClient) {
        name = url
        self.shard = shard
        self.client = client
        timeout = .milliseconds(Int64(timeoutMs))
        if let r = url.range(of: "/v1/indexes/") {
            base = String(url[..<r.lowerBound])
            indexName = String(url[r.upperBound...]).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        } else {
            base = url.hasSuffix("/") ? String(url.dropLast()) : url
        }
    }

    private var resolved: String? { lock.lock(); defer { lock.unlock() }; return indexName }
    private func resolve(_ n: String) { lock.lock(); defer { lock.unlock() }; indexName = n }

    func call(_ method: HTTPMethod, _ path: String, body: Data? = nil) async throws -> (Int, Data) {
        var r = HTTPClientRequest(url: base + path)
        r.method = method
        if let body {
            r.body = .bytes(ByteBuffer(bytes: body))
            r.headers.add(name: "Content-Type", value: "application/json")
        }
        let resp: HTTPClientResponse
        do { resp = try await client.execute(r, timeout: timeout) } catch {
            throw FathomError(.io, "\(name): \(method.rawValue) \(path) failed: \(error)", cause: error)
        }
        let b = try await resp.body.collect(upTo: 256 << 20)
        return (Int(resp.status.code), Data(b.readableBytesView))
    }

    /// The served index that is this shard: the one the URL names, or the server's one
    /// index whose manifest says shard `shard`.
    func indexPath() async throws -> String {
        if let n = resolved { return "/v1/indexes/" + n }
        let (status, data) = try await call(.GET, "/v1/indexes")
        guard status == 200, let list = try? JSONDecoder().decode(IndexListBody.self, from: data) else {
            throw FathomError(.io, "\(name): GET /v1/indexes answered \(status)")
        }
        let mine = list.indexes.filter { $0.shard?.index == shard }
        guard mine.count == 1 else {
            throw FathomError(.invalidArgument, "\(name) serves \(mine.count) indexes that are shard \(shard) (of \(list.indexes.map(\.name).joined(separator: ", "))): name one in the URL, …/v1/indexes/NAME")
        }
        resolve(mine[0].name)
        return "/v1/indexes/" + mine[0].name
    }

    func describe() async throws -> ShardDescription {
        let path = try await indexPath()
        let (status, data) = try await call(.GET, path)
        guard status == 200, let s = try? JSONDecoder().decode(IndexSummaryBody.self, from: data) else {
            throw FathomError(.io, "\(name): GET \(path) answered \(status)")
        }
        guard s.ready else { throw FathomError(.io, "\(name): the index is not open yet") }
        return ShardDescription(model_fingerprint: s.model_fingerprint, shard: s.shard)
    }

    struct Body: Encodable {
        var vector: [Float]
        var k: Int
        var rerank: Int?
        var postings: [UInt32]
    }

    func search(_ query: [Float], k: Int, parameters: SearchParameters, postings: [UInt32]) async throws -> [ShardCandidate] {
        let path = try await indexPath() + "/search"
        let body = try JSONEncoder().encode(Body(vector: query, k: k, rerank: parameters.rerank, postings: postings))
        let (status, data) = try await call(.POST, path, body: body)
        guard status == 200 else {
            let message = (try? JSONDecoder().decode(APIErrorBody.self, from: data))?.message ?? String(decoding: data.prefix(300), as: UTF8.self)
            // A 400 is the query's fault and fails the same on every replica; anything else is this replica's.
            throw FathomError(status == 400 ? .invalidArgument : .io, "\(name): shard \(shard) answered \(status): \(message)")
        }
        guard let r = try? JSONDecoder().decode(SearchResponse.self, from: data), let q = r.results.first,
              q.ids.count == q.labels.count, q.ids.count == q.distances.count, q.estimates.map({ $0.count == q.ids.count }) ?? true else {
            throw FathomError(.io, "\(name): shard \(shard) sent an answer that is not a search response")
        }
        return q.ids.indices.map { ShardCandidate(id: q.ids[$0], label: q.labels[$0], distance: q.distances[$0], estimate: q.estimates?[$0]) }
    }
}

/// The router's state: the model router, and the connected shards once every shard answered.
///
/// Thread safety: the connection is lock-guarded; everything else is immutable.
final class RouterState: @unchecked Sendable {
    let configuration: RouterConfiguration
    let model: ModelRouter
    let clients: [Int: [any ShardClient]]
    /// The router's own HTTP client (shut down with the server): connections that fail are
    /// not retried by the client (the router retries on another replica instead).
    let http: HTTPClient
    private let lock = NSLock()
    private var sharded: ShardedSearch?
    private var lastError: String? = "connecting to the shards"

    init(_ c: RouterConfiguration) throws {
        configuration = c
        model = try ModelRouter(modelDirectory: c.model)
        var hc = HTTPClient.Configuration()
        hc.connectionPool.retryConnectionEstablishment = false
        hc.timeout = .init(connect: .milliseconds(Int64(c.shardConnectTimeoutMs)))
        let http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: hc)
        self.http = http
        var clients = [Int: [any ShardClient]]()
        for (i, urls) in c.shards { clients[i] = urls.map { HTTPShardClient(url: $0, shard: i, timeoutMs: c.shardTimeoutMs, client: http) } }
        self.clients = clients
    }

    /// Closes the HTTP client's connections (once the server stopped).
    func shutdown() async { try? await http.shutdown().get() }

    var connected: ShardedSearch? { lock.lock(); defer { lock.unlock() }; return sharded }
    var failure: String? { lock.lock(); defer { lock.unlock() }; return lastError }

    /// Tries to connect once; returns whether the shards are connected.
    func connect() async -> Bool {
        if connected != nil { return true }
        do {
            set(try await ShardedSearch.connect(router: model, replicas: clients), error: nil)
            return true
        } catch {
            set(nil, error: (error as? FathomError).map { $0.message } ?? "\(error)")
            return false
        }
    }

    private func set(_ s: ShardedSearch?, error: String?) {
        lock.lock(); defer { lock.unlock() }
        sharded = s; lastError = error
    }
}

/// Connects the router to its shards after start (they may start later), retrying until
/// every shard has an answering replica of the router's model.
struct RouterConnector: Service {
    let state: RouterState
    let logger: Logger
    func run() async throws {
        var logged: String? = nil
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if await state.connect() {
                logger.info("router connected", metadata: ["shards": "\(state.clients.count)", "model": "\(state.model.model.fingerprint)"])
                break
            }
            if let f = state.failure, f != logged { logger.warning("router not ready", metadata: ["reason": "\(f)"]); logged = f }
            try? await Task.sleep(for: .milliseconds(200))
        }
        try? await gracefulShutdown()
    }
}

/// The router's HTTP routes: the sharded index's search, and the server's health, readiness,
/// metrics and document routes.
struct RouterAPI: Sendable {
    let state: RouterState
    let metrics: ServerMetrics
    let configuration: ServerConfiguration
    let logger: Logger

    func register(on router: Router<BasicRequestContext>) {
        let name = state.configuration.name
        router.get("/healthz") { _, _ in jsonResponse(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            guard state.connected != nil else {
                return errorResponse(APIError(503, ServeErrorCode.notReady, "the router is not connected: \(state.failure ?? "connecting")", APIErrorDetail(index: name)))
            }
            return jsonResponse(["status": "ready"])
        }
        router.get("/metrics") { _, _ in rawResponse(Data(metrics.exposition()), status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8") }
        router.get("/openapi.yaml") { _, _ in rawResponse(Data(OpenAPIDocument.yaml.utf8), status: 200, contentType: "application/yaml") }
        router.post("/v1/indexes/:name/search") { req, ctx in
            let asked = ctx.parameters.get("name") ?? ""
            let t0 = DispatchTime.now()
            let response: Response
            do {
                guard asked == name else { throw IndexAvailability.unknown(name: asked) }
                response = try await search(req)
                metrics.searchRequest(index: name, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e9)
            } catch { response = errorResponse(apiError(error, index: asked)) }
            metrics.request(route: "/v1/indexes/{name}/search", method: "POST", status: Int(response.status.code))
            logger.info("request", metadata: ["route": "/v1/indexes/{name}/search", "status": "\(response.status.code)",
                                              "us": "\(Int(Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e3))"])
            return response
        }
    }

    func search(_ req: Request) async throws -> Response {
        let name = state.configuration.name
        guard let sharded = state.connected else { throw IndexAvailability.notReady(name: name, reason: state.failure ?? "connecting to the shards") }
        let limit = configuration.maxBodyBytes
        let buffer: ByteBuffer
        do { buffer = try await req.body.collect(upTo: limit) } catch is NIOTooManyBytesError {
            throw APIError(413, ServeErrorCode.bodyTooLarge, "the body is larger than the limit of \(limit) bytes", APIErrorDetail(limit: limit, index: name))
        }
        let request: SearchRequest
        do { request = try JSONDecoder().decode(SearchRequest.self, from: Data(buffer.readableBytesView)) }
        catch let e as APIError { throw e }
        catch let e as DecodingError { throw API.decodingError(e, example: "{\"vector\": [0.1, 0.2], \"k\": 10}") }
        func bad(_ field: String, _ message: String) -> APIError {
            APIError(400, FathomError.Code.invalidArgument.rawValue, message, APIErrorDetail(field: field, index: name))
        }
        guard request.filter == nil else { throw bad("filter", "the router does not route filtered queries yet: search a shard's index directly") }
        guard request.postings == nil else { throw bad("postings", "the router plans the postings itself") }
        let queries = try request.queries(bad)
        guard !queries.isEmpty, queries.count <= configuration.maxBatch else { throw bad("vectors", "1 to \(configuration.maxBatch) queries per request") }
        guard request.k >= 1, request.k <= configuration.maxK else { throw bad("k", "k = \(request.k): use 1 to \(configuration.maxK)") }
        var p = SearchParameters()
        if let probes = request.probes {
            guard probes >= 1, probes <= configuration.maxProbes else { throw bad("probes", "probes = \(probes): use 1 to \(configuration.maxProbes)") }
            p.probes = min(probes, max(1, sharded.router.headCount))
        }
        if let r = request.rerank {
            guard r >= 1, r <= configuration.maxRerank else { throw bad("rerank", "rerank = \(r): use 1 to \(configuration.maxRerank)") }
            p.rerank = r
        }
        let m = metrics
        var results = [QueryResultBody]()
        for q in queries {
            let t0 = DispatchTime.now()
            let hits: [Neighbor]
            do {
                hits = try await sharded.search(q, k: request.k, parameters: p, observe: { call in
                    m.shardCall(shard: call.shard, replica: call.replica, seconds: call.seconds, succeeded: call.succeeded)
                })
            } catch let e as FathomError where e.code == .io {
                // Every replica of a shard failed: the shards' condition, not the router's.
                var api = APIError(e, index: name)
                api.status = 502
                throw api
            }
            let us = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e3
            results.append(QueryResultBody(ids: hits.map(\.id), labels: hits.map(\.label), distances: hits.map(\.distance),
                                           stats: QueryStatsBody(ios: 0, kib: 0, us: us)))
        }
        return jsonResponse(SearchResponse(index: name, generation: 1, results: results))
    }
}

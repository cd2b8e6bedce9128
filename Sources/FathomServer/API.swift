import Fathom
import Foundation
import Hummingbird
import Logging
import NIOCore

/// Fields of the one log line per request.
struct RequestLog {
    var index: String?
    var k: Int?
    var probes: Int?
    var filter: String?
    var queries: Int?
    var ios: Int?
    var generation: Int?
    var version: Int?
    var rows: Int?
    var upsert: Bool?
}

/// The HTTP routes (docs/openapi.yaml).
struct API: Sendable {
    let registry: IndexRegistry
    let executor: SearchExecutor
    let metrics: ServerMetrics
    let configuration: ServerConfiguration
    let logger: Logger

    func register(on router: Router<BasicRequestContext>) {
        router.get("/healthz") { req, ctx in
            await handle("/healthz", req) { _ in jsonResponse(["status": "ok"]) }
        }
        router.get("/readyz") { req, ctx in
            await handle("/readyz", req) { _ in try ready() }
        }
        router.get("/metrics") { req, ctx in
            await handle("/metrics", req) { _ in
                metrics.refresh(executor: executor, registry: registry)
                return rawResponse(Data(metrics.exposition()), status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8")
            }
        }
        router.get("/openapi.yaml") { req, ctx in
            await handle("/openapi.yaml", req) { _ in
                rawResponse(Data(OpenAPIDocument.yaml.utf8), status: 200, contentType: "application/yaml")
            }
        }
        router.get("/v1/indexes") { req, ctx in
            await handle("/v1/indexes", req) { _ in
                jsonResponse(IndexListBody(indexes: registry.names.map { summary(registry[$0]!) }))
            }
        }
        router.get("/v1/indexes/:name") { req, ctx in
            let name = ctx.parameters.get("name") ?? ""
            return await handle("/v1/indexes/{name}", req) { log in
                log.index = name
                return try await info(name)
            }
        }
        router.post("/v1/indexes/:name/reload") { req, ctx in
            let name = ctx.parameters.get("name") ?? ""
            return await handle("/v1/indexes/{name}/reload", req) { log in
                log.index = name
                return try await reload(name, log: &log)
            }
        }
        router.post("/v1/indexes/:name/search") { req, ctx in
            let name = ctx.parameters.get("name") ?? ""
            let t0 = DispatchTime.now()
            return await handle("/v1/indexes/{name}/search", req) { log in
                log.index = name
                let r = try await search(name, req, log: &log)
                if registry[name] != nil {
                    metrics.searchRequest(index: name, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e9)
                }
                return r
            }
        }
        router.post("/v1/indexes/:name/vectors") { req, ctx in
            let name = ctx.parameters.get("name") ?? ""
            return await handle("/v1/indexes/{name}/vectors", req) { log in
                log.index = name
                return try await insert(name, req, log: &log)
            }
        }
        router.delete("/v1/indexes/:name/vectors") { req, ctx in
            let name = ctx.parameters.get("name") ?? ""
            return await handle("/v1/indexes/{name}/vectors", req) { log in
                log.index = name
                return try await delete(name, req, log: &log)
            }
        }
    }

    /// Runs a route: every error becomes the JSON error shape; one log line and one
    /// counter per request.
    func handle(_ route: String, _ req: Request, _ body: (inout RequestLog) async throws -> Response) async -> Response {
        let t0 = DispatchTime.now()
        var log = RequestLog()
        let response: Response
        do { response = try await body(&log) } catch {
            response = errorResponse(apiError(error, index: log.index))
        }
        let us = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e3
        let status = Int(response.status.code)
        metrics.request(route: route, method: req.method.rawValue, status: status)
        var md: Logger.Metadata = ["method": "\(req.method.rawValue)", "route": "\(route)", "status": "\(status)",
                                   "us": "\(Int(us))"]
        if let v = log.index { md["index"] = "\(v)" }
        if let v = log.generation { md["generation"] = "\(v)" }
        if let v = log.k { md["k"] = "\(v)" }
        if let v = log.probes { md["probes"] = "\(v)" }
        if let v = log.filter { md["filter"] = "\(v.count > 200 ? String(v.prefix(200)) + "…" : v)" }
        if let v = log.queries { md["queries"] = "\(v)" }
        if let v = log.ios { md["ios"] = "\(v)" }
        if let v = log.version { md["version"] = "\(v)" }
        if let v = log.rows { md["rows"] = "\(v)" }
        if let v = log.upsert, v { md["upsert"] = "true" }
        logger.info("request", metadata: md)
        return response
    }

    func served(_ name: String) throws -> ServedIndex {
        guard let s = registry[name] else { throw IndexAvailability.unknown(name: name) }
        return s
    }

    func ready() throws -> Response {
        var gens = [String: Int]()
        var missing = [String]()
        for n in registry.names {
            let g = registry[n]!.generation
            gens[n] = g
            if g == 0 { missing.append(n) }
        }
        guard missing.isEmpty else {
            let reasons = missing.map { n in "\(n): \(registry[n]!.failure ?? "opening")" }
            throw APIError(503, ServeErrorCode.notReady, "not every index is open: " + reasons.joined(separator: "; "),
                           APIErrorDetail(index: missing.first))
        }
        struct Ready: Encodable { var status: String; var indexes: [String: Int] }
        return jsonResponse(Ready(status: "ready", indexes: gens))
    }

    func summary(_ s: ServedIndex) -> IndexSummaryBody {
        var b = IndexSummaryBody(name: s.name, directory: s.directory, ready: false, generation: s.generation,
                                 open_generations: s.openGenerationCount, reloading: s.isReloading, writable: s.writable)
        if s.writable { b.queued_writes = s.queuedWrites }
        if let l = try? s.lease() {
            defer { l.release() }
            b.ready = true
            b.generation = l.generation.number
            b.version = l.version
            b.count = l.index.liveCount; b.dimension = l.index.dimension; b.metric = l.index.metric.rawValue
            b.heads = l.index.headCount; b.io_engine = l.index.ioEngineName
            b.has_attributes = l.index.manifest.attributes != nil
            b.model_fingerprint = l.index.manifest.model_fingerprint
            b.shard = l.index.manifest.shard
        }
        return b
    }

    /// `GET /v1/indexes/{name}`: the serving state plus what `fathom info --json` shows.
    func info(_ name: String) async throws -> Response {
        let s = try served(name)
        let dir = s.directory
        let text = try await offloop { try IndexInfo.describe(directory: dir, json: true) }
        let infoObject = try JSONSerialization.jsonObject(with: Data(text.utf8))
        let sum = summary(s)
        let sumObject = try JSONSerialization.jsonObject(with: JSONEncoder().encode(sum))
        guard var obj = sumObject as? [String: Any] else { throw APIError(500, ServeErrorCode.internalError, "summary encoding") }
        obj["info"] = infoObject
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        return rawResponse(data, status: 200, contentType: "application/json")
    }

    func reload(_ name: String, log: inout RequestLog) async throws -> Response {
        let s = try served(name)
        let before = s.generation
        let t0 = DispatchTime.now()
        let g: IndexGeneration
        do { g = try await offloop { try s.reload() } } catch let e as FathomError {
            var api = APIError(e, index: name)
            api.status = 409
            api.body.message = (s.writable ? "reload failed, generation \(before) keeps serving searches (its last snapshot; writes answer 503 until a reload succeeds): "
                                            : "reload failed, generation \(before) keeps serving: ") + api.body.message
            api.body.detail.path = e.path
            throw api
        }
        log.generation = g.number
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e6
        logger.info("reload", metadata: ["index": "\(name)", "generation": "\(g.number)", "previous": "\(before)"])
        return jsonResponse(ReloadBody(name: name, generation: g.number, previous_generation: before, ms: ms))
    }

    // MARK: search

    static func decodingError(_ e: DecodingError, example: String) -> APIError {
        func path(_ p: [CodingKey]) -> String {
            var s = ""
            for k in p {
                if let i = k.intValue { s += "[\(i)]" } else { s += s.isEmpty ? k.stringValue : "." + k.stringValue }
            }
            return s
        }
        switch e {
        case .dataCorrupted(let c):
            let why = (c.underlyingError.map { "\($0)" } ?? c.debugDescription)
            if c.codingPath.isEmpty {
                return APIError(400, ServeErrorCode.malformedJSON,
                                "the body is not valid JSON (\(why)): send one object such as \(example); numbers must fit a double")
            }
            return APIError(400, FathomError.Code.invalidArgument.rawValue, "\(path(c.codingPath)): \(c.debugDescription)", APIErrorDetail(field: path(c.codingPath)))
        case .typeMismatch(_, let c), .valueNotFound(_, let c):
            let p = path(c.codingPath)
            return APIError(400, FathomError.Code.invalidArgument.rawValue,
                            p.isEmpty ? "the body must be a JSON object (see docs/openapi.yaml)" : "\(p): \(c.debugDescription)",
                            APIErrorDetail(field: p.isEmpty ? nil : p))
        case .keyNotFound(let k, let c):
            let p = path(c.codingPath + [k])
            return APIError(400, FathomError.Code.invalidArgument.rawValue, "missing member \(p)", APIErrorDetail(field: p))
        @unknown default:
            return APIError(400, ServeErrorCode.malformedJSON, "the body cannot be decoded: \(e)")
        }
    }

    /// Reads and decodes a JSON body of at most `limit` bytes: 415 without
    /// `Content-Type: application/json`, 413 above the limit (refused on `Content-Length`
    /// first, then while reading), 400 for nesting deeper than the depth limit, bare
    /// NaN/Infinity, and what does not decode.
    func decodeBody<T: Decodable>(_ type: T.Type, _ req: Request, limit: Int, index name: String, example: String) async throws -> T {
        try checkJSONContentType(req.headers[.contentType])
        if let len = req.headers[.contentLength].flatMap({ Int($0) }), len > limit {
            throw APIError(413, ServeErrorCode.bodyTooLarge, "the body is \(len) bytes, above the limit of \(limit)",
                           APIErrorDetail(limit: limit, index: name))
        }
        let buffer: ByteBuffer
        do { buffer = try await req.body.collect(upTo: limit) } catch is NIOTooManyBytesError {
            throw APIError(413, ServeErrorCode.bodyTooLarge, "the body is larger than the limit of \(limit) bytes",
                           APIErrorDetail(limit: limit, index: name))
        } catch {
            // The HTTP decoder's error for a body cut short: the client closed its side (or the
            // connection) before the bytes its Content-Length or chunking announced.
            throw APIError(400, ServeErrorCode.malformedJSON,
                           "the request body ended before its announced length (\(error)): send the whole body, then wait for the answer",
                           APIErrorDetail(index: name))
        }
        if let len = req.headers[.contentLength].flatMap({ Int($0) }), buffer.readableBytes < len {
            // The stream ended early without an error (the body timeout closed the connection).
            throw APIError(400, ServeErrorCode.malformedJSON,
                           "the body ended after \(buffer.readableBytes) of the \(len) bytes its Content-Length announced (the connection closed)",
                           APIErrorDetail(index: name))
        }
        let depth = configuration.maxJSONDepth
        try buffer.withUnsafeReadableBytes { try JSONBodyScan.check($0, maxDepth: depth) }
        do { return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView)) }
        catch let e as APIError { throw e }
        catch let e as DecodingError { throw Self.decodingError(e, example: example) }
        catch { throw APIError(400, ServeErrorCode.malformedJSON, "the body cannot be decoded: \(error)") }
    }

    func search(_ name: String, _ req: Request, log: inout RequestLog) async throws -> Response {
        let s = try served(name)
        let c = configuration
        let request = try await decodeBody(SearchRequest.self, req, limit: c.maxBodyBytes, index: name,
                                           example: "{\"vector\": [0.1, 0.2], \"k\": 10}")
        log.k = request.k; log.probes = request.probes; log.filter = request.filter

        // Checks that need no index.
        func bad(_ field: String, _ message: String, limit: Int? = nil) -> APIError {
            APIError(400, FathomError.Code.invalidArgument.rawValue, message, APIErrorDetail(field: field, limit: limit, index: name))
        }
        let queries = try request.queries { bad($0, $1) }
        guard !queries.isEmpty else { throw bad("vectors", "'vectors' is empty") }
        guard queries.count <= c.maxBatch else {
            throw bad("vectors", "\(queries.count) queries in one request, above the limit of \(c.maxBatch)", limit: c.maxBatch)
        }
        log.queries = queries.count
        guard request.k >= 1 else { throw bad("k", "k = \(request.k): k must be at least 1") }
        guard request.k <= c.maxK else { throw bad("k", "k = \(request.k) is above the server's limit of \(c.maxK)", limit: c.maxK) }
        if let p = request.probes {
            guard p >= 1, p <= c.maxProbes else { throw bad("probes", "probes = \(p): use 1 to \(c.maxProbes)", limit: c.maxProbes) }
        }
        if let r = request.rerank {
            guard r >= 1, r <= c.maxRerank else { throw bad("rerank", "rerank = \(r): use 1 to \(c.maxRerank)", limit: c.maxRerank) }
        }
        let timeout = request.timeoutMs ?? c.defaultTimeoutMs
        if let t = timeout {
            guard t >= 1, t <= c.maxTimeoutMs else { throw bad("timeout_ms", "timeout_ms = \(t): use 1 to \(c.maxTimeoutMs)", limit: c.maxTimeoutMs) }
        }
        if let postings = request.postings {
            guard request.vector != nil else { throw bad("postings", "a search of named postings takes one 'vector'") }
            guard request.filter == nil else { throw bad("postings", "a search of named postings takes no filter") }
            guard postings.count <= c.maxProbes else {
                throw bad("postings", "\(postings.count) postings, above the limit of \(c.maxProbes)", limit: c.maxProbes)
            }
        }

        // Pin one generation from here to the end of the search (filters bind to it).
        let lease = try s.lease()
        var handedOver = false
        defer { if !handedOver { lease.release() } }
        let index = lease.index
        log.generation = lease.generation.number
        for (i, q) in queries.enumerated() where q.count != index.dimension {
            let field = request.vector != nil ? "vector" : "vectors[\(i)]"
            throw APIError(400, FathomError.Code.dimensionMismatch.rawValue,
                           "\(field) has \(q.count) values, the index '\(name)' has dimension \(index.dimension)",
                           APIErrorDetail(field: field, expected: index.dimension, actual: q.count, index: name))
        }
        guard request.k <= index.count else {
            throw bad("k", "k = \(request.k) exceeds the \(index.count) vectors in index '\(name)'", limit: index.count)
        }
        var filter: PreparedFilter? = nil
        if let text = request.filter {
            do { filter = try index.prepareFilter(text) } catch let e as FathomError {
                throw APIError(e, field: "filter", index: name)
            }
        }
        var params0 = SearchParameters()
        if let p = request.probes { params0.probes = min(p, max(1, index.headCount)) }
        params0.rerank = request.rerank
        let parameters = params0
        log.probes = request.postings?.count ?? parameters.probes
        let k = request.k
        let pinned = filter
        if let postings = request.postings, let bad = postings.first(where: { Int($0) >= index.headCount }) {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "posting \(bad) does not exist: index '\(name)' has \(index.headCount) heads",
                           APIErrorDetail(field: "postings", limit: index.headCount, index: name))
        }
        let listed = request.postings

        handedOver = true
        let m = metrics
        let outcome: SearchOutcome = try await executor.run(timeoutMs: timeout, onDrop: { lease.release() }) { deadline in
            defer { lease.release() }
            var out = [QueryResultBody]()
            out.reserveCapacity(queries.count)
            // The running query stops its reads at the deadline too (SearchParameters.deadline).
            var timed = parameters
            timed.deadline = deadline.at.map(SearchDeadline.init)
            do {
                return try index.withSearcher { searcher in
                    for (i, q) in queries.enumerated() {
                        // Past the deadline the caller has its 504: the rest of the batch is not searched.
                        if deadline.hasPassed {
                            m.abandonedQueries(index: name, count: queries.count - i)
                            return .abandoned
                        }
                        let t0 = DispatchTime.now()
                        if let listed {
                            // A shard's part of a routed query: its candidates, for the router's merge.
                            let cands = try searcher.search(q, k: k, parameters: timed, postings: listed)
                            let us = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e3
                            let st = searcher.stats
                            let estimates = cands.first?.estimate == nil ? nil : cands.map { $0.estimate ?? .infinity }
                            out.append(QueryResultBody(ids: cands.map(\.id), labels: cands.map(\.label), distances: cands.map(\.distance),
                                                       estimates: estimates,
                                                       stats: QueryStatsBody(ios: st.postingsRead + st.vectorsReranked,
                                                                             kib: Double(st.bytesRead) / 1024, us: us)))
                            continue
                        }
                        let hits: [Neighbor]
                        do {
                            hits = try q.withUnsafeBufferPointer { try searcher.search($0, k: k, parameters: timed, filter: pinned) }
                        } catch let e as FathomError where e.code == .cancelled {
                            m.abandonedQueries(index: name, count: queries.count - i)
                            return .abandoned
                        }
                        let us = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e3
                        let st = searcher.stats
                        out.append(QueryResultBody(ids: hits.map(\.id), labels: hits.map(\.label), distances: hits.map(\.distance),
                                                   stats: QueryStatsBody(ios: st.postingsRead + st.vectorsReranked,
                                                                         kib: Double(st.bytesRead) / 1024, us: us)))
                    }
                    return .done(out)
                }
            } catch let e as FathomError {
                return .failed(e)
            } catch {
                return .failed(FathomError(.io, "the search failed", cause: error))
            }
        }
        let results: [QueryResultBody]
        switch outcome {
        case .done(let r): results = r
        case .failed(let e): throw e
        case .abandoned: throw AdmissionError.deadlineExceeded(timeoutMs: timeout ?? 0)
        }
        var ios = 0
        for r in results {
            ios += r.stats.ios
            metrics.query(index: name, ios: r.stats.ios, kib: r.stats.kib)
        }
        log.ios = ios
        log.version = lease.version
        return jsonResponse(SearchResponse(index: name, generation: lease.generation.number, version: lease.version, results: results))
    }
}

/// How a search job ended.
enum SearchOutcome: Sendable {
    case done([QueryResultBody])
    case failed(FathomError)
    /// Its deadline passed between two queries of the batch; the rest was not searched.
    case abandoned
}

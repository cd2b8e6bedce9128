import Fathom
import FathomCodecs
import Foundation

// Hand-written Codable types of the HTTP API; docs/openapi.yaml is the contract they follow.

/// The one error body every failing response carries: `{code, message, detail}`.
/// A value type, `Sendable`: safe to pass between threads.
///
/// `code` is a ``FathomError/Code`` raw value where the library raised the error
/// (`invalidArgument`, `dimensionMismatch`, `nonFiniteValue`, `parse`, `io`, …) or one of the
/// server's own codes (``ServeErrorCode``).
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var code: String
    public var message: String
    public var detail: APIErrorDetail
    public init(code: String, message: String, detail: APIErrorDetail = APIErrorDetail()) {
        self.code = code; self.message = message; self.detail = detail
    }
}

/// Machine-readable context of an error; absent members are omitted from the JSON.
/// A value type, `Sendable`.
public struct APIErrorDetail: Codable, Sendable, Equatable {
    /// The request member at fault (`k`, `vectors[3][7]`, `filter`, …).
    public var field: String?
    /// Filter errors: 0-based offset in the filter text (Unicode scalars) of the bad token.
    public var position: Int?
    /// Filter errors: the text with a caret line under the bad token.
    public var caret: String?
    /// The limit that was exceeded (k, body bytes, queue length, timeout ms, …).
    public var limit: Int?
    /// Dimension errors: the index's dimension and the one sent.
    public var expected: Int?
    public var actual: Int?
    /// The index named in the request.
    public var index: String?
    /// File the library error refers to, if any.
    public var path: String?
    public init(field: String? = nil, position: Int? = nil, caret: String? = nil, limit: Int? = nil,
                expected: Int? = nil, actual: Int? = nil, index: String? = nil, path: String? = nil) {
        self.field = field; self.position = position; self.caret = caret; self.limit = limit
        self.expected = expected; self.actual = actual; self.index = index; self.path = path
    }
}

/// Error codes the server adds to the library's ``FathomError/Code`` values (constants;
/// safe from any thread).
public enum ServeErrorCode {
    /// The body is not valid JSON (truncated, wrong syntax) — 400.
    public static let malformedJSON = "malformedJSON"
    /// The body exceeds the configured limit — 413.
    public static let bodyTooLarge = "bodyTooLarge"
    /// A JSON body sent without `Content-Type: application/json` (or with a charset other
    /// than UTF-8) — 415.
    public static let unsupportedMediaType = "unsupportedMediaType"
    /// The JSON nests arrays/objects deeper than the configured limit — 400.
    public static let nestingTooDeep = "nestingTooDeep"
    /// No index of that name is served — 404.
    public static let unknownIndex = "unknownIndex"
    /// No such route — 404.
    public static let notFound = "notFound"
    /// The method is not allowed on this route — 405.
    public static let methodNotAllowed = "methodNotAllowed"
    /// The admission queue is full — 429.
    public static let overloaded = "overloaded"
    /// The index (or the server) is not open yet, or is shutting down — 503.
    public static let notReady = "notReady"
    /// A reload of this index is already running — 503.
    public static let reloading = "reloading"
    /// The query's `timeout_ms` passed before its result — 504.
    public static let deadlineExceeded = "deadlineExceeded"
    /// A reload failed to open the new generation; the old one keeps serving — 409.
    public static let reloadFailed = "reloadFailed"
    /// A write to an index served read-only (no `--writable NAME`) — 409.
    public static let readOnly = "readOnly"
    /// An insert of a label the index already has, without `upsert` — 409.
    public static let labelExists = "labelExists"
    /// The directory of a writable index was republished under its writer; reload first — 409.
    public static let indexReplaced = "indexReplaced"
    /// The server failed in a way it did not expect — 500.
    public static let internalError = "internal"
}

/// A failure turned into an HTTP status and an ``APIErrorBody``. A value type, `Sendable`.
public struct APIError: Error, Sendable {
    public var status: Int
    public var body: APIErrorBody
    public init(_ status: Int, _ code: String, _ message: String, _ detail: APIErrorDetail = APIErrorDetail()) {
        self.status = status
        self.body = APIErrorBody(code: code, message: message, detail: detail)
    }

    /// A library error: 400 for what the request got wrong, 500 for what the server's files
    /// or devices did. Keeps the library's code, message (with its remedies) and path.
    public init(_ e: FathomError, field: String? = nil, index: String? = nil) {
        let badInput: Set<String> = [FathomError.Code.invalidArgument.rawValue, FathomError.Code.dimensionMismatch.rawValue,
                                     FathomError.Code.nonFiniteValue.rawValue, FathomError.Code.parse.rawValue]
        var d = APIErrorDetail(field: field, index: index, path: badInput.contains(e.code.rawValue) ? nil : e.path)
        var message = e.message
        if e.code == .parse {
            // Filter errors: "unexpected … at 6, expected …\n  text\n     ^": split message and caret.
            let lines = e.message.split(separator: "\n", omittingEmptySubsequences: false)
            message = String(lines.first ?? "")
            if lines.count > 1 { d.caret = lines.dropFirst().joined(separator: "\n") }
            d.position = Self.offset(in: message)
        }
        // What to do, in the library's terms (the library names no CLI flag).
        if !e.remedies.isEmpty { message += "; " + e.remedies.map(\.description).joined(separator: ", or ") }
        // A full disk is the server's condition, not the request's: 507 Insufficient Storage.
        self.status = badInput.contains(e.code.rawValue) ? 400 : (e.code == .diskFull ? 507 : 500)
        self.body = APIErrorBody(code: e.code.rawValue, message: message, detail: d)
    }

    /// The number after the first " at " in a filter error message (its token offset).
    static func offset(in message: String) -> Int? {
        var rest = Substring(message)
        while let r = rest.range(of: " at ") {
            let digits = rest[r.upperBound...].prefix { $0.isASCII && $0.isNumber }
            if !digits.isEmpty, let v = Int(digits) { return v }
            rest = rest[r.upperBound...]
        }
        return nil
    }
}

/// `POST /v1/indexes/{name}/search` body. Unknown members are refused (400), so a typo such
/// as `"prob": 8` does not silently fall back to a default. A value type, `Sendable`.
public struct SearchRequest: Decodable, Sendable {
    public var vector: [Float]?
    public var vectors: [[Float]]?
    public var k: Int
    public var probes: Int?
    public var rerank: Int?
    public var filter: String?
    public var timeoutMs: Int?
    /// A shard's part of a routed query (docs/scale-out.md): read exactly these postings
    /// (head ids), no routing; one `vector`, no filter. The answer holds the shard's
    /// candidates: the k best for uncompressed postings; for compressed ones the `rerank`
    /// best by code estimate, with `estimates`.
    public var postings: [UInt32]?

    static let members = ["vector", "vectors", "k", "probes", "rerank", "filter", "timeout_ms", "postings"]

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { return nil }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        for key in c.allKeys where !Self.members.contains(key.stringValue) {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue,
                           "unknown member '\(key.stringValue)' in the search request; known: \(Self.members.joined(separator: ", "))",
                           APIErrorDetail(field: key.stringValue))
        }
        func optInt(_ name: String) throws -> Int? {
            guard c.contains(Key(name)), try !c.decodeNil(forKey: Key(name)) else { return nil }
            do { return try c.decode(Int.self, forKey: Key(name)) } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'\(name)' must be an integer",
                               APIErrorDetail(field: name))
            }
        }
        k = try optInt("k") ?? 10
        probes = try optInt("probes")
        rerank = try optInt("rerank")
        timeoutMs = try optInt("timeout_ms")
        if c.contains(Key("filter")), try !c.decodeNil(forKey: Key("filter")) {
            do { filter = try c.decode(String.self, forKey: Key("filter")) } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'filter' must be a string in the filter language (docs/filters.md)",
                               APIErrorDetail(field: "filter"))
            }
        }
        if c.contains(Key("vector")), try !c.decodeNil(forKey: Key("vector")) {
            var u: UnkeyedDecodingContainer
            do { u = try c.nestedUnkeyedContainer(forKey: Key("vector")) } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'vector' must be an array of numbers", APIErrorDetail(field: "vector"))
            }
            vector = try Self.floats(&u, field: "vector")
        }
        if c.contains(Key("vectors")), try !c.decodeNil(forKey: Key("vectors")) {
            vectors = try Self.rows(c, "vectors")
        }
        if c.contains(Key("postings")), try !c.decodeNil(forKey: Key("postings")) {
            do { postings = try c.decode([UInt32].self, forKey: Key("postings")) } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'postings' must be an array of head ids (integers ≥ 0)",
                               APIErrorDetail(field: "postings"))
            }
        }
    }

    /// Reads an array of vectors (arrays of finite numbers), naming the bad entry.
    static func rows(_ c: KeyedDecodingContainer<Key>, _ key: String) throws -> [[Float]] {
        var outer: UnkeyedDecodingContainer
        do { outer = try c.nestedUnkeyedContainer(forKey: Key(key)) } catch {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'\(key)' must be an array of arrays of numbers", APIErrorDetail(field: key))
        }
        var all = [[Float]]()
        if let n = outer.count { all.reserveCapacity(n) }
        while !outer.isAtEnd {
            let i = all.count
            var inner: UnkeyedDecodingContainer
            do { inner = try outer.nestedUnkeyedContainer() } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'\(key)[\(i)]' must be an array of numbers", APIErrorDetail(field: "\(key)[\(i)]"))
            }
            all.append(try floats(&inner, field: "\(key)[\(i)]"))
        }
        return all
    }

    /// Reads an array of finite numbers. JSON has no NaN: `null` (what JavaScript's
    /// JSON.stringify writes for NaN) and the strings "NaN"/"Infinity" count as non-finite.
    static func floats(_ u: inout UnkeyedDecodingContainer, field: String) throws -> [Float] {
        var out = [Float]()
        if let n = u.count { out.reserveCapacity(n) }
        while !u.isAtEnd {
            let at = "\(field)[\(out.count)]"
            let isNull: Bool
            do { isNull = try u.decodeNil() } catch {
                // The decoder parses the number to peek at it: 1e400 fails here.
                throw APIError(400, FathomError.Code.nonFiniteValue.rawValue, "\(at) is a number out of the float32 range", APIErrorDetail(field: at))
            }
            if isNull {
                throw APIError(400, FathomError.Code.nonFiniteValue.rawValue, "\(at) is null: vectors must hold finite numbers (NaN is written as null by some encoders)",
                               APIErrorDetail(field: at))
            }
            do {
                let v = try u.decode(Double.self)
                guard v.isFinite, abs(v) <= Double(Float.greatestFiniteMagnitude) else {
                    throw APIError(400, FathomError.Code.nonFiniteValue.rawValue, "\(at) = \(v) is not a finite float32", APIErrorDetail(field: at))
                }
                out.append(Float(v))
                continue
            } catch let e as DecodingError {
                // Not a number (typeMismatch): a string or a nested value, told apart below.
                // Anything else: a number too large for a Double (1e400).
                guard case .typeMismatch = e else {
                    throw APIError(400, FathomError.Code.nonFiniteValue.rawValue, "\(at) is a number out of the float32 range (\(e))", APIErrorDetail(field: at))
                }
            }
            if let s = try? u.decode(String.self) {
                let nonFinite = ["nan", "inf", "infinity", "-inf", "-infinity", "+inf", "+infinity", "-nan"].contains(s.lowercased())
                throw APIError(400, nonFinite ? FathomError.Code.nonFiniteValue.rawValue : FathomError.Code.invalidArgument.rawValue,
                               nonFinite ? "\(at) is \"\(s)\": vectors must hold finite numbers" : "\(at) is a string: vectors must hold numbers",
                               APIErrorDetail(field: at))
            }
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "\(at) is not a number", APIErrorDetail(field: at))
        }
        return out
    }
}

/// Counters of one answered query. A value type, `Sendable`.
public struct QueryStatsBody: Codable, Sendable, Equatable {
    /// Reads issued: postings plus full-precision vectors re-ranked.
    public var ios: Int
    /// KiB read from disk.
    public var kib: Double
    /// Microseconds the search took on its worker (excluding queueing).
    public var us: Double
    public init(ios: Int, kib: Double, us: Double) { self.ios = ios; self.kib = kib; self.us = us }
}

/// One query's answer: ids, labels and distances nearest first (equal lengths), and its
/// counters. A value type, `Sendable`.
public struct QueryResultBody: Codable, Sendable, Equatable {
    /// Internal ids (rows; they change when a checkpoint rebuilds an updated index).
    public var ids: [UInt32]
    /// External labels (given at build or insert; the row number by default).
    public var labels: [UInt64]
    public var distances: [Float]
    /// Searches of named postings over compressed postings: each candidate's code estimate
    /// (the router keeps the query's re-rank set by them). Absent otherwise.
    public var estimates: [Float]? = nil
    public var stats: QueryStatsBody
    public init(ids: [UInt32], labels: [UInt64], distances: [Float], estimates: [Float]? = nil, stats: QueryStatsBody) {
        self.ids = ids; self.labels = labels; self.distances = distances; self.estimates = estimates; self.stats = stats
    }
}

/// `POST /v1/indexes/{name}/search` answer: one result per query, in request order.
/// A value type, `Sendable`.
public struct SearchResponse: Codable, Sendable, Equatable {
    public var index: String
    public var generation: Int
    /// Writable indexes: the version searched (every write answered with a version ≤ this one
    /// is in it). Absent for read-only indexes.
    public var version: Int?
    public var results: [QueryResultBody]
    public init(index: String, generation: Int, version: Int? = nil, results: [QueryResultBody]) {
        self.index = index; self.generation = generation; self.version = version; self.results = results
    }
}

/// One entry of `GET /v1/indexes`. A value type, `Sendable`.
public struct IndexSummaryBody: Codable, Sendable, Equatable {
    public var name: String
    public var directory: String
    public var ready: Bool
    public var generation: Int
    public var open_generations: Int
    public var reloading: Bool
    public var count: Int?
    public var dimension: Int?
    public var metric: String?
    public var heads: Int?
    public var io_engine: String?
    public var has_attributes: Bool?
    /// Whether the server is the index's writer (`--writable NAME`).
    public var writable: Bool
    /// Writable indexes: the version now served.
    public var version: Int?
    /// Writable indexes: writes waiting for the writer or running.
    public var queued_writes: Int?
    /// The model the index was built with (its manifest's `model_fingerprint`).
    public var model_fingerprint: String?
    /// Shards: which heads the index holds (its manifest's `shard`).
    public var shard: ShardInfo?
}

/// `GET /v1/indexes` answer. A value type, `Sendable`.
public struct IndexListBody: Codable, Sendable, Equatable {
    public var indexes: [IndexSummaryBody]
}

/// `POST /v1/indexes/{name}/reload` answer. A value type, `Sendable`.
public struct ReloadBody: Codable, Sendable, Equatable {
    public var name: String
    public var generation: Int
    public var previous_generation: Int
    public var ms: Double
}

/// Reads a JSON array of labels (`UInt64`); an entry that is not an integer in 0…2^64−1 is
/// refused naming it (`labels[3]`).
func decodeLabels(_ c: KeyedDecodingContainer<SearchRequest.Key>, _ key: String) throws -> [UInt64] {
    var u: UnkeyedDecodingContainer
    do { u = try c.nestedUnkeyedContainer(forKey: SearchRequest.Key(key)) } catch {
        throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'\(key)' must be an array of integers 0 to 2^64 − 1", APIErrorDetail(field: key))
    }
    var out = [UInt64]()
    if let n = u.count { out.reserveCapacity(n) }
    while !u.isAtEnd {
        let at = "\(key)[\(out.count)]"
        if let v = try? u.decode(UInt64.self) { out.append(v); continue }
        throw APIError(400, FathomError.Code.invalidArgument.rawValue, "\(at) is not a label: labels are integers 0 to 2^64 − 1", APIErrorDetail(field: at))
    }
    return out
}

/// Refuses members other than `known` (a typo must not fall back to a default).
func refuseUnknownMembers(_ c: KeyedDecodingContainer<SearchRequest.Key>, _ known: [String], _ what: String) throws {
    for key in c.allKeys where !known.contains(key.stringValue) {
        throw APIError(400, FathomError.Code.invalidArgument.rawValue,
                       "unknown member '\(key.stringValue)' in the \(what); known: \(known.joined(separator: ", "))",
                       APIErrorDetail(field: key.stringValue))
    }
}

/// `POST /v1/indexes/{name}/vectors` body: `vectors` (required), `labels` (one per vector;
/// optional for a plain insert), `upsert` (default false), `attributes` (one object per
/// vector, column name → number, string or array of strings; required by an index with
/// attributes). Unknown members are refused. A value type, `Sendable`.
public struct InsertRequest: Decodable, Sendable {
    public var vectors: [[Float]]
    public var labels: [UInt64]?
    public var upsert: Bool
    public var attributes: [[String: AttributeValue]]?

    static let members = ["vectors", "labels", "upsert", "attributes"]

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: SearchRequest.Key.self)
        try refuseUnknownMembers(c, Self.members, "write request")
        upsert = false
        if c.contains(.init("upsert")), try !c.decodeNil(forKey: .init("upsert")) {
            do { upsert = try c.decode(Bool.self, forKey: .init("upsert")) } catch {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'upsert' must be true or false", APIErrorDetail(field: "upsert"))
            }
        }
        if c.contains(.init("labels")), try !c.decodeNil(forKey: .init("labels")) {
            labels = try decodeLabels(c, "labels")
        }
        guard c.contains(.init("vectors")), try !c.decodeNil(forKey: .init("vectors")) else {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "missing member 'vectors': the vectors to write, e.g. {\"vectors\": [[0.1, 0.2]]}",
                           APIErrorDetail(field: "vectors"))
        }
        vectors = try SearchRequest.rows(c, "vectors")
        if c.contains(.init("attributes")), try !c.decodeNil(forKey: .init("attributes")) {
            attributes = try Self.attributeRows(c)
        }
    }

    /// `attributes`: an array of objects whose values are numbers (an integer → int, else
    /// float), strings (category) or arrays of strings (tags); booleans are the strings
    /// "true"/"false", as `fathom build --attributes` reads JSON lines.
    static func attributeRows(_ c: KeyedDecodingContainer<SearchRequest.Key>) throws -> [[String: AttributeValue]] {
        func bad(_ field: String, _ what: String) -> APIError {
            APIError(400, FathomError.Code.invalidArgument.rawValue, "\(field) \(what)", APIErrorDetail(field: field))
        }
        guard var u = try? c.nestedUnkeyedContainer(forKey: .init("attributes")) else {
            throw bad("attributes", "must be an array of objects, one per vector, e.g. [{\"price\": 9.5, \"color\": \"red\"}]")
        }
        var out = [[String: AttributeValue]]()
        while !u.isAtEnd {
            let at = "attributes[\(out.count)]"
            guard let o = try? u.nestedContainer(keyedBy: SearchRequest.Key.self) else { throw bad(at, "is not an object") }
            var row = [String: AttributeValue]()
            for key in o.allKeys {
                let k = key.stringValue, field = "\(at).\(k)"
                if let v = try? o.decode(Int64.self, forKey: key) { row[k] = .int(v) }
                else if let v = try? o.decode(Double.self, forKey: key) { row[k] = .float(v) }
                else if let v = try? o.decode(String.self, forKey: key) { row[k] = .category(v) }
                else if let v = try? o.decode(Bool.self, forKey: key) { row[k] = .category(v ? "true" : "false") }
                else if let v = try? o.decode([String].self, forKey: key) { row[k] = .tags(v) }
                else { throw bad(field, "is not a number, a string or an array of strings") }
            }
            out.append(row)
        }
        return out
    }
}

/// `DELETE /v1/indexes/{name}/vectors` body: `labels` (required, non-empty). A value type, `Sendable`.
public struct DeleteRequest: Decodable, Sendable {
    public var labels: [UInt64]

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: SearchRequest.Key.self)
        try refuseUnknownMembers(c, ["labels"], "delete request")
        guard c.contains(.init("labels")), try !c.decodeNil(forKey: .init("labels")) else {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "missing member 'labels': the labels to delete, e.g. {\"labels\": [17, 42]}",
                           APIErrorDetail(field: "labels"))
        }
        labels = try decodeLabels(c, "labels")
    }
}

/// `POST /v1/indexes/{name}/vectors` answer: the batch is durable and searchable in
/// `version` (and every later version of this index). A value type, `Sendable`.
public struct InsertResponse: Codable, Sendable, Equatable {
    public var index: String
    public var generation: Int
    /// Updates in the index's log once this batch was flushed; searches answering with
    /// `version` ≥ this one see the batch.
    public var version: Int
    /// Vectors written (= labels.count).
    public var count: Int
    /// The label of each vector, in request order (given, or assigned after the largest label).
    public var labels: [UInt64]
    public var upsert: Bool
}

/// `DELETE /v1/indexes/{name}/vectors` answer. A value type, `Sendable`.
public struct DeleteResponse: Codable, Sendable, Equatable {
    public var index: String
    public var generation: Int
    /// Updates in the index's log after this delete (unchanged when nothing was deleted).
    public var version: Int
    /// Labels that were in the index and are now deleted (request order).
    public var deleted: [UInt64]
    /// Labels that were not in the index (nothing to do; not an error).
    public var unknown: [UInt64]
}

extension SearchRequest {
    /// The request's queries: its `vector`, or its `vectors` (exactly one of the two given);
    /// `bad(field, message)` makes the 400 otherwise.
    func queries(_ bad: (String, String) -> APIError) throws -> [[Float]] {
        switch (vector, vectors) {
        case (let v?, nil): return [v]
        case (nil, let vs?): return vs
        case (nil, nil): throw bad("vector", "give one query as 'vector' or a batch as 'vectors'")
        default: throw bad("vectors", "give either 'vector' or 'vectors', not both")
        }
    }
}

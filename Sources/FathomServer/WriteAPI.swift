import Fathom
import Foundation
import Hummingbird

// The write routes: `POST` and `DELETE /v1/indexes/{name}/vectors` (docs/serve.md, "Writes").
//
// A write runs on its index's write queue (``ServedIndex/write(queueLimit:_:)``), one at a
// time: the server checks the whole request against the writer's state, then calls the
// library once (the batch insert checks, logs, applies and flushes: one fsync), then
// publishes the writer's new snapshot to the generation. A refused request changes nothing;
// a 200 means durable (fsync'd) and visible to every search that starts after it.

extension API {
    /// The writable index `name` and the write's decoded body (the write body limit applies).
    /// - Throws: not served; read-only; a bad or oversized body.
    private func writeRequest<T: Decodable>(_ type: T.Type, _ name: String, _ req: Request, example: String) async throws -> (ServedIndex, T) {
        let s = try served(name)
        guard s.writable else { throw WriteRefusal.readOnly(name: name) }
        return (s, try await decodeBody(type, req, limit: configuration.maxWriteBodyBytes, index: name, example: example))
    }

    /// `POST /v1/indexes/{name}/vectors`: insert (or upsert) a batch, all or nothing.
    func insert(_ name: String, _ req: Request, log: inout RequestLog) async throws -> Response {
        let (s, r) = try await writeRequest(InsertRequest.self, name, req, example: "{\"vectors\": [[0.1, 0.2]], \"labels\": [17]}")
        let c = configuration
        log.rows = r.vectors.count; log.upsert = r.upsert
        func bad(_ field: String, _ message: String) -> APIError {
            APIError(400, FathomError.Code.invalidArgument.rawValue, message, APIErrorDetail(field: field, index: name))
        }
        guard !r.vectors.isEmpty else { throw bad("vectors", "'vectors' is empty: a batch needs at least one vector") }
        if let ls = r.labels {
            guard ls.count == r.vectors.count else {
                throw bad("labels", "\(ls.count) labels for \(r.vectors.count) vectors: give one label per vector (or none for a plain insert)")
            }
            var seen = [UInt64: Int](minimumCapacity: ls.count)
            for (i, l) in ls.enumerated() {
                if let j = seen[l] { throw bad("labels[\(i)]", "labels[\(i)] = \(l) repeats labels[\(j)]: a label appears once per batch") }
                seen[l] = i
            }
        } else if r.upsert {
            throw bad("labels", "an upsert needs 'labels': the labels whose vectors are replaced (or inserted)")
        }
        if let a = r.attributes, a.count != r.vectors.count {
            throw bad("attributes", "\(a.count) attribute objects for \(r.vectors.count) vectors: give one per vector")
        }
        let request = r
        let m = metrics
        let answer = try await s.write(queueLimit: c.queueLimit) { g, w -> InsertResponse in
            let snap = w.snapshot()
            let d = snap.dimension
            for (i, v) in request.vectors.enumerated() {
                guard v.count == d else {
                    throw APIError(400, FathomError.Code.dimensionMismatch.rawValue,
                                   "vectors[\(i)] has \(v.count) values, the index '\(name)' has dimension \(d); nothing was written",
                                   APIErrorDetail(field: "vectors[\(i)]", expected: d, actual: v.count, index: name))
                }
                if snap.metric == .cosine, !v.contains(where: { $0 != 0 }) {
                    throw APIError(400, FathomError.Code.invalidArgument.rawValue,
                                   "vectors[\(i)] is all zeros: it has no direction under the cosine metric; nothing was written",
                                   APIErrorDetail(field: "vectors[\(i)]", index: name))
                }
            }
            let labels: [UInt64]
            if let given = request.labels {
                if !request.upsert {
                    for (i, l) in given.enumerated() where w.contains(l) {
                        throw APIError(409, ServeErrorCode.labelExists,
                                       "labels[\(i)] = \(l) is already in the index '\(name)': send \"upsert\": true to replace its vector; nothing was written",
                                       APIErrorDetail(field: "labels[\(i)]", index: name))
                    }
                }
                labels = given
            } else {
                // As `fathom insert` without --labels: continue after the largest label.
                let first = w.maxLabel.map { $0 &+ 1 } ?? 0
                let n = UInt64(request.vectors.count)
                guard w.maxLabel != .max, first.addingReportingOverflow(n - 1).overflow == false else {
                    throw APIError(400, FathomError.Code.invalidArgument.rawValue,
                                   "labels after the largest label (\(w.maxLabel ?? 0)) would pass 2^64 − 1: give 'labels'",
                                   APIErrorDetail(field: "labels", index: name))
                }
                labels = (0..<n).map { first + $0 }
            }
            var flat = [Float]()
            flat.reserveCapacity(request.vectors.count * d)
            for v in request.vectors { flat.append(contentsOf: v) }
            do {
                try flat.withUnsafeBufferPointer { try w.insert(labels: labels, vectors: $0, replace: request.upsert, attributes: request.attributes) }
            } catch let e as FathomError where e.code == .invalidArgument && e.message.contains("attribute") {
                // The attributes are checked by the library (the index's columns and values):
                // "row 3: attribute column …" names attributes[3].
                let row = e.message.hasPrefix("row ") ? Int(e.message.dropFirst(4).prefix { $0.isNumber }) : nil
                let field = row.map { "attributes[\($0)]" } ?? "attributes"
                let message = row == nil ? e.message : String(e.message.drop { $0 != ":" }.dropFirst(2))
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "\(field): \(message); nothing was written",
                               APIErrorDetail(field: field, index: name))
            } catch let e as FathomError where ServedIndex.inputErrors.contains(e.code) {
                // The checks above cover what the library checks; this keeps its word if they differ.
                throw APIError(e, index: name)
            }
            let version = w.loggedUpdates
            g.publish(w.snapshot(), version: version)
            m.written(index: name, op: request.upsert ? "upsert" : "insert", count: labels.count)
            return InsertResponse(index: name, generation: g.number, version: version, count: labels.count,
                                  labels: labels, upsert: request.upsert)
        }
        log.generation = answer.generation; log.version = answer.version
        return jsonResponse(answer)
    }

    /// `DELETE /v1/indexes/{name}/vectors`: delete labels (unknown ones are reported, not an error).
    func delete(_ name: String, _ req: Request, log: inout RequestLog) async throws -> Response {
        let (s, r) = try await writeRequest(DeleteRequest.self, name, req, example: "{\"labels\": [17, 42]}")
        let c = configuration
        log.rows = r.labels.count
        guard !r.labels.isEmpty else {
            throw APIError(400, FathomError.Code.invalidArgument.rawValue, "'labels' is empty: name at least one label to delete",
                           APIErrorDetail(field: "labels", index: name))
        }
        var seen = [UInt64: Int](minimumCapacity: r.labels.count)
        for (i, l) in r.labels.enumerated() {
            if let j = seen[l] {
                throw APIError(400, FathomError.Code.invalidArgument.rawValue, "labels[\(i)] = \(l) repeats labels[\(j)]: a label appears once per request",
                               APIErrorDetail(field: "labels[\(i)]", index: name))
            }
            seen[l] = i
        }
        let labels = r.labels
        let m = metrics
        let answer = try await s.write(queueLimit: c.queueLimit) { g, w -> DeleteResponse in
            var deleted = [UInt64](), unknown = [UInt64]()
            for l in labels {
                if try w.delete(label: l) { deleted.append(l) } else { unknown.append(l) }
            }
            var version = g.version ?? w.loggedUpdates
            if !deleted.isEmpty {
                try w.flush()
                version = w.loggedUpdates
                g.publish(w.snapshot(), version: version)
                m.written(index: name, op: "delete", count: deleted.count)
            }
            return DeleteResponse(index: name, generation: g.number, version: version, deleted: deleted, unknown: unknown)
        }
        log.generation = answer.generation; log.version = answer.version
        return jsonResponse(answer)
    }
}

import AsyncHTTPClient
import Crypto
import FathomCore
import FathomStorage
import Foundation
import NIOCore
import NIOHTTP1

/// Where an index lives in a store: `s3://BUCKET/PREFIX` (objects `PREFIX/NAME`).
///
/// Thread safety: an immutable value, `Sendable`.
public struct S3Location: Sendable, Equatable, CustomStringConvertible {
    /// The bucket.
    public var bucket: String
    /// The key prefix, without leading or trailing `/` (not empty).
    public var prefix: String

    /// Parses `s3://BUCKET/PREFIX`; anything else is an `invalidArgument` error.
    public init(_ url: String) throws {
        guard url.hasPrefix("s3://") else {
            throw FathomError(.invalidArgument, "'\(url)' is not an s3:// location: write s3://BUCKET/PREFIX")
        }
        let rest = url.dropFirst(5)
        guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex else {
            throw FathomError(.invalidArgument, "'\(url)' names no key prefix: write s3://BUCKET/PREFIX (an index is the objects under PREFIX/)")
        }
        let p = rest[rest.index(after: slash)...].split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
        guard !p.isEmpty else {
            throw FathomError(.invalidArgument, "'\(url)' names no key prefix: write s3://BUCKET/PREFIX (an index is the objects under PREFIX/)")
        }
        guard !p.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else {
            throw FathomError(.invalidArgument, "'\(url)': a prefix may not hold '.' or '..' components (it also names the cache directory)")
        }
        bucket = String(rest[..<slash]); prefix = p
    }

    /// `s3://BUCKET/PREFIX`, the form ``init(_:)`` parses.
    public static func isObjectStoreURL(_ s: String) -> Bool { s.hasPrefix("s3://") }

    /// The key of `name` under the prefix.
    public func key(_ name: String) -> String { prefix + "/" + name }

    public var description: String { "s3://\(bucket)/\(prefix)" }
}

/// What a HEAD (or a listing) says about an object.
///
/// Thread safety: an immutable value, `Sendable`.
public struct S3ObjectInfo: Sendable, Equatable {
    /// The object's key.
    public var key: String
    /// Its size in bytes.
    public var size: UInt64
    /// Its ETag, without quotes (for a single PUT on most stores: the MD5 of the bytes).
    public var etag: String
    /// Its user metadata (`x-amz-meta-NAME`, names lowercased without the prefix); empty in listings.
    public var metadata: [String: String]
}

/// A small S3 client: path-style requests to one endpoint, SigV4-signed, streaming files in
/// and out (a part at most in memory, never a whole file): PUT (single for files up to
/// ``partSize``, multipart above it, each request with `Content-MD5` and its signed SHA-256
/// so that the store refuses bytes that changed on the way), GET to a file, HEAD, LIST.
/// Failed requests (connection errors, 5xx, 429) are retried ``maxAttempts`` times in all.
///
/// Thread safety: immutable after init, `Sendable`; any number of requests may run at once.
public final class S3Client: Sendable {
    /// The endpoint, e.g. `http://127.0.0.1:8333` (path-style: `ENDPOINT/BUCKET/KEY`).
    public let endpoint: URL
    /// Credentials and region the requests are signed with.
    public let credentials: S3Credentials
    /// Files larger than this are uploaded in parts of this size (S3: 5 MiB to 5 GiB).
    public let partSize: Int
    /// Tries per request (the first and the retries).
    public let maxAttempts: Int
    /// The timeout of one request (a part, a GET of a whole file).
    public let requestTimeout: TimeAmount
    private let http: HTTPClient
    private let hostHeader: String
    /// `scheme://host[:port]`, without the endpoint's path (requests add it).
    private let origin: String
    private let basePath: String

    /// A client of `endpoint` (`http://` or `https://HOST[:PORT]`, path-style addressing).
    /// An endpoint that is no such URL is an `invalidArgument` error.
    public init(endpoint: String, credentials: S3Credentials, partSize: Int = 64 << 20, maxAttempts: Int = 4,
                requestTimeout: TimeAmount = .hours(2)) throws {
        guard let u = URL(string: endpoint), let scheme = u.scheme?.lowercased(), scheme == "http" || scheme == "https", let host = u.host, !host.isEmpty else {
            throw FathomError(.invalidArgument, "object-store endpoint '\(endpoint)' is not an http:// or https:// URL (e.g. http://127.0.0.1:8333)")
        }
        guard partSize >= 1 << 20 else { throw FathomError(.invalidArgument, "part size \(partSize) is below 1 MiB") }
        self.endpoint = u
        self.credentials = credentials
        self.partSize = partSize
        self.maxAttempts = max(1, maxAttempts)
        self.requestTimeout = requestTimeout
        let defaultPort = scheme == "https" ? 443 : 80
        let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host   // an IPv6 literal
        hostHeader = (u.port.map { $0 == defaultPort ? h : "\(h):\($0)" } ?? h)
        origin = "\(scheme)://" + h + (u.port.map { ":\($0)" } ?? "")
        let p = u.path.hasSuffix("/") ? String(u.path.dropLast()) : u.path
        basePath = p
        http = HTTPClient.shared
    }

    // MARK: requests

    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    /// The canonical (encoded) path of an object or bucket.
    func path(bucket: String, key: String?) -> String {
        SigV4.uriEncode(basePath, keepSlash: true) + "/" + SigV4.uriEncode(bucket, keepSlash: false)
            + (key.map { "/" + SigV4.uriEncode($0, keepSlash: true) } ?? "")
    }

    func signedRequest(method: HTTPMethod, bucket: String, key: String?, query: [(String, String)] = [],
                       headers extra: [(String, String)] = [], payloadHash: String) -> HTTPClientRequest {
        let canonicalURI = path(bucket: bucket, key: key)
        let q = SigV4.canonicalQuery(query)
        var req = HTTPClientRequest(url: origin + canonicalURI + (q.isEmpty ? "" : "?" + q))
        req.method = method
        let date = SigV4.amzDate(Date())
        var h: [(String, String)] = [("host", hostHeader), ("x-amz-date", date), ("x-amz-content-sha256", payloadHash)]
        if let t = credentials.sessionToken { h.append(("x-amz-security-token", t)) }
        h += extra
        let auth = SigV4.authorization(method: method.rawValue, canonicalURI: canonicalURI, query: query, headers: h,
                                       payloadHash: payloadHash, credentials: credentials, amzDate: date)
        for (k, v) in h { req.headers.replaceOrAdd(name: k == "host" ? "Host" : k, value: v) }
        req.headers.replaceOrAdd(name: "Authorization", value: auth)
        return req
    }

    /// What the request was, for messages: `PUT s3://bucket/key`.
    static func what(_ method: HTTPMethod, _ bucket: String, _ key: String?) -> String {
        "\(method.rawValue) s3://\(bucket)/\(key ?? "")"
    }

    /// Sends a request built by `make` (called again for each try), collecting a body of at
    /// most 4 MiB (XML answers and error documents). Retries connection failures, 5xx and 429.
    func send(_ what: String, _ make: () throws -> HTTPClientRequest) async throws -> Response {
        var attempt = 0
        while true {
            attempt += 1
            do {
                let r = try await http.execute(try make(), timeout: requestTimeout)
                let body = try await r.body.collect(upTo: 4 << 20)
                let status = Int(r.status.code)
                if (status >= 500 || status == 429) && attempt < maxAttempts {
                    try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1))
                    continue
                }
                return Response(status: status, headers: r.headers, body: body)
            } catch let e as FathomError {
                throw e
            } catch {
                if attempt < maxAttempts {
                    try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1))
                    continue
                }
                throw FathomError(.io, "\(what) at \(endpoint.absoluteString) failed after \(attempt) tries; check that the endpoint is right and the store is up", cause: error)
            }
        }
    }

    /// The error for a non-2xx answer: status, the store's code and message, and what to do.
    func failure(_ what: String, _ r: Response) -> FathomError {
        let body = String(buffer: r.body)
        let code = XMLScan.first("Code", in: body) ?? ""
        let message = XMLScan.first("Message", in: body) ?? ""
        var hint = ""
        switch (r.status, code) {
        case (403, _), (_, "SignatureDoesNotMatch"), (_, "InvalidAccessKeyId"):
            hint = "; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION for this store"
        case (_, "NoSuchBucket"): hint = "; create the bucket first"
        case (404, _): hint = "; check the bucket and prefix"
        case (_, "BadDigest"), (_, "XAmzContentSHA256Mismatch"), (_, "InvalidDigest"):
            hint = "; the bytes changed between the local file and the store (network or disk): push again"
        default: break
        }
        let detail = [code, message].filter { !$0.isEmpty }.joined(separator: ": ")
        return FathomError(r.status == 404 ? .fileNotFound : .io,
                           "\(what) at \(endpoint.absoluteString): HTTP \(r.status)\(detail.isEmpty ? "" : " " + detail)\(hint)")
    }

    // MARK: operations

    /// Creates `bucket`; one that exists and is owned by these credentials is not an error.
    public func createBucket(_ bucket: String) async throws {
        let what = Self.what(.PUT, bucket, nil)
        let r = try await send(what) { signedRequest(method: .PUT, bucket: bucket, key: nil, payloadHash: SigV4.emptyPayloadHash) }
        if (200..<300).contains(r.status) { return }
        let code = XMLScan.first("Code", in: String(buffer: r.body))
        if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" { return }
        throw failure(what, r)
    }

    /// HEAD of an object: its size, ETag and metadata, or nil if there is no such object.
    public func headObject(bucket: String, key: String) async throws -> S3ObjectInfo? {
        let what = Self.what(.HEAD, bucket, key)
        let r = try await send(what) { signedRequest(method: .HEAD, bucket: bucket, key: key, payloadHash: SigV4.emptyPayloadHash) }
        if r.status == 404 { return nil }
        guard (200..<300).contains(r.status) else { throw failure(what, r) }
        return Self.info(key: key, headers: r.headers)
    }

    static func info(key: String, headers: HTTPHeaders) -> S3ObjectInfo {
        var meta = [String: String]()
        for (name, value) in headers where name.lowercased().hasPrefix("x-amz-meta-") {
            meta[String(name.lowercased().dropFirst("x-amz-meta-".count))] = value
        }
        return S3ObjectInfo(key: key, size: headers.first(name: "content-length").flatMap { UInt64($0) } ?? 0,
                            etag: (headers.first(name: "etag") ?? "").replacingOccurrences(of: "\"", with: ""), metadata: meta)
    }

    /// Every object whose key starts with `prefix` (ListObjectsV2, all pages), in key order.
    public func listObjects(bucket: String, prefix: String) async throws -> [S3ObjectInfo] {
        var out = [S3ObjectInfo]()
        var token: String? = nil
        repeat {
            var q: [(String, String)] = [("list-type", "2"), ("prefix", prefix)]
            if let t = token { q.append(("continuation-token", t)) }
            let what = "LIST s3://\(bucket)/\(prefix)"
            let query = q
            let r = try await send(what) { signedRequest(method: .GET, bucket: bucket, key: nil, query: query, payloadHash: SigV4.emptyPayloadHash) }
            guard (200..<300).contains(r.status) else { throw failure(what, r) }
            let body = String(buffer: r.body)
            for c in XMLScan.blocks("Contents", in: body) {
                guard let k = XMLScan.first("Key", in: c) else { continue }
                out.append(S3ObjectInfo(key: k, size: XMLScan.first("Size", in: c).flatMap { UInt64($0) } ?? 0,
                                        etag: (XMLScan.first("ETag", in: c) ?? "").replacingOccurrences(of: "\"", with: ""), metadata: [:]))
            }
            token = XMLScan.first("IsTruncated", in: body) == "true" ? XMLScan.first("NextContinuationToken", in: body) : nil
        } while token != nil
        return out
    }

    /// Deletes an object (no error if it is absent).
    public func deleteObject(bucket: String, key: String) async throws {
        let what = Self.what(.DELETE, bucket, key)
        let r = try await send(what) { signedRequest(method: .DELETE, bucket: bucket, key: key, payloadHash: SigV4.emptyPayloadHash) }
        guard (200..<300).contains(r.status) || r.status == 404 else { throw failure(what, r) }
    }

    /// Stores bytes in memory (small objects: manifests, tests).
    public func putObject(bucket: String, key: String, data: [UInt8], metadata: [String: String] = [:]) async throws {
        let what = Self.what(.PUT, bucket, key)
        let sha = SigV4.hex(SHA256.hash(data: data))
        let md5 = Data(Insecure.MD5.hash(data: data)).base64EncodedString()
        var h: [(String, String)] = [("content-md5", md5), ("content-length", String(data.count))]
        h += metadata.map { ("x-amz-meta-" + $0.key, $0.value) }
        let headers = h
        let r = try await send(what) {
            var req = signedRequest(method: .PUT, bucket: bucket, key: key, headers: headers, payloadHash: sha)
            req.body = .bytes(ByteBuffer(bytes: data))
            return req
        }
        guard (200..<300).contains(r.status) else { throw failure(what, r) }
    }

    /// Uploads the file at `path` to `key`, streamed: a single PUT up to ``partSize``, a
    /// multipart upload above (aborted on failure). Each request carries the `Content-MD5`
    /// and signed SHA-256 of its bytes, computed in a first read of them, so the store
    /// verifies what arrives. `check` sees the CRC32C of the whole file (after the first
    /// read, before the upload completes) and throws to refuse it. `progress` gets byte counts.
    ///
    /// `declaredCRC32C`, for a single PUT, is sent as `x-amz-checksum-crc32c` (the checksum
    /// the caller expects, e.g. the manifest's): a store that supports additional checksums
    /// then refuses bytes that do not have it.
    public func uploadFile(path: String, bucket: String, key: String, metadata: [String: String] = [:],
                           declaredCRC32C: UInt32? = nil,
                           check: (@Sendable (UInt32) throws -> Void)? = nil,
                           progress: (@Sendable (UInt64) -> Void)? = nil) async throws {
        let file = try RandomAccessFile(path: path)
        let meta = metadata.map { ("x-amz-meta-" + $0.key, $0.value) }
        if file.size <= UInt64(partSize) {
            let d = try Self.digest(file, at: 0, count: file.size, crc: 0)
            try check?(d.crc)
            let declared = declaredCRC32C.map { c -> [(String, String)] in
                let be = [UInt8(c >> 24), UInt8((c >> 16) & 0xff), UInt8((c >> 8) & 0xff), UInt8(c & 0xff)]
                return [("x-amz-checksum-crc32c", Data(be).base64EncodedString())]
            } ?? []
            _ = try await putPart(file: file, at: 0, count: file.size, digest: d, what: Self.what(.PUT, bucket, key), progress: progress) { hash, extra in
                signedRequest(method: .PUT, bucket: bucket, key: key, headers: extra + declared + meta, payloadHash: hash)
            }
            return
        }
        // Multipart: initiate, parts, complete (abort on any failure).
        let initWhat = "initiate multipart upload of s3://\(bucket)/\(key)"
        let ir = try await send(initWhat) {
            signedRequest(method: .POST, bucket: bucket, key: key, query: [("uploads", "")], headers: meta, payloadHash: SigV4.emptyPayloadHash)
        }
        guard (200..<300).contains(ir.status), let uploadId = XMLScan.first("UploadId", in: String(buffer: ir.body)) else { throw failure(initWhat, ir) }
        do {
            var etags = [String]()
            var crc: UInt32 = 0
            var at: UInt64 = 0
            var number = 1
            while at < file.size {
                let n = min(UInt64(partSize), file.size - at)
                let d = try Self.digest(file, at: at, count: n, crc: crc)
                crc = d.crc
                if at + n == file.size { try check?(crc) }
                let q = [("partNumber", String(number)), ("uploadId", uploadId)]
                let r = try await putPart(file: file, at: at, count: n, digest: d, what: "PUT part \(number) of s3://\(bucket)/\(key)", progress: progress) { hash, extra in
                    signedRequest(method: .PUT, bucket: bucket, key: key, query: q, headers: extra, payloadHash: hash)
                }
                guard let etag = r.headers.first(name: "etag") else {
                    throw FathomError(.io, "PUT part \(number) of s3://\(bucket)/\(key): the store returned no ETag")
                }
                etags.append(etag)
                at += n; number += 1
            }
            var xml = "<CompleteMultipartUpload>"
            for (i, e) in etags.enumerated() { xml += "<Part><PartNumber>\(i + 1)</PartNumber><ETag>\(e)</ETag></Part>" }
            xml += "</CompleteMultipartUpload>"
            let body = Array(xml.utf8)
            let what = "complete multipart upload of s3://\(bucket)/\(key)"
            let r = try await send(what) {
                var req = signedRequest(method: .POST, bucket: bucket, key: key, query: [("uploadId", uploadId)],
                                        headers: [("content-length", String(body.count))], payloadHash: SigV4.hex(SHA256.hash(data: body)))
                req.body = .bytes(ByteBuffer(bytes: body))
                return req
            }
            // S3 may answer 200 with an error document.
            guard (200..<300).contains(r.status), XMLScan.first("Code", in: String(buffer: r.body)) == nil else { throw failure(what, r) }
        } catch {
            _ = try? await send("abort multipart upload") {
                signedRequest(method: .DELETE, bucket: bucket, key: key, query: [("uploadId", uploadId)], payloadHash: SigV4.emptyPayloadHash)
            }
            throw error
        }
    }

    struct Digest { var sha256: String; var md5: String; var crc: UInt32 }

    /// SHA-256, MD5 and (continued) CRC32C of `count` bytes of `file` at `at`, read in 4 MiB blocks.
    static func digest(_ file: RandomAccessFile, at: UInt64, count: UInt64, crc start: UInt32) throws -> Digest {
        let block = 4 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
        defer { buf.deallocate() }
        var sha = SHA256(), md5 = Insecure.MD5()
        var crc = start
        var off: UInt64 = 0
        while off < count {
            let k = Int(min(UInt64(block), count - off))
            try file.read(into: buf, count: k, at: at + off)
            let b = UnsafeRawBufferPointer(start: buf, count: k)
            sha.update(bufferPointer: b); md5.update(bufferPointer: b)
            crc = crc32c(buf, k, crc)
            off += UInt64(k)
        }
        return Digest(sha256: SigV4.hex(sha.finalize()), md5: Data(md5.finalize()).base64EncodedString(), crc: crc)
    }

    /// One streamed PUT of `count` bytes of `file` at `at`; retries restart the stream.
    func putPart(file: RandomAccessFile, at: UInt64, count: UInt64, digest d: Digest, what: String,
                 progress: (@Sendable (UInt64) -> Void)?,
                 _ request: (String, [(String, String)]) -> HTTPClientRequest) async throws -> Response {
        let extra = [("content-md5", d.md5), ("content-length", String(count))]
        let firstTry = ByteCounter()   // what the first try reported; a later success reports the rest
        var attempt = 0
        while true {
            attempt += 1
            var req = request(d.sha256, extra)
            req.body = .stream(FileChunks(file: file, start: at, count: count, counter: attempt == 1 ? firstTry : ByteCounter(),
                                          progress: attempt == 1 ? progress : nil),
                               length: .known(Int64(count)))
            do {
                let r = try await http.execute(req, timeout: requestTimeout)
                let body = try await r.body.collect(upTo: 4 << 20)
                let resp = Response(status: Int(r.status.code), headers: r.headers, body: body)
                if (resp.status >= 500 || resp.status == 429) && attempt < maxAttempts {
                    try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1)); continue
                }
                guard (200..<300).contains(resp.status) else { throw failure(what, resp) }
                if attempt > 1, let progress { progress(count - Swift.min(count, firstTry.value)) }
                return resp
            } catch let e as FathomError {
                throw e
            } catch {
                if attempt < maxAttempts { try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1)); continue }
                throw FathomError(.io, "\(what) at \(endpoint.absoluteString) failed after \(attempt) tries; check that the endpoint is right and the store is up", path: file.path, cause: error)
            }
        }
    }

    /// Downloads `key` into `path` (created or truncated), streamed, and fsyncs it. Returns
    /// the object's HEAD-like info (size, ETag, metadata) and the CRC32C of the bytes
    /// written. No such object is a `fileNotFound` error naming it.
    public func downloadFile(bucket: String, key: String, to path: String,
                             progress: (@Sendable (UInt64) -> Void)? = nil) async throws -> (info: S3ObjectInfo, crc32c: UInt32) {
        let what = Self.what(.GET, bucket, key)
        var attempt = 0
        while true {
            attempt += 1
            let writer = try SequentialFileWriter(path: path)
            var crc: UInt32 = 0
            var written: UInt64 = 0
            do {
                let r = try await http.execute(signedRequest(method: .GET, bucket: bucket, key: key, payloadHash: SigV4.emptyPayloadHash),
                                               timeout: requestTimeout)
                let status = Int(r.status.code)
                guard (200..<300).contains(status) else {
                    let body = try await r.body.collect(upTo: 4 << 20)
                    let resp = Response(status: status, headers: r.headers, body: body)
                    if (status >= 500 || status == 429) && attempt < maxAttempts {
                        try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1)); continue
                    }
                    throw failure(what, resp)
                }
                for try await chunk in r.body {
                    try chunk.withUnsafeReadableBytes { b in
                        guard b.count > 0 else { return }
                        try writer.write(b.baseAddress!, count: b.count)
                        crc = crc32c(b.baseAddress!, b.count, crc)
                    }
                    written += UInt64(chunk.readableBytes)
                    if attempt == 1 { progress?(UInt64(chunk.readableBytes)) }
                }
                try writer.finish()
                let info = Self.info(key: key, headers: r.headers)
                if let len = r.headers.first(name: "content-length").flatMap({ UInt64($0) }), len != written {
                    throw FathomError(.io, "\(what): the store announced \(len) bytes and sent \(written): the transfer was cut; pull again", path: path)
                }
                return (info, crc)
            } catch let e as FathomError {
                throw e
            } catch {
                if attempt < maxAttempts { try await Task.sleep(nanoseconds: UInt64(200_000_000) << (attempt - 1)); continue }
                throw FathomError(.io, "\(what) at \(endpoint.absoluteString) failed after \(attempt) tries; check that the endpoint is right and the store is up", path: path, cause: error)
            }
        }
    }

    /// Downloads a small object (at most `limit` bytes) into memory.
    public func getObject(bucket: String, key: String, limit: Int = 64 << 20) async throws -> (info: S3ObjectInfo, data: [UInt8]) {
        let what = Self.what(.GET, bucket, key)
        let r = try await send(what) { signedRequest(method: .GET, bucket: bucket, key: key, payloadHash: SigV4.emptyPayloadHash) }
        guard (200..<300).contains(r.status) else { throw failure(what, r) }
        return (Self.info(key: key, headers: r.headers), Array(r.body.readableBytesView))
    }
}

/// Bytes handed to the transport so far (to report progress once across retries).
final class ByteCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n: UInt64 = 0
    func add(_ k: UInt64) { lock.lock(); n += k; lock.unlock() }
    var value: UInt64 { lock.lock(); defer { lock.unlock() }; return n }
}

/// A byte range of a file as a sequence of 1 MiB buffers, read on demand (the transport's
/// back-pressure bounds what is in memory).
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let file: RandomAccessFile
    let start: UInt64
    let count: UInt64
    let counter: ByteCounter
    let progress: (@Sendable (UInt64) -> Void)?

    struct AsyncIterator: AsyncIteratorProtocol {
        let chunks: FileChunks
        var off: UInt64 = 0
        mutating func next() async throws -> ByteBuffer? {
            guard off < chunks.count else { return nil }
            let k = Int(Swift.min(UInt64(1 << 20), chunks.count - off))
            var buf = ByteBufferAllocator().buffer(capacity: k)
            let at = chunks.start + off
            let file = chunks.file
            _ = try buf.writeWithUnsafeMutableBytes(minimumWritableBytes: k) { p in
                try file.read(into: p.baseAddress!, count: k, at: at)
                return k
            }
            off += UInt64(k)
            chunks.counter.add(UInt64(k))
            chunks.progress?(UInt64(k))
            return buf
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(chunks: self) }
}

/// The few fields of S3's flat XML answers, without a DOM.
enum XMLScan {
    /// The text of the first `<tag>…</tag>` in `s`, entities decoded.
    static func first(_ tag: String, in s: String) -> String? {
        guard let a = s.range(of: "<\(tag)>"), let b = s.range(of: "</\(tag)>", range: a.upperBound..<s.endIndex) else { return nil }
        return unescape(String(s[a.upperBound..<b.lowerBound]))
    }

    /// The inner text of every `<tag>…</tag>` block.
    static func blocks(_ tag: String, in s: String) -> [String] {
        var out = [String]()
        var from = s.startIndex
        while let a = s.range(of: "<\(tag)>", range: from..<s.endIndex), let b = s.range(of: "</\(tag)>", range: a.upperBound..<s.endIndex) {
            out.append(String(s[a.upperBound..<b.lowerBound]))
            from = b.upperBound
        }
        return out
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("&") else { return s }
        return s.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&#39;", with: "'").replacingOccurrences(of: "&amp;", with: "&")
    }
}

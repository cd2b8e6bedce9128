import Fathom
import FathomCore
import FathomObjectStore
import FathomStorage
import FathomTestSupport
import Foundation
import Testing

/// A small index built in `dir` (2000 × 16, synthetic) and its queries.
func buildSmallIndex(_ dir: TempDir, name: String = "idx") throws -> (path: String, queries: [[Float]]) {
    let d = 16, nq = 20
    let (_, q) = try writeSynthetic(dir: dir, n: 2000, d: d, nq: nq, seed: 11)
    var o = BuildOptions()
    o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 2
    try IndexBuilder(input: dir.file("base.fbin"), output: dir.file(name), options: o).build()
    return (dir.file(name), (0..<nq).map { Array(UnsafeBufferPointer(start: q.row($0), count: d)) })
}

func files(in dir: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
}

func bytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

func searchAll(_ path: String, _ queries: [[Float]]) throws -> [[Neighbor]] {
    let idx = try VectorIndex.open(at: path, io: .pread)
    var p = SearchParameters(); p.probes = 8
    return try queries.map { try idx.search($0, k: 10, parameters: p) }
}

/// Flips one byte in the middle of an object in the store (same size, new bytes).
func corruptObject(_ client: S3Client, bucket: String, key: String) async throws -> [UInt8] {
    var (_, data) = try await client.getObject(bucket: bucket, key: key)
    data[data.count / 2] ^= 0x5a
    try await client.putObject(bucket: bucket, key: key, data: data)
    return data
}

@Suite(.serialized) struct ObjectStoreTests {
    /// SigV4 against the worked example of the S3 documentation ("Signature Calculations for
    /// the Authorization Header", GET Object with a Range header).
    @Test func sigV4MatchesTheDocumentedExample() {
        let c = S3Credentials(accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1")
        let auth = SigV4.authorization(method: "GET", canonicalURI: "/test.txt", query: [],
                                       headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
                                                 ("x-amz-content-sha256", SigV4.emptyPayloadHash), ("x-amz-date", "20130524T000000Z")],
                                       payloadHash: SigV4.emptyPayloadHash, credentials: c, amzDate: "20130524T000000Z")
        #expect(auth == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(SigV4.uriEncode("a b/c~d", keepSlash: true) == "a%20b/c~d")
        #expect(SigV4.canonicalQuery([("uploadId", "x/y"), ("partNumber", "2")]) == "partNumber=2&uploadId=x%2Fy")
    }

    @Test func locationsParse() throws {
        let l = try S3Location("s3://bucket/shards/3/")
        #expect(l.bucket == "bucket" && l.prefix == "shards/3" && l.key("manifest.json") == "shards/3/manifest.json")
        #expect(throws: FathomError.self) { try S3Location("s3://bucket") }
        #expect(throws: FathomError.self) { try S3Location("s3://bucket/../x") }
        #expect(throws: FathomError.self) { try S3Location("/local/dir") }
    }

    /// The whole round trip against a real SeaweedFS server: push an index, pull it into an
    /// empty cache (byte-equal, same search results), pull again (nothing downloaded), repair
    /// a damaged cached file, refuse a damaged local index on push, and refuse an object
    /// damaged in the store (naming it and both checksums, the cache left as it was).
    @Test func pushPullRoundTripAgainstRealServer() async throws {
        let bucket = "fathom-test"
        let server = try await S3TestServer(bucket: bucket)
        defer { server.stop() }
        let client = try server.client()
        let work = TempDir("fathom-s3-work")
        let (index, queries) = try buildSmallIndex(work)
        let location = try S3Location("s3://\(bucket)/indexes/small")

        // Push: every file the manifest lists, manifest last.
        let pushed = try await IndexTransfer.push(directory: index, to: location, client: client)
        #expect(pushed.files.last == "manifest.json")
        #expect(Set(pushed.files) == Set(try files(in: index)))
        let listed = try await client.listObjects(bucket: bucket, prefix: "indexes/small/")
        #expect(Set(listed.map(\.key)) == Set(pushed.files.map { location.key($0) }))
        for f in try files(in: index) {
            let info = try await client.headObject(bucket: bucket, key: location.key(f))
            #expect(info?.size == UInt64(bytes(index + "/" + f).count))
            #expect(info?.metadata[IndexTransfer.checksumMetadata]?.count == 8)
        }

        // Pull into an empty cache: byte-equal files, identical search results.
        let cache = work.file("cache")
        let pulled = try await IndexTransfer.pull(from: location, client: client, cache: cache)
        #expect(pulled.directory == cache + "/\(bucket)/indexes/small")
        #expect(!pulled.upToDate && pulled.reused.isEmpty)
        #expect(try files(in: pulled.directory) == (try files(in: index)))
        for f in try files(in: index) { #expect(bytes(pulled.directory + "/" + f) == bytes(index + "/" + f), "\(f) differs") }
        #expect(IndexVerifier.verify(directory: pulled.directory, progress: .silent).isEmpty)
        #expect(try searchAll(pulled.directory, queries) == (try searchAll(index, queries)))

        // Again: the cache verifies, nothing is downloaded.
        let again = try await IndexTransfer.pull(from: location, client: client, cache: cache)
        #expect(again.upToDate && again.downloaded.isEmpty && again.bytes == 0)

        // A damaged cached file is downloaded again (only that one).
        var v = bytes(pulled.directory + "/vectors.dat")
        v[v.count - 5] ^= 0xff
        try Data(v).write(to: URL(fileURLWithPath: pulled.directory + "/vectors.dat"))
        let repaired = try await IndexTransfer.pull(from: location, client: client, cache: cache)
        #expect(repaired.downloaded == ["vectors.dat"])
        #expect(bytes(repaired.directory + "/vectors.dat") == bytes(index + "/vectors.dat"))

        // A damaged local index is refused before its bad file is stored.
        let damaged = work.file("damaged")
        try FileManager.default.copyItem(atPath: index, toPath: damaged)
        var h = bytes(damaged + "/heads.bin")
        h[h.count - 1] ^= 0x01
        try Data(h).write(to: URL(fileURLWithPath: damaged + "/heads.bin"))
        let other = try S3Location("s3://\(bucket)/indexes/damaged")
        let pushError = await #expect(throws: FathomError.self) {
            _ = try await IndexTransfer.push(directory: damaged, to: other, client: client)
        }
        #expect(pushError?.code == .corruptIndex && pushError?.path == damaged + "/heads.bin" && pushError?.message.contains("differs from") == true,
                "\(String(describing: pushError))")
        #expect(try await client.headObject(bucket: bucket, key: other.key("manifest.json")) == nil)
        #expect(try await client.headObject(bucket: bucket, key: other.key("heads.bin")) == nil)

        // An object damaged in the store: a pull into an empty cache refuses it, naming the
        // object, the expected and the actual CRC32C; nothing is published.
        let key = location.key("postings.dat")
        let bad = try await corruptObject(client, bucket: bucket, key: key)
        let expected = try ManifestFileList(data: bytes(index + "/manifest.json"), source: "test").files.first { $0.name == "postings.dat" }!.crc32c
        let actual = String(format: "%08x", bad.withUnsafeBytes { crc32c($0.baseAddress!, $0.count, 0) })
        let cache2 = work.file("cache2")
        let pullError = await #expect(throws: FathomError.self) {
            _ = try await IndexTransfer.pull(from: location, client: client, cache: cache2)
        }
        let m = pullError?.message ?? ""
        #expect(pullError?.code == .corruptIndex && m.contains("s3://\(bucket)/\(key)") && m.contains(expected) && m.contains(actual)
                && m.contains("push the index again"), "\(String(describing: pullError))")
        #expect(!FileManager.default.fileExists(atPath: IndexTransfer.cacheDirectory(cache: cache2, location: location)))
        #expect(!FileManager.default.fileExists(atPath: IndexTransfer.cacheDirectory(cache: cache2, location: location) + ".fathom-pull"))
        // The first cache still holds the good copy, which verifies: nothing is read from the store.
        let kept = try await IndexTransfer.pull(from: location, client: client, cache: cache)
        #expect(kept.upToDate)
        #expect(IndexVerifier.verify(directory: kept.directory, progress: .silent).isEmpty)

        // A damaged manifest in the store is refused by its self-checksum.
        _ = try await corruptObject(client, bucket: bucket, key: location.key("manifest.json"))
        let manifestError = await #expect(throws: FathomError.self) {
            _ = try await IndexTransfer.pull(from: location, client: client, cache: work.file("cache3"))
        }
        #expect(manifestError?.code == .corruptIndex && manifestError?.message.contains("manifest") == true, "\(String(describing: manifestError))")
    }

    /// Multipart upload (5 MiB parts, a short last part), streamed download, listing, and the
    /// store's own checks: a wrong secret is refused (403), and so is a missing object (404).
    @Test func multipartUploadStreamedDownloadAndRefusals() async throws {
        let bucket = "fathom-parts"
        let server = try await S3TestServer(bucket: bucket)
        defer { server.stop() }
        let client = try server.client(partSize: 5 << 20)
        let work = TempDir("fathom-s3-parts")
        var rng = SeededRandom(seed: 5)
        let n = (11 << 20) + 12345
        var data = [UInt8](repeating: 0, count: n)
        for i in stride(from: 0, to: n, by: 8) {
            let r = rng.next()
            for j in 0..<min(8, n - i) { data[i + j] = UInt8(truncatingIfNeeded: r >> (8 * UInt64(j))) }
        }
        let src = work.write("big.bin", data)
        let crc = data.withUnsafeBytes { crc32c($0.baseAddress!, $0.count, 0) }
        let seen = ByteTally()
        try await client.uploadFile(path: src, bucket: bucket, key: "blobs/big.bin", metadata: ["k": "v"],
                                    check: { #expect($0 == crc) }, progress: { seen.add($0) })
        #expect(seen.total == UInt64(n))
        let info = try await client.headObject(bucket: bucket, key: "blobs/big.bin")
        #expect(info?.size == UInt64(n))
        #expect(info?.metadata["k"] == "v")
        #expect(info?.etag.hasSuffix("-3") == true, "3 parts: \(info?.etag ?? "")")
        let (got, gotCRC) = try await client.downloadFile(bucket: bucket, key: "blobs/big.bin", to: work.file("back.bin"))
        #expect(got.size == UInt64(n) && gotCRC == crc)
        #expect(bytes(work.file("back.bin")) == data)
        // A failing check aborts the upload: nothing is stored.
        await #expect(throws: FathomError.self) {
            try await client.uploadFile(path: src, bucket: bucket, key: "blobs/refused.bin",
                                        check: { _ in throw FathomError(.corruptIndex, "refused") })
        }
        #expect(try await client.headObject(bucket: bucket, key: "blobs/refused.bin") == nil)
        // The store checks a declared CRC32C (x-amz-checksum-crc32c) of a single PUT.
        let small = work.write("small.bin", Array(data[0..<1000]))
        let smallCRC = data.withUnsafeBytes { crc32c($0.baseAddress!, 1000, 0) }
        try await client.uploadFile(path: small, bucket: bucket, key: "crc/good.bin", declaredCRC32C: smallCRC)
        let declaredError = await #expect(throws: FathomError.self) {
            try await client.uploadFile(path: small, bucket: bucket, key: "crc/bad.bin", declaredCRC32C: smallCRC ^ 1)
        }
        #expect(declaredError?.message.contains("HTTP 400") == true, "\(String(describing: declaredError))")
        #expect(try await client.headObject(bucket: bucket, key: "crc/bad.bin") == nil)
        let listed = try await client.listObjects(bucket: bucket, prefix: "blobs/")
        #expect(listed.map(\.key) == ["blobs/big.bin"])

        let wrong = try server.client(secret: "not-the-secret")
        let authError = await #expect(throws: FathomError.self) {
            _ = try await wrong.listObjects(bucket: bucket, prefix: "blobs/")
        }
        #expect(authError?.message.contains("403") == true && authError?.message.contains("AWS_SECRET_ACCESS_KEY") == true, "\(String(describing: authError))")
        let missing = await #expect(throws: FathomError.self) {
            _ = try await client.downloadFile(bucket: bucket, key: "blobs/none", to: work.file("none"))
        }
        #expect(missing?.code == .fileNotFound, "\(String(describing: missing))")
    }
}

final class ByteTally: @unchecked Sendable {
    private let lock = NSLock()
    private var n: UInt64 = 0
    func add(_ k: UInt64) { lock.lock(); n += k; lock.unlock() }
    var total: UInt64 { lock.lock(); defer { lock.unlock() }; return n }
}

/// The `fathom` executable built next to the test bundle.
func fathomExecutable() -> URL {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("fathom").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("fathom")
}

/// Runs `fathom ARGS` with the store's credentials; returns its status, stdout and stderr.
func fathom(_ args: [String], server: S3TestServer) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = fathomExecutable()
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    env["AWS_ACCESS_KEY_ID"] = server.credentials.accessKeyId
    env["AWS_SECRET_ACCESS_KEY"] = server.credentials.secretAccessKey
    env["AWS_REGION"] = server.credentials.region
    env["AWS_ENDPOINT_URL"] = server.endpoint
    p.environment = env
    let dir = TempDir("fathom-cli-out")
    _ = FileManager.default.createFile(atPath: dir.file("out"), contents: nil)
    _ = FileManager.default.createFile(atPath: dir.file("err"), contents: nil)
    p.standardOutput = FileHandle(forWritingAtPath: dir.file("out"))!
    p.standardError = FileHandle(forWritingAtPath: dir.file("err"))!
    try p.run()
    p.waitUntilExit()
    return (p.terminationStatus, (try? String(contentsOfFile: dir.file("out"), encoding: .utf8)) ?? "",
            (try? String(contentsOfFile: dir.file("err"), encoding: .utf8)) ?? "")
}

@Suite(.serialized) struct ObjectStoreCLITests {
    /// `fathom push`, `fathom search --index s3://… --cache`, `fathom pull` against the real
    /// server: the search of the pulled index writes the same results as the local one, and a
    /// damaged object makes `fathom pull` exit 8 naming it.
    @Test func pushSearchPullCommands() async throws {
        let bucket = "fathom-cli"
        let server = try await S3TestServer(bucket: bucket)
        defer { server.stop() }
        let work = TempDir("fathom-s3-cli")
        let (index, _) = try buildSmallIndex(work)
        let url = "s3://\(bucket)/cli/idx"

        let push = try fathom(["push", "--index", index, "--to", url, "--json", "--quiet"], server: server)
        #expect(push.status == 0, "\(push.err)")
        let pushed = (try? JSONSerialization.jsonObject(with: Data(push.out.utf8))) as? [String: Any]
        #expect((pushed?["files"] as? [String])?.last == "manifest.json", "manifest last: \(push.out)")

        let local = try fathom(["search", "--index", index, "--queries", work.file("query.fbin"), "--probes", "8", "--threads", "1",
                                "--output", work.file("local.ibin"), "--quiet", "--json"], server: server)
        #expect(local.status == 0, "\(local.err)")
        let remote = try fathom(["search", "--index", url, "--cache", work.file("cache"), "--queries", work.file("query.fbin"), "--probes", "8",
                                 "--threads", "1", "--output", work.file("remote.ibin"), "--json"], server: server)
        #expect(remote.status == 0, "\(remote.err)")
        #expect(remote.err.contains("pull: \(url)"), "\(remote.err)")
        #expect(bytes(work.file("remote.ibin")) == bytes(work.file("local.ibin")) && !bytes(work.file("local.ibin")).isEmpty)

        let pull = try fathom(["pull", "--from", url, "--cache", work.file("cache")], server: server)
        #expect(pull.status == 0 && pull.out == work.file("cache") + "/\(bucket)/cli/idx\n", "\(pull.out) \(pull.err)")
        #expect(pull.err.contains("cache up to date"), "\(pull.err)")

        let client = try server.client()
        _ = try await corruptObject(client, bucket: bucket, key: "cli/idx/graph.bin")
        let bad = try fathom(["pull", "--from", url, "--cache", work.file("cache2"), "--quiet"], server: server)
        #expect(bad.status == 8, "\(bad.err)")
        #expect(bad.err.contains("s3://\(bucket)/cli/idx/graph.bin") && bad.err.contains("push the index again"), "\(bad.err)")

        let noCache = try fathom(["search", "--index", url, "--queries", work.file("query.fbin")], server: server)
        #expect(noCache.status == 2 && noCache.err.contains("--cache"), "\(noCache.err)")
    }
}

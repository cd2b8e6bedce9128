import FathomCore
import FathomStorage
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The part of an index's `manifest.json` that transfers need: its files, sizes and
/// CRC32Cs, and its self-checksum (docs/format.md). Parsed here so that this module does
/// not depend on the search library.
///
/// Thread safety: an immutable value, `Sendable`.
public struct ManifestFileList: Sendable, Equatable {
    /// One file of the index.
    public struct File: Sendable, Equatable, Decodable {
        /// Its name inside the index directory.
        public var name: String
        /// Its size in bytes.
        public var bytes: UInt64
        /// Its CRC32C, 8 lowercase hex digits.
        public var crc32c: String
    }
    /// The files the manifest lists (not manifest.json itself).
    public var files: [File]

    private struct Raw: Decodable { var files: [File]; var manifest_crc32c: String? }

    /// Parses and checks manifest bytes: JSON with a `files` list of safe names (no `/`, not
    /// `manifest.json`, no duplicates), and a `manifest_crc32c` that matches the bytes.
    /// `source` names where the bytes came from in errors.
    public init(data: [UInt8], source: String) throws {
        let raw: Raw
        do { raw = try JSONDecoder().decode(Raw.self, from: Data(data)) }
        catch {
            throw FathomError(.corruptIndex, "manifest.json cannot be parsed: it is corrupt or not a Fathom manifest — push the index again from a good copy", path: source, cause: error)
        }
        guard let stored = raw.manifest_crc32c, let actual = manifestSelfChecksum(data) else {
            throw FathomError(.corruptIndex, "manifest.json has no checksum: corrupt or not written by Fathom — push the index again from a good copy", path: source)
        }
        guard stored == actual else {
            throw FathomError(.corruptIndex, "manifest.json checksum \(stored) differs from its bytes (\(actual)): the manifest was corrupted or edited — push the index again from a good copy", path: source)
        }
        var seen = Set<String>()
        for f in raw.files {
            guard !f.name.isEmpty, !f.name.contains("/"), f.name != "." , f.name != "..", f.name != "manifest.json", seen.insert(f.name).inserted,
                  f.crc32c.count == 8, UInt32(f.crc32c, radix: 16) != nil else {
                throw FathomError(.corruptIndex, "manifest.json lists an unusable file entry '\(f.name)' (crc32c '\(f.crc32c)'): corrupt or not written by Fathom", path: source)
            }
        }
        files = raw.files
    }

}

func hex32(_ v: UInt32) -> String { String(format: "%08x", v) }

/// What ``IndexTransfer/push(directory:to:client:progress:)`` did.
///
/// Thread safety: an immutable value, `Sendable`.
public struct PushResult: Sendable, Codable, Equatable {
    /// The location, `s3://BUCKET/PREFIX`.
    public var location: String
    /// Files uploaded, manifest.json last.
    public var files: [String]
    /// Bytes uploaded.
    public var bytes: UInt64
    /// Wall seconds.
    public var seconds: Double
}

/// What ``IndexTransfer/pull(from:client:cache:progress:)`` did.
///
/// Thread safety: an immutable value, `Sendable`.
public struct PullResult: Sendable, Codable, Equatable {
    /// The local index directory (an ordinary index directory inside the cache).
    public var directory: String
    /// Files downloaded (and verified).
    public var downloaded: [String]
    /// Files whose cached copy matched the manifest and was kept.
    public var reused: [String]
    /// Bytes downloaded.
    public var bytes: UInt64
    /// True when the cache already held this exact index (nothing was published).
    public var upToDate: Bool
    /// Wall seconds.
    public var seconds: Double
}

/// Index directories in an object store: push one (every file the manifest lists, each
/// checked against the manifest's CRC32C and sent with its MD5 and SHA-256 so that the
/// store checks it too, then the manifest last), and pull one into a local cache (each file
/// verified against the manifest, fsynced, the whole generation published atomically with
/// the build's publisher). docs/scale-out.md, "Object store".
///
/// Thread safety: stateless; pushes of different prefixes and pulls into different caches
/// may run at once. Two pulls of the same location into the same cache exclude each other
/// with a lock file (the second fails at once).
public enum IndexTransfer {
    /// The metadata key each object carries: the CRC32C of its bytes (8 hex digits).
    public static let checksumMetadata = "fathom-crc32c"

    /// Uploads the index at `directory` under `location`. Refuses (before anything is
    /// uploaded for that file) a local file whose size or CRC32C differs from the manifest:
    /// `corruptIndex` naming it. A file sent in one PUT also declares the manifest's CRC32C
    /// (`x-amz-checksum-crc32c`), which the store checks against the bytes it received. The manifest goes last, so a reader that finds a manifest
    /// under the prefix finds every file it lists (objects of an older push under the same
    /// prefix are overwritten file by file: readers of a prefix being re-pushed may see the
    /// old manifest with new files and then refuse them — push each version to its own prefix).
    public static func push(directory: String, to location: S3Location, client: S3Client,
                            progress: ProgressReporter = .silent) async throws -> PushResult {
        let start = Date()
        let manifestPath = directory + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw FathomError(.fileNotFound, "no manifest.json: not a Fathom index directory, or a build that never finished", path: manifestPath)
        }
        let manifest = try ManifestFileList(data: [UInt8](data), source: manifestPath)
        var total: UInt64 = UInt64(data.count)
        for f in manifest.files {
            let p = directory + "/" + f.name
            let size = try RandomAccessFile(path: p).size
            guard size == f.bytes else {
                throw FathomError(.corruptIndex, "\(size) bytes, the manifest says \(f.bytes): the local index is damaged — rebuild it before pushing", path: p)
            }
            total += size
        }
        progress.begin("push \(location)", total: total)
        var sent: [String] = []
        for f in manifest.files {
            let p = directory + "/" + f.name
            let expected = f.crc32c
            try await client.uploadFile(path: p, bucket: location.bucket, key: location.key(f.name),
                                        metadata: [checksumMetadata: f.crc32c],
                                        declaredCRC32C: UInt32(f.crc32c, radix: 16),
                                        check: { crc in
                                            guard hex32(crc) == expected else {
                                                throw FathomError(.corruptIndex, "CRC32C \(hex32(crc)) differs from \(expected) in manifest.json: the local index is damaged — rebuild it before pushing (nothing of this file was stored)", path: p)
                                            }
                                        },
                                        progress: { progress.advance($0) })
            sent.append(f.name)
        }
        try await client.putObject(bucket: location.bucket, key: location.key("manifest.json"), data: [UInt8](data),
                                   metadata: [checksumMetadata: hex32([UInt8](data).withUnsafeBytes { crc32c($0.baseAddress!, $0.count, 0) })])
        progress.advance(UInt64(data.count))
        sent.append("manifest.json")
        progress.end("\(sent.count) files, \(formatBytes(total))")
        return PushResult(location: location.description, files: sent, bytes: total, seconds: Date().timeIntervalSince(start))
    }

    /// The local directory an index from `location` is cached in: `CACHE/BUCKET/PREFIX`.
    public static func cacheDirectory(cache: String, location: S3Location) -> String {
        (cache.hasSuffix("/") ? String(cache.dropLast()) : cache) + "/" + location.bucket + "/" + location.prefix
    }

    /// Brings the index at `location` into `cache` and returns its local directory
    /// (``cacheDirectory(cache:location:)``). Reads the manifest (checking its
    /// self-checksum), then for each file keeps the cached copy if its size and CRC32C match
    /// the manifest, or downloads it into a staging directory (`DIR.fathom-pull`), checking
    /// its size and CRC32C, fsyncing it. A file that does not verify is a `corruptIndex`
    /// error naming the object, the expected and the actual checksum; the cached index is
    /// left as it was. When every file is in place the staging directory is published over
    /// the cached one atomically (``Publisher``): a reader of the cache sees the previous
    /// complete index or the new one.
    public static func pull(from location: S3Location, client: S3Client, cache: String,
                            progress: ProgressReporter = .silent) async throws -> PullResult {
        let start = Date()
        let destination = cacheDirectory(cache: cache, location: location)
        let parent = URL(fileURLWithPath: destination).deletingLastPathComponent().path
        try createDirectories(parent)
        let lockPath = destination + ".fathom-pull.lock"
        let (lock, holder) = try FileLock.tryLock(lockPath)
        guard let lock else {
            throw FathomError(.io, "another pull into this cache directory is running (pid \(holder.map(String.init) ?? "unknown")); wait for it or use another cache", path: destination)
        }
        defer { lock.release() }
        try Publisher.cleanLeftovers(destination: destination)

        let manifestKey = location.key("manifest.json")
        let source = "s3://\(location.bucket)/\(manifestKey)"
        let manifestBytes: [UInt8]
        do { manifestBytes = try await client.getObject(bucket: location.bucket, key: manifestKey).data }
        catch let e as FathomError where e.code == .fileNotFound {
            throw FathomError(.fileNotFound, "no index at \(location): there is no manifest.json under the prefix (never pushed, or its push did not finish: the manifest goes last) — check the location, or push the index", cause: e)
        }
        let manifest = try ManifestFileList(data: manifestBytes, source: source)

        let staging = destination + ".fathom-pull"
        try removeTree(staging)
        try createDirectories(staging)
        var reused = [String](), downloaded = [String]()
        var fetch = [ManifestFileList.File]()
        for f in manifest.files {
            let cached = destination + "/" + f.name
            if let c = try? fileCRC32C(cached), c.bytes == f.bytes, hex32(c.crc) == f.crc32c {
                guard link(cached, staging + "/" + f.name) == 0 else {
                    throw FathomError.system("link into \(staging)", path: cached, errno: errno)
                }
                reused.append(f.name)
            } else {
                fetch.append(f)
            }
        }
        let total = fetch.reduce(UInt64(0)) { $0 + $1.bytes }
        if !fetch.isEmpty { progress.begin("pull \(location)", total: total) }
        for f in fetch {
            let key = location.key(f.name)
            let tmp = staging + "/" + f.name + ".part"
            let (info, crc) = try await client.downloadFile(bucket: location.bucket, key: key, to: tmp, progress: { progress.advance($0) })
            let size = try RandomAccessFile(path: tmp).size
            guard size == f.bytes, hex32(crc) == f.crc32c else {
                try? removeTree(staging)
                let what = size != f.bytes ? "is \(size) bytes, the manifest says \(f.bytes) (CRC32C \(hex32(crc)), expected \(f.crc32c))"
                                           : "has CRC32C \(hex32(crc)), the manifest says \(f.crc32c)"
                throw FathomError(.corruptIndex, "object s3://\(location.bucket)/\(key) \(what)\(info.metadata[checksumMetadata].map { " (stored with \($0))" } ?? ""): the copy in the store is damaged or was replaced; the cached index was not changed — push the index again from a good copy and pull again", path: destination + "/" + f.name)
            }
            try renamePath(tmp, staging + "/" + f.name)
            downloaded.append(f.name)
        }
        if !fetch.isEmpty { progress.end("\(downloaded.count) downloaded, \(reused.count) reused") }
        let cachedManifest = FileManager.default.contents(atPath: destination + "/manifest.json").map { [UInt8]($0) }
        if fetch.isEmpty, cachedManifest == manifestBytes {
            try removeTree(staging)
            return PullResult(directory: destination, downloaded: [], reused: reused, bytes: 0, upToDate: true,
                              seconds: Date().timeIntervalSince(start))
        }
        let w = try SequentialFileWriter(path: staging + "/manifest.json", bufferBytes: max(4096, manifestBytes.count))
        try w.write(manifestBytes)
        try w.finish()
        try fsyncDirectory(staging)
        try Publisher.publish(buildDirectory: staging, destination: destination)
        return PullResult(directory: destination, downloaded: downloaded, reused: reused, bytes: total, upToDate: false,
                          seconds: Date().timeIntervalSince(start))
    }
}

import FathomCore
import FathomStorage
import Foundation

/// `manifest.json`: what an index is and which files make it up (docs/format.md).
public struct Manifest: Codable, Sendable, Equatable {
    public static let formatName = "fathom-index"
    public static let currentVersion = 1

    public struct Parameters: Codable, Sendable, Equatable {
        public var head_ratio: Double
        public var replicas: Int
        public var posting_pages: Int
        public var posting_capacity: Int
        public var graph_degree: Int
        public var candidate_heads: Int
        public var rng_factor: Double
        public var seed: UInt64
        public var sample_size: Int
    }
    public struct Stats: Codable, Sendable, Equatable {
        public var records: Int
        public var mean_replicas: Double
        public var cut_records: Int
        public var orphans_fixed: Int
        public var empty_postings: Int
        public var max_posting_records: Int
        public var posting_bytes: UInt64
    }
    public struct Input: Codable, Sendable, Equatable {
        public var path: String
        public var bytes: UInt64
        public var format: String
        public var fingerprint: String
    }
    public struct FileEntry: Codable, Sendable, Equatable {
        public var name: String
        public var bytes: UInt64
        public var crc32c: String
    }
    public struct BuildInfo: Codable, Sendable, Equatable {
        public var seconds: [String: Double]
        public var peak_rss_bytes: UInt64
        public var fathom_version: String
    }

    public var format: String = Manifest.formatName
    public var format_version: Int = Manifest.currentVersion
    public var metric: Metric
    public var element_type: ElementType
    public var dimension: Int
    public var count: Int
    public var heads: Int
    public var record_bytes: Int
    public var parameters: Parameters
    public var stats: Stats
    public var input: Input
    public var build: BuildInfo
    public var files: [FileEntry]

    public static func load(directory: String) throws -> Manifest {
        let path = directory + "/manifest.json"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw FathomError(.fileNotFound, "no such index directory", path: directory)
        }
        guard isDir.boolValue else {
            throw FathomError(.fileNotFound, "not a directory: an index is a directory made by `fathom build`", path: directory)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FathomError(.fileNotFound, "no manifest.json: not a Fathom index, or a build that never finished", path: path)
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) }
        catch {
            throw FathomError(.corruptIndex, "manifest.json cannot be parsed (\(error)); the index is corrupt — rebuild it", path: path)
        }
        guard m.format == formatName else {
            throw FathomError(.incompatibleIndex, "manifest format '\(m.format)' is not '\(formatName)'", path: path)
        }
        guard m.format_version == currentVersion else {
            throw FathomError(.incompatibleIndex, "index format version \(m.format_version); this Fathom reads version \(currentVersion) — rebuild the index", path: path)
        }
        return m
    }

    public func encoded() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try enc.encode(self)
    }

    /// Checks that every listed file exists with the listed size.
    public func checkFileSizes(directory: String) throws {
        for f in files {
            let p = directory + "/" + f.name
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: p), let size = attrs[.size] as? UInt64 else {
                throw FathomError(.corruptIndex, "index file is missing (listed in manifest.json)", path: p)
            }
            guard size == f.bytes else {
                throw FathomError(.corruptIndex, "size \(size) bytes differs from the \(f.bytes) in manifest.json: truncated or replaced — rebuild the index", path: p, offset: min(size, f.bytes))
            }
        }
    }
}

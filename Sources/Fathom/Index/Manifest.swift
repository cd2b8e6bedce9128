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
        /// Why the build has this many heads: the recall calibration and the bound that
        /// applied (nil in indexes built before it was recorded).
        public var head_choice: String? = nil
    }
    public struct Stats: Codable, Sendable, Equatable {
        public var records: Int
        public var mean_replicas: Double
        public var cut_records: Int
        /// Vectors whose every record the cap cut, placed back in their nearest head with room.
        public var orphans_fixed: Int
        /// Of those, how many found no room (cap + slack) in their `replicas` nearest heads
        /// (nil in indexes built before it was counted).
        public var orphans_outside_nearest: Int? = nil
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

    public struct LeanVecInfo: Codable, Sendable, Equatable {
        /// "pca" (LeanVec-ID) or "ood" (LeanVec-OOD, trained with queries).
        public var kind: String
        public var loss: Double?
        public var explained_variance: Double?
    }

    public struct AttributeInfo: Codable, Sendable, Equatable {
        /// `name:type` per column.
        public var columns: [String]
        /// Bytes of OSQ codes per vector.
        public var code_bytes: Int
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
    /// What postings store: "none" (full vectors) or "lvq8" / "lvq4" / "lvq4x8" codes of a
    /// LeanVec projection to `reduced_dimension` dimensions (codec.bin).
    public var codec: String? = nil
    public var reduced_dimension: Int? = nil
    /// Components of the projection the heads are coded in for routing (the first
    /// `router_dimension` of `reduced_dimension`); absent: all of them (indexes built before
    /// the router dimension was recorded).
    public var router_dimension: Int? = nil
    public var leanvec: LeanVecInfo? = nil
    /// Filterable attributes (attrs.bin, summaries.bin), when built with attributes (`BuildOptions.attributes`).
    public var attributes: AttributeInfo? = nil
    /// Fingerprint of the model the index was built with (``ModelManifest``: `fathom train`'s
    /// output, or the model a plain build trains for itself); absent in indexes built before
    /// models existed.
    public var model_fingerprint: String? = nil
    /// Set in a shard (a build from a model, shard i of N): which heads' postings it holds. A
    /// shard's `count` is the model's (ids are global); vectors.dat holds only the vectors its
    /// postings reference, densely in id order, and rows.bin marks them (``ShardRows``).
    public var shard: ShardInfo? = nil
    /// CRC32C of this manifest's own JSON encoding with this field absent (detects edits and
    /// corruption of the manifest itself).
    public var manifest_crc32c: String? = nil

    public static func load(directory: String) throws -> Manifest {
        let path = directory + "/manifest.json"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw FathomError(.fileNotFound, "no such index directory", path: directory)
        }
        guard isDir.boolValue else {
            throw FathomError(.fileNotFound, "not a directory: an index is the directory a build writes", path: directory)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FathomError(.fileNotFound, "no manifest.json: not a Fathom index, or a build that never finished", path: path)
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) }
        catch {
            throw FathomError(.corruptIndex, "manifest.json cannot be parsed: the index is corrupt — rebuild it", path: path, cause: error)
        }
        guard m.format == formatName else {
            throw FathomError(.incompatibleIndex, "manifest format '\(m.format)' is not '\(formatName)'", path: path)
        }
        guard m.format_version == currentVersion else {
            throw FathomError(.incompatibleIndex, "index format version \(m.format_version); this Fathom reads version \(currentVersion) — rebuild the index", path: path)
        }
        guard let stored = m.manifest_crc32c, let expected = manifestSelfChecksum([UInt8](data)) else {
            throw FathomError(.corruptIndex, "manifest.json has no checksum: corrupt or not written by Fathom — rebuild the index", path: path)
        }
        guard stored == expected else {
            throw FathomError(.corruptIndex, "manifest checksum \(stored) differs from its bytes (\(expected)): manifest.json was corrupted or edited — rebuild the index", path: path)
        }
        try m.checkShape(path: path)
        return m
    }

    /// The counts every reader sizes arrays by: checked once here, so that no later `Int`
    /// arithmetic on them can trap (a sealed manifest can still be forged).
    func checkShape(path: String) throws {
        func bad(_ what: String) -> FathomError {
            FathomError(.corruptIndex, "\(what): manifest.json is corrupt or was not written by Fathom — rebuild the index", path: path)
        }
        guard count >= 1, count < Int(UInt32.max) else { throw bad("count \(count) is not between 1 and 2^32 − 2") }
        guard dimension >= 1, dimension <= Int(UInt32.max) else { throw bad("dimension \(dimension) is not between 1 and 2^32 − 1") }
        guard heads >= 1, heads <= count else { throw bad("heads \(heads) is not between 1 and the count \(count)") }
        let (vectorBytes, overflow) = dimension.multipliedReportingOverflow(by: element_type.size)
        guard !overflow, vectorBytes <= Int(UInt32.max) else { throw bad("vectors of \(dimension) \(element_type.rawValue) are too large") }
        if (codec ?? "none") == "none" {
            guard record_bytes == 4 + vectorBytes else { throw bad("record size \(record_bytes) is not 4 + \(vectorBytes) bytes of vector") }
        } else {
            guard record_bytes > 4, record_bytes <= 64 + 4 * dimension else { throw bad("record size \(record_bytes) of a \(codec ?? "") index is out of range") }
        }
        if let r = reduced_dimension, !(1...dimension).contains(r) { throw bad("reduced dimension \(r) is not between 1 and \(dimension)") }
        if let s = shard {
            guard s.count >= 1, s.index >= 0, s.index < s.count, s.head_begin >= 0, s.head_begin <= s.head_end, s.head_end <= heads,
                  s.vectors >= 0, s.vectors <= count else {
                throw bad("shard \(s.index)/\(s.count) with heads \(s.head_begin)..<\(s.head_end) and \(s.vectors) vectors does not fit \(heads) heads and \(count) vectors")
            }
        }
        if let h = router_dimension {
            guard let r = reduced_dimension, (1...r).contains(h) else {
                throw bad("router dimension \(h) is not between 1 and the reduced dimension \(reduced_dimension.map(String.init) ?? "(none)")")
            }
        }
    }

    static let checksumPlaceholder = "00000000"


    /// The bytes of manifest.json, with the self-checksum filled in (what the builder writes).
    public func sealedData() throws -> Data {
        var copy = self
        copy.manifest_crc32c = Manifest.checksumPlaceholder
        let data = try copy.encoded()
        guard let crc = manifestSelfChecksum([UInt8](data)) else {
            throw FathomError(.io, "cannot seal the manifest")
        }
        copy.manifest_crc32c = crc
        return try copy.encoded()
    }

    /// The manifest as `sealedData()` writes it.
    public func sealed() throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: sealedData())
    }

    /// The files an open index reads whole into RAM.
    static let residentFiles: Set<String> = ["heads.bin", "graph.bin", "postings.idx", "codec.bin", "attrs.bin", "summaries.bin", "labels.bin", "rows.bin", "vectors.crc"]

    /// Checks the checksum of the files an open index keeps in RAM (heads, graph, posting
    /// table, codec, attributes, summaries, labels, vector page checksums); postings and
    /// vectors.dat pages are checked per read, and whole files by ``IndexVerifier``. (Each is read twice at open: here and by its reader.)
    func checkResidentFiles(directory: String) throws {
        for f in files where Self.residentFiles.contains(f.name) {
            let p = directory + "/" + f.name
            let (_, crc) = try fileCRC32C(p)
            guard String(format: "%08x", crc) == f.crc32c else {
                throw FathomError(.corruptIndex, "CRC32C \(String(format: "%08x", crc)) differs from \(f.crc32c) in manifest.json: the file is corrupt — rebuild the index", path: p)
            }
        }
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

import FathomCore
import FathomStorage
import Foundation

/// `model.json`: a trained model (docs/scale-out.md, docs/format.md): the heads, head graph,
/// LeanVec + LVQ codec, attribute table and labels that every shard of one data set shares,
/// with the parameters that decide where a vector goes, and the model's **fingerprint**.
///
/// The fingerprint is CRC32C (two seeds, 16 hex digits) over the text of
/// ``fingerprintText``: every model file's name and CRC32C, and the parameters that change
/// an assignment (metric, shape, codec and dimensions, replicas, RNG factor, candidate heads,
/// posting capacity and slack). Two builds with the same fingerprint place every vector in
/// the same postings with the same codes.
///
/// Thread safety: a value type (`Sendable`); loading reads files only.
public struct ModelManifest: Codable, Sendable, Equatable {
    public static let formatName = "fathom-model"
    public static let currentVersion = 1
    /// The model's own file in its directory.
    public static let fileName = "model.json"
    /// Files a model may hold (those it holds are listed in ``files``).
    public static let modelFiles = ["heads.bin", "graph.bin", "codec.bin", "attrs.bin", "labels.bin"]

    public var format: String = ModelManifest.formatName
    public var format_version: Int = ModelManifest.currentVersion
    /// Hex fingerprint (``computeFingerprint()``); shards record it as `model_fingerprint`.
    public var fingerprint: String
    public var metric: Metric
    /// Element type of the stored vectors (float32 for cosine).
    public var element_type: ElementType
    public var dimension: Int
    /// Vectors of the input the model was trained for (shard builds must stream an input of this many).
    public var count: Int
    public var heads: Int
    public var record_bytes: Int
    public var codec: String
    public var reduced_dimension: Int?
    public var router_dimension: Int?
    public var parameters: Manifest.Parameters
    /// Orphan slack of the posting cap (a posting holds at most capacity + slack records).
    public var posting_slack: Int
    public var input: Manifest.Input
    public var files: [Manifest.FileEntry]
    public var leanvec: Manifest.LeanVecInfo? = nil
    public var attributes: Manifest.AttributeInfo? = nil
    /// Seconds of the train stage.
    public var train_seconds: Double? = nil
    /// The head ratio the training planned with (k-means may make fewer heads than planned):
    /// a build with the model plans with it too, so its plan and checks are the training's.
    public var planned_head_ratio: Double? = nil

    /// The text the fingerprint hashes (stable: the files sorted by name).
    public var fingerprintText: String {
        let fileText = files.sorted { $0.name < $1.name }.map { "\($0.name):\($0.bytes):\($0.crc32c)" }.joined(separator: ",")
        let p = parameters
        return "fathom-model-1|\(metric.rawValue)|\(element_type.rawValue)|\(count)x\(dimension)|H=\(heads)|rec=\(record_bytes)|codec=\(codec)"
            + "|dp=\(reduced_dimension.map(String.init) ?? "-")|dr=\(router_dimension.map(String.init) ?? "-")"
            + "|replicas=\(p.replicas)|rng=\(p.rng_factor)|K=\(p.candidate_heads)|cap=\(p.posting_capacity)+\(posting_slack)|pages=\(p.posting_pages)"
            + "|files=\(fileText)"
    }

    /// The fingerprint of this model's files and parameters (what ``fingerprint`` must hold).
    public func computeFingerprint() -> String {
        let t = fingerprintText
        return String(format: "%08x", crc32c(t, seed: 0)) + String(format: "%08x", crc32c(String(t.reversed()), seed: 0x5bd1e995))
    }

    /// Loads `DIR/model.json` and checks it: format, version, the fingerprint against the
    /// parameters and file list, and every listed file's size and CRC32C.
    public static func load(directory: String) throws -> ModelManifest {
        let path = directory + "/" + fileName
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw FathomError(.fileNotFound, "no such model directory (fathom train writes one)", path: directory)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FathomError(.fileNotFound, "no model.json: not a Fathom model (fathom train writes one), or a training that never finished", path: path)
        }
        let m: ModelManifest
        do { m = try JSONDecoder().decode(ModelManifest.self, from: data) }
        catch { throw FathomError(.corruptIndex, "model.json cannot be parsed: the model is corrupt — train it again", path: path, cause: error) }
        guard m.format == formatName else {
            throw FathomError(.incompatibleIndex, "model format '\(m.format)' is not '\(formatName)'", path: path)
        }
        guard m.format_version == currentVersion else {
            throw FathomError(.incompatibleIndex, "model format version \(m.format_version); this Fathom reads version \(currentVersion) — train the model again", path: path)
        }
        guard m.heads >= 1, m.heads <= m.count, m.dimension >= 1, m.count >= 1, m.count < Int(UInt32.max) else {
            throw FathomError(.corruptIndex, "model.json shape \(m.count) × \(m.dimension) with \(m.heads) heads is out of range — train the model again", path: path)
        }
        let expected = m.computeFingerprint()
        guard expected == m.fingerprint else {
            throw FathomError(.corruptIndex, "model.json says fingerprint \(m.fingerprint) but its files and parameters give \(expected): model.json was edited — train the model again", path: path)
        }
        for f in m.files {
            let p = directory + "/" + f.name
            let (bytes, crc) = try fileCRC32C(p)
            guard bytes == f.bytes, String(format: "%08x", crc) == f.crc32c else {
                throw FathomError(.corruptIndex, "\(bytes) bytes with CRC32C \(String(format: "%08x", crc)) differ from the \(f.bytes) bytes / \(f.crc32c) in model.json: the model file is corrupt or was replaced — train the model again", path: p)
            }
        }
        return m
    }

    /// The bytes of model.json as written (pretty, sorted keys).
    public func encoded() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try enc.encode(self)
    }

    /// Refuses an index built from another model: `index` must record this model's
    /// fingerprint (a shard, or any index built with this model or by a plain build since
    /// models exist).
    public func checkBuiltWith(_ index: Manifest, indexPath: String, modelPath: String) throws {
        try checkBuiltWith(fingerprint: index.model_fingerprint, what: "the index at \(indexPath)", shard: index.shard?.index, modelPath: modelPath)
    }

    /// The same check on a fingerprint a shard reported (`what` names it in the error).
    public func checkBuiltWith(fingerprint fp: String?, what: String, shard: Int?, modelPath: String) throws {
        let rebuild: [FathomError.Remedy] = [.rebuildWithModel(path: modelPath, shard: shard)]
        guard let fp else {
            throw FathomError(.incompatibleIndex, "\(what) records no model fingerprint (built before models existed), the model at \(modelPath) has fingerprint \(fingerprint)", remedies: rebuild)
        }
        guard fp == fingerprint else {
            throw FathomError(.incompatibleIndex, "\(what) was built with model \(fp), but the model at \(modelPath) has fingerprint \(fingerprint)", remedies: rebuild)
        }
    }
}

/// Which part of the model's postings a shard holds (manifest `shard`): heads
/// `head_begin ..< head_end`, the contiguous range `[index·H/count, (index+1)·H/count)`.
public struct ShardInfo: Codable, Sendable, Equatable {
    /// This shard's number, 0 ..< count.
    public var index: Int
    /// Shards of the model.
    public var count: Int
    public var head_begin: Int
    public var head_end: Int
    /// Distinct vectors whose records this shard holds (the rows of vectors.dat it wrote).
    public var vectors: Int

    public init(index: Int, count: Int, head_begin: Int, head_end: Int, vectors: Int) {
        self.index = index; self.count = count; self.head_begin = head_begin; self.head_end = head_end; self.vectors = vectors
    }

    /// The heads shard `index` of `count` holds among `heads`.
    public static func headRange(index: Int, count: Int, heads: Int) -> Range<Int> {
        (index * heads / count)..<((index + 1) * heads / count)
    }

    /// Whether posting `h` is this shard's.
    @inline(__always) public func owns(_ h: Int) -> Bool { h >= head_begin && h < head_end }
}

/// A shard's rows.bin: which of the model's vectors the shard holds (a bit per global id),
/// and each one's row in the shard's dense vectors.dat (its rank: members keep id order).
///
/// Format (docs/format.md): the 64-byte header (magic `FTHMROWS`, count = the model's vector
/// count, payload = ⌈count/64⌉ little-endian u64 words, bit `id % 64` of word `id / 64`).
/// RAM: 12 bytes per 64 global ids (the words and a rank per word).
///
/// Thread safety: immutable after init; shared by every reader.
public final class ShardRows: Sendable {
    public static let fileName = "rows.bin"
    static let magic = "FTHMROWS"
    /// Bits per global id.
    let words: [UInt64]
    /// Members before each word.
    let ranks: [UInt32]
    /// The model's vector count (ids below it).
    public let count: Int
    /// Members (rows of the shard's vectors.dat).
    public let members: Int

    init(words: [UInt64], count: Int) {
        self.words = words
        self.count = count
        var r = [UInt32](), total = 0
        r.reserveCapacity(words.count)
        for w in words { r.append(UInt32(total)); total += w.nonzeroBitCount }
        ranks = r
        members = total
    }

    /// Whether the shard holds vector `id`.
    @inline(__always) public func contains(_ id: UInt32) -> Bool {
        Int(id) < count && words[Int(id) >> 6] & (1 << UInt64(id & 63)) != 0
    }

    /// The row of member `id` in the shard's vectors.dat.
    @inline(__always) public func row(of id: UInt32) -> Int {
        let w = Int(id) >> 6
        return Int(ranks[w]) + (words[w] & ((1 << UInt64(id & 63)) &- 1)).nonzeroBitCount
    }

    /// Writes the members (ascending ids below `count`).
    static func write(members ids: [UInt32], count: Int, path: String) throws {
        var words = [UInt64](repeating: 0, count: (count + 63) / 64)
        for id in ids { words[Int(id) >> 6] |= 1 << UInt64(id & 63) }
        let w = try SequentialFileWriter(path: path, bufferBytes: 1 << 20)
        try w.write(IndexFileHeader(magic: magic, count: UInt64(count), dimension: 0, payloadBytes: UInt64(words.count * 8), recordBytes: 8).encode())
        try w.write(array: words.map { $0.littleEndian })
        try w.finish()
    }

    /// Reads rows.bin, checking that it covers `count` ids and holds `members` of them.
    static func read(path: String, count: Int, members: Int) throws -> ShardRows {
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: magic)
        let nw = (count + 63) / 64
        guard h.count == UInt64(count), h.payloadBytes == UInt64(nw * 8) else {
            throw FathomError(.corruptIndex, "rows.bin covers \(h.count) ids in \(h.payloadBytes) bytes, the manifest says \(count) vectors — rebuild the shard", path: path, offset: 16)
        }
        var words = [UInt64](repeating: 0, count: nw)
        try words.withUnsafeMutableBytes { if nw > 0 { try f.read(into: $0.baseAddress!, count: nw * 8, at: 64) } }
        for i in 0..<nw { words[i] = UInt64(littleEndian: words[i]) }
        if count % 64 != 0, nw > 0, words[nw - 1] >> UInt64(count % 64) != 0 {
            throw FathomError(.corruptIndex, "rows.bin has bits past the \(count) vectors — rebuild the shard", path: path, offset: 64 + UInt64(nw - 1) * 8)
        }
        let rows = ShardRows(words: words, count: count)
        guard rows.members == members else {
            throw FathomError(.corruptIndex, "rows.bin marks \(rows.members) vectors, the manifest's shard says \(members) — rebuild the shard", path: path)
        }
        return rows
    }
}

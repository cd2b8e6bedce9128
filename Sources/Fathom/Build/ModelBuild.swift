import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

// One model, many shards (docs/scale-out.md): `train` alone publishes a model directory;
// a build given the model installs its files in place of `train`, and a shard build packs
// only its range of heads. Everything else is the one build pipeline (IndexBuilder.swift,
// BuildStages.swift).

/// Shard `index` of `count` (0-based): the postings of heads
/// `[index·H/count, (index+1)·H/count)` of the model's H heads (``ShardInfo/headRange(index:count:heads:)``).
///
/// A value type (`Sendable`).
public struct ShardSpec: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    /// Throws `invalidArgument` unless 0 ≤ index < count.
    public init(index: Int, count: Int) throws {
        guard count >= 1, index >= 0, index < count else {
            throw FathomError(.invalidArgument, "shard \(index)/\(count): the shard number must be between 0 and \(max(count, 1) - 1) and the count at least 1")
        }
        self.index = index; self.count = count
    }

    /// Parses `i/N` (e.g. `2/4`).
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]) else {
            throw FathomError(.invalidArgument, "shard '\(text)' is not i/N (e.g. 0/4)")
        }
        try self.init(index: i, count: n)
    }

    public var description: String { "\(index)/\(count)" }
}

extension IndexLayout {
    /// The distinct vectors a shard's pack kept (build scratch, one decimal number).
    var shardVectorsPath: String { directory + "/shard-vectors.tmp" }

    func readShardVectorCount() throws -> Int {
        guard let d = FileManager.default.contents(atPath: shardVectorsPath), let n = Int(String(decoding: d, as: UTF8.self)) else {
            throw FathomError(.corruptIndex, "shard-vectors.tmp is missing or unreadable; delete the build directory and rebuild", path: shardVectorsPath)
        }
        return n
    }
}

extension IndexBuilder {
    /// Replaces every option that decides an assignment by the model's, and checks that the
    /// input has the model's shape.
    static func adopt(model m: ModelManifest, path: String, into o: inout BuildOptions, header: VectorFileHeader, input: String) throws {
        guard o.attributes == nil, o.labels == nil, o.trainQueries == nil else {
            throw FathomError(.invalidArgument, "attributes, labels and training queries belong to the model: give them to train, not to a build with a model", path: path)
        }
        guard header.count == m.count, header.dimension == m.dimension else {
            throw FathomError(.dimensionMismatch, "the input holds \(header.count) × \(header.dimension) vectors, the model at \(path) was trained for \(m.count) × \(m.dimension): build with the input the model was trained on", path: input)
        }
        let stored: ElementType = m.metric == .cosine ? .float32 : header.elementType
        guard stored == m.element_type else {
            throw FathomError(.dimensionMismatch, "the input stores \(stored.rawValue) vectors, the model \(m.element_type.rawValue): build with the input the model was trained on", path: input)
        }
        guard let codec = PostingCodec(rawValue: m.codec), codec != .auto else {
            throw FathomError(.corruptIndex, "model codec '\(m.codec)' is unknown — train the model again", path: path + "/" + ModelManifest.fileName)
        }
        o.metric = m.metric
        o.codec = codec
        o.reduceDims = m.reduced_dimension
        o.routerDims = m.router_dimension
        o.replicas = m.parameters.replicas
        o.rngFactor = Float(m.parameters.rng_factor)
        o.candidateHeads = m.parameters.candidate_heads
        o.graphDegree = m.parameters.graph_degree
        o.seed = m.parameters.seed
        o.postingPages = m.parameters.posting_pages
        o.headRatio = m.planned_head_ratio ?? m.parameters.head_ratio
        o.sampleSize = m.parameters.sample_size
    }

    /// The `train` stage of a build with a model: its files copied into the build directory
    /// (each checked against model.json as it is copied).
    func installModel(_ m: ModelManifest, from path: String) throws {
        progress.note("train: using the model at \(path) (fingerprint \(m.fingerprint), \(m.heads) heads)")
        for f in m.files {
            let crc = try copyFile(from: path + "/" + f.name, to: buildDirectory + "/" + f.name)
            guard String(format: "%08x", crc) == f.crc32c else {
                throw FathomError(.corruptIndex, "CRC32C \(String(format: "%08x", crc)) differs from \(f.crc32c) in model.json: the model file changed — train the model again", path: path + "/" + f.name)
            }
        }
        try fsyncDirectory(buildDirectory)
    }

    /// The model a build directory holds after `train` (its files and the parameters that
    /// decide an assignment), with its fingerprint.
    func modelManifest(plan: BuildPlan, fingerprint: String, seconds: Double? = nil) throws -> ModelManifest {
        let layout = IndexLayout(directory: buildDirectory)
        var files = [Manifest.FileEntry]()
        for name in ModelManifest.modelFiles where FileManager.default.fileExists(atPath: buildDirectory + "/" + name) {
            let (bytes, crc) = try fileCRC32C(buildDirectory + "/" + name)
            files.append(.init(name: name, bytes: bytes, crc32c: String(format: "%08x", crc)))
        }
        let heads = try layout.headCount()
        var m = ModelManifest(fingerprint: "", metric: options.metric, element_type: storedType, dimension: plan.dimension,
                              count: plan.count, heads: heads, record_bytes: plan.recordBytes, codec: codec.rawValue,
                              reduced_dimension: codec == .none ? nil : plan.reducedDimension,
                              router_dimension: codec == .none ? nil : plan.routerDimension,
                              parameters: parameters(plan: plan, heads: heads), posting_slack: plan.postingSlack,
                              input: inputInfo(fingerprint: fingerprint), files: files,
                              leanvec: try leanVecInfo(layout: layout), attributes: try attributeInfo(), train_seconds: seconds,
                              planned_head_ratio: plan.headRatio)
        m.fingerprint = m.computeFingerprint()
        return m
    }

    /// Runs (or resumes) only the `train` stage and publishes the model directory atomically
    /// at `outputPath`: heads.bin, graph.bin, codec.bin (compressing codecs), attrs.bin and
    /// labels.bin (when given), and model.json (``ModelManifest``). Builds with this model
    /// (`model:`) then skip training; their postings are record for record those of a
    /// plain build with the same input and options.
    @discardableResult
    public func train() throws -> ModelManifest {
        guard model == nil else {
            throw FathomError(.invalidArgument, "a model is trained from the input, not from another model", path: modelPath)
        }
        let plan = try plan()
        if let codecReason { progress.note(codecReason) }
        progress.note(plan.description)
        let fp = try fingerprint(plan: plan) + "-model"
        let lock = try openBuildDirectory(fingerprint: fp)
        defer { lock.release() }
        var seconds: [String: Double] = [:]
        try runTrainStage(plan: plan, fingerprint: fp, seconds: &seconds)
        let m = try modelManifest(plan: plan, fingerprint: fp, seconds: seconds["train"])
        progress.note("publish: model.json (fingerprint \(m.fingerprint)), then exchange into \(outputPath)")
        let w = try SequentialFileWriter(path: buildDirectory + "/" + ModelManifest.fileName, bufferBytes: 1 << 16)
        try w.write([UInt8](try m.encoded()))
        try w.finish()
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: buildDirectory) }
        catch { throw FathomError(.io, "cannot list the build directory", path: buildDirectory, cause: error) }
        let kept = Set(m.files.map(\.name) + [ModelManifest.fileName])
        for name in entries where !kept.contains(name) { try removeTree(buildDirectory + "/" + name) }
        try fsyncDirectory(buildDirectory)
        try Publisher.publish(buildDirectory: buildDirectory, destination: outputPath, marker: ModelManifest.fileName)
        progress.note("published model \(outputPath)")
        return m
    }

    /// A shard's vectors.dat: only the rows of `members` (ascending ids), densely in id order
    /// (row r is the r-th member), replacing the full file assign wrote; rows.bin marks the
    /// members (``ShardRows``) and shard-vectors.tmp records their count for the manifest.
    func writeShardVectors(layout: IndexLayout, members: [UInt32], count n: Int) throws {
        let d = header.dimension
        let rowBytes = d * storedType.size
        let full = IndexLayout.VectorPlacement(rowBytes: rowBytes)
        let source = try RowChunkReader(path: layout.vectorsPath, rowBytes: rowBytes, placement: full)
        let tmp = layout.directory + "/vectors-shard.tmp"
        let w = try layout.createVectors(count: members.count, dimension: d, type: storedType, path: tmp)
        progress.begin("pack: shard \(shard.map(\.description) ?? "") keeps \(members.count) of \(n) vectors", total: UInt64(members.count))
        for (r, id) in members.enumerated() {
            let i = Int(id)
            if i < source.first || i >= source.end { try source.load(from: i, count: n) }
            try w.pad(to: full.offset(r))
            try w.write(source.row(i), count: rowBytes)
            progress.advance()
        }
        progress.end()
        try layout.finishVectors(w, count: members.count, dimension: d, type: storedType)
        try ShardRows.write(members: members, count: n, path: layout.directory + "/" + ShardRows.fileName)
        try renamePath(tmp, layout.vectorsPath)
        let cw = try SequentialFileWriter(path: layout.shardVectorsPath, bufferBytes: 4096)
        try cw.write([UInt8](String(members.count).utf8)); try cw.finish()
        try fsyncDirectory(layout.directory)
    }
}

/// Copies a file (read in 4 MiB blocks, written and fsynced); returns the CRC32C of its bytes.
func copyFile(from: String, to: String) throws -> UInt32 {
    let f = try RandomAccessFile(path: from)
    let w = try SequentialFileWriter(path: to)
    let block = 4 << 20
    let buf = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
    defer { buf.deallocate() }
    var crc: UInt32 = 0, off: UInt64 = 0
    while off < f.size {
        let k = Int(min(UInt64(block), f.size - off))
        try f.read(into: buf, count: k, at: off)
        crc = crc32c(buf, k, crc)
        try w.write(buf, count: k)
        off += UInt64(k)
    }
    try w.finish()
    return crc
}

import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// Options of ``IndexBuilder`` (the CLI's build flags set them). Every field has a working default.
public struct BuildOptions: Sendable, Equatable {
    /// Distance the index answers queries with.
    public var metric: Metric = .l2
    /// Peak resident memory the build must stay within, in bytes.
    public var memoryBudget: UInt64 = 2 << 30
    /// Heads per vector (e.g. 0.1 = one head per 10 vectors). `nil`: the most heads (up to
    /// 0.1) whose serving RAM fits ``serveMemoryPerVector``, lowered further if the build's
    /// memory budget requires it.
    public var headRatio: Double? = nil
    /// The head count's goal (docs/build.md, "How many heads"): the finest partition whose
    /// postings, on a calibration sample of the input, hold this share of a held-out query's
    /// 10 nearest neighbours in its ``targetProbes`` nearest postings. Used when
    /// ``headRatio`` is nil; the budget and ``serveMemoryPerVector`` bound it from above.
    public var targetRecall: Double = 0.90
    /// Postings per query the ``targetRecall`` is asked at (8: recall 0.90 within 8–12 probes
    /// once routing and codes take their share).
    public var targetProbes: Int = 8
    /// Vectors of the calibration sample (regions of the input at full density).
    public var calibrationSample: Int = 100_000
    /// RAM per vector the index should need to serve, in bytes: heads, graph, posting table,
    /// codec and the search scratch of ``serveThreads`` threads (docs/memory.md). It decides
    /// the head count when ``headRatio`` is nil.
    public var serveMemoryPerVector: Double = 32
    /// Search threads the serving RAM target assumes (`nil`: the machine's processors).
    public var serveThreads: Int? = nil
    /// Postings each vector may join (RNG closure), 1...8.
    public var replicas: Int = 8
    /// 4 KiB pages per posting (its size cap). `nil`: room for twice the mean posting
    /// length the closure rule gives at most (2·n·replicas / heads records), so the cap cuts
    /// only the tail of the posting-length distribution.
    public var postingPages: Int? = nil
    /// Degree of the head graph.
    public var graphDegree: Int = 32
    /// Nearest heads considered for each vector's closure assignment.
    public var candidateHeads: Int = 64
    /// RNG rule factor (SPTAG's RNGFactor).
    public var rngFactor: Float = 1.0
    /// Seed for sampling, k-means and graph order: same seed and input, same index.
    public var seed: UInt64 = 42
    /// Training sample size (vectors). `nil`: max(4 × heads, 50,000), within the budget.
    public var sampleSize: Int? = nil
    /// Worker threads (the machine's two vCPUs give about one core: 1 is the default).
    public var threads: Int = 1
    /// What postings store: LeanVec + LVQ codes of the leading principal components (full
    /// vectors on disk for re-ranking) or full vectors (`.none`). `.auto` (the default) picks
    /// LVQ-4 or LVQ-8 from a sample of the data (``IndexBuilder/codec``).
    public var codec: PostingCodec = .auto
    /// LeanVec target dimension d′ of the postings' codes (`nil`: chosen from a sample of the
    /// data, the fewest components, a multiple of 8, that keep
    /// ``IndexBuilder/keptVarianceTarget`` of the variance; ``IndexBuilder/reduceDims``).
    public var reduceDims: Int? = nil
    /// Components of the projection the heads are coded in, for routing (≤ d′; `nil`: D/2
    /// rounded up to a multiple of 8, at most d′). The heads are the serving RAM; the
    /// postings' codes are on SSD, so they can keep more components than the heads.
    public var routerDims: Int? = nil
    /// A sample of real queries: learn the query-aware LeanVec-OOD projection from it.
    public var trainQueries: String? = nil
    /// Attributes per vector (CSV with a header, or JSON lines `.jsonl`) for filtered search.
    public var attributes: String? = nil
    /// The attribute columns' types, when known (a checkpoint rebuilding an index passes its
    /// schema, so no column's type is re-inferred from the values).
    var attributeSchema: AttributeSchema? = nil
    /// External labels, one decimal UInt64 per line in input order (labels.bin; default: row numbers).
    public var labels: String? = nil
    /// Cap on the assignment's sort buffer in bytes (`nil`: what the budget leaves). Smaller
    /// means more runs to merge; the index does not change.
    public var sortBufferBytes: UInt64? = nil
    /// Cap on the posting bytes one pack bucket holds (`nil`: what the budget leaves);
    /// smaller means more passes over the codes; the index does not change.
    public var packBucketBytes: UInt64? = nil
    /// Test hook: stop with `.cancelled` right after this stage finishes (simulates a kill).
    var stopAfterStage: String? = nil

    public init() {}
}

/// Builds a Fathom index out of core: `train` (sample → balanced k-means heads → head graph),
/// `assign` (stream the input; RNG closure over the 64 nearest heads; bounded postings),
/// `pack` (page-aligned postings + posting table), then atomic publish.
///
/// The stages separate (docs/scale-out.md): ``train()`` runs only `train` and publishes a
/// model directory (``ModelManifest``); a builder given that model (`model:`) replaces
/// `train` by installing the model's files, and with a ``ShardSpec`` packs only the postings
/// of its range of heads (a shard). A plain ``build()`` is `train` then assign and pack, and
/// records the fingerprint of the model it trained, so it equals `train` + build with that model.
///
/// Each stage records its completion with the build fingerprint in the build directory
/// (`OUTPUT.fathom-build`), so a killed build rerun with the same arguments resumes after
/// its last finished stage.
///
/// OpenBLAS: the process owner sets it to one thread (``BLAS/setThreads(_:)``) before
/// building, as the CLI does at start. On one OpenBLAS thread the heads (and so the index)
/// are byte-identical for any `BuildOptions.threads`; with more, the k-means products may
/// round differently (the build notes it). The builder never changes the process setting.
///
/// Thread safety: one ``build()`` at a time per builder; builds of different destinations
/// may run at once in one process (a second build of the same destination fails on its lock).
public final class IndexBuilder {
    public let inputPath: String
    public let outputPath: String
    public let options: BuildOptions
    let progress: ProgressReporter
    let header: VectorFileHeader
    /// The posting codec: `options.codec`, with `.auto` resolved from the data.
    public let codec: PostingCodec
    /// Why the build chose its reduced dimension and, for `.auto`, ``codec`` (nil when both were given).
    public let codecReason: String?
    /// The recall calibration of the head count (nil with a given head ratio or a tiny input).
    public let calibration: HeadCalibration?
    /// The model this build assigns with (nil: it trains its own).
    public let model: ModelManifest?
    /// Where ``model`` lives.
    public let modelPath: String?
    /// The shard this build makes (nil: every posting).
    public let shard: ShardSpec?

    /// - Parameters:
    ///   - model: a model directory (``train()``'s output): the build installs its heads,
    ///     graph, codec, attributes and labels instead of training, and takes every parameter
    ///     that decides an assignment from it (those of `options` are replaced; attributes,
    ///     labels and training queries must not be given: they are the model's).
    ///   - shard: with `model`, pack only the postings of this shard's heads (and the vectors
    ///     they reference).
    public init(input: String, output: String, options given: BuildOptions = BuildOptions(),
                model modelDirectory: String? = nil, shard: ShardSpec? = nil,
                progress: ProgressReporter = .silent) throws {
        self.inputPath = input
        self.outputPath = output
        var options = given
        self.progress = progress
        self.shard = shard
        self.modelPath = modelDirectory
        self.header = try VectorFileHeader.inspect(path: input, format: nil)
        guard header.count > 0 else {
            throw FathomError(.malformedFile, "the input holds no vectors", path: input)
        }
        guard header.count < Int(UInt32.max) else {
            throw FathomError(.invalidArgument, "\(header.count) vectors exceed the 2^32 − 1 ids of one index; split the input into shards", path: input)
        }
        if let modelDirectory {
            let m = try ModelManifest.load(directory: modelDirectory)
            try Self.adopt(model: m, path: modelDirectory, into: &options, header: header, input: input)
            if let shard {
                guard shard.count <= m.heads else {
                    throw FathomError(.invalidArgument, "\(shard.count) shards exceed the model's \(m.heads) heads (a shard holds at least one)", path: modelDirectory)
                }
            }
            try Self.validate(options)
            model = m
            codec = PostingCodec(rawValue: m.codec) ?? .none
            codecReason = nil
            calibration = nil
            self.options = options
            return
        }
        guard shard == nil else {
            throw FathomError(.invalidArgument, "a shard is built with a model: train one first (the model decides which heads each shard holds)")
        }
        model = nil
        try Self.validate(options)
        // Refuse a plan that cannot fit before reading any vector (`.auto` plans as lvq8,
        // the larger of the codes it may pick).
        let stored: ElementType = options.metric == .cosine ? .float32 : header.elementType
        _ = try BuildPlanner.plan(shape: BuildShape(count: header.count, dimension: header.dimension, inputType: header.elementType),
                                  codec: options.codec == .auto ? .lvq8 : options.codec, storedType: stored, options: options)
        calibration = try Self.calibrate(input: input, header: header, options: options, progress: progress)
        var reasons = [String]()
        if options.codec != .none {
            let sample = try Self.readCodecSample(input: input, header: header, metric: options.metric)
            if options.reduceDims == nil {
                let (d, why) = try Self.chooseReducedDimension(sample: sample, dimension: header.dimension)
                options.reduceDims = d; reasons.append(why)
            }
            let reduced = options.reduceDims!
            if let r = options.routerDims {
                guard (1...reduced).contains(r) else {
                    throw FathomError(.invalidArgument, "router dimension \(r) must be between 1 and the reduced dimension \(reduced)")
                }
            } else {
                options.routerDims = min(reduced, LeanVecProjection.defaultDim(header.dimension))
            }
            if options.codec == .auto {
                let (c, why) = try Self.chooseCodec(sample: sample, reduced: reduced)
                codec = c; reasons.append(why)
            } else {
                codec = options.codec
            }
        } else {
            codec = .none
        }
        codecReason = reasons.isEmpty ? nil : reasons.joined(separator: "; ")
        self.options = options
    }

    /// The share of variance the default d′ keeps: the projection then drops at most 1% of
    /// the data's energy (text embeddings spread it over most components: text300 needs 282
    /// of 300 dims, pypi-minilm 313 of 384, fashion-mnist 459 of 784; a synthetic clustered
    /// set 31 of 128).
    public static let keptVarianceTarget: Float = 0.99

    /// The first ≤ 4,000 rows of the input (normalized for cosine): the sample the codec
    /// choices are measured on. A non-finite or (cosine) zero vector among them fails the
    /// build here with the error the assignment would give it.
    static func readCodecSample(input: String, header: VectorFileHeader, metric: Metric) throws -> Matrix {
        let rows = min(header.count, 4000)
        return try readRows(Array(0..<rows), input: input, header: header, metric: metric, chunkRows: rows, progress: .silent)
    }

    /// d′ for the postings' codes: the fewest leading principal components, rounded up to a
    /// multiple of 8 (at most D), that keep ``keptVarianceTarget`` of the sample's variance.
    /// The codes live on SSD: a posting read costs its request more than its bytes, while
    /// every point of variance the projection drops has to be won back by re-ranking more
    /// candidates (text300 short queries: d′ 152, 86% kept, needed 100 re-ranked rows for
    /// recall 0.91 at 16 probes; d′ 296 reached 0.94 with 20).
    static func chooseReducedDimension(sample: Matrix, dimension D: Int) throws -> (Int, String) {
        guard sample.rows >= 16 else {
            let d = LeanVecProjection.defaultDim(D)
            return (d, "reduced dimension \(d) (D/2): too few sample rows to measure the spectrum")
        }
        let kept = try LeanVecProjection.keptVariance(sample: sample)
        let need = (kept.firstIndex { $0 >= keptVarianceTarget } ?? (D - 1)) + 1
        let d = min(D, (need + 7) / 8 * 8)
        return (d, String(format: "reduced dimension %d: %d of %d components keep %.1f%% of the sample's variance (target %.0f%%), %d keep %.1f%%",
                          d, need, D, 100 * kept[need - 1], 100 * keptVarianceTarget, d, 100 * kept[d - 1]))
    }

    /// `.auto`: LVQ-4 halves the postings of LVQ-8, but its 16 levels per vector cost accuracy
    /// where a few components dominate the range (e.g. PCA of raw pixels). On a sample of the
    /// input (the first ≤ 4,000 rows), project to `reduced` principal components and compare
    /// LVQ-4's relative quantization error with the variance the projection already drops:
    /// LVQ-4 when it adds at most half as much error again, else LVQ-8.
    static func chooseCodec(sample train: Matrix, reduced: Int) throws -> (PostingCodec, String) {
        let kept = train.rows, d = train.cols
        guard kept >= 16, reduced >= 1, reduced <= d else { return (.lvq8, "too few sample rows to measure: lvq8") }
        let pca = try LeanVecProjection.trainPCA(sample: train, targetDim: reduced)
        let y = pca.projectData(train)
        let lvq4 = LVQCodec(kind: .lvq4, dim: reduced)
        let code = UnsafeMutableRawPointer.allocate(byteCount: lvq4.bytesPerVector, alignment: 16)
        let back = UnsafeMutablePointer<Float>.allocate(capacity: reduced)
        defer { code.deallocate(); back.deallocate() }
        var err = 0.0, energy = 0.0
        for i in 0..<kept {
            let v = y.row(i)
            lvq4.encode(UnsafePointer(v), into: code)
            lvq4.decode(code, into: back)
            for j in 0..<reduced { let e = Double(v[j] - back[j]); err += e * e; energy += Double(v[j]) * Double(v[j]) }
        }
        let quant = energy > 0 ? err / energy : 0
        let dropped = max(0, 1 - Double(pca.explainedVariance))
        let choice: PostingCodec = quant <= 0.5 * dropped ? .lvq4 : .lvq8
        let reason = String(format: "codec auto: lvq4 adds %.2f%% quantization error, the projection to %d dims drops %.2f%% of the variance → %@",
                            100 * quant, reduced, 100 * dropped, choice.rawValue)
        return (choice, reason)
    }

    static func validate(_ o: BuildOptions) throws {
        if let r = o.headRatio, !(r > 0 && r <= 1) {
            throw FathomError(.invalidArgument, "head ratio \(r) must be in (0, 1]")
        }
        guard (1...8).contains(o.replicas) else { throw FathomError(.invalidArgument, "replicas \(o.replicas) must be between 1 and 8") }
        if let p = o.postingPages, !(1...4096).contains(p) {
            throw FathomError(.invalidArgument, "posting pages \(p) must be between 1 and 4096")
        }
        guard (4...256).contains(o.graphDegree) else { throw FathomError(.invalidArgument, "graph degree \(o.graphDegree) must be between 4 and 256") }
        guard (1...1024).contains(o.candidateHeads) else { throw FathomError(.invalidArgument, "candidate heads \(o.candidateHeads) must be between 1 and 1024") }
        guard o.threads >= 1 else { throw FathomError(.invalidArgument, "threads must be ≥ 1") }
        guard o.targetRecall > 0 && o.targetRecall < 1 else {
            throw FathomError(.invalidArgument, "target recall \(o.targetRecall) must be in (0, 1)")
        }
        guard (1...1024).contains(o.targetProbes) else { throw FathomError(.invalidArgument, "target probes \(o.targetProbes) must be between 1 and 1024") }
        guard o.calibrationSample >= 1000 else { throw FathomError(.invalidArgument, "calibration sample \(o.calibrationSample) must be at least 1,000 vectors") }
        if o.routerDims != nil && o.codec == .none {
            throw FathomError(.invalidArgument, "a router dimension codes the heads in a LeanVec projection, which needs a compressing codec (lvq8, lvq4, lvq4x8)")
        }
        if let r = o.routerDims, r < 1 { throw FathomError(.invalidArgument, "router dimension \(r) must be at least 1") }
        if o.trainQueries != nil && o.codec == .none {
            throw FathomError(.invalidArgument, "training queries train a LeanVec projection, which only a compressing codec has", remedies: [.useCompressingCodec])
        }
    }

    var storedType: ElementType { options.metric == .cosine ? .float32 : header.elementType }

    /// Whether the index carries attributes (given, or the model's) and labels.
    var withAttributes: Bool { options.attributes != nil || model?.attributes != nil }
    var withLabels: Bool { options.labels != nil || model?.files.contains { $0.name == LabelsFile.name } == true }

    /// The heads whose postings this build packs (all without a shard).
    func packedHeads(_ H: Int) -> Range<Int> {
        guard let shard else { return 0..<H }
        return ShardInfo.headRange(index: shard.index, count: shard.count, heads: H)
    }

    /// The postings' record codec: flat rows of ``storedType``, or LeanVec + LVQ over the
    /// codec.bin the train stage wrote to `layout`.
    func recordCodec(layout: IndexLayout) throws -> any RecordCodec {
        try RecordCodecs.load(codec, metric: options.metric, elementType: storedType, dimension: header.dimension, codecPath: layout.codecPath)
    }

    var buildDirectory: String { outputPath + ".fathom-build" }

    // MARK: planning

    /// Plans every stage from n, d and the budget (``BuildPlanner``). Throws `memoryBudget`
    /// or `invalidArgument` with the numbers when an invariant cannot hold.
    public func plan() throws -> BuildPlan {
        var plan = try BuildPlanner.plan(shape: BuildShape(count: header.count, dimension: header.dimension, inputType: header.elementType),
                                         codec: codec, storedType: storedType, options: options, calibration: calibration)
        if let m = model {
            // The model's, not re-derived: the same cap and slack as every other shard.
            plan.heads = m.heads
            plan.headChoice = m.parameters.head_choice ?? "the model's \(m.heads) heads"
            plan.postingPages = m.parameters.posting_pages
            plan.postingCapacity = m.parameters.posting_capacity
            plan.postingSlack = m.posting_slack
            plan.sampleSize = m.parameters.sample_size
        }
        return plan
    }

    // MARK: fingerprint / resume

    func fingerprint(plan: BuildPlan) throws -> String {
        let attrs = try FileManager.default.attributesOfItem(atPath: inputPath)
        let mtime = (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let f = try RandomAccessFile(path: inputPath)
        // Hash the first and last MiB (cheap, and catches rewritten files of equal size).
        var crc: UInt32 = 0
        let span = Int(min(f.size, 1 << 20))
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(span, 1), alignment: 64)
        defer { buf.deallocate() }
        try f.read(into: buf, count: span, at: 0); crc = crc32c(buf, span, crc)
        try f.read(into: buf, count: span, at: f.size - UInt64(span)); crc = crc32c(buf, span, crc)
        var o = options
        o.memoryBudget = 0   // the budget changes the plan only through the fields below
        o.threads = 1
        o.sortBufferBytes = nil
        o.packBucketBytes = nil
        o.stopAfterStage = nil
        let text = "\(f.size)|\(mtime)|\(crc)|\(header.count)x\(header.dimension)|\(o)|H=\(plan.heads)|S=\(plan.sampleSize)|cap=\(plan.postingCapacity)|pages=\(plan.postingPages)"
            + "|model=\(model?.fingerprint ?? "-")|shard=\(shard.map { "\($0.index)/\($0.count)" } ?? "-")"
        return String(format: "%08x", crc32c(text, seed: 0)) + String(format: "%08x", crc32c(String(text.reversed()), seed: 0x5bd1e995))
    }

    func stageDone(_ stage: String, fingerprint: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: buildDirectory + "/stage-\(stage).json"),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return obj["fingerprint"] as? String == fingerprint
    }

    func markDone(_ stage: String, fingerprint: String, seconds: Double) throws {
        let path = buildDirectory + "/stage-\(stage).json"
        let obj: [String: Any] = ["stage": stage, "fingerprint": fingerprint, "seconds": seconds, "peak_rss_bytes": peakRSSBytes()]
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        let w = try SequentialFileWriter(path: path + ".tmp", bufferBytes: 4096)
        try w.write([UInt8](data)); try w.finish()
        try renamePath(path + ".tmp", path)
        try fsyncDirectory(buildDirectory)
    }

    func stageSeconds(_ stage: String) -> Double {
        guard let data = FileManager.default.contents(atPath: buildDirectory + "/stage-\(stage).json"),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return 0 }
        return obj["seconds"] as? Double ?? 0
    }

    /// The largest peak RSS any process of this build recorded (each finished stage writes
    /// its process's VmHWM; a resumed build's earlier processes count too), and this one's.
    func buildPeakRSS() -> UInt64 {
        var peak = peakRSSBytes()
        for st in ["train", "assign", "pack"] {
            guard let data = FileManager.default.contents(atPath: buildDirectory + "/stage-\(st).json"),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let b = (obj["peak_rss_bytes"] as? NSNumber)?.uint64Value else { continue }
            peak = max(peak, b)
        }
        return peak
    }

    // MARK: build

    /// Runs (or resumes) the build and publishes the index atomically at `outputPath`.
    @discardableResult
    public func build() throws -> Manifest {
        let plan = try plan()
        if let codecReason { progress.note(codecReason) }
        progress.note(plan.description)
        if BLAS.threads != 1 {
            progress.note("note: OpenBLAS runs \(BLAS.threads) threads in this process: the heads may differ from a build on one (BLAS.setThreads(1) makes them byte-identical for any thread count)")
        }
        let fp = try fingerprint(plan: plan)
        let fm = FileManager.default
        let lock = try openBuildDirectory(fingerprint: fp)
        defer { lock.release() }
        // Disk: the new index and every temporary must fit beside what is already there
        // (files a resumed build already wrote count as made).
        try BuildPlanner.checkDisk(plan: plan, directory: parentDirectory, reclaimable: directoryBytes(buildDirectory),
                                   oldIndex: fm.fileExists(atPath: outputPath) ? directoryBytes(outputPath) : 0)

        var seconds: [String: Double] = [:]
        // train, or install the model
        try runTrainStage(plan: plan, fingerprint: fp, seconds: &seconds)
        // assign
        let layout = IndexLayout(directory: buildDirectory)
        if stageDone("assign", fingerprint: fp) {
            progress.note("assign: already done (resumed)")
            seconds["assign"] = stageSeconds("assign")
        } else {
            let t0 = Date()
            try assignStage(plan: plan, layout: layout)
            seconds["assign"] = Date().timeIntervalSince(t0)
            try markDone("assign", fingerprint: fp, seconds: seconds["assign"]!)
            try stopIfAsked("assign")
        }
        // pack
        var stats: Manifest.Stats
        if stageDone("pack", fingerprint: fp), let s = try? layout.readStats() {
            progress.note("pack: already done (resumed)")
            seconds["pack"] = stageSeconds("pack")
            stats = s
        } else {
            let t0 = Date()
            stats = try packStage(plan: plan, layout: layout)
            try layout.writeStats(stats)
            seconds["pack"] = Date().timeIntervalSince(t0)
            try markDone("pack", fingerprint: fp, seconds: seconds["pack"]!)
            try stopIfAsked("pack")
        }
        // publish
        let manifest = try publish(plan: plan, stats: stats, seconds: seconds, fingerprint: fp)
        return manifest
    }

    /// Takes the build lock, removes leftovers of a crashed publish, and makes (or keeps, for a
    /// resume with the same fingerprint) the build directory.
    func openBuildDirectory(fingerprint fp: String) throws -> FileLock {
        let fm = FileManager.default
        let lock = try lockBuild()
        do {
            try Publisher.cleanLeftovers(destination: outputPath)
            // Resume only a build directory made with the same fingerprint.
            let fpPath = buildDirectory + "/fingerprint"
            if fm.fileExists(atPath: buildDirectory) {
                let old = fm.contents(atPath: fpPath).map { String(decoding: $0, as: UTF8.self) }
                if old != fp {
                    progress.note("build: discarding \(buildDirectory) (made with other input or parameters, or an old generation left by a crash)")
                    try removeTree(buildDirectory)
                    try fsyncDirectory(parentDirectory)
                }
            }
            if !fm.fileExists(atPath: buildDirectory) {
                do { try createDirectories(buildDirectory) }
                catch { throw FathomError(.io, "cannot create the build directory; is the destination's parent writable?", path: buildDirectory, cause: error) }
                let w = try SequentialFileWriter(path: fpPath, bufferBytes: 4096)
                try w.write([UInt8](fp.utf8)); try w.finish()
                try fsyncDirectory(buildDirectory)
            }
        } catch { lock.release(); throw error }
        return lock
    }

    /// The first stage: `train` (sample, heads, graph, codec, attributes, labels), or with a
    /// model, its files installed in the build directory; resumed when already done.
    func runTrainStage(plan: BuildPlan, fingerprint fp: String, seconds: inout [String: Double]) throws {
        if stageDone("train", fingerprint: fp) {
            progress.note("train: already done (resumed)")
            seconds["train"] = stageSeconds("train")
            return
        }
        let t0 = Date()
        if let model, let modelPath { try installModel(model, from: modelPath) } else { try trainStage(plan: plan) }
        seconds["train"] = Date().timeIntervalSince(t0)
        try markDone("train", fingerprint: fp, seconds: seconds["train"]!)
        try stopIfAsked("train")
    }

    var lockPath: String { outputPath + ".fathom-build.lock" }
    var parentDirectory: String { URL(fileURLWithPath: outputPath).deletingLastPathComponent().path }

    /// Takes the build lock of the destination (`OUTPUT.fathom-build.lock`, flock), creating
    /// the destination's parent directories if needed; a second builder of the same
    /// destination fails here at once.
    func lockBuild() throws -> FileLock {
        do { try createDirectories(parentDirectory) }
        catch { throw FathomError(.io, "cannot create the destination's parent directory", path: outputPath, cause: error) }
        let (lock, holder) = try FileLock.tryLock(lockPath)
        guard let lock else {
            throw FathomError(.io, "another build of \(outputPath) is running (pid \(holder.map(String.init) ?? "unknown")); wait for it to finish or stop it — its lock is \(lockPath)", path: outputPath)
        }
        return lock
    }

    func stopIfAsked(_ stage: String) throws {
        if options.stopAfterStage == stage {
            throw FathomError(.cancelled, "stopped after stage \(stage) (test hook)")
        }
    }

    // MARK: stage: train

    func trainStage(plan: BuildPlan) throws {
        let n = plan.count, d = plan.dimension
        if let apath = options.attributes {
            let t0 = Date()
            let table = apath.hasSuffix(".jsonl") || apath.hasSuffix(".json")
                ? try AttributeTable.loadJSONLines(path: apath, schema: options.attributeSchema, expectedRows: n)
                : try AttributeTable.loadCSV(path: apath, schema: options.attributeSchema, expectedRows: n)
            progress.note("train: attributes \(table.describeSchema())")
            let quantized = try QuantizedAttributes(table: table)
            try AttributeStore.writeAttributes(table: table, quantized: quantized, path: buildDirectory + "/" + AttributeStore.attrsFile)
            progress.note(String(format: "train: attributes quantized to %d bytes per vector in %.1f s", quantized.bytesPerVector, Date().timeIntervalSince(t0)))
        }
        if let lpath = options.labels {
            try LabelsFile.write(try LabelsFile.parseText(path: lpath, expected: n), path: buildDirectory + "/" + LabelsFile.name)
        }
        let S = plan.sampleSize
        var rng = SeededRandom(seed: options.seed)
        let sampleIds = rng.sample(S, from: n)
        progress.begin("train: sampling \(S) of \(n) vectors", total: UInt64(n))
        let sample = try Self.readRows(sampleIds, input: inputPath, header: header, metric: options.metric,
                                       chunkRows: plan.chunkRows, progress: progress)
        progress.end()
        var km = BalancedKMeans()
        km.seed = options.seed
        km.threads = options.threads   // heads do not depend on it (per-node generators)
        let headRows = km.selectHeads(points: sample, targetHeads: plan.heads, progress: progress)
        let H = headRows.count
        let heads = Matrix(rows: H, cols: d)
        var headIds = [UInt32](repeating: 0, count: H)
        for (i, r) in headRows.enumerated() {
            heads.row(i).update(from: sample.row(r), count: d)
            headIds[i] = UInt32(sampleIds[r])
        }
        let graph = HeadGraph.build(vectors: heads, degree: options.graphDegree, buildList: max(64, options.graphDegree * 2),
                                    seed: options.seed, progress: progress)
        graph.repairReachability(threads: options.threads, progress: progress)
        let layout = IndexLayout(directory: buildDirectory)
        try layout.writeHeads(heads, ids: headIds)
        try layout.writeGraph(graph)
        if let kind = codec.lvqKind {
            let codec = try trainCodec(sample: sample, kind: kind, plan: plan)
            try codec.write(to: layout.codecPath)
        }
    }

    /// LeanVec on at most 100,000 sample rows: PCA, or LeanVec-OOD with `BuildOptions.trainQueries`.
    func trainCodec(sample: Matrix, kind: LVQKind, plan: BuildPlan) throws -> CompactCodec {
        let d = plan.dimension
        let rows = min(sample.rows, 100_000)
        let train = Matrix(rows: rows, cols: d)
        let step = Double(sample.rows) / Double(rows)
        for i in 0..<rows { train.row(i).update(from: sample.row(Int(Double(i) * step)), count: d) }
        let projection: LeanVecProjection
        if options.trainQueries != nil && options.metric == .l2 {
            progress.note("train: LeanVec-OOD models inner products; under the l2 metric the projection is PCA (the training queries are not used)")
        }
        if let qpath = options.trainQueries, options.metric != .l2 {
            let q = try Matrix.load(vectorFile: qpath, maxRows: 100_000)
            guard q.cols == d else {
                throw FathomError(.dimensionMismatch, "training queries have dimension \(q.cols), the vectors \(d)", path: qpath)
            }
            for i in 0..<q.rows {
                try checkFinite(q.row(i), d: d, row: i)
                if options.metric == .cosine { Distance.normalize(q.row(i), d) }
            }
            progress.note("train: LeanVec-OOD \(d) → \(plan.reducedDimension) dims from \(rows) vectors and \(q.rows) queries")
            projection = try LeanVecProjection.trainOOD(data: train, queries: q, targetDim: plan.reducedDimension)
            progress.note("train: LeanVec-OOD loss \(projection.loss)")
        } else {
            projection = try LeanVecProjection.trainPCA(sample: train, targetDim: plan.reducedDimension)
            progress.note("train: LeanVec PCA \(d) → \(plan.reducedDimension) dims keeps \(String(format: "%.1f", 100 * projection.explainedVariance))% of the variance")
        }
        return CompactCodec(projection: projection, lvq: LVQCodec(kind: kind, dim: plan.reducedDimension))
    }

    /// Reads the rows `ids` (sorted ascending) of `input` in one sequential pass (cheaper
    /// than as many random reads), each checked finite and, for cosine, normalized; advances
    /// `progress` by the rows passed (the caller begins and ends it).
    static func readRows(_ ids: [Int], input: String, header: VectorFileHeader, metric: Metric, chunkRows: Int,
                         progress: ProgressReporter) throws -> Matrix {
        let d = header.dimension
        let out = Matrix(rows: ids.count, cols: d)
        let reader = try VectorFileReader(path: input)
        let chunk = Matrix(rows: chunkRows, cols: d)
        var row = 0, next = 0
        while next < ids.count {
            let got = try reader.readFloats(maxRows: chunkRows, into: chunk.data)
            if got == 0 { break }
            while next < ids.count && ids[next] < row + got {
                let src = chunk.row(ids[next] - row)
                try checkFinite(src, d: d, row: ids[next], input: input, header: header)
                out.row(next).update(from: src, count: d)
                if metric == .cosine { try normalizeOrThrow(out.row(next), d: d, row: ids[next], input: input) }
                next += 1
            }
            row += got
            progress.advance(UInt64(got))
        }
        guard next == ids.count else {
            throw FathomError(.malformedFile, "input ended after \(row) of \(header.count) vectors while sampling", path: input)
        }
        return out
    }

    @inline(__always)
    static func checkFinite(_ v: UnsafePointer<Float>, d: Int, row: Int, input: String, header: VectorFileHeader) throws {
        for j in 0..<d where !v[j].isFinite {
            throw FathomError(.nonFiniteValue, "vector \(row) has \(v[j]) at component \(j); remove or fix non-finite vectors before building", path: input,
                              offset: UInt64(header.dataOffset) + UInt64(row) * UInt64(header.recordStride) + UInt64(header.recordPrefix + j * header.elementType.size))
        }
    }

    static func normalizeOrThrow(_ v: UnsafeMutablePointer<Float>, d: Int, row: Int, input: String) throws {
        guard Distance.normalize(v, d) else {
            throw FathomError(.invalidArgument, "vector \(row) is all zeros: it has no direction under the cosine metric", path: input,
                              remedies: [.removeVectorFromInput, .useMetric(.l2)])
        }
    }

    @inline(__always)
    func checkFinite(_ v: UnsafePointer<Float>, d: Int, row: Int) throws {
        try Self.checkFinite(v, d: d, row: row, input: inputPath, header: header)
    }

    func normalizeOrThrow(_ v: UnsafeMutablePointer<Float>, d: Int, row: Int) throws {
        try Self.normalizeOrThrow(v, d: d, row: row, input: inputPath)
    }

    // MARK: publish

    func attributeInfo() throws -> Manifest.AttributeInfo? {
        guard withAttributes else { return nil }
        let (t, q) = try AttributeStore.readAttributes(path: buildDirectory + "/" + AttributeStore.attrsFile)
        return Manifest.AttributeInfo(columns: t.schema.columns.map { "\($0.name):\($0.type.rawValue)" }, code_bytes: q.bytesPerVector)
    }

    func leanVecInfo(layout: IndexLayout) throws -> Manifest.LeanVecInfo? {
        guard codec != .none else { return nil }
        let c = try CompactCodec.read(from: layout.codecPath)
        return Manifest.LeanVecInfo(kind: c.projection.kind == .ood ? "ood" : "pca",
                                    loss: c.projection.loss.isFinite ? Double(c.projection.loss) : nil,
                                    explained_variance: c.projection.explainedVariance.isFinite ? Double(c.projection.explainedVariance) : nil)
    }

    /// The manifest's parameters (the model's, for a build with a model).
    func parameters(plan: BuildPlan, heads: Int) -> Manifest.Parameters {
        if let model { return model.parameters }
        return .init(head_ratio: Double(heads) / Double(plan.count), replicas: options.replicas,
                     posting_pages: plan.postingPages, posting_capacity: plan.postingCapacity,
                     graph_degree: options.graphDegree, candidate_heads: options.candidateHeads,
                     rng_factor: Double(options.rngFactor), seed: options.seed, sample_size: plan.sampleSize,
                     head_choice: plan.headChoice)
    }

    func inputInfo(fingerprint: String) -> Manifest.Input {
        let absInput = URL(fileURLWithPath: inputPath).standardizedFileURL.path
        let size = (try? FileManager.default.attributesOfItem(atPath: inputPath)[.size] as? UInt64) ?? 0
        return .init(path: absInput, bytes: size, format: header.format.rawValue, fingerprint: fingerprint)
    }

    func publish(plan: BuildPlan, stats: Manifest.Stats, seconds: [String: Double], fingerprint: String) throws -> Manifest {
        progress.note("publish: manifest, then exchange into \(outputPath)")
        CrashTestPause.point("publish.begin")
        let layout = IndexLayout(directory: buildDirectory)
        var files = [Manifest.FileEntry]()
        for name in IndexLayout.dataFiles + (codec == .none ? [] : [IndexLayout.codecFile])
            + (withAttributes ? [AttributeStore.attrsFile, AttributeStore.summariesFile] : [])
            + (withLabels ? [LabelsFile.name] : []) + (shard == nil ? [] : [ShardRows.fileName]) {
            let (bytes, crc) = try fileCRC32C(buildDirectory + "/" + name)
            files.append(.init(name: name, bytes: bytes, crc32c: String(format: "%08x", crc)))
        }
        let heads = try layout.headCount()
        var manifest = try Manifest(
            metric: options.metric, element_type: storedType, dimension: plan.dimension, count: plan.count,
            heads: heads, record_bytes: plan.recordBytes,
            parameters: parameters(plan: plan, heads: heads),
            stats: stats,
            input: inputInfo(fingerprint: fingerprint),
            build: .init(seconds: seconds, peak_rss_bytes: buildPeakRSS(), fathom_version: "0.1.0"),
            files: files,
            codec: codec.rawValue,
            reduced_dimension: codec == .none ? nil : plan.reducedDimension,
            router_dimension: codec == .none ? nil : plan.routerDimension,
            leanvec: try leanVecInfo(layout: layout),
            attributes: try attributeInfo())
        manifest.model_fingerprint = try model?.fingerprint ?? modelManifest(plan: plan, fingerprint: fingerprint).fingerprint
        if let shard {
            manifest.shard = ShardInfo(index: shard.index, count: shard.count, head_begin: packedHeads(heads).lowerBound,
                                       head_end: packedHeads(heads).upperBound, vectors: try layout.readShardVectorCount())
        }
        manifest = try manifest.sealed()
        let mpath = buildDirectory + "/manifest.json"
        let w = try SequentialFileWriter(path: mpath, bufferBytes: 1 << 16)
        try w.write([UInt8](try manifest.sealedData()))
        try w.finish()
        CrashTestPause.point("publish.manifest-written")
        // Scratch files of the build (not in the manifest) never reach the published tree:
        // deleted, durably, before the rename. A crash from here on makes a rerun start over
        // (the fingerprint is gone), never publish a half-made directory.
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: buildDirectory) }
        catch { throw FathomError(.io, "cannot list the build directory", path: buildDirectory, cause: error) }
        for name in entries where IndexLayout.isScratch(name) {
            try removeTree(buildDirectory + "/" + name)
        }
        try fsyncDirectory(buildDirectory)
        CrashTestPause.point("publish.scratch-removed")
        try Publisher.publish(buildDirectory: buildDirectory, destination: outputPath)
        progress.note("published \(outputPath)")
        return manifest
    }
}

/// Bytes of the regular files under `path` (0 if it does not exist).
func directoryBytes(_ path: String) -> UInt64 {
    guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
    var total: UInt64 = 0
    while let name = e.nextObject() as? String {
        if let a = try? FileManager.default.attributesOfItem(atPath: path + "/" + name),
           a[.type] as? FileAttributeType == .typeRegular, let b = a[.size] as? UInt64 { total += b }
    }
    return total
}

/// Peak resident set size of this process so far (VmHWM), in bytes.
public func peakRSSBytes() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count >= 2, let kb = UInt64(parts[1]) { return kb * 1024 }
    }
    return 0
}

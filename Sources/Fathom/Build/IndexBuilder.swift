import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// Options of `fathom build` / ``IndexBuilder``. Every field has a working default.
public struct BuildOptions: Sendable, Equatable {
    /// Distance the index answers queries with.
    public var metric: Metric = .l2
    /// Peak resident memory the build must stay within, in bytes.
    public var memoryBudget: UInt64 = 2 << 30
    /// Heads per vector (e.g. 0.1 = one head per 10 vectors). `nil`: the most heads (up to
    /// 0.1) whose serving RAM fits ``serveMemoryPerVector``, lowered further if the build's
    /// memory budget requires it.
    public var headRatio: Double? = nil
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
    /// What postings store: LeanVec + LVQ codes of the D/2 principal components (full vectors
    /// on disk for re-ranking) or full vectors (`.none`). `.auto` (the default) picks LVQ-4 or
    /// LVQ-8 from a sample of the data (``IndexBuilder/codec``).
    public var codec: PostingCodec = .auto
    /// LeanVec target dimension (`nil`: D/2 rounded up to a multiple of 8).
    public var reduceDims: Int? = nil
    /// A sample of real queries: learn the query-aware LeanVec-OOD projection from it.
    public var trainQueries: String? = nil
    /// Attributes per vector (CSV with a header, or JSON lines `.jsonl`) for filtered search.
    public var attributes: String? = nil
    /// External labels, one decimal UInt64 per line in input order (labels.bin; default: row numbers).
    public var labels: String? = nil
    /// Test hook: stop with `.cancelled` right after this stage finishes (simulates a kill).
    var stopAfterStage: String? = nil

    public init() {}
}

/// What the build will do and how much memory each stage needs, computed before it starts.
public struct BuildPlan: Sendable, CustomStringConvertible {
    public var count: Int
    public var dimension: Int
    public var reducedDimension: Int
    public var codec: PostingCodec
    public var inputType: ElementType
    public var storedType: ElementType
    public var heads: Int
    public var headRatio: Double
    public var sampleSize: Int
    public var postingPages: Int
    public var postingCapacity: Int
    public var recordBytes: Int
    public var chunkRows: Int
    public var stageBytes: [(stage: String, bytes: UInt64)]
    public var budget: UInt64
    /// What the index will need to serve (the model's estimate).
    public var serving: ServingMemory

    public var peakBytes: UInt64 { stageBytes.map(\.bytes).max() ?? 0 }

    public var description: String {
        var s = "plan: \(count) × \(dimension) \(inputType.rawValue) → \(heads) heads (ratio \(String(format: "%.4f", headRatio))), "
        s += "postings ≤ \(postingPages) pages = \(postingCapacity) records of \(recordBytes) B"
        if codec != .none { s += " (LeanVec \(dimension) → \(reducedDimension) dims + \(codec.rawValue))" }
        s += ", training sample \(sampleSize)\n"
        s += "plan: serving RAM ≈ \(serving.summary)\n"
        for (st, b) in stageBytes { s += "plan:   \(st.padding(toLength: 7, withPad: " ", startingAt: 0)) needs ≈ \(formatBytes(b))\n" }
        s += "plan: peak ≈ \(formatBytes(peakBytes)) of the \(formatBytes(budget)) budget"
        return s
    }
}

/// Builds a Fathom index out of core: `train` (sample → balanced k-means heads → head graph),
/// `assign` (stream the input; RNG closure over the 64 nearest heads; bounded postings),
/// `pack` (page-aligned postings + posting table), then atomic publish.
///
/// Each stage records its completion with the build fingerprint in the build directory
/// (`OUTPUT.fathom-build`), so a killed build rerun with the same arguments resumes after
/// its last finished stage.
public final class IndexBuilder {
    public let inputPath: String
    public let outputPath: String
    public let options: BuildOptions
    let progress: ProgressReporter
    let header: VectorFileHeader
    /// The posting codec: `options.codec`, with `.auto` resolved from the data.
    public let codec: PostingCodec
    /// Why `.auto` chose ``codec`` (nil when the codec was given).
    public let codecReason: String?

    static let processOverhead: UInt64 = 80 << 20

    public init(input: String, output: String, options: BuildOptions = BuildOptions(),
                progress: ProgressReporter = .silent) throws {
        self.inputPath = input
        self.outputPath = output
        self.options = options
        self.progress = progress
        try Self.validate(options)
        self.header = try VectorFileHeader.inspect(path: input, format: nil)
        guard header.count > 0 else {
            throw FathomError(.malformedFile, "the input holds no vectors", path: input)
        }
        guard header.count < Int(UInt32.max) else {
            throw FathomError(.invalidArgument, "\(header.count) vectors exceed the 2^32 − 1 ids of one index; split the input into shards", path: input)
        }
        if options.codec == .auto {
            (codec, codecReason) = try Self.chooseCodec(input: input, header: header, metric: options.metric,
                                                        reduced: options.reduceDims ?? LeanVecProjection.defaultDim(header.dimension))
        } else {
            codec = options.codec; codecReason = nil
        }
    }

    /// `.auto`: LVQ-4 halves the postings of LVQ-8, but its 16 levels per vector cost accuracy
    /// where a few components dominate the range (e.g. PCA of raw pixels). On a sample of the
    /// input (the first ≤ 4,000 rows), project to `reduced` principal components and compare
    /// LVQ-4's relative quantization error with the variance the projection already drops:
    /// LVQ-4 when it adds at most half as much error again, else LVQ-8.
    static func chooseCodec(input: String, header: VectorFileHeader, metric: Metric, reduced: Int) throws -> (PostingCodec, String) {
        let d = header.dimension
        let rows = min(header.count, 4000)
        let sample = Matrix(rows: rows, cols: d)
        let reader = try VectorFileReader(path: input)
        var got = 0
        while got < rows {
            let r = try reader.readFloats(maxRows: rows - got, into: sample.row(got))
            if r == 0 { break }
            got += r
        }
        var kept = 0
        for i in 0..<got {
            let v = sample.row(i)
            guard (0..<d).allSatisfy({ v[$0].isFinite }) else { continue }
            if metric == .cosine && !Distance.normalize(v, d) { continue }
            if kept != i { sample.row(kept).update(from: v, count: d) }
            kept += 1
        }
        guard kept >= 16, reduced >= 1, reduced <= d else { return (.lvq8, "too few sample rows to measure: lvq8") }
        let train = Matrix(rows: kept, cols: d)
        train.data.update(from: sample.data, count: kept * d)
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
        if o.trainQueries != nil && o.codec == .none {
            throw FathomError(.invalidArgument, "--train-queries trains a LeanVec projection, which needs a compressing --codec (lvq8, lvq4, lvq4x8)")
        }
    }

    var storedType: ElementType { options.metric == .cosine ? .float32 : header.elementType }
    var buildDirectory: String { outputPath + ".fathom-build" }

    // MARK: planning

    /// Plans every stage from n, d and the budget. Throws `memoryBudget` with the numbers when
    /// the budget cannot be met.
    public func plan() throws -> BuildPlan {
        let n = header.count, d = header.dimension
        let reduced = options.reduceDims ?? LeanVecProjection.defaultDim(d)
        if codec != .none {
            guard reduced >= 1 && reduced <= d else {
                throw FathomError(.invalidArgument, "--reduce-dims \(reduced) must be between 1 and the dimension \(d)")
            }
        }
        let recordBytes = 4 + (codec.lvqKind.map { LVQCodec.bytesPerVector(kind: $0, dim: reduced) } ?? d * storedType.size)
        // The posting cap: twice the mean posting length the closure can produce (or given).
        func pagesFor(heads H: Int, factor: Double = 2) -> Int {
            if let p = options.postingPages { return p }
            let cap = Int((factor * Double(n) * Double(options.replicas) / Double(max(H, 1))).rounded(.up))
            return max(1, (max(cap, 1) * recordBytes + 4095) / 4096)
        }
        let chunkRows = max(1, min(65536, (32 << 20) / (d * 4)))
        let budget = options.memoryBudget
        let R = options.graphDegree
        let L = options.candidateHeads + 32

        func estimate(heads H: Int, sample S: Int) -> [(String, UInt64)] {
            let cap = pagesFor(heads: H) * 4096 / recordBytes
            let headBytes = UInt64(H) * UInt64(d * 4 + R * 4 + 4 + 8)
            let chunk = UInt64(chunkRows) * UInt64(d * (header.elementType.size + 4 + 4))
            let train = Self.processOverhead + UInt64(S) * UInt64(d * 4 + 16) + headBytes
                + UInt64(2048 * d * 4 * 2) + chunk + UInt64(H) * 48 /* graph build pools */
            let table = UInt64(PostingAssignment.memoryBytes(heads: H, cap: cap, vectors: n))
            let assign = Self.processOverhead + headBytes + table + chunk + (8 << 20) + UInt64(L * 16)
            let pack = Self.processOverhead + table + UInt64(H) * 24 + UInt64(cap * recordBytes) * 2 + (8 << 20)
            return [("train", train), ("assign", assign), ("pack", pack)]
        }

        let ratio = options.headRatio ?? servingRatio(n: n, d: d, reduced: codec == .none ? nil : reduced,
                                                      recordBytes: recordBytes)
        var H = max(1, min(n, Int((Double(n) * ratio).rounded())))
        func sampleFor(_ H: Int) -> Int { min(n, options.sampleSize ?? max(4 * H, 50_000)) }
        var stages = estimate(heads: H, sample: sampleFor(H))
        var peak = stages.map(\.1).max()!
        if peak > budget && options.headRatio == nil {
            // Lower the head count until the plan fits (not below 1 head per 1,000 vectors).
            while peak > budget && H > max(1, n / 1000) {
                H = max(max(1, n / 1000), H * 9 / 10)
                stages = estimate(heads: H, sample: sampleFor(H))
                peak = stages.map(\.1).max()!
            }
        }
        guard peak <= budget else {
            let detail = stages.map { "\($0.0) \(formatBytes($0.1))" }.joined(separator: ", ")
            throw FathomError(.memoryBudget, "the build needs about \(formatBytes(peak)) (\(detail)) for \(n) × \(d) vectors with \(H) heads, over the \(formatBytes(budget)) budget; raise --memory-budget to at least \(formatBytes(peak + (peak >> 4))) or lower --head-ratio")
        }
        let pages = pagesFor(heads: H)
        let cap = pages * 4096 / recordBytes
        guard cap >= 1 else {
            throw FathomError(.invalidArgument, "a posting of \(pages) page(s) cannot hold one \(recordBytes)-byte record; use --posting-pages \((recordBytes + 4095) / 4096) or more")
        }
        let serving = Self.servingEstimate(n: n, heads: H, d: d, reduced: codec == .none ? nil : reduced,
                                           recordBytes: recordBytes, degree: R, replicas: options.replicas,
                                           threads: options.serveThreads ?? ProcessInfo.processInfo.activeProcessorCount)
        return BuildPlan(count: n, dimension: d, reducedDimension: codec == .none ? d : reduced,
                         codec: codec, inputType: header.elementType, storedType: storedType,
                         heads: H, headRatio: Double(H) / Double(n), sampleSize: sampleFor(H),
                         postingPages: pages, postingCapacity: cap, recordBytes: recordBytes,
                         chunkRows: chunkRows, stageBytes: stages, budget: budget, serving: serving)
    }

    /// The serving-RAM model the head ratio is chosen from: heads, graph, table and codec
    /// (``ServingMemory``) plus each search thread's scratch at the default 32 probes (its IO
    /// buffer holds the postings it reads: 32 × the mean posting, whose length is n·r̂/H with
    /// r̂ = 0.85 × replicas accepted by the closure rule; its dedup table 16 B per record;
    /// 64 KiB for re-rank reads).
    static func servingEstimate(n: Int, heads H: Int, d: Int, reduced: Int?, recordBytes: Int, degree: Int,
                                replicas: Int, threads: Int) -> ServingMemory {
        ServingMemory.model(vectors: n, heads: H, dimension: d, reduced: reduced, degree: degree, recordBytes: recordBytes,
                            meanRecords: Double(n) * 0.85 * Double(replicas) / Double(max(H, 1)), threads: threads)
    }

    /// The head ratio (≤ 0.1, ≥ 1 head per 1,000 vectors) with the most heads whose serving
    /// RAM stays within ``BuildOptions/serveMemoryPerVector``: more heads route better but
    /// cost RAM; fewer heads make longer postings, so each thread's read buffer grows.
    func servingRatio(n: Int, d: Int, reduced: Int?, recordBytes: Int) -> Double {
        let threads = options.serveThreads ?? ProcessInfo.processInfo.activeProcessorCount
        let target = options.serveMemoryPerVector * Double(n)
        var best: Int? = nil
        var bestTotal = Int.max, bestH = 1
        var H = max(1, n / 10)
        let floor = max(1, n / 1000)
        while true {
            let m = Self.servingEstimate(n: n, heads: H, d: d, reduced: reduced, recordBytes: recordBytes,
                                         degree: options.graphDegree, replicas: options.replicas, threads: threads)
            if Double(m.total) <= target { best = H; break }
            if m.total < bestTotal { bestTotal = m.total; bestH = H }
            if H <= floor { break }
            H = max(floor, H * 9 / 10)
        }
        return Double(best ?? bestH) / Double(n)
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
        o.stopAfterStage = nil
        let text = "\(f.size)|\(mtime)|\(crc)|\(header.count)x\(header.dimension)|\(o)|H=\(plan.heads)|S=\(plan.sampleSize)|cap=\(plan.postingCapacity)|pages=\(plan.postingPages)"
        return String(format: "%08x", crc32c(text, seed: 0)) + String(format: "%08x", crc32c(String(text.reversed()), seed: 0x5bd1e995))
    }

    func stageDone(_ stage: String, fingerprint: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: buildDirectory + "/stage-\(stage).json"),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return obj["fingerprint"] as? String == fingerprint
    }

    func markDone(_ stage: String, fingerprint: String, seconds: Double) throws {
        let path = buildDirectory + "/stage-\(stage).json"
        let obj: [String: Any] = ["stage": stage, "fingerprint": fingerprint, "seconds": seconds]
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

    // MARK: build

    /// Runs (or resumes) the build and publishes the index atomically at `outputPath`.
    @discardableResult
    public func build() throws -> Manifest {
        let plan = try plan()
        if let codecReason { progress.note(codecReason) }
        progress.note(plan.description)
        BLAS.setThreads(1)
        let fp = try fingerprint(plan: plan)
        let fm = FileManager.default
        let lock = try lockBuild()
        defer { lock.release() }
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
            do { try fm.createDirectory(atPath: buildDirectory, withIntermediateDirectories: true) }
            catch { throw FathomError(.io, "cannot create the build directory (\(error.localizedDescription)); is the destination's parent writable?", path: buildDirectory) }
            let w = try SequentialFileWriter(path: fpPath, bufferBytes: 4096)
            try w.write([UInt8](fp.utf8)); try w.finish()
            try fsyncDirectory(buildDirectory)
        }

        var seconds: [String: Double] = [:]
        // train
        if stageDone("train", fingerprint: fp) {
            progress.note("train: already done (resumed)")
            seconds["train"] = stageSeconds("train")
        } else {
            let t0 = Date()
            try trainStage(plan: plan)
            seconds["train"] = Date().timeIntervalSince(t0)
            try markDone("train", fingerprint: fp, seconds: seconds["train"]!)
            try stopIfAsked("train")
        }
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

    var lockPath: String { outputPath + ".fathom-build.lock" }
    var parentDirectory: String { URL(fileURLWithPath: outputPath).deletingLastPathComponent().path }

    /// Takes the build lock of the destination (`OUTPUT.fathom-build.lock`, flock), creating
    /// the destination's parent directories if needed; a second builder of the same
    /// destination fails here at once.
    func lockBuild() throws -> FileLock {
        do { try FileManager.default.createDirectory(atPath: parentDirectory, withIntermediateDirectories: true) }
        catch { throw FathomError(.io, "cannot create the destination's parent directory (\(error.localizedDescription))", path: outputPath) }
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
                ? try AttributeTable.loadJSONLines(path: apath, expectedRows: n)
                : try AttributeTable.loadCSV(path: apath, expectedRows: n)
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
        let sample = Matrix(rows: S, cols: d)
        // One sequential pass picks the sample rows (cheaper than S random reads).
        let reader = try VectorFileReader(path: inputPath)
        let chunk = Matrix(rows: plan.chunkRows, cols: d)
        var row = 0, next = 0
        progress.begin("train: sampling \(S) of \(n) vectors", total: UInt64(n))
        while next < S {
            let got = try reader.readFloats(maxRows: plan.chunkRows, into: chunk.data)
            if got == 0 { break }
            while next < S && sampleIds[next] < row + got {
                let r = sampleIds[next] - row
                let src = chunk.row(r)
                try checkFinite(src, d: d, row: sampleIds[next])
                sample.row(next).update(from: src, count: d)
                if options.metric == .cosine { try normalizeOrThrow(sample.row(next), d: d, row: sampleIds[next]) }
                next += 1
            }
            row += got
            progress.advance(UInt64(got))
        }
        progress.end()
        guard next == S else {
            throw FathomError(.malformedFile, "input ended after \(row) of \(n) vectors while sampling", path: inputPath)
        }
        var km = BalancedKMeans()
        km.seed = options.seed
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
        let layout = IndexLayout(directory: buildDirectory)
        try layout.writeHeads(heads, ids: headIds)
        try layout.writeGraph(graph)
        if let kind = codec.lvqKind {
            let codec = try trainCodec(sample: sample, kind: kind, plan: plan)
            try codec.write(to: layout.codecPath)
        }
    }

    /// LeanVec on at most 100,000 sample rows: PCA, or LeanVec-OOD with `--train-queries`.
    func trainCodec(sample: Matrix, kind: LVQKind, plan: BuildPlan) throws -> CompactCodec {
        let d = plan.dimension
        let rows = min(sample.rows, 100_000)
        let train = Matrix(rows: rows, cols: d)
        let step = Double(sample.rows) / Double(rows)
        for i in 0..<rows { train.row(i).update(from: sample.row(Int(Double(i) * step)), count: d) }
        let projection: LeanVecProjection
        if options.trainQueries != nil && options.metric == .l2 {
            progress.note("train: LeanVec-OOD models inner products; with --metric l2 the projection is PCA (the training queries are not used)")
        }
        if let qpath = options.trainQueries, options.metric != .l2 {
            let q = try DatasetTools.loadFloats(qpath, maxRows: 100_000)
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

    @inline(__always)
    func checkFinite(_ v: UnsafePointer<Float>, d: Int, row: Int) throws {
        for j in 0..<d where !v[j].isFinite {
            throw FathomError(.nonFiniteValue, "vector \(row) has \(v[j]) at component \(j); remove or fix non-finite vectors before building", path: inputPath,
                              offset: UInt64(header.dataOffset) + UInt64(row) * UInt64(header.recordStride) + UInt64(header.recordPrefix + j * header.elementType.size))
        }
    }

    func normalizeOrThrow(_ v: UnsafeMutablePointer<Float>, d: Int, row: Int) throws {
        guard Distance.normalize(v, d) else {
            throw FathomError(.invalidArgument, "vector \(row) is all zeros: it has no direction under the cosine metric; remove it or use --metric l2", path: inputPath)
        }
    }

    // MARK: stage: assign

    func assignStage(plan: BuildPlan, layout: IndexLayout) throws {
        let n = plan.count, d = plan.dimension
        let (heads, _) = try layout.readHeads()
        let graph = try layout.readGraph(heads: heads)
        let H = heads.rows
        let table = PostingAssignment(heads: H, cap: plan.postingCapacity, vectors: n)
        let vectorsOut = try layout.createVectors(count: n, dimension: d, type: storedType)
        let placement = IndexLayout.VectorPlacement(rowBytes: d * storedType.size)
        let reader = try VectorFileReader(path: inputPath)
        let rowBytes = d * header.elementType.size
        let raw = UnsafeMutableRawPointer.allocate(byteCount: plan.chunkRows * rowBytes, alignment: 64)
        defer { raw.deallocate() }
        let floats = Matrix(rows: plan.chunkRows, cols: d)
        let K = min(options.candidateHeads, H)
        let scratch = HeadGraph.Scratch(graphSize: H, beam: K + 32)
        let candIds = UnsafeMutablePointer<UInt32>.allocate(capacity: K + 32)
        let candDist = UnsafeMutablePointer<Float>.allocate(capacity: K + 32)
        let chosen = UnsafeMutablePointer<Int>.allocate(capacity: 8)
        defer { candIds.deallocate(); candDist.deallocate(); chosen.deallocate() }
        var row = 0
        progress.begin("assign: closure assignment (≤ \(options.replicas) of \(K) nearest heads)", total: UInt64(n))
        while true {
            let got = try reader.read(maxRows: plan.chunkRows, into: raw)
            if got == 0 { break }
            ElementConversion.toFloat(UnsafeRawPointer(raw), header.elementType, count: got * d, into: floats.data)
            for i in 0..<got {
                let v = floats.row(i)
                try checkFinite(v, d: d, row: row + i)
                if options.metric == .cosine { try normalizeOrThrow(v, d: d, row: row + i) }
            }
            try layout.appendVectors(vectorsOut, options.metric == .cosine ? UnsafeRawPointer(floats.data) : UnsafeRawPointer(raw),
                                     first: row, count: got, placement: placement)
            for i in 0..<got {
                let found = graph.search(floats.row(i), k: K, listSize: K + 32, scratch: scratch, outIds: candIds, outDist: candDist)
                let m = rngSelect(candidates: candIds, distances: candDist, count: found, replicas: options.replicas,
                                  rngFactor: options.rngFactor, heads: heads, out: chosen)
                for c in 0..<m { table.offer(head: Int(candIds[chosen[c]]), id: UInt32(row + i), distance: candDist[chosen[c]]) }
            }
            row += got
            progress.advance(UInt64(got))
        }
        guard row == n else { throw FathomError(.malformedFile, "input ended after \(row) of \(n) vectors", path: inputPath) }
        try layout.finishVectors(vectorsOut, count: n, dimension: d, type: storedType)
        progress.end()

        // Orphans: vectors whose every posting was cut. Put each back into its nearest
        // candidate head with room, else evict there a member that has another replica.
        var orphans = [Int]()
        for i in 0..<n where table.replicas[i] == 0 { orphans.append(i) }
        if !orphans.isEmpty {
            let store = try RandomAccessFile(path: layout.vectorsPath)
            let buf = UnsafeMutableRawPointer.allocate(byteCount: d * storedType.size, alignment: 64)
            defer { buf.deallocate() }
            let q = Matrix(rows: 1, cols: d)
            // Widen the search (64, 256, 1024, ... heads) until a posting can take the orphan:
            // there is always room somewhere, since the plan gives heads × cap ≥ n slots.
            let widest = min(H, 16384)
            let wideIds = UnsafeMutablePointer<UInt32>.allocate(capacity: widest + 32)
            let wideDist = UnsafeMutablePointer<Float>.allocate(capacity: widest + 32)
            defer { wideIds.deallocate(); wideDist.deallocate() }
            for id in orphans {
                try store.read(into: buf, count: d * storedType.size, at: placement.offset(id))
                ElementConversion.toFloat(UnsafeRawPointer(buf), storedType, count: d, into: q.data)
                var width = K
                var placed = false
                var found = 0
                while !placed {
                    found = graph.search(q.data, k: width, listSize: width + 32, scratch: scratch, outIds: wideIds, outDist: wideDist)
                    for c in 0..<found where table.sizes[Int(wideIds[c])] < Int32(table.cap) {
                        placed = table.offer(head: Int(wideIds[c]), id: UInt32(id), distance: wideDist[c]); if placed { break }
                    }
                    if !placed {
                        for c in 0..<found {
                            if table.forceInsert(head: Int(wideIds[c]), id: UInt32(id), distance: wideDist[c]) { placed = true; break }
                        }
                    }
                    if placed || width >= widest { break }
                    width = min(widest, width * 4)
                }
                guard placed else {
                    throw FathomError(.invalidArgument, "vector \(id) fits in no posting: its \(found) nearest postings are full of vectors with a single replica; raise --posting-pages or --head-ratio")
                }
            }
            progress.note("assign: \(orphans.count) vectors lost every posting to the size cap and were placed back")
        }
        try layout.writeAssignment(table, orphansFixed: orphans.count)
    }

    // MARK: stage: pack

    func packStage(plan: BuildPlan, layout: IndexLayout) throws -> Manifest.Stats {
        let d = plan.dimension
        let (table, orphansFixed) = try layout.readAssignment()
        let H = table.heads
        let recordBytes = plan.recordBytes
        let vecBytes = d * storedType.size
        let store = try RandomAccessFile(path: layout.vectorsPath)
        let placement = IndexLayout.VectorPlacement(rowBytes: vecBytes)
        let codec = self.codec == .none ? nil : try CompactCodec.read(from: layout.codecPath)
        let full = Matrix(rows: 1, cols: d)
        let reducedScratch = Matrix(rows: 1, cols: max(plan.reducedDimension, 1))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: vecBytes, alignment: 64)
        defer { raw.deallocate() }
        let out = try SequentialFileWriter(path: layout.postingsPath)
        try out.pad(to: 4096)
        var entries = [PostingEntry](repeating: PostingEntry(offset: 0, count: 0, pages: 0, crc: 0), count: H)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(plan.postingCapacity, 1) * recordBytes, alignment: 4096)
        defer { buf.deallocate() }
        var cursor: UInt64 = 4096
        var records = 0, empty = 0, maxRecords = 0
        let attrs = options.attributes == nil ? nil : try AttributeStore.readAttributes(path: buildDirectory + "/" + AttributeStore.attrsFile)
        var summaries = [AttributeSummary]()
        progress.begin("pack: writing \(H) postings", total: UInt64(H))
        for h in 0..<H {
            let members = table.members(h)
            let c = members.count
            if let attrs { summaries.append(AttributeSummary.summarize(ids: members.map(\.1), table: attrs.0, quantized: attrs.1)) }
            if c == 0 { empty += 1; entries[h] = PostingEntry(offset: cursor, count: 0, pages: 0, crc: 0); progress.advance(); continue }
            let bytes = UInt64(c * recordBytes)
            let rem = bytes % 4096
            let inPage = cursor % 4096
            if rem == 0 || inPage + rem > 4096 { if inPage != 0 { cursor += 4096 - inPage } }
            for (j, m) in members.enumerated() {
                let rec = buf + j * recordBytes
                rec.storeBytes(of: m.1.littleEndian, as: UInt32.self)
                if let codec {
                    try store.read(into: raw, count: vecBytes, at: placement.offset(Int(m.1)))
                    ElementConversion.toFloat(UnsafeRawPointer(raw), storedType, count: d, into: full.data)
                    codec.encode(full.data, scratch: reducedScratch.data, into: rec + 4)
                } else {
                    try store.read(into: rec + 4, count: vecBytes, at: placement.offset(Int(m.1)))
                }
            }
            try out.pad(to: cursor)
            try out.write(UnsafeRawPointer(buf), count: Int(bytes))
            let pages = UInt32((cursor % 4096 + bytes + 4095) / 4096)
            entries[h] = PostingEntry(offset: cursor, count: UInt32(c), pages: pages, crc: crc32c(buf, Int(bytes), 0))
            cursor += bytes
            records += c
            maxRecords = max(maxRecords, c)
            progress.advance()
        }
        // Pad to whole pages so every posting read stays inside the file.
        let end = (cursor + 4095) / 4096 * 4096
        try out.pad(to: end)
        let hdr = IndexFileHeader(magic: IndexLayout.postingsMagic, count: UInt64(records), dimension: UInt32(plan.reducedDimension),
                                  elementType: codec == nil ? IndexFileHeader.code(storedType) : 100 + (codec!.lvq.kind == .lvq8 ? 0 : (codec!.lvq.kind == .lvq4 ? 1 : 2)), payloadOffset: 4096,
                                  payloadBytes: end - 4096, recordBytes: UInt32(recordBytes), aux: 4096)
        try out.patch(hdr.encode(), at: 0)
        try out.finish()
        try layout.writePostingTable(entries)
        if attrs != nil { try AttributeStore.writeSummaries(summaries, path: buildDirectory + "/" + AttributeStore.summariesFile) }
        progress.end("\(records) records, \(empty) empty postings")
        return Manifest.Stats(records: records, mean_replicas: Double(records) / Double(plan.count),
                              cut_records: table.cutRecords, orphans_fixed: orphansFixed, empty_postings: empty,
                              max_posting_records: maxRecords, posting_bytes: end)
    }

    // MARK: publish

    func attributeInfo() throws -> Manifest.AttributeInfo? {
        guard options.attributes != nil else { return nil }
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

    func publish(plan: BuildPlan, stats: Manifest.Stats, seconds: [String: Double], fingerprint: String) throws -> Manifest {
        let layout = IndexLayout(directory: buildDirectory)
        var files = [Manifest.FileEntry]()
        for name in IndexLayout.dataFiles + (codec == .none ? [] : [IndexLayout.codecFile])
            + (options.attributes == nil ? [] : [AttributeStore.attrsFile, AttributeStore.summariesFile])
            + (options.labels == nil ? [] : [LabelsFile.name]) {
            let (bytes, crc) = try fileCRC32C(buildDirectory + "/" + name)
            files.append(.init(name: name, bytes: bytes, crc32c: String(format: "%08x", crc)))
        }
        let heads = try layout.headCount()
        let absInput = URL(fileURLWithPath: inputPath).standardizedFileURL.path
        let size = (try? FileManager.default.attributesOfItem(atPath: inputPath)[.size] as? UInt64) ?? 0
        let manifest = try Manifest(
            metric: options.metric, element_type: storedType, dimension: plan.dimension, count: plan.count,
            heads: heads, record_bytes: plan.recordBytes,
            parameters: .init(head_ratio: Double(heads) / Double(plan.count), replicas: options.replicas,
                              posting_pages: plan.postingPages, posting_capacity: plan.postingCapacity,
                              graph_degree: options.graphDegree, candidate_heads: options.candidateHeads,
                              rng_factor: Double(options.rngFactor), seed: options.seed, sample_size: plan.sampleSize),
            stats: stats,
            input: .init(path: absInput, bytes: size, format: header.format.rawValue, fingerprint: fingerprint),
            build: .init(seconds: seconds, peak_rss_bytes: peakRSSBytes(), fathom_version: "0.1.0"),
            files: files,
            codec: codec.rawValue,
            reduced_dimension: codec == .none ? nil : plan.reducedDimension,
            leanvec: try leanVecInfo(layout: layout),
            attributes: try attributeInfo()).sealed()
        let mpath = buildDirectory + "/manifest.json"
        let w = try SequentialFileWriter(path: mpath, bufferBytes: 1 << 16)
        try w.write([UInt8](try manifest.sealedData()))
        try w.finish()
        // Scratch files of the build (not in the manifest) never reach the published tree:
        // deleted, durably, before the rename. A crash from here on makes a rerun start over
        // (the fingerprint is gone), never publish a half-made directory.
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: buildDirectory) }
        catch { throw FathomError(.io, "cannot list the build directory (\(error.localizedDescription))", path: buildDirectory) }
        for name in entries where IndexLayout.isScratch(name) {
            try removeTree(buildDirectory + "/" + name)
        }
        try fsyncDirectory(buildDirectory)
        try Publisher.publish(buildDirectory: buildDirectory, destination: outputPath)
        progress.note("published \(outputPath)")
        return manifest
    }
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

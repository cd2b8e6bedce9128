import ArgumentParser
import Fathom
import FathomTools
import Foundation

/// The flags that decide a model (`fathom train`, and `fathom build`, which trains one unless
/// given --model).
struct TrainingFlags: ParsableArguments {
    @Option(help: "Distance: l2 (squared Euclidean), ip (inner product) or cosine.") var metric: Metric = .l2
    @Option(name: .customLong("memory-budget"), help: "Peak memory (RSS) the build stays within, e.g. 512MiB, 2GiB.")
    var memoryBudget: ByteSize = ByteSize(bytes: 2 << 30)
    @Option(name: .customLong("head-ratio"), help: "Heads per vector, in (0, 1] (default: calibrated for --target-recall on a sample of the input, bounded by --serve-memory and the budget).")
    var headRatio: Double?
    @Option(name: .customLong("target-recall"), help: "The head count's goal: the finest partition whose postings hold this share of a held-out sample query's 10 nearest neighbours in its --target-probes nearest postings (calibrated on a sample of the input; bounded by the budgets).") var targetRecall: Double = 0.90
    @Option(name: .customLong("target-probes"), help: "Postings per query the --target-recall is asked at.") var targetProbes: Int = 8
    @Option(help: "Postings each vector may join (RNG closure), 1-8.") var replicas: Int = 8
    @Option(name: .customLong("posting-pages"), help: "Size cap of a posting in 4 KiB pages (default: room for 48 records, at least 3).")
    var postingPages: Int?
    @Option(name: .customLong("graph-degree"), help: "Neighbours per head in the head graph.") var graphDegree: Int = 32
    @Option(name: .customLong("candidate-heads"), help: "Nearest heads examined per vector for the closure rule.") var candidateHeads: Int = 64
    @Option(name: .customLong("sample-size"), help: "Training sample in vectors (default: max(4 × heads, 50000)).") var sampleSize: Int?
    @Option(help: "What postings store: auto (lvq4 or lvq8, chosen from a sample of the data), lvq4, lvq8 or lvq4x8 (LVQ codes of the LeanVec-reduced vectors; full vectors stay on disk for re-ranking) or none (full vectors).")
    var codec: PostingCodec = .auto
    @Option(name: .customLong("serve-memory"), help: ArgumentHelp("RAM the index may need to serve, per vector (e.g. 32B) or in total (e.g. 4GiB): heads, graph, posting table, codec and the search threads' scratch. Bounds the calibrated head count unless --head-ratio is given (docs/memory.md).", valueName: "size"))
    var serveMemory: String = "32B"
    @Option(name: .customLong("reduce-dims"), help: "LeanVec target dimension of the postings' codes for a compressing codec (default: the fewest principal components, a multiple of 8, that keep 99% of a sample's variance).")
    var reduceDims: Int?
    @Option(name: .customLong("router-dims"), help: "Components of the projection the heads are coded in for routing, at most --reduce-dims (default: D/2 rounded up to a multiple of 8): the heads are serving RAM, the codes are on SSD.")
    var routerDims: Int?
    @Option(name: .customLong("train-queries"), help: ArgumentHelp("A sample of real queries: learn the query-aware LeanVec-OOD projection (default: PCA on the data).", valueName: "path"))
    var trainQueries: String?
    @Option(help: ArgumentHelp("Attributes per vector for filtered search: CSV with a header (types as name:int|float|category|tags or inferred) or JSON lines (.jsonl).", valueName: "path"))
    var attributes: String?
    @Option(help: ArgumentHelp("External labels: one decimal UInt64 per line, in input order, unique (default: row numbers). Results report them.", valueName: "path"))
    var labels: String?
    @Option(help: "Random seed (same seed and input: same index).") var seed: UInt64 = 42
    @Option(help: "Worker threads for k-means and the assignment (head search, closure rule, encoding). The index is byte-identical for any count; the head graph build and pack run on one thread.") var threads: Int = 1

    /// The library's options these flags set (the serving RAM per vector needs the input's count).
    func options(vectors: Int?) throws -> BuildOptions {
        var o = BuildOptions()
        o.metric = metric; o.memoryBudget = memoryBudget.bytes; o.headRatio = headRatio; o.replicas = replicas
        o.postingPages = postingPages; o.graphDegree = graphDegree; o.candidateHeads = candidateHeads
        o.sampleSize = sampleSize; o.seed = seed; o.threads = threads
        o.targetRecall = targetRecall; o.targetProbes = targetProbes
        o.codec = codec; o.reduceDims = reduceDims; o.routerDims = routerDims; o.trainQueries = trainQueries
        o.attributes = attributes
        o.labels = labels
        if let vectors { o.serveMemoryPerVector = try ServeMemory.perVector(serveMemory, vectors: vectors, flag: "--serve-memory") }
        return o
    }
}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train the model many shards share: heads, head graph, LeanVec + LVQ codec, attributes, labels (model.json with its fingerprint).",
        discussion: """
        The train stage of `fathom build` alone, with the same flags: sample → balanced k-means
        heads → head graph, the codec, the attribute table and its quantizer, the labels. The
        model directory is published atomically; `fathom build --model DIR [--shard i/N]` then
        assigns and packs with it. model.json records a fingerprint over the model's files and
        the parameters that decide an assignment; a shard records it. See docs/scale-out.md.
        """
    )
    @Option(help: ArgumentHelp("Input vectors (.fbin/.u8bin/.i8bin, .fvecs/.bvecs, .npy).", valueName: "path")) var input: String
    @Option(help: ArgumentHelp("Model directory to create or replace.", valueName: "dir")) var output: String
    @OptionGroup(title: "Training") var training: TrainingFlags
    @Flag(help: "Do not print progress on stderr.") var quiet = false
    @Flag(help: "Print model.json on stdout when done.") var json = false

    func run() throws {
        try runReportingErrors {
            let header = try VectorFileHeader.inspect(path: input, format: nil)
            let o = try training.options(vectors: header.count)
            let builder = try IndexBuilder(input: input, output: output, options: o, progress: ProgressReporter(enabled: !quiet))
            let m = try builder.train()
            try printResult(m, json: json, text: "trained \(output): \(m.heads) heads for \(m.count) × \(m.dimension) vectors, codec \(m.codec), fingerprint \(m.fingerprint), train \(String(format: "%.1f", m.train_seconds ?? 0)) s")
        }
    }
}

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build a SPANN index directory from a vector file, out of core, within a memory budget.",
        discussion: """
        Stages: train (sample → balanced k-means heads → head graph), assign (stream the input;
        each vector joins ≤ --replicas postings by the RNG closure rule over its nearest heads),
        pack (page-aligned postings). Out of core: the assignment is spilled as sorted runs and
        merged, pack fills postings bucket by bucket from one ordered pass over the codes. The
        plan (heads, posting size, per stage RAM, temporary and final disk, estimated time) is
        printed first; a budget or disk that cannot hold the build is refused with the numbers.
        --plan-only prints the plan and stops (with --n/--dim/--type, no input is read); see
        docs/build.md. A build killed midway and
        rerun with the same arguments resumes after its last finished stage. The index is
        published atomically: DIR holds the previous complete index or the new one, never a mix
        and never none. While a build runs it holds DIR.fathom-build.lock: a second build of the
        same DIR fails at once (exit 11). Format: docs/format.md.
        """
    )

    @Option(help: ArgumentHelp("Input vectors (.fbin/.u8bin/.i8bin, .fvecs/.bvecs, .npy). Not needed with --plan-only --n --dim.", valueName: "path")) var input: String?
    @Option(help: ArgumentHelp("Index directory to create or replace.", valueName: "dir")) var output: String?
    @Flag(name: .customLong("plan-only"), help: "Print the plan (per stage RAM, temporary and final disk, estimated time) and stop; with --n, --dim and --type no input is needed.")
    var planOnly = false
    @Option(name: .customLong("n"), help: "Vector count to plan for (with --dim and --type). A real build checks the input matches, after the plan.") var planCount: Int?
    @Option(name: .customLong("dim"), help: "Dimension to plan for (with --n).") var planDim: Int?
    @Option(name: .customLong("type"), help: "Element type to plan for: f32, u8 or i8 (default f32).") var planType: String = "f32"
    @OptionGroup(title: "Training (with --model: the model's apply)") var training: TrainingFlags
    @Option(help: ArgumentHelp("A model directory (fathom train): install its heads, graph, codec, attributes and labels instead of training; the assignment's parameters are the model's (docs/scale-out.md).", valueName: "dir"))
    var model: String?
    @Option(help: ArgumentHelp("With --model: build only shard i of N, the postings of heads [i·H/N, (i+1)·H/N) and the vectors they reference (docs/scale-out.md).", valueName: "i/N"))
    var shard: String?
    @Option(name: .customLong("sort-buffer"), help: "Cap on the assignment's sort buffer (default: what the budget leaves); smaller spills more runs, the index is the same.")
    var sortBuffer: ByteSize?
    @Option(name: .customLong("pack-bucket"), help: "Cap on the posting bytes pack fills per pass (default: what the budget leaves); the index is the same.")
    var packBucket: ByteSize?
    @Flag(help: "Do not print progress on stderr.") var quiet = false
    @Flag(help: "Print the manifest (with --plan-only: the plan) as JSON on stdout when done.") var json = false

    func validate() throws {
        if !planOnly {
            guard input != nil else { throw ValidationError("--input is required (or use --plan-only with --n and --dim)") }
            guard output != nil else { throw ValidationError("--output is required (or use --plan-only)") }
        }
        if planOnly && input == nil && (planCount == nil || planDim == nil) {
            throw ValidationError("--plan-only without --input needs --n and --dim (and --type)")
        }
        if (planCount == nil) != (planDim == nil) { throw ValidationError("--n and --dim go together") }
        if shard != nil && model == nil { throw ValidationError("--shard needs --model (train one with fathom train)") }
        if model != nil && planOnly && input == nil { throw ValidationError("--plan-only with --model needs --input") }
    }

    static func elementType(_ t: String) throws -> ElementType {
        switch t.lowercased() {
        case "f32", "float32", "float": return .float32
        case "u8", "uint8": return .uint8
        case "i8", "int8": return .int8
        default: throw FathomError(.invalidArgument, "--type \(t) is not an element type; use f32, u8 or i8")
        }
    }

    func run() throws {
        try runReportingErrors {
            var o = try training.options(vectors: nil)
            o.sortBufferBytes = sortBuffer?.bytes; o.packBucketBytes = packBucket?.bytes
            // Given n and d, plan (and refuse) before the input is touched.
            var given: BuildShape? = nil
            if let c = planCount, let d = planDim {
                given = BuildShape(count: c, dimension: d, inputType: try Self.elementType(planType))
            }
            if let shape = given {
                var po = o
                po.serveMemoryPerVector = try ServeMemory.perVector(training.serveMemory, vectors: shape.count, flag: "--serve-memory")
                let codec = o.codec == .auto ? PostingCodec.lvq8 : o.codec
                let plan = try BuildPlanner.plan(shape: shape, codec: codec, storedType: training.metric == .cosine ? .float32 : shape.inputType, options: po)
                if planOnly {
                    if o.codec == .auto { FileHandle.standardError.write(Data("plan: codec auto plans as lvq8 (the larger code it may pick); give --codec to plan another\n".utf8)) }
                    print(json ? planJSON(plan) : plan.description)
                    return
                }
            }
            let input = self.input!
            let header = try VectorFileHeader.inspect(path: input, format: nil)
            if let s = given, s.count != header.count || s.dimension != header.dimension {
                throw FathomError(.invalidArgument, "the input holds \(header.count) × \(header.dimension) vectors, not the --n \(s.count) × --dim \(s.dimension) planned", path: input)
            }
            o.serveMemoryPerVector = try ServeMemory.perVector(training.serveMemory, vectors: header.count, flag: "--serve-memory")
            let progress = ProgressReporter(enabled: !quiet)
            let shardSpec = try shard.map { try ShardSpec(parsing: $0) }
            if model != nil { progress.note("build: the model's training parameters apply (metric, codec, heads, replicas, posting size, …)") }
            let builder = try IndexBuilder(input: input, output: output ?? input + ".index", options: o, model: model, shard: shardSpec, progress: progress)
            if planOnly {
                let plan = try builder.plan()
                if let r = builder.codecReason { FileHandle.standardError.write(Data((r + "\n").utf8)) }
                print(json ? planJSON(plan) : plan.description)
                return
            }
            let m = try builder.build()
            if json {
                print(String(decoding: try m.encoded(), as: UTF8.self))
            } else {
                let secs = m.build.seconds
                let part = m.shard.map { " (shard \($0.index)/\($0.count): heads \($0.head_begin)..<\($0.head_end), \($0.vectors) vectors, \(m.stats.records) records)" } ?? ""
                print("built \(output!)\(part): \(m.count) vectors, \(m.heads) heads, \(String(format: "%.2f", m.stats.mean_replicas)) replicas/vector, " +
                      "train \(String(format: "%.1f", secs["train"] ?? 0)) s, assign \(String(format: "%.1f", secs["assign"] ?? 0)) s, pack \(String(format: "%.1f", secs["pack"] ?? 0)) s, " +
                      "peak RSS \(formatBytes(m.build.peak_rss_bytes))")
            }
        }
    }

    func planJSON(_ p: BuildPlan) -> String {
        var stages = [[String: Any]]()
        for st in p.stages {
            stages.append(["name": st.name, "ram_bytes": st.ram, "temp_disk_bytes": st.tempDisk, "final_disk_bytes": st.finalDisk,
                           "seconds": st.seconds,
                           "ram_terms": Dictionary(st.ramTerms.map { ($0.0, $0.1) }, uniquingKeysWith: +),
                           "time_terms": Dictionary(st.timeTerms.map { ($0.0, $0.1) }, uniquingKeysWith: +)])
        }
        let obj: [String: Any] = ["count": p.count, "dimension": p.dimension, "codec": p.codec.rawValue, "heads": p.heads,
                                  "head_choice": p.headChoice, "posting_slack": p.postingSlack,
                                  "calibration": p.calibration.map { c in ["target_recall": c.targetRecall, "target_probes": c.targetProbes,
                                      "sample_rows": c.sampleRows, "queries": c.queries, "points_per_head": c.pointsPerHead,
                                      "reached_target": c.reachedTarget, "seconds": c.seconds,
                                      "trials": c.trials.map { ["points_per_head": $0.pointsPerHead, "heads": $0.heads, "recall": $0.recall] }] as [String: Any] } ?? NSNull(),
                                  "sample_size": p.sampleSize, "posting_pages": p.postingPages, "posting_capacity": p.postingCapacity,
                                  "record_bytes": p.recordBytes, "expected_replicas": p.expectedReplicas, "threads": p.threads,
                                  "budget_bytes": p.budget, "peak_ram_bytes": p.peakBytes, "final_disk_bytes": p.finalDiskBytes,
                                  "peak_disk_bytes": p.peakDiskBytes, "estimated_seconds": p.estimatedSeconds, "stages": stages]
        let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

struct SearchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Search an index with a query file; one row per --probes setting.",
        discussion: """
        Columns: probes, QPS (queries / wall second over the whole set), mean / p50 / p99 / p99.9
        latency in microseconds, mean posting reads and KiB read per query, and recall@k (with --gt;
        big-ann definition, ties at the k-th distance count). --json prints
        {"rows":[{"probes":…,"qps":…,"recall":…,"mean_us":…,"p50_us":…,"p99_us":…,"p999_us":…,"mean_ios":…,"mean_kib":…}],
        "io_engine":…,"window":…,"postings_resident":…}.
        """
    )

    @Option(help: ArgumentHelp("Index directory (from `fathom build`), or s3://BUCKET/PREFIX (pulled into --cache first, verified: docs/scale-out.md).", valueName: "dir")) var index: String
    @OptionGroup var store: ObjectStoreOptions
    @Option(help: ArgumentHelp("Query vectors (any supported format).", valueName: "path")) var queries: String
    @Option(help: ArgumentHelp("Ground truth (.ibin or .ivecs) for recall.", valueName: "path")) var gt: String?
    @Option(name: .short, help: "Neighbours per query.") var k: Int = 10
    @Option(help: "Comma-separated postings-per-query settings to sweep.") var probes: String = "8,16,32,64"
    @Option(name: .customLong("max-dist-ratio"), help: "Prune postings whose head is farther than this × the nearest head (squared distances).")
    var maxDistRatio: Float = 8
    @Option(help: "A filter for every query, e.g. \"price < 100 AND tags HAS 'cat'\" (docs/filters.md).") var filter: String?
    @Option(help: ArgumentHelp("One filter per query, a line each (an empty line: no filter).", valueName: "path")) var filters: String?
    @Flag(name: .customLong("post-filter"), help: "Baseline for comparison: search without the filter for 2k/selectivity neighbours, then keep the k that match.")
    var postFilter = false
    @Option(help: "Compressed indexes: candidates re-ranked with full vectors from disk (default: max(20, 2 × k); max(20, 4 × k) for lvq4).")
    var rerank: Int?
    @Option(name: .customLong("head-list"), help: "Beam width of the head-graph search (default: max(2 × probes, 64)).")
    var headList: Int?
    @Option(help: "Search threads (default: the number of CPUs).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Queries in flight per thread (libaio engine, unfiltered queries): while some wait for their reads the thread scores others. 1: one query at a time per thread, as DiskANN's search tool does.")
    var window: Int = VectorIndex.defaultWindow
    @Option(name: .customLong("serve-memory"), help: ArgumentHelp("RAM the open index may hold, per vector (e.g. 64B) or in total (e.g. 2GiB); when the postings fit they are held in RAM and only re-rank reads go to disk (default: heads, graph, table and codec only).", valueName: "size"))
    var serveMemory: String?
    @Option(help: "Use at most this many queries (default: all).") var limit: Int?
    @Option(help: "IO engine: aio (libaio + O_DIRECT), pread, or auto (aio, pread where O_DIRECT is refused).") var io: String = "auto"
    @Flag(name: .customLong("no-checksums"), help: "Skip the CRC32C check of each posting and vectors.dat page read.") var noChecksums = false
    @Option(help: ArgumentHelp("Write the last setting's results (their labels) as big-ann .ibin.", valueName: "path")) var output: String?
    @Flag(help: "Print JSON on stdout instead of the table.") var json = false
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func validate() throws {
        guard k >= 1 else { throw ValidationError("-k must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard (1...64).contains(window) else { throw ValidationError("--window must be between 1 and 64") }
        guard !probeList.isEmpty, probeList.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--probes must be a comma-separated list of positive integers, e.g. 8,16,32")
        }
        guard ["auto", "aio", "pread"].contains(io) else { throw ValidationError("--io must be auto, aio or pread") }
    }

    var probeList: [Int] { probes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func run() async throws {
        try await runReportingErrorsAsync {
            let index = try await store.localIndex(self.index, flag: "--index", quiet: quiet)
            let progress = ProgressReporter(enabled: !quiet)
            let mode: IOMode = io == "aio" ? .aio : (io == "pread" ? .pread : .auto)
            let budget = try serveMemory.map { text -> UInt64 in
                let m = try Manifest.load(directory: index)
                return UInt64(try ServeMemory.perVector(text, vectors: m.count, flag: "--serve-memory") * Double(m.count))
            }
            let idx = try VectorIndex.openCurrent(at: index, io: mode, serveMemory: budget)   // built version + its update log
            guard k <= idx.count else {
                throw FathomError(.invalidArgument, "-k \(k) exceeds the \(idx.count) vectors in the index", path: index)
            }
            let q = try loadQueries(queries, limit: limit)
            try checkVectors(q, path: queries, what: "queries", one: "query", dimension: idx.dimension, against: "the index \(index)", metric: idx.metric)
            let truth = try gt.map { try GroundTruth.read(path: $0) }
            var base = SearchParameters()
            base.maxDistRatio = maxDistRatio
            base.headListSize = headList
            base.rerank = rerank
            base.verifyChecksums = !noChecksums
            var prepared: [PreparedFilter?]? = nil
            if let f = filter {
                let pf = try idx.prepareFilter(f)
                progress.note(String(format: "search: filter estimated selectivity %.4f (%d exact matches)", pf.selectivity, idx.matchingIds(pf).count))
                prepared = [PreparedFilter?](repeating: pf, count: q.rows)
            } else if let path = filters {
                let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                guard lines.count >= q.rows else {
                    throw FathomError(.invalidArgument, "\(lines.count) filter lines for \(q.rows) queries", path: path)
                }
                var cache = [String: PreparedFilter]()
                prepared = try (0..<q.rows).map { i in
                    let t = lines[i].trimmingCharacters(in: .whitespaces)
                    if t.isEmpty { return nil }
                    if let c = cache[t] { return c }
                    do { let pf = try idx.prepareFilter(t); cache[t] = pf; return pf }
                    catch var e as FathomError { e.path = path; e.message = "line \(i + 1): " + e.message; throw e }
                }
            }
            progress.note("search: \(q.rows) queries, k = \(k), \(threads) thread(s) × \(window) in flight, IO \(idx.ioEngineName)\(idx.postingsResident ? " (postings in RAM)" : ""), index \(idx.count) vectors / \(idx.headCount) heads, serving RAM \(idx.servingMemory.summary)")
            let (rows, ids, dists) = try SearchBenchmark.run(index: idx, queries: q, k: k, probes: probeList, threads: threads, window: window,
                                                             gt: truth, base: base, filters: prepared, postFilter: postFilter, progress: progress)
            if json {
                struct Out: Codable { var rows: [SearchReportRow]; var io_engine: String; var window: Int; var postings_resident: Bool }
                let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(Out(rows: rows, io_engine: idx.ioEngineName, window: window, postings_resident: idx.postingsResident)), as: UTF8.self))
            } else {
                print(SearchBenchmark.table(rows, k: k), terminator: "")
            }
            if let output {
                if let top = idx.labels.maxLabel, top >= UInt64(UInt32.max) - 1 {
                    throw FathomError(.invalidArgument, "label \(top) does not fit the 32-bit ids of an .ibin result file", path: output)
                }
                var flatIds = [Int32](), flatD = [Float]()
                for i in 0..<ids.count {
                    for j in 0..<k { flatIds.append(j < ids[i].count ? Int32(bitPattern: ids[i][j]) : -1); flatD.append(j < dists[i].count ? dists[i][j] : .infinity) }
                }
                try GroundTruth(count: ids.count, k: k, ids: flatIds, distances: flatD).write(path: output)
            }
        }
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every file of an index against its checksums and structure; list each problem with file and offset.",
        discussion: "Exit status 0 when the index is sound, 8 (corruptIndex) when any problem is found."
    )
    @Argument(help: ArgumentHelp("Index directory.", valueName: "dir")) var index: String
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func run() throws {
        let problems = IndexVerifier.verify(directory: index, progress: ProgressReporter(enabled: !quiet))
        if problems.isEmpty { print("ok: \(index) verified"); return }
        for p in problems { print("problem: \(p)") }
        print("\(problems.count) problem(s) found: rebuild the index")
        throw ExitCode(FathomError.Code.corruptIndex.exitStatus)
    }
}

extension PostingCodec: ExpressibleByArgument {}

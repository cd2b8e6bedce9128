import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// What a build reads: enough to plan it without opening the input (a plan made from a
/// shape alone, as the CLI's plan-only mode does).
public struct BuildShape: Sendable, Equatable {
    public var count: Int
    public var dimension: Int
    public var inputType: ElementType
    public init(count: Int, dimension: Int, inputType: ElementType) {
        self.count = count; self.dimension = dimension; self.inputType = inputType
    }
}

/// One stage of a plan: its peak RAM, the temporary disk it leaves for later stages (or
/// uses itself), the final index bytes it writes, and its estimated wall time.
public struct StagePlan: Sendable {
    public var name: String
    public var ram: UInt64
    /// How the RAM figure is made up, largest first (name, bytes).
    public var ramTerms: [(String, UInt64)]
    public var tempDisk: UInt64
    public var finalDisk: UInt64
    public var seconds: Double
    /// How the time figure is made up (name, seconds).
    public var timeTerms: [(String, Double)]
}

/// Stage cost constants of the time estimate, each calibrated on one stage of a 1M × 128
/// float32 build (a 2 GiB memory budget, 2 threads, synthetic seed 2) on this project's
/// 2-vCPU machine: docs/build.md, "Where the rates come from", has the timings and the
/// arithmetic. A model, not a measurement of the machine the plan runs on.
public struct BuildRates: Sendable {
    /// Seconds per (sample point × dimension × 32 centroids × 16 iterations × tree level) of k-means.
    public var kmeansSecondsPerUnit = 4.3e-11
    /// Seconds per (head × dimension × build beam × log2 heads) of the head-graph build.
    public var graphSecondsPerUnit = 5.5e-10
    /// Seconds per (vector × dimension × search beam × log2 heads) of the assignment, per
    /// thread (head search, closure rule, encoding; the stage's writes land in the page cache).
    public var assignSecondsPerUnit = 3.2e-10
    /// Seconds per record of pack (merge, code copy, CRC, write) when its files are cached.
    public var packSecondsPerRecord = 4.7e-7
    /// Seconds per record of sorting and merging the assignment's runs.
    public var sortSecondsPerRecord = 1.5e-7
    /// Sequential read bandwidth (input sampling; pack's code passes), bytes per second.
    public var readBytesPerSecond = 1.4e9
    public init() {}
}

/// The build's plan: heads, posting size, what each stage needs (RAM, disk, time), and the
/// invariants checked before any work. Made by ``BuildPlanner/plan(shape:codec:storedType:options:)``.
public struct BuildPlan: Sendable, CustomStringConvertible {
    public var count: Int
    public var dimension: Int
    public var reducedDimension: Int
    /// Components the heads are coded in for routing (≤ ``reducedDimension``).
    public var routerDimension: Int
    public var codec: PostingCodec
    public var inputType: ElementType
    public var storedType: ElementType
    public var heads: Int
    public var headRatio: Double
    /// Why this many heads: the recall calibration's choice and the bound that applied.
    public var headChoice: String
    /// The recall calibration the choice started from (nil: none ran).
    public var calibration: HeadCalibration?
    public var sampleSize: Int
    public var postingPages: Int
    public var postingCapacity: Int
    /// Records an orphan may add past the cap (the bounded slack of its placement: a
    /// posting never holds more than `postingCapacity + postingSlack` records).
    public var postingSlack: Int
    public var recordBytes: Int
    /// Bytes of one vector's posting code (the record without its 4-byte id).
    public var codeBytes: Int
    /// Replicas per vector a capped build is expected to keep (0.66 × `BuildOptions.replicas`, measured).
    public var expectedReplicas: Double
    public var chunkRows: Int
    /// Records the assignment's sort buffer holds before it spills a run.
    public var runRecords: Int
    /// Read buffer per run during merges.
    public var mergeBufferBytes: Int
    /// Posting bytes one pack bucket fills in RAM before writing them in order.
    public var packBucketBytes: Int
    public var threads: Int
    public var stages: [StagePlan]
    public var budget: UInt64
    /// What the index will need to serve (the model's estimate).
    public var serving: ServingMemory

    public var peakBytes: UInt64 { stages.map(\.ram).max() ?? 0 }
    public var stageBytes: [(stage: String, bytes: UInt64)] { stages.map { ($0.name, $0.ram) } }
    public var finalDiskBytes: UInt64 { stages.map(\.finalDisk).reduce(0, +) }
    /// The most disk the build uses at once: the final files plus every temporary (all live
    /// during pack).
    public var peakDiskBytes: UInt64 { finalDiskBytes + stages.map(\.tempDisk).reduce(0, +) }
    public var estimatedSeconds: Double { stages.map(\.seconds).reduce(0, +) }
    /// Postings the pack stage fills per pass over the codes.
    public var packPasses: Int {
        let total = Double(count) * expectedReplicas * Double(recordBytes)
        return max(1, Int((total / Double(max(packBucketBytes, 1))).rounded(.up)))
    }

    public var description: String {
        var s = "plan: \(count) × \(dimension) \(inputType.rawValue) → \(heads) heads (ratio \(String(format: "%.4f", headRatio))), "
        s += "postings ≤ \(postingPages) pages = \(postingCapacity) records of \(recordBytes) B"
        if codec != .none { s += " (LeanVec \(dimension) → \(reducedDimension) dims + \(codec.rawValue); heads routed on \(routerDimension) dims)" }
        s += ", training sample \(sampleSize), \(threads) thread(s)\n"
        s += "plan: heads: \(headChoice)\n"
        if let c = calibration { s += "plan: calibration: \(c.summary) (\(String(format: "%.1f", c.seconds)) s)\n" }
        s += "plan: slots \(heads) heads × \(postingCapacity) = \(UInt64(heads) * UInt64(postingCapacity)) ≥ \(count) vectors × \(String(format: "%.2f", expectedReplicas)) expected replicas = \(Int(Double(count) * expectedReplicas))\n"
        s += "plan: serving RAM ≈ \(serving.summary)\n"
        for st in stages {
            s += "plan:   \(st.name.padding(toLength: 7, withPad: " ", startingAt: 0)) RAM ≈ \(formatBytes(st.ram)), temp disk \(formatBytes(st.tempDisk)), final disk \(formatBytes(st.finalDisk)), time ≈ \(fmtSeconds(st.seconds))\n"
            s += "plan:           RAM = " + st.ramTerms.map { "\($0.0) \(formatBytes($0.1))" }.joined(separator: " + ") + "\n"
            s += "plan:           time = " + st.timeTerms.map { "\($0.0) \(fmtSeconds($0.1))" }.joined(separator: " + ") + "\n"
        }
        s += "plan: sort buffer \(runRecords) records (\(formatBytes(UInt64(runRecords) * 16))), pack buckets of \(formatBytes(UInt64(packBucketBytes))) (≈ \(packPasses) pass(es) over the codes)\n"
        s += "plan: peak RAM ≈ \(formatBytes(peakBytes)) of the \(formatBytes(budget)) budget; disk: final \(formatBytes(finalDiskBytes)), peak \(formatBytes(peakDiskBytes)); time ≈ \(fmtSeconds(estimatedSeconds))"
        return s
    }
}

func fmtSeconds(_ s: Double) -> String {
    if s < 60 { return String(format: "%.1f s", s) }
    if s < 7200 { return String(format: "%.1f min", s / 60) }
    return String(format: "%.1f h", s / 3600)
}

/// Plans a build from its shape, codec and options: picks heads, sample, posting cap, the
/// sort buffer and pack buckets so every stage's RAM stays within the budget regardless of
/// n, and refuses (``FathomError/Code/memoryBudget`` or `invalidArgument`) with the numbers
/// when an invariant cannot hold. Pure: reads no file. Thread-safe (no state).
public enum BuildPlanner {
    static let processOverhead: UInt64 = 80 << 20
    /// Share of `BuildOptions.replicas` the serving model assumes the closure rule accepts (docs/memory.md).
    static let replicaShare = 0.85
    /// Share of `BuildOptions.replicas` a posting-capped build keeps, for the slot invariant and the disk
    /// and time figures: syn1000000 kept 5.28 of 8 (2 GiB plan) and 4.67 (400 MiB plan).
    static let keptReplicaShare = 0.66

    /// The slack of orphan placement: an eighth of the cap (at least one record).
    static func slackFor(_ cap: Int) -> Int { max(1, cap / 8) }

    public static func plan(shape: BuildShape, codec: PostingCodec, storedType: ElementType,
                            options: BuildOptions, calibration: HeadCalibration? = nil,
                            rates: BuildRates = BuildRates()) throws -> BuildPlan {
        let n = shape.count, d = shape.dimension
        guard n > 0, d > 0 else { throw FathomError(.invalidArgument, "a build needs n ≥ 1 vectors of dimension ≥ 1 (got \(n) × \(d))") }
        guard n < Int(UInt32.max) else {
            throw FathomError(.invalidArgument, "\(n) vectors exceed the 2^32 − 1 ids of one index; split the input into shards")
        }
        precondition(codec != .auto, "resolve .auto before planning")
        let reduced = options.reduceDims ?? LeanVecProjection.defaultDim(d)
        let routerDims = min(reduced, options.routerDims ?? LeanVecProjection.defaultDim(d))
        if codec != .none {
            guard reduced >= 1 && reduced <= d else {
                throw FathomError(.invalidArgument, "reduced dimension \(reduced) must be between 1 and the dimension \(d)")
            }
            guard routerDims >= 1 else { throw FathomError(.invalidArgument, "router dimension \(routerDims) must be at least 1") }
        }
        let codeBytes = codec.lvqKind.map { LVQCodec.bytesPerVector(kind: $0, dim: reduced) } ?? d * storedType.size
        let recordBytes = 4 + codeBytes
        let rExp = keptReplicaShare * Double(options.replicas)
        let budget = options.memoryBudget
        // Buffers are sized to 90% of the budget: allocator slack and page-cache-mapped
        // pages of the process are not in the model.
        let usable = budget / 10 * 9
        let R = options.graphDegree
        let T = max(1, options.threads)
        let cores = max(1, min(T, ProcessInfo.processInfo.activeProcessorCount))
        let K = options.candidateHeads
        let L = K + 32
        let chunkRows = max(1, min(65536, (32 << 20) / (d * 4)))
        let rowBytes = UInt64(d * storedType.size)
        let placement = IndexLayout.VectorPlacement(rowBytes: Int(rowBytes))
        let vectorsBytes = 4096 + (placement.payloadBytes(count: n) + 4095) / 4096 * 4096

        func pagesFor(heads H: Int) -> Int {
            if let p = options.postingPages { return p }
            let cap = Int((2 * Double(n) * Double(options.replicas) / Double(max(H, 1))).rounded(.up))
            return max(1, (max(cap, 1) * recordBytes + 4095) / 4096)
        }
        let mergeBuf = 1 << 20
        let ioBuffers: UInt64 = (4 << 20) + 3 * (8 << 20)   // input reader block + vectors, codes, run writers
        let chunk = UInt64(chunkRows) * UInt64(d * (shape.inputType.size + 4) + 8 * 8 + 4 + codeBytes)
        let codecRAM: UInt64 = codec == .none ? 0 : UInt64(d * reduced * 4 * 2 + d * 4)

        struct Try { var stages: [StagePlan]; var S: Int; var run: Int; var bucket: Int; var fail: String? }

        func attempt(heads H: Int) -> Try {
            let cap = pagesFor(heads: H) * 4096 / recordBytes
            let headBytes = UInt64(H) * UInt64(d * 4 + 4)
            let graphBytes = UInt64(H) * UInt64(R * 4)
            let visited = UInt64(H) * 4
            // train
            let trainFixed = processOverhead + headBytes + graphBytes + UInt64(H) * 56 /* graph build pools */
                + UInt64(2048 * d * 4 * 2) + UInt64(chunkRows * d * 4) + (4 << 20)
                + (codec == .none ? 0 : UInt64(d * d * 4 * 3))
            let perSample = UInt64(d * 4 + 32)   // floats + ids, k-means permutation and child arrays
            // LeanVec trains on a copy of ≤ 100,000 sample rows and their projection.
            let perCodecRow: UInt64 = codec == .none ? 0 : UInt64((d + reduced) * 4)
            func codecBytes(_ S: Int) -> UInt64 { UInt64(min(S, 100_000)) * perCodecRow }
            var S = min(n, options.sampleSize ?? max(4 * H, 50_000))
            let left = usable > trainFixed ? usable - trainFixed : 0
            let room = left / (perSample + perCodecRow) <= 100_000
                ? left / (perSample + perCodecRow)
                : (left - 100_000 * perCodecRow) / perSample
            S = min(S, Int(min(room, UInt64(Int.max))))
            // Balanced k-means needs a few points per head: 4 when the head count is ours to
            // choose (fewer heads then), 2 at a given head ratio.
            let perHead = options.headRatio == nil ? 4 : 2
            if S < min(n, perHead * H) {
                return Try(stages: [], S: S, run: 0, bucket: 0,
                           fail: "train needs a sample of at least \(perHead) × \(H) heads = \(min(n, perHead * H)) vectors (\(formatBytes(UInt64(min(n, perHead * H)) * perSample))) beside \(formatBytes(trainFixed)) of heads, graph and buffers; the budget leaves room for \(S)")
            }
            let trainTerms: [(String, UInt64)] = [("process", processOverhead), ("sample \(S) × \(perSample) B", UInt64(S) * perSample),
                                                  ("heads", headBytes), ("graph", graphBytes + UInt64(H) * 56),
                                                  ("codec training", codecBytes(S) + (codec == .none ? 0 : UInt64(d * d * 4 * 3))),
                                                  ("k-means + IO buffers", UInt64(2048 * d * 4 * 2) + UInt64(chunkRows * d * 4) + (4 << 20))]
            // assign
            let assignFixed = processOverhead + headBytes + graphBytes + UInt64(T) * (visited + UInt64(L * 12)) + chunk + ioBuffers + codecRAM + UInt64(H) * 4
            let maxRecords = n * options.replicas
            var run = 0
            if usable > assignFixed { run = Int(min(UInt64(maxRecords), (usable - assignFixed) / 16)) }
            if let cap = options.sortBufferBytes { run = min(run, Int(cap / 16)) }
            let minRun = min(maxRecords, options.sortBufferBytes.map { max(1, Int($0 / 16)) } ?? (1 << 20))
            if run < minRun {
                return Try(stages: [], S: S, run: run, bucket: 0,
                           fail: "assign holds \(formatBytes(assignFixed)) of heads, graph, per-thread scratch and buffers and needs a sort buffer of at least \(minRun) records (\(formatBytes(UInt64(minRun) * 16)))")
            }
            let runs = max(1, (maxRecords + run - 1) / run)
            let assignRAM = assignFixed + UInt64(run) * 16
            let mergeRAM = processOverhead + headBytes + graphBytes + visited + UInt64(H) * 4 + UInt64(runs) * UInt64(mergeBuf) + UInt64(run) * 16
            let assignTerms: [(String, UInt64)] = [("process", processOverhead), ("heads", headBytes), ("graph", graphBytes),
                                                   ("\(T) × search scratch", UInt64(T) * (visited + UInt64(L * 12))),
                                                   ("chunk + IO buffers", chunk + ioBuffers), ("codec", codecRAM), ("head counts", UInt64(H) * 4),
                                                   ("sort buffer \(run) × 16 B", UInt64(run) * 16)]
            // pack
            let packFixed = processOverhead + UInt64(H) * (24 + 4) + UInt64(runs + 1) * UInt64(mergeBuf) + (4 << 20) + (8 << 20)
                + UInt64(options.attributes == nil ? 0 : H * 64)
            let largest = (cap + slackFor(cap)) * recordBytes
            let totalPosting = Int(Double(n) * rExp * Double(recordBytes)) + 1
            var bucket = 0
            if usable > packFixed { bucket = Int((usable - packFixed) * UInt64(recordBytes) / UInt64(recordBytes + 8)) }
            bucket = min(bucket, max(totalPosting, largest))
            if let b = options.packBucketBytes {
                guard Int(b) >= largest else {
                    return Try(stages: [], S: S, run: run, bucket: bucket,
                               fail: "the pack bucket cap \(formatBytes(b)) cannot hold the largest posting (\(cap + slackFor(cap)) × \(recordBytes) B = \(formatBytes(UInt64(largest))))")
                }
                bucket = min(bucket, Int(b))
            }
            if bucket < largest {
                return Try(stages: [], S: S, run: run, bucket: bucket,
                           fail: "pack holds \(formatBytes(packFixed)) of table and buffers and needs a bucket that holds the largest posting (\(cap + slackFor(cap)) × \(recordBytes) B = \(formatBytes(UInt64(largest))))")
            }
            let packRAM = packFixed + UInt64(bucket) + UInt64(bucket / recordBytes) * 8
            let packTerms: [(String, UInt64)] = [("process", processOverhead), ("table + counts", UInt64(H) * 28),
                                                 ("merge + IO buffers", packFixed - processOverhead - UInt64(H) * 28),
                                                 ("bucket", UInt64(bucket)), ("bucket index", UInt64(bucket / recordBytes) * 8)]
            // disk
            let records = Double(n) * rExp
            let runBytes = UInt64(maxRecords) * 16
            let codesBytes: UInt64 = codec == .none ? 0 : UInt64(n) * UInt64(codeBytes)
            let postingBytes = UInt64(records * Double(recordBytes)) + UInt64(H) * 2048 + 8192
            let headsFile = headBytes + 64, graphFile = graphBytes + 64
            let codecFile: UInt64 = codec == .none ? 0 : UInt64(d * reduced * 4 + d * 4 + 4096)
            // time
            let log2H = log2(Double(max(H, 2)))
            let depth = max(1.0, (log(Double(max(H, 2))) / log(32.0)).rounded(.up))
            let calibrationT = calibration?.seconds ?? 0
            let sampleRead = Double(n) * Double(d * shape.inputType.size) / rates.readBytesPerSecond
            let kmeans = rates.kmeansSecondsPerUnit * Double(S) * Double(d) * 32 * 16 * depth
            // The reachability check: up to two rounds of one beam-64 search per head, on all threads.
            let graphT = rates.graphSecondsPerUnit * Double(H) * Double(d) * Double(max(64, R * 2)) * log2H
                + 2 * rates.assignSecondsPerUnit * Double(H) * Double(d) * 64 * log2H / Double(cores)
            let search = rates.assignSecondsPerUnit * Double(n) * Double(d) * Double(L) * log2H / Double(cores)
            let sortT = rates.sortSecondsPerRecord * records
            let passes = max(1.0, (records * Double(recordBytes) / Double(bucket)).rounded(.up))
            // Code passes beyond the first re-read the codes (from disk once they leave the cache).
            let packRead = (passes - 1) * Double(codec == .none ? vectorsBytes : codesBytes) / rates.readBytesPerSecond
            let packCPU = rates.packSecondsPerRecord * records
            let stages = [
                StagePlan(name: "train", ram: trainTerms.map(\.1).reduce(0, +), ramTerms: trainTerms,
                          tempDisk: 0, finalDisk: headsFile + graphFile + codecFile,
                          seconds: calibrationT + sampleRead + kmeans + graphT,
                          timeTerms: [("head-count calibration (measured)", calibrationT), ("sample read", sampleRead),
                                      ("k-means", kmeans), ("head graph + reachability check", graphT)]),
                StagePlan(name: "assign", ram: max(assignRAM, mergeRAM), ramTerms: assignTerms,
                          tempDisk: runBytes + codesBytes, finalDisk: vectorsBytes,
                          seconds: search + sortT,
                          timeTerms: [("head search + closure + encode", search), ("sort + merge", sortT)]),
                StagePlan(name: "pack", ram: packRAM, ramTerms: packTerms,
                          tempDisk: 0, finalDisk: postingBytes + UInt64(H) * 24 + 64,
                          seconds: packRead + packCPU,
                          timeTerms: [("merge + fill + write", packCPU), ("\(Int(passes) - 1) extra code pass(es)", packRead)]),
            ]
            for st in stages where st.ram > budget {
                return Try(stages: stages, S: S, run: run, bucket: bucket,
                           fail: "\(st.name) needs \(formatBytes(st.ram)) (" + st.ramTerms.map { "\($0.0) \(formatBytes($0.1))" }.joined(separator: " + ") + ")")
            }
            return Try(stages: stages, S: S, run: run, bucket: bucket, fail: nil)
        }

        // Heads: given, or the calibration's choice for recall, bounded by the serving-RAM
        // target (and below by the build budget).
        let serveRatio = servingRatio(n: n, d: d, reduced: codec == .none ? nil : reduced, router: routerDims,
                                      recordBytes: recordBytes, options: options)
        var why: String
        let ratio: Double
        if let r = options.headRatio {
            ratio = r; why = String(format: "ratio %.4f given", r)
        } else if let c = calibration, !c.reachedTarget {
            // Coarser postings would not reach the target either and cost more per probe
            // (text300: 128 vectors/head gave 0.90 at 32 probes and 170 QPS, the serving
            // ratio's 11.5 vectors/head 0.90 at 64 probes and 304 QPS): keep the fine partition.
            ratio = serveRatio
            why = String(format: "ratio %.4f from the serving-RAM target (%.0f B/vector): the recall calibration reached %.3f at most (target %.2f at %d probes) up to %.0f vectors per head, so queries of this data need more probes, and finer postings make them cheaper",
                         serveRatio, options.serveMemoryPerVector, c.trials.map(\.recall).max() ?? 0, c.targetRecall, c.targetProbes,
                         HeadCalibration.grid.last ?? 0)
        } else if let c = calibration {
            if c.headRatio <= serveRatio {
                ratio = c.headRatio
                why = String(format: "%.0f vectors per head from the recall calibration (%@recall@10 %.2f at %d probes); within the serving-RAM bound (ratio ≤ %.4f at %.0f B/vector)",
                             c.pointsPerHead, c.reachedTarget ? "" : "target not reached: ", c.targetRecall, c.targetProbes, serveRatio, options.serveMemoryPerVector)
            } else {
                ratio = serveRatio
                why = String(format: "the recall calibration asks %.0f vectors per head (ratio %.4f), more heads than the serving-RAM target of %.0f B/vector allows: ratio %.4f (a larger serving-RAM target allows the calibrated count)",
                             c.pointsPerHead, c.headRatio, options.serveMemoryPerVector, serveRatio)
            }
        } else {
            ratio = serveRatio
            why = String(format: "ratio %.4f from the serving-RAM target (%.0f B/vector); not calibrated for recall (no input sample)", serveRatio, options.serveMemoryPerVector)
        }
        var H = max(1, min(n, Int((Double(n) * ratio).rounded())))
        let wanted = H
        let floorH = max(1, n / 1000)
        var t = attempt(heads: H)
        if t.fail != nil && options.headRatio == nil {
            // Fewer heads shrink every stage's fixed part (not below 1 head per 1,000 vectors).
            while t.fail != nil && H > floorH {
                H = max(floorH, H * 9 / 10)
                t = attempt(heads: H)
            }
        }
        if let why = t.fail {
            throw FathomError(.memoryBudget, "the \(formatBytes(budget)) budget cannot build \(n) × \(d) vectors with \(H) heads: \(why)",
                              remedies: [.raiseMemoryBudget(atLeast: nil)] + (options.headRatio == nil ? [] : [.lowerHeadRatio]))
        }
        if H < wanted { why += "; lowered to \(H) heads by the \(formatBytes(budget)) build budget" }
        let pages = pagesFor(heads: H)
        let cap = pages * 4096 / recordBytes
        guard cap >= 1 else {
            throw FathomError(.invalidArgument, "a posting of \(pages) page(s) cannot hold one \(recordBytes)-byte record",
                              remedies: [.raisePostingPages(atLeast: (recordBytes + 4095) / 4096)])
        }
        // Every vector must find room: the slots cover the expected records.
        let slots = Double(H) * Double(cap)
        guard slots >= Double(n) * rExp else {
            throw FathomError(.invalidArgument, "postings cannot hold the assignment: \(H) heads × \(cap) records = \(Int(slots)) slots < \(n) vectors × \(String(format: "%.2f", rExp)) expected replicas = \(Int(Double(n) * rExp))",
                              remedies: [.raisePostingPages(atLeast: Int((Double(n) * rExp / Double(H)).rounded(.up)) * recordBytes / 4096 + 1), .raiseHeadRatio])
        }
        guard H < (1 << 31) else { throw FathomError(.invalidArgument, "\(H) heads exceed 2^31", remedies: [.lowerHeadRatio]) }
        let serving = servingEstimate(n: n, heads: H, d: d, reduced: codec == .none ? nil : reduced, router: routerDims,
                                      recordBytes: recordBytes, degree: R, replicas: options.replicas,
                                      threads: options.serveThreads ?? ProcessInfo.processInfo.activeProcessorCount)
        return BuildPlan(count: n, dimension: d, reducedDimension: codec == .none ? d : reduced,
                         routerDimension: codec == .none ? d : routerDims,
                         codec: codec, inputType: shape.inputType, storedType: storedType,
                         heads: H, headRatio: Double(H) / Double(n), headChoice: why, calibration: calibration, sampleSize: t.S,
                         postingPages: pages, postingCapacity: cap, postingSlack: slackFor(cap), recordBytes: recordBytes, codeBytes: codeBytes,
                         expectedReplicas: rExp, chunkRows: chunkRows, runRecords: t.run, mergeBufferBytes: mergeBuf,
                         packBucketBytes: t.bucket, threads: T, stages: t.stages, budget: budget, serving: serving)
    }

    /// The serving-RAM model the head ratio is chosen from: heads, graph, table and codec
    /// (``ServingMemory``) plus each search thread's scratch at the default 32 probes (its IO
    /// buffer holds the postings it reads: 32 × the mean posting, whose length is n·r̂/H with
    /// r̂ = 0.85 × replicas accepted by the closure rule; its dedup table 16 B per record;
    /// 64 KiB for re-rank reads).
    static func servingEstimate(n: Int, heads H: Int, d: Int, reduced: Int?, router: Int?, recordBytes: Int, degree: Int,
                                replicas: Int, threads: Int) -> ServingMemory {
        ServingMemory.model(vectors: n, heads: H, dimension: d, reduced: reduced, router: router, degree: degree, recordBytes: recordBytes,
                            meanRecords: Double(n) * replicaShare * Double(replicas) / Double(max(H, 1)), threads: threads)
    }

    /// The head ratio (≤ 0.1, ≥ 1 head per 1,000 vectors) with the most heads whose serving
    /// RAM stays within ``BuildOptions/serveMemoryPerVector``: more heads route better but
    /// cost RAM; fewer heads make longer postings, so each thread's read buffer grows.
    static func servingRatio(n: Int, d: Int, reduced: Int?, router: Int?, recordBytes: Int, options: BuildOptions) -> Double {
        let threads = options.serveThreads ?? ProcessInfo.processInfo.activeProcessorCount
        let target = options.serveMemoryPerVector * Double(n)
        var best: Int? = nil
        var bestTotal = Int.max, bestH = 1
        var H = max(1, n / 10)
        let floor = max(1, n / 1000)
        while true {
            let m = servingEstimate(n: n, heads: H, d: d, reduced: reduced, router: router, recordBytes: recordBytes,
                                    degree: options.graphDegree, replicas: options.replicas, threads: threads)
            if Double(m.total) <= target { best = H; break }
            if m.total < bestTotal { bestTotal = m.total; bestH = H }
            if H <= floor { break }
            H = max(floor, H * 9 / 10)
        }
        return Double(best ?? bestH) / Double(n)
    }

    /// Refuses a build whose disk needs exceed the free space of the destination's file
    /// system: the new index and every temporary (all live at once during pack), while the
    /// old index being replaced stays until the publish.
    static func checkDisk(plan: BuildPlan, directory: String, reclaimable: UInt64, oldIndex: UInt64) throws {
        let free = try freeDiskBytes(directory)
        let need = plan.peakDiskBytes
        guard need <= free + reclaimable else {
            throw FathomError(.diskFull, "not enough disk: the build needs \(formatBytes(need)) (index \(formatBytes(plan.finalDiskBytes)) + temporaries \(formatBytes(need - plan.finalDiskBytes))) while \(formatBytes(free)) is free\(reclaimable > 0 ? " (+ \(formatBytes(reclaimable)) this build already wrote)" : "")\(oldIndex > 0 ? "; the old index (\(formatBytes(oldIndex))) stays until the new one is published" : ""); free space or build elsewhere", path: directory)
        }
    }
}

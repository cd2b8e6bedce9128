import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
#if canImport(Glibc)
import Glibc
#endif

/// An engine that counts what the query executor asks of it: every `submit` call is one
/// dependent round trip (the executor submits a phase's reads at once when they fit); the
/// wrapped libaio engine counts its `io_submit` calls.
final class CountingEngine: IOEngine {
    let inner: AIOEngine
    var reads = 0
    var requests = 0
    /// The most reads in flight at once (several queries overlapping show as more than one
    /// query's largest phase).
    var maxInFlight = 0
    var name: String { "counting(\(inner.name))" }
    var direct: Bool { inner.direct }
    var inFlight: Int { inner.inFlight }
    var capacity: Int { inner.capacity }
    init() throws { inner = try AIOEngine(depth: 256) }
    func submit(_ requests: UnsafeBufferPointer<ReadRequest>, tag: UInt64, path: String) throws {
        reads += 1
        self.requests += requests.count
        try inner.submit(requests, tag: tag, path: path)
        maxInFlight = max(maxInFlight, inner.inFlight)
    }
    /// When set, the next reap first waits until this instant (then it is cleared): the
    /// reads in flight complete only after it.
    var holdUntil: DispatchTime?
    func reap(min: Int, completed: (UInt64, Result<Int, FathomError>) throws -> Void) throws -> Int {
        if let t = holdUntil {
            holdUntil = nil
            while DispatchTime.now() < t { usleep(1000) }
        }
        return try inner.reap(min: min, completed: completed)
    }
}

/// A box the engine factory hands its engines out through (one per searcher).
final class EngineLog: @unchecked Sendable {
    let lock = NSLock()
    var engines: [CountingEngine] = []
    func make() throws -> IOEngine {
        let e = try CountingEngine()
        lock.lock(); engines.append(e); lock.unlock()
        return e
    }
}

@Suite struct PipelineTests {
    static func build(_ dir: TempDir, codec: PostingCodec, metric: Metric = .l2) throws -> (Matrix, Matrix) {
        let built = try buildSyntheticIndex(dir, n: 3000, d: 32, nq: 60) { o in o.metric = metric; o.codec = codec }
        return (built.base, built.queries)
    }

    @Test(arguments: [PostingCodec.lvq4, .none])
    func pipelinedBatchEqualsOneQueryAtATime(codec: PostingCodec) throws {
        let dir = TempDir()
        let (_, q) = try Self.build(dir, codec: codec)
        let index = try VectorIndex.open(at: dir.file("idx"), io: .aio)
        #expect(index.ioEngineName == "libaio")
        let flat = Array(UnsafeBufferPointer(start: q.data, count: q.rows * q.cols))
        for (threads, window, p) in [(1, 4, SearchParameters(probes: 6)), (2, 3, SearchParameters(probes: 6)),
                                     (1, 16, SearchParameters(probes: 6))] {
            let batch = flat.withUnsafeBufferPointer { index.search(batch: $0, count: q.rows, k: 10, parameters: p, threads: threads, window: window) }
            for i in 0..<q.rows {
                let one = try index.search(Array(UnsafeBufferPointer(start: q.row(i), count: q.cols)), k: 10, parameters: p)
                guard case .success(let got) = batch[i] else { Issue.record("query \(i) failed: \(batch[i])"); continue }
                #expect(got == one, "query \(i), \(threads) thread(s) × \(window)")
            }
        }
    }

    /// `SearchParameters.deadline`: a query past it before it starts makes no read; one whose
    /// deadline passes while its first round of reads is in flight makes no second round
    /// (it fails with `cancelled` after one submit); the searcher then answers the next query
    /// exactly as before.
    @Test func aDeadlineStopsTheQueryBeforeItsNextRoundOfReads() throws {
        let dir = TempDir()
        let (_, q) = try writeSynthetic(dir: dir, n: 1500, d: 32, nq: 1)
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.codec = .lvq8; o.reduceDims = 16
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        let log = EngineLog()
        let index = try VectorIndex.open(at: dir.file("idx"), engine: { try log.make() })
        let query = UnsafeBufferPointer(start: q.row(0), count: q.cols)
        let p = SearchParameters(probes: 8, rerank: 20)
        try index.withSearcher { s in
            let e = log.engines.first { $0 === s.engine }!
            let expected = try s.search(query, k: 10, parameters: p)
            #expect(e.reads == 2, "postings, then the re-rank rows: two rounds")
            func cancelled(_ err: Error) -> Bool { (err as? FathomError)?.code == .cancelled }
            var past = p; past.deadline = SearchDeadline(.now())
            var before = e.reads
            #expect(performing: { _ = try s.search(query, k: 10, parameters: past) }, throws: cancelled)
            #expect(e.reads == before, "no read after the deadline")
            let t = DispatchTime.now() + .milliseconds(500)
            var soon = p; soon.deadline = SearchDeadline(t)
            e.holdUntil = t
            before = e.reads
            #expect(performing: { _ = try s.search(query, k: 10, parameters: soon) }, throws: cancelled)
            #expect(e.reads == before + 1, "the postings' round only")
            #expect(e.inFlight == 0)
            #expect(try s.search(query, k: 10, parameters: p) == expected)
        }
    }

    /// One page per vectors.dat row and a deep re-rank: a query's second phase submits far
    /// more requests than the first, and every slot's must fit the thread's IO context.
    @Test func pipelinedDeepRerankFitsTheIOContext() throws {
        let dir = TempDir()
        let (_, q) = try writeSynthetic(dir: dir, n: 1200, d: 1024, nq: 12)
        var o = BuildOptions()
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.codec = .lvq8; o.reduceDims = 32
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        let index = try VectorIndex.open(at: dir.file("idx"), io: .aio)
        let p = SearchParameters(probes: 60, maxDistRatio: .infinity, rerank: 300)
        let flat = Array(UnsafeBufferPointer(start: q.data, count: q.rows * q.cols))
        let batch = flat.withUnsafeBufferPointer { index.search(batch: $0, count: q.rows, k: 10, parameters: p, threads: 1, window: 4) }
        for i in 0..<q.rows {
            let one = try index.withSearcher { s in
                let r = try s.search(UnsafeBufferPointer(start: q.row(i), count: q.cols), k: 10, parameters: p)
                #expect(s.stats.vectorsReranked == 300 && s.stats.ioRequests > 128, "\(s.stats)")
                return r
            }
            guard case .success(let got) = batch[i] else { Issue.record("query \(i) failed: \(batch[i])"); continue }
            #expect(got == one, "query \(i)")
        }
    }

    /// Filtered queries run on the same executor as plain ones: a batch with several in
    /// flight per thread answers exactly what one query at a time answers, for every plan
    /// (walk, exact, walk then exact), with more reads in flight than any one query's phase.
    @Test(arguments: [PostingCodec.lvq8, .none])
    func filteredBatchPipelinesAndEqualsOneQueryAtATime(codec: PostingCodec) throws {
        let dir = TempDir()
        let n = 3000
        let (_, q) = try writeSynthetic(dir: dir, n: n, d: 32, nq: 40, seed: 9)
        var rng = SeededRandom(seed: 4)
        try buildWithAttributes(dir, header: "id,u:float", rows: (0..<n).map { "\($0),\(rng.uniform())" }, codec: codec)
        let log = EngineLog()
        let index = try VectorIndex.open(at: dir.file("idx"), engine: { try log.make() })
        // Per query a filter: plain, 50%, 5%, 0.5% (the exact path), in turn.
        let texts: [String?] = [nil, "u < 0.5", "u < 0.05", "u < 0.005"]
        let filters = try (0..<q.rows).map { i in try texts[i % texts.count].map { try index.prepareFilter($0) } }
        let p = SearchParameters(probes: 6)
        let flat = Array(UnsafeBufferPointer(start: q.data, count: q.rows * q.cols))
        var plans = Set<FilterPlanKind>()
        var largestPhase = 0
        let one = try (0..<q.rows).map { i in
            try index.withSearcher { s in
                let r = try s.search(UnsafeBufferPointer(start: q.row(i), count: q.cols), k: 10, parameters: p, filter: filters[i])
                if let plan = s.stats.filterPlan { plans.insert(plan.kind) }
                let e = log.engines.first { $0 === s.engine }!
                largestPhase = max(largestPhase, e.maxInFlight)
                return r
            }
        }
        #expect(plans.contains(.walk) && plans.contains(.exact), "\(plans)")
        for window in [1, 4] {
            let before = log.engines.count
            let batch = flat.withUnsafeBufferPointer {
                index.search(batch: $0, count: q.rows, k: 10, parameters: p, filters: filters, threads: 1, window: window)
            }
            for i in 0..<q.rows {
                guard case .success(let got) = batch[i] else { Issue.record("query \(i) failed: \(batch[i])"); continue }
                #expect(got == one[i], "query \(i) (\(texts[i % texts.count] ?? "no filter")), window \(window)")
            }
            let batchEngine = log.engines[before]
            if window > 1 {
                #expect(batchEngine.maxInFlight > largestPhase, "queries overlap: \(batchEngine.maxInFlight) reads in flight, one query's most \(largestPhase)")
            } else {
                #expect(batchEngine.maxInFlight <= largestPhase)
            }
        }
    }

    /// The pread engine and a fault-injecting wrapper serve the same asynchronous protocol:
    /// tags come back once each, and failures name their file and offset.
    @Test func engineProtocolTagsAndFailures() throws {
        let dir = TempDir()
        let path = dir.file("blob")
        let bytes = (0..<(16 * 4096)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let fd = open(path, O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        var requests = (0..<16).map { ReadRequest(fd: fd, offset: UInt64($0 * 4096), length: 4096, buffer: buffer + $0 * 4096) }
        requests.append(ReadRequest(fd: fd, offset: 16 * 4096, length: 4096, buffer: buffer))   // past the end
        for engine in [PreadEngine() as IOEngine, PreadEngine(width: 1), FaultInjectingEngine(wrapping: PreadEngine(), failOffsets: [5 * 4096 + 10])] {
            var seen = [Int: Result<Int, FathomError>]()
            try requests.withUnsafeBufferPointer { rq in
                try engine.submit(UnsafeBufferPointer(rebasing: rq[0..<10]), tag: 100, path: path)
                try engine.submit(UnsafeBufferPointer(rebasing: rq[10...]), tag: 110, path: path)
                #expect(engine.inFlight == 17)
                while engine.inFlight > 0 {
                    try engine.reap(min: 1) { tag, r in
                        #expect(seen[Int(tag)] == nil, "tag \(tag) completed twice")
                        seen[Int(tag)] = r
                    }
                }
            }
            #expect(seen.count == 17)
            for i in 0..<16 {
                if engine is FaultInjectingEngine && i == 5 {
                    guard case .failure(let e) = seen[100 + i]! else { Issue.record("read 5 should fail"); continue }
                    #expect(e.offset == 5 * 4096 + 10 && e.path == path)
                } else {
                    #expect((try? seen[100 + i]!.get()) == 4096, "\(engine.name) read \(i)")
                }
            }
            guard case .failure(let past) = seen[116]! else { Issue.record("a read past the end must fail"); continue }
            #expect(past.code == .corruptIndex && past.offset == 16 * 4096)
            #expect(engine.inFlight == 0)
        }
        #expect(Array(UnsafeRawBufferPointer(start: buffer, count: 16 * 4096)) == bytes)
    }

    @Test func atMostTwoRoundTripsEachOneSubmit() throws {
        let dir = TempDir()
        let (_, q) = try Self.build(dir, codec: .lvq4)
        let log = EngineLog()
        let index = try VectorIndex.open(at: dir.file("idx"), engine: { try log.make() })
        for probes in [1, 4, 16] {
            for i in 0..<q.rows {
                try index.withSearcher { s in
                    let engine = log.engines.first { $0 === s.engine }!
                    let (reads, submits) = (engine.reads, engine.inner.submits)
                    _ = try s.search(UnsafeBufferPointer(start: q.row(i), count: q.cols), k: 10, parameters: SearchParameters(probes: probes))
                    #expect(engine.reads - reads == 2, "postings, then re-rank: two round trips")
                    #expect(s.stats.roundTrips == 2)
                    #expect(engine.inner.submits - submits == 2, "one io_submit per round trip")
                    #expect(s.stats.postingsRead <= probes && s.stats.ioRequests <= probes + s.stats.vectorsReranked)
                }
            }
        }
    }

    @Test func libaioReadsBypassThePageCache() throws {
        let dir = TempDir()
        let (_, q) = try Self.build(dir, codec: .lvq4)
        let files = ["postings.dat", "vectors.dat"].map { dir.file("idx/" + $0) }
        func residentPages(_ path: String) throws -> Int {
            let fd = open(path, O_RDONLY)
            #expect(fd >= 0)
            defer { close(fd) }
            let size = Int(lseek(fd, 0, SEEK_END))
            guard let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else {
                Issue.record("mmap \(path)"); return -1
            }
            defer { munmap(map, size) }
            let pages = (size + 4095) / 4096
            var vec = [UInt8](repeating: 0, count: pages)
            #expect(mincore(map, size, &vec) == 0)
            return vec.filter { $0 & 1 != 0 }.count
        }
        // Evict what the build left in the page cache (the files are clean after publish).
        for f in files {
            let fd = open(f, O_RDONLY); defer { close(fd) }
            #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
        }
        let index = try VectorIndex.open(at: dir.file("idx"), io: .aio)
        #expect(index.ioEngineName == "libaio")
        // open() reads each file's header through the page cache (with readahead): measure after it.
        let before = try files.map(residentPages)
        #expect(before.allSatisfy { $0 <= 32 }, "only the headers' readahead is resident: \(before)")
        var read = 0
        for i in 0..<q.rows {
            try index.withSearcher { s in
                _ = try s.search(UnsafeBufferPointer(start: q.row(i), count: q.cols), k: 10, parameters: SearchParameters(probes: 8))
                read += s.stats.pagesRead
            }
        }
        let after = try files.map(residentPages)
        #expect(read > 100, "the queries read pages")
        #expect(after == before, "search reads with O_DIRECT: no page enters the cache (before \(before), after \(after))")
    }

    @Test(arguments: [ElementType.float32, .uint8, .int8])
    func flatScorerEqualsScalarReference(type: ElementType) {
        let d = 37, n = 50
        var rng = SeededRandom(seed: 5)
        let q = (0..<d).map { _ in Float(rng.below(200)) / 10 - 10 }
        let stride = 4 + d * type.size + 3
        var rows = [UInt8](repeating: 0, count: n * stride)
        var ref = [[Float]](repeating: [], count: n)
        for i in 0..<n {
            for j in 0..<d {
                let v: Float
                switch type {
                case .float32: v = Float(rng.below(2000)) / 100 - 10
                    withUnsafeBytes(of: v.bitPattern.littleEndian) { for b in 0..<4 { rows[i * stride + 4 + j * 4 + b] = $0[b] } }
                case .uint8: v = Float(rng.below(256)); rows[i * stride + 4 + j] = UInt8(v)
                case .int8: v = Float(Int(rng.below(256)) - 128); rows[i * stride + 4 + j] = UInt8(bitPattern: Int8(v))
                }
                ref[i].append(v)
            }
        }
        for metric in [Metric.l2, .ip] {
            let s = FlatScorer(metric: metric, type: type, dimension: d)
            q.withUnsafeBufferPointer { s.prepare($0.baseAddress!) }
            var out = [Float](repeating: 0, count: n)
            rows.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { s.score(b.baseAddress! + 4, count: n, stride: stride, into: $0.baseAddress!) } }
            for i in 0..<n {
                var e: Double = 0
                for j in 0..<d { if metric == .l2 { let t = Double(q[j]) - Double(ref[i][j]); e += t * t } else { e -= Double(q[j]) * Double(ref[i][j]) } }
                #expect(abs(Double(out[i]) - e) <= 1e-4 * max(1, abs(e)), "\(type) \(metric) row \(i): \(out[i]) vs \(e)")
            }
        }
    }

    @Test(arguments: [LVQKind.lvq8, .lvq4, .lvq4x8])
    func lvqScorerEqualsDecodedScalarReference(kind: LVQKind) throws {
        let D = 48, d = 24, n = 40
        var rng = SeededRandom(seed: 9)
        let sample = Matrix(rows: 400, cols: D)
        for i in 0..<(400 * D) { sample.data[i] = Float(rng.below(1000)) / 100 - 5 }
        let projection = try LeanVecProjection.trainPCA(sample: sample, targetDim: d)
        let codec = CompactCodec(projection: projection, lvq: LVQCodec(kind: kind, dim: d))
        let stride = codec.codeBytes + 4
        var codes = [UInt8](repeating: 0, count: n * stride)
        let y = Matrix(rows: 1, cols: d)
        codes.withUnsafeMutableBytes { b in
            for i in 0..<n { codec.encode(sample.row(i), scratch: y.data, into: b.baseAddress! + i * stride) }
        }
        let query = sample.row(200)
        for metric in [Metric.l2, .ip] {
            let s = LVQScorer(codec: codec, metric: metric)
            s.prepare(query)
            var out = [Float](repeating: 0, count: n)
            codes.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { s.score(b.baseAddress!, count: n, stride: stride, into: $0.baseAddress!) } }
            let pq = Matrix(rows: 1, cols: d)
            projection.projectQuery(query, into: pq.data, metric: metric)
            let x = Matrix(rows: 1, cols: d)
            for i in 0..<n {
                codes.withUnsafeBytes { codec.lvq.decode($0.baseAddress! + i * stride, into: x.data) }
                var e: Double = 0
                for j in 0..<d { if metric == .l2 { let t = Double(pq.data[j]) - Double(x.data[j]); e += t * t } else { e -= Double(pq.data[j]) * Double(x.data[j]) } }
                #expect(abs(Double(out[i]) - e) <= 1e-3 * max(1, abs(e)), "\(kind) \(metric) code \(i): \(out[i]) vs \(e)")
            }
        }
    }

    @Test func servingMemoryIsReportedByPart() throws {
        let dir = TempDir()
        _ = try Self.build(dir, codec: .lvq4)
        let index = try VectorIndex.open(at: dir.file("idx"))
        let m = index.servingMemory
        #expect(m.heads == index.headCount * (index.codec.recordDimension + 4), "LVQ-8 codes of the projected heads")
        #expect(m.graph == index.headCount * index.graph.degree * 4)
        #expect(index.graph.vectors == nil, "the float heads are dropped")
        #expect(m.codec == 32 * 16 * 4 + 32 * 4, "PCA query matrix (= data matrix) and mean")
        let pages = (try FileManager.default.attributesOfItem(atPath: dir.file("idx/vectors.dat"))[.size] as! Int) / 4096 - 1
        #expect(m.checksums == 4 * pages, "a CRC32C per vectors.dat page")
        #expect(m.total == m.heads + m.graph + m.table + m.codec + m.checksums + m.scratch)
    }
}

@Suite struct CodecChoiceTests {
    /// Writes n × d float32 rows whose coordinate j has standard deviation `scale(j)`.
    func write(_ dir: TempDir, _ name: String, n: Int, d: Int, scale: (Int) -> Float) throws -> String {
        var rng = SeededRandom(seed: 11)
        let m = Matrix(rows: n, cols: d)
        for i in 0..<n {
            for j in 0..<d {
                // Sum of uniforms: roughly Gaussian, zero mean, unit variance.
                var s: Float = 0
                for _ in 0..<4 { s += Float(rng.below(1 << 20)) / Float(1 << 20) - 0.5 }
                m.row(i)[j] = s * 1.732 * scale(j)
            }
        }
        let w = try VectorFileWriter(path: dir.file(name), format: .fbin, elementType: .float32, dimension: d)
        try w.append(UnsafeRawPointer(m.data), count: n)
        try w.close()
        return dir.file(name)
    }

    @Test func autoPicksLVQ4WhereItsErrorIsSmallAndLVQ8Elsewhere() throws {
        let dir = TempDir()
        var o = BuildOptions(); o.memoryBudget = 256 << 20
        // Isotropic: every component carries 1/32 of the variance, so the default d′ keeps all
        // 32 (dropping one would lose 3%); nothing dropped, so LVQ-4's error is not small next to it.
        let flat = try write(dir, "flat.fbin", n: 2000, d: 32) { _ in 1 }
        let a = try IndexBuilder(input: flat, output: dir.file("a"), options: o)
        #expect(a.options.reduceDims == 32 && a.options.routerDims == 16, "\(a.codecReason ?? "")")
        #expect(a.codec == .lvq8, "\(a.codecReason ?? "")")
        // At a given d′ = D/2 the projection drops half the variance; LVQ-4's error is small next to it.
        var half = o; half.reduceDims = 16
        let a2 = try IndexBuilder(input: flat, output: dir.file("a2"), options: half)
        #expect(a2.codec == .lvq4 && a2.options.reduceDims == 16, "\(a2.codecReason ?? "")")
        // Two dominant components hold 99.85% of the variance: d′ = 8 (2 rounded up to the lane
        // width) and the heads route on all 8; LVQ-4's 16 levels per vector would lose the
        // small components.
        let skewed = try write(dir, "skewed.fbin", n: 2000, d: 32) { j in j < 2 ? 100 : 1 }
        let b = try IndexBuilder(input: skewed, output: dir.file("b"), options: o)
        #expect(b.options.reduceDims == 8 && b.options.routerDims == 8, "\(b.codecReason ?? "")")
        #expect(b.codec == .lvq8, "\(b.codecReason ?? "")")
        // A given codec is kept.
        o.codec = .lvq4
        #expect(try IndexBuilder(input: skewed, output: dir.file("c"), options: o).codec == .lvq4)
    }

    @Test func keptVarianceFollowsTheSpectrum() throws {
        // Independent components with standard deviations 4, 2, 1, 1, 0, 0: variances 16, 4, 1, 1.
        var rng = SeededRandom(seed: 5)
        let n = 20_000, sd: [Float] = [4, 2, 1, 1, 0, 0]
        let m = Matrix(rows: n, cols: sd.count)
        for i in 0..<n {
            for j in 0..<sd.count {
                var s: Float = 0
                for _ in 0..<4 { s += Float(rng.below(1 << 20)) / Float(1 << 20) - 0.5 }
                m.row(i)[j] = s * 1.732 * sd[j] + 3   // a mean that must not count as variance
            }
        }
        let kept = try LeanVecProjection.keptVariance(sample: m)
        let want: [Float] = [16.0 / 22, 20.0 / 22, 21.0 / 22, 1, 1, 1]
        for k in 0..<want.count { #expect(abs(kept[k] - want[k]) < 0.02, "k = \(k + 1): \(kept[k]) vs \(want[k])") }
        #expect(zip(kept, kept.dropFirst()).allSatisfy { $0 <= $1 } && kept.last == 1)
    }
}

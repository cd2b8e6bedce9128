import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage

/// The record codec seam (docs/codecs.md, "The record codec seam"): one encode for the build
/// and for inserts, the postings header and record size the manifest and postings.dat agree
/// on, and the two router forms.
@Suite struct RecordCodecTests {
    static let codecs: [PostingCodec] = [.none, .lvq8, .lvq4, .lvq4x8]

    /// Builds `n` × `d` synthetic rows of `type` (uint8 / int8: the float rows rounded into
    /// range) with `codec`; returns the rows as the build reads them (floats, normalized for cosine).
    static func build(_ dir: TempDir, codec: PostingCodec, metric: Metric = .l2, type: ElementType = .float32,
                      n: Int = 1200, d: Int = 16) throws -> Matrix {
        let (base, _) = try writeSynthetic(dir: dir, n: n, d: d)
        let rows = Matrix(rows: n, cols: d)
        var input = dir.file("base.fbin")
        if type == .float32 {
            rows.data.update(from: base.data, count: n * d)
        } else {
            var bytes = [UInt8](repeating: 0, count: n * d)
            for i in 0..<(n * d) {
                let v = base.data[i] * 20
                if type == .uint8 { let c = UInt8(min(max(v + 128, 0), 255).rounded()); bytes[i] = c; rows.data[i] = Float(c) }
                else { let c = Int8(min(max(v, -128), 127).rounded()); bytes[i] = UInt8(bitPattern: c); rows.data[i] = Float(c) }
            }
            input = dir.file(type == .uint8 ? "base.u8bin" : "base.i8bin")
            let w = try VectorFileWriter(path: input, format: type == .uint8 ? .u8bin : .i8bin, elementType: type, dimension: d)
            try bytes.withUnsafeBytes { try w.append($0.baseAddress!, count: n) }
            try w.close()
        }
        if metric == .cosine { for i in 0..<n { _ = Distance.normalize(rows.row(i), d) } }
        var o = BuildOptions(); o.codec = codec; o.metric = metric
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.postingPages = 2
        if codec != .none { o.reduceDims = 8; o.routerDims = 4 }
        try IndexBuilder(input: input, output: dir.file("idx"), options: o).build()
        return rows
    }

    /// Every record of postings.dat, as (id, code bytes).
    static func records(_ directory: String, manifest m: Manifest) throws -> [(UInt32, [UInt8])] {
        let layout = IndexLayout(directory: directory)
        let f = try RandomAccessFile(path: layout.postingsPath)
        let table = try layout.readPostingTable(postingsBytes: f.size, recordBytes: m.record_bytes)
        var out = [(UInt32, [UInt8])]()
        for e in table where e.count > 0 {
            var buf = [UInt8](repeating: 0, count: Int(e.count) * m.record_bytes)
            try buf.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: e.offset) }
            for r in 0..<Int(e.count) {
                let at = r * m.record_bytes
                let id = buf.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
                out.append((id, Array(buf[(at + 4)..<(at + m.record_bytes)])))
            }
        }
        return out
    }

    static func encode(_ codec: any RecordCodec, _ v: UnsafePointer<Float>) -> [UInt8] {
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, codec.encodeScratchFloats))
        defer { scratch.deallocate() }
        var code = [UInt8](repeating: 0, count: codec.codeBytes)
        code.withUnsafeMutableBytes { codec.encode(v, scratch: scratch, into: $0.baseAddress!) }
        return code
    }

    /// The build's records are the codec's encode of each vector, for every codec, metric and
    /// element type the build takes.
    @Test(arguments: [(PostingCodec.none, Metric.l2, ElementType.float32), (.none, .cosine, .float32), (.none, .l2, .uint8),
                      (.none, .ip, .int8), (.lvq8, .l2, .float32), (.lvq4, .cosine, .float32), (.lvq4x8, .ip, .float32),
                      (.lvq8, .l2, .uint8)])
    func buildRecordsAreTheCodecsEncode(_ kind: PostingCodec, _ metric: Metric, _ type: ElementType) throws {
        let dir = TempDir()
        let rows = try Self.build(dir, codec: kind, metric: metric, type: type)
        let index = try VectorIndex.open(at: dir.file("idx"), io: .pread)
        #expect(index.codec.kind == kind)
        let records = try Self.records(dir.file("idx"), manifest: index.manifest)
        #expect(records.count >= rows.rows)
        var expected = [UInt32: [UInt8]]()
        for (id, code) in records {
            if expected[id] == nil { expected[id] = Self.encode(index.codec, rows.row(Int(id))) }
            #expect(code == expected[id], "\(kind) \(metric) \(type) vector \(id)")
        }
        #expect(expected.count == rows.rows)
    }

    /// An insert encodes its record with the same encode the build used: inserting a built
    /// vector again gives the bytes of its build record.
    @Test(arguments: [(PostingCodec.none, Metric.l2), (.none, .cosine), (.lvq8, .l2), (.lvq4, .cosine), (.lvq4x8, .ip)])
    func insertEncodesAsTheBuild(_ kind: PostingCodec, _ metric: Metric) throws {
        let dir = TempDir()
        let rows = try Self.build(dir, codec: kind, metric: metric)
        let (raw, _) = try writeSynthetic(dir: TempDir(), n: rows.rows, d: rows.cols)   // the un-normalized input
        let m = try Manifest.load(directory: dir.file("idx"))
        var built = [UInt32: [UInt8]]()
        for (id, code) in try Self.records(dir.file("idx"), manifest: m) { built[id] = code }
        let w = try WriterState(directory: dir.file("idx"), writable: false, io: .pread, serveMemory: nil)
        for i in [0, 17, 599, rows.rows - 1] {
            let heads = w.assign(raw.row(i))
            try w.apply(insert: 1_000_000 + UInt64(i), vector: raw.row(i), replace: false, heads: heads, attributes: nil)
            let code = Array(UnsafeRawBufferPointer(start: w.record + 4, count: w.base.codec.codeBytes))
            #expect(code == built[UInt32(i)], "\(kind) \(metric) vector \(i)")
        }
    }

    /// What the manifest and postings.dat say of the records is what the codec says, and the
    /// codec the manifest names reopens with the same shape.
    @Test(arguments: [(PostingCodec.none, ElementType.float32), (.none, .uint8), (.lvq8, .float32), (.lvq4, .float32), (.lvq4x8, .uint8)])
    func headerAndRecordBytesRoundTripThroughTheManifest(_ kind: PostingCodec, _ type: ElementType) throws {
        let dir = TempDir()
        _ = try Self.build(dir, codec: kind, type: type)
        let layout = IndexLayout(directory: dir.file("idx"))
        let m = try Manifest.load(directory: layout.directory)
        let codec = try RecordCodecs.open(manifest: m, layout: layout)
        #expect(codec.kind.rawValue == m.codec && m.record_bytes == codec.recordBytes)
        let f = try RandomAccessFile(path: layout.postingsPath)
        let h = try f.readHeader(magic: IndexLayout.postingsMagic)
        #expect(h == codec.postingsHeader(records: Int(h.count), payloadBytes: h.payloadBytes))
        if kind == .none {
            #expect(codec.recordDimension == m.dimension && codec.codeBytes == m.dimension * type.size)
            #expect(h.elementType == IndexFileHeader.code(type) && codec.servingBytes == 0 && codec.defaultRerank(k: 10) == 0)
        } else {
            #expect(codec.recordDimension == m.reduced_dimension && h.elementType >= 100)
            #expect(codec.defaultRerank(k: 10) == (kind == .lvq4 ? 40 : 20))
        }
        try codec.checkPostings(h, manifest: m, path: layout.postingsPath)
        // A header or manifest that disagrees is refused.
        var wrong = h; wrong.elementType ^= 1
        #expect { try codec.checkPostings(wrong, manifest: m, path: layout.postingsPath) } throws: { ($0 as? FathomError)?.code == .incompatibleIndex }
        var bigger = m; bigger.record_bytes += 1
        #expect { try codec.checkPostings(h, manifest: bigger, path: layout.postingsPath) } throws: { ($0 as? FathomError)?.code == .incompatibleIndex }
        // A codec.bin of another kind than the manifest names is refused.
        if kind != .none {
            var other = m; other.codec = kind == .lvq8 ? "lvq4" : "lvq8"
            #expect { _ = try RecordCodecs.open(manifest: other, layout: layout) } throws: { ($0 as? FathomError)?.code == .incompatibleIndex }
        }
    }

    /// Seeded heads, their graph (reachable) and a PCA projection of them.
    static func heads(H: Int = 300, D: Int = 24) throws -> (Matrix, HeadGraph, LeanVecProjection, Matrix) {
        var rng = SeededRandom(seed: 11)
        let heads = Matrix(rows: H, cols: D)
        for i in 0..<(H * D) { heads.data[i] = Float(rng.below(2000)) / 100 - 10 }
        let graph = HeadGraph.build(vectors: heads, degree: 12, buildList: 32, seed: 5)
        _ = graph.repairReachability(threads: 1)
        let projection = try LeanVecProjection.trainPCA(sample: heads, targetDim: 16)
        let queries = Matrix(rows: 8, cols: D)
        for i in 0..<(8 * D) { queries.data[i] = Float(rng.below(2000)) / 100 - 10 }
        return (heads, graph, projection, queries)
    }

    /// Routes `query` with the router and by the pre-seam algorithm spelled out (nearest
    /// pivots, then the beam search over `metric`): both give the same heads and distances.
    static func expectSameRoute<M: HeadDistance>(_ router: any HeadRouter, _ graph: HeadGraph, _ metric: M,
                                                 _ query: UnsafePointer<Float>, k: Int, list: Int) {
        let s = router.makeScratch()
        var ids = [UInt32](repeating: 0, count: list), dist = [Float](repeating: 0, count: list)
        let n = router.route(query, k: k, listSize: list, scratch: s, outIds: &ids, outDist: &dist)
        let pivots = HeadPivots(heads: graph.count)
        var pd = [Float](repeating: 0, count: pivots.count), entries = [UInt32](repeating: 0, count: HeadPivots.seeds)
        let e = pivots.nearest(metric, scratch: &pd, out: &entries)
        var refIds = [UInt32](repeating: 0, count: list), refDist = [Float](repeating: 0, count: list)
        let refN = entries.withUnsafeBufferPointer {
            graph.search(metric, k: k, listSize: list, scratch: HeadGraph.Scratch(graphSize: graph.count, beam: list),
                         outIds: &refIds, outDist: &refDist, entries: UnsafeBufferPointer(rebasing: $0[0..<e]))
        }
        #expect(n == refN && Array(ids[0..<n]) == Array(refIds[0..<n]) && Array(dist[0..<n]) == Array(refDist[0..<n]))
        // distances(…) scores the routed heads as the route did.
        var again = [Float](repeating: 0, count: n)
        ids.withUnsafeBufferPointer { router.distances(query, to: UnsafeBufferPointer(rebasing: $0[0..<n]), scratch: s, into: &again) }
        #expect(again == Array(dist[0..<n]))
    }

    /// The exhaustive route (k = beam = every head) of each form is the exact scan of its
    /// heads, nearest first; a narrow route equals the pre-seam algorithm.
    @Test func routerFormsRouteAsTheExactHeadScan() throws {
        let (heads, graph, projection, queries) = try Self.heads()
        let H = heads.rows
        let float = FloatHeadRouter(graph: graph)
        let r = 8
        let compressed = CompressedHeadRouter(compressing: graph, projection: projection, dimension: r)
        #expect(float.headBytes == H * heads.cols * 4 && compressed.headBytes == H * (r + 4))
        #expect(compressed.graph.vectors == nil && float.graphBytes == compressed.graphBytes)
        // The compressed heads' reference: LVQ-8 codes of the projected heads' first r components.
        let lvq = LVQCodec(kind: .lvq8, dim: r)
        let codes = UnsafeMutableRawPointer.allocate(byteCount: H * lvq.bytesPerVector, alignment: 64)
        defer { codes.deallocate() }
        let y = Matrix(rows: 1, cols: projection.outputDim)
        for i in 0..<H { projection.projectData(heads.row(i), into: y.data); lvq.encode(y.data, into: codes + i * lvq.bytesPerVector) }
        for qi in 0..<queries.rows {
            let q = queries.row(qi)
            let exact = FloatHeads(query: q, heads: heads)
            projection.projectData(q, into: y.data)
            var sum: Float = 0, norm: Float = 0
            for j in 0..<r { sum += y.data[j]; norm += y.data[j] * y.data[j] }
            let coded = CompressedHeads(query: y.data, sum: sum, norm: norm, codes: codes, codec: lvq)
            let forms: [(any HeadRouter, (Int) -> Float)] = [(float, { exact.distance($0) }), (compressed, { coded.distance($0) })]
            for (router, metric) in forms {
                let scan: [Float] = (0..<H).map { metric($0) }.sorted()
                var ids = [UInt32](repeating: 0, count: H), dist = [Float](repeating: 0, count: H)
                let n = router.route(q, k: H, listSize: H, scratch: router.makeScratch(), outIds: &ids, outDist: &dist)
                #expect(n == H && Set(ids).count == H, "query \(qi): the exhaustive route reaches every head once")
                #expect(dist == scan, "query \(qi): distances of the exhaustive route")
                #expect(ids.indices.allSatisfy { dist[$0] == metric(Int(ids[$0])) }, "query \(qi): each head at its own distance")
            }
            Self.expectSameRoute(float, graph, exact, q, k: 10, list: 32)
            Self.expectSameRoute(compressed, compressed.graph, coded, q, k: 10, list: 32)
        }
    }

    /// A router dimension beyond the codes' dimensions is refused, not trapped on.
    @Test func routerDimensionBeyondTheCodesIsRefused() throws {
        let (_, graph, projection, _) = try Self.heads()
        let codec = LeanVecLVQCodec(compact: CompactCodec(projection: projection, lvq: LVQCodec(kind: .lvq8, dim: 16)), metric: .l2)
        #expect { _ = try codec.makeRouter(graph: graph, routerDimension: 17) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
        #expect { _ = try codec.makeRouter(graph: graph, routerDimension: 0) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
        #expect(try codec.makeRouter(graph: graph, routerDimension: nil).headBytes == graph.count * (16 + 4))
        #expect(try FlatCodec(metric: .l2, elementType: .float32, dimension: 24).makeRouter(graph: graph, routerDimension: nil) is FloatHeadRouter)
    }
}

import FathomCodecs
import FathomCore
import FathomMath
import Foundation

/// What is searched (FAISS's coarse quantizer): the heads and their graph, answering "which
/// postings are nearest to this query, and how near".
///
/// Two forms, made by the index's ``RecordCodec`` (``RecordCodec/makeRouter(graph:dimension:)``):
/// - ``FloatHeadRouter``: the heads as built (uncompressed indexes);
/// - ``CompressedHeadRouter``: for an index with a LeanVec codec, every head is projected with
///   the codec's data matrix and the first `r` components (the router dimension, r ≤ d′) are
///   stored as an LVQ-8 code, so a head costs `r + 4` bytes instead of `4·D` (docs/memory.md).
///
/// A search makes one dynamic call per query (``route(_:k:listSize:scratch:outIds:outDist:)``
/// or ``distances(_:to:scratch:into:)``); the per-head distance loop runs inside the concrete
/// form, specialized for its head representation.
///
/// Thread safety: a router is immutable after init and shared by all threads; per-thread
/// state lives in a ``RouteScratch`` (``makeScratch()``), used by one thread at a time.
protocol HeadRouter: AnyObject, Sendable {
    /// The head graph (its float vectors only in the float form).
    var graph: HeadGraph { get }
    /// RAM of the heads in their serving representation.
    var headBytes: Int { get }
    /// Per-thread routing state sized for this router.
    func makeScratch() -> RouteScratch
    /// The `k` heads nearest to `query` (full dimension, normalized for cosine), nearest
    /// first, into `outIds` / `outDist` (squared L2 in the heads' representation); returns
    /// how many. `listSize` is the beam width of the graph search.
    func route(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch: RouteScratch,
               outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int
    /// Distances (as in ``route(_:k:listSize:scratch:outIds:outDist:)``) from `query` to each
    /// of `heads`, by brute force: for ranking a small set of postings directly.
    func distances(_ query: UnsafePointer<Float>, to heads: UnsafeBufferPointer<UInt32>, scratch: RouteScratch,
                   into out: UnsafeMutablePointer<Float>)
    /// The same form over a changed head set (updates: a split moves a head and adds one):
    /// `graph` is the new topology (holding its float heads for the float form), `heads`
    /// the float heads (at least `graph.count` rows), `changed` the ids below this router's
    /// count whose vectors moved; ids at or above it are new. Unchanged heads are copied,
    /// the rest encoded; the beam keeps starting at this router's pivots.
    func grown(graph: HeadGraph, heads: Matrix, changed: [Int]) -> any HeadRouter
}

extension HeadRouter {
    /// The scratch type every form uses (`HeadRouter.Scratch` in the searcher).
    typealias Scratch = RouteScratch
    /// A plain query's routing: how many heads it asks for (`probes`, at most the heads) and
    /// the beam width of the graph search.
    func routeWidth(_ p: SearchParameters) -> (probes: Int, list: Int) {
        let probes = min(p.probes, count)
        return (probes, max(p.headListSize ?? max(2 * probes, 64), probes))
    }
    /// Number of heads (postings).
    var count: Int { graph.count }
    /// RAM of the graph topology.
    var graphBytes: Int { graph.count * graph.degree * 4 }
}

/// One thread's routing state: the graph search's scratch, the pivot distances, the beam's
/// entry points and (compressed heads) the projected query.
///
/// Thread safety: one thread at a time.
final class RouteScratch {
    let graph: HeadGraph.Scratch
    /// The projected query (``CompressedHeadRouter``; `projectedDim` floats, at least one).
    let projected: UnsafeMutablePointer<Float>
    let pivotDist: UnsafeMutablePointer<Float>
    let entries: UnsafeMutablePointer<UInt32>
    let pivotCount: Int
    /// Components of the projected query (d′; 0 for float heads).
    let projectedDim: Int

    /// Room for a wider route than the caller asked for (``RetiredHeadsRouter``).
    private(set) var spareIds = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private(set) var spareDist = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var spareCapacity = 1

    func ensureSpare(_ n: Int) {
        guard n > spareCapacity else { return }
        spareIds.deallocate(); spareDist.deallocate()
        spareCapacity = n
        spareIds = .allocate(capacity: n); spareDist = .allocate(capacity: n)
    }

    init(heads: Int, pivots: Int, projectedDim: Int) {
        graph = HeadGraph.Scratch(graphSize: heads, beam: 128)
        self.projectedDim = projectedDim
        projected = .allocate(capacity: max(projectedDim, 1))
        pivotCount = pivots
        pivotDist = .allocate(capacity: max(1, pivots))
        entries = .allocate(capacity: HeadPivots.seeds)
    }
    deinit { projected.deallocate(); pivotDist.deallocate(); entries.deallocate(); spareIds.deallocate(); spareDist.deallocate() }

    /// Bytes this scratch holds.
    var bytes: Int { graph.visited.count * 4 + graph.beamDist.count * 9 + projectedDim * 4 + pivotCount * 4 + HeadPivots.seeds * 4 + spareCapacity * 8 }
}

/// Float32 heads: the graph keeps its vectors and distances are exact squared L2 in the
/// input space.
///
/// Thread safety: immutable, shared; see ``HeadRouter``.
final class FloatHeadRouter: HeadRouter, @unchecked Sendable {
    let graph: HeadGraph
    let heads: Matrix
    /// Where each search's beam starts: the nearest of ≈ √H pivot heads.
    let pivots: HeadPivots

    /// `graph` must hold its float vectors. `pivots`: where beams start (nil: ≈ √H spread
    /// over the heads).
    init(graph: HeadGraph, pivots: HeadPivots? = nil) {
        self.graph = graph
        heads = graph.vectors!
        self.pivots = pivots ?? HeadPivots(heads: graph.count)
    }

    func grown(graph: HeadGraph, heads: Matrix, changed: [Int]) -> any HeadRouter {
        FloatHeadRouter(graph: graph, pivots: pivots)
    }

    var headBytes: Int { heads.byteCount }

    func makeScratch() -> RouteScratch { RouteScratch(heads: graph.count, pivots: pivots.count, projectedDim: 0) }

    func route(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch s: RouteScratch,
               outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        let metric = FloatHeads(query: query, heads: heads)
        let e = UnsafeBufferPointer(start: s.entries, count: pivots.nearest(metric, scratch: s.pivotDist, out: s.entries))
        return graph.search(metric, k: k, listSize: listSize, scratch: s.graph, outIds: outIds, outDist: outDist, entries: e)
    }

    func distances(_ query: UnsafePointer<Float>, to ids: UnsafeBufferPointer<UInt32>, scratch s: RouteScratch,
                   into out: UnsafeMutablePointer<Float>) {
        let m = FloatHeads(query: query, heads: heads)
        for i in 0..<ids.count { out[i] = m.distance(Int(ids[i])) }
    }
}

/// Compressed heads: LVQ-8 codes of the first `r` components of the LeanVec-projected heads
/// (`Bᵀ(h − μ)`). The query is projected the same way (its first `r` components) and the
/// graph search runs on the codes; squared L2 between the projected prefixes approximates
/// the full-space distance the graph was built with. The columns of a PCA projection are
/// ordered by variance, so the prefix is the `r`-dimensional PCA: the heads can stay small
/// while the postings' codes keep more dimensions.
///
/// Thread safety: immutable, shared; see ``HeadRouter``.
final class CompressedHeadRouter: HeadRouter, @unchecked Sendable {
    let graph: HeadGraph
    /// LVQ-8 codes of the projected heads, `headCodec.bytesPerVector` apart.
    let codes: UnsafeMutableRawPointer
    let headCodec: LVQCodec
    let projection: LeanVecProjection
    let pivots: HeadPivots

    /// Projects `graph.vectors`, encodes the first `dimension` components of each
    /// (1 ≤ dimension ≤ the projection's output), then drops the float heads.
    init(compressing graph: HeadGraph, projection: LeanVecProjection, dimension r: Int) {
        precondition(r >= 1 && r <= projection.outputDim)
        let heads = graph.vectors!
        let codec = LVQCodec(kind: .lvq8, dim: r)
        let stride = codec.bytesPerVector
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(1, heads.rows * stride), alignment: 64)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: projection.outputDim)
        defer { y.deallocate() }
        // Encoding the first r of d components: the code reads y[0..<r].
        for i in 0..<heads.rows {
            projection.projectData(heads.row(i), into: y)
            codec.encode(UnsafePointer(y), into: buf + i * stride)
        }
        self.graph = graph.droppingVectors()
        codes = buf; headCodec = codec; self.projection = projection
        pivots = HeadPivots(heads: graph.count)
    }

    /// A router over `graph` (no float heads needed) taking ownership of `codes`
    /// (`graph.count` codes of `headCodec`, allocated with `.allocate(byteCount:alignment:)`).
    private init(graph: HeadGraph, codes: UnsafeMutableRawPointer, headCodec: LVQCodec,
                 projection: LeanVecProjection, pivots: HeadPivots) {
        self.graph = graph; self.codes = codes; self.headCodec = headCodec
        self.projection = projection; self.pivots = pivots
    }

    deinit { codes.deallocate() }

    func grown(graph: HeadGraph, heads: Matrix, changed: [Int]) -> any HeadRouter {
        let stride = headCodec.bytesPerVector
        let n = graph.count, old = self.graph.count
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(1, n * stride), alignment: 64)
        buf.copyMemory(from: codes, byteCount: min(n, old) * stride)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: projection.outputDim)
        defer { y.deallocate() }
        for i in changed.filter({ $0 < n }) + Array(old..<max(old, n)) {
            projection.projectData(heads.row(i), into: y)
            headCodec.encode(UnsafePointer(y), into: buf + i * stride)
        }
        return CompressedHeadRouter(graph: graph.vectors == nil ? graph : graph.droppingVectors(), codes: buf,
                                    headCodec: headCodec, projection: projection, pivots: pivots)
    }

    /// Components the heads are coded in (the router dimension r).
    var dimension: Int { headCodec.dim }
    var headBytes: Int { headCodec.bytesPerVector * graph.count }

    func makeScratch() -> RouteScratch {
        RouteScratch(heads: graph.count, pivots: pivots.count, projectedDim: projection.outputDim)
    }

    /// The head metric for `query`: projects it into `s.projected` (all d′ components; the
    /// codes read the first r).
    @inline(__always) private func metric(_ query: UnsafePointer<Float>, _ s: RouteScratch) -> CompressedHeads {
        projection.projectData(query, into: s.projected)
        var sum: Float = 0, norm: Float = 0
        for j in 0..<dimension { let v = s.projected[j]; sum += v; norm += v * v }
        return CompressedHeads(query: s.projected, sum: sum, norm: norm, codes: codes, codec: headCodec)
    }

    func route(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch s: RouteScratch,
               outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        let m = metric(query, s)
        let e = UnsafeBufferPointer(start: s.entries, count: pivots.nearest(m, scratch: s.pivotDist, out: s.entries))
        return graph.search(m, k: k, listSize: listSize, scratch: s.graph, outIds: outIds, outDist: outDist, entries: e)
    }

    func distances(_ query: UnsafePointer<Float>, to ids: UnsafeBufferPointer<UInt32>, scratch s: RouteScratch,
                   into out: UnsafeMutablePointer<Float>) {
        let m = metric(query, s)
        for i in 0..<ids.count { out[i] = m.distance(Int(ids[i])) }
    }
}

/// LVQ-8 codes of projected heads, scored against a projected query.
struct CompressedHeads: HeadDistance {
    let query: UnsafePointer<Float>
    let sum: Float
    let norm: Float
    let codes: UnsafeRawPointer
    let codec: LVQCodec
    @inline(__always) func distance(_ i: Int) -> Float {
        codec.distance(query: query, sum: sum, normSquared: norm, code: codes + i * codec.bytesPerVector, metric: .l2)
    }
}

/// A router over a head set some of whose heads are retired (an update merged their
/// postings away): the graph keeps them as waypoints, but a route never returns one. The
/// inner router is asked for more heads (up to the retired count more, at most 2·k + 16) and
/// the retired ones are dropped, so a query still gets `k` live postings.
///
/// Thread safety: immutable, shared; see ``HeadRouter``.
final class RetiredHeadsRouter: HeadRouter, @unchecked Sendable {
    let inner: any HeadRouter
    let retired: Tombstones

    init(inner: any HeadRouter, retired: Tombstones) {
        self.inner = inner; self.retired = retired
    }

    var graph: HeadGraph { inner.graph }
    var headBytes: Int { inner.headBytes + retired.residentBytes }
    func makeScratch() -> RouteScratch { inner.makeScratch() }

    func route(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch s: RouteScratch,
               outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        let wide = min(k + retired.deleted, 2 * k + 16)
        s.ensureSpare(wide)
        let found = inner.route(query, k: wide, listSize: max(listSize, wide), scratch: s, outIds: s.spareIds, outDist: s.spareDist)
        var n = 0
        for i in 0..<found where n < k && !retired.contains(s.spareIds[i]) {
            outIds[n] = s.spareIds[i]; outDist[n] = s.spareDist[i]; n += 1
        }
        return n
    }

    func distances(_ query: UnsafePointer<Float>, to heads: UnsafeBufferPointer<UInt32>, scratch: RouteScratch,
                   into out: UnsafeMutablePointer<Float>) {
        inner.distances(query, to: heads, scratch: scratch, into: out)
    }

    func grown(graph: HeadGraph, heads: Matrix, changed: [Int]) -> any HeadRouter {
        inner.grown(graph: graph, heads: heads, changed: changed)
    }
}

/// Query-aware pruning of routed heads (nearest first): keeps those within `ratio` × the
/// nearest non-zero distance, into `lists` (the plan of a plain query, in a single index and
/// in a router alike).
func routePrune(found: Int, ids: UnsafePointer<UInt32>, distances: UnsafePointer<Float>, ratio: Float, into lists: inout [UInt32]) {
    lists.removeAll(keepingCapacity: true)
    guard found > 0 else { return }
    var ref = distances[0]
    if ref <= 0 { for i in 1..<max(found, 1) where distances[i] > 0 { ref = distances[i]; break } }
    let limit = ref > 0 ? ref * ratio : Float.infinity
    for i in 0..<found {
        if distances[i] > limit { break }
        lists.append(ids[i])
    }
}

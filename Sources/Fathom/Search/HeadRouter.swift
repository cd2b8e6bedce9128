import FathomCodecs
import FathomCore
import FathomMath
import Foundation

/// What is searched (FAISS's coarse quantizer): the heads and their graph, answering "which
/// postings are nearest to this query, and how near".
///
/// Two representations of the heads:
/// - **float**: the heads as built (uncompressed indexes);
/// - **compressed**: for an index with a LeanVec codec, every head is projected with the
///   codec's data matrix and the first `r` components (the router dimension, r ≤ d′) are
///   stored as an LVQ-8 code, so a head costs `r + 4` bytes instead of `4·D`
///   (docs/memory.md). The query is projected the same way (`Bᵀ(q − μ)`, its first `r`
///   components) and the graph search runs on the codes; squared L2 between the projected
///   prefixes approximates the full-space distance the graph was built with. The columns of
///   a PCA projection are ordered by variance, so the prefix is the `r`-dimensional PCA: the
///   heads can stay small while the postings' codes keep more dimensions.
///
/// Thread safety: immutable after init and shared; per-thread state lives in ``Scratch``.
final class HeadRouter: @unchecked Sendable {
    let graph: HeadGraph
    /// Compressed heads: LVQ-8 codes of the projected heads, `codec.bytesPerVector` apart.
    let codes: UnsafeMutableRawPointer?
    let headCodec: LVQCodec?
    let projection: LeanVecProjection?
    /// Where each search's beam starts: the nearest of ≈ √H pivot heads.
    let pivots: HeadPivots

    /// Float heads (the graph keeps its vectors).
    init(graph: HeadGraph) {
        self.graph = graph
        codes = nil; headCodec = nil; projection = nil
        pivots = HeadPivots(heads: graph.count)
    }

    /// Compressed heads: projects `graph.vectors`, encodes the first `dimension` components
    /// of each (1 ≤ dimension ≤ the projection's output), then drops the float heads.
    init(compressing graph: HeadGraph, projection: LeanVecProjection, dimension r: Int) {
        precondition(r >= 1 && r <= projection.outputDim)
        let heads = graph.vectors!
        let d = projection.outputDim
        let codec = LVQCodec(kind: .lvq8, dim: r)
        let stride = codec.bytesPerVector
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(1, heads.rows * stride), alignment: 64)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: d)
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

    deinit { codes?.deallocate() }

    var count: Int { graph.count }

    /// RAM of the heads in their serving representation.
    var headBytes: Int { headCodec.map { $0.bytesPerVector * count } ?? (graph.vectors?.byteCount ?? 0) }
    /// RAM of the graph topology.
    var graphBytes: Int { count * graph.degree * 4 }

    /// Per-thread routing state.
    final class Scratch {
        let graph: HeadGraph.Scratch
        let projected: UnsafeMutablePointer<Float>
        let pivotDist: UnsafeMutablePointer<Float>
        let entries: UnsafeMutablePointer<UInt32>
        let pivotCount: Int
        var sum: Float = 0
        var norm: Float = 0
        /// Components the heads are coded in (the router dimension r).
        let dim: Int
        /// Components of the projected query (d′ ≥ r).
        let projectedDim: Int
        init(router: HeadRouter) {
            graph = HeadGraph.Scratch(graphSize: router.count, beam: 128)
            dim = router.headCodec?.dim ?? 0
            projectedDim = router.projection?.outputDim ?? 0
            projected = .allocate(capacity: max(projectedDim, 1))
            pivotCount = router.pivots.count
            pivotDist = .allocate(capacity: max(1, router.pivots.count))
            entries = .allocate(capacity: HeadPivots.seeds)
        }
        deinit { projected.deallocate(); pivotDist.deallocate(); entries.deallocate() }
        var bytes: Int { graph.visited.count * 4 + graph.beamDist.count * 9 + projectedDim * 4 + pivotCount * 4 + HeadPivots.seeds * 4 }
    }

    func makeScratch() -> Scratch { Scratch(router: self) }

    /// The `k` heads nearest to `query` (full dimension, normalized for cosine), nearest
    /// first, into `outIds` / `outDist` (squared L2 in the heads' representation); returns
    /// how many.
    func route(_ query: UnsafePointer<Float>, k: Int, listSize: Int, scratch s: Scratch,
               outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        guard let codes, let headCodec, let projection else {
            let metric = FloatHeads(query: query, heads: graph.vectors!)
            let e = UnsafeBufferPointer(start: s.entries, count: pivots.nearest(metric, scratch: s.pivotDist, out: s.entries))
            return graph.search(metric, k: k, listSize: listSize, scratch: s.graph, outIds: outIds, outDist: outDist, entries: e)
        }
        projection.projectData(query, into: s.projected)
        var sum: Float = 0, norm: Float = 0
        for j in 0..<s.dim { let v = s.projected[j]; sum += v; norm += v * v }
        let metric = CompressedHeads(query: s.projected, sum: sum, norm: norm, codes: codes, codec: headCodec)
        let e = UnsafeBufferPointer(start: s.entries, count: pivots.nearest(metric, scratch: s.pivotDist, out: s.entries))
        return graph.search(metric, k: k, listSize: listSize, scratch: s.graph, outIds: outIds, outDist: outDist, entries: e)
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

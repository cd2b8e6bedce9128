import FathomMath

extension HeadGraph {
    /// The build's head search (graph build and assignment): ``beamSearch`` over the float
    /// heads from `entries`, scoring each expanded node's unvisited neighbours in one gathered
    /// call that prefetches their rows first, and prefetching the neighbour list of every node
    /// entering the beam (both are bound by those cache misses: 1M heads do not fit any
    /// cache). The same nodes, order and distances as ``search(_:k:listSize:scratch:outIds:outDist:limit:entries:)``
    /// with ``FloatHeads``. `gatherIds`/`gatherDist` need room for `degree`. One `scratch` per thread.
    /// - Returns: the number of results in `outIds`/`outDist`, nearest first.
    func searchGathered(_ q: UnsafePointer<Float>, k: Int, listSize: Int, entries: UnsafeBufferPointer<UInt32>, scratch s: Scratch,
                        gatherIds: UnsafeMutablePointer<UInt32>, gatherDist: UnsafeMutablePointer<Float>,
                        outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        guard let heads = vectors else { return 0 }
        return beamSearch(GatheredFloatHeads(query: q, heads: heads), k: k, listSize: listSize, scratch: s, limit: count,
                          entries: entries, gatherIds: gatherIds, gatherDist: gatherDist, outIds: outIds, outDist: outDist)
    }
}

/// Float32 heads scored the build's way: a node's neighbours through one gathered call
/// (every row prefetched first; the same values as ``FloatHeads``), neighbour lists prefetched.
struct GatheredFloatHeads: HeadDistance {
    let query: UnsafePointer<Float>
    let heads: Matrix
    static var prefetchesNeighbors: Bool { true }
    @inline(__always) func distance(_ i: Int) -> Float { Distance.l2sq(query, heads.row(i), heads.cols) }
    @inline(__always) func distances(_ ids: UnsafePointer<UInt32>, count: Int, into out: UnsafeMutablePointer<Float>) {
        Distance.l2sqGather(query, UnsafePointer(heads.data), ids: ids, count: count, heads.cols, into: out)
    }
}

import FathomMath

extension HeadGraph {
    /// The build's head search (graph build and assignment): the beam search of
    /// ``search(_:k:listSize:scratch:outIds:outDist:limit:)`` over the float heads, starting
    /// from `entries` (nearest first after scoring), scoring each expanded node's unvisited neighbours in one gathered call
    /// that prefetches their rows first (both are bound by those cache misses). From the
    /// graph's entry it visits the same nodes in the same order with the same distances
    /// (and records them in `scratch.evaluated` when tracking). One `scratch` per thread.
    /// - Returns: the number of results in `outIds`/`outDist`, nearest first.
    func searchGathered(_ q: UnsafePointer<Float>, k: Int, listSize: Int, entries: UnsafeBufferPointer<UInt32>, scratch s: Scratch,
                        gatherIds: UnsafeMutablePointer<UInt32>, gatherDist: UnsafeMutablePointer<Float>,
                        outIds: UnsafeMutablePointer<UInt32>, outDist: UnsafeMutablePointer<Float>) -> Int {
        guard let heads = vectors, count > 0 else { return 0 }
        let L = max(listSize, k)
        let d = dimension
        let base = UnsafePointer(heads.data)
        s.ensure(beam: L, graphSize: count)
        s.epoch &+= 1
        if s.epoch == 0 { for i in 0..<s.visited.count { s.visited[i] = 0 }; s.epoch = 1 }
        let epoch = s.epoch
        let nbLines = (degree * 4 + 63) / 64
        s.evaluated.removeAll(keepingCapacity: true)
        let track = s.trackEvaluated
        return s.visited.withUnsafeMutableBufferPointer { vis -> Int in
            s.beamDist.withUnsafeMutableBufferPointer { bd -> Int in
                s.beamId.withUnsafeMutableBufferPointer { bi -> Int in
                    s.beamDone.withUnsafeMutableBufferPointer { bdone -> Int in
                        let vis = vis.baseAddress!, bd = bd.baseAddress!, bi = bi.baseAddress!, bdone = bdone.baseAddress!
                        var cnt = 0
                        for e in entries where Int(e) < count && vis[Int(e)] != epoch {
                            vis[Int(e)] = epoch
                            let dv = Distance.l2sq(q, base + Int(e) * d, d)
                            if track { s.evaluated.append((dv, e)) }
                            if cnt == L && dv >= bd[L - 1] { continue }
                            var pos = cnt < L ? cnt : L - 1
                            while pos > 0 && bd[pos - 1] > dv { bd[pos] = bd[pos - 1]; bi[pos] = bi[pos - 1]; pos -= 1 }
                            bd[pos] = dv; bi[pos] = e
                            if cnt < L { cnt += 1 }
                        }
                        if cnt == 0 {
                            vis[0] = epoch
                            bd[0] = Distance.l2sq(q, base, d); bi[0] = 0
                            if track { s.evaluated.append((bd[0], 0)) }
                            cnt = 1
                        }
                        for i in 0..<cnt { bdone[i] = false }
                        var cursor = 0
                        while cursor < cnt {
                            bdone[cursor] = true
                            let nb = neighbors + Int(bi[cursor]) * degree
                            var m = 0
                            for j in 0..<degree {
                                let v = nb[j]
                                if v == HeadGraph.empty { break }
                                if vis[Int(v)] == epoch { continue }
                                vis[Int(v)] = epoch
                                gatherIds[m] = v; m += 1
                            }
                            Distance.l2sqGather(q, base, ids: gatherIds, count: m, d, into: gatherDist)
                            var nextCursor = cnt
                            for j in 0..<m {
                                let dv = gatherDist[j], v = gatherIds[j]
                                if track { s.evaluated.append((dv, v)) }
                                if cnt == L && dv >= bd[L - 1] { continue }
                                var pos = cnt < L ? cnt : L - 1
                                while pos > 0 && bd[pos - 1] > dv {
                                    bd[pos] = bd[pos - 1]; bi[pos] = bi[pos - 1]; bdone[pos] = bdone[pos - 1]
                                    pos -= 1
                                }
                                bd[pos] = dv; bi[pos] = v; bdone[pos] = false
                                // Its neighbour list is read when it is expanded: fetch it now.
                                Distance.prefetch(UnsafeRawPointer(neighbors + Int(v) * degree), lines: nbLines)
                                if cnt < L { cnt += 1 }
                                if pos < nextCursor { nextCursor = pos }
                            }
                            var c = min(nextCursor, cursor + 1)
                            while c < cnt && bdone[c] { c += 1 }
                            cursor = c
                        }
                        let r = min(k, cnt)
                        for i in 0..<r { outIds[i] = bi[i]; outDist[i] = bd[i] }
                        return r
                    }
                }
            }
        }
    }
}

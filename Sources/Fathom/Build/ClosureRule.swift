import FathomCore
import FathomMath

/// SPTAG's RNG closure rule (`ApproximateRNG`): walk the candidate heads nearest first and
/// accept head h unless an accepted head a satisfies `rngFactor · d(h, a) < d(x, h)`
/// (squared distances), stopping at `replicas` heads.
@inline(__always)
func rngSelect(candidates ids: UnsafePointer<UInt32>, distances: UnsafePointer<Float>, count: Int,
               replicas: Int, rngFactor: Float, heads: Matrix,
               out: UnsafeMutablePointer<Int>) -> Int {
    var accepted = 0
    let d = heads.cols
    for i in 0..<count {
        if accepted == replicas { break }
        let h = Int(ids[i])
        let dxh = distances[i]
        var ok = true
        for a in 0..<accepted {
            if rngFactor * Distance.l2sq(heads.row(h), heads.row(Int(ids[out[a]])), d) < dxh { ok = false; break }
        }
        if ok { out[accepted] = i; accepted += 1 }
    }
    return accepted
}

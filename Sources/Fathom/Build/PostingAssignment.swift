import FathomCore
import FathomMath

/// Posting membership under construction: for every head a bounded max-heap of its
/// nearest members (distance, id), so an over-full posting keeps its closest vectors no
/// matter in which order vectors arrive, plus each vector's replica count.
///
/// Memory: heads × cap × 8 bytes + n bytes, independent of how many replicas are offered.
final class PostingAssignment {
    let heads: Int
    let cap: Int
    var dist: [Float]
    var ids: [UInt32]
    var sizes: [Int32]
    /// Replica count per vector (saturates at 255; replicas are ≤ 8 anyway).
    var replicas: [UInt8]
    /// Records offered but dropped because a posting was full.
    var cutRecords = 0

    init(heads: Int, cap: Int, vectors: Int) {
        self.heads = heads
        self.cap = cap
        dist = [Float](repeating: 0, count: heads * cap)
        ids = [UInt32](repeating: 0, count: heads * cap)
        sizes = [Int32](repeating: 0, count: heads)
        replicas = [UInt8](repeating: 0, count: vectors)
    }

    static func memoryBytes(heads: Int, cap: Int, vectors: Int) -> Int { heads * cap * 8 + heads * 4 + vectors }

    @inline(__always)
    static func worse(_ da: Float, _ ia: UInt32, _ db: Float, _ ib: UInt32) -> Bool {
        da > db || (da == db && ia > ib)
    }

    /// Offers vector `id` at distance `d` to posting `h`. Returns false if it was not kept.
    @discardableResult
    func offer(head h: Int, id: UInt32, distance d: Float) -> Bool {
        let base = h * cap
        let n = Int(sizes[h])
        return dist.withUnsafeMutableBufferPointer { dp in
            ids.withUnsafeMutableBufferPointer { ip in
                let dp = dp.baseAddress! + base, ip = ip.baseAddress! + base
                if n < cap {
                    var i = n
                    while i > 0 {
                        let p = (i - 1) >> 1
                        if Self.worse(d, id, dp[p], ip[p]) { dp[i] = dp[p]; ip[i] = ip[p]; i = p } else { break }
                    }
                    dp[i] = d; ip[i] = id
                    sizes[h] = Int32(n + 1)
                    replicas[Int(id)] &+= 1
                    return true
                }
                guard Self.worse(dp[0], ip[0], d, id) else { cutRecords += 1; return false }
                let evicted = ip[0]
                siftDownRoot(dp, ip, n, d, id)
                replicas[Int(evicted)] &-= 1
                replicas[Int(id)] &+= 1
                cutRecords += 1
                return true
            }
        }
    }

    @inline(__always)
    private func siftDownRoot(_ dp: UnsafeMutablePointer<Float>, _ ip: UnsafeMutablePointer<UInt32>, _ n: Int, _ d: Float, _ id: UInt32) {
        var i = 0
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var c = l
            if l + 1 < n && Self.worse(dp[l + 1], ip[l + 1], dp[l], ip[l]) { c = l + 1 }
            if Self.worse(dp[c], ip[c], d, id) { dp[i] = dp[c]; ip[i] = ip[c]; i = c } else { break }
        }
        dp[i] = d; ip[i] = id
    }

    /// Puts an orphan (a vector every posting of which was cut) into posting `h` even when
    /// it is full, by evicting that posting's farthest member that has another replica.
    /// Returns false if every member of `h` is its vector's only replica.
    func forceInsert(head h: Int, id: UInt32, distance d: Float) -> Bool {
        let n = Int(sizes[h])
        if n < cap { return offer(head: h, id: id, distance: d) }
        let base = h * cap
        var victim = -1
        var victimD = -Float.infinity
        for i in 0..<n where replicas[Int(ids[base + i])] > 1 {
            if dist[base + i] > victimD { victimD = dist[base + i]; victim = i }
        }
        guard victim >= 0 else { return false }
        replicas[Int(ids[base + victim])] -= 1
        // Replace and restore the heap property by rebuilding this small heap.
        dist[base + victim] = d; ids[base + victim] = id
        replicas[Int(id)] += 1
        var items = (0..<n).map { (dist[base + $0], ids[base + $0]) }
        items.sort { Self.worse($0.0, $0.1, $1.0, $1.1) }   // worst first = valid max-heap
        for (i, e) in items.enumerated() { dist[base + i] = e.0; ids[base + i] = e.1 }
        return true
    }

    /// Members of posting `h`, nearest first (distance, then id).
    func members(_ h: Int) -> [(Float, UInt32)] {
        let base = h * cap
        var out = (0..<Int(sizes[h])).map { (dist[base + $0], ids[base + $0]) }
        out.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        return out
    }

    var totalRecords: Int { sizes.reduce(0) { $0 + Int($1) } }
}

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

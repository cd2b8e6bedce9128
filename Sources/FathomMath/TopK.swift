/// A bounded max-heap keeping the `capacity` smallest (distance, id) pairs seen.
///
/// Storage is allocated once; `reset()` reuses it, so a search thread keeps one per
/// query slot and the hot path never allocates. Not thread-safe: one owner at a time. Ties on distance are broken by the
/// smaller id, which makes results deterministic.
public final class TopK {
    public let capacity: Int
    @usableFromInline var _count = 0
    public var count: Int { _count }
    @usableFromInline let dist: UnsafeMutablePointer<Float>
    @usableFromInline let ids: UnsafeMutablePointer<UInt32>

    public init(capacity: Int) {
        precondition(capacity > 0, "TopK capacity must be positive")
        self.capacity = capacity
        dist = .allocate(capacity: capacity)
        ids = .allocate(capacity: capacity)
    }

    deinit {
        dist.deallocate()
        ids.deallocate()
    }

    /// Forgets all entries (keeps the storage).
    @inlinable public func reset() { _count = 0 }

    /// The largest distance kept, or +infinity while the heap is not full. A candidate
    /// at or above this bound cannot enter (unless it ties and has a smaller id).
    @inlinable public var bound: Float { _count < capacity ? .infinity : dist[0] }

    @inlinable @inline(__always)
    static func worse(_ da: Float, _ ia: UInt32, _ db: Float, _ ib: UInt32) -> Bool {
        da > db || (da == db && ia > ib)
    }

    /// Offers a candidate; returns true if it was kept.
    @inlinable @discardableResult
    public func push(_ d: Float, _ id: UInt32) -> Bool {
        if _count < capacity {
            var i = _count
            _count += 1
            while i > 0 {
                let p = (i - 1) >> 1
                if TopK.worse(d, id, dist[p], ids[p]) {
                    dist[i] = dist[p]; ids[i] = ids[p]; i = p
                } else { break }
            }
            dist[i] = d; ids[i] = id
            return true
        }
        guard TopK.worse(dist[0], ids[0], d, id) else { return false }
        siftDownRoot(d, id)
        return true
    }

    @inlinable @inline(__always)
    func siftDownRoot(_ d: Float, _ id: UInt32) {
        var i = 0
        let n = _count
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var c = l
            let r = l + 1
            if r < n && TopK.worse(dist[r], ids[r], dist[l], ids[l]) { c = r }
            if TopK.worse(dist[c], ids[c], d, id) {
                dist[i] = dist[c]; ids[i] = ids[c]; i = c
            } else { break }
        }
        dist[i] = d; ids[i] = id
    }

    /// Removes all entries and returns them nearest first (distance, then id).
    public func drainSorted() -> [(distance: Float, id: UInt32)] {
        var out = [(distance: Float, id: UInt32)]()
        out.reserveCapacity(_count)
        for i in 0..<_count { out.append((dist[i], ids[i])) }
        out.sort { $0.distance < $1.distance || ($0.distance == $1.distance && $0.id < $1.id) }
        _count = 0
        return out
    }

    /// Writes the entries nearest first into the given buffers (at least `count` long)
    /// without allocating, and empties the heap. Returns the number written.
    @inlinable
    public func drainSorted(distances: UnsafeMutablePointer<Float>, ids out: UnsafeMutablePointer<UInt32>) -> Int {
        let n = _count
        // Heap-sort in place: repeatedly move the worst to the end.
        var m = n
        while m > 1 {
            let d = dist[0], id = ids[0]
            let ld = dist[m - 1], lid = ids[m - 1]
            dist[m - 1] = d; ids[m - 1] = id
            _count = m - 1
            siftDownRoot(ld, lid)
            m -= 1
        }
        for i in 0..<n { distances[i] = dist[i]; out[i] = ids[i] }
        _count = 0
        return n
    }
}

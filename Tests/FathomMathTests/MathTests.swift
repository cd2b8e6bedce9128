import Testing
@testable import FathomMath

@Suite struct MathTests {
    @Test func topKKeepsTheSmallestWithIdTieBreak() {
        var rng = SeededRandom(seed: 5)
        let heap = TopK(capacity: 10)
        var all = [(Float, UInt32)]()
        for i in 0..<1000 {
            let d = Float(rng.below(200))     // many ties
            all.append((d, UInt32(i)))
            heap.push(d, UInt32(i))
        }
        all.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        let got = heap.drainSorted()
        #expect(got.map(\.id) == all.prefix(10).map(\.1))
        #expect(got.map(\.distance) == all.prefix(10).map(\.0))
        #expect(heap.count == 0)
    }

    @Test func topKDrainIntoBuffers() {
        let heap = TopK(capacity: 5)
        for (i, d) in [5, 1, 4, 1, 3, 9, 2, 6].enumerated() { heap.push(Float(d), UInt32(i)) }
        var ds = [Float](repeating: 0, count: 5), ids = [UInt32](repeating: 0, count: 5)
        let n = ds.withUnsafeMutableBufferPointer { d in ids.withUnsafeMutableBufferPointer { i in
            heap.drainSorted(distances: d.baseAddress!, ids: i.baseAddress!) } }
        #expect(n == 5)
        #expect(ds == [1, 1, 2, 3, 4])
        #expect(ids == [1, 3, 6, 4, 2])
    }

    @Test func seededRandomIsReproducibleAndSamplesDistinct() {
        var a = SeededRandom(seed: 11), b = SeededRandom(seed: 11)
        #expect((0..<100).map { _ in a.next() } == (0..<100).map { _ in b.next() })
        var r = SeededRandom(seed: 3)
        for (k, n) in [(10, 1000), (900, 1000), (1000, 1000)] {
            let s = r.sample(k, from: n)
            #expect(s.count == k && Set(s).count == k && s == s.sorted() && s.allSatisfy { $0 >= 0 && $0 < n })
        }
        var g = SeededRandom(seed: 9)
        let xs = (0..<20000).map { _ in g.gaussian() }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let varx = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
        #expect(abs(mean) < 0.03 && abs(varx - 1) < 0.05)
    }

    @Test func balancedKMeansGivesEvenClustersOfRealPoints() {
        // Two very unequal blobs: plain k-means would give uneven clusters.
        var rng = SeededRandom(seed: 1)
        let n = 4000, d = 8
        let m = Matrix(rows: n, cols: d)
        for i in 0..<n {
            let c: Float = i < 3500 ? 0 : 10
            for j in 0..<d { m.row(i)[j] = c + Float(rng.gaussian()) }
        }
        var km = BalancedKMeans()
        km.seed = 2
        let heads = km.selectHeads(points: m, targetHeads: 100)
        #expect(heads.count >= 80 && heads.count <= 130, "got \(heads.count) heads")
        #expect(Set(heads).count == heads.count)
        // Cluster sizes when every point goes to its nearest head: no giant cluster.
        var sizes = [Int](repeating: 0, count: heads.count)
        for i in 0..<n {
            var best = 0, bd = Float.infinity
            for (h, r) in heads.enumerated() { let dd = Distance.l2sq(m.row(i), m.row(r), d); if dd < bd { bd = dd; best = h } }
            sizes[best] += 1
        }
        let mean = Double(n) / Double(heads.count)
        #expect(Double(sizes.max()!) < 4 * mean, "largest cluster \(sizes.max()!) vs mean \(mean)")
        // Both blobs get heads roughly in proportion (the small blob holds 1/8 of the points).
        let small = heads.filter { $0 >= 3500 }.count
        #expect(small >= 6 && small <= 25, "small blob has \(small) heads")
    }

    @Test func gemmMatchesNaive() {
        var rng = SeededRandom(seed: 4)
        let a = Matrix(rows: 7, cols: 5), b = Matrix(rows: 3, cols: 5), c = Matrix(rows: 7, cols: 3)
        for i in 0..<35 { a.data[i] = Float(rng.gaussian()) }
        for i in 0..<15 { b.data[i] = Float(rng.gaussian()) }
        BLAS.gemmABt(m: 7, n: 3, k: 5, a: a.data, b: b.data, c: c.data)
        for i in 0..<7 { for j in 0..<3 {
            var s: Float = 0
            for t in 0..<5 { s += a.row(i)[t] * b.row(j)[t] }
            #expect(abs(c.row(i)[j] - s) < 1e-4)
        } }
    }
}

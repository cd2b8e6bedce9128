/// A small, fast, seeded pseudo-random generator (xoshiro256**, seeded by SplitMix64).
///
/// Everything Fathom draws at random (samples, k-means seeds, synthetic data) goes
/// through this type, so a seed reproduces a build or a dataset bit for bit.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var s0, s1, s2, s3: UInt64
    private var spare: Double? = nil

    public init(seed: UInt64) {
        var x = SplitMix64(seed: seed)
        s0 = x.next(); s1 = x.next(); s2 = x.next(); s3 = x.next()
    }

    @inlinable @inline(__always)
    static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    public mutating func next() -> UInt64 {
        let result = SeededRandom.rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t
        s3 = SeededRandom.rotl(s3, 45)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform integer in 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Standard normal deviate (Box-Muller, caching the second value).
    public mutating func gaussian() -> Double {
        if let s = spare { spare = nil; return s }
        var u = uniform()
        while u <= 1e-300 { u = uniform() }
        let v = uniform()
        let r = (-2 * _log(u)).squareRoot()
        let theta = 2 * Double.pi * v
        spare = r * _sin(theta)
        return r * _cos(theta)
    }

    /// A uniformly random sample of `k` distinct indices from 0..<n, sorted ascending
    /// (Floyd's algorithm when k is small relative to n, partial shuffle otherwise).
    public mutating func sample(_ k: Int, from n: Int) -> [Int] {
        precondition(k <= n)
        if k * 4 < n {
            var chosen = Set<Int>(minimumCapacity: k)
            for j in (n - k)..<n {
                let t = below(j + 1)
                if chosen.contains(t) { chosen.insert(j) } else { chosen.insert(t) }
            }
            return chosen.sorted()
        }
        var all = Array(0..<n)
        for i in 0..<k { all.swapAt(i, i + below(n - i)) }
        return Array(all[0..<k]).sorted()
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _sin(_ x: Double) -> Double { Glibc.sin(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#else
import Darwin
@inline(__always) func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) func _sin(_ x: Double) -> Double { Darwin.sin(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif

/// SplitMix64 (Steele, Lea and Flood; Vigna's constants): the smallest good seeded
/// generator, one 64-bit state word. It seeds ``SeededRandom``; tests use it for
/// reproducible inputs.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    @inlinable
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

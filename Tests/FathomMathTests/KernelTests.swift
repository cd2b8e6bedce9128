// Correctness of the CKernels distance kernels (Sources/CKernels/kernels.c).
//
// Every kernel, dispatched AND scalar, single-vector AND batch, for every d in 1...300 and
// d in {384, 768, 1024, 1536}, on pointers offset by 1...3 elements from an allocation,
// against a Float64 reference computed here from the same inputs.
//
// Tolerances:
//  - integer kernels (u8, i8): exact equality;
//  - float kernels (f32, f32×u8, f32×i8): |got − ref| ≤ 1e-5 · Σ|termᵢ| + 1e-6, where termᵢ is
//    (aᵢ − bᵢ)² for L2 and aᵢ·bᵢ for dot, all in Float64 (float rounding grows with the
//    magnitude of the summed terms, not with the result, which can cancel for dot);
//  - batch kernels (records {u32 id, vector}, stride > d·size) must equal Float(single-vector
//    result) of the same level exactly.
import Testing
import CKernels
#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: a tiny deterministic PRNG (no Foundation randomness).
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    mutating func unit() -> Float { Float(Int64(next() >> 40) - (1 << 23)) / Float(1 << 23) }
    mutating func u8() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 56) }
    mutating func i8() -> Int8 { Int8(truncatingIfNeeded: next() >> 56) }
}

private let kernelDims: [Int] = Array(1...300) + [384, 768, 1024, 1536]

/// One kernel family: query elements Q, vector elements V.
private struct Family<Q, V> {
    var name: String
    var exact: Bool
    var genQ: (inout SplitMix64) -> Q
    var genV: (inout SplitMix64) -> V
    /// Float64 reference: (value, Σ|terms|).
    var ref: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> (Double, Double)
    var single: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> Double
    var singleScalar: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> Double
    var batch: (UnsafePointer<Q>, UnsafeRawPointer, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void
    var batchScalar: (UnsafePointer<Q>, UnsafeRawPointer, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void
}

private func l2Ref<Q, V>(_ q: @escaping (Q) -> Double, _ v: @escaping (V) -> Double) -> (UnsafePointer<Q>, UnsafePointer<V>, Int) -> (Double, Double) {
    { a, b, d in
        var s = 0.0
        for i in 0..<d { let t = q(a[i]) - v(b[i]); s += t * t }
        return (s, s)
    }
}

private func dotRef<Q, V>(_ q: @escaping (Q) -> Double, _ v: @escaping (V) -> Double) -> (UnsafePointer<Q>, UnsafePointer<V>, Int) -> (Double, Double) {
    { a, b, d in
        var s = 0.0, m = 0.0
        for i in 0..<d { let t = q(a[i]) * v(b[i]); s += t; m += abs(t) }
        return (s, m)
    }
}

/// Runs one family over every dimension; returns failure descriptions (empty when all pass).
private func check<Q, V>(_ f: Family<Q, V>, seed: UInt64, dims: [Int] = kernelDims) -> [String] {
    var rng = SplitMix64(seed: seed)
    var failures: [String] = []
    func fail(_ s: String) { if failures.count < 12 { failures.append(s) } }
    func close(_ got: Double, _ ref: (Double, Double)) -> Bool {
        f.exact ? got == ref.0 : abs(got - ref.0) <= 1e-5 * ref.1 + 1e-6
    }
    let vsize = MemoryLayout<V>.stride
    let nvec = 4
    for d in dims {
        // Single-vector: buffers offset by 1...3 elements from the allocation.
        let offQ = 1 + d % 3, offV = 1 + (d / 3) % 3
        let qbuf = UnsafeMutablePointer<Q>.allocate(capacity: d + 4)
        let vbuf = UnsafeMutablePointer<V>.allocate(capacity: d + 4)
        defer { qbuf.deallocate(); vbuf.deallocate() }
        let q = qbuf + offQ, v = vbuf + offV
        for i in 0..<d { (q + i).initialize(to: f.genQ(&rng)); (v + i).initialize(to: f.genV(&rng)) }
        let r = f.ref(q, v, d)
        let got = f.single(q, v, d), gotS = f.singleScalar(q, v, d)
        if !close(got, r) { fail("\(f.name) dispatched d=\(d): got \(got), ref \(r.0)") }
        if !close(gotS, r) { fail("\(f.name) scalar d=\(d): got \(gotS), ref \(r.0)") }

        // Batch: records {u32 id, vector, pad}, stride > d*size, first record 1...3 elements in.
        let pad = vsize * (1 + d % 3)
        let stride = 4 + d * vsize + pad
        let lead = vsize * (1 + (d + 1) % 3)
        let bytes = lead + nvec * stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0xA5, count: bytes)
        for j in 0..<nvec {
            let rec = raw + lead + j * stride
            rec.storeBytes(of: UInt32(j), as: UInt32.self)
            let vec = (rec + 4).bindMemory(to: V.self, capacity: d)
            for i in 0..<d { vec[i] = f.genV(&rng) }
        }
        let base = UnsafeRawPointer(raw + lead + 4)
        let out = UnsafeMutablePointer<Float>.allocate(capacity: nvec + 1)
        let outS = UnsafeMutablePointer<Float>.allocate(capacity: nvec + 1)
        defer { out.deallocate(); outS.deallocate() }
        out[nvec] = -7; outS[nvec] = -7
        f.batch(q, base, nvec, d, stride, out)
        f.batchScalar(q, base, nvec, d, stride, outS)
        if out[nvec] != -7 || outS[nvec] != -7 { fail("\(f.name) batch d=\(d) wrote past n") }
        for j in 0..<nvec {
            let vec = (base + j * stride).assumingMemoryBound(to: V.self)
            let one = f.single(q, vec, d), oneS = f.singleScalar(q, vec, d)
            if out[j] != Float(one) { fail("\(f.name) batch d=\(d) j=\(j): \(out[j]) != single \(one)") }
            if outS[j] != Float(oneS) { fail("\(f.name) batch scalar d=\(d) j=\(j): \(outS[j]) != single \(oneS)") }
            let rj = f.ref(q, vec, d)
            if !close(one, rj) { fail("\(f.name) dispatched (record) d=\(d) j=\(j): got \(one), ref \(rj.0)") }
            if !close(oneS, rj) { fail("\(f.name) scalar (record) d=\(d) j=\(j): got \(oneS), ref \(rj.0)") }
        }
        // n = 0 writes nothing.
        out[0] = -3
        f.batch(q, base, 0, d, stride, out)
        if out[0] != -3 { fail("\(f.name) batch n=0 wrote") }
    }
    return failures
}

private func f32Family(l2: Bool) -> Family<Float, Float> {
    Family(name: l2 ? "l2sq_f32" : "dot_f32", exact: false,
           genQ: { $0.unit() }, genV: { $0.unit() },
           ref: l2 ? l2Ref({ Double($0) }, { Double($0) }) : dotRef({ Double($0) }, { Double($0) }),
           single: l2 ? { Double(fk_l2sq_f32($0, $1, $2)) } : { Double(fk_dot_f32($0, $1, $2)) },
           singleScalar: l2 ? { Double(fk_l2sq_f32_scalar($0, $1, $2)) } : { Double(fk_dot_f32_scalar($0, $1, $2)) },
           batch: l2 ? { fk_l2sq_f32_batch($0, $1, $2, $3, $4, $5) } : { fk_dot_f32_batch($0, $1, $2, $3, $4, $5) },
           batchScalar: l2 ? { fk_l2sq_f32_batch_scalar($0, $1, $2, $3, $4, $5) }
                           : { fk_dot_f32_batch_scalar($0, $1, $2, $3, $4, $5) })
}

private func u8Family(l2: Bool, extreme: Bool = false) -> Family<UInt8, UInt8> {
    let gen: (inout SplitMix64) -> UInt8 = extreme ? { ($0.next() & 1) == 0 ? 0 : 255 } : { $0.u8() }
    return Family(name: (l2 ? "l2sq_u8" : "dot_u8") + (extreme ? " (extremes)" : ""), exact: true,
                  genQ: gen, genV: gen,
                  ref: l2 ? l2Ref({ Double($0) }, { Double($0) }) : dotRef({ Double($0) }, { Double($0) }),
                  single: l2 ? { Double(fk_l2sq_u8($0, $1, $2)) } : { Double(fk_dot_u8($0, $1, $2)) },
                  singleScalar: l2 ? { Double(fk_l2sq_u8_scalar($0, $1, $2)) } : { Double(fk_dot_u8_scalar($0, $1, $2)) },
                  batch: l2 ? { fk_l2sq_u8_batch($0, $1, $2, $3, $4, $5) } : { fk_dot_u8_batch($0, $1, $2, $3, $4, $5) },
                  batchScalar: l2 ? { fk_l2sq_u8_batch_scalar($0, $1, $2, $3, $4, $5) } : { fk_dot_u8_batch_scalar($0, $1, $2, $3, $4, $5) })
}

private func i8Family(l2: Bool, extreme: Bool = false) -> Family<Int8, Int8> {
    let gen: (inout SplitMix64) -> Int8 = extreme ? { ($0.next() & 1) == 0 ? -128 : 127 } : { $0.i8() }
    return Family(name: (l2 ? "l2sq_i8" : "dot_i8") + (extreme ? " (extremes)" : ""), exact: true,
                  genQ: gen, genV: gen,
                  ref: l2 ? l2Ref({ Double($0) }, { Double($0) }) : dotRef({ Double($0) }, { Double($0) }),
                  single: l2 ? { Double(fk_l2sq_i8($0, $1, $2)) } : { Double(fk_dot_i8($0, $1, $2)) },
                  singleScalar: l2 ? { Double(fk_l2sq_i8_scalar($0, $1, $2)) } : { Double(fk_dot_i8_scalar($0, $1, $2)) },
                  batch: l2 ? { fk_l2sq_i8_batch($0, $1, $2, $3, $4, $5) } : { fk_dot_i8_batch($0, $1, $2, $3, $4, $5) },
                  batchScalar: l2 ? { fk_l2sq_i8_batch_scalar($0, $1, $2, $3, $4, $5) } : { fk_dot_i8_batch_scalar($0, $1, $2, $3, $4, $5) })
}

private func f32u8Family(l2: Bool) -> Family<Float, UInt8> {
    Family(name: l2 ? "l2sq_f32_u8" : "dot_f32_u8", exact: false,
           genQ: { 160 * $0.unit() + 128 }, genV: { $0.u8() },
           ref: l2 ? l2Ref({ Double($0) }, { Double($0) }) : dotRef({ Double($0) }, { Double($0) }),
           single: l2 ? { Double(fk_l2sq_f32_u8($0, $1, $2)) } : { Double(fk_dot_f32_u8($0, $1, $2)) },
           singleScalar: l2 ? { Double(fk_l2sq_f32_u8_scalar($0, $1, $2)) } : { Double(fk_dot_f32_u8_scalar($0, $1, $2)) },
           batch: l2 ? { fk_l2sq_f32_u8_batch($0, $1, $2, $3, $4, $5) } : { fk_dot_f32_u8_batch($0, $1, $2, $3, $4, $5) },
           batchScalar: l2 ? { fk_l2sq_f32_u8_batch_scalar($0, $1, $2, $3, $4, $5) } : { fk_dot_f32_u8_batch_scalar($0, $1, $2, $3, $4, $5) })
}

private func f32i8Family(l2: Bool) -> Family<Float, Int8> {
    Family(name: l2 ? "l2sq_f32_i8" : "dot_f32_i8", exact: false,
           genQ: { 160 * $0.unit() }, genV: { $0.i8() },
           ref: l2 ? l2Ref({ Double($0) }, { Double($0) }) : dotRef({ Double($0) }, { Double($0) }),
           single: l2 ? { Double(fk_l2sq_f32_i8($0, $1, $2)) } : { Double(fk_dot_f32_i8($0, $1, $2)) },
           singleScalar: l2 ? { Double(fk_l2sq_f32_i8_scalar($0, $1, $2)) } : { Double(fk_dot_f32_i8_scalar($0, $1, $2)) },
           batch: l2 ? { fk_l2sq_f32_i8_batch($0, $1, $2, $3, $4, $5) } : { fk_dot_f32_i8_batch($0, $1, $2, $3, $4, $5) },
           batchScalar: l2 ? { fk_l2sq_f32_i8_batch_scalar($0, $1, $2, $3, $4, $5) } : { fk_dot_f32_i8_batch_scalar($0, $1, $2, $3, $4, $5) })
}

private let kernelNames = ["l2sq_f32", "dot_f32", "l2sq_u8", "dot_u8", "l2sq_i8", "dot_i8",
                           "l2sq_f32_u8", "dot_f32_u8", "l2sq_f32_i8", "dot_f32_i8"]

@Suite struct KernelTests {
    @Test(arguments: Array(kernelNames.enumerated()))
    func matchesFloat64Reference(index: Int, kernel: String) {
        let seed = 0xFA7_0000 + UInt64(index)
        let failures: [String]
        switch kernel {
        case "l2sq_f32": failures = check(f32Family(l2: true), seed: seed)
        case "dot_f32": failures = check(f32Family(l2: false), seed: seed)
        case "l2sq_u8": failures = check(u8Family(l2: true), seed: seed)
        case "dot_u8": failures = check(u8Family(l2: false), seed: seed)
        case "l2sq_i8": failures = check(i8Family(l2: true), seed: seed)
        case "dot_i8": failures = check(i8Family(l2: false), seed: seed)
        case "l2sq_f32_u8": failures = check(f32u8Family(l2: true), seed: seed)
        case "dot_f32_u8": failures = check(f32u8Family(l2: false), seed: seed)
        case "l2sq_f32_i8": failures = check(f32i8Family(l2: true), seed: seed)
        case "dot_f32_i8": failures = check(f32i8Family(l2: false), seed: seed)
        default: failures = ["unknown kernel \(kernel)"]
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    /// Integer kernels at the range limits (0/255, -128/127): no saturation, no overflow
    /// (e.g. (-128)·(-128) pairs, 255² sums at d = 1536), exact.
    @Test func integerKernelsAtExtremes() {
        let dims = Array(1...70) + [127, 128, 129, 255, 256, 384, 768, 1024, 1536]
        var failures: [String] = []
        failures += check(u8Family(l2: true, extreme: true), seed: 11, dims: dims)
        failures += check(u8Family(l2: false, extreme: true), seed: 12, dims: dims)
        failures += check(i8Family(l2: true, extreme: true), seed: 13, dims: dims)
        failures += check(i8Family(l2: false, extreme: true), seed: 14, dims: dims)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        // Constant vectors: the largest sums.
        let d = 1536
        let a255 = [UInt8](repeating: 255, count: d), a0 = [UInt8](repeating: 0, count: d)
        #expect(fk_l2sq_u8(a255, a0, d) == UInt32(d * 255 * 255))
        #expect(fk_dot_u8(a255, a255, d) == UInt32(d * 255 * 255))
        let m128 = [Int8](repeating: -128, count: d), p127 = [Int8](repeating: 127, count: d)
        #expect(fk_l2sq_i8(m128, p127, d) == UInt32(d * 255 * 255))
        #expect(fk_dot_i8(m128, m128, d) == Int32(d * 128 * 128))
        #expect(fk_dot_i8(m128, p127, d) == Int32(-d * 128 * 127))
    }

    /// The plain AVX2 reference loop (benchmark baseline) is a correct L2 too.
    @Test func plainAVX2ReferenceMatches() {
        var rng = SplitMix64(seed: 99)
        for d in kernelDims {
            let a = (0..<d).map { _ in rng.unit() }, b = (0..<d).map { _ in rng.unit() }
            var ref = 0.0
            for i in 0..<d { let t = Double(a[i]) - Double(b[i]); ref += t * t }
            let got = Double(fk_l2sq_f32_plain_avx2(a, b, d))
            #expect(abs(got - ref) <= 1e-5 * ref + 1e-6, "d=\(d): \(got) vs \(ref)")
        }
    }

    /// d = 0: every kernel returns 0.
    @Test func zeroDimension() {
        var f: Float = 1, u: UInt8 = 1, s: Int8 = 1
        #expect(fk_l2sq_f32(&f, &f, 0) == 0 && fk_dot_f32(&f, &f, 0) == 0)
        #expect(fk_l2sq_u8(&u, &u, 0) == 0 && fk_dot_u8(&u, &u, 0) == 0)
        #expect(fk_l2sq_i8(&s, &s, 0) == 0 && fk_dot_i8(&s, &s, 0) == 0)
        #expect(fk_l2sq_f32_u8(&f, &u, 0) == 0 && fk_dot_f32_i8(&f, &s, 0) == 0)
    }

    /// On a CPU with AVX2 and FMA (per /proc/cpuinfo) the dispatched kernels must use the
    /// AVX2 bodies, so the tests above really exercise the fast path.
    @Test func dispatchUsesAVX2WhenTheCPUHasIt() throws {
        let flags = cpuinfoFlags()
        let level = fk_simd_level()
        let name = String(cString: fk_simd_name())
        if flags.contains("avx2") && flags.contains("fma") {
            #expect(level == 1)
            #expect(name == "avx2+fma")
        } else {
            #expect(level == 0)
            #expect(name == "scalar")
        }
    }
}

/// The `flags` set of the first processor in /proc/cpuinfo (empty where there is none).
private func cpuinfoFlags() -> Set<Substring> {
    #if canImport(Glibc)
    guard let fp = fopen("/proc/cpuinfo", "r") else { return [] }
    defer { fclose(fp) }
    var line: UnsafeMutablePointer<CChar>? = nil
    var cap = 0
    defer { free(line) }
    while getline(&line, &cap, fp) > 0 {
        let s = String(cString: line!)
        if s.hasPrefix("flags") {
            guard let colon = s.firstIndex(of: ":") else { return [] }
            return Set(s[s.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }))
        }
    }
    #endif
    return []
}

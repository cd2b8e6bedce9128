// Correctness of the CKernels distance kernels (Sources/CKernels/kernels.c).
//
// Every kernel, at EVERY SIMD level the CPU supports (0 scalar, 1 AVX2+FMA, 2 AVX-512, through
// `fk_kernels_at_level`, which changes no global state), single-vector AND batch, for every
// d in 1...300 and d in {384, 768, 784, 1024, 1536}, on pointers offset by 1...3 elements from
// an allocation, against the scalar body and a Float64 reference computed here from the same
// inputs (SplitMix64 data, fixed seeds). The dispatched entry points must equal the bodies of
// the level in use, bit for bit.
//
// Tolerances:
//  - integer kernels (u8, i8): exact equality with the scalar body and the reference, at
//    every level (the SIMD bodies wrap mod 2^32 exactly like the scalar sums);
//  - float kernels (f32, f32×u8, f32×i8): a deterministic rounding bound, not an empirical
//    one (see `floatBound`): |got − ref| ≤ γ_k · Σ|termᵢ| and |got − scalar| ≤ 2·γ_k · Σ|termᵢ|;
//  - batch kernels (records {u32 id, vector}, stride > d·size) must equal Float(single-vector
//    result) of the same level exactly.
import Testing
import CKernels
import FathomMath
#if canImport(Glibc)
import Glibc
#endif

/// The kernels' inputs from SplitMix64 (FathomMath): a tiny deterministic PRNG.
extension SplitMix64 {
    /// Uniform in [-1, 1).
    mutating func unit() -> Float { Float(Int64(next() >> 40) - (1 << 23)) / Float(1 << 23) }
    mutating func u8() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 56) }
    mutating func i8() -> Int8 { Int8(truncatingIfNeeded: next() >> 56) }
}

private let kernelDims: [Int] = Array(1...300) + [384, 768, 784, 1024, 1536]

/// The kernel tables of every level this CPU supports, lowest first (index = level).
func kernelTables() -> [fk_kernel_table] {
    (0...Int(fk_simd_max_level())).map { fk_kernels_at_level(Int32($0))!.pointee }
}

/// The table of the level the dispatched entry points use.
func activeKernelTable() -> fk_kernel_table { fk_kernels_at_level(fk_simd_level())!.pointee }

/// The worst-case rounding error of a float kernel, as a multiple of Σ|termᵢ| (termᵢ =
/// (aᵢ − bᵢ)² for L2, aᵢ·bᵢ for dot, in Float64):
///  - every term is formed with at most 3 roundings (subtract, multiply, or the FMA's one;
///    the byte → float conversion is exact);
///  - it then goes through at most ⌈d/4⌉ + 5 rounded additions: the scalar body keeps 4
///    partial sums of d/4 terms, adds ≤ 3 tail terms to one and combines them with 2 adds;
///    the AVX2 (≈ d/32 + 6) and AVX-512 (≈ d/64 + 7) chains are shorter;
///  - so |fl(Σ) − Σ| ≤ γ_k·Σ|termᵢ| with k = ⌈d/4⌉ + 8, γ_k = k·u/(1 − k·u), u = 2⁻²⁴
///    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1 and §4.2), plus the
///    Float64 reference's own ≤ d·2⁻⁵² relative error.
/// It holds for any inputs, so the check cannot flake. It is tighter than the 1e-5 the
/// suite used before for d < ~640, and still ~30× smaller than one dropped or doubled term
/// at d = 1536 (~Σ/d).
func floatBound(_ d: Int) -> Double {
    let k = Double((d + 3) / 4 + 8), u = 0x1p-24
    return k * u / (1 - k * u) + Double(d) * 0x1p-52
}

/// One kernel family: query elements Q, vector elements V.
private struct Family<Q, V> {
    var name: String
    var exact: Bool
    var genQ: (inout SplitMix64) -> Q
    var genV: (inout SplitMix64) -> V
    /// Float64 reference: (value, Σ|terms|).
    var ref: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> (Double, Double)
    /// The body of one level.
    var single: (fk_kernel_table, UnsafePointer<Q>, UnsafePointer<V>, Int) -> Double
    var batch: (fk_kernel_table, UnsafePointer<Q>, UnsafeRawPointer, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void
    /// The public entry points (dispatched) and the `_scalar` ones.
    var dispatched: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> Double
    var dispatchedBatch: (UnsafePointer<Q>, UnsafeRawPointer, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void
    var scalarEntry: (UnsafePointer<Q>, UnsafePointer<V>, Int) -> Double
    var scalarBatchEntry: (UnsafePointer<Q>, UnsafeRawPointer, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void
}

/// A kernel's element or result type, as Float64 (exactly).
private protocol KernelValue { var double: Double { get } }
extension Float: KernelValue { fileprivate var double: Double { Double(self) } }
extension UInt8: KernelValue { fileprivate var double: Double { Double(self) } }
extension Int8: KernelValue { fileprivate var double: Double { Double(self) } }
extension UInt32: KernelValue { fileprivate var double: Double { Double(self) } }
extension Int32: KernelValue { fileprivate var double: Double { Double(self) } }

private typealias SingleFn<Q, V, R> = (UnsafePointer<Q>?, UnsafePointer<V>?, Int) -> R
private typealias BatchFn<Q> = (UnsafePointer<Q>?, UnsafeRawPointer?, Int, Int, Int, UnsafeMutablePointer<Float>?) -> Void

/// The family of one kernel: the Float64 reference (squared L2 with `l2`, else dot), its two
/// fields of `fk_kernel_table` and its four public entry points.
private func family<Q: KernelValue, V: KernelValue, R: KernelValue>(
    _ name: String, l2: Bool, exact: Bool, _ genQ: @escaping (inout SplitMix64) -> Q, _ genV: @escaping (inout SplitMix64) -> V,
    table single: @escaping (fk_kernel_table) -> SingleFn<Q, V, R>, _ batch: @escaping (fk_kernel_table) -> BatchFn<Q>,
    entries dispatched: @escaping SingleFn<Q, V, R>, _ dispatchedBatch: @escaping BatchFn<Q>,
    _ scalar: @escaping SingleFn<Q, V, R>, _ scalarBatch: @escaping BatchFn<Q>
) -> Family<Q, V> {
    Family(name: name, exact: exact, genQ: genQ, genV: genV,
           ref: { a, b, d in
               var s = 0.0, m = 0.0
               for i in 0..<d {
                   let x = a[i].double, y = b[i].double
                   let t = l2 ? (x - y) * (x - y) : x * y
                   s += t; m += abs(t)
               }
               return (s, m)
           },
           single: { single($0)($1, $2, $3).double }, batch: { batch($0)($1, $2, $3, $4, $5, $6) },
           dispatched: { dispatched($0, $1, $2).double }, dispatchedBatch: { dispatchedBatch($0, $1, $2, $3, $4, $5) },
           scalarEntry: { scalar($0, $1, $2).double }, scalarBatchEntry: { scalarBatch($0, $1, $2, $3, $4, $5) })
}

/// Runs one family over every dimension at every level; returns failure descriptions.
private func check<Q, V>(_ f: Family<Q, V>, seed: UInt64, dims: [Int] = kernelDims) -> [String] {
    var rng = SplitMix64(seed: seed)
    var failures: [String] = []
    func fail(_ s: String) { if failures.count < 12 { failures.append(s) } }
    let tables = kernelTables(), active = activeKernelTable()
    let vsize = MemoryLayout<V>.stride
    let nvec = 4
    for d in dims {
        let bound = floatBound(d)
        /// Checks one level's result against the Float64 reference and the scalar result.
        func agree(_ got: Double, _ scalar: Double, _ r: (Double, Double)) -> Bool {
            if f.exact { return got == r.0 && got == scalar }
            return abs(got - r.0) <= bound * r.1 && abs(got - scalar) <= 2 * bound * r.1
        }
        // Single-vector: buffers offset by 1...3 elements from the allocation.
        let offQ = 1 + d % 3, offV = 1 + (d / 3) % 3
        let qbuf = UnsafeMutablePointer<Q>.allocate(capacity: d + 4)
        let vbuf = UnsafeMutablePointer<V>.allocate(capacity: d + 4)
        defer { qbuf.deallocate(); vbuf.deallocate() }
        let q = qbuf + offQ, v = vbuf + offV
        for i in 0..<d { (q + i).initialize(to: f.genQ(&rng)); (v + i).initialize(to: f.genV(&rng)) }
        let r = f.ref(q, v, d)
        let scalar = f.single(tables[0], q, v, d)
        if f.scalarEntry(q, v, d) != scalar { fail("\(f.name) d=\(d): fk_X_scalar differs from the level-0 table") }
        for (level, t) in tables.enumerated() {
            let got = f.single(t, q, v, d)
            if !agree(got, scalar, r) { fail("\(f.name) level \(level) d=\(d): got \(got), scalar \(scalar), ref \(r.0)") }
        }
        let disp = f.dispatched(q, v, d), act = f.single(active, q, v, d)
        if disp != act && !(disp.isNaN && act.isNaN) {
            fail("\(f.name) d=\(d): dispatched \(disp) != level \(active.level) body \(act)")
        }

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
        defer { out.deallocate() }
        func runBatch(_ name: String, _ body: (UnsafeMutablePointer<Float>) -> Void) -> [Float] {
            for j in 0...nvec { out[j] = -7 }
            body(out)
            if out[nvec] != -7 { fail("\(f.name) \(name) batch d=\(d) wrote past n") }
            return (0..<nvec).map { out[$0] }
        }
        var scalarRecords: [Double] = []
        for j in 0..<nvec {
            let vec = (base + j * stride).assumingMemoryBound(to: V.self)
            scalarRecords.append(f.single(tables[0], q, vec, d))
        }
        for (level, t) in tables.enumerated() {
            let got = runBatch("level \(level)") { f.batch(t, q, base, nvec, d, stride, $0) }
            for j in 0..<nvec {
                let vec = (base + j * stride).assumingMemoryBound(to: V.self)
                let one = f.single(t, q, vec, d)
                if got[j] != Float(one) { fail("\(f.name) level \(level) batch d=\(d) j=\(j): \(got[j]) != single \(one)") }
                if !agree(one, scalarRecords[j], f.ref(q, vec, d)) {
                    fail("\(f.name) level \(level) (record) d=\(d) j=\(j): got \(one), scalar \(scalarRecords[j])")
                }
            }
            // n = 0 writes nothing.
            out[0] = -3
            f.batch(t, q, base, 0, d, stride, out)
            if out[0] != -3 { fail("\(f.name) level \(level) batch n=0 wrote") }
        }
        let gotD = runBatch("dispatched") { f.dispatchedBatch(q, base, nvec, d, stride, $0) }
        let gotA = runBatch("active") { f.batch(active, q, base, nvec, d, stride, $0) }
        if gotD != gotA { fail("\(f.name) d=\(d): dispatched batch \(gotD) != level \(active.level) batch \(gotA)") }
        let gotS = runBatch("scalar entry") { f.scalarBatchEntry(q, base, nvec, d, stride, $0) }
        if gotS != scalarRecords.map({ Float($0) }) { fail("\(f.name) d=\(d): fk_X_batch_scalar differs") }
    }
    return failures
}

/// Checks the kernel `name` (one of `kernelNames`) with `check`; `extreme`: integer inputs
/// only at the ends of their range.
private func check(kernel name: String, seed: UInt64, dims: [Int] = kernelDims, extreme: Bool = false) -> [String] {
    let unit: (inout SplitMix64) -> Float = { $0.unit() }
    let u8: (inout SplitMix64) -> UInt8 = extreme ? { ($0.next() & 1) == 0 ? 0 : 255 } : { $0.u8() }
    let i8: (inout SplitMix64) -> Int8 = extreme ? { ($0.next() & 1) == 0 ? -128 : 127 } : { $0.i8() }
    let qu8: (inout SplitMix64) -> Float = { 160 * $0.unit() + 128 }, qi8: (inout SplitMix64) -> Float = { 160 * $0.unit() }
    let n = name + (extreme ? " (extremes)" : "")
    switch name {
    case "l2sq_f32": return check(family(n, l2: true, exact: false, unit, unit, table: { $0.l2sq_f32! }, { $0.l2sq_f32_batch! }, entries: fk_l2sq_f32, fk_l2sq_f32_batch, fk_l2sq_f32_scalar, fk_l2sq_f32_batch_scalar), seed: seed, dims: dims)
    case "dot_f32": return check(family(n, l2: false, exact: false, unit, unit, table: { $0.dot_f32! }, { $0.dot_f32_batch! }, entries: fk_dot_f32, fk_dot_f32_batch, fk_dot_f32_scalar, fk_dot_f32_batch_scalar), seed: seed, dims: dims)
    case "l2sq_u8": return check(family(n, l2: true, exact: true, u8, u8, table: { $0.l2sq_u8! }, { $0.l2sq_u8_batch! }, entries: fk_l2sq_u8, fk_l2sq_u8_batch, fk_l2sq_u8_scalar, fk_l2sq_u8_batch_scalar), seed: seed, dims: dims)
    case "dot_u8": return check(family(n, l2: false, exact: true, u8, u8, table: { $0.dot_u8! }, { $0.dot_u8_batch! }, entries: fk_dot_u8, fk_dot_u8_batch, fk_dot_u8_scalar, fk_dot_u8_batch_scalar), seed: seed, dims: dims)
    case "l2sq_i8": return check(family(n, l2: true, exact: true, i8, i8, table: { $0.l2sq_i8! }, { $0.l2sq_i8_batch! }, entries: fk_l2sq_i8, fk_l2sq_i8_batch, fk_l2sq_i8_scalar, fk_l2sq_i8_batch_scalar), seed: seed, dims: dims)
    case "dot_i8": return check(family(n, l2: false, exact: true, i8, i8, table: { $0.dot_i8! }, { $0.dot_i8_batch! }, entries: fk_dot_i8, fk_dot_i8_batch, fk_dot_i8_scalar, fk_dot_i8_batch_scalar), seed: seed, dims: dims)
    case "l2sq_f32_u8": return check(family(n, l2: true, exact: false, qu8, u8, table: { $0.l2sq_f32_u8! }, { $0.l2sq_f32_u8_batch! }, entries: fk_l2sq_f32_u8, fk_l2sq_f32_u8_batch, fk_l2sq_f32_u8_scalar, fk_l2sq_f32_u8_batch_scalar), seed: seed, dims: dims)
    case "dot_f32_u8": return check(family(n, l2: false, exact: false, qu8, u8, table: { $0.dot_f32_u8! }, { $0.dot_f32_u8_batch! }, entries: fk_dot_f32_u8, fk_dot_f32_u8_batch, fk_dot_f32_u8_scalar, fk_dot_f32_u8_batch_scalar), seed: seed, dims: dims)
    case "l2sq_f32_i8": return check(family(n, l2: true, exact: false, qi8, i8, table: { $0.l2sq_f32_i8! }, { $0.l2sq_f32_i8_batch! }, entries: fk_l2sq_f32_i8, fk_l2sq_f32_i8_batch, fk_l2sq_f32_i8_scalar, fk_l2sq_f32_i8_batch_scalar), seed: seed, dims: dims)
    case "dot_f32_i8": return check(family(n, l2: false, exact: false, qi8, i8, table: { $0.dot_f32_i8! }, { $0.dot_f32_i8_batch! }, entries: fk_dot_f32_i8, fk_dot_f32_i8_batch, fk_dot_f32_i8_scalar, fk_dot_f32_i8_batch_scalar), seed: seed, dims: dims)
    default: return ["unknown kernel \(name)"]
    }
}

private let kernelNames = ["l2sq_f32", "dot_f32", "l2sq_u8", "dot_u8", "l2sq_i8", "dot_i8",
                           "l2sq_f32_u8", "dot_f32_u8", "l2sq_f32_i8", "dot_f32_i8"]

/// The SIMD level /proc/cpuinfo says this CPU supports, and whether it has AVX512_VNNI.
private func expectedMaxLevel() -> (level: Int32, vnni: Bool) {
    let flags = cpuinfoFlags()
    let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy { flags.contains(Substring($0)) }
    if flags.contains("avx2") && flags.contains("fma") {
        return avx512 ? (2, flags.contains("avx512_vnni")) : (1, false)
    }
    return (0, false)
}

private func levelName(_ level: Int32, vnni: Bool) -> String {
    switch level {
    case 2: return vnni ? "avx512+vnni" : "avx512"
    case 1: return "avx2+fma"
    default: return "scalar"
    }
}

@Suite struct KernelTests {
    @Test(arguments: Array(kernelNames.enumerated()))
    func everyLevelMatchesScalarAndFloat64Reference(index: Int, kernel: String) {
        let failures = check(kernel: kernel, seed: 0xFA7_0000 + UInt64(index))
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    /// Integer kernels at the range limits (0/255, -128/127) at every level: no saturation, no
    /// overflow (e.g. (-128)·(-128) pairs, which the VNNI sign trick must survive, 255² sums at
    /// d = 1536), exact, including tails and d not a multiple of 64.
    @Test func integerKernelsAtExtremes() {
        let dims = Array(1...70) + [100, 127, 128, 129, 255, 256, 300, 384, 768, 784, 1024, 1536]
        var failures: [String] = []
        for (seed, kernel) in [(11, "l2sq_u8"), (12, "dot_u8"), (13, "l2sq_i8"), (14, "dot_i8")] {
            failures += check(kernel: kernel, seed: UInt64(seed), dims: dims, extreme: true)
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        // Constant vectors: the largest sums, at every level.
        for t in kernelTables() {
            for d in [1, 3, 7, 15, 16, 17, 31, 63, 64, 65, 100, 127, 128, 129, 255, 300, 384, 784, 1536] {
                let a255 = [UInt8](repeating: 255, count: d), a0 = [UInt8](repeating: 0, count: d)
                let m128 = [Int8](repeating: -128, count: d), p127 = [Int8](repeating: 127, count: d)
                let lv = "level \(t.level) d=\(d)"
                #expect(t.l2sq_u8!(a255, a0, d) == UInt32(d * 255 * 255), "\(lv)")
                #expect(t.dot_u8!(a255, a255, d) == UInt32(d * 255 * 255), "\(lv)")
                #expect(t.dot_u8!(a255, a0, d) == 0, "\(lv)")
                #expect(t.l2sq_i8!(m128, p127, d) == UInt32(d * 255 * 255), "\(lv)")
                #expect(t.l2sq_i8!(m128, m128, d) == 0 && t.l2sq_i8!(p127, p127, d) == 0, "\(lv)")
                #expect(t.dot_i8!(m128, m128, d) == Int32(d * 128 * 128), "\(lv)")
                #expect(t.dot_i8!(p127, p127, d) == Int32(d * 127 * 127), "\(lv)")
                #expect(t.dot_i8!(m128, p127, d) == Int32(-d * 128 * 127), "\(lv)")
                #expect(t.dot_i8!(p127, m128, d) == Int32(-d * 128 * 127), "\(lv)")
                var out = [Float](repeating: -1, count: 1)
                t.dot_i8_batch!(m128, m128, 1, d, d, &out)
                #expect(out[0] == Float(d * 128 * 128), "\(lv) batch")
                t.dot_u8_batch!(a255, a255, 1, d, d, &out)
                #expect(out[0] == Float(d * 255 * 255), "\(lv) batch")
            }
        }
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

    /// d = 0: every kernel returns 0, at every level.
    @Test func zeroDimension() {
        var f: Float = 1, u: UInt8 = 1, s: Int8 = 1
        #expect(fk_l2sq_f32(&f, &f, 0) == 0 && fk_dot_f32(&f, &f, 0) == 0)
        #expect(fk_l2sq_u8(&u, &u, 0) == 0 && fk_dot_u8(&u, &u, 0) == 0)
        #expect(fk_l2sq_i8(&s, &s, 0) == 0 && fk_dot_i8(&s, &s, 0) == 0)
        #expect(fk_l2sq_f32_u8(&f, &u, 0) == 0 && fk_dot_f32_i8(&f, &s, 0) == 0)
        for t in kernelTables() {
            #expect(t.l2sq_f32!(&f, &f, 0) == 0 && t.dot_f32!(&f, &f, 0) == 0)
            #expect(t.l2sq_u8!(&u, &u, 0) == 0 && t.dot_u8!(&u, &u, 0) == 0)
            #expect(t.l2sq_i8!(&s, &s, 0) == 0 && t.dot_i8!(&s, &s, 0) == 0)
            #expect(t.l2sq_f32_u8!(&f, &u, 0) == 0 && t.dot_f32_u8!(&f, &u, 0) == 0)
            #expect(t.l2sq_f32_i8!(&f, &s, 0) == 0 && t.dot_f32_i8!(&f, &s, 0) == 0)
        }
    }

    /// The detected level matches /proc/cpuinfo (AVX2+FMA -> 1; AVX512F+BW+VL+DQ -> 2; the
    /// name says +vnni when the CPU has AVX512_VNNI), and unless FATHOM_SIMD lowers it the
    /// dispatched kernels use it, so the tests above really exercise the fast path.
    @Test func dispatchUsesTheHighestLevelTheCPUHas() throws {
        let (want, vnni) = expectedMaxLevel()
        #expect(fk_simd_max_level() == want)
        if getenv("FATHOM_SIMD") == nil {
            #expect(fk_simd_level() == want)
            #expect(String(cString: fk_simd_name()) == levelName(want, vnni: vnni))
        } else {
            #expect(fk_simd_level() <= want)
        }
        for (level, t) in kernelTables().enumerated() {
            #expect(t.level == Int32(level))
            #expect(String(cString: t.name) == levelName(Int32(level), vnni: vnni))
        }
    }

    /// Asking for a level the CPU lacks gives the highest it has; a negative one the scalar.
    @Test func levelTablesClamp() {
        let max = fk_simd_max_level()
        #expect(fk_kernels_at_level(max + 1)!.pointee.level == max)
        #expect(fk_kernels_at_level(99)!.pointee.level == max)
        #expect(fk_kernels_at_level(-1)!.pointee.level == 0)
    }

    /// fk_set_simd_level and FATHOM_SIMD, in a child process (the level is process-wide, and
    /// the other tests run in parallel with this one): every supported level can be set and
    /// is then what the dispatched kernels (and the LVQ ones) run; a level above the CPU's is
    /// clamped; -1 restores the default, re-reading FATHOM_SIMD.
    @Test func setLevelAndEnvironmentOverride() async {
        await #expect(processExitsWith: .success) {
            let max = fk_simd_max_level()
            var rng = SplitMix64(seed: 5)
            let d = 77
            let a = (0..<d).map { _ in rng.unit() }, b = (0..<d).map { _ in rng.unit() }
            let ua = (0..<d).map { _ in rng.u8() }, ub = (0..<d).map { _ in rng.u8() }
            var code = [UInt8](repeating: 0, count: fk_lvq_code_size(FK_LVQ8, d))
            fk_lvq_encode(FK_LVQ8, b, d, &code)
            for level in 0...max {
                guard fk_set_simd_level(level) == level, fk_simd_level() == level else { exit(10 + level) }
                let t = fk_kernels_at_level(level)!.pointee
                guard String(cString: fk_simd_name()) == String(cString: t.name) else { exit(20 + level) }
                guard fk_l2sq_f32(a, b, d) == t.l2sq_f32!(a, b, d), fk_dot_u8(ua, ub, d) == t.dot_u8!(ua, ub, d)
                else { exit(30 + level) }
                var out = [Float](repeating: 0, count: 1), want = out
                fk_dot_f32_batch(a, b, 1, d, d * 4, &out)
                t.dot_f32_batch!(a, b, 1, d, d * 4, &want)
                guard out == want else { exit(40 + level) }
                let lt = fk_lvq_kernels_at_level(level)!.pointee
                var n1: Float = 0, n2: Float = 0
                guard lt.level == level, fk_lvq8_dot(a, 1, code, d, &n1) == lt.lvq8_dot!(a, 1, code, d, &n2), n1 == n2
                else { exit(50 + level) }
                fk_lvq_batch(FK_LVQ8, FK_LVQ_METRIC_IP, a, 1, 1, code, 1, d, code.count, &out)
                lt.batch!(FK_LVQ8, FK_LVQ_METRIC_IP, a, 1, 1, code, 1, d, code.count, &want)
                guard out == want else { exit(60 + level) }
            }
            guard fk_set_simd_level(max + 1) == max, fk_set_simd_level(99) == max else { exit(70) }
            setenv("FATHOM_SIMD", "scalar", 1)
            guard fk_set_simd_level(-1) == 0, String(cString: fk_simd_name()) == "scalar" else { exit(71) }
            setenv("FATHOM_SIMD", "avx2", 1)
            guard fk_set_simd_level(-1) == min(1, max) else { exit(72) }
            setenv("FATHOM_SIMD", "2", 1)
            guard fk_set_simd_level(-1) == min(2, max) else { exit(73) }
            setenv("FATHOM_SIMD", "bogus", 1)
            guard fk_set_simd_level(-1) == max else { exit(74) }
            unsetenv("FATHOM_SIMD")
            guard fk_set_simd_level(-1) == max, fk_simd_level() == max else { exit(75) }
            exit(0)
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

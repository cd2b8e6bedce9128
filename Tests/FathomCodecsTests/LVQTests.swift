import CKernels
import FathomCore
import FathomMath
import Testing
@testable import FathomCodecs

// MARK: - helpers

/// Random test vectors of several shapes: centred Gaussian, offset Gaussian with a per-vector
/// scale, a constant vector (Δ = 0), one outlier, all-positive uniform.
func lvqTestVectors(count: Int, dim: Int, seed: UInt64) -> [[Float]] {
    var rng = SeededRandom(seed: seed)
    var out = [[Float]]()
    for v in 0..<count {
        var x = [Float](repeating: 0, count: dim)
        switch v % 5 {
        case 0: for j in 0..<dim { x[j] = Float(rng.gaussian()) }
        case 1:
            let scale = Float(0.01 + 3 * rng.uniform()), offset = Float(rng.gaussian() * 2)
            for j in 0..<dim { x[j] = offset + scale * Float(rng.gaussian()) }
        case 2: let c = Float(rng.gaussian()); for j in 0..<dim { x[j] = c }
        case 3:
            for j in 0..<dim { x[j] = 0.1 * Float(rng.gaussian()) }
            x[rng.below(dim)] = 25
        default: for j in 0..<dim { x[j] = Float(rng.uniform() * 7) }
        }
        out.append(x)
    }
    return out
}

/// Encodes `vectors` into a buffer of 0xFF garbage (kernels must not read outside the codes),
/// code i at byte 3 + i·stride (unaligned), with the unused high pad nibble of an odd-d 4-bit
/// code set (it must be ignored); returns the buffer and each code's full and primary
/// decoding.
func guardedCodes(_ codec: LVQCodec, _ vectors: [[Float]], stride: Int) -> (buffer: [UInt8], decoded: [[Float]], primary: [[Float]]) {
    let dim = codec.dim
    var buffer = [UInt8](repeating: 0xFF, count: 3 + vectors.count * stride)
    var decoded = [[Float]](), primary = [[Float]]()
    buffer.withUnsafeMutableBytes { raw in
        for (i, x) in vectors.enumerated() {
            let code = raw.baseAddress! + 3 + i * stride
            codec.encode(x, into: code)
            if codec.kind != .lvq8 && dim % 2 == 1 {
                code.storeBytes(of: code.load(fromByteOffset: 4 + dim / 2, as: UInt8.self) | 0xF0,
                                toByteOffset: 4 + dim / 2, as: UInt8.self)
            }
            var y = [Float](repeating: 0, count: dim)
            codec.decode(code, into: &y); decoded.append(y)
            codec.decodePrimary(code, into: &y); primary.append(y)
        }
    }
    return (buffer, decoded, primary)
}


func reference(_ q: [Float], _ x: [Float]) -> (dot: Double, l2: Double, absDot: Double, qn: Double, xn: Double) {
    var dot = 0.0, l2 = 0.0, absDot = 0.0, qn = 0.0, xn = 0.0
    for j in 0..<q.count {
        let a = Double(q[j]), b = Double(x[j])
        dot += a * b; absDot += abs(a * b); l2 += (a - b) * (a - b); qn += a * a; xn += b * b
    }
    return (dot, l2, absDot, qn, xn)
}

// MARK: - fp16

@Test func fp16RoundTripIsExactForEveryRepresentableValue() {
    for bits in 0...0xFFFF {
        let h = UInt16(bits)
        let f = fk_f16_to_f32(h)
        if f.isNaN {
            #expect(fk_f32_to_f16(f) & 0x7C00 == 0x7C00 && fk_f32_to_f16(f) & 0x3FF != 0, "NaN \(h) must stay NaN")
            continue
        }
        #expect(fk_f32_to_f16(f) == h, "fp16 0x\(String(h, radix: 16)) -> \(f) did not round-trip")
    }
}

@Test func fp16KnownValuesAndRounding() {
    #expect(fk_f32_to_f16(1) == 0x3C00)
    #expect(fk_f32_to_f16(-2) == 0xC000)
    #expect(fk_f32_to_f16(65504) == 0x7BFF)
    #expect(fk_f32_to_f16(65519) == 0x7BFF)
    #expect(fk_f32_to_f16(65520) == 0x7C00)           // tie above max rounds to even = infinity
    #expect(fk_f32_to_f16(.infinity) == 0x7C00)
    #expect(fk_f32_to_f16(0x1p-24) == 0x0001)         // smallest subnormal
    #expect(fk_f32_to_f16(0x1p-25) == 0x0000)         // tie to even: 0
    #expect(fk_f32_to_f16(0x1.8p-25) == 0x0001)
    #expect(fk_f32_to_f16(0x1p-14) == 0x0400)         // smallest normal
    #expect(fk_f32_to_f16(1 + 0x1p-11) == 0x3C00)     // tie: to even
    #expect(fk_f32_to_f16(1 + 3 * 0x1p-11) == 0x3C02) // tie: to even (up)
    #expect(fk_f32_to_f16(0.1) == 0x2E66)
    #expect(fk_f16_to_f32(0x0001) == 0x1p-24)
    #expect(fk_f16_to_f32(0x3555) == 0.333251953125)
    // Random floats map to a nearest fp16.
    var rng = SeededRandom(seed: 7)
    for _ in 0..<20000 {
        let f = Float(rng.gaussian()) * Float(pow2(rng.below(30) - 20))
        guard abs(f) < 65504 else { continue }
        let h = fk_f32_to_f16(f)
        let v = fk_f16_to_f32(h)
        for nb in [h &- 1, h &+ 1] where fk_f16_to_f32(nb).isFinite && (nb & 0x7FFF) != 0x7C00 {
            // Neighbours in bit order on the same sign are the adjacent values.
            if (nb & 0x8000) == (h & 0x8000) { #expect(abs(f - v) <= abs(f - fk_f16_to_f32(nb))) }
        }
    }
}

private func pow2(_ e: Int) -> Double { e >= 0 ? Double(1 << e) : 1 / Double(1 << -e) }

// MARK: - encode / decode

@Test(arguments: LVQKind.allCases)
func encodeDecodeErrorWithinHalfStep(kind: LVQKind) {
    for dim in [1, 2, 3, 7, 8, 31, 33, 64, 96, 127, 384] {
        let codec = LVQCodec(kind: kind, dim: dim)
        var code = [UInt8](repeating: 0, count: codec.bytesPerVector)
        var y = [Float](repeating: 0, count: dim), p = [Float](repeating: 0, count: dim)
        for x in lvqTestVectors(count: 40, dim: dim, seed: UInt64(dim)) {
            codec.encode(x, into: &code)
            codec.decode(code, into: &y)
            codec.decodePrimary(code, into: &p)
            let (scale, bias) = codec.parameters(code)
            let lo = x.min()!
            #expect(bias <= lo, "bias must not exceed the minimum")
            let step = kind == .lvq4x8 ? scale / 255 : scale
            for j in 0..<dim {
                let mag = max(abs(x[j]), abs(bias)) * 4e-7 + 1e-30
                #expect(abs(y[j] - x[j]) <= step / 2 * (1 + 1e-4) + mag,
                        "\(kind) d=\(dim) j=\(j): |\(y[j]) - \(x[j])| > \(step / 2)")
                if kind == .lvq4x8 {
                    #expect(abs(p[j] - x[j]) <= scale / 2 * (1 + 1e-4) + mag)
                }
            }
        }
    }
}

@Test func codeSizes() {
    #expect(LVQCodec(kind: .lvq8, dim: 128).bytesPerVector == 132)
    #expect(LVQCodec(kind: .lvq4, dim: 128).bytesPerVector == 68)
    #expect(LVQCodec(kind: .lvq4, dim: 127).bytesPerVector == 68)
    #expect(LVQCodec(kind: .lvq4x8, dim: 127).bytesPerVector == 64 + 127 + 4)
    #expect(LVQCodec(kind: .lvq4x8, dim: 127).primaryBytesPerVector == 68)
    for kind in LVQKind.allCases {
        for d in [1, 5, 64, 65] {
            #expect(LVQCodec(kind: kind, dim: d).bytesPerVector == fk_lvq_code_size(kind.cKind, d))
        }
    }
}

@Test func lvq4EncodingPacksLowNibbleFirst() {
    let codec = LVQCodec(kind: .lvq4, dim: 3)
    let x: [Float] = [0, 15, 5]   // bias 0, scale 1: codes 0, 15, 5
    var code = [UInt8](repeating: 0xAA, count: codec.bytesPerVector)
    codec.encode(x, into: &code)
    #expect(codec.parameters(code) == (1, 0))
    #expect(code[4] == 0xF0 && code[5] == 0x05)   // odd d: high pad nibble is 0
}

// MARK: - scoring kernels

/// Scores `n` codes placed in records of `stride` bytes at an odd offset, against a query at
/// a float offset (not 32-byte aligned), with the dispatched and the scalar kernels, and
/// compares with a Float64 reference computed from the decoded vectors.
@Test(arguments: LVQKind.allCases)
func kernelsMatchFloat64Reference(kind: LVQKind) {
    let dims = Array(1...70) + [96, 128, 192, 384, 768]
    var rng = SeededRandom(seed: 99)
    for dim in dims {
        let codec = LVQCodec(kind: kind, dim: dim)
        let size = codec.bytesPerVector
        let stride = size + 7                   // records {u32 id, code, pad}: odd stride
        let vectors = lvqTestVectors(count: 10, dim: dim, seed: UInt64(1000 + dim))
        let n = vectors.count
        let (buffer, decoded, primary) = guardedCodes(codec, vectors, stride: stride)
        for trial in 0..<3 {
            // Query stored at float offset 1 of its buffer.
            var qbuf = [Float](repeating: 0, count: dim + 1)
            for j in 0..<dim { qbuf[j + 1] = trial == 2 ? decoded[0][j] + 0.01 * Float(rng.gaussian()) : Float(rng.gaussian()) + (trial == 1 ? 1.5 : 0) }
            let q = Array(qbuf[1...])
            let prepared = codec.prepare(query: q)
            for metric in [Metric.l2, .ip] {
                var got = [Float](repeating: 0, count: n), gotScalar = got, gotPrimary = got
                buffer.withUnsafeBytes { raw in
                    let base = raw.baseAddress! + 3
                    codec.distances(prepared, codes: base, count: n, stride: stride, metric: metric, out: &got)
                    codec.primaryDistances(prepared, codes: base, count: n, stride: stride, metric: metric, out: &gotPrimary)
                    qbuf.withUnsafeBufferPointer { qp in
                        fk_lvq_batch_scalar(kind.cKind, LVQCodec.cMetric(metric), qp.baseAddress! + 1,
                                            prepared.sum, prepared.normSquared, base, n, dim, stride, &gotScalar)
                    }
                }
                for i in 0..<n {
                    for (values, which) in [(got, "dispatched"), (gotScalar, "scalar")] {
                        let r = reference(q, decoded[i])
                        let want = metric == .l2 ? r.l2 : -r.dot
                        let tol = 1e-4 * (metric == .l2 ? r.qn + r.xn : r.absDot) + 1e-6
                        #expect(abs(Double(values[i]) - want) <= tol,
                                "\(kind) \(which) \(metric) d=\(dim) vec \(i): \(values[i]) vs \(want)")
                    }
                    let rp = reference(q, primary[i])
                    let wantP = metric == .l2 ? rp.l2 : -rp.dot
                    #expect(abs(Double(gotPrimary[i]) - wantP) <= 1e-4 * (metric == .l2 ? rp.qn + rp.xn : rp.absDot) + 1e-6,
                            "\(kind) primary \(metric) d=\(dim) vec \(i)")
                }
            }
            // Single-code kernels: dot and norm, dispatched and scalar.
            buffer.withUnsafeBytes { raw in
                for i in 0..<n {
                    let code = raw.baseAddress! + 3 + i * stride
                    let r = reference(q, decoded[i])
                    let (dot, norm) = codec.dotAndNorm(prepared, code: code)
                    var sn: Float = 0
                    let sd: Float = qbuf.withUnsafeBufferPointer { qp in
                        switch kind {
                        case .lvq8: return fk_lvq8_dot_scalar(qp.baseAddress! + 1, prepared.sum, code, dim, &sn)
                        case .lvq4: return fk_lvq4_dot_scalar(qp.baseAddress! + 1, prepared.sum, code, dim, &sn)
                        case .lvq4x8: return fk_lvq4x8_dot_scalar(qp.baseAddress! + 1, prepared.sum, code, dim, &sn)
                        }
                    }
                    for (dv, nv) in [(dot, norm), (sd, sn)] {
                        #expect(abs(Double(dv) - r.dot) <= 1e-4 * r.absDot + 1e-6, "\(kind) d=\(dim) dot")
                        #expect(abs(Double(nv) - r.xn) <= 1e-5 * r.xn + 1e-6, "\(kind) d=\(dim) norm \(nv) vs \(r.xn)")
                    }
                    #expect(abs(codec.distance(prepared, code: code, metric: .l2) - got1(r.l2)) <= Float(1e-4 * (r.qn + r.xn) + 1e-6))
                }
            }
        }
    }
}

private func got1(_ v: Double) -> Float { Float(v) }

@Test func dispatchedKernelLevelIsReported() {
    // 0 scalar, 1 AVX2+FMA, 2 AVX-512; whichever it is, every level agrees (tested above and
    // in everyLevelMatchesScalar).
    #expect((0...2).contains(fk_simd_level()) && fk_simd_level() <= fk_simd_max_level())
    #expect(fk_lvq_kernels_at_level(fk_simd_max_level() + 1)!.pointee.level == fk_simd_max_level())
    #expect(fk_lvq_kernels_at_level(-1)!.pointee.level == 0)
}

// MARK: - every SIMD level

/// The LVQ tables of every level this CPU supports, lowest first (index = level).
private func lvqTables() -> [fk_lvq_kernel_table] {
    (0...Int(fk_simd_max_level())).map { fk_lvq_kernels_at_level(Int32($0))!.pointee }
}

/// The single-code kernel of `kind` in table `t`.
private func lvqDot(_ t: fk_lvq_kernel_table, _ kind: LVQKind, _ q: UnsafePointer<Float>, _ qsum: Float,
                    _ code: UnsafeRawPointer, _ d: Int, _ norm: UnsafeMutablePointer<Float>?) -> Float {
    switch kind {
    case .lvq8: return t.lvq8_dot!(q, qsum, code, d, norm)
    case .lvq4: return t.lvq4_dot!(q, qsum, code, d, norm)
    case .lvq4x8: return t.lvq4x8_dot!(q, qsum, code, d, norm)
    }
}

/// The integer code values C_j a kernel sums: c_j (lvq8, lvq4) or 255·c_j + r_j (lvq4x8).
private func codeValues(_ kind: LVQKind, _ code: UnsafeRawPointer, _ d: Int) -> [Double] {
    let c = code.assumingMemoryBound(to: UInt8.self) + 4
    return (0..<d).map { j in
        switch kind {
        case .lvq8: return Double(c[j])
        case .lvq4: return Double((c[j / 2] >> (4 * UInt8(j & 1))) & 0x0F)
        case .lvq4x8: return 255 * Double((c[j / 2] >> (4 * UInt8(j & 1))) & 0x0F) + Double(c[(d + 1) / 2 + j])
        }
    }
}

/// How far the dot of two levels can be apart. Both compute Σq_j·C_j in float (C_j exact
/// integers, each product rounded once, then at most ⌈d/2⌉ + 2 rounded additions in the
/// deepest body, the scalar one with 2 partial sums), so each is within γ_k·Σ|q_j|·C_j of the
/// exact sum, k = ⌈d/2⌉ + 8, u = 2⁻²⁴ (the bound of `floatBound` in KernelTests). The kernel
/// returns float(s·Σq·C + b·Σq), combined in double: scaled by |s|, plus the double rounding
/// (2⁻⁵¹ of the terms) and the final float rounding of each result (2⁻²⁴ of each).
private func crossLevelDotBound(d: Int, s: Float, b: Float, qsum: Float, absQC: Double, _ x: Float, _ y: Float) -> Double {
    let k = Double((d + 1) / 2 + 8), u = 0x1p-24
    let g = k * u / (1 - k * u)
    let sq = Double(abs(s)) * absQC
    return 2 * g * sq + 0x1p-51 * (sq + abs(Double(b) * Double(qsum))) + u * (abs(Double(x)) + abs(Double(y)))
}

/// Every LVQ kernel (single-code with and without the norm, and the batch for both metrics;
/// for lvq4x8 also the 4-bit primary level) at every level the CPU supports, on codes at odd
/// offsets in records padded with 0xFF, with the pad nibble of an odd d set:
///  - ‖x̂‖² is bit-identical to the scalar body's at every level (it comes from exact integer
///    sums, combined without FMA contraction);
///  - ⟨q, x̂⟩ is within `crossLevelDotBound` of the scalar body's, and within the Float64
///    tolerance of the decoded vector that kernelsMatchFloat64Reference uses;
///  - the batch output of a level equals what its single-code kernel gives, exactly;
///  - the dispatched entry points equal the bodies of the level in use, exactly.
/// d covers 1...70, tails around 64/128/256, and 2100 / 4200 (past the 2048-dimension flush
/// of the lvq4x8 squares in the AVX-512 body).
@Test(arguments: LVQKind.allCases)
func everyLevelMatchesScalar(kind: LVQKind) {
    let dims = Array(1...70) + [96, 100, 127, 128, 129, 192, 255, 256, 300, 384, 768, 784, 1536, 2100, 4200]
    let tables = lvqTables(), active = fk_lvq_kernels_at_level(fk_simd_level())!.pointee
    var rng = SeededRandom(seed: 4242)
    var failures: [String] = []
    func fail(_ s: String) { if failures.count < 12 { failures.append(s) } }
    for dim in dims {
        let codec = LVQCodec(kind: kind, dim: dim)
        let size = codec.bytesPerVector, stride = size + 7
        let vectors = lvqTestVectors(count: 5, dim: dim, seed: UInt64(7000 + dim))
        let n = vectors.count
        let (buffer, decoded, _) = guardedCodes(codec, vectors, stride: stride)
        var qbuf = [Float](repeating: 0, count: dim + 1)
        for j in 0..<dim { qbuf[j + 1] = Float(rng.gaussian()) + (dim % 3 == 0 ? 1.5 : 0) }
        let prepared = codec.prepare(query: Array(qbuf[1...]))
        let qsum = prepared.sum, qnorm = prepared.normSquared
        buffer.withUnsafeBytes { raw in
            qbuf.withUnsafeBufferPointer { qp in
                let q = qp.baseAddress! + 1, base = raw.baseAddress! + 3
                // The kinds to score: the codes' own, and for lvq4x8 also their primary level.
                let kinds: [LVQKind] = kind == .lvq4x8 ? [.lvq4x8, .lvq4] : [kind]
                for k in kinds {
                    var singles = [[(dot: Float, norm: Float)]]()   // [level][code]
                    for t in tables {
                        var row = [(dot: Float, norm: Float)]()
                        for i in 0..<n {
                            let code = base + i * stride
                            var norm: Float = -1
                            let dot = lvqDot(t, k, q, qsum, code, dim, &norm)
                            if lvqDot(t, k, q, qsum, code, dim, nil) != dot {
                                fail("\(k) level \(t.level) d=\(dim) vec \(i): dot without the norm differs")
                            }
                            row.append((dot, norm))
                        }
                        singles.append(row)
                        // Batch = single, exactly, for both metrics.
                        for metric in [FK_LVQ_METRIC_L2, FK_LVQ_METRIC_IP] {
                            var out = [Float](repeating: -7, count: n + 1)
                            t.batch!(k.cKind, metric, q, qsum, qnorm, base, n, dim, stride, &out)
                            if out[n] != -7 { fail("\(k) level \(t.level) d=\(dim) batch wrote past n") }
                            for i in 0..<n {
                                let (dot, norm) = row[i]
                                var want = -dot
                                if metric == FK_LVQ_METRIC_L2 { let v = qnorm - 2 * dot + norm; want = v > 0 ? v : 0 }
                                if out[i] != want {
                                    fail("\(k) level \(t.level) d=\(dim) vec \(i) metric \(metric): batch \(out[i]) != single \(want)")
                                }
                            }
                            // The dispatched batch runs the active level's body.
                            var disp = [Float](repeating: 0, count: n), act = disp
                            fk_lvq_batch(k.cKind, metric, q, qsum, qnorm, base, n, dim, stride, &disp)
                            active.batch!(k.cKind, metric, q, qsum, qnorm, base, n, dim, stride, &act)
                            if disp != act { fail("\(k) d=\(dim) metric \(metric): dispatched batch != level \(active.level)") }
                        }
                    }
                    for i in 0..<n {
                        let code = base + i * stride
                        let (scale, bias) = codec.parameters(code)
                        let (s, b) = k == .lvq4x8 ? (scale / 255, bias - 0.5 * scale) : (scale, bias)
                        let cv = codeValues(k, code, dim)
                        var absQC = 0.0
                        for j in 0..<dim { absQC += abs(Double(q[j])) * cv[j] }
                        let s0 = singles[0][i]
                        for (level, row) in singles.enumerated() {
                            let (dot, norm) = row[i]
                            if norm != s0.norm { fail("\(k) level \(level) d=\(dim) vec \(i): norm \(norm) != scalar \(s0.norm)") }
                            let tol = crossLevelDotBound(d: dim, s: s, b: b, qsum: qsum, absQC: absQC, dot, s0.dot)
                            if abs(Double(dot) - Double(s0.dot)) > tol {
                                fail("\(k) level \(level) d=\(dim) vec \(i): dot \(dot) vs scalar \(s0.dot) (bound \(tol))")
                            }
                            if k == kind {   // against the decoded vector, as in kernelsMatchFloat64Reference
                                let r = reference(Array(qbuf[1...]), decoded[i])
                                if abs(Double(dot) - r.dot) > 1e-4 * r.absDot + 1e-6 { fail("\(k) level \(level) d=\(dim) vec \(i): dot vs Float64") }
                                if abs(Double(norm) - r.xn) > 1e-5 * r.xn + 1e-6 { fail("\(k) level \(level) d=\(dim) vec \(i): norm vs Float64") }
                            }
                        }
                        var dn: Float = 0, an: Float = 0
                        let disp: Float
                        switch k {
                        case .lvq8: disp = fk_lvq8_dot(q, qsum, code, dim, &dn)
                        case .lvq4: disp = fk_lvq4_dot(q, qsum, code, dim, &dn)
                        case .lvq4x8: disp = fk_lvq4x8_dot(q, qsum, code, dim, &dn)
                        }
                        let act = lvqDot(active, k, q, qsum, code, dim, &an)
                        if disp != act || dn != an { fail("\(k) d=\(dim) vec \(i): dispatched != level \(active.level)") }
                    }
                }
            }
        }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
}

/// The norm sums at the range limits, at every level: every code at its maximum (lvq8 255,
/// lvq4 15, lvq4x8 C = 4080) with s = 1, b = 0 up to d = 65535, where Σc² reaches ~1.1e12 for
/// lvq4x8 (the 32-bit lanes must be flushed) and 4.3e9 for lvq8. ‖x̂‖² must be what the
/// formula gives from the exact sums; with q = 1 the dot of lvq8 / lvq4 is an integer below
/// 2²⁴, so exact too.
@Test func normSumsAtTheRangeLimit() {
    for t in lvqTables() {
        for kind in LVQKind.allCases {
            for d in [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 1000, 2047, 2048, 2049, 4097, 65535] {
                var code = [UInt8](repeating: 0xFF, count: fk_lvq_code_size(kind.cKind, d))
                code[0] = 0x00; code[1] = 0x3C; code[2] = 0; code[3] = 0   // s = 1 (fp16 0x3C00), b = 0
                if kind != .lvq8 && d % 2 == 1 { code[4 + d / 2] = 0x0F }   // the pad nibble stays 0
                let q = [Float](repeating: 1, count: d)
                var norm: Float = 0
                let dot = lvqDot(t, kind, q, Float(d), code, d, &norm)
                let cmax = kind == .lvq8 ? 255.0 : kind == .lvq4 ? 15.0 : 4080.0
                let cs = Double(d) * cmax, css = Double(d) * cmax * cmax
                // lvq_finish's formula, in the same order (s' = s/255, b' = b − s/2 for lvq4x8).
                let sf: Float = kind == .lvq4x8 ? Float(1) / 255 : 1, bf: Float = kind == .lvq4x8 ? Float(0) - 0.5 * Float(1) : 0
                let sd = Double(sf), bd = Double(bf)
                let wantNorm = Float(sd * sd * css + 2.0 * sd * bd * cs + Double(d) * bd * bd)
                #expect(norm == wantNorm, "\(kind) level \(t.level) d=\(d): norm \(norm) != \(wantNorm)")
                if kind != .lvq4x8 { #expect(dot == Float(cs), "\(kind) level \(t.level) d=\(d): dot \(dot) != \(cs)") }
            }
        }
    }
}

@Test func encodeMatrixProducesDenseCodes() {
    let dim = 20
    let vectors = lvqTestVectors(count: 6, dim: dim, seed: 5)
    let m = Matrix(rows: 6, cols: dim, values: vectors.flatMap { $0 })
    for kind in LVQKind.allCases {
        let codec = LVQCodec(kind: kind, dim: dim)
        let codes = codec.encode(m)
        #expect(codes.count == 6 * codec.bytesPerVector)
        for i in 0..<6 {
            var one = [UInt8](repeating: 0, count: codec.bytesPerVector)
            codec.encode(vectors[i], into: &one)
            #expect(Array(codes[(i * codec.bytesPerVector)..<((i + 1) * codec.bytesPerVector)]) == one)
        }
    }
}

@Test func preparedQueryUpdateReusesStorage() {
    let codec = LVQCodec(kind: .lvq8, dim: 4)
    var p = codec.prepare(query: [1, 2, 3, 4])
    #expect(p.sum == 10 && p.normSquared == 30)
    let q2: [Float] = [-1, 0, 0, 2]
    q2.withUnsafeBufferPointer { p.update($0.baseAddress!) }
    #expect(p.sum == 1 && p.normSquared == 5 && p.values == q2)
}

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
        // Garbage everywhere outside the codes: kernels must not read it.
        var buffer = [UInt8](repeating: 0xFF, count: 3 + n * stride)
        var decoded = [[Float]](), primary = [[Float]]()
        buffer.withUnsafeMutableBytes { raw in
            for (i, x) in vectors.enumerated() {
                let code = raw.baseAddress! + 3 + i * stride
                codec.encode(x, into: code)
                if kind != .lvq8 && dim % 2 == 1 {
                    // Set the unused high pad nibble: it must be ignored.
                    code.storeBytes(of: code.load(fromByteOffset: 4 + dim / 2, as: UInt8.self) | 0xF0,
                                    toByteOffset: 4 + dim / 2, as: UInt8.self)
                }
                var y = [Float](repeating: 0, count: dim)
                codec.decode(code, into: &y); decoded.append(y)
                codec.decodePrimary(code, into: &y); primary.append(y)
            }
        }
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
    // On this project's machines the dispatched kernels run AVX2; either way both paths agree
    // (tested above).
    #expect(fk_simd_level() == 0 || fk_simd_level() == 1)
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

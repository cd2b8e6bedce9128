// CodecBench: ns per code scored by the LVQ kernels (FathomCodecs), against float32 kernels
// on the full-dimensional vectors they would replace (D = 2·d, the LeanVec default).
//
//   swift run -c release --scratch-path .build-codecs CodecBench [--reps N] [--budget-us U]
//
// (Not wired into Package.swift yet: add
//   .executableTarget(name: "CodecBench", dependencies: ["FathomCodecs", "FathomMath", "CKernels"],
//                     path: "bench/CodecBench")
// to run it.)
//
// Codes sit densely in a block of <= 1000 codes (cache-resident); each figure is the median
// of `reps` interleaved, time-boxed passes over the block through the batch entry points.
import CKernels
import FathomCodecs
import FathomCore
import FathomMath
#if canImport(Glibc)
import Glibc
#endif

var reps = 21
var budgetNs: UInt64 = 300_000
var argv = CommandLine.arguments.dropFirst().makeIterator()
while let a = argv.next() {
    switch a {
    case "--reps": if let v = argv.next(), let r = Int(v), r >= 1 { reps = r }
    case "--budget-us": if let v = argv.next(), let b = UInt64(v), b >= 1 { budgetNs = b * 1000 }
    default: print("usage: CodecBench [--reps N] [--budget-us MICROSECONDS]"); exit(2)
    }
}

@inline(__always) func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Runs `pass` (scoring `n` items) repeatedly for about `budgetNs`; returns ns per item.
func measure(_ n: Int, budgetNs: UInt64, _ pass: () -> Void) -> Double {
    let start = nowNs()
    var passes = 0
    repeat { pass(); passes += 1 } while nowNs() - start < budgetNs
    return Double(nowNs() - start) / Double(passes * n)
}

func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }
func fixed(_ v: Double) -> String {
    let r = (v * 100).rounded() / 100
    let whole = Int(r), frac = Int(((r - Double(whole)) * 100).rounded())
    return "\(whole)." + (frac < 10 ? "0" : "") + "\(frac)"
}

var sink: Float = 0
print("simd: \(Distance.simdName)")
print(String(repeating: "-", count: 78))
print("d     variant                    bytes/vec   ns/code    vs f32 dot at D=2d")
for d in [64, 192, 384] {
    let D = 2 * d
    let n = max(64, min(1000, (512 << 10) / (D * 4)))
    var rng = SeededRandom(seed: UInt64(d))
    let full = Matrix(rows: n, cols: D)
    for i in 0..<(n * D) { full.data[i] = Float(rng.gaussian()) }
    let x = Matrix(rows: n, cols: d)
    for i in 0..<(n * d) { x.data[i] = Float(rng.gaussian()) }
    let qFull = (0..<D).map { _ in Float(rng.gaussian()) }
    let q = (0..<d).map { _ in Float(rng.gaussian()) }
    var out = [Float](repeating: 0, count: n)

    struct Variant { let name: String; let bytes: Int; let run: () -> Void }
    var variants = [Variant]()
    variants.append(Variant(name: "f32 dot (D=\(D))", bytes: 4 * D, run: {
        qFull.withUnsafeBufferPointer { qp in
            out.withUnsafeMutableBufferPointer { fk_dot_f32_batch(qp.baseAddress!, full.data, n, D, 4 * D, $0.baseAddress!) }
        }
        sink += out[0]
    }))
    variants.append(Variant(name: "f32 l2 (D=\(D))", bytes: 4 * D, run: {
        qFull.withUnsafeBufferPointer { qp in
            out.withUnsafeMutableBufferPointer { fk_l2sq_f32_batch(qp.baseAddress!, full.data, n, D, 4 * D, $0.baseAddress!) }
        }
        sink += out[0]
    }))
    variants.append(Variant(name: "f32 dot (d=\(d))", bytes: 4 * d, run: {
        q.withUnsafeBufferPointer { qp in
            out.withUnsafeMutableBufferPointer { fk_dot_f32_batch(qp.baseAddress!, x.data, n, d, 4 * d, $0.baseAddress!) }
        }
        sink += out[0]
    }))
    for kind in LVQKind.allCases {
        let codec = LVQCodec(kind: kind, dim: d)
        let codes = codec.encode(x)
        let prepared = codec.prepare(query: q)
        for metric in [Metric.ip, .l2] {
            variants.append(Variant(name: "\(kind.rawValue) \(metric.rawValue)", bytes: codec.bytesPerVector, run: {
                codes.withUnsafeBytes { c in
                    out.withUnsafeMutableBufferPointer {
                        codec.distances(prepared, codes: c.baseAddress!, count: n, stride: codec.bytesPerVector,
                                        metric: metric, out: $0.baseAddress!)
                    }
                }
                sink += out[0]
            }))
            if kind == .lvq4x8 {
                variants.append(Variant(name: "lvq4x8 primary \(metric.rawValue)", bytes: codec.bytesPerVector, run: {
                    codes.withUnsafeBytes { c in
                        out.withUnsafeMutableBufferPointer {
                            codec.primaryDistances(prepared, codes: c.baseAddress!, count: n, stride: codec.bytesPerVector,
                                                   metric: metric, out: $0.baseAddress!)
                        }
                    }
                    sink += out[0]
                }))
            }
        }
        variants.append(Variant(name: "\(kind.rawValue) l2 scalar", bytes: codec.bytesPerVector, run: {
            q.withUnsafeBufferPointer { qp in
                codes.withUnsafeBytes { c in
                    out.withUnsafeMutableBufferPointer {
                        fk_lvq_batch_scalar(kind == .lvq8 ? Int32(FK_LVQ8) : kind == .lvq4 ? Int32(FK_LVQ4) : Int32(FK_LVQ4X8),
                                            Int32(FK_LVQ_METRIC_L2), qp.baseAddress!, prepared.sum, prepared.normSquared,
                                            c.baseAddress!, n, d, codec.bytesPerVector, $0.baseAddress!)
                    }
                }
            }
            sink += out[0]
        }))
    }
    for v in variants { v.run() }   // warm up
    var samples = [[Double]](repeating: [], count: variants.count)
    for _ in 0..<reps {
        for (i, v) in variants.enumerated() { samples[i].append(measure(n, budgetNs: budgetNs, v.run)) }
    }
    let base = median(samples[0])
    for (i, v) in variants.enumerated() {
        let m = median(samples[i])
        print(pad("\(d)", 5) + " " + pad(v.name, 26) + " " + lpad("\(v.bytes)", 9) + " "
              + lpad(fixed(m), 9) + " " + lpad(fixed(base / m) + "x", 11))
    }
}
if sink == 12345.678 { print(sink) }

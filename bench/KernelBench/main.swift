// KernelBench: ns per distance of the CKernels distance kernels, vectors cache-resident.
//
//   swift run -c release --scratch-path .build-kernels KernelBench [--out bench/results/kernels.json] [--reps N] [--budget-us U]
//
// For each (kernel, d) the variants run interleaved in one process: `dispatched` (the public
// kernel called from Swift once per vector, at the default level), `batch` (one fk_*_batch
// call per block), `scalar` (the portable body, called once per vector), `avx2` / `avx512`
// (the public kernel once per vector with the level forced by fk_set_simd_level, set before
// each measurement and restored after it, outside the timed loop), `batch_avx2` /
// `batch_avx512` (the batch call at a forced level) and, for float32 L2, `plain_avx2` (the
// simplest AVX2 loop, the reference). Levels the CPU lacks are left out. The LVQ kernels are
// measured through fk_lvq_batch only (batch, scalar = fk_lvq_batch_scalar, batch_avx2,
// batch_avx512). Each measurement is a time-boxed run of whole passes over a block
// of vectors (<= 1000 vectors, <= 512 KiB, so it stays in L2); the figure is the median of
// `reps` (default 31) interleaved measurements of >= `budget-us` (default 500 µs) each: short
// measurements, many of them, keep the median robust when other processes share the CPUs. A sink keeps the results alive.
import CKernels
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - arguments

var outPath = "bench/results/kernels.json"
var reps = 31
var budgetNs: UInt64 = 500_000
var argv = CommandLine.arguments.dropFirst().makeIterator()
while let a = argv.next() {
    switch a {
    case "--out": if let v = argv.next() { outPath = v }
    case "--reps": if let v = argv.next(), let r = Int(v), r >= 1 { reps = r }
    case "--budget-us": if let v = argv.next(), let b = UInt64(v), b >= 1 { budgetNs = b * 1000 }
    case "-h", "--help":
        print("usage: KernelBench [--out PATH] [--reps N] [--budget-us MICROSECONDS]"); exit(0)
    default: print("unknown argument \(a)"); exit(2)
    }
}

// MARK: - helpers

struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func unit() -> Float { Float(Int64(next() >> 40) - (1 << 23)) / Float(1 << 23) }
}

@inline(__always) func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

nonisolated(unsafe) var sink: Float = 0

/// Runs whole passes for at least `budgetNs`; returns ns per distance. With `level`, the
/// dispatched kernels run at that SIMD level during the measurement (set before the clock
/// starts, the default restored after it stops).
func measure(_ pass: () -> Float, n: Int, budgetNs: UInt64, level: Int32? = nil) -> Double {
    if let level { fk_set_simd_level(level) }
    defer { if level != nil { fk_set_simd_level(-1) } }
    var passes = 0
    var s: Float = 0
    let t0 = nowNs()
    var t1 = t0
    repeat {
        s += pass()
        passes += 1
        t1 = nowNs()
    } while t1 - t0 < budgetNs
    sink += s
    return Double(t1 - t0) / Double(passes * n)
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : 0.5 * (s[s.count / 2 - 1] + s[s.count / 2])
}

func cpuModel() -> String {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let c = line.firstIndex(of: ":") { return line[line.index(after: c)...].trimmingCharacters(in: .whitespaces) }
    }
    return "unknown"
}

// MARK: - cases

/// One measured variant: a name, the SIMD level it forces (nil: the default) and one pass.
typealias Variant = (name: String, level: Int32?, pass: () -> Float)

struct Case {
    var kernel: String
    var d: Int
    var n: Int
    var variants: [Variant]
}

let maxLevel = fk_simd_max_level()
/// The forced-level variants the CPU supports: (suffix, level).
let forcedLevels: [(String, Int32)] = [("avx2", 1), ("avx512", 2)].filter { $0.1 <= maxLevel }

/// Adds the variants of one kernel: `dispatched`, `batch`, `scalar`, and `avx2`, `avx512`,
/// `batch_avx2`, `batch_avx512` for the levels the CPU has.
func standardVariants(single: @escaping () -> Float, batch: @escaping () -> Float, scalar: @escaping () -> Float) -> [Variant] {
    var v: [Variant] = [("dispatched", nil, single), ("batch", nil, batch), ("scalar", nil, scalar)]
    for (name, level) in forcedLevels { v.append((name, level, single)) }
    for (name, level) in forcedLevels { v.append(("batch_" + name, level, batch)) }
    return v
}

let blockBytes = 512 * 1024
func blockCount(_ vecBytes: Int) -> Int { min(1000, max(64, blockBytes / vecBytes)) }

nonisolated(unsafe) var rng = SplitMix64(state: 0xBE_4C4)

func randomFloats(_ count: Int) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: count)
    for i in 0..<count { p[i] = rng.unit() }
    return p
}
func randomBytes<T: FixedWidthInteger>(_ count: Int, as _: T.Type) -> UnsafeMutablePointer<T> {
    let p = UnsafeMutablePointer<T>.allocate(capacity: count)
    for i in 0..<count { p[i] = T(truncatingIfNeeded: rng.next() >> 56) }
    return p
}

func f32Case(l2: Bool, d: Int) -> Case {
    let n = blockCount(d * 4)
    let q = randomFloats(d), b = randomFloats(n * d), out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    var v: [Variant]
    if l2 {
        v = standardVariants(
            single: { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32(q, b + i * d, d) }; return s },
            batch: { fk_l2sq_f32_batch(q, b, n, d, d * 4, out); return out[n - 1] },
            scalar: { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_scalar(q, b + i * d, d) }; return s })
        v.append(("plain_avx2", nil, { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_plain_avx2(q, b + i * d, d) }; return s }))
    } else {
        v = standardVariants(
            single: { var s: Float = 0; for i in 0..<n { s += fk_dot_f32(q, b + i * d, d) }; return s },
            batch: { fk_dot_f32_batch(q, b, n, d, d * 4, out); return out[n - 1] },
            scalar: { var s: Float = 0; for i in 0..<n { s += fk_dot_f32_scalar(q, b + i * d, d) }; return s })
    }
    return Case(kernel: l2 ? "l2sq_f32" : "dot_f32", d: d, n: n, variants: v)
}

func u8Case(l2: Bool, d: Int) -> Case {
    let n = blockCount(d)
    let q = randomBytes(d, as: UInt8.self), b = randomBytes(n * d, as: UInt8.self)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    let v: [Variant]
    if l2 {
        v = standardVariants(
            single: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_u8(q, b + i * d, d) }; return Float(s) },
            batch: { fk_l2sq_u8_batch(q, b, n, d, d, out); return out[n - 1] },
            scalar: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_u8_scalar(q, b + i * d, d) }; return Float(s) })
    } else {
        v = standardVariants(
            single: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_dot_u8(q, b + i * d, d) }; return Float(s) },
            batch: { fk_dot_u8_batch(q, b, n, d, d, out); return out[n - 1] },
            scalar: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_dot_u8_scalar(q, b + i * d, d) }; return Float(s) })
    }
    return Case(kernel: l2 ? "l2sq_u8" : "dot_u8", d: d, n: n, variants: v)
}

func i8Case(l2: Bool, d: Int) -> Case {
    let n = blockCount(d)
    let q = randomBytes(d, as: Int8.self), b = randomBytes(n * d, as: Int8.self)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    let v: [Variant]
    if l2 {
        v = standardVariants(
            single: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_i8(q, b + i * d, d) }; return Float(s) },
            batch: { fk_l2sq_i8_batch(q, b, n, d, d, out); return out[n - 1] },
            scalar: { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_i8_scalar(q, b + i * d, d) }; return Float(s) })
    } else {
        v = standardVariants(
            single: { var s: Int32 = 0; for i in 0..<n { s &+= fk_dot_i8(q, b + i * d, d) }; return Float(s) },
            batch: { fk_dot_i8_batch(q, b, n, d, d, out); return out[n - 1] },
            scalar: { var s: Int32 = 0; for i in 0..<n { s &+= fk_dot_i8_scalar(q, b + i * d, d) }; return Float(s) })
    }
    return Case(kernel: l2 ? "l2sq_i8" : "dot_i8", d: d, n: n, variants: v)
}

func f32u8Case(d: Int) -> Case {
    let n = blockCount(d)
    let q = randomFloats(d), b = randomBytes(n * d, as: UInt8.self)
    for i in 0..<d { q[i] = 128 + 127 * q[i] }
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    return Case(kernel: "l2sq_f32_u8", d: d, n: n, variants: standardVariants(
        single: { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_u8(q, b + i * d, d) }; return s },
        batch: { fk_l2sq_f32_u8_batch(q, b, n, d, d, out); return out[n - 1] },
        scalar: { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_u8_scalar(q, b + i * d, d) }; return s }))
}

/// LVQ codes of random vectors scored through fk_lvq_batch (metric IP or L2).
func lvqCase(kind: Int32, l2: Bool, d: Int) -> Case {
    let size = fk_lvq_code_size(kind, d)
    let n = blockCount(size)
    let q = randomFloats(d), x = randomFloats(d)
    let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: n * size)
    for j in 0..<n {
        for i in 0..<d { x[i] = 2 * rng.unit() + 0.5 }
        fk_lvq_encode(kind, x, d, codes + j * size)
    }
    var qs: Float = 0, qn: Float = 0
    for i in 0..<d { qs += q[i]; qn += q[i] * q[i] }
    let qsum = qs, qnorm = qn
    let metric = l2 ? FK_LVQ_METRIC_L2 : FK_LVQ_METRIC_IP
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    let batch: () -> Float = { fk_lvq_batch(kind, metric, q, qsum, qnorm, codes, n, d, size, out); return out[n - 1] }
    var v: [Variant] = [("batch", nil, batch),
                        ("scalar", nil, { fk_lvq_batch_scalar(kind, metric, q, qsum, qnorm, codes, n, d, size, out); return out[n - 1] })]
    for (name, level) in forcedLevels { v.append(("batch_" + name, level, batch)) }
    let kname = kind == FK_LVQ8 ? "lvq8" : kind == FK_LVQ4 ? "lvq4" : "lvq4x8"
    return Case(kernel: "\(kname)_\(l2 ? "l2" : "ip")", d: d, n: n, variants: v)
}

var cases: [Case] = []
for d in [96, 128, 384, 768] { cases.append(f32Case(l2: true, d: d)) }
for d in [96, 128, 384, 768] { cases.append(u8Case(l2: true, d: d)) }
cases.append(f32Case(l2: false, d: 128))
cases.append(u8Case(l2: false, d: 128))
cases.append(i8Case(l2: true, d: 128))
cases.append(i8Case(l2: false, d: 128))
cases.append(f32u8Case(d: 128))
for d in [128, 384] { cases.append(lvqCase(kind: FK_LVQ8, l2: false, d: d)); cases.append(lvqCase(kind: FK_LVQ8, l2: true, d: d)) }
cases.append(lvqCase(kind: FK_LVQ4, l2: false, d: 128))
cases.append(lvqCase(kind: FK_LVQ4X8, l2: false, d: 128))

// MARK: - run

let simd = String(cString: fk_simd_name())
let cpu = cpuModel()
print("KernelBench  simd=\(simd)  max_level=\(maxLevel)  cpu=\(cpu)  reps=\(reps)  budget=\(budgetNs / 1000) us  (median ns per distance)")

struct Row { var kernel: String; var d: Int; var n: Int; var ns: [String: Double] }
var rows: [Row] = []
for c in cases {
    for v in c.variants {                              // warm-up: caches, dispatch, page faults
        if let l = v.level { fk_set_simd_level(l) }
        sink += v.pass()
        fk_set_simd_level(-1)
    }
    var times = [[Double]](repeating: [], count: c.variants.count)
    for _ in 0..<reps {
        for (k, v) in c.variants.enumerated() { times[k].append(measure(v.pass, n: c.n, budgetNs: budgetNs, level: v.level)) }
    }
    var ns: [String: Double] = [:]
    for (k, v) in c.variants.enumerated() { ns[v.name] = median(times[k]) }
    rows.append(Row(kernel: c.kernel, d: c.d, n: c.n, ns: ns))
}

// MARK: - report

let columns = ["dispatched", "batch", "scalar", "avx2", "avx512", "batch_avx2", "batch_avx512", "plain_avx2"]
func fmt(_ x: Double?) -> String { x.map { String(format: "%.2f", $0) } ?? "-" }
func ratio(_ a: Double?, _ b: Double?, _ f: String = "%.2f") -> String {
    guard let a, let b else { return "-" }
    return String(format: f, a / b)
}

var table = "| kernel | d | n | " + columns.joined(separator: " | ")
    + " | avx512/avx2 | batch avx512/avx2 | dispatched/plain | scalar/dispatched |\n"
table += "|---|---:|---:|" + String(repeating: "---:|", count: columns.count + 4) + "\n"
for r in rows {
    let cells = columns.map { fmt(r.ns[$0]) }
    table += "| \(r.kernel) | \(r.d) | \(r.n) | " + cells.joined(separator: " | ")
        + " | \(ratio(r.ns["avx512"], r.ns["avx2"])) | \(ratio(r.ns["batch_avx512"], r.ns["batch_avx2"]))"
        + " | \(ratio(r.ns["dispatched"], r.ns["plain_avx2"])) | \(ratio(r.ns["scalar"], r.ns["dispatched"] ?? r.ns["batch"], "%.1f")) |\n"
}
print(table, terminator: "")
for r in rows {
    let single = ratio(r.ns["avx512"], r.ns["avx2"]), batch = ratio(r.ns["batch_avx512"], r.ns["batch_avx2"])
    if single != "-" || batch != "-" { print("ratio avx512/avx2 \(r.kernel) d=\(r.d): single \(single)  batch \(batch)") }
}

var ratios: [(String, Double)] = []
for r in rows {
    let key = "\(r.kernel)_d\(r.d)"
    if let p = r.ns["plain_avx2"] {
        ratios.append(("\(key)_dispatched_over_plain_avx2", r.ns["dispatched"]! / p))
        ratios.append(("\(key)_batch_over_plain_avx2", r.ns["batch"]! / p))
    }
    if let dsp = r.ns["dispatched"] {
        ratios.append(("\(key)_batch_over_dispatched", r.ns["batch"]! / dsp))
        ratios.append(("\(key)_scalar_over_dispatched", r.ns["scalar"]! / dsp))
    } else {
        ratios.append(("\(key)_scalar_over_batch", r.ns["scalar"]! / r.ns["batch"]!))
    }
    if let a = r.ns["avx512"], let b = r.ns["avx2"] { ratios.append(("\(key)_avx512_over_avx2", a / b)) }
    if let a = r.ns["batch_avx512"], let b = r.ns["batch_avx2"] { ratios.append(("\(key)_batch_avx512_over_batch_avx2", a / b)) }
}

// Bars: f32 L2 d=128 <= 1.3x plain AVX2 and <= 14 ns; u8 L2 d=128 <= 9 ns.
let ns = { (k: String, d: Int, v: String) -> Double in rows.first { $0.kernel == k && $0.d == d }!.ns[v]! }
let bars: [(String, Double, Double)] = [
    ("l2sq_f32_d128_dispatched_over_plain_avx2", ns("l2sq_f32", 128, "dispatched") / ns("l2sq_f32", 128, "plain_avx2"), 1.3),
    ("l2sq_f32_d128_dispatched_ns", ns("l2sq_f32", 128, "dispatched"), 14),
    ("l2sq_u8_d128_dispatched_ns", ns("l2sq_u8", 128, "dispatched"), 9),
]
for (name, value, limit) in bars {
    print("bar \(name): \(String(format: "%.2f", value)) <= \(limit) \(value <= limit ? "PASS" : "FAIL")")
}

func jsonString(_ s: String) -> String {
    var o = "\""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": o += "\\\""
        case "\\": o += "\\\\"
        case "\n": o += "\\n"
        default: if ch.value < 0x20 { o += String(format: "\\u%04x", ch.value) } else { o.unicodeScalars.append(ch) }
        }
    }
    return o + "\""
}
func num(_ x: Double) -> String { String(format: "%.4f", x) }

var json = "{\n"
json += "  \"machine\": {\"simd\": \(jsonString(simd)), \"max_level\": \(maxLevel), \"default_level\": \(fk_simd_level()), \"cpu\": \(jsonString(cpu)), \"vcpus\": \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))},\n"
json += "  \"date\": \(jsonString(Date().ISO8601Format())),\n"
json += "  \"method\": {\"reps\": \(reps), \"statistic\": \"median\", \"budget_ns_per_measurement\": \(budgetNs), \"block_bytes_max\": \(blockBytes), \"interleaved\": true},\n"
json += "  \"results\": [\n"
var items: [String] = []
for r in rows {
    for v in columns where r.ns[v] != nil {
        items.append("    {\"kernel\": \(jsonString(r.kernel)), \"d\": \(r.d), \"variant\": \(jsonString(v)), \"n_vectors\": \(r.n), \"ns_per_distance\": \(num(r.ns[v]!))}")
    }
}
json += items.joined(separator: ",\n") + "\n  ],\n"
json += "  \"ratios\": {\n" + ratios.map { "    \(jsonString($0.0)): \(num($0.1))" }.joined(separator: ",\n") + "\n  },\n"
json += "  \"bars\": [\n" + bars.map { "    {\"name\": \(jsonString($0.0)), \"value\": \(num($0.1)), \"limit\": \($0.2), \"pass\": \($0.1 <= $0.2)}" }.joined(separator: ",\n") + "\n  ]\n"
json += "}\n"

let dir = (outPath as NSString).deletingLastPathComponent
if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
try json.write(toFile: outPath, atomically: true, encoding: .utf8)
print("wrote \(outPath)  (sink \(sink))")

// KernelBench: ns per distance of the CKernels distance kernels, vectors cache-resident.
//
//   swift run -c release --scratch-path .build-kernels KernelBench [--out bench/results/kernels.json] [--reps N] [--budget-us U]
//
// For each (kernel, d) the variants run interleaved in one process: `dispatched` (the public
// kernel called from Swift once per vector), `batch` (one fk_*_batch call per block), `scalar`
// (the portable body, called once per vector) and, for float32 L2, `plain_avx2` (the simplest
// AVX2 loop, the reference). Each measurement is a time-boxed run of whole passes over a block
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

/// Runs whole passes for at least `budgetNs`; returns ns per distance.
func measure(_ pass: () -> Float, n: Int, budgetNs: UInt64) -> Double {
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

struct Case {
    var kernel: String
    var d: Int
    var n: Int
    var variants: [(String, () -> Float)]
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
    var v: [(String, () -> Float)] = []
    if l2 {
        v.append(("dispatched", { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32(q, b + i * d, d) }; return s }))
        v.append(("batch", { fk_l2sq_f32_batch(q, b, n, d, d * 4, out); return out[n - 1] }))
        v.append(("scalar", { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_scalar(q, b + i * d, d) }; return s }))
        v.append(("plain_avx2", { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_plain_avx2(q, b + i * d, d) }; return s }))
    } else {
        v.append(("dispatched", { var s: Float = 0; for i in 0..<n { s += fk_dot_f32(q, b + i * d, d) }; return s }))
        v.append(("batch", { fk_dot_f32_batch(q, b, n, d, d * 4, out); return out[n - 1] }))
        v.append(("scalar", { var s: Float = 0; for i in 0..<n { s += fk_dot_f32_scalar(q, b + i * d, d) }; return s }))
    }
    return Case(kernel: l2 ? "l2sq_f32" : "dot_f32", d: d, n: n, variants: v)
}

func u8Case(l2: Bool, d: Int) -> Case {
    let n = blockCount(d)
    let q = randomBytes(d, as: UInt8.self), b = randomBytes(n * d, as: UInt8.self)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    var v: [(String, () -> Float)] = []
    if l2 {
        v.append(("dispatched", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_u8(q, b + i * d, d) }; return Float(s) }))
        v.append(("batch", { fk_l2sq_u8_batch(q, b, n, d, d, out); return out[n - 1] }))
        v.append(("scalar", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_u8_scalar(q, b + i * d, d) }; return Float(s) }))
    } else {
        v.append(("dispatched", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_dot_u8(q, b + i * d, d) }; return Float(s) }))
        v.append(("batch", { fk_dot_u8_batch(q, b, n, d, d, out); return out[n - 1] }))
        v.append(("scalar", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_dot_u8_scalar(q, b + i * d, d) }; return Float(s) }))
    }
    return Case(kernel: l2 ? "l2sq_u8" : "dot_u8", d: d, n: n, variants: v)
}

func i8Case(d: Int) -> Case {
    let n = blockCount(d)
    let q = randomBytes(d, as: Int8.self), b = randomBytes(n * d, as: Int8.self)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    return Case(kernel: "l2sq_i8", d: d, n: n, variants: [
        ("dispatched", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_i8(q, b + i * d, d) }; return Float(s) }),
        ("batch", { fk_l2sq_i8_batch(q, b, n, d, d, out); return out[n - 1] }),
        ("scalar", { var s: UInt32 = 0; for i in 0..<n { s &+= fk_l2sq_i8_scalar(q, b + i * d, d) }; return Float(s) }),
    ])
}

func f32u8Case(d: Int) -> Case {
    let n = blockCount(d)
    let q = randomFloats(d), b = randomBytes(n * d, as: UInt8.self)
    for i in 0..<d { q[i] = 128 + 127 * q[i] }
    let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
    return Case(kernel: "l2sq_f32_u8", d: d, n: n, variants: [
        ("dispatched", { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_u8(q, b + i * d, d) }; return s }),
        ("batch", { fk_l2sq_f32_u8_batch(q, b, n, d, d, out); return out[n - 1] }),
        ("scalar", { var s: Float = 0; for i in 0..<n { s += fk_l2sq_f32_u8_scalar(q, b + i * d, d) }; return s }),
    ])
}

var cases: [Case] = []
for d in [96, 128, 384, 768] { cases.append(f32Case(l2: true, d: d)) }
for d in [96, 128, 384, 768] { cases.append(u8Case(l2: true, d: d)) }
cases.append(f32Case(l2: false, d: 128))
cases.append(u8Case(l2: false, d: 128))
cases.append(i8Case(d: 128))
cases.append(f32u8Case(d: 128))

// MARK: - run

let simd = String(cString: fk_simd_name())
let cpu = cpuModel()
print("KernelBench  simd=\(simd)  cpu=\(cpu)  reps=\(reps)  budget=\(budgetNs / 1000) us  (median ns per distance)")

struct Row { var kernel: String; var d: Int; var n: Int; var ns: [String: Double] }
var rows: [Row] = []
for c in cases {
    for (_, f) in c.variants { sink += f() }          // warm-up: caches, dispatch, page faults
    var times = [[Double]](repeating: [], count: c.variants.count)
    for _ in 0..<reps {
        for (k, (_, f)) in c.variants.enumerated() { times[k].append(measure(f, n: c.n, budgetNs: budgetNs)) }
    }
    var ns: [String: Double] = [:]
    for (k, (name, _)) in c.variants.enumerated() { ns[name] = median(times[k]) }
    rows.append(Row(kernel: c.kernel, d: c.d, n: c.n, ns: ns))
}

// MARK: - report

let columns = ["dispatched", "batch", "scalar", "plain_avx2"]
func fmt(_ x: Double?) -> String { x.map { String(format: "%.2f", $0) } ?? "-" }
func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }

var table = "| kernel | d | n | " + columns.joined(separator: " | ") + " | dispatched/plain | scalar/dispatched |\n"
table += "|---|---:|---:|" + String(repeating: "---:|", count: columns.count + 2) + "\n"
for r in rows {
    let cells = columns.map { fmt(r.ns[$0]) }
    let overPlain = r.ns["plain_avx2"].map { String(format: "%.2f", r.ns["dispatched"]! / $0) } ?? "-"
    let scalarOver = String(format: "%.1f", r.ns["scalar"]! / r.ns["dispatched"]!)
    table += "| \(r.kernel) | \(r.d) | \(r.n) | " + cells.joined(separator: " | ") + " | \(overPlain) | \(scalarOver) |\n"
}
print(table, terminator: "")

var ratios: [(String, Double)] = []
for r in rows {
    let key = "\(r.kernel)_d\(r.d)"
    if let p = r.ns["plain_avx2"] {
        ratios.append(("\(key)_dispatched_over_plain_avx2", r.ns["dispatched"]! / p))
        ratios.append(("\(key)_batch_over_plain_avx2", r.ns["batch"]! / p))
    }
    ratios.append(("\(key)_batch_over_dispatched", r.ns["batch"]! / r.ns["dispatched"]!))
    ratios.append(("\(key)_scalar_over_dispatched", r.ns["scalar"]! / r.ns["dispatched"]!))
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
json += "  \"machine\": {\"simd\": \(jsonString(simd)), \"cpu\": \(jsonString(cpu)), \"vcpus\": \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))},\n"
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

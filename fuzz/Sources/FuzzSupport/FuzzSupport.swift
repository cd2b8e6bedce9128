// Shared pieces of the fuzz targets: a per-process scratch directory, fast file writes,
// the reference indexes the index targets mutate, and the seed-corpus writers.
//
// Everything goes through Fathom's public API (plus FathomCodecs for attribute tables, which
// the Fathom product builds and whose types its API exposes).
import CFuzz
import Fathom
import FathomCodecs
import FathomTools
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The scratch directory of this process (tmpfs when available), removed at exit.
public let scratch: String = {
    let base = FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let dir = base + "/fathom-fuzz-\(getpid())"
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: scratch) }
    return dir
}()

/// Writes `size` bytes at `path` (create/truncate), with plain syscalls: no Foundation on the
/// hot path.
public func writeFile(_ path: String, _ data: UnsafeRawPointer?, _ size: Int) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    precondition(fd >= 0, "cannot create \(path): errno \(errno)")
    var done = 0
    while done < size {
        let w = write(fd, data! + done, size - done)
        precondition(w > 0, "cannot write \(path): errno \(errno)")
        done += w
    }
    close(fd)
}

public func writeFile(_ path: String, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { writeFile(path, $0.baseAddress, $0.count) }
}

public func readFile(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path)!)
}

/// Runs `body`; a `FathomError` is an expected outcome for malformed input, anything else
/// thrown is a bug (the parsers promise FathomError only) and stops the fuzzer.
@inline(__always)
public func expectingFathomErrors(_ what: String, _ body: () throws -> Void) {
    do { try body() } catch is FathomError {
    } catch {
        fatalError("\(what) threw a non-FathomError: \(type(of: error)): \(error)")
    }
}

/// CRC32C as an 8-digit lowercase hex string (the manifest's spelling).
public func crcHex(_ p: UnsafeRawPointer?, _ count: Int) -> String {
    let c = count == 0 ? crc32c(UnsafeRawPointer(bitPattern: 1)!, 0, 0) : crc32c(p!, count, 0)
    return String(format: "%08x", c)
}

/// Fills in the manifest's self-checksum (`"manifest_crc32c": "xxxxxxxx"`) the way Fathom
/// computes it: CRC32C of the bytes with the 8 value characters set to '0'. Inputs without the
/// key, or with a value of another shape, are left as they are (and fail the check).
/// Without this, nearly every mutated manifest would stop at the checksum.
public func sealManifestBytes(_ bytes: inout [UInt8]) {
    let key = Array("\"manifest_crc32c\"".utf8)
    guard let k = bytes.firstRange(of: key) else { return }
    var i = k.upperBound
    while i < bytes.count && bytes[i] != UInt8(ascii: "\"") { i += 1 }
    guard i + 9 < bytes.count, bytes[i + 9] == UInt8(ascii: "\"") else { return }
    for j in 0..<8 { bytes[i + 1 + j] = UInt8(ascii: "0") }
    let hex = Array(bytes.withUnsafeBytes { crcHex($0.baseAddress, $0.count) }.utf8)
    for j in 0..<8 { bytes[i + 1 + j] = hex[j] }
}

// MARK: - Reference data

/// A fixed attribute CSV of `rows` rows: int, float, category and tags columns.
public func attributeCSV(rows: Int) -> String {
    var s = "year:int,price:float,color:category,tags:tags\n"
    let colors = ["red", "green", "blue", "it's", "x,y"]
    for i in 0..<rows {
        let color = colors[i % colors.count]
        let quoted = color.contains(",") ? "\"\(color)\"" : color
        s += "\(1990 + i % 35),\(Double(i % 97) * 1.25),\(quoted),t\(i % 7);t\(i % 3 + 10)\n"
    }
    return s
}

/// The same rows as JSON lines.
public func attributeJSONLines(rows: Int) -> String {
    var s = ""
    let colors = ["red", "green", "blue", "it's", "x,y"]
    for i in 0..<rows {
        s += "{\"year\": \(1990 + i % 35), \"price\": \(Double(i % 97) * 1.25), \"color\": \"\(colors[i % colors.count])\", \"tags\": [\"t\(i % 7)\", \"t\(i % 3 + 10)\"]}\n"
    }
    return s
}

/// Seeded vectors (clustered, `n × d` float32) written as .fbin at `path`.
public func writeBase(_ path: String, n: Int, d: Int, seed: UInt64 = 7) throws {
    let gen = SyntheticGenerator(dim: d, clusters: 8, intrinsicDim: min(d, 6), seed: seed)
    let m = Matrix(rows: n, cols: d)
    gen.generate(.base, first: 0, rows: n, into: m.data)
    let w = try VectorFileWriter(path: path, format: .fbin, elementType: .float32, dimension: d)
    try w.append(UnsafeRawPointer(m.data), count: n)
    try w.close(sync: false)
}

/// The two small indexes the index targets start from, built once per process from 300
/// seeded 16-d vectors: `plain` (float32 postings, no attributes) and `full` (LVQ-8 codes of
/// an 8-d LeanVec projection in postings, codec.bin, attributes: attrs.bin, summaries.bin).
public final class ReferenceIndexes: @unchecked Sendable {
    public static let n = 300, d = 16
    public let root: String
    public let plain: String
    public let full: String

    public init(root: String) throws {
        self.root = root
        plain = root + "/plain"; full = root + "/full"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let base = root + "/base.fbin", attrs = root + "/attrs.csv"
        try writeBase(base, n: Self.n, d: Self.d)
        try attributeCSV(rows: Self.n).write(toFile: attrs, atomically: false, encoding: .utf8)
        var o = BuildOptions()
        o.memoryBudget = 256 << 20; o.headRatio = 0.1; o.postingPages = 1; o.graphDegree = 8
        o.candidateHeads = 16; o.replicas = 4; o.seed = 3
        try IndexBuilder(input: base, output: plain, options: o).build()
        o.codec = .lvq8; o.reduceDims = 8; o.attributes = attrs
        try IndexBuilder(input: base, output: full, options: o).build()
    }

    public func files(of index: String) -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: index))?.sorted() ?? []
    }

    /// A fixed query of dimension `d`.
    public static let query: [Float] = (0..<d).map { Float(($0 * 37) % 11) / 11 - 0.5 }
}

/// Makes `dir` hold hard links to every file of `index` (cheap "copies" that `lstat` sees
/// with their real size).
public func linkIndex(_ index: String, into dir: String) {
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for f in try! FileManager.default.contentsOfDirectory(atPath: index) {
        precondition(link(index + "/" + f, dir + "/" + f) == 0, "link \(f): errno \(errno)")
    }
}

/// Opens the index at `dir` (pread IO, no warnings) and, if that succeeds, runs a search and
/// (with attributes) a filtered one. FathomErrors are expected; crashes are bugs.
public func openAndSearch(_ dir: String) {
    expectingFathomErrors("VectorIndex.open/search") {
        let index = try VectorIndex.open(at: dir, io: .pread, warn: { _ in })
        guard index.dimension == ReferenceIndexes.d else { return }
        _ = try index.search(ReferenceIndexes.query, k: 5, parameters: SearchParameters(probes: 4))
        if index.manifest.attributes != nil {
            let f = try index.prepareFilter("price < 50 AND tags HAS ANY ('t1', 't10')")
            _ = try index.search(ReferenceIndexes.query, k: 5, parameters: SearchParameters(probes: 4), filter: f)
        }
    }
}

// MARK: - Seed corpus

/// Writes the seed corpus of the fuzz targets when FATHOM_FUZZ_WRITE_SEEDS names a directory
/// (called from each target's LLVMFuzzerInitialize); then exits. `tools/fuzz --seeds`.
public func writeSeedsIfAsked(_ target: String, _ write: (String) throws -> Void) {
    guard let dir = ProcessInfo.processInfo.environment["FATHOM_FUZZ_WRITE_SEEDS"] else { return }
    do {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try write(dir)
        print("\(target): seeds written to \(dir)")
        exit(0)
    } catch {
        print("\(target): cannot write seeds: \(error)")
        exit(1)
    }
}

// MARK: - Entry point

/// Runs libFuzzer's driver with `callback` (each target's LLVMFuzzerTestOneInput). SwiftPM
/// links an executable target's `main` to `<Target>_main`; with `-parse-as-library` the
/// targets define that symbol themselves and call this.
public func runLibFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt {
    fathom_fuzz_run(argc, argv, callback)
}

/// A valid pointer for empty inputs.
nonisolated(unsafe) public let emptyInput = UnsafePointer<UInt8>(UnsafeMutablePointer<UInt8>.allocate(capacity: 1))

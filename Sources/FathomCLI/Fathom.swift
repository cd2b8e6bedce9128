import ArgumentParser
import Fathom
import Foundation

@main
struct FathomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fathom",
        abstract: "Fathom: billion-scale vector search from one machine (index in RAM, vectors on SSD).",
        discussion: """
        Progress and diagnostics go to stderr; results (tables, JSON) go to stdout.
        Sizes accept units: 512MiB, 2GiB, 1.5G (powers of 1024). Exit codes: docs/errors.md.
        """,
        version: "0.1.0",
        subcommands: [TrainCommand.self, BuildCommand.self, SearchCommand.self, InfoCommand.self, VerifyCommand.self, GenCommand.self, GroundTruthCommand.self, ConvertCommand.self, ServeCommand.self, InsertCommand.self, DeleteCommand.self, CheckpointCommand.self, PushCommand.self, PullCommand.self]
    )

    /// The process's start: one OpenBLAS thread for every command (the library expects it:
    /// byte-identical builds for any --threads, no BLAS workers spinning beside search
    /// threads); `gt --threads` raises it for its sgemm.
    static func main() async {
        BLAS.setThreads(1)
        await main(nil)
    }
}

/// A byte size argument such as `2GiB`.
struct ByteSize: ExpressibleByArgument, CustomStringConvertible {
    let bytes: UInt64
    init(bytes: UInt64) { self.bytes = bytes }
    init?(argument: String) {
        guard let b = parseByteSize(argument), b > 0 else { return nil }
        bytes = b
    }
    var description: String { formatBytes(bytes) }
    var defaultValueDescription: String { formatBytes(bytes) }
}

extension Metric: ExpressibleByArgument {}

/// `--serve-memory`: bytes per vector (`32B`, `64`) or a total for the whole index (`4GiB`,
/// `512MiB`: any size with a K/M/G/T unit).
enum ServeMemory {
    static func perVector(_ text: String, vectors: Int, flag: String) throws -> Double {
        let t = text.trimmingCharacters(in: .whitespaces)
        let lower = t.lowercased()
        let total = ["k", "m", "g", "t"].contains { lower.contains($0) }
        guard let bytes = parseByteSize(t), bytes > 0 else {
            throw FathomError(.invalidArgument, "\(flag) '\(text)' is not a size: give bytes per vector (32B) or a total (4GiB)")
        }
        return total ? Double(bytes) / Double(max(vectors, 1)) : Double(bytes)
    }
}

/// Checks a set of query (or base) vectors before any search: at least one row, the expected
/// dimension, only finite values (and a direction under cosine). Each error names the file and
/// the row, with the byte offset of the bad value.
func checkVectors(_ m: Matrix, path: String, what: String, one: String, dimension: Int?, against: String, metric: Metric?, firstRow: Int = 0) throws {
    let h = try VectorFileHeader.inspect(path: path)
    if let dimension, m.cols != dimension {
        throw FathomError(.dimensionMismatch, "\(what) have dimension \(m.cols) but \(against) has \(dimension)", path: path)
    }
    for i in 0..<m.rows {
        let r = m.row(i)
        var norm: Float = 0
        for j in 0..<m.cols {
            guard r[j].isFinite else {
                let row = firstRow + i
                throw FathomError(.nonFiniteValue, "\(one) row \(row) has \(r[j]) at component \(j); \(what) must be finite", path: path,
                                  offset: UInt64(h.dataOffset) + UInt64(row) * UInt64(h.recordStride) + UInt64(h.recordPrefix + j * h.elementType.size))
            }
            norm += r[j] * r[j]
        }
        if metric == .cosine && norm == 0 {
            throw FathomError(.invalidArgument, "\(one) row \(firstRow + i) is all zeros: it has no direction under the cosine metric", path: path)
        }
    }
}

/// Loads queries, refusing an empty file (a search of nothing is not a result).
func loadQueries(_ path: String, limit: Int? = nil) throws -> Matrix {
    let q = try Matrix.load(vectorFile: path, maxRows: limit)
    guard q.rows > 0 else { throw FathomError(.malformedFile, "the query file holds no vectors", path: path) }
    return q
}

/// Streams a base file once and checks every vector as `checkVectors` does.
func checkBase(_ path: String, dimension: Int, against: String, metric: Metric) throws -> Int {
    let r = try VectorFileReader(path: path)
    guard r.count > 0 else { throw FathomError(.malformedFile, "the file holds no vectors", path: path) }
    let rows = max(1, min(r.count, (8 << 20) / max(1, r.dimension * 4)))
    let m = Matrix(rows: rows, cols: r.dimension)
    var at = 0
    while at < r.count {
        let k = try r.readFloats(maxRows: rows, into: m.data)
        if k == 0 { break }
        let view = k == rows ? m : Matrix(rows: k, cols: r.dimension)
        if k != rows { view.data.update(from: m.data, count: k * r.dimension) }
        try checkVectors(view, path: path, what: "base vectors", one: "base vector", dimension: dimension, against: against, metric: metric, firstRow: at)
        at += k
    }
    return r.count
}

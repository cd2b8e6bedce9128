import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomStorage
#if canImport(Glibc)
import Glibc
#endif

/// Bad input never passes silently: every bad input to a CLI command exits with its documented
/// status (docs/errors.md) and a message naming the file, the row or the flag.
@Suite(.serialized) struct CLIBadInputTests {
    /// One shared fixture: a small index, its base and queries, and the bad files.
    final class Fixture: @unchecked Sendable {
        let dir = TempDir("fathom-badinput")
        let n = 400, d = 8
        init() throws {
            try writeSynthetic(dir: dir, n: n, d: d, nq: 5)
            var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05
            try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
            func vectors(_ name: String, rows: Int, dim: Int, poison: (row: Int, col: Int, value: Float)? = nil) throws {
                var v = (0..<(rows * dim)).map { Float(($0 * 7) % 13) / 13 }
                if let p = poison { v[p.row * dim + p.col] = p.value }
                let w = try VectorFileWriter(path: dir.file(name), format: .fbin, elementType: .float32, dimension: dim)
                try v.withUnsafeBytes { try w.append($0.baseAddress!, count: rows) }
                try w.close()
            }
            try vectors("q-nan.fbin", rows: 5, dim: d, poison: (3, 2, .nan))
            try vectors("q-inf.fbin", rows: 5, dim: d, poison: (1, 0, .infinity))
            try vectors("q-dim.fbin", rows: 5, dim: d + 1)
            try vectors("q-empty.fbin", rows: 0, dim: d)
            try vectors("b-nan.fbin", rows: 50, dim: d, poison: (37, 3, .nan))
            try vectors("b-inf.fbin", rows: 50, dim: d, poison: (12, 7, -.infinity))
            FileManager.default.createFile(atPath: dir.file("empty.fbin"), contents: Data())
            FileManager.default.createFile(atPath: dir.file("plain.txt"), contents: Data("x".utf8))
            try FileManager.default.createDirectory(atPath: dir.file("adir.fbin"), withIntermediateDirectories: true)
            guard mkfifo(dir.file("fifo.fbin"), 0o644) == 0 else { throw FathomError(.io, "mkfifo failed") }
        }
    }
    nonisolated(unsafe) static var shared: Fixture?
    static func fixture() throws -> Fixture {
        if let f = shared { return f }
        let f = try Fixture(); shared = f; return f
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var args: [String]
        var status: Int32
        /// Substrings the message on stderr must hold (file, row, flag).
        var mentions: [String]
        var testDescription: String { name }
    }

    // `$` is replaced by the fixture directory.
    static let cases: [Case] = [
        // search
        Case(name: "search: NaN in a query", args: ["search", "--index", "$/idx", "--queries", "$/q-nan.fbin", "--probes", "4"], status: 7, mentions: ["q-nan.fbin", "row 3", "nan", "component 2"]),
        Case(name: "search: Inf in a query, with --output", args: ["search", "--index", "$/idx", "--queries", "$/q-inf.fbin", "--output", "$/out.ibin"], status: 7, mentions: ["q-inf.fbin", "row 1", "inf"]),
        Case(name: "search: query dimension ≠ index", args: ["search", "--index", "$/idx", "--queries", "$/q-dim.fbin"], status: 6, mentions: ["q-dim.fbin", "dimension 9", "8"]),
        Case(name: "search: k = 0", args: ["search", "--index", "$/idx", "--queries", "$/query.fbin", "-k", "0"], status: 64, mentions: ["-k"]),
        Case(name: "search: k = -3", args: ["search", "--index", "$/idx", "--queries", "$/query.fbin", "-k", "-3"], status: 64, mentions: ["-k"]),
        Case(name: "search: k > n", args: ["search", "--index", "$/idx", "--queries", "$/query.fbin", "-k", "401"], status: 2, mentions: ["-k 401", "400", "idx"]),
        Case(name: "search: empty query file (no rows)", args: ["search", "--index", "$/idx", "--queries", "$/q-empty.fbin"], status: 4, mentions: ["q-empty.fbin", "no vectors"]),
        Case(name: "search: zero-byte query file", args: ["search", "--index", "$/idx", "--queries", "$/empty.fbin"], status: 4, mentions: ["empty.fbin"]),
        Case(name: "search: queries are a directory", args: ["search", "--index", "$/idx", "--queries", "$/adir.fbin"], status: 3, mentions: ["adir.fbin", "directory"]),
        Case(name: "search: queries are a FIFO", args: ["search", "--index", "$/idx", "--queries", "$/fifo.fbin"], status: 3, mentions: ["fifo.fbin", "FIFO"]),
        Case(name: "search: index is a FIFO", args: ["search", "--index", "$/fifo.fbin", "--queries", "$/query.fbin"], status: 3, mentions: ["fifo.fbin"]),
        Case(name: "search: unwritable --output", args: ["search", "--index", "$/idx", "--queries", "$/query.fbin", "--probes", "4", "--output", "$/plain.txt/out.ibin"], status: 11, mentions: ["plain.txt/out.ibin"]),
        // build
        Case(name: "build: NaN in the base", args: ["build", "--input", "$/b-nan.fbin", "--output", "$/nan-idx"], status: 7, mentions: ["b-nan.fbin", "vector 37", "component 3"]),
        Case(name: "build: -Inf in the base", args: ["build", "--input", "$/b-inf.fbin", "--output", "$/inf-idx"], status: 7, mentions: ["b-inf.fbin", "vector 12", "component 7"]),
        Case(name: "build: zero-byte input", args: ["build", "--input", "$/empty.fbin", "--output", "$/e-idx"], status: 4, mentions: ["empty.fbin"]),
        Case(name: "build: input without rows", args: ["build", "--input", "$/q-empty.fbin", "--output", "$/e-idx"], status: 4, mentions: ["q-empty.fbin", "no vectors"]),
        Case(name: "build: input is a directory", args: ["build", "--input", "$/adir.fbin", "--output", "$/d-idx"], status: 3, mentions: ["adir.fbin", "directory"]),
        Case(name: "build: input is a FIFO", args: ["build", "--input", "$/fifo.fbin", "--output", "$/f-idx"], status: 3, mentions: ["fifo.fbin", "FIFO"]),
        Case(name: "build: unwritable destination", args: ["build", "--input", "$/base.fbin", "--output", "$/plain.txt/idx"], status: 11, mentions: ["plain.txt/idx"]),
        Case(name: "build: destination is a file", args: ["build", "--input", "$/base.fbin", "--output", "$/plain.txt"], status: 2, mentions: ["plain.txt"]),
        // gt
        Case(name: "gt: NaN in the queries", args: ["gt", "--base", "$/base.fbin", "--queries", "$/q-nan.fbin", "-k", "5", "--output", "$/g.ibin"], status: 7, mentions: ["q-nan.fbin", "row 3"]),
        Case(name: "gt: Inf in the base", args: ["gt", "--base", "$/b-inf.fbin", "--queries", "$/query.fbin", "-k", "5", "--output", "$/g.ibin"], status: 7, mentions: ["b-inf.fbin", "row 12"]),
        Case(name: "gt: dimension mismatch", args: ["gt", "--base", "$/base.fbin", "--queries", "$/q-dim.fbin", "-k", "5", "--output", "$/g.ibin"], status: 6, mentions: ["base.fbin", "q-dim.fbin"]),
        Case(name: "gt: k = 0", args: ["gt", "--base", "$/base.fbin", "--queries", "$/query.fbin", "-k", "0", "--output", "$/g.ibin"], status: 64, mentions: ["-k"]),
        Case(name: "gt: k > n", args: ["gt", "--base", "$/base.fbin", "--queries", "$/query.fbin", "-k", "401", "--output", "$/g.ibin"], status: 2, mentions: ["-k 401", "base.fbin"]),
        Case(name: "gt: empty queries", args: ["gt", "--base", "$/base.fbin", "--queries", "$/q-empty.fbin", "-k", "5", "--output", "$/g.ibin"], status: 4, mentions: ["q-empty.fbin"]),
        Case(name: "gt: base is a FIFO", args: ["gt", "--base", "$/fifo.fbin", "--queries", "$/query.fbin", "-k", "5", "--output", "$/g.ibin"], status: 3, mentions: ["fifo.fbin"]),
        Case(name: "gt: unwritable output", args: ["gt", "--base", "$/base.fbin", "--queries", "$/query.fbin", "-k", "5", "--output", "$/plain.txt/g.ibin"], status: 11, mentions: ["plain.txt/g.ibin"]),
        // info, verify, convert
        Case(name: "info: FIFO", args: ["info", "$/fifo.fbin"], status: 3, mentions: ["fifo.fbin", "FIFO"]),
        Case(name: "info: zero-byte file", args: ["info", "$/empty.fbin"], status: 4, mentions: ["empty.fbin"]),
        Case(name: "verify: not an index", args: ["verify", "$/adir.fbin"], status: 8, mentions: ["adir.fbin"]),
        Case(name: "convert: FIFO input", args: ["convert", "$/fifo.fbin", "$/c.fvecs"], status: 3, mentions: ["fifo.fbin"]),
        Case(name: "convert: unwritable output", args: ["convert", "$/base.fbin", "$/plain.txt/c.fvecs"], status: 11, mentions: ["plain.txt/c.fvecs"]),
    ]

    @Test(arguments: cases)
    func badInputExitsWithItsCode(_ c: Case) throws {
        let f = try Self.fixture()
        let r = try runFathom(c.args.map { $0.replacingOccurrences(of: "$", with: f.dir.path) } + (c.args[0] == "info" ? [] : ["--quiet"]))
        #expect(r.status == c.status, "\(c.name): exit \(r.status), stderr: \(r.stderr)")
        // `verify` reports its problems on stdout (they are its result); the others on stderr.
        let message = c.args[0] == "verify" ? r.stdout : r.stderr
        for m in c.mentions {
            #expect(message.contains(m), "\(c.name): the message does not mention '\(m)': \(message)")
        }
        if c.status != 0 && c.args.contains("--output") && c.args[0] == "search" {
            #expect(!FileManager.default.fileExists(atPath: f.dir.file("out.ibin")), "\(c.name): results written despite the error")
        }
    }
}

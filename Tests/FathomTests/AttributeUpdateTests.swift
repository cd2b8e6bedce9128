import FathomCodecs
import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Attributes on insert (docs/updates.md, "Attributes"): filtered searches of an updated index
/// equal a brute-force filtered scan of the live rows — after inserts (values outside the
/// built ranges included), deletes, replay, maintenance's splits and moves, and a checkpoint —
/// and a bad attribute row is refused whole, naming the row and the column.
@Suite struct AttributeUpdateTests {
    /// One row's attributes, as the reference evaluates them.
    struct Row {
        var price: Double, color: Int, n: Int64, tags: [Int]
        var values: [String: AttributeValue] {
            ["price": .float(price), "color": .category("c\(color)"), "n": .int(n), "tags": .tags(tags.map { "t\($0)" })]
        }
    }

    /// The filters checked, with their reference predicates. `n = 4`, `n >= 4` and
    /// `price > 120` match inserted rows only (values the build never saw: the int column's
    /// cells were narrowed to 0…3 at build, the float column's to 0…100). The built `n` is
    /// the vector's quadrant (so each list's summary holds few of its values) and the
    /// inserted `n` is random: `n = 1` is walked (not ranked exactly), and a list whose summary
    /// was not widened by an inserted row would be skipped.
    static var filters: [(String, (Row) -> Bool)] { [
        ("n = 1", { $0.n == 1 }),
        ("n <= 1 AND price < 50", { $0.n <= 1 && $0.price < 50 }),
        ("price < 5", { $0.price < 5 }),
        ("color = 'c1' AND price < 20", { $0.color == 1 && $0.price < 20 }),
        ("n = 4", { $0.n == 4 }),
        ("n >= 4 OR price > 120", { $0.n >= 4 || $0.price > 120 }),
        ("n = 3 AND tags HAS 't1'", { $0.n == 3 && $0.tags.contains(1) }),
        ("NOT color IN ('c0','c2') AND price BETWEEN 10 AND 60", { ![0, 2].contains($0.color) && $0.price >= 10 && $0.price <= 60 }),
        ("price < -1", { $0.price < -1 }),
    ] }

    static let everything = SearchParameters(probes: 100_000, maxDistRatio: .infinity, headListSize: 100_000)

    static func row(_ m: Matrix, _ i: Int) -> [Float] { Array(UnsafeBufferPointer(start: m.row(i), count: m.cols)) }

    /// Base rows (`vectors` given) draw from the built ranges, `n` the vector's quadrant
    /// around the medians of its first two components; inserted rows go past the ranges.
    static func attributes(_ count: Int, seed: UInt64, vectors: Matrix?) -> [Row] {
        var rng = SeededRandom(seed: seed)
        var quadrant: (Int) -> Int64 = { _ in Int64(rng.below(6)) }
        if let v = vectors {
            let m0 = (0..<count).map { v.row($0)[0] }.sorted()[count / 2], m1 = (0..<count).map { v.row($0)[1] }.sorted()[count / 2]
            quadrant = { i in (v.row(i)[0] > m0 ? 2 : 0) + (v.row(i)[1] > m1 ? 1 : 0) }
        }
        return (0..<count).map { i in
            Row(price: vectors == nil ? rng.uniform() * 200 - 50 : rng.uniform() * 100, color: rng.below(5),
                n: quadrant(i), tags: [rng.below(3), 3 + rng.below(3)])
        }
    }

    /// The live rows by label: vector and attributes.
    struct Live {
        var rows: [UInt64: (UnsafeMutablePointer<Float>, Row)] = [:]
    }

    /// Every filter, every query: the labels returned at exhaustive probes equal the exact
    /// filtered top 10 of the live rows (min(10, matches) of them, every one matching).
    static func expectExact(_ index: VectorIndex, _ live: Live, queries q: Matrix, _ when: String) throws {
        let d = q.cols
        var walked = 0
        for (text, pred) in filters {
            let f = try index.prepareFilter(text)
            let matching = live.rows.filter { pred($0.value.1) }
            for i in 0..<q.rows {
                var scored = matching.map { (Distance.l2sq(q.row(i), $0.value.0, d), $0.key) }
                scored.sort { (a: (Float, UInt64), b: (Float, UInt64)) -> Bool in a.0 < b.0 || (a.0 == b.0 && a.1 < b.1) }
                let truth = Set(scored.prefix(10).map(\.1))
                let (got, exact) = try index.withSearcher { s in
                    (try s.search(UnsafeBufferPointer(start: q.row(i), count: d), k: 10, parameters: everything, filter: f), s.stats.exactPath)
                }
                if text == "n = 1" && !exact { walked += 1 }
                #expect(got.count == min(10, matching.count), "\(when), \(text): \(got.count) results for \(matching.count) matches")
                #expect(Set(got.map(\.label)) == truth, "\(when), \(text), query \(i)")
            }
        }
        #expect(walked == q.rows, "\(when): n = 1 walked \(walked) of \(q.rows) queries")
    }

    /// A built index over 3,000 vectors with attributes, and 3,000 vectors of another mixture
    /// (the data drifts to it, so maintenance splits) with their attributes.
    static func setUp(_ dir: TempDir) throws -> (base: Matrix, drift: Matrix, queries: Matrix, baseRows: [Row], driftRows: [Row]) {
        let (b, _) = try writeSynthetic(dir: dir, n: 3000, d: 16, clusters: 12, seed: 7, base: "base.fbin")
        let (x, q) = try writeSynthetic(dir: dir, n: 3000, d: 16, nq: 12, clusters: 12, seed: 11, base: "drift.fbin", queries: "dq.fbin")
        let baseRows = attributes(3000, seed: 5, vectors: b), driftRows = attributes(3000, seed: 6, vectors: nil)
        try buildWithAttributes(dir, header: "price:float,color:category,n:int,tags:tags",
                                rows: baseRows.map { "\($0.price),c\($0.color),\($0.n),\($0.tags.map { "t\($0)" }.joined(separator: ";"))" },
                                codec: .none)
        return (b, x, q, baseRows, driftRows)
    }

    static func manual() -> UpdatePolicy { var p = UpdatePolicy(); p.background = false; return p }
    static let firstLabel: UInt64 = 100_000

    static func insert(_ w: MutableVectorIndex, _ m: Matrix, _ rows: Range<Int>, attributes: [Row], live: inout Live) throws {
        try w.insert(labels: rows.map { firstLabel + UInt64($0) }, vectors: UnsafeBufferPointer(start: m.row(rows.lowerBound), count: rows.count * m.cols),
                     attributes: rows.map { attributes[$0].values })
        for i in rows { live.rows[firstLabel + UInt64(i)] = (m.row(i), attributes[i]) }
    }

    @Test func filtersAreExactOnInsertedRowsThroughReplayMaintenanceAndCheckpoint() throws {
        let dir = TempDir()
        let s = try Self.setUp(dir)
        var live = Live()
        for i in 0..<3000 { live.rows[UInt64(i)] = (s.base.row(i), s.baseRows[i]) }
        do {
            let w = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
            defer { w.close() }
            #expect(w.attributeSchema?.names == ["price", "color", "n", "tags"])
            let before = w.snapshot()
            let stale = try before.prepareFilter("n = 4")
            try Self.insert(w, s.drift, 0..<1500, attributes: s.driftRows, live: &live)
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after inserts")
            // A filter prepared on the snapshot before the inserts still finds them.
            let want = live.rows.filter { $0.value.1.n == 4 }.count
            #expect(try w.snapshot().search(Self.row(s.queries, 0), k: 1000, parameters: Self.everything, filter: stale).count == want)
            // Deleted rows never come back: inserted matching rows and base rows.
            var deleted = 0
            for i in 0..<1500 where s.driftRows[i].n == 4 && i % 3 == 0 {
                #expect(try w.delete(label: Self.firstLabel + UInt64(i))); live.rows[Self.firstLabel + UInt64(i)] = nil; deleted += 1
            }
            for i in stride(from: 0, to: 3000, by: 11) { try w.delete(label: UInt64(i)); live.rows[UInt64(i)] = nil }
            // An upsert replaces the attributes with the vector.
            var moved = s.driftRows[1]; moved.n = 5; moved.price = 150
            try w.upsert(label: Self.firstLabel + 1, vector: Self.row(s.drift, 1), attributes: moved.values)
            live.rows[Self.firstLabel + 1] = (s.drift.row(1), moved)
            try w.flush()
            #expect(deleted > 10)
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after deletes")
        }
        do {
            // Replay rebuilds the inserted rows' attributes and the widened summaries.
            let w = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
            defer { w.close() }
            #expect(w.replayedRecords > 1500)
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after replay")
            try Self.insert(w, s.drift, 1500..<3000, attributes: s.driftRows, live: &live)
            let stats = try w.maintain()
            #expect(stats.splits > 0 && stats.reassigned > 0, "\(stats)")
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after maintenance")
        }
        do {
            // Replay of the splits, attaches and moved vectors (new ids carrying their rows).
            let w = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
            defer { w.close() }
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after maintenance and replay")
            #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)   // the log replays read-only
            try w.checkpoint()
            try Self.expectExact(w.snapshot(), live, queries: s.queries, "after checkpoint")
        }
        // The checkpointed version keeps every live row's attributes in attrs.bin.
        let index = try VectorIndex.open(at: dir.file("idx"))
        #expect(index.count == live.rows.count)
        try Self.expectExact(index, live, queries: s.queries, "checkpointed index")
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }

    /// `fathom insert --attributes` (CSV and JSON lines): the rows reach the filters; a bad
    /// row is refused naming the attributes file, the row and the column, nothing applied;
    /// an attributed index refuses an insert without them.
    @Test func cliInsertTakesAttributeFiles() throws {
        let dir = TempDir()
        let s = try Self.setUp(dir)
        var live = Live()
        for i in 0..<3000 { live.rows[UInt64(i)] = (s.base.row(i), s.baseRows[i]) }
        try UpdateTests.write(s.drift, 0..<300, to: dir.file("a.fbin"))
        try UpdateTests.write(s.drift, 300..<600, to: dir.file("b.fbin"))
        func csv(badRow: Int?) -> String {
            "price:float,color,n,tags\n" + (0..<300).map { i -> String in
                let r = s.driftRows[i]
                return "\(r.price),\(i == badRow ? "purple" : "c\(r.color)"),\(r.n),\(r.tags.map { "t\($0)" }.joined(separator: ";"))"
            }.joined(separator: "\n") + "\n"
        }
        try csv(badRow: nil).write(toFile: dir.file("a.csv"), atomically: true, encoding: .utf8)
        let jsonl = (300..<600).map { i -> String in
            let r = s.driftRows[i]
            return "{\"price\": \(r.price), \"color\": \"c\(r.color)\", \"n\": \(r.n), \"tags\": [\(r.tags.map { "\"t\($0)\"" }.joined(separator: ", "))]}"
        }.joined(separator: "\n") + "\n"
        try jsonl.write(toFile: dir.file("b.jsonl"), atomically: true, encoding: .utf8)
        // Without attributes, and with a bad row: refused, nothing applied.
        var r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("a.fbin"), "--quiet"])
        #expect(r.status != 0 && r.stderr.contains("--attributes") && r.stderr.contains("price, color, n, tags"), "\(r.stderr)")
        try csv(badRow: 7).write(toFile: dir.file("bad.csv"), atomically: true, encoding: .utf8)
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("a.fbin"), "--attributes", dir.file("bad.csv"), "--quiet"])
        #expect(r.status != 0, "\(r.stderr)")
        for n in ["bad.csv", "input row 7", "\"color\"", "\"purple\""] { #expect(r.stderr.contains(n), "\(r.stderr)") }
        #expect(try VectorIndex.openCurrent(at: dir.file("idx")).liveCount == 3000)
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("a.fbin"), "--attributes", dir.file("a.csv"),
                           "--labels", try Self.labels(dir, 0..<300), "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("b.fbin"), "--attributes", dir.file("b.jsonl"),
                           "--labels", try Self.labels(dir, 300..<600), "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        for i in 0..<600 { live.rows[Self.firstLabel + UInt64(i)] = (s.drift.row(i), s.driftRows[i]) }
        try Self.expectExact(try VectorIndex.openCurrent(at: dir.file("idx")), live, queries: s.queries, "after fathom insert")
    }

    /// An attributed insert record whose row is damaged but whose checksum was recomputed
    /// (a bug, not a torn write) fails the open naming updates.wal, the record's offset and
    /// the column; the log is not cut.
    @Test func aDamagedAttributeRowInTheLogIsReported() throws {
        let dir = TempDir()
        let s = try Self.setUp(dir)
        do {
            let w = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
            defer { w.close() }
            var live = Live()
            try Self.insert(w, s.drift, 0..<3, attributes: s.driftRows, live: &live)
        }
        let log = dir.file("idx/updates.wal")
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: log)))
        let size = bytes.count
        // The first record (after the 64-byte header): op 10, m heads, 16 floats, then the row
        // (f64 price, u32 color code, …): make the color code one the dictionary lacks.
        let at = 64
        #expect(bytes[at + 8] == 10)
        let m = Int(bytes[at + 17])
        let color = at + 18 + 4 * m + 4 * 16 + 4 + 8
        for k in 0..<4 { bytes[color + k] = 0xFF }
        let len = bytes.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self))) }
        let crc = bytes.withUnsafeBytes { crc32c($0.baseAddress! + at + 8, len, 0) }
        withUnsafeBytes(of: crc.littleEndian) { for k in 0..<4 { bytes[at + 4 + k] = $0[k] } }
        try Data(bytes).write(to: URL(fileURLWithPath: log))
        do {
            _ = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
            Issue.record("a damaged attribute row was replayed")
        } catch let e as FathomError {
            #expect(e.code == .corruptIndex && e.path == log && e.offset == UInt64(at), "\(e)")
            #expect(e.message.contains("\"color\"") && e.message.contains("attribute row"), "\(e.message)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: log)).count == size)
    }

    static func labels(_ dir: TempDir, _ rows: Range<Int>) throws -> String {
        let path = dir.file("labels-\(rows.lowerBound).txt")
        try rows.map { String(firstLabel + UInt64($0)) }.joined(separator: "\n").appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func badAttributeRowsAreRefusedWholeNamingTheRowAndColumn() throws {
        let dir = TempDir()
        let s = try Self.setUp(dir)
        let w = try MutableVectorIndex.open(at: dir.file("idx"), policy: Self.manual())
        defer { w.close() }
        func refuse(_ bad: [String: AttributeValue]?, _ needles: [String]) {
            var rows: [[String: AttributeValue]?] = (0..<4).map { s.driftRows[$0].values }
            rows[2] = bad
            do {
                if rows.allSatisfy({ $0 != nil }) {
                    try w.insert(labels: (0..<4).map { Self.firstLabel + UInt64($0) },
                                 vectors: UnsafeBufferPointer(start: s.drift.row(0), count: 4 * s.drift.cols), attributes: rows.map { $0! })
                } else {
                    try w.insert(label: Self.firstLabel + 2, vector: Self.row(s.drift, 2), attributes: bad)
                }
                Issue.record("accepted \(String(describing: bad))")
            } catch let e as FathomError {
                #expect(e.code == .invalidArgument)
                for n in needles { #expect(e.message.contains(n), "\(e.message)") }
            } catch { Issue.record("\(error)") }
            #expect(w.pendingUpdates == 0 && w.count == 3000 && !w.contains(Self.firstLabel))
        }
        var row = s.driftRows[2].values
        row["weight"] = .float(1)
        refuse(row, ["row 2", "\"weight\"", "price, color, n, tags"])
        row = s.driftRows[2].values; row["price"] = .float(.nan)
        refuse(row, ["row 2", "\"price\"", "finite"])
        row = s.driftRows[2].values; row["color"] = .category("c9")
        refuse(row, ["row 2", "\"color\"", "\"c9\"", "rebuild"])
        row = s.driftRows[2].values; row["tags"] = .tags(["t1", "t99"])
        refuse(row, ["row 2", "\"tags\"", "\"t99\""])
        row = s.driftRows[2].values; row["n"] = .float(1.5)
        refuse(row, ["row 2", "\"n\"", "int"])
        row = s.driftRows[2].values; row["n"] = nil
        refuse(row, ["row 2", "\"n\"", "missing"])
        refuse(nil, ["attributes missing", "price, color, n, tags"])
        // An index without attributes refuses them.
        let plain = TempDir()
        _ = try writeSynthetic(dir: plain, n: 500, d: 8)
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05
        try IndexBuilder(input: plain.file("base.fbin"), output: plain.file("idx"), options: o).build()
        let p = try MutableVectorIndex.open(at: plain.file("idx"), policy: Self.manual())
        defer { p.close() }
        #expect(p.attributeSchema == nil)
        #expect(throws: FathomError.self) { try p.insert(label: 9999, vector: [Float](repeating: 1, count: 8), attributes: ["price": .float(1)]) }
        #expect(p.pendingUpdates == 0)
    }
}

import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
@testable import FathomCodecs
import FathomCore
import FathomMath

// Filter language, attribute tables, attribute codes and summaries (docs/filters.md).

// MARK: - Test support

/// The filter tests' seeded generator: SplitMix64 (FathomMath) with the draws below.
typealias FilterTestRNG = SplitMix64

extension SplitMix64 {
    init(_ seed: UInt64) { self.init(seed: seed) }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &self) }
    mutating func chance(_ p: Double) -> Bool { unit() < p }
    /// Zipf-like index in 0..<n.
    mutating func skewed(_ n: Int) -> Int { min(n - 1, Int(Double(n) * pow(unit(), 2.5))) }
}

enum FilterFixtures {
    static let colors = ["red", "blue", "green", "black", "white", "grey", "pink", "teal", "navy", "gold", "it's", "a,b"]
    static let vocabulary = (0..<40).map { "t\($0)" }

    /// A random table with skewed, tied and negative values in every column type.
    static func table(rows n: Int, seed: UInt64) -> AttributeTable {
        var g = FilterTestRNG(seed)
        var price = [Double](), score = [Double](), qty = [Int64](), year = [Int64](), flag = [Int64]()
        var color = [UInt32](), brand = [UInt32](), offsets: [UInt32] = [0], tagIDs = [UInt32]()
        for _ in 0..<n {
            price.append(g.chance(0.7) ? (g.unit() * 100_000).rounded() / 100 : exp(g.unit() * 9))
            score.append((0..<4).reduce(0.0) { acc, _ in acc + g.unit() } - 2)
            qty.append(g.chance(0.8) ? Int64(g.int(0...9)) : (g.chance(0.75) ? Int64(g.int(10...999)) : Int64(g.int(-1_000_000...1_000_000))))
            year.append(Int64(2025 - g.skewed(36)))
            flag.append(g.chance(0.05) ? 1 : 0)
            color.append(UInt32(g.skewed(colors.count)))
            brand.append(UInt32(g.int(0...2999)))
            var t = Set<UInt32>()
            for _ in 0..<g.int(0...4) { t.insert(UInt32(g.skewed(vocabulary.count))) }
            tagIDs += t.sorted()
            offsets.append(UInt32(tagIDs.count))
        }
        return try! AttributeTable(
            names: ["price", "score", "qty", "year", "flag", "color", "brand", "tags"],
            columns: [.float(price), .float(score), .int(qty), .int(year), .int(flag),
                      .category(codes: color, dictionary: AttributeDictionary(colors)),
                      .category(codes: brand, dictionary: AttributeDictionary((0..<3000).map { "b\($0)" })),
                      .tags(offsets: offsets, ids: tagIDs, dictionary: AttributeDictionary(vocabulary))])
    }

    /// A literal drawn from the column's data (sometimes perturbed or absent).
    static func numericLiteral(_ t: AttributeTable, _ c: Int, _ g: inout FilterTestRNG) -> FilterValue {
        let v = t.value(row: g.int(0...(t.count - 1)), column: c)
        switch v {
        case .int(let x):
            if g.chance(0.15) { return .double(Double(x) + 0.5) }
            if g.chance(0.05) { return .int(x &+ Int64(g.int(-3...3))) }
            return .int(x)
        case .float(let x):
            if g.chance(0.1) { return .int(Int64(x.rounded())) }
            return .double(x)
        default: fatalError()
        }
    }

    static func stringLiteral(_ t: AttributeTable, _ c: Int, _ g: inout FilterTestRNG) -> String {
        if g.chance(0.05) { return "no-such-value" }
        switch t.value(row: g.int(0...(t.count - 1)), column: c) {
        case .category(let s): return s
        case .tags(let l): return l.isEmpty ? vocabulary[g.skewed(vocabulary.count)] : l[g.int(0...(l.count - 1))]
        default: fatalError()
        }
    }

    /// A random single-column predicate.
    static func leaf(_ t: AttributeTable, column c: Int, _ g: inout FilterTestRNG) -> FilterExpression {
        let name = t.schema.columns[c].name
        switch t.schema.columns[c].type {
        case .int, .float:
            switch g.int(0...9) {
            case 0...5:
                return .compare(column: name, op: FilterComparison.allCases[g.int(0...5)], value: numericLiteral(t, c, &g))
            case 6...7:
                var a = numericLiteral(t, c, &g), b = numericLiteral(t, c, &g)
                if g.chance(0.85), let x = a.numeric, let y = b.numeric, x > y { swap(&a, &b) }
                return .between(column: name, low: a, high: b)
            default:
                return .isIn(column: name, values: (0..<g.int(1...5)).map { _ in numericLiteral(t, c, &g) })
            }
        case .category:
            switch g.int(0...5) {
            case 0...2: return .compare(column: name, op: .equal, value: .string(stringLiteral(t, c, &g)))
            case 3: return .compare(column: name, op: .notEqual, value: .string(stringLiteral(t, c, &g)))
            default: return .isIn(column: name, values: (0..<g.int(1...4)).map { _ in .string(stringLiteral(t, c, &g)) })
            }
        case .tags:
            switch g.int(0...3) {
            case 0...1: return .has(column: name, tag: stringLiteral(t, c, &g))
            case 2: return .hasAny(column: name, tags: (0..<g.int(1...3)).map { _ in stringLiteral(t, c, &g) })
            default: return .hasAll(column: name, tags: (0..<g.int(1...2)).map { _ in stringLiteral(t, c, &g) })
            }
        }
    }

    static func expression(_ t: AttributeTable, depth: Int, _ g: inout FilterTestRNG) -> FilterExpression {
        if depth == 0 || g.chance(0.3) { return leaf(t, column: g.int(0...(t.columns.count - 1)), &g) }
        switch g.int(0...4) {
        case 0...1: return .and(expression(t, depth: depth - 1, &g), expression(t, depth: depth - 1, &g))
        case 2...3: return .or(expression(t, depth: depth - 1, &g), expression(t, depth: depth - 1, &g))
        default: return .not(expression(t, depth: depth - 1, &g))
        }
    }

    /// The reference semantics, written directly on decoded values.
    static func reference(_ e: FilterExpression, _ t: AttributeTable, _ r: Int) -> Bool {
        func val(_ name: String) -> AttributeValue { t.value(row: r, column: t.columnIndex(name)!) }
        func cmp(_ a: Double, _ op: FilterComparison, _ b: Double) -> Bool {
            switch op {
            case .equal: return a == b
            case .notEqual: return a != b
            case .less: return a < b
            case .lessOrEqual: return a <= b
            case .greater: return a > b
            case .greaterOrEqual: return a >= b
            }
        }
        func num(_ v: AttributeValue) -> Double {
            switch v { case .int(let x): return Double(x); case .float(let x): return x; default: fatalError() }
        }
        switch e {
        case .compare(let c, let op, let v):
            if case .string(let s) = v, case .category(let x) = val(c) { return op == .equal ? x == s : x != s }
            return cmp(num(val(c)), op, v.numeric!)
        case .between(let c, let lo, let hi):
            let x = num(val(c))
            return x >= lo.numeric! && x <= hi.numeric!
        case .isIn(let c, let vs):
            switch val(c) {
            case .category(let x): return vs.contains(.string(x))
            case let v: return vs.contains { $0.numeric! == num(v) }
            }
        case .has(let c, let tag):
            guard case .tags(let l) = val(c) else { fatalError() }
            return l.contains(tag)
        case .hasAny(let c, let tags):
            guard case .tags(let l) = val(c) else { fatalError() }
            return tags.contains(where: l.contains)
        case .hasAll(let c, let tags):
            guard case .tags(let l) = val(c) else { fatalError() }
            return tags.allSatisfy(l.contains)
        case .not(let x): return !reference(x, t, r)
        case .and(let a, let b): return reference(a, t, r) && reference(b, t, r)
        case .or(let a, let b): return reference(a, t, r) || reference(b, t, r)
        }
    }

    /// <package>/../shared/datasets (or $FATHOM_SHARED_DATASETS).
    static func datasetsDirectory(filePath: String = #filePath) -> String {
        if let env = ProcessInfo.processInfo.environment["FATHOM_SHARED_DATASETS"] { return env }
        let pkg = URL(fileURLWithPath: filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return pkg.deletingLastPathComponent().appendingPathComponent("shared/datasets").path
    }
    static func dataset(_ relative: String) -> String? {
        let p = datasetsDirectory() + "/" + relative
        return FileManager.default.fileExists(atPath: p) ? p : nil
    }
}

/// The "at N" offset in a parse error, and the caret's column (minus the 2-space indent).
func filterErrorPosition(_ e: FathomError) -> (offset: Int?, caret: Int?) {
    var offset: Int? = nil
    if let r = e.message.range(of: #" at (\d+)"#, options: .regularExpression) {
        offset = Int(e.message[r].dropFirst(4))
    }
    let lines = e.message.split(separator: "\n", omittingEmptySubsequences: false)
    var caret: Int? = nil
    if let last = lines.last, let i = last.unicodeScalars.firstIndex(of: "^") {
        caret = last.unicodeScalars.distance(from: last.unicodeScalars.startIndex, to: i) - 2
    }
    return (offset, caret)
}

/// Expects `body` (parsing or binding `input`) to throw a `.parse` error whose message
/// contains `phrase` and points at `offset`, by its " at N" and by its caret.
func expectParseError(_ input: String, at offset: Int, containing phrase: String,
                      sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("no error for \(input)", sourceLocation: sourceLocation)
    } catch let e as FathomError {
        #expect(e.code == .parse, sourceLocation: sourceLocation)
        #expect(e.message.contains(phrase), "\(e.message)", sourceLocation: sourceLocation)
        let pos = filterErrorPosition(e)
        #expect(pos.offset == offset, "\(e.message)", sourceLocation: sourceLocation)
        #expect(pos.caret == offset, "\(e.message)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
    }
}

func writeFilterTestFile(_ dir: TempDir, _ name: String, _ text: String) -> String {
    let p = dir.file(name)
    _ = FileManager.default.createFile(atPath: p, contents: Data(text.utf8))
    return p
}

// MARK: - Parser

@Suite struct FilterParserTests {
    @Test func parsesTheSpecExampleAndMatchesTheBuilder() throws {
        let text = "price < 100 AND (color IN ('red','blue') OR year >= 2020) AND tags HAS 'cat'"
        let parsed = try FilterParser.parse(text).expression
        let built: FilterExpression = .column("price") < 100
            && (.column("color").isIn(["red", "blue"]) || .column("year") >= 2020)
            && .column("tags").has("cat")
        #expect(parsed == built)
        #expect(parsed.description == "price < 100 AND (color IN ('red', 'blue') OR year >= 2020) AND tags HAS 'cat'")
        #expect(parsed.columnNames == ["price", "color", "year", "tags"])
        #expect(parsed.predicateCount == 4)
    }

    @Test func precedenceIsNotThenAndThenOr() throws {
        let a: FilterExpression = .column("a") == 1, b: FilterExpression = .column("b") == 2, c: FilterExpression = .column("c") == 3
        #expect(try FilterExpression(parsing: "a = 1 OR b = 2 AND c = 3") == .or(a, .and(b, c)))
        #expect(try FilterExpression(parsing: "a = 1 AND b = 2 OR c = 3") == .or(.and(a, b), c))
        #expect(try FilterExpression(parsing: "NOT a = 1 AND b = 2") == .and(.not(a), b))
        #expect(try FilterExpression(parsing: "NOT (a = 1 OR b = 2)") == .not(.or(a, b)))
        #expect(try FilterExpression(parsing: "a = 1 OR b = 2 OR c = 3") == .or(.or(a, b), c))
        #expect(try FilterExpression(parsing: "(a = 1 OR b = 2) AND c = 3") == .and(.or(a, b), c))
        #expect(try FilterExpression(parsing: "NOT NOT a = 1") == .not(.not(a)))
        // BETWEEN's AND is not the logical AND
        #expect(try FilterExpression(parsing: "a BETWEEN 1 AND 2 AND b = 2") == .and(.between(column: "a", low: 1, high: 2), b))
    }

    @Test func keywordsAreCaseInsensitiveAndAliasesWork() throws {
        let e = try FilterExpression(parsing: "x between 1 and 2 or Y in (1, 2.5, -3) aNd not t has any ('a') AND t Has All ('b','c')")
        #expect(e == .or(.between(column: "x", low: 1, high: 2),
                         .and(.and(.isIn(column: "Y", values: [1, 2.5, -3]), .not(.hasAny(column: "t", tags: ["a"]))),
                              .hasAll(column: "t", tags: ["b", "c"]))))
        #expect(try FilterExpression(parsing: "a == 1") == .compare(column: "a", op: .equal, value: 1))
        #expect(try FilterExpression(parsing: "a <> 1") == .compare(column: "a", op: .notEqual, value: 1))
        #expect(try FilterExpression(parsing: "a NOT IN (1)") == .not(.isIn(column: "a", values: [1])))
        #expect(try FilterExpression(parsing: "a NOT BETWEEN 1 AND 2") == .not(.between(column: "a", low: 1, high: 2)))
        #expect(try FilterExpression(parsing: "t NOT HAS 'x'") == .not(.has(column: "t", tag: "x")))
    }

    @Test func literals() throws {
        func value(_ s: String) throws -> FilterValue {
            guard case .compare(_, _, let v) = try FilterExpression(parsing: "x = " + s) else { throw FathomError(.parse, "not a comparison") }
            return v
        }
        #expect(try value("42") == .int(42))
        #expect(try value("-42") == .int(-42))
        #expect(try value("+7") == .int(7))
        #expect(try value("4.5") == .double(4.5))
        #expect(try value("-.5") == .double(-0.5))
        #expect(try value("1e3") == .double(1000))
        #expect(try value("2.5E-2") == .double(0.025))
        #expect(try value("9223372036854775807") == .int(.max))
        #expect(try value("9223372036854775808") == .double(9223372036854775808.0))
        #expect(try value("'it''s'") == .string("it's"))
        #expect(try value("''") == .string(""))
        #expect(try value("'a, b (c) AND d'") == .string("a, b (c) AND d"))
        #expect(try value("'ünï ✓'") == .string("ünï ✓"))
        #expect(try FilterExpression(parsing: "\"unit price\" < 3") == .compare(column: "unit price", op: .less, value: 3))
        #expect(try FilterExpression(parsing: "\"and\" = 'x'") == .compare(column: "and", op: .equal, value: "x"))
        #expect(try FilterExpression(parsing: "x>-3") == .compare(column: "x", op: .greater, value: -3))
    }

    @Test func roundTripsThroughText() throws {
        let texts = [
            "a = 1", "a != 'x'", "a < -2.5", "a BETWEEN 1 AND 2.5", "a IN (1, 2, 3)", "t HAS 'x'",
            "t HAS ANY ('a', 'b''c')", "t HAS ALL ('a')", "NOT a = 1", "NOT (a = 1 AND b = 2)",
            "a = 1 AND (b = 2 AND c = 3)", "a = 1 OR (b = 2 OR c = 3)", "(a = 1 OR b = 2) AND NOT (c = 3 OR d = 4)",
            "\"my col\" >= 1e-05", "\"OR\" = 'and'", "x = 1e+20", "x = -0.0",
        ]
        for t in texts {
            let e = try FilterExpression(parsing: t)
            #expect(try FilterExpression(parsing: e.description) == e, "\(t) -> \(e.description)")
        }
        // Random trees: print, parse back, compare.
        var g = FilterTestRNG(11)
        let table = FilterFixtures.table(rows: 200, seed: 3)
        for _ in 0..<2000 {
            let e = FilterFixtures.expression(table, depth: 4, &g)
            let back = try FilterExpression(parsing: e.description)
            #expect(back == e, "\(e.description)")
        }
    }

    /// (input, offset of the offending token, a phrase of the message)
    static let syntaxErrors: [(String, Int, String)] = [
        ("price < AND 3", 8, "unexpected 'AND' at 8, expected a value"),
        ("price <", 7, "unexpected end of input at 7, expected a value"),
        ("(price < 3", 10, "expected AND, OR or ')'"),
        ("price < 3)", 9, "unexpected ')' at 9, expected AND, OR or the end of the filter"),
        ("price 3", 6, "expected an operator"),
        ("price < 'abc", 8, "unterminated string starting at 8"),
        ("price < 1.2.3", 8, "malformed number '1.2.3' at 8"),
        ("price < 12abc", 8, "malformed number '12abc' at 8"),
        ("price # 3", 6, "unexpected character '#' at 6"),
        ("price ! 3", 6, "unexpected '!' at 6"),
        ("color IN ()", 10, "unexpected ')' at 10, expected a value"),
        ("color IN ('a' 'b')", 14, "expected ',' or ')'"),
        ("color IN 'a'", 9, "expected '('"),
        ("x BETWEEN 1 OR 2", 12, "unexpected 'OR' at 12, expected AND"),
        ("tags HAS 3", 9, "expected a 'tag', ANY (...) or ALL (...)"),
        ("tags HAS ANY 'a'", 13, "expected '('"),
        ("tags HAS ALL (1)", 14, "expected a 'string'"),
        ("AND x = 1", 0, "unexpected 'AND' at 0, expected a column name, NOT or '('"),
        ("x = 1 AND", 9, "unexpected end of input at 9"),
        ("x = 1 AND OR y = 2", 10, "unexpected 'OR' at 10"),
        ("x NOT = 1", 6, "expected BETWEEN, IN or HAS after NOT"),
        ("x = 1 y = 2", 6, "unexpected 'y' at 6"),
        ("x = - 3", 4, "unexpected '-' at 4, expected a number after the sign"),
        ("x = 1e999", 4, "number '1e999' at 4 is out of range"),
        ("\"x = 1", 0, "unterminated quoted column name starting at 0"),
        ("'x' = 1", 0, "unexpected ''x'' at 0, expected a column name"),
        ("   ", 0, "empty filter"),
        ("x = 1 AND (y = 2 OR )", 20, "unexpected ')' at 20, expected a column name"),
    ]

    @Test(arguments: syntaxErrors)
    func syntaxErrorPointsAtTheToken(input: String, offset: Int, phrase: String) {
        expectParseError(input, at: offset, containing: phrase) { _ = try FilterParser.parse(input) }
    }

    @Test func nestingAndOperatorLimits() {
        let deep = String(repeating: "(", count: 100) + "x = 1" + String(repeating: ")", count: 100)
        #expect(throws: FathomError.self) { try FilterParser.parse(deep) }
        let long = (0..<600).map { "x = \($0)" }.joined(separator: " OR ")
        do { _ = try FilterParser.parse(long); Issue.record("no error") } catch let e as FathomError {
            #expect(e.code == .parse && e.message.contains("too many AND/OR operators"))
        } catch { Issue.record("\(error)") }
        #expect(throws: Never.self) { try FilterParser.parse((0..<300).map { "x = \($0)" }.joined(separator: " OR ")) }
    }

    @Test func longInputsShowAWindowWithTheCaret() {
        let text = (0..<40).map { "x = \($0)" }.joined(separator: " AND ") + " AND # AND y = 1"
        do { _ = try FilterParser.parse(text); Issue.record("no error") } catch let e as FathomError {
            let lines = e.message.split(separator: "\n")
            #expect(lines.count == 3)
            let shown = Array(lines[1].unicodeScalars), caret = Array(lines[2].unicodeScalars)
            let i = caret.firstIndex(of: "^")!
            #expect(shown[i] == "#")
        } catch { Issue.record("\(error)") }
    }
}

// MARK: - Binding

@Suite struct FilterBindingTests {
    static let schema = AttributeSchema(["price": .float, "year": .int, "color": .category, "tags": .tags])

    /// (input, offset of the offending token, a phrase of the message)
    static let bindErrors: [(String, Int, String)] = [
        ("prise < 3", 0, "unknown column 'prise' at 0; the columns are: price, year, color, tags"),
        ("Price < 3", 0, "did you mean 'price'?"),
        ("tags < 3", 5, "operator '<' at 5 cannot compare column 'tags', which holds tags"),
        ("price IN ('a')", 10, "'a' at 10 is a string but column 'price' is float"),
        ("year IN (1, 2, 'x')", 15, "'x' at 15 is a string but column 'year' is int"),
        ("color < 'x'", 6, "operator '<' at 6 cannot compare column 'color', a category"),
        ("color = 3", 8, "3 at 8 is a number but column 'color' is a category"),
        ("price HAS 'x'", 6, "HAS at 6 needs a tags column"),
        ("color HAS ANY ('x')", 6, "HAS at 6 needs a tags column"),
        ("year BETWEEN 1 AND 'z'", 19, "'z' at 19 is a string"),
        ("color BETWEEN 'a' AND 'b'", 6, "BETWEEN at 6 needs a numeric column"),
        ("tags IN ('a')", 5, "IN at 5 cannot test column 'tags'"),
        ("year = 1 AND (price > 2 OR tags = 'a')", 32, "operator '=' at 32"),
        ("NOT year = 1 AND color NOT IN (1)", 31, "1 at 31 is a number"),
    ]

    @Test(arguments: bindErrors)
    func bindErrorPointsAtTheToken(input: String, offset: Int, phrase: String) throws {
        let parsed = try FilterParser.parse(input)
        expectParseError(input, at: offset, containing: phrase) { _ = try parsed.bind(to: Self.schema) }
    }

    @Test func builtExpressionsGetErrorsWithoutPositions() {
        do {
            _ = try (FilterExpression.column("tags") < 3).bind(to: Self.schema)
            Issue.record("no error")
        } catch let e as FathomError {
            #expect(e.code == .parse)
            #expect(e.message.contains("cannot compare column 'tags'"))
            #expect(!e.message.contains("\n"))
        } catch { Issue.record("\(error)") }
    }

    @Test func constantsAreFolded() throws {
        let t = FilterFixtures.table(rows: 100, seed: 1)
        #expect(try FilterExpression(parsing: "color = 'purple'").bind(to: t.schema).isAlwaysFalse)
        #expect(try FilterExpression(parsing: "color != 'purple'").bind(to: t.schema).isAlwaysTrue)
        #expect(try FilterExpression(parsing: "qty BETWEEN 5 AND 1").bind(to: t.schema).isAlwaysFalse)
        #expect(try FilterExpression(parsing: "qty = 2.5").bind(to: t.schema).isAlwaysFalse)
        #expect(try FilterExpression(parsing: "qty < 1e30").bind(to: t.schema).isAlwaysTrue)
        #expect(try FilterExpression(parsing: "tags HAS ALL ('t1', 'nope')").bind(to: t.schema).isAlwaysFalse)
        let f = try FilterExpression(parsing: "price < 3 AND color = 'red'").bind(to: t.schema)
        #expect(!f.isAlwaysTrue && !f.isAlwaysFalse)
        #expect(f.columns == [0, 5])
    }
}

// MARK: - Evaluation

@Suite struct FilterEvaluationTests {
    @Test func exactEvaluationMatchesTheReference() throws {
        let t = FilterFixtures.table(rows: 3000, seed: 5)
        let q = try QuantizedAttributes(table: t)
        var g = FilterTestRNG(99)
        var matchedSome = 0
        for _ in 0..<300 {
            let e = FilterFixtures.expression(t, depth: 3, &g)
            let f = try e.bind(to: t.schema)
            let unresolved = try e.bind(to: t.schema.withoutDictionaries)   // strings resolved per row
            var hits = 0
            for r in 0..<t.count {
                let want = FilterFixtures.reference(e, t, r)
                let got = f.matches(row: r, table: t)
                if got != want { Issue.record("row \(r): \(e.description) gave \(got), expected \(want)"); break }
                if r % 7 == 0 { #expect(unresolved.matches(row: r, table: t) == want) }
                if got { hits += 1 }
            }
            #expect(f.matchingRows(in: t).count == hits)
            #expect(f.matchingRows(in: t, quantized: q) == f.matchingRows(in: t))
            if hits > 0 && hits < t.count { matchedSome += 1 }
        }
        #expect(matchedSome > 100)   // the predicates are not trivial
    }

    @Test func int64ExtremesAndFloatLiteralsOnIntColumns() throws {
        let vals: [Int64] = [.min, .min + 1, -3, -1, 0, 1, 2, 3, .max - 1, .max]
        let t = try AttributeTable(names: ["v"], columns: [.int(vals)])
        let q = try QuantizedAttributes(table: t)
        let cases: [(String, [Int64])] = [
            ("v < -9223372036854775807", [.min]),
            ("v > 9223372036854775806", [.max]),
            ("v >= 9223372036854775807", [.max]),
            ("v < 2.5", [.min, .min + 1, -3, -1, 0, 1, 2]),
            ("v <= -0.5", [.min, .min + 1, -3, -1]),
            ("v > -1.5", [-1, 0, 1, 2, 3, .max - 1, .max]),
            ("v >= 1e30", []),
            ("v > -1e30", vals),
            ("v BETWEEN -1.5 AND 2.5", [-1, 0, 1, 2]),
            ("v IN (1, 2.0, 2.5)", [1, 2]),
            ("v != 0", vals.filter { $0 != 0 }),
        ]
        for (text, want) in cases {
            let f = try FilterExpression(parsing: text).bind(to: t.schema)
            #expect(f.matchingRows(in: t).map { vals[Int($0)] } == want, "\(text)")
            let cf = f.cellMask(quantized: q)
            for r in 0..<t.count where f.matches(row: r, table: t) {
                #expect(q.withCodes(row: r) { cf.mayMatch(codes: $0) }, "\(text) row \(r)")
            }
        }
    }

    /// Options that exercise every code path: default, a tiny budget, folded categories and tag signatures.
    static let quantizerVariants: [AttributeQuantizerOptions] = {
        var small = AttributeQuantizerOptions(); small.numericBitBudget = 6
        var folded = AttributeQuantizerOptions(); folded.maxCategoryBits = 3; folded.tagSignatureBits = 12
        var wide = AttributeQuantizerOptions(); wide.numericBitBudget = 64; wide.tagSignatureBits = 32
        var some = AttributeQuantizerOptions(); some.columns = ["qty", "color", "tags"]; some.tagSignatureBits = 8
        return [AttributeQuantizerOptions(), small, folded, wide, some]
    }()

    @Test func codeFilterHasNoFalseNegatives() throws {
        let t = FilterFixtures.table(rows: 10_000, seed: 21)
        var g = FilterTestRNG(2024)
        let exprs = (0..<240).map { _ in FilterFixtures.expression(t, depth: 3, &g) }
        let bound = try exprs.map { try $0.bind(to: t.schema) }
        let truth = bound.map { f in (0..<t.count).map { f.matches(row: $0, table: t) } }
        for opts in Self.quantizerVariants {
            let q = try QuantizedAttributes(table: t, options: opts)
            var rejected = 0, nonMatching = 0
            for (k, f) in bound.enumerated() {
                let cf = f.cellMask(quantized: q)
                let (bits, passing) = cf.mask(over: q)
                var missed = 0, pass = 0, disagree = 0
                for r in 0..<t.count {
                    let may = bits[r >> 6] & (1 << UInt64(r & 63)) != 0
                    if r % 5 == 0 && may != q.withCodes(row: r, { cf.mayMatch(codes: $0) }) { disagree += 1 }
                    if may { pass += 1 }
                    if truth[k][r] && !may { missed += 1 }
                    if !truth[k][r] { nonMatching += 1; if !may { rejected += 1 } }
                }
                #expect(pass == passing && disagree == 0)
                #expect(missed == 0, "false negatives for \(exprs[k].description) with \(opts)")
            }
            if opts == AttributeQuantizerOptions() {
                #expect(Double(rejected) / Double(max(1, nonMatching)) > 0.5, "rejected \(rejected) of \(nonMatching)")
            }
        }
    }

    @Test func codeFilterRejectsMostNonMatchingRowsForSelectivePredicates() throws {
        let t = FilterFixtures.table(rows: 10_000, seed: 8)
        let q = try QuantizedAttributes(table: t)
        let selective = [
            "price < 10", "price > 980", "price BETWEEN 500 AND 520", "score > 1.3", "year = 2010", "year <= 1992",
            "qty BETWEEN 3 AND 4", "qty > 5000", "color = 'teal'", "color IN ('gold', 'navy')", "brand = 'b17'",
            "flag = 1", "price < 200 AND color = 'red'", "NOT (year >= 1995)", "year = 2001 OR qty = 7",
        ]
        for text in selective {
            let f = try FilterExpression(parsing: text).bind(to: t.schema)
            let cf = f.cellMask(quantized: q)
            var nonMatching = 0, rejected = 0, matching = 0
            for r in 0..<t.count {
                let may = q.withCodes(row: r) { cf.mayMatch(codes: $0) }
                if f.matches(row: r, table: t) { matching += 1; #expect(may) } else {
                    nonMatching += 1
                    if !may { rejected += 1 }
                }
            }
            #expect(Double(matching) / Double(t.count) < 0.2, "\(text) is not selective: \(matching)")
            #expect(Double(rejected) >= 0.9 * Double(nonMatching), "\(text): rejected \(rejected) of \(nonMatching)")
        }
        // Tag signatures reject most rows without the tag.
        var o = AttributeQuantizerOptions(); o.tagSignatureBits = 32
        let qt = try QuantizedAttributes(table: t, options: o)
        let f = try FilterExpression(parsing: "tags HAS 't35'").bind(to: t.schema)
        let cf = f.cellMask(quantized: qt)
        var nonMatching = 0, rejected = 0
        for r in 0..<t.count where !f.matches(row: r, table: t) {
            nonMatching += 1
            if !qt.withCodes(row: r, { cf.mayMatch(codes: $0) }) { rejected += 1 }
        }
        #expect(Double(rejected) > 0.8 * Double(nonMatching))
    }

    @Test func summariesNeverRejectAPostingWithAMatch() throws {
        let t = FilterFixtures.table(rows: 6000, seed: 31)
        var g = FilterTestRNG(7)
        // Postings: random groups, and groups of rows sorted by price (tight ranges, so many rejections).
        var postings = [[UInt32]]()
        for _ in 0..<60 { postings.append((0..<g.int(1...80)).map { _ in UInt32(g.int(0...(t.count - 1))) }) }
        let byPrice = (0..<t.count).sorted { t.double(row: $0, column: 0) < t.double(row: $1, column: 0) }
        for k in stride(from: 0, to: t.count, by: 100) { postings.append(byPrice[k..<min(t.count, k + 100)].map { UInt32($0) }) }
        let byColor = (0..<t.count).sorted { t.categoryCode(row: $0, column: 5) < t.categoryCode(row: $1, column: 5) }
        for k in stride(from: 0, to: t.count, by: 150) { postings.append(byColor[k..<min(t.count, k + 150)].map { UInt32($0) }) }
        let q = try QuantizedAttributes(table: t)
        let summaries = postings.map { AttributeSummary.summarize(ids: $0, table: t) }
        let partial = postings.map { AttributeSummary.summarize(ids: $0, table: t, quantized: q) }
        for s in summaries + partial {
            #expect(try AttributeSummary.decode(s.encode()) == s)
        }
        var rejectedWithoutMatch = 0
        for _ in 0..<250 {
            let e = FilterFixtures.expression(t, depth: 3, &g)
            let f = try e.bind(to: t.schema)
            for (k, p) in postings.enumerated() {
                let anyMatch = p.contains { f.matches(row: Int($0), table: t) }
                let may = f.mayMatch(summary: summaries[k])
                if anyMatch {
                    #expect(may, "posting \(k) has a match for \(e.description)")
                    #expect(f.mayMatch(summary: partial[k]))
                } else if !may { rejectedWithoutMatch += 1 }
            }
        }
        #expect(rejectedWithoutMatch > 1000)
        // Folded bitsets (dictionary larger than the bitset) are conservative too.
        let brands = (0..<t.count).map { UInt32($0 % 5000) }
        let big = try AttributeTable(names: ["brand"], columns: [.category(codes: brands, dictionary: AttributeDictionary((0..<5000).map { "b\($0)" }))])
        let s = AttributeSummary.summarize(ids: [3, 4, 5003 % UInt32(t.count)], table: big)
        if case .codes(_, let m, let exact) = s.columns[0] { #expect(m == 4096 && !exact) } else { Issue.record("no bitset") }
        #expect(try FilterExpression(parsing: "brand = 'b3'").bind(to: big.schema).mayMatch(summary: s))
        #expect(!(try FilterExpression(parsing: "brand = 'b77'").bind(to: big.schema).mayMatch(summary: s)))
        #expect(!(try FilterExpression(parsing: "brand = 'b3'").bind(to: big.schema).mayMatch(summary: AttributeSummary.summarize(ids: [], table: big))))
    }

    @Test func selectivityEstimatesAreClose() throws {
        let t = FilterFixtures.table(rows: 20_000, seed: 77)
        let q = try QuantizedAttributes(table: t)
        var g = FilterTestRNG(5)
        var checked = 0, worst = 0.0
        for c in 0..<t.columns.count {
            for _ in 0..<60 {
                let e = FilterFixtures.leaf(t, column: c, &g)
                let f = try e.bind(to: t.schema)
                let truth = Double(f.matchingRows(in: t).count) / Double(t.count)
                let est = f.estimateSelectivity(quantized: q, table: t)
                let ok = abs(est - truth) <= 0.02 || (est <= 2 * truth && truth <= 2 * est)
                #expect(ok, "\(e.description): estimated \(est), true \(truth)")
                worst = max(worst, abs(est - truth))
                checked += 1
            }
        }
        // Same-column combinations are estimated jointly, other columns independently.
        for text in ["price > 100 AND price < 300", "year >= 2020 OR year = 1995", "NOT (qty BETWEEN 0 AND 4)",
                     "color = 'red' OR color = 'blue'", "price < 500 AND color = 'red'", "tags HAS 't0' AND NOT tags HAS 't1'"] {
            let f = try FilterExpression(parsing: text).bind(to: t.schema)
            let truth = Double(f.matchingRows(in: t).count) / Double(t.count)
            let est = f.estimateSelectivity(quantized: q, table: t)
            #expect(abs(est - truth) <= 0.02 || (est <= 2 * truth && truth <= 2 * est), "\(text): \(est) vs \(truth)")
        }
        #expect(checked == 480)
    }
}

// MARK: - Quantizer

@Suite struct AttributeQuantizerTests {
    @Test func energyAllocationSharesTheBudget() {
        #expect(AttributeQuantizer.allocateCells(energies: [1, 1, 1, 1], budgetBits: 32, maxCells: [256, 256, 256, 256]) == [256, 256, 256, 256])
        #expect(AttributeQuantizer.allocateCells(energies: [1, 1, 1, 1], budgetBits: 6, maxCells: [256, 256, 256, 256]) == [4, 4, 2, 2])
        // a two-valued column stops at 2 cells; its bits go to the others
        #expect(AttributeQuantizer.allocateCells(energies: [1, 1, 1], budgetBits: 9, maxCells: [2, 256, 256]) == [2, 16, 16])
        // higher energy gets more cells
        #expect(AttributeQuantizer.allocateCells(energies: [16, 1], budgetBits: 4, maxCells: [256, 256]) == [8, 2])
        #expect(AttributeQuantizer.allocateCells(energies: [0, 1], budgetBits: 40, maxCells: [256, 256]) == [1, 256])
    }

    @Test func cellBoundariesAreOrderedAndHandleTies() {
        var g = FilterTestRNG(1)
        let v = (0..<5000).map { _ in g.unit() * g.unit() * 100 }.sorted()
        let b = AttributeQuantizer.cellBoundaries(sorted: v, cells: 16)
        #expect(b.count >= 12 && b.count <= 15)
        #expect(zip(b, b.dropFirst()).allSatisfy { $0 < $1 })
        // 98% zeros: the zeros get a cell, the tail is still cut
        let skew = ([Double](repeating: 0, count: 9800) + (1...200).map(Double.init)).sorted()
        let bs = AttributeQuantizer.cellBoundaries(sorted: skew, cells: 16)
        #expect(bs.count >= 8 && bs.first! > 0 && bs.first! <= 20)
        // few distinct values: one cell each
        #expect(AttributeQuantizer.cellBoundaries(sorted: [1, 1, 2, 5, 5, 5], cells: 4) == [2, 5])
        #expect(AttributeQuantizer.cellBoundaries(sorted: [3, 3, 3], cells: 8) == [])
    }

    @Test func codesAndCellsAgreeWithTheValues() throws {
        let t = FilterFixtures.table(rows: 4000, seed: 12)
        let q = try QuantizedAttributes(table: t)
        #expect(q.bytesPerVector == (q.columns.map { $0.bits }.reduce(0, +) + 7) / 8)
        #expect(q.columns.filter { $0.kind == .numeric }.map(\.bits).reduce(0, +) <= 32)
        #expect(q.columns.first { $0.name == "flag" }!.bits == 1)
        for (s, c) in q.columns.enumerated() where c.kind == .numeric {
            #expect(c.cellCounts.reduce(0, +) == UInt32(t.count))
            for r in stride(from: 0, to: t.count, by: 7) {
                let cell = q.code(row: r, column: s)
                let (lo, hi) = q.cellRange(column: s, cell: cell)
                let v = t.double(row: r, column: c.tableColumn)
                #expect(lo <= v && v < hi, "\(c.name) row \(r): \(v) not in [\(lo), \(hi))")
            }
        }
        let color = q.slot(named: "color")!
        for r in 0..<100 { #expect(q.code(row: r, column: color) == Int(t.categoryCode(row: r, column: 5))) }
        // encode/decode keeps the codes and the cells
        let back = try QuantizedAttributes.decode(q.encode(), schema: t.schema)
        #expect(back.codes == q.codes && back.columns == q.columns && back.bytesPerVector == q.bytesPerVector)
        var bad = q.encode(); bad[bad.count / 2] ^= 0x40
        #expect(throws: FathomError.self) { try QuantizedAttributes.decode(bad, schema: t.schema) }
        // encoding a row again gives the same bytes
        var buf = [UInt8](repeating: 0xFF, count: q.bytesPerVector)
        for r in [0, 17, 3999] {
            buf.withUnsafeMutableBytes { q.encode(row: r, of: t, into: $0.baseAddress!) }
            #expect(buf == Array(q.codes[(r * q.bytesPerVector)..<((r + 1) * q.bytesPerVector)]))
        }
    }
}

// MARK: - Attribute files

@Suite struct AttributeFileTests {
    @Test func csvQuotingAndTypes() throws {
        let dir = TempDir()
        let csv = "\u{FEFF}id,name,price,qty,labels,note:category\r\n"
            + "0,\"Smith, John\",1.5,3,a;b,\"say \"\"hi\"\"\"\r\n"
            + "1,plain,2,4,,\"two\nlines\"\r\n"
            + "2,\"\",-0.25,-7,c; a ;,12\r\n"
        let p = writeFilterTestFile(dir, "attrs.csv", csv)
        let t = try AttributeTable.loadCSV(path: p, expectedRows: 3)
        #expect(t.count == 3)
        #expect(t.names == ["name", "price", "qty", "labels", "note"])    // id is checked, not stored
        #expect(t.schema.columns.map(\.type) == [.category, .float, .int, .tags, .category])
        #expect(t.value(row: 0, column: 0) == .category("Smith, John"))
        #expect(t.value(row: 0, column: 4) == .category("say \"hi\""))
        #expect(t.value(row: 1, column: 4) == .category("two\nlines"))
        #expect(t.value(row: 2, column: 0) == .category(""))
        #expect(t.value(row: 2, column: 1) == .float(-0.25))
        #expect(t.value(row: 2, column: 2) == .int(-7))
        #expect(t.value(row: 0, column: 3) == .tags(["a", "b"]))
        #expect(t.value(row: 1, column: 3) == .tags([]))
        #expect(Set(t.tagIDs(row: 2, column: 3).map { t.schema.columns[3].dictionary![$0] }) == ["a", "c"])
        let d = t.describeSchema()
        #expect(d.contains("price") && d.contains("float") && d.contains("labels") && d.contains("tags"))
        let f = try FilterExpression(parsing: "name = 'Smith, John' AND labels HAS 'b'").bind(to: t.schema)
        #expect(f.matchingRows(in: t) == [0])
    }

    func expectParseError(_ path: String, _ phrases: [String], code: FathomError.Code = .parse,
                          schema: AttributeSchema? = nil, rows: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try AttributeTable.loadCSV(path: path, schema: schema, expectedRows: rows)
            Issue.record("no error", sourceLocation: sourceLocation)
        } catch let e as FathomError {
            #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
            #expect(e.path == path, sourceLocation: sourceLocation)
            for ph in phrases { #expect(e.description.contains(ph), "\(e)", sourceLocation: sourceLocation) }
        } catch { Issue.record("\(error)", sourceLocation: sourceLocation) }
    }

    @Test func csvErrorsNameLineAndColumn() throws {
        let dir = TempDir()
        var rows = "price:float,color\n"
        for i in 0..<20 { rows += i == 15 ? "12x,red\n" : "\(i).5,red\n" }
        expectParseError(writeFilterTestFile(dir, "a.csv", rows), ["line 17, column \"price\": \"12x\" is not a number"])
        // declared by schema instead of header
        expectParseError(writeFilterTestFile(dir, "b.csv", "price,color\n1,red\nabc,blue\n"),
                         ["line 3, column \"price\": \"abc\" is not a number"], schema: AttributeSchema(["price": .int]))
        // inferred from the first 10,000 rows, wrong later
        var late = "qty\n"
        for i in 0..<10_005 { late += i == 10_002 ? "many\n" : "\(i)\n" }
        expectParseError(writeFilterTestFile(dir, "c.csv", late), ["line 10004, column \"qty\"", "\"many\" is not a number", "qty:category"])
        expectParseError(writeFilterTestFile(dir, "d.csv", "a,b,c\n1,2,3\n4,5\n"), ["line 3", "missing column \"c\""])
        expectParseError(writeFilterTestFile(dir, "e.csv", "a,b\n1,2,3\n"), ["line 2", "3 fields but the header has 2"])
        expectParseError(writeFilterTestFile(dir, "f.csv", "a,b\n1,2\n3,4\n"), ["2 rows but 5 were expected"], code: .malformedFile, rows: 5)
        expectParseError(writeFilterTestFile(dir, "g.csv", "id,a\n0,x\n2,y\n"), ["line 3, column \"id\"", "not the row number 1"])
        expectParseError(writeFilterTestFile(dir, "h.csv", "a,b\n1,\"open\n2,3\n"), ["line 2", "never closed"])
        expectParseError(writeFilterTestFile(dir, "i.csv", "a,b\n1,\"x\"y\n"), ["line 2", "after the closing quote"])
        expectParseError(writeFilterTestFile(dir, "j.csv", ""), ["empty", "header"])
        expectParseError(writeFilterTestFile(dir, "k.csv", "a,a\n1,2\n"), ["column \"a\" appears twice"])
        expectParseError(writeFilterTestFile(dir, "l.csv", "a:int\n1.5\n"), ["line 2", "\"1.5\" is not an integer"])
        expectParseError(writeFilterTestFile(dir, "m.csv", "a:float\nnan\n"), ["\"nan\" is not a finite number"])
        expectParseError(writeFilterTestFile(dir, "n.csv", "a,b\n1,2\n"), ["missing column \"zz\""], schema: AttributeSchema(["zz": .int]))
        expectParseError(dir.file("absent.csv"), ["no such attribute file"], code: .fileNotFound)
        // the byte offset points at the field
        do { _ = try AttributeTable.loadCSV(path: writeFilterTestFile(dir, "o.csv", "a:int\n1\nzz\n"), expectedRows: nil) }
        catch let e as FathomError { #expect(e.offset == 8) }
    }

    @Test func csvInference() throws {
        let dir = TempDir()
        let p = writeFilterTestFile(dir, "x.csv", "i,f,c,t,e\n1,1,a,x;y,\n-2,2.5,3,z,\n3,1e3,b,,\n")
        let t = try AttributeTable.loadCSV(path: p, expectedRows: nil)
        #expect(t.schema.columns.map(\.type) == [.int, .float, .category, .tags, .category])
        let headerOnly = try AttributeTable.loadCSV(path: writeFilterTestFile(dir, "h.csv", "a,b\n"), expectedRows: 0)
        #expect(headerOnly.count == 0 && headerOnly.names == ["a", "b"])
        let idOnly = try AttributeTable.loadCSV(path: writeFilterTestFile(dir, "i.csv", "id\n0\n1\n2\n"), expectedRows: 3)
        #expect(idOnly.count == 3 && idOnly.columns.isEmpty)
        #expect(try AttributeTable.decode(idOnly.encode()).count == 3)
        // blank lines are skipped; no trailing newline is fine
        let blank = try AttributeTable.loadCSV(path: writeFilterTestFile(dir, "b.csv", "a,b\n1,2\n\n3,4"), expectedRows: 2)
        #expect(blank.value(row: 1, column: 1) == .int(4))
    }

    @Test func jsonLines() throws {
        let dir = TempDir()
        let p = writeFilterTestFile(dir, "a.jsonl", """
            {"id": 0, "price": 1.5, "n": 3, "color": "red", "tags": ["a", "b"], "ok": true}
            {"tags": [], "color": "bl\\"ue\\u00e9", "n": -4, "price": 2, "id": 1, "ok": false}

            {"id": 2, "price": 1e2, "n": 5, "color": "red", "tags": ["c"], "ok": true}
            """)
        let t = try AttributeTable.loadJSONLines(path: p, expectedRows: 3)
        #expect(t.names == ["price", "n", "color", "tags", "ok"])
        #expect(t.schema.columns.map(\.type) == [.float, .int, .category, .tags, .category])
        #expect(t.value(row: 1, column: 2) == .category("bl\"ueé"))
        #expect(t.value(row: 0, column: 3) == .tags(["a", "b"]))
        #expect(t.value(row: 2, column: 0) == .float(100))
        func fails(_ text: String, _ phrase: String, code: FathomError.Code = .parse, rows: Int? = nil) {
            do {
                _ = try AttributeTable.loadJSONLines(path: writeFilterTestFile(dir, "e.jsonl", text), expectedRows: rows)
                Issue.record("no error for \(text)")
            } catch let e as FathomError {
                #expect(e.code == code && e.message.contains(phrase), "\(e)")
            } catch { Issue.record("\(error)") }
        }
        fails("{\"a\": 1}\n{\"b\": 2}\n", "line 2: key \"b\" is not in the first line's keys")
        fails("{\"a\": 1, \"b\": 2}\n{\"a\": 2}\n", "line 2: missing column \"b\"")
        fails("{\"a\": null}\n", "line 1, character 7: \"a\" is null")
        fails("{\"a\": 1}\n{\"a\": \"x\"", "line 2, character 10: expected ',' or '}'")
        fails("{\"a\": 1}\n{\"a\": 2}\n", "2 rows but 3 were expected", code: .malformedFile, rows: 3)
        fails("[1]\n", "expected '{'")
    }

    @Test func tableBinaryRoundTrip() throws {
        let t = FilterFixtures.table(rows: 500, seed: 4)
        let bytes = t.encode()
        let back = try AttributeTable.decode(bytes)
        #expect(back.schema == t.schema && back.count == t.count)
        for r in stride(from: 0, to: t.count, by: 3) {
            for c in 0..<t.columns.count { #expect(back.value(row: r, column: c) == t.value(row: r, column: c)) }
        }
        var bad = bytes; bad[40] ^= 1
        #expect(throws: FathomError.self) { try AttributeTable.decode(bad) }
        #expect(throws: FathomError.self) { try AttributeTable.decode(Array(bytes.prefix(30))) }
        // schema JSON (for a manifest) round-trips too
        let json = try JSONEncoder().encode(t.schema.withoutDictionaries)
        #expect(try JSONDecoder().decode(AttributeSchema.self, from: json) == t.schema.withoutDictionaries)
    }

    @Test(.enabled(if: FilterFixtures.dataset("pypi-minilm-384/base_attrs.csv") != nil))
    func loadsPyPIAttributes() throws {
        let t = try AttributeTable.loadCSV(path: FilterFixtures.dataset("pypi-minilm-384/base_attrs.csv")!, expectedRows: 60_000)
        let type = Dictionary(uniqueKeysWithValues: t.schema.columns.map { ($0.name, $0.type) })
        #expect(type["year"] == .int && type["month"] == .category && type["name"] == .category)
        #expect(type["version"] == .category && type["rank"] == .int && type["popular"] == .int && type["n_chars"] == .int)
        #expect(type["id"] == nil)
        let q = try QuantizedAttributes(table: t)
        let f = try FilterExpression(parsing: "popular = 1 AND year >= 2024").bind(to: t.schema)
        let truth = f.matchingRows(in: t)
        let cf = f.cellMask(quantized: q)
        let (_, passing) = cf.mask(over: q)
        for r in truth { #expect(q.withCodes(row: Int(r)) { cf.mayMatch(codes: $0) }) }
        #expect(passing >= truth.count && passing < 4 * max(truth.count, 100))
        let est = f.estimateSelectivity(quantized: q, table: t)
        let real = Double(truth.count) / Double(t.count)
        #expect(abs(est - real) <= 0.02 || (est < 2 * real && real < 2 * est), "\(est) vs \(real)")
    }

    @Test(.enabled(if: FilterFixtures.dataset("fashion-mnist-784/base_labels.csv") != nil))
    func loadsFashionMNISTLabels() throws {
        let t = try AttributeTable.loadCSV(path: FilterFixtures.dataset("fashion-mnist-784/base_labels.csv")!, expectedRows: 60_000)
        #expect(t.schema["label"]?.type == .int)
        #expect(t.schema["class_name"]?.type == .category)
        #expect(t.schema["class_name"]?.dictionary?.count == 10)
        #expect(t.schema["class_name"]?.dictionary?.code(of: "Ankle boot") != nil)
        let q = try QuantizedAttributes(table: t)
        let f = try FilterExpression(parsing: "class_name = 'Ankle boot'").bind(to: t.schema)
        let truth = f.matchingRows(in: t).count
        #expect(f.cellMask(quantized: q).mask(over: q).passing == truth)    // categories are exact
        #expect(abs(f.estimateSelectivity(quantized: q, table: t) - Double(truth) / 60_000) < 1e-9)
    }
}

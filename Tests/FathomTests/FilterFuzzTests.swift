import Foundation
import Testing
@testable import Fathom
import FathomCodecs
import FathomCore

/// Seeded mutation fuzzing of the filter parser and binder: every input either parses (and
/// then prints and re-parses to the same tree, and binds or fails with `.parse`) or fails with
/// a `.parse` FathomError; nothing crashes. N = 20,000 by default; set FATHOM_FUZZ_ITERATIONS
/// (e.g. `FATHOM_FUZZ_ITERATIONS=1000000 swift test -c release --filter FilterFuzz`).
@Suite struct FilterFuzzTests {
    static let seeds = [
        "price < 100 AND (color IN ('red','blue') OR year >= 2020) AND tags HAS 'cat'",
        "NOT (qty BETWEEN 1 AND 5) OR brand = 'b17'",
        "tags HAS ANY ('t1', 't2') AND tags HAS ALL ('t3')",
        "score >= -1.5e-3 AND score != 0.25 OR flag = 1",
        "color != 'it''s' AND \"year\" <= 2001",
        "x NOT IN (1, 2, 3) AND y NOT BETWEEN -1 AND 1 AND t NOT HAS 'z'",
        "((a = 1) OR (b = 2)) AND NOT NOT c < 3.5",
        "price == 3 OR price <> 4",
    ]
    static let fragments = [
        " AND ", " OR ", " NOT ", "(", ")", "'", "''", "\"", ",", " IN (", " BETWEEN ", " HAS ", " ANY ", " ALL ",
        "=", "!=", "<", "<=", ">", ">=", "-", ".", "e", "1e999", "9223372036854775808", "-0", "price", "tags", "color",
        "year", "'red'", " ", "\n", "\t", "\u{0}", "é", "✓", "\u{301}", "\r\n", "#", ";", "%", "_x", "0.5.", "--",
    ]

    static func mutate(_ s: String, _ g: inout FilterTestRNG) -> String {
        var u = Array(s.unicodeScalars)
        for _ in 0..<g.int(1...4) {
            let n = u.count
            switch g.int(0...7) {
            case 0 where n > 0:   // delete a range
                let a = g.int(0...(n - 1)), b = min(n, a + g.int(1...6))
                u.removeSubrange(a..<b)
            case 1:               // insert a fragment
                let f = fragments[g.int(0...(fragments.count - 1))]
                u.insert(contentsOf: f.unicodeScalars, at: g.int(0...n))
            case 2 where n > 0:   // replace a character by a random printable or special one
                let c: Unicode.Scalar = g.chance(0.8) ? Unicode.Scalar(UInt8(g.int(32...126))) : Unicode.Scalar(UInt32(g.int(0x80...0x2FFF))) ?? "?"
                u[g.int(0...(n - 1))] = c
            case 3 where n > 1:   // duplicate a range
                let a = g.int(0...(n - 1)), b = min(n, a + g.int(1...12))
                u.insert(contentsOf: u[a..<b], at: g.int(0...n))
            case 4:               // splice with another seed
                let other = Array(seeds[g.int(0...(seeds.count - 1))].unicodeScalars)
                let a = g.int(0...n), b = g.int(0...other.count)
                u = Array(u[..<a]) + Array(other[b...])
            case 5 where n > 1:   // swap two characters
                u.swapAt(g.int(0...(n - 1)), g.int(0...(n - 1)))
            case 6:               // truncate
                u = Array(u.prefix(g.int(0...n)))
            default:              // flip case of a range
                if n > 0 {
                    let a = g.int(0...(n - 1)), b = min(n, a + g.int(1...8))
                    for i in a..<b where u[i].isASCII {
                        let v = u[i].value
                        if v >= 97 && v <= 122 { u[i] = Unicode.Scalar(v - 32)! } else if v >= 65 && v <= 90 { u[i] = Unicode.Scalar(v + 32)! }
                    }
                }
            }
        }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: u)
        return String(out)
    }

    @Test func mutatedInputsParseOrFailWithParseErrors() throws {
        let n = ProcessInfo.processInfo.environment["FATHOM_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 20_000
        let schema = AttributeSchema(["price": .float, "qty": .int, "year": .int, "color": .category, "brand": .category,
                                      "tags": .tags, "t": .tags, "x": .int, "y": .float, "a": .int, "b": .int, "c": .float,
                                      "score": .float, "flag": .int])
        let table = FilterFixtures.table(rows: 64, seed: 1)
        var g = FilterTestRNG(0xF11_7E5)
        var parsed = 0, bound = 0, syntax = 0, binding = 0
        var problems = [String]()
        let start = Date()
        var corpus = Self.seeds
        for i in 0..<n {
            let base = corpus[g.int(0...(corpus.count - 1))]
            let input = Self.mutate(base, &g)
            do {
                let p = try FilterParser.parse(input)
                parsed += 1
                if corpus.count < 256 && i % 16 == 0 { corpus.append(input) }   // grow the corpus with valid inputs
                let again = try FilterParser.parse(p.expression.description)
                if again.expression != p.expression, problems.count < 10 {
                    problems.append("round trip changed \(input.debugDescription) -> \(p.expression.description.debugDescription)")
                }
                do {
                    let f = try p.bind(to: schema)
                    bound += 1
                    _ = try? p.bind(to: table.schema).matches(row: i % table.count, table: table)
                    _ = f.isAlwaysFalse
                } catch let e as FathomError {
                    binding += 1
                    if e.code != .parse, problems.count < 10 { problems.append("bind error \(e.code) for \(input.debugDescription)") }
                }
            } catch let e as FathomError {
                syntax += 1
                if (e.code != .parse || !e.message.contains("\n  ")), problems.count < 10 {
                    problems.append("\(e.code) without a caret for \(input.debugDescription): \(e.message)")
                }
            } catch {
                if problems.count < 10 { problems.append("non-Fathom error \(error) for \(input.debugDescription)") }
            }
        }
        let seconds = Date().timeIntervalSince(start)
        print("FilterFuzz: \(n) inputs in \(String(format: "%.2f", seconds)) s (\(String(format: "%.1f", Double(n) / max(seconds, 1e-9) / 1000)) K/s): \(parsed) parsed (\(bound) bound, \(binding) bind errors), \(syntax) syntax errors")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(parsed > n / 50 && syntax > n / 10)
    }
}

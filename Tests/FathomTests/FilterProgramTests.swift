import Foundation
import Testing
@testable import Fathom
import FathomCodecs

/// The compiled block program and the block code test against the row-at-a-time evaluators,
/// and the planner's cost model.
@Suite struct FilterProgramTests {
    /// Random filters over every column type: the program's mask equals `matches(row:)` on
    /// every row, whether the filter was bound with dictionaries or resolved at compile time;
    /// `select` keeps exactly the matching ids in order, with their slots.
    @Test func programEqualsTheEvaluatorOnRandomFilters() throws {
        let t = FilterFixtures.table(rows: 1500, seed: 41)
        var g = FilterTestRNG(4242)
        let scratch = FilterScratch()
        var ids = (0..<UInt32(t.count)).map { $0 }
        ids.shuffle(using: &g)                       // blocks of scattered rows, as in a posting
        var mask = [UInt8](repeating: 9, count: ids.count)
        var nontrivial = 0
        for trial in 0..<250 {
            let e = FilterFixtures.expression(t, depth: 4, &g)
            let f = try (trial % 5 == 0 ? e.bind(to: t.schema.withoutDictionaries) : e.bind(to: t.schema))
            let p = FilterProgram(f, table: t)
            ids.withUnsafeBufferPointer { ib in
                mask.withUnsafeMutableBufferPointer { mb in p.evaluate(ib.baseAddress!, count: ib.count, table: t, scratch: scratch, into: mb.baseAddress!) }
            }
            var want = [UInt32]()
            for (i, id) in ids.enumerated() {
                let m = f.matches(row: Int(id), table: t)
                if m { want.append(id) }
                if (mask[i] == 1) != m { Issue.record("\(e.description): row \(id) program \(mask[i]), evaluator \(m)"); break }
            }
            // select, in place, with an aux array following the ids
            var sel = ids
            var aux = (0..<Int32(ids.count)).map { $0 }
            let kept = sel.withUnsafeMutableBufferPointer { s in
                aux.withUnsafeMutableBufferPointer { a in p.select(s.baseAddress!, aux: a.baseAddress!, count: s.count, table: t, scratch: scratch) }
            }
            #expect(Array(sel.prefix(kept)) == want, "\(e.description)")
            #expect((0..<kept).allSatisfy { ids[Int(aux[$0])] == sel[$0] })
            if !want.isEmpty && want.count < t.count { nontrivial += 1 }
        }
        #expect(nontrivial > 100)
    }

    /// The block code test keeps exactly the rows `mayMatch(codes:)` keeps, never drops a
    /// match, and when `decides` is set it is the exact answer.
    @Test func codeSelectIsConservativeAndDecidesWhenExact() throws {
        let t = FilterFixtures.table(rows: 2000, seed: 8)
        let q = try QuantizedAttributes(table: t)
        var g = FilterTestRNG(77)
        var decided = 0
        let texts = ["qty = 3", "flag = 1", "color IN ('red', 'teal')", "flag = 1 AND NOT color = 'red'", "qty < 5 OR flag = 1"]
        var exprs = try texts.map { try FilterExpression(parsing: $0) }
        for _ in 0..<150 { exprs.append(FilterFixtures.expression(t, depth: 3, &g)) }
        for e in exprs {
            let f = try e.bind(to: t.schema)
            let cf = f.cellMask(quantized: q)
            var ids = (0..<UInt32(t.count)).map { $0 }
            let kept = ids.withUnsafeMutableBufferPointer { cf.select($0.baseAddress!, aux: nil, count: $0.count, quantized: q) }
            let may = (0..<t.count).filter { r in q.withCodes(row: r) { cf.mayMatch(codes: $0) } }.map { UInt32($0) }
            #expect(Array(ids.prefix(kept)) == may, "\(e.description)")
            let exact = f.matchingRows(in: t)
            #expect(Set(exact).isSubset(of: Set(may)), "\(e.description): the codes dropped a match")
            if cf.decides { decided += 1; #expect(may == exact, "\(e.description): decides but is not exact") }
        }
        // The category and small-int examples are decided by their codes.
        for text in texts { #expect(try FilterExpression(parsing: text).bind(to: t.schema).cellMask(quantized: q).decides, "\(text) \(q.columns.map { "\($0.name):\($0.bits)/\($0.cellCount)" })") }
        #expect(decided >= texts.count)
        // A float range has boundary cells: never decided by the codes.
        #expect(try !FilterExpression(parsing: "price < 123.45").bind(to: t.schema).cellMask(quantized: q).decides)
    }

    /// The cost model: the exact path when the matches cost fewer reads than the walk's
    /// postings and re-rank reads; the walk's postings grow as √(1/s).
    @Test func plannerChoosesByCost() {
        // 60K vectors, 4,000 heads, 16 probes, exact codec.
        let p50 = FilterPlanner.plan(matches: 30_000, count: 60_000, heads: 4000, probes: 16, rerank: 0)
        #expect(p50.kind == .walk && p50.plannedPostings == 23)
        let p1 = FilterPlanner.plan(matches: 600, count: 60_000, heads: 4000, probes: 16, rerank: 0)
        #expect(p1.kind == .walk && p1.plannedPostings == 160)
        let p01 = FilterPlanner.plan(matches: 60, count: 60_000, heads: 4000, probes: 16, rerank: 0)
        #expect(p01.kind == .exact && p01.exactCost == 60)
        // At a billion vectors 0.1% is a million reads: the walk, capped by the head count.
        let big = FilterPlanner.plan(matches: 1e6, count: 1_000_000_000, heads: 10_000_000, probes: 16, rerank: 40)
        #expect(big.kind == .walk && big.plannedPostings == 506 && big.walkCost == 546)
        #expect(FilterPlanner.plan(matches: 0, count: 1000, heads: 10, probes: 4, rerank: 0).kind == .exact)
        #expect(FilterPlanner.walkPostings(selectivity: 1e-9, probes: 8, heads: 300) == 300)
    }
}

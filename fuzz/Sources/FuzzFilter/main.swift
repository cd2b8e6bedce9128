// Fuzz target: the filter language (docs/filters.md). The input (as UTF-8, invalid bytes
// replaced) is parsed; a parsed filter must print and re-parse to the same tree, bind to a
// fixed schema or fail with .parse, and a bound filter is evaluated on a small fixed table
// (exact rows, quantized codes, per-posting style summaries are not involved).
import Fathom
import FathomCodecs
import FuzzSupport
import Foundation

nonisolated(unsafe) var table: AttributeTable! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let parsed: ParsedFilter
    do { parsed = try FilterParser.parse(text) } catch let e as FathomError {
        precondition(e.code == .parse, "parse failed with \(e.code), not .parse: \(e.message)")
        return 0
    } catch { fatalError("FilterParser.parse threw a non-FathomError: \(error)") }
    let printed = parsed.expression.description
    do {
        let again = try FilterParser.parse(printed)
        precondition(again.expression == parsed.expression,
                     "round trip changed the tree: \(text.debugDescription) printed as \(printed.debugDescription)")
    } catch { fatalError("the canonical text \(printed.debugDescription) of \(text.debugDescription) does not parse: \(error)") }
    do {
        let bound = try parsed.bind(to: table.schema)
        let rows = bound.matchingRows(in: table)
        for r in 0..<table.count { precondition(bound.matches(row: r, table: table) == rows.contains(UInt32(r))) }
    } catch let e as FathomError {
        precondition(e.code == .parse, "bind failed with \(e.code), not .parse: \(e.message)")
    } catch { fatalError("bind threw a non-FathomError: \(error)") }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let csv = scratch + "/filter-table.csv"
    writeFile(csv, Array(attributeCSV(rows: 40).utf8))
    do { table = try AttributeTable.loadCSV(path: csv, expectedRows: nil) }
    catch { fatalError("cannot load the filter table: \(error)") }
    writeSeedsIfAsked("filter") { dir in
        let seeds = [
            "price < 100 AND (color IN ('red','blue') OR year >= 2020) AND tags HAS 'cat'",
            "NOT (year BETWEEN 1991 AND 1995) OR color = 'it''s'",
            "tags HAS ANY ('t1', 't10') AND tags HAS ALL ('t3')",
            "price >= -1.5e-3 AND price != 0.25 OR year = 2001",
            "color != 'x,y' AND \"year\" <= 2001 AND \"price\" <> 3",
            "year NOT IN (1990, 1991, 2.5) AND price NOT BETWEEN -1 AND 1 AND tags NOT HAS 't2'",
            "((year = 1999) OR (price = 2.5)) AND NOT NOT year < 3.5",
            "price == 3 OR year <> 9223372036854775807 OR year < -9223372036854775808",
            // broken ones
            "price < AND 3", "color = 3", "tags < 3", "prise < 3", "year IN ()", "'unterminated",
            "12abc = 1", "year = 1.2.3", String(repeating: "(", count: 70) + "year = 1" + String(repeating: ")", count: 70),
        ]
        for (i, s) in seeds.enumerated() { writeFile(dir + "/seed-\(i)", Array(s.utf8)) }
    }
    return 0
}

@_cdecl("FuzzFilter_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

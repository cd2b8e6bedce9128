// Fuzz target: attribute files (docs/attributes.md). Each input is loaded both as CSV
// (AttributeTable.loadCSV) and as JSON lines (loadJSONLines), types inferred, no expected
// row count; a loaded table is read back cell by cell and quantized (OSQ codes) as a build
// would.
import Fathom
import FathomCodecs
import FuzzSupport
import Foundation

let csvPath = scratch + "/attrs.csv", jsonPath = scratch + "/attrs.jsonl"

func exercise(_ t: AttributeTable) throws {
    var h = 0
    for r in 0..<t.count { for c in 0..<t.columns.count { h &+= t.value(row: r, column: c).description.utf8.count } }
    _ = t.describeSchema()
    _ = try QuantizedAttributes(table: t)
    if h == 0x5EED_F00D { print("") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    writeFile(csvPath, data, size)
    expectingFathomErrors("AttributeTable.loadCSV") { try exercise(try AttributeTable.loadCSV(path: csvPath, expectedRows: nil)) }
    writeFile(jsonPath, data, size)
    expectingFathomErrors("AttributeTable.loadJSONLines") { try exercise(try AttributeTable.loadJSONLines(path: jsonPath, expectedRows: nil)) }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    writeSeedsIfAsked("attributes") { dir in
        writeFile(dir + "/valid.csv", Array(attributeCSV(rows: 12).utf8))
        writeFile(dir + "/valid.jsonl", Array(attributeJSONLines(rows: 12).utf8))
        let seeds: [(String, String)] = [
            ("inferred.csv", "id,price,color,tags\n0,1.5,red,a;b\n1,2,\"blue, dark\",c\n2,-3e2,\"say \"\"hi\"\"\",\n"),
            ("crlf-bom.csv", "\u{FEFF}year,name\r\n2001,\"multi\r\nline\"\r\n2002,x\r\n"),
            ("typed.csv", "n:int,f:float,c:category,t:tags\n9223372036854775807,1e308,a,x;y\n-9223372036854775808,-0.0,b,\n"),
            ("bad-id.csv", "id,x\n0,1\n2,3\n"),
            ("ragged.csv", "a,b\n1\n1,2,3\n"),
            ("unterminated.csv", "a,b\n1,\"open\n"),
            ("overflow.csv", "n:int\n99999999999999999999\n"),
            ("nan.csv", "f:float\nnan\ninf\n"),
            ("dup.csv", "a,a\n1,2\n"),
            ("mixed.jsonl", "{\"a\": 1, \"b\": [\"x\", \"y\"], \"c\": true}\n{\"a\": 2.5, \"b\": [], \"c\": false}\n"),
            ("escapes.jsonl", "{\"s\": \"\\u00e9\\n\\\"\", \"n\": -1e-3}\n{\"s\": \"\\ud83d\\ude00\", \"n\": 0}\n"),
            ("missing-key.jsonl", "{\"a\": 1, \"b\": 2}\n{\"a\": 1}\n"),
            ("nested.jsonl", "{\"a\": {\"b\": 1}}\n"),
            ("bad-surrogate.jsonl", "{\"s\": \"\\ud800\"}\n"),
        ]
        for (name, s) in seeds { writeFile(dir + "/" + name, Array(s.utf8)) }
    }
    return 0
}

@_cdecl("FuzzAttributes_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

import FathomCore
import Foundation

// Attribute rows added to an index after its build (inserted vectors): one row's values in a
// compact binary form fixed by the built table's schema (the form the update log stores),
// and an append-only column store of those rows that a built table is layered under.
// docs/updates.md, "Attributes".

/// Encodes one attribute row in the binary form of a table's schema (its column order, types
/// and dictionaries): per column, int → i64, float → f64, category → u32 code, tags → u32
/// count then that many u32 tag ids (ascending, distinct); little-endian. A category or tag
/// string the table's dictionary lacks is an error: a built index's dictionaries are fixed
/// (its codes and summaries are laid out over them), so such a row needs a rebuild.
///
/// Thread safety: immutable and `Sendable`.
public struct AttributeRowCodec: Sendable {
    /// The schema rows are encoded for (with dictionaries).
    public let schema: AttributeSchema
    /// Largest encoded row accepted, in bytes.
    public static let maxRowBytes = 65_536

    public init(schema: AttributeSchema) { self.schema = schema }

    /// Encodes `values` (column name → value; every column of the schema, no other).
    /// An int value is accepted for a float column.
    /// - Throws: `.invalidArgument` naming the column and value: a missing or unknown
    ///   column, a value of another type, a non-finite float, a category or tag string the
    ///   index was not built with, a row over ``maxRowBytes``.
    public func encode(_ values: [String: AttributeValue]) throws -> [UInt8] {
        for k in values.keys where schema.index(of: k) == nil {
            throw FathomError(.invalidArgument, "attribute column \"\(k)\" is not in the index (its columns: \(schema.names.joined(separator: ", ")))")
        }
        var w = AttributeBinaryWriter()
        for c in schema.columns {
            guard let v = values[c.name] else {
                throw FathomError(.invalidArgument, "attribute column \"\(c.name)\" is missing (every row needs all of \(schema.names.joined(separator: ", ")))")
            }
            func wrong() -> FathomError {
                FathomError(.invalidArgument, "attribute column \"\(c.name)\" is \(c.type) but the row gives \(Self.describe(v))")
            }
            switch (c.type, v) {
            case (.int, .int(let x)): w.i64(x)
            case (.float, .float(let x)):
                guard x.isFinite else { throw FathomError(.invalidArgument, "attribute column \"\(c.name)\" holds \(x); float attributes must be finite") }
                w.f64(x)
            case (.float, .int(let x)): w.f64(Double(x))
            case (.category, .category(let s)):
                w.u32(try code(s, c))
            case (.tags, .tags(let list)):
                let ids = Array(Set(try list.map { try code($0, c) })).sorted()
                w.u32(UInt32(ids.count)); w.u32s(ids)
            default: throw wrong()
            }
        }
        guard w.bytes.count <= Self.maxRowBytes else {
            throw FathomError(.invalidArgument, "the attribute row takes \(w.bytes.count) bytes, over the \(Self.maxRowBytes) an inserted row may take")
        }
        return w.bytes
    }

    private func code(_ s: String, _ c: AttributeSchema.Column) throws -> UInt32 {
        guard let d = c.dictionary, let x = d.code(of: s) else {
            throw FathomError(.invalidArgument, "attribute column \"\(c.name)\": \"\(s)\" is not one of the \(c.dictionary?.count ?? 0) values the index was built with (a \(c.type) column's values are fixed at build: rebuild with the new value)")
        }
        return x
    }

    /// Encodes row `row` of `table` (which has this schema, dictionaries included).
    public func encode(row: Int, of table: AttributeTable) -> [UInt8] {
        var w = AttributeBinaryWriter()
        for (i, col) in table.columns.enumerated() {
            switch col {
            case .int(let v): w.i64(v[row])
            case .float(let v): w.f64(v[row])
            case .category(let codes, _): w.u32(codes[row])
            case .tags(let o, _, _):
                w.u32(o[row + 1] - o[row]); w.u32s(Array(table.tagIDs(row: row, column: i)))
            }
        }
        return w.bytes
    }

    static func describe(_ v: AttributeValue) -> String {
        switch v {
        case .int(let x): return "the int \(x)"
        case .float(let x): return "the float \(x)"
        case .category(let s): return "the string \"\(s)\""
        case .tags(let t): return "the tags [\(t.map { "\"\($0)\"" }.joined(separator: ", "))]"
        }
    }
}

/// The attribute rows of vectors inserted after the build, column by column (append only),
/// in the schema of the built table they follow: row `i` belongs to internal id
/// `base.count + i`. ``table(after:)`` layers them under the built table for filtering.
///
/// Thread safety: not thread-safe (one writer owns it); the tables it makes are immutable.
public final class AttributeRowStore {
    public let schema: AttributeSchema
    /// Rows appended.
    public private(set) var count = 0
    var ints: [[Int64]], doubles: [[Double]], codes: [[UInt32]], offsets: [[UInt32]], tagIds: [[UInt32]]
    /// Rows per category code / tag id among the appended rows (per column).
    var codeCounts: [[UInt32]]

    public init(schema: AttributeSchema) {
        self.schema = schema
        let n = schema.columns.count
        ints = .init(repeating: [], count: n); doubles = .init(repeating: [], count: n)
        codes = .init(repeating: [], count: n); offsets = .init(repeating: [0], count: n)
        tagIds = .init(repeating: [], count: n)
        codeCounts = schema.columns.map { [UInt32](repeating: 0, count: $0.dictionary?.count ?? 0) }
    }

    /// Checks an encoded row (``AttributeRowCodec``) without appending it.
    /// - Throws: `.corruptIndex` naming what is wrong (a short or long row, a code outside
    ///   the dictionary, a non-finite float).
    public func check(_ row: UnsafeRawBufferPointer) throws {
        _ = try walk(row, append: false)
    }

    /// Appends an encoded row (checked first: nothing is appended on error).
    public func append(_ row: UnsafeRawBufferPointer) throws {
        _ = try walk(row, append: false)
        _ = try walk(row, append: true)
        count += 1
    }

    private func walk(_ row: UnsafeRawBufferPointer, append: Bool) throws -> Int {
        var r = AttributeBinaryReader(row, what: "attribute row")
        for (i, c) in schema.columns.enumerated() {
            switch c.type {
            case .int:
                let x = try r.i64()
                if append { ints[i].append(x) }
            case .float:
                let x = try r.f64()
                guard x.isFinite else { throw r.fail("column \"\(c.name)\" holds \(x)") }
                if append { doubles[i].append(x) }
            case .category:
                let x = try r.u32()
                guard Int(x) < c.dictionary?.count ?? 0 else { throw r.fail("column \"\(c.name)\" has code \(x) outside its dictionary") }
                if append { codes[i].append(x); codeCounts[i][Int(x)] += 1 }
            case .tags:
                let k = Int(try r.u32())
                guard k <= row.count / 4 else { throw r.fail("column \"\(c.name)\" has \(k) tags, more than the row holds") }
                var last: UInt32? = nil
                for _ in 0..<k {
                    let x = try r.u32()
                    guard Int(x) < c.dictionary?.count ?? 0, last.map({ x > $0 }) ?? true else {
                        throw r.fail("column \"\(c.name)\" has tag id \(x) outside its dictionary or out of order")
                    }
                    last = x
                    if append { tagIds[i].append(x); codeCounts[i][Int(x)] += 1 }
                }
                if append { offsets[i].append(UInt32(tagIds[i].count)) }
            }
        }
        guard r.pos == row.count else { throw r.fail("\(row.count - r.pos) bytes past its columns") }
        return r.pos
    }

    /// Encodes appended row `row` (``AttributeRowCodec``'s form).
    public func encode(row: Int) -> [UInt8] {
        var w = AttributeBinaryWriter()
        for (i, c) in schema.columns.enumerated() {
            switch c.type {
            case .int: w.i64(ints[i][row])
            case .float: w.f64(doubles[i][row])
            case .category: w.u32(codes[i][row])
            case .tags:
                let a = Int(offsets[i][row]), b = Int(offsets[i][row + 1])
                w.u32(UInt32(b - a)); w.u32s(Array(tagIds[i][a..<b]))
            }
        }
        return w.bytes
    }

    /// The built table `base` (this schema) followed by the appended rows: row
    /// `base.count + i` is appended row i. Copies the columns (O(rows)).
    public func table(after base: AttributeTable) -> AttributeTable {
        var cols = [AttributeColumn]()
        var counts = [[UInt32]]()
        for (i, col) in base.columns.enumerated() {
            switch col {
            case .int(let v): cols.append(.int(v + ints[i])); counts.append([])
            case .float(let v): cols.append(.float(v + doubles[i])); counts.append([])
            case .category(let c, let d):
                cols.append(.category(codes: c + codes[i], dictionary: d))
                counts.append(zip(base.codeCounts[i], codeCounts[i]).map { $0 + $1 })
            case .tags(let o, let ids, let d):
                let shift = UInt32(ids.count)
                cols.append(.tags(offsets: o + offsets[i].dropFirst().map { $0 + shift }, ids: ids + tagIds[i], dictionary: d))
                counts.append(zip(base.codeCounts[i], codeCounts[i]).map { $0 + $1 })
            }
        }
        return AttributeTable(schema: base.schema, count: base.count + count, columns: cols, codeCounts: counts)
    }
}

extension AttributeSummary {
    /// Adds appended row `r` of `rows` (a vector inserted into the posting).
    public mutating func add(row r: Int, of rows: AttributeRowStore) {
        count += 1
        for i in columns.indices {
            switch (columns[i], rows.schema.columns[i].type) {
            case (.int(let lo, let hi), .int):
                let v = rows.ints[i][r]; columns[i] = .int(min: Swift.min(lo, v), max: Swift.max(hi, v))
            case (.float(let lo, let hi), .float):
                let v = rows.doubles[i][r]; columns[i] = .float(min: Swift.min(lo, v), max: Swift.max(hi, v))
            case (.codes(var bits, let m, let exact), .category):
                columns[i] = .unknown
                let x = Int(rows.codes[i][r]) % m
                bits[x >> 6] |= 1 << UInt64(x & 63)
                columns[i] = .codes(bits: bits, modulus: m, exact: exact)
            case (.codes(var bits, let m, let exact), .tags):
                columns[i] = .unknown
                for k in Int(rows.offsets[i][r])..<Int(rows.offsets[i][r + 1]) {
                    let x = Int(rows.tagIds[i][k]) % m
                    bits[x >> 6] |= 1 << UInt64(x & 63)
                }
                columns[i] = .codes(bits: bits, modulus: m, exact: exact)
            default: break
            }
        }
    }
}

extension AttributeTable {
    /// Appends row `row` as one JSON-lines object (column name → number, string or array of
    /// strings) and a newline to `out`: the form ``loadJSONLines(path:schema:expectedRows:)``
    /// reads back (with this schema's types, so no value is re-inferred). Thread-safe (the
    /// table is immutable).
    public func appendJSONLine(row: Int, to out: inout String) {
        out += "{"
        for (i, c) in schema.columns.enumerated() {
            if i > 0 { out += "," }
            Self.appendJSONString(c.name, to: &out)
            out += ":"
            switch columns[i] {
            case .int(let v): out += String(v[row])
            case .float(let v): out += "\(v[row])"
            case .category(let codes, let d): Self.appendJSONString(d[codes[row]], to: &out)
            case .tags(_, _, let d):
                out += "["
                for (k, t) in tagIDs(row: row, column: i).enumerated() {
                    if k > 0 { out += "," }
                    Self.appendJSONString(d[t], to: &out)
                }
                out += "]"
            }
        }
        out += "}\n"
    }

    static func appendJSONString(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        out += "\""
    }
}

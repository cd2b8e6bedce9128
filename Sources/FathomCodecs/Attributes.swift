import CKernels
import FathomCore
import Foundation

// Attribute storage for filtered search: typed columns (int, float, category, tags) loaded
// from CSV or JSON lines, kept column by column, with a binary form for storing in an index.
// Layout and file formats: docs/attributes.md. The filter language lives in Fathom/Filter.

/// The type of an attribute column.
public enum AttributeType: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// 64-bit signed integers.
    case int
    /// Double-precision floats (finite).
    case float
    /// Strings, dictionary-coded to `UInt32` codes.
    case category
    /// A set of strings per row (`a;b;c` in CSV, a JSON array in JSON lines).
    case tags

    public var description: String { rawValue }

    /// Parses a type name as written in a CSV header (`price:float`); accepts a few aliases.
    public init?(name: String) {
        switch name.lowercased() {
        case "int", "integer", "int64", "long": self = .int
        case "float", "double", "real", "number", "float64": self = .float
        case "category", "cat", "string", "str", "text", "label": self = .category
        case "tags", "tag", "list", "set": self = .tags
        default: return nil
        }
    }

    /// True for `int` and `float`.
    public var isNumeric: Bool { self == .int || self == .float }
}

/// The strings of a category or tags column, with their codes (the index in `strings`).
/// Immutable and shared by reference between a table, its schema and its quantized form.
public final class AttributeDictionary: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The strings in code order: `strings[code]`.
    public let strings: [String]
    private let codes: [String: UInt32]

    /// Builds a dictionary; the strings must be distinct.
    public init(_ strings: [String]) {
        self.strings = strings
        var m = [String: UInt32](minimumCapacity: strings.count)
        for (i, s) in strings.enumerated() { m[s] = UInt32(i) }
        precondition(m.count == strings.count, "AttributeDictionary: duplicate strings")
        self.codes = m
    }

    /// Number of distinct strings.
    public var count: Int { strings.count }
    /// The code of `string`, or nil if it never occurs.
    public func code(of string: String) -> UInt32? { codes[string] }
    /// The string of `code`.
    public subscript(code: UInt32) -> String { strings[Int(code)] }

    public static func == (a: AttributeDictionary, b: AttributeDictionary) -> Bool {
        a === b || a.strings == b.strings
    }
    public convenience init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode([String].self)
        guard Set(s).count == s.count else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "duplicate strings in an attribute dictionary")
        }
        self.init(s)
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(strings)
    }
    public var description: String { "AttributeDictionary(\(count) strings)" }
}

/// Column names and types of an attribute table. Tables loaded from files also carry the
/// dictionaries of their category and tags columns, so that a filter bound to
/// `table.schema` resolves its strings to codes once, at bind time.
public struct AttributeSchema: Codable, Sendable, Equatable, CustomStringConvertible {
    public struct Column: Codable, Sendable, Equatable {
        public var name: String
        public var type: AttributeType
        /// Strings of a category/tags column (nil for numeric columns or a bare schema).
        public var dictionary: AttributeDictionary?
        public init(name: String, type: AttributeType, dictionary: AttributeDictionary? = nil) {
            self.name = name
            self.type = type
            self.dictionary = dictionary
        }
    }
    public var columns: [Column]

    public init(_ columns: [Column]) { self.columns = columns }
    /// `AttributeSchema(["price": .float, "color": .category])`, in the given order.
    public init(_ pairs: KeyValuePairs<String, AttributeType>) {
        self.columns = pairs.map { Column(name: $0.key, type: $0.value) }
    }

    /// Index of the column called `name` (exact, case-sensitive), or nil.
    public func index(of name: String) -> Int? { columns.firstIndex { $0.name == name } }
    public subscript(name: String) -> Column? { index(of: name).map { columns[$0] } }
    public var names: [String] { columns.map(\.name) }
    /// The same names and types without dictionaries (small enough for a JSON manifest).
    public var withoutDictionaries: AttributeSchema {
        AttributeSchema(columns.map { Column(name: $0.name, type: $0.type) })
    }
    public var description: String { columns.map { "\($0.name):\($0.type)" }.joined(separator: ",") }
}

/// The values of one column, one per row.
public enum AttributeColumn: Sendable {
    case int([Int64])
    case float([Double])
    /// `codes[row]` indexes `dictionary`.
    case category(codes: [UInt32], dictionary: AttributeDictionary)
    /// The tags of row r are `ids[offsets[r]..<offsets[r+1]]`, sorted ascending and distinct.
    case tags(offsets: [UInt32], ids: [UInt32], dictionary: AttributeDictionary)

    public var type: AttributeType {
        switch self {
        case .int: return .int
        case .float: return .float
        case .category: return .category
        case .tags: return .tags
        }
    }
    /// Number of rows.
    public var count: Int {
        switch self {
        case .int(let v): return v.count
        case .float(let v): return v.count
        case .category(let c, _): return c.count
        case .tags(let o, _, _): return max(0, o.count - 1)
        }
    }
    var dictionary: AttributeDictionary? {
        switch self {
        case .category(_, let d), .tags(_, _, let d): return d
        default: return nil
        }
    }
}

/// One value of a row, for display and tests (`AttributeTable.value(row:column:)`).
public enum AttributeValue: Sendable, Hashable, CustomStringConvertible {
    case int(Int64)
    case float(Double)
    case category(String)
    case tags([String])
    public var description: String {
        switch self {
        case .int(let v): return String(v)
        case .float(let v): return String(v)
        case .category(let s): return s
        case .tags(let t): return t.joined(separator: ";")
        }
    }
}

/// Attribute values of n rows (row i belongs to vector i), stored column by column.
public final class AttributeTable: Sendable {
    /// Column names and types, with the category/tags dictionaries.
    public let schema: AttributeSchema
    /// Number of rows.
    public let count: Int
    /// The columns, in schema order.
    public let columns: [AttributeColumn]
    /// Rows holding each code (category) or tag (tags); empty for numeric columns.
    public let codeCounts: [[UInt32]]

    /// Builds a table from columns; the schema's names are kept, types and dictionaries are
    /// taken from the columns. Throws `.invalidArgument` if the counts differ or tags are
    /// malformed (offsets not monotone, ids out of range).
    /// `rows` gives the row count of a table without columns (otherwise it must match them).
    public init(names: [String], columns: [AttributeColumn], rows: Int? = nil) throws {
        guard names.count == columns.count else {
            throw FathomError(.invalidArgument, "\(names.count) column names for \(columns.count) columns")
        }
        guard Set(names).count == names.count else {
            throw FathomError(.invalidArgument, "duplicate column names in \(names)")
        }
        let n = columns.first?.count ?? rows ?? 0
        if let rows, rows != n {
            throw FathomError(.invalidArgument, "\(rows) rows requested but the columns have \(n)")
        }
        var counts = [[UInt32]]()
        var normalized = [AttributeColumn]()
        for (name, col) in zip(names, columns) {
            guard col.count == n else {
                throw FathomError(.invalidArgument, "column '\(name)' has \(col.count) rows, the first column has \(n)")
            }
            switch col {
            case .int:
                counts.append([]); normalized.append(col)
            case .float(let v):
                if let bad = v.firstIndex(where: { !$0.isFinite }) {
                    throw FathomError(.invalidArgument, "column '\(name)' row \(bad) holds \(v[bad]); float attributes must be finite")
                }
                counts.append([]); normalized.append(col)
            case .category(let codes, let dict):
                var c = [UInt32](repeating: 0, count: dict.count)
                for x in codes {
                    guard Int(x) < dict.count else {
                        throw FathomError(.invalidArgument, "column '\(name)' has code \(x) but its dictionary has \(dict.count) strings")
                    }
                    c[Int(x)] += 1
                }
                counts.append(c); normalized.append(col)
            case .tags(let offsets, let ids, let dict):
                guard offsets.first == 0, Int(offsets.last ?? 0) == ids.count else {
                    throw FathomError(.invalidArgument, "column '\(name)': tag offsets must start at 0 and end at \(ids.count)")
                }
                var c = [UInt32](repeating: 0, count: dict.count)
                var sortedIDs = ids
                var needsFix = false
                for r in 0..<n {
                    let a = Int(offsets[r]), b = Int(offsets[r + 1])
                    guard a <= b, b <= ids.count else {
                        throw FathomError(.invalidArgument, "column '\(name)': tag offsets decrease or pass the \(ids.count) tag ids at row \(r)")
                    }
                    for k in a..<b {
                        guard Int(ids[k]) < dict.count else {
                            throw FathomError(.invalidArgument, "column '\(name)' has tag id \(ids[k]) but its dictionary has \(dict.count) strings")
                        }
                        if k > a && ids[k] <= ids[k - 1] { needsFix = true }
                    }
                }
                var newOffsets = offsets
                if needsFix {   // sort and dedupe each row's list
                    sortedIDs = []; sortedIDs.reserveCapacity(ids.count)
                    newOffsets = [0]
                    for r in 0..<n {
                        let row = Array(Set(ids[Int(offsets[r])..<Int(offsets[r + 1])])).sorted()
                        sortedIDs += row
                        newOffsets.append(UInt32(sortedIDs.count))
                    }
                }
                for x in sortedIDs { c[Int(x)] += 1 }
                counts.append(c)
                normalized.append(.tags(offsets: newOffsets, ids: sortedIDs, dictionary: dict))
            }
        }
        self.count = n
        self.columns = normalized
        self.codeCounts = counts
        self.schema = AttributeSchema(zip(names, normalized).map {
            AttributeSchema.Column(name: $0.0, type: $0.1.type, dictionary: $0.1.dictionary)
        })
    }

    /// A table from parts already consistent (``AttributeRowStore/table(after:)``): not checked.
    init(schema: AttributeSchema, count: Int, columns: [AttributeColumn], codeCounts: [[UInt32]]) {
        self.schema = schema; self.count = count; self.columns = columns; self.codeCounts = codeCounts
    }

    /// Index of the column called `name`, or nil.
    public func columnIndex(_ name: String) -> Int? { schema.index(of: name) }

    /// The value of an int column (precondition: the column is int).
    @inline(__always) public func int(row: Int, column: Int) -> Int64 {
        guard case .int(let v) = columns[column] else { preconditionFailure("column \(column) is not int") }
        return v[row]
    }
    /// The value of a numeric column as a Double (int columns are converted).
    @inline(__always) public func double(row: Int, column: Int) -> Double {
        switch columns[column] {
        case .int(let v): return Double(v[row])
        case .float(let v): return v[row]
        default: preconditionFailure("column \(column) is not numeric")
        }
    }
    /// The dictionary code of a category column.
    @inline(__always) public func categoryCode(row: Int, column: Int) -> UInt32 {
        guard case .category(let c, _) = columns[column] else { preconditionFailure("column \(column) is not a category") }
        return c[row]
    }
    /// The sorted, distinct tag ids of a row.
    public func tagIDs(row: Int, column: Int) -> ArraySlice<UInt32> {
        guard case .tags(let o, let ids, _) = columns[column] else { preconditionFailure("column \(column) is not tags") }
        return ids[Int(o[row])..<Int(o[row + 1])]
    }
    /// A row's value, decoded (for display and tests).
    public func value(row: Int, column: Int) -> AttributeValue {
        switch columns[column] {
        case .int(let v): return .int(v[row])
        case .float(let v): return .float(v[row])
        case .category(let c, let d): return .category(d[c[row]])
        case .tags(let o, let ids, let d): return .tags(ids[Int(o[row])..<Int(o[row + 1])].map { d[$0] })
        }
    }

    /// A readable summary of the columns and their (inferred or declared) types.
    public func describeSchema() -> String {
        let width = max(6, schema.columns.map(\.name.count).max() ?? 0)
        var lines = ["\(count) rows, \(columns.count) columns"]
        for (i, c) in schema.columns.enumerated() {
            let name = c.name.padding(toLength: width, withPad: " ", startingAt: 0)
            let type = c.type.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)
            var detail = ""
            switch columns[i] {
            case .int(let v):
                if let lo = v.min(), let hi = v.max() { detail = "min \(lo), max \(hi)" }
            case .float(let v):
                if let lo = v.min(), let hi = v.max() { detail = "min \(lo), max \(hi)" }
            case .category(_, let d):
                let top = codeCounts[i].enumerated().max { $0.element < $1.element }
                detail = "\(d.count) distinct"
                if let top, top.element > 1 {
                    detail += ", most common '\(d[UInt32(top.offset)])' (\(top.element) rows)"
                }
            case .tags(_, let ids, let d):
                let per = count > 0 ? Double(ids.count) / Double(count) : 0
                detail = "\(d.count) distinct, \(String(format: "%.2f", per)) per row"
            }
            lines.append("  \(name)  \(type) \(detail)")
        }
        return lines.joined(separator: "\n")
    }

    /// Names of the columns that must be present in an attribute file, in order.
    public var names: [String] { schema.names }
}

// MARK: - Loading

extension AttributeTable {
    /// Rows used to infer column types when the header does not declare them.
    public static let inferenceRows = 10_000

    /// Loads a CSV file (RFC 4180: quoted fields may hold commas, newlines and doubled
    /// quotes). A header is required; a column's type comes from `schema`, else from the
    /// header (`price:float`), else is inferred from the first 10,000 rows: int if every
    /// value parses as an integer, float if every value parses as a number, tags if any value
    /// contains ';', category otherwise. A column called `id`, if present, must hold the row
    /// number (0, 1, 2, ...) and is checked, not stored.
    ///
    /// - Throws: `.fileNotFound`, `.parse` (with line, column and byte offset) for a value
    ///   that does not fit its column, `.malformedFile` if `expectedRows` differs from the
    ///   number of rows.
    public static func loadCSV(path: String, schema: AttributeSchema? = nil, expectedRows: Int?) throws -> AttributeTable {
        let bytes = try readWholeFile(path)
        var reader = CSVRecordReader(bytes: bytes, path: path)
        var fields = [CSVRecordReader.Field]()
        guard let headerInfo = try reader.next(into: &fields) else {
            throw FathomError(.parse, "the file is empty; a header line naming the columns is required", path: path, offset: 0)
        }
        var names = [String](), declared = [AttributeType?]()
        for (k, f) in fields.enumerated() {
            var name = reader.string(f).trimmingCharacters(in: .whitespaces)
            var type: AttributeType? = nil
            if let colon = name.lastIndex(of: ":"), let t = AttributeType(name: String(name[name.index(after: colon)...])) {
                type = t
                name = String(name[..<colon]).trimmingCharacters(in: .whitespaces)
            }
            guard !name.isEmpty else {
                throw FathomError(.parse, "line \(headerInfo.line): header field \(k + 1) is empty; every column needs a name", path: path, offset: UInt64(f.start))
            }
            if names.contains(name) {
                throw FathomError(.parse, "line \(headerInfo.line): column \"\(name)\" appears twice in the header", path: path, offset: UInt64(f.start))
            }
            names.append(name)
            declared.append(type)
        }
        let loader = try RowLoader(path: path, names: names, declared: declared, schema: schema)
        while let info = try reader.next(into: &fields) {
            if fields.count == 1 && !fields[0].quoted && fields[0].start == fields[0].end && names.count >= 1 {
                continue   // blank line
            }
            guard fields.count == names.count else {
                let what = fields.count < names.count
                    ? "missing column \"\(names[fields.count])\""
                    : "\(fields.count - names.count) field(s) more than the header"
                throw FathomError(.parse, "line \(info.line): \(fields.count) fields but the header has \(names.count) (\(what))",
                                  path: path, offset: UInt64(info.offset))
            }
            var row = [RawField]()
            row.reserveCapacity(fields.count)
            for f in fields {
                row.append(RawField(value: .text(reader.string(f)), line: f.line, offset: f.start))
            }
            try loader.add(row)
        }
        return try loader.finish(expectedRows: expectedRows)
    }

    /// Loads JSON lines: one object per line with the same keys on every line (numbers,
    /// strings, booleans, or arrays of strings for tags). Types as in ``loadCSV(path:schema:expectedRows:)``,
    /// where JSON numbers infer int/float, arrays infer tags and strings infer category.
    public static func loadJSONLines(path: String, schema: AttributeSchema? = nil, expectedRows: Int?) throws -> AttributeTable {
        let bytes = try readWholeFile(path)
        var loader: RowLoader? = nil
        var names = [String]()
        var keyIndex = [String: Int]()
        var pos = 0, line = 0
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { pos = 3 }
        while pos < bytes.count {
            line += 1
            var end = pos
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            let lineStart = pos
            pos = end + 1
            var e = end
            if e > lineStart && bytes[e - 1] == 0x0D { e -= 1 }
            var p = JSONLineParser(bytes: bytes, pos: lineStart, end: e, path: path, line: line)
            p.skipSpace()
            if p.pos == e { continue }   // blank line
            let object = try p.parseObject()
            if loader == nil {
                names = object.map(\.key)
                for (i, k) in names.enumerated() {
                    if keyIndex[k] != nil {
                        throw FathomError(.parse, "line \(line): key \"\(k)\" appears twice", path: path, offset: UInt64(lineStart))
                    }
                    keyIndex[k] = i
                }
                loader = try RowLoader(path: path, names: names, declared: names.map { _ in nil }, schema: schema)
            }
            var row = [RawField?](repeating: nil, count: names.count)
            for kv in object {
                guard let i = keyIndex[kv.key] else {
                    throw FathomError(.parse, "line \(line): key \"\(kv.key)\" is not in the first line's keys (\(names.joined(separator: ", ")))",
                                      path: path, offset: UInt64(kv.offset))
                }
                if row[i] != nil {
                    throw FathomError(.parse, "line \(line): key \"\(kv.key)\" appears twice", path: path, offset: UInt64(kv.offset))
                }
                row[i] = kv.value
            }
            if let missing = row.firstIndex(where: { $0 == nil }) {
                throw FathomError(.parse, "line \(line): missing column \"\(names[missing])\"", path: path, offset: UInt64(lineStart))
            }
            try loader!.add(row.map { $0! })
        }
        guard let loader else {
            if let expectedRows, expectedRows != 0 {
                throw FathomError(.malformedFile, "the file has no rows but \(expectedRows) were expected (one per vector)", path: path)
            }
            return try AttributeTable(names: [], columns: [])
        }
        return try loader.finish(expectedRows: expectedRows)
    }

    static func readWholeFile(_ path: String) throws -> [UInt8] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw FathomError(.fileNotFound, "no such attribute file", path: path)
        }
        guard !isDir.boolValue else { throw FathomError(.fileNotFound, "is a directory, not an attribute file", path: path) }
        guard let d = FileManager.default.contents(atPath: path) else {
            throw FathomError(.io, "cannot read the attribute file", path: path)
        }
        return [UInt8](d)
    }
}

/// One field of an input row before typing.
struct RawField {
    enum Value {
        case text(String)     // CSV field or JSON string
        case number(String)   // JSON number, as written
        case bool(Bool)
        case list([String])   // JSON array
    }
    var value: Value
    var line: Int
    var offset: Int
}

/// Buffers the first rows for type inference, then converts rows into typed columns.
final class RowLoader {
    let path: String
    let names: [String]
    var types: [AttributeType?]
    var explicit: [Bool]
    var buffered = [[RawField]]()
    var builders: [ColumnBuilder]? = nil
    var idColumn: Int?
    var rows = 0

    init(path: String, names: [String], declared: [AttributeType?], schema: AttributeSchema?) throws {
        self.path = path
        self.names = names
        var t = declared
        if let schema {
            for (i, n) in names.enumerated() { if let c = schema[n] { t[i] = c.type } }
            for c in schema.columns where !names.contains(c.name) {
                throw FathomError(.parse, "missing column \"\(c.name)\": the schema declares it but the file's columns are \(names.joined(separator: ", "))", path: path, offset: 0)
            }
        }
        self.types = t
        self.explicit = t.map { $0 != nil }
        self.idColumn = names.firstIndex(of: "id")
    }

    func add(_ row: [RawField]) throws {
        if let b = builders {
            try append(row, to: b)
        } else {
            buffered.append(row)
            if buffered.count >= AttributeTable.inferenceRows { try startBuilders() }
        }
    }

    private func startBuilders() throws {
        for c in 0..<names.count where types[c] == nil {
            types[c] = inferType(column: c)
        }
        let b = names.indices.map { ColumnBuilder(name: names[$0], type: types[$0]!, inferred: !explicit[$0]) }
        builders = b
        let rowsToAdd = buffered
        buffered = []
        for r in rowsToAdd { try append(r, to: b) }
    }

    private func inferType(column c: Int) -> AttributeType {
        if c == idColumn { return .int }
        var allInt = true, allNum = true, anyList = false, anySemicolon = false
        for row in buffered {
            switch row[c].value {
            case .text(let s):
                let t = s.trimmingCharacters(in: .whitespaces)
                if allInt && Int64(t) == nil { allInt = false }
                if !allInt && allNum { if let d = Double(t), d.isFinite {} else { allNum = false } }
                if s.contains(";") { anySemicolon = true }
            case .number(let s):
                if allInt && Int64(s) == nil { allInt = false }
                if !allInt && allNum { if let d = Double(s), d.isFinite {} else { allNum = false } }
            case .bool: allInt = false; allNum = false
            case .list: anyList = true; allInt = false; allNum = false
            }
        }
        if buffered.isEmpty { return .category }
        if allInt { return .int }
        if allNum { return .float }
        if anyList || anySemicolon { return .tags }
        return .category
    }

    private func append(_ row: [RawField], to b: [ColumnBuilder]) throws {
        if let id = idColumn {
            let f = row[id]
            let expected = Int64(rows)
            var ok = false
            switch f.value {
            case .text(let s), .number(let s): ok = Int64(s.trimmingCharacters(in: .whitespaces)) == expected
            default: ok = false
            }
            if !ok {
                throw FathomError(.parse, "line \(f.line), column \"id\": \(quoted(f)) is not the row number \(expected); ids must be 0, 1, 2, … in file order (row i is vector i)",
                                  path: path, offset: UInt64(f.offset))
            }
        }
        for (c, f) in row.enumerated() where c != idColumn {
            try b[c].append(f, path: path)
        }
        rows += 1
    }

    func finish(expectedRows: Int?) throws -> AttributeTable {
        if builders == nil { try startBuilders() }
        if let expectedRows, expectedRows != rows {
            throw FathomError(.malformedFile, "the file has \(rows) rows but \(expectedRows) were expected (one row per vector, in vector order)", path: path)
        }
        let keep = builders!.indices.filter { $0 != idColumn }
        return try AttributeTable(names: keep.map { names[$0] }, columns: keep.map { builders![$0].build() }, rows: rows)
    }
}

func quoted(_ f: RawField) -> String {
    switch f.value {
    case .text(let s), .number(let s): return "\"\(s)\""
    case .bool(let b): return b ? "true" : "false"
    case .list(let l): return "[" + l.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
    }
}

final class ColumnBuilder {
    let name: String
    let type: AttributeType
    let inferred: Bool
    var ints = [Int64]()
    var doubles = [Double]()
    var codes = [UInt32]()
    var strings = [String]()
    var map = [String: UInt32]()
    var offsets: [UInt32] = [0]
    var tagIDs = [UInt32]()

    init(name: String, type: AttributeType, inferred: Bool) {
        self.name = name
        self.type = type
        self.inferred = inferred
    }

    private func intern(_ s: String) -> UInt32 {
        if let c = map[s] { return c }
        let c = UInt32(strings.count)
        strings.append(s)
        map[s] = c
        return c
    }

    private func hint(_ alternatives: String) -> String {
        inferred
            ? " (the type was inferred from the first \(AttributeTable.inferenceRows) rows; declare it in the header, e.g. \"\(name):\(alternatives)\")"
            : ""
    }

    func append(_ f: RawField, path: String) throws {
        func fail(_ what: String) -> FathomError {
            FathomError(.parse, "line \(f.line), column \"\(name)\": \(what)", path: path, offset: UInt64(f.offset))
        }
        switch type {
        case .int:
            switch f.value {
            case .text(let s), .number(let s):
                guard let v = Int64(s.trimmingCharacters(in: .whitespaces)) else {
                    if let d = Double(s.trimmingCharacters(in: .whitespaces)), d.isFinite {
                        throw fail("\(quoted(f)) is not an integer\(hint("float"))")
                    }
                    throw fail("\(quoted(f)) is not a number\(hint("category"))")
                }
                ints.append(v)
            default: throw fail("\(quoted(f)) is not a number")
            }
        case .float:
            switch f.value {
            case .text(let s), .number(let s):
                guard let v = Double(s.trimmingCharacters(in: .whitespaces)) else {
                    throw fail("\(quoted(f)) is not a number\(hint("category"))")
                }
                guard v.isFinite else { throw fail("\(quoted(f)) is not a finite number") }
                doubles.append(v)
            default: throw fail("\(quoted(f)) is not a number")
            }
        case .category:
            switch f.value {
            case .text(let s), .number(let s): codes.append(intern(s))
            case .bool(let b): codes.append(intern(b ? "true" : "false"))
            case .list: throw fail("\(quoted(f)) is a list; declare the column as tags")
            }
        case .tags:
            var row: [String]
            switch f.value {
            case .text(let s):
                row = s.split(separator: ";", omittingEmptySubsequences: true)
                    .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            case .number(let s): row = [s]
            case .bool(let b): row = [b ? "true" : "false"]
            case .list(let l): row = l
            }
            var ids = row.map { intern($0) }
            ids.sort()
            var last: UInt32? = nil
            for x in ids where x != last { tagIDs.append(x); last = x }
            guard tagIDs.count <= Int(UInt32.max) else { throw fail("more than 2^32 tags in the column") }
            offsets.append(UInt32(tagIDs.count))
        }
    }

    func build() -> AttributeColumn {
        switch type {
        case .int: return .int(ints)
        case .float: return .float(doubles)
        case .category: return .category(codes: codes, dictionary: AttributeDictionary(strings))
        case .tags: return .tags(offsets: offsets, ids: tagIDs, dictionary: AttributeDictionary(strings))
        }
    }
}

/// RFC 4180 record reader over a byte buffer; tracks physical line numbers.
struct CSVRecordReader {
    struct Field {
        var start: Int, end: Int
        var quoted: Bool, escaped: Bool
        var line: Int
    }
    let bytes: [UInt8]
    let path: String
    var pos = 0
    var line = 1

    init(bytes: [UInt8], path: String) {
        self.bytes = bytes
        self.path = path
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { pos = 3 }   // UTF-8 BOM
    }

    /// Reads the next record; returns its first line and byte offset, or nil at the end.
    mutating func next(into fields: inout [Field]) throws -> (line: Int, offset: Int)? {
        fields.removeAll(keepingCapacity: true)
        let n = bytes.count
        guard pos < n else { return nil }
        let recordLine = line, recordOffset = pos
        while true {
            let fieldLine = line
            if pos < n && bytes[pos] == 0x22 {   // quoted field
                let open = pos
                pos += 1
                let start = pos
                var escaped = false
                while true {
                    guard pos < n else {
                        throw FathomError(.parse, "line \(fieldLine): a quoted field (column \(fields.count + 1)) is never closed; a quote inside a quoted field must be doubled (\"\")",
                                          path: path, offset: UInt64(open))
                    }
                    let c = bytes[pos]
                    if c == 0x22 {
                        if pos + 1 < n && bytes[pos + 1] == 0x22 { escaped = true; pos += 2; continue }
                        break
                    }
                    if c == 0x0A { line += 1 }
                    pos += 1
                }
                let end = pos
                pos += 1
                if pos < n && bytes[pos] != 0x2C && bytes[pos] != 0x0A && bytes[pos] != 0x0D {
                    throw FathomError(.parse, "line \(line): unexpected character after the closing quote of column \(fields.count + 1); a quote inside a quoted field must be doubled (\"\")",
                                      path: path, offset: UInt64(pos))
                }
                fields.append(Field(start: start, end: end, quoted: true, escaped: escaped, line: fieldLine))
            } else {
                let start = pos
                while pos < n {
                    let c = bytes[pos]
                    if c == 0x2C || c == 0x0A || c == 0x0D { break }
                    pos += 1
                }
                fields.append(Field(start: start, end: pos, quoted: false, escaped: false, line: fieldLine))
            }
            if pos >= n { break }
            let c = bytes[pos]
            if c == 0x2C { pos += 1; continue }
            if c == 0x0D { pos += 1 }
            if pos < n && bytes[pos] == 0x0A { pos += 1 }
            line += 1
            break
        }
        return (recordLine, recordOffset)
    }

    func string(_ f: Field) -> String {
        if !f.escaped {
            return bytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[f.start..<f.end]), as: UTF8.self) }
        }
        var out = [UInt8]()
        out.reserveCapacity(f.end - f.start)
        var i = f.start
        while i < f.end {
            out.append(bytes[i])
            i += (bytes[i] == 0x22) ? 2 : 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A minimal JSON parser for one flat object per line.
struct JSONLineParser {
    struct KeyValue { var key: String; var value: RawField; var offset: Int }
    let bytes: [UInt8]
    var pos: Int
    let end: Int
    let path: String
    let line: Int

    init(bytes: [UInt8], pos: Int, end: Int, path: String, line: Int) {
        self.bytes = bytes; self.pos = pos; self.end = end; self.path = path; self.line = line
    }

    func error(_ what: String, at p: Int? = nil) -> FathomError {
        let at = p ?? pos
        var lineStart = at
        while lineStart > 0 && bytes[lineStart - 1] != 0x0A { lineStart -= 1 }
        return FathomError(.parse, "line \(line), character \(at - lineStart + 1): \(what)", path: path, offset: UInt64(at))
    }

    mutating func skipSpace() {
        while pos < end, bytes[pos] == 0x20 || bytes[pos] == 0x09 || bytes[pos] == 0x0D { pos += 1 }
    }

    var current: String {
        pos < end ? "'\(String(decoding: [bytes[pos]], as: UTF8.self))'" : "the end of the line"
    }

    mutating func expect(_ c: UInt8, _ what: String) throws {
        skipSpace()
        guard pos < end && bytes[pos] == c else { throw error("expected \(what), found \(current)") }
        pos += 1
    }

    mutating func parseObject() throws -> [KeyValue] {
        try expect(0x7B, "'{' (one JSON object per line)")
        var out = [KeyValue]()
        skipSpace()
        if pos < end && bytes[pos] == 0x7D { pos += 1; try finishLine(); return out }
        while true {
            skipSpace()
            let keyAt = pos
            guard pos < end && bytes[pos] == 0x22 else { throw error("expected a quoted key, found \(current)") }
            let key = try parseString()
            try expect(0x3A, "':' after key \"\(key)\"")
            skipSpace()
            let valueAt = pos
            let v = try parseValue(key: key)
            out.append(KeyValue(key: key, value: RawField(value: v, line: line, offset: valueAt), offset: keyAt))
            skipSpace()
            guard pos < end else { throw error("expected ',' or '}', found the end of the line") }
            if bytes[pos] == 0x2C { pos += 1; continue }
            if bytes[pos] == 0x7D { pos += 1; break }
            throw error("expected ',' or '}', found \(current)")
        }
        try finishLine()
        return out
    }

    mutating func finishLine() throws {
        skipSpace()
        if pos < end { throw error("unexpected \(current) after the object; one object per line") }
    }

    mutating func parseValue(key: String) throws -> RawField.Value {
        guard pos < end else { throw error("expected a value for \"\(key)\", found the end of the line") }
        let c = bytes[pos]
        if c == 0x22 { return .text(try parseString()) }
        if c == 0x5B {
            pos += 1
            var items = [String]()
            skipSpace()
            if pos < end && bytes[pos] == 0x5D { pos += 1; return .list(items) }
            while true {
                skipSpace()
                guard pos < end else { throw error("unterminated array for \"\(key)\"") }
                if bytes[pos] == 0x22 { items.append(try parseString()) }
                else if bytes[pos] == 0x2D || (bytes[pos] >= 0x30 && bytes[pos] <= 0x39) { items.append(try parseNumber()) }
                else { throw error("expected a string in the array for \"\(key)\", found \(current)") }
                skipSpace()
                guard pos < end else { throw error("unterminated array for \"\(key)\"") }
                if bytes[pos] == 0x2C { pos += 1; continue }
                if bytes[pos] == 0x5D { pos += 1; break }
                throw error("expected ',' or ']' in the array for \"\(key)\", found \(current)")
            }
            return .list(items)
        }
        if c == 0x2D || (c >= 0x30 && c <= 0x39) { return .number(try parseNumber()) }
        if matchWord("true") { return .bool(true) }
        if matchWord("false") { return .bool(false) }
        if matchWord("null") {
            throw error("\"\(key)\" is null; attributes have no nulls: every row needs a value for every column", at: pos - 4)
        }
        throw error("expected a value for \"\(key)\", found \(current)")
    }

    mutating func matchWord(_ w: String) -> Bool {
        let u = Array(w.utf8)
        guard pos + u.count <= end else { return false }
        for (i, c) in u.enumerated() where bytes[pos + i] != c { return false }
        pos += u.count
        return true
    }

    mutating func parseNumber() throws -> String {
        let start = pos
        if pos < end && bytes[pos] == 0x2D { pos += 1 }
        while pos < end, (bytes[pos] >= 0x30 && bytes[pos] <= 0x39) || bytes[pos] == 0x2E || bytes[pos] == 0x65
                || bytes[pos] == 0x45 || bytes[pos] == 0x2B || bytes[pos] == 0x2D { pos += 1 }
        let s = String(decoding: bytes[start..<pos], as: UTF8.self)
        guard Double(s) != nil else { throw error("malformed number \(s)", at: start) }
        return s
    }

    mutating func parseString() throws -> String {
        let open = pos
        pos += 1
        var out = [UInt8]()
        while true {
            guard pos < end else { throw error("unterminated string", at: open) }
            let c = bytes[pos]
            if c == 0x22 { pos += 1; break }
            if c == 0x5C {
                guard pos + 1 < end else { throw error("unterminated string", at: open) }
                let e = bytes[pos + 1]
                pos += 2
                switch e {
                case 0x22: out.append(0x22)
                case 0x5C: out.append(0x5C)
                case 0x2F: out.append(0x2F)
                case 0x62: out.append(0x08)
                case 0x66: out.append(0x0C)
                case 0x6E: out.append(0x0A)
                case 0x72: out.append(0x0D)
                case 0x74: out.append(0x09)
                case 0x75:
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00, pos + 1 < end, bytes[pos] == 0x5C, bytes[pos + 1] == 0x75 {
                        pos += 2
                        let low = try hex4()
                        if low >= 0xDC00 && low < 0xE000 { scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00) }
                    }
                    let u = Unicode.Scalar(scalar) ?? "\u{FFFD}"
                    out += Array(String(Character(u)).utf8)
                default: throw error("bad escape '\\\(String(decoding: [e], as: UTF8.self))' in a string", at: pos - 2)
                }
                continue
            }
            out.append(c)
            pos += 1
        }
        return String(decoding: out, as: UTF8.self)
    }

    mutating func hex4() throws -> UInt32 {
        guard pos + 4 <= end else { throw error("bad \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("bad \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }
}

// MARK: - Binary form

/// Little-endian writer for the attribute binary forms.
struct AttributeBinaryWriter {
    var bytes = [UInt8]()
    init() {}
    /// Starts a binary form: its magic, then its format version.
    init(magic: [UInt8], version: UInt32) { raw(magic); u32(version) }
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func string(_ s: String) { let u = Array(s.utf8); u32(UInt32(u.count)); bytes += u }
    mutating func raw(_ a: [UInt8]) { bytes += a }
    mutating func u32s(_ a: [UInt32]) { elements(a) { $0.u32($1) } }
    mutating func i64s(_ a: [Int64]) { elements(a) { $0.i64($1) } }
    mutating func f64s(_ a: [Double]) { elements(a) { $0.f64($1) } }
    /// The elements of `a`, little-endian: its bytes as they are on a little-endian host,
    /// else one `write` each.
    private mutating func elements<T>(_ a: [T], _ write: (inout Self, T) -> Void) {
        #if _endian(little)
        a.withUnsafeBytes { bytes += $0 }
        #else
        for v in a { write(&self, v) }
        #endif
    }
    mutating func dictionary(_ d: AttributeDictionary) {
        u32(UInt32(d.count))
        for s in d.strings { string(s) }
    }
    /// Appends the CRC32C of everything written so far.
    mutating func sealWithChecksum() { u32(fk_crc32c(0, bytes, bytes.count)) }
}

/// Bounds-checked little-endian reader; every failure is `.corruptIndex`.
struct AttributeBinaryReader {
    let bytes: UnsafeRawBufferPointer
    var pos = 0
    let what: String

    init(_ bytes: UnsafeRawBufferPointer, what: String) { self.bytes = bytes; self.what = what }

    /// A reader of a binary form started by ``AttributeBinaryWriter/init(magic:version:)``
    /// and sealed with its checksum: checks the trailing CRC32C (the reader then covers the
    /// bytes before it), `magic` (else `badMagic`) and `version`, and starts after them.
    init(sealed data: UnsafeRawBufferPointer, what: String, magic: [UInt8], badMagic: String, version: UInt32) throws {
        self.init(try Self.verifyChecksum(data, what: what), what: what)
        guard try raw(magic.count) == magic else { throw fail(badMagic) }
        let v = try u32()
        guard v == version else {
            throw FathomError(.incompatibleIndex, "\(what): format version \(v); this Fathom reads version \(version)")
        }
    }

    func fail(_ m: String) -> FathomError { FathomError(.corruptIndex, "\(what): \(m)", offset: UInt64(pos)) }
    mutating func need(_ k: Int) throws {
        guard k >= 0, pos + k <= bytes.count else { throw fail("truncated (needs \(k) more bytes at byte \(pos) of \(bytes.count))") }
    }
    mutating func u8() throws -> UInt8 { try need(1); defer { pos += 1 }; return bytes[pos] }
    mutating func u16() throws -> UInt16 { try need(2); defer { pos += 2 }; return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt16.self)) }
    mutating func u32() throws -> UInt32 { try need(4); defer { pos += 4 }; return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt32.self)) }
    mutating func u64() throws -> UInt64 { try need(8); defer { pos += 8 }; return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt64.self)) }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func f64() throws -> Double { Double(bitPattern: try u64()) }
    /// A u64 count or size that must fit the remaining bytes' order of magnitude.
    mutating func size() throws -> Int {
        let v = try u64()
        guard v <= UInt64(Int32.max) * 64 else { throw fail("size \(v) is implausible") }
        return Int(v)
    }
    mutating func count(_ limitPerItem: Int) throws -> Int {
        let c = Int(try u64())
        guard c >= 0, c <= (bytes.count - pos) / max(1, limitPerItem) + 1 else { throw fail("count \(c) exceeds the data") }
        return c
    }
    mutating func string() throws -> String {
        let k = Int(try u32())
        try need(k)
        defer { pos += k }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[pos..<pos + k]), as: UTF8.self)
    }
    mutating func raw(_ k: Int) throws -> [UInt8] {
        try need(k)
        defer { pos += k }
        return [UInt8](UnsafeRawBufferPointer(rebasing: bytes[pos..<pos + k]))
    }
    mutating func u32s(_ k: Int) throws -> [UInt32] { try elements(k) { try $0.u32() } }
    mutating func i64s(_ k: Int) throws -> [Int64] { try elements(k) { try $0.i64() } }
    mutating func f64s(_ k: Int) throws -> [Double] { try elements(k) { try $0.f64() } }
    /// `k` elements of T, one `read` each; a `k` the remaining bytes cannot hold is truncation.
    private mutating func elements<T>(_ k: Int, _ read: (inout Self) throws -> T) throws -> [T] {
        guard k <= (bytes.count - pos) / MemoryLayout<T>.size else { try need(Int.max / 2); return [] }
        var out = [T]()
        out.reserveCapacity(k)
        for _ in 0..<k { out.append(try read(&self)) }
        return out
    }
    mutating func dictionary() throws -> AttributeDictionary {
        let k = Int(try u32())
        guard k <= (bytes.count - pos) / 4 else { throw fail("dictionary of \(k) strings exceeds the data") }
        var s = [String]()
        s.reserveCapacity(k)
        for _ in 0..<k { s.append(try string()) }
        guard Set(s).count == s.count else { throw fail("duplicate strings in a dictionary") }
        return AttributeDictionary(s)
    }
    /// Checks the trailing CRC32C over all preceding bytes and shrinks the readable range.
    static func verifyChecksum(_ bytes: UnsafeRawBufferPointer, what: String) throws -> UnsafeRawBufferPointer {
        guard bytes.count >= 4 else { throw FathomError(.corruptIndex, "\(what): \(bytes.count) bytes, too short") }
        let body = UnsafeRawBufferPointer(rebasing: bytes[0..<bytes.count - 4])
        let stored = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: bytes.count - 4, as: UInt32.self))
        let actual = fk_crc32c(0, body.baseAddress, body.count)
        guard stored == actual else {
            throw FathomError(.corruptIndex, String(format: "%@: checksum mismatch (stored %08x, computed %08x)", what, stored, actual))
        }
        return body
    }
}

extension AttributeTable {
    static let magic: [UInt8] = Array("FATATTR1".utf8)

    /// The binary form (little-endian; layout in docs/attributes.md), ending with a CRC32C.
    public func encode() -> [UInt8] {
        var w = AttributeBinaryWriter(magic: Self.magic, version: 1)
        w.u32(UInt32(columns.count))
        w.u64(UInt64(count))
        for (i, col) in columns.enumerated() {
            w.string(schema.columns[i].name)
            switch col {
            case .int(let v): w.u8(0); w.i64s(v)
            case .float(let v): w.u8(1); w.f64s(v)
            case .category(let codes, let d): w.u8(2); w.dictionary(d); w.u32s(codes)
            case .tags(let o, let ids, let d):
                w.u8(3); w.dictionary(d); w.u32s(o); w.u64(UInt64(ids.count)); w.u32s(ids)
            }
        }
        w.sealWithChecksum()
        return w.bytes
    }

    /// Decodes ``encode()``'s output. Throws `.corruptIndex` on a bad checksum or structure.
    public static func decode(_ data: [UInt8]) throws -> AttributeTable {
        try data.withUnsafeBytes { try decode($0) }
    }

    public static func decode(_ data: UnsafeRawBufferPointer) throws -> AttributeTable {
        let what = "attribute table"
        var r = try AttributeBinaryReader(sealed: data, what: what, magic: magic,
                                          badMagic: "bad magic: not a Fathom attribute table", version: 1)
        let body = r.bytes
        let nc = Int(try r.u32())
        let n = try r.size()
        guard n >= 0, nc == 0 || n <= body.count else { throw r.fail("row count \(n) exceeds the data") }
        guard n <= Int(UInt32.max) else { throw r.fail("row count \(n) exceeds the 2^32 − 1 ids of an index") }
        var names = [String](), cols = [AttributeColumn]()
        for _ in 0..<nc {
            names.append(try r.string())
            switch try r.u8() {
            case 0: cols.append(.int(try r.i64s(n)))
            case 1: cols.append(.float(try r.f64s(n)))
            case 2:
                let d = try r.dictionary()
                cols.append(.category(codes: try r.u32s(n), dictionary: d))
            case 3:
                let d = try r.dictionary()
                let o = try r.u32s(n + 1)
                let k = try r.size()
                cols.append(.tags(offsets: o, ids: try r.u32s(k), dictionary: d))
            case let t: throw r.fail("unknown column type \(t)")
            }
        }
        guard r.pos == body.count else { throw r.fail("\(body.count - r.pos) trailing bytes") }
        do { return try AttributeTable(names: names, columns: cols, rows: n) }
        catch let e as FathomError { throw FathomError(.corruptIndex, "\(what): \(e.message)") }
    }
}

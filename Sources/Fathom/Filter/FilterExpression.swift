import FathomCore
import FathomCodecs

// The filter language's syntax tree. Parse text with `FilterParser.parse(_:)`, or build the
// same tree in Swift:
//
//     let f: FilterExpression = .column("price") < 100
//         && (.column("color").isIn(["red", "blue"]) || .column("year") >= 2020)
//         && .column("tags").has("cat")
//
// Grammar, types and semantics: docs/filters.md.

/// A literal in a filter: an integer, a float or a string.
public enum FilterValue: Sendable, Hashable, CustomStringConvertible,
    ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral {
    case int(Int64)
    case double(Double)
    case string(String)

    public init(integerLiteral v: Int64) { self = .int(v) }
    public init(floatLiteral v: Double) { self = .double(v) }
    public init(stringLiteral v: String) { self = .string(v) }

    /// The literal as written in the filter language (re-parses to the same value).
    public var description: String {
        switch self {
        case .int(let v): return String(v)
        case .double(let v): return v.description
        case .string(let s): return FilterValue.quote(s)
        }
    }
    /// The value as a Double, for numeric literals.
    public var numeric: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .double(let v): return v
        case .string: return nil
        }
    }
    /// `'text'` with quotes doubled.
    public static func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }
}

/// A comparison operator.
public enum FilterComparison: String, Sendable, CaseIterable, CustomStringConvertible {
    case equal = "="
    case notEqual = "!="
    case less = "<"
    case lessOrEqual = "<="
    case greater = ">"
    case greaterOrEqual = ">="
    public var description: String { rawValue }
}

/// A filter predicate over attribute columns.
///
/// `AND` binds tighter than `OR`, and `NOT` tighter than both. Every row has a value for
/// every column (there are no NULLs), so `NOT` is plain Boolean negation.
public indirect enum FilterExpression: Sendable, Equatable, CustomStringConvertible {
    /// `column op value`
    case compare(column: String, op: FilterComparison, value: FilterValue)
    /// `column BETWEEN low AND high` (inclusive)
    case between(column: String, low: FilterValue, high: FilterValue)
    /// `column IN (v1, v2, ...)`
    case isIn(column: String, values: [FilterValue])
    /// `tags HAS 'x'`
    case has(column: String, tag: String)
    /// `tags HAS ANY ('x', 'y')`
    case hasAny(column: String, tags: [String])
    /// `tags HAS ALL ('x', 'y')`
    case hasAll(column: String, tags: [String])
    case not(FilterExpression)
    case and(FilterExpression, FilterExpression)
    case or(FilterExpression, FilterExpression)

    /// A column reference for the builder operators: `.column("price") < 100`.
    public static func column(_ name: String) -> FilterColumn { FilterColumn(name) }

    /// Parses filter text (see ``FilterParser``).
    public init(parsing text: String) throws { self = try FilterParser.parse(text).expression }

    /// The filter in canonical text form; parsing it gives back an equal expression.
    public var description: String {
        var s = ""
        render(into: &s, minimumPrecedence: 0)
        return s
    }

    var precedence: Int {
        switch self {
        case .or: return 1
        case .and: return 2
        case .not: return 3
        default: return 4
        }
    }

    func render(into s: inout String, minimumPrecedence: Int) {
        let paren = precedence < minimumPrecedence
        if paren { s += "(" }
        switch self {
        case .compare(let c, let op, let v):
            s += FilterColumn.quoteIfNeeded(c) + " " + op.rawValue + " " + v.description
        case .between(let c, let lo, let hi):
            s += FilterColumn.quoteIfNeeded(c) + " BETWEEN " + lo.description + " AND " + hi.description
        case .isIn(let c, let values):
            s += FilterColumn.quoteIfNeeded(c) + " IN (" + values.map(\.description).joined(separator: ", ") + ")"
        case .has(let c, let t):
            s += FilterColumn.quoteIfNeeded(c) + " HAS " + FilterValue.quote(t)
        case .hasAny(let c, let t):
            s += FilterColumn.quoteIfNeeded(c) + " HAS ANY (" + t.map(FilterValue.quote).joined(separator: ", ") + ")"
        case .hasAll(let c, let t):
            s += FilterColumn.quoteIfNeeded(c) + " HAS ALL (" + t.map(FilterValue.quote).joined(separator: ", ") + ")"
        case .not(let e):
            s += "NOT "
            e.render(into: &s, minimumPrecedence: 3)
        case .and(let a, let b):
            a.render(into: &s, minimumPrecedence: 2)
            s += " AND "
            b.render(into: &s, minimumPrecedence: 3)
        case .or(let a, let b):
            a.render(into: &s, minimumPrecedence: 1)
            s += " OR "
            b.render(into: &s, minimumPrecedence: 2)
        }
        if paren { s += ")" }
    }

    /// The column names the expression refers to, in order of first use.
    public var columnNames: [String] {
        var out = [String]()
        var stack = [self]
        while let e = stack.popLast() {
            switch e {
            case .compare(let c, _, _), .between(let c, _, _), .isIn(let c, _), .has(let c, _), .hasAny(let c, _), .hasAll(let c, _):
                if !out.contains(c) { out.append(c) }
            case .not(let x): stack.append(x)
            case .and(let a, let b), .or(let a, let b): stack.append(b); stack.append(a)
            }
        }
        return out
    }

    /// Number of predicates (leaves).
    public var predicateCount: Int {
        var n = 0
        var stack = [self]
        while let e = stack.popLast() {
            switch e {
            case .not(let x): stack.append(x)
            case .and(let a, let b), .or(let a, let b): stack.append(b); stack.append(a)
            default: n += 1
            }
        }
        return n
    }

    public static func && (a: FilterExpression, b: FilterExpression) -> FilterExpression { .and(a, b) }
    public static func || (a: FilterExpression, b: FilterExpression) -> FilterExpression { .or(a, b) }
    public static prefix func ! (a: FilterExpression) -> FilterExpression { .not(a) }
}

/// A column in a filter being built: `FilterColumn("price") < 100`, `.column("tags").has("cat")`.
public struct FilterColumn: Sendable, Hashable {
    public let name: String
    public init(_ name: String) { self.name = name }
    public static func column(_ name: String) -> FilterColumn { FilterColumn(name) }

    public func between(_ low: FilterValue, and high: FilterValue) -> FilterExpression { .between(column: name, low: low, high: high) }
    public func isIn(_ values: [FilterValue]) -> FilterExpression { .isIn(column: name, values: values) }
    public func has(_ tag: String) -> FilterExpression { .has(column: name, tag: tag) }
    public func hasAny(_ tags: [String]) -> FilterExpression { .hasAny(column: name, tags: tags) }
    public func hasAll(_ tags: [String]) -> FilterExpression { .hasAll(column: name, tags: tags) }

    public static func == (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .equal, value: v) }
    public static func != (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .notEqual, value: v) }
    public static func < (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .less, value: v) }
    public static func <= (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .lessOrEqual, value: v) }
    public static func > (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .greater, value: v) }
    public static func >= (c: FilterColumn, v: FilterValue) -> FilterExpression { .compare(column: c.name, op: .greaterOrEqual, value: v) }

    static let keywords: Set<String> = ["AND", "OR", "NOT", "IN", "BETWEEN", "HAS", "ANY", "ALL"]

    /// The name as an identifier, double-quoted when it is not a plain identifier or is a keyword.
    static func quoteIfNeeded(_ name: String) -> String {
        let scalars = Array(name.unicodeScalars)
        let plain = !scalars.isEmpty && FilterLexer.isIdentifierStart(scalars[0])
            && scalars.dropFirst().allSatisfy(FilterLexer.isIdentifierPart)
            && !keywords.contains(name.uppercased())
        return plain ? name : "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

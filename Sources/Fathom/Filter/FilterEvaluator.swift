import FathomCore
import FathomCodecs

// Binding a filter to an attribute schema, and evaluating it three ways:
//  - exactly on raw values (`BoundFilter.matches(row:table:)`),
//  - conservatively on a vector's packed attribute codes (`CodeFilter.mayMatch(codes:)`),
//  - conservatively on a posting's summary (`BoundFilter.mayMatch(summary:)`),
// plus a selectivity estimate from the quantizer's histograms.
//
// The conservative tests use three-valued logic: each predicate is evaluated on what is
// known (a cell's value range, a posting's min/max or code set) to "true for every value",
// "false for every value" or "maybe", and AND/OR/NOT combine these by Kleene's rules. The
// result is "false" only if no value in the range can make the filter true, so there are no
// false negatives even under NOT.

// MARK: - Bound form

/// A closed or open interval of doubles.
struct DoubleRange: Sendable, Equatable {
    var lo: Double, loIn: Bool, hi: Double, hiIn: Bool

    @inline(__always) func contains(_ v: Double) -> Bool {
        (v > lo || (loIn && v == lo)) && (v < hi || (hiIn && v == hi))
    }
    var isEmpty: Bool { lo > hi || (lo == hi && !(loIn && hiIn)) }
    func intersects(_ o: DoubleRange) -> Bool {
        let (l, lIn): (Double, Bool) = lo > o.lo ? (lo, loIn) : (o.lo > lo ? (o.lo, o.loIn) : (lo, loIn && o.loIn))
        let (u, uIn): (Double, Bool) = hi < o.hi ? (hi, hiIn) : (o.hi < hi ? (o.hi, o.hiIn) : (hi, hiIn && o.hiIn))
        return l < u || (l == u && lIn && uIn)
    }
    /// o ⊆ self
    func covers(_ o: DoubleRange) -> Bool {
        if o.isEmpty { return true }
        return (lo < o.lo || (lo == o.lo && (loIn || !o.loIn))) && (hi > o.hi || (hi == o.hi && (hiIn || !o.hiIn)))
    }
}

/// A predicate on one column, with literals converted to the column's type.
enum BoundLeaf: Sendable, Equatable {
    /// lo <= v <= hi
    case intRange(column: Int, lo: Int64, hi: Int64)
    /// v ∈ values (sorted, distinct)
    case intSet(column: Int, values: [Int64])
    case floatRange(column: Int, range: DoubleRange)
    /// v ∈ values (sorted, distinct)
    case floatSet(column: Int, values: [Double])
    /// code ∈ codes (sorted, distinct; nil until resolved against a dictionary)
    case category(column: Int, strings: [String], codes: [UInt32]?)
    /// HAS ANY (all == false) or HAS ALL (all == true) of the tags (ids sorted, distinct)
    case tags(column: Int, all: Bool, strings: [String], ids: [UInt32]?)

    var column: Int {
        switch self {
        case .intRange(let c, _, _), .intSet(let c, _), .floatRange(let c, _), .floatSet(let c, _),
             .category(let c, _, _), .tags(let c, _, _, _): return c
        }
    }
    var isResolved: Bool {
        switch self {
        case .category(_, _, let c): return c != nil
        case .tags(_, _, _, let i): return i != nil
        default: return true
        }
    }
}

indirect enum BoundNode: Sendable, Equatable {
    case constant(Bool)
    case leaf(BoundLeaf)
    case not(BoundNode)
    case and([BoundNode])
    case or([BoundNode])

    /// The single column every leaf refers to (nil if several, or none).
    var singleColumn: Int? {
        var col: Int? = nil
        var ok = true
        visitLeaves { l in
            if let c = col, c != l.column { ok = false }
            col = l.column
        }
        return ok ? col : nil
    }

    func visitLeaves(_ f: (BoundLeaf) -> Void) {
        switch self {
        case .constant: break
        case .leaf(let l): f(l)
        case .not(let n): n.visitLeaves(f)
        case .and(let cs), .or(let cs): for c in cs { c.visitLeaves(f) }
        }
    }

    func mapLeaves(_ f: (BoundLeaf) -> BoundNode) -> BoundNode {
        switch self {
        case .constant: return self
        case .leaf(let l): return f(l)
        case .not(let n): return .not(n.mapLeaves(f))
        case .and(let cs): return .and(cs.map { $0.mapLeaves(f) })
        case .or(let cs): return .or(cs.map { $0.mapLeaves(f) })
        }
    }

    /// Folds constants and flattens nested AND/OR.
    var simplified: BoundNode {
        switch self {
        case .constant, .leaf: return self
        case .not(let n):
            let s = n.simplified
            if case .constant(let b) = s { return .constant(!b) }
            if case .not(let inner) = s { return inner }
            return .not(s)
        case .and(let cs): return Self.simplified(junction: cs, and: true)
        case .or(let cs): return Self.simplified(junction: cs, and: false)
        }
    }

    /// The simplified AND (`and`) or OR of `cs`: the operation's identity (true for AND,
    /// false for OR) drops out, the other constant decides, nested nodes of the same
    /// operation are flattened.
    private static func simplified(junction cs: [BoundNode], and: Bool) -> BoundNode {
        var out = [BoundNode]()
        for c in cs {
            switch c.simplified {
            case .constant(let b) where b == and: continue
            case .constant(let b): return .constant(b)
            case .and(let inner) where and: out += inner
            case .or(let inner) where !and: out += inner
            case let s: out.append(s)
            }
        }
        return out.isEmpty ? .constant(and) : (out.count == 1 ? out[0] : (and ? .and(out) : .or(out)))
    }
}

// Three-valued truth: bit 0 = can be true, bit 1 = can be false.
@usableFromInline let triTrue: UInt8 = 1
@usableFromInline let triFalse: UInt8 = 2
@usableFromInline let triMaybe: UInt8 = 3
@inline(__always) func triNot(_ x: UInt8) -> UInt8 { ((x & 1) << 1) | ((x >> 1) & 1) }

extension BoundNode {
    /// Kleene evaluation with a per-leaf abstraction.
    func tri(_ leaf: (BoundLeaf) -> UInt8) -> UInt8 {
        switch self {
        case .constant(let b): return b ? triTrue : triFalse
        case .leaf(let l): return leaf(l)
        case .not(let n): return triNot(n.tri(leaf))
        case .and(let cs):
            var r = triTrue
            for c in cs {
                let x = c.tri(leaf)
                if x & 1 == 0 { return triFalse }
                r |= x
            }
            return r
        case .or(let cs):
            var r = triFalse
            for c in cs {
                let x = c.tri(leaf)
                if x == triTrue { return triTrue }
                r |= x
            }
            return r
        }
    }
}

/// Three-valued tests of a leaf on abstract values.
enum LeafTri {
    static func int(_ l: BoundLeaf, lo L: Int64, hi H: Int64) -> UInt8 {
        switch l {
        case .intRange(_, let lo, let hi):
            if hi < L || lo > H || lo > hi { return triFalse }
            if lo <= L && H <= hi { return triTrue }
            return triMaybe
        case .intSet(_, let values):
            let a = lowerBound(values, L), b = upperBound(values, H)
            if b <= a { return triFalse }
            let width = UInt64(bitPattern: H &- L) &+ 1   // number of integers in [L, H] (0 = 2^64)
            if width != 0 && UInt64(b - a) == width { return triTrue }
            return triMaybe
        default: return triMaybe
        }
    }

    static func float(_ l: BoundLeaf, _ cell: DoubleRange) -> UInt8 {
        switch l {
        case .floatRange(_, let r):
            if !r.intersects(cell) { return triFalse }
            if r.covers(cell) { return triTrue }
            return triMaybe
        case .floatSet(_, let values):
            var any = false
            let a = lowerBound(values, cell.lo)
            var i = a
            while i < values.count && (values[i] < cell.hi || (cell.hiIn && values[i] == cell.hi)) {
                if cell.contains(values[i]) { any = true; break }
                i += 1
            }
            if !any { return triFalse }
            if cell.lo == cell.hi && cell.loIn && cell.hiIn { return triTrue }
            return triMaybe
        default: return triMaybe
        }
    }

    /// A category leaf on a set of codes {b, b+k, b+2k, ...} below `card` (k = 0: just {b}).
    static func category(_ l: BoundLeaf, code b: Int, stride k: Int, cardinality card: Int) -> UInt8 {
        guard case .category(_, _, let codes?) = l else { return triMaybe }
        if k == 0 { return binarySearch(codes, UInt32(truncatingIfNeeded: b)) ? triTrue : triFalse }
        var hit = 0, total = 0
        var c = b
        while c < card {
            total += 1
            if binarySearch(codes, UInt32(c)) { hit += 1 }
            c += k
        }
        if hit == 0 { return triFalse }
        return hit == total ? triTrue : triMaybe
    }

    static func lowerBound<T: Comparable>(_ a: [T], _ x: T) -> Int {
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) >> 1; if a[m] < x { lo = m + 1 } else { hi = m } }
        return lo
    }
    static func upperBound<T: Comparable>(_ a: [T], _ x: T) -> Int {
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) >> 1; if a[m] <= x { lo = m + 1 } else { hi = m } }
        return lo
    }
    @inline(__always) static func binarySearch<T: Comparable>(_ a: [T], _ x: T) -> Bool {
        if a.count <= 8 { return a.contains(x) }
        let i = lowerBound(a, x)
        return i < a.count && a[i] == x
    }
    /// Sorted, distinct `b` all in sorted `a`?
    static func containsAll(_ a: ArraySlice<UInt32>, _ b: [UInt32]) -> Bool {
        var i = a.startIndex
        for x in b {
            while i < a.endIndex && a[i] < x { i += 1 }
            if i == a.endIndex || a[i] != x { return false }
        }
        return true
    }
    static func containsAny(_ a: ArraySlice<UInt32>, _ b: [UInt32]) -> Bool {
        var i = a.startIndex, j = 0
        while i < a.endIndex && j < b.count {
            if a[i] == b[j] { return true }
            if a[i] < b[j] { i += 1 } else { j += 1 }
        }
        return false
    }
}

/// A filter checked against an attribute schema: literals converted to the column types and
/// category/tag strings resolved to codes. Evaluate it with ``matches(row:table:)`` (exact),
/// ``cellMask(quantized:)`` (on codes) and ``mayMatch(summary:)`` (on postings).
public struct BoundFilter: Sendable, CustomStringConvertible {
    /// The filter as written or built.
    public let expression: FilterExpression
    /// The schema it was bound to.
    public let schema: AttributeSchema
    let root: BoundNode

    init(expression: FilterExpression, schema: AttributeSchema, root: BoundNode) {
        self.expression = expression
        self.schema = schema
        self.root = root.simplified
    }

    public var description: String { expression.description }

    /// Table column indices the filter reads.
    public var columns: [Int] {
        var s = Set<Int>()
        root.visitLeaves { s.insert($0.column) }
        return s.sorted()
    }
    /// True if the filter accepts every row whatever the values (e.g. `x < 3 OR x >= 3`
    /// is not detected; `year IN (2020) OR NOT year IN (2020)` neither: only constants are).
    public var isAlwaysTrue: Bool { root == .constant(true) }
    /// True if the filter can accept no row (e.g. `color = 'no-such-color'`, `x BETWEEN 5 AND 1`).
    public var isAlwaysFalse: Bool { root == .constant(false) }

    /// Traps if `other` does not have this filter's columns at the same positions and types
    /// (a filter bound to one schema used with another table).
    func checkCompatible(with other: AttributeSchema) {
        for c in columns {
            precondition(c < other.columns.count && other.columns[c].name == schema.columns[c].name
                         && other.columns[c].type == schema.columns[c].type,
                         "filter bound to another attribute schema (column \(c) '\(schema.columns[c].name)')")
        }
    }

    var isResolved: Bool {
        var ok = true
        root.visitLeaves { if !$0.isResolved { ok = false } }
        return ok
    }

    /// The same filter with category/tag strings resolved against `schema`'s dictionaries
    /// (a no-op when already resolved).
    func resolved(with schema: AttributeSchema) -> BoundFilter {
        if isResolved { return self }
        let r = root.mapLeaves { l -> BoundNode in
            guard let dict = schema.columns[l.column].dictionary else { return .leaf(l) }
            return FilterBinder.resolve(l, dict)
        }
        return BoundFilter(expression: expression, schema: schema, root: r)
    }

    // MARK: exact

    /// Exact test on the raw values of `row`. `table` must have the schema the filter was
    /// bound to (bind to `table.schema` so strings are resolved once).
    public func matches(row: Int, table: AttributeTable) -> Bool {
        if !isResolved { return resolved(with: table.schema).matches(row: row, table: table) }
        return Self.eval(root, row, table)
    }

    /// Every matching row id, by an exact scan (for very selective filters: brute force).
    public func matchingRows(in table: AttributeTable) -> [UInt32] {
        checkCompatible(with: table.schema)
        let f = resolved(with: table.schema)
        var out = [UInt32]()
        for r in 0..<table.count where Self.eval(f.root, r, table) { out.append(UInt32(r)) }
        return out
    }

    /// Every matching row id: the codes reject most rows cheaply, the survivors are checked
    /// exactly. `quantized` must come from `table`.
    public func matchingRows(in table: AttributeTable, quantized: QuantizedAttributes) -> [UInt32] {
        precondition(quantized.count == table.count, "quantized attributes of another table")
        checkCompatible(with: table.schema)
        let f = resolved(with: table.schema)
        let cf = f.cellMask(quantized: quantized)
        if cf.rejectsEverything { return [] }
        let (bits, _) = cf.mask(over: quantized)
        var out = [UInt32]()
        for (w, word) in bits.enumerated() {
            var x = word
            while x != 0 {
                let r = w * 64 + x.trailingZeroBitCount
                if Self.eval(f.root, r, table) { out.append(UInt32(r)) }
                x &= x - 1
            }
        }
        return out
    }

    static func eval(_ n: BoundNode, _ r: Int, _ t: AttributeTable) -> Bool {
        switch n {
        case .constant(let b): return b
        case .leaf(let l): return evalLeaf(l, r, t)
        case .not(let x): return !eval(x, r, t)
        case .and(let cs):
            for c in cs where !eval(c, r, t) { return false }
            return true
        case .or(let cs):
            for c in cs where eval(c, r, t) { return true }
            return false
        }
    }

    @inline(__always) static func evalLeaf(_ l: BoundLeaf, _ r: Int, _ t: AttributeTable) -> Bool {
        switch l {
        case .intRange(let c, let lo, let hi):
            let v = t.int(row: r, column: c)
            return lo <= v && v <= hi
        case .intSet(let c, let values):
            return LeafTri.binarySearch(values, t.int(row: r, column: c))
        case .floatRange(let c, let range):
            return range.contains(t.double(row: r, column: c))
        case .floatSet(let c, let values):
            return LeafTri.binarySearch(values, t.double(row: r, column: c))
        case .category(let c, let strings, let codes):
            let code = t.categoryCode(row: r, column: c)
            if let codes { return LeafTri.binarySearch(codes, code) }
            guard case .category(_, let d) = t.columns[c] else { return false }
            return strings.contains(d[code])
        case .tags(let c, let all, let strings, let ids):
            let row = t.tagIDs(row: r, column: c)
            if let ids { return all ? LeafTri.containsAll(row, ids) : LeafTri.containsAny(row, ids) }
            guard case .tags(_, _, let d) = t.columns[c] else { return false }
            let have = Set(row.map { d[$0] })
            return all ? strings.allSatisfy(have.contains) : strings.contains(where: have.contains)
        }
    }

    // MARK: summaries

    /// False only if no row summarized by `summary` can match (no false negatives).
    public func mayMatch(summary: AttributeSummary) -> Bool {
        if summary.count == 0 { return false }
        return root.tri { l in Self.summaryTri(l, summary) } & 1 != 0
    }

    static func summaryTri(_ l: BoundLeaf, _ s: AttributeSummary) -> UInt8 {
        guard l.column < s.columns.count else { return triMaybe }
        switch (s.columns[l.column], l) {
        case (.int(let mn, let mx), _):
            return mn > mx ? triFalse : LeafTri.int(l, lo: mn, hi: mx)
        case (.float(let mn, let mx), _):
            return mn > mx ? triFalse : LeafTri.float(l, DoubleRange(lo: mn, loIn: true, hi: mx, hiIn: true))
        case (.codes(let bits, let m, let exact), .category(_, _, let codes?)):
            @inline(__always) func has(_ x: Int) -> Bool { bits[x >> 6] & (1 << UInt64(x & 63)) != 0 }
            var anyIn = false
            for c in codes where has(Int(c) % m) { anyIn = true; break }
            if !anyIn { return triFalse }
            if exact {
                // every present code in the set?
                var all = true, anyPresent = false
                for (wi, word) in bits.enumerated() {
                    var w = word
                    while w != 0 {
                        let x = wi * 64 + w.trailingZeroBitCount
                        anyPresent = true
                        if !LeafTri.binarySearch(codes, UInt32(x)) { all = false; break }
                        w &= w - 1
                    }
                    if !all { break }
                }
                if all && anyPresent { return triTrue }
            }
            return triMaybe
        case (.codes(let bits, let m, _), .tags(_, let all, _, let ids?)):
            @inline(__always) func has(_ x: Int) -> Bool { bits[x >> 6] & (1 << UInt64(x & 63)) != 0 }
            if all {
                for t in ids where !has(Int(t) % m) { return triFalse }
                return ids.isEmpty ? triTrue : triMaybe
            }
            for t in ids where has(Int(t) % m) { return triMaybe }
            return triFalse
        default:
            return triMaybe
        }
    }

    // MARK: codes

    /// Per-column lookup tables over the cells of `quantized`, as a fast conservative test on
    /// a vector's packed codes. Predicates on columns that are not quantized pass ("maybe").
    public func cellMask(quantized: QuantizedAttributes) -> CodeFilter {
        checkCompatible(with: quantized.schema)
        let f = resolved(with: quantized.schema)
        return CodeFilter(root: f.root, quantized: quantized)
    }

    // MARK: selectivity

    /// Estimated fraction of rows that match, from the quantizer's cell histograms (numeric
    /// columns), the table's code counts (category, tags), treating predicates on different
    /// columns as independent: P(a∧b)=P(a)P(b), P(a∨b)=P(a)+P(b)−P(a)P(b), P(¬a)=1−P(a).
    /// Predicates on the same column are combined exactly (over the column's histogram).
    public func estimateSelectivity(quantized: QuantizedAttributes, table: AttributeTable) -> Double {
        guard table.count > 0 else { return 0 }
        checkCompatible(with: table.schema)
        let f = resolved(with: table.schema)
        let p = SelectivityEstimator(quantized: quantized, table: table).estimate(f.root)
        return min(1, max(0, p))
    }
}

extension FilterExpression {
    /// Type-checks against a schema (errors name the offending column or literal).
    public func bind(to schema: AttributeSchema) throws -> BoundFilter {
        var b = FilterBinder(schema: schema, text: nil, spans: nil)
        return try b.bind(self)
    }
}

// MARK: - Binding

struct FilterBinder {
    let schema: AttributeSchema
    let text: String?
    let spans: [FilterPredicateSpans]?
    var leafIndex = 0

    init(schema: AttributeSchema, text: String?, spans: [FilterPredicateSpans]?) {
        self.schema = schema; self.text = text; self.spans = spans
    }

    func fail(_ head: String, _ tail: String, _ span: FilterSpan?) -> FathomError {
        if let text, let span {
            let s = Array(text.unicodeScalars)
            return FilterParser.error("\(head) at \(span.offset)\(tail)", text: text, scalars: s, offset: span.offset, length: span.length)
        }
        return FathomError(.parse, head + tail)
    }

    mutating func bind(_ e: FilterExpression) throws -> BoundFilter {
        leafIndex = 0
        let root = try node(e)
        return BoundFilter(expression: e, schema: schema, root: root)
    }

    mutating func node(_ e: FilterExpression) throws -> BoundNode {
        switch e {
        case .not(let x): return .not(try node(x))
        case .and, .or:
            // flatten chains iteratively (left-deep trees from the parser)
            let isAnd: Bool
            if case .and = e { isAnd = true } else { isAnd = false }
            var parts = [FilterExpression]()
            var rights = [FilterExpression]()
            var cur = e
            while true {
                if isAnd, case .and(let a, let b) = cur { rights.append(b); cur = a; continue }
                if !isAnd, case .or(let a, let b) = cur { rights.append(b); cur = a; continue }
                break
            }
            parts.append(cur)
            parts += rights.reversed()
            var children = [BoundNode]()
            for p in parts { children.append(try node(p)) }
            return isAnd ? .and(children) : .or(children)
        default:
            let sp = spans.flatMap { leafIndex < $0.count ? $0[leafIndex] : nil }
            leafIndex += 1
            return try leaf(e, sp)
        }
    }

    func column(_ name: String, _ sp: FilterPredicateSpans?) throws -> (Int, AttributeSchema.Column) {
        if let i = schema.index(of: name) { return (i, schema.columns[i]) }
        var hint = ""
        if let near = schema.columns.first(where: { $0.name.lowercased() == name.lowercased() }) {
            hint = " (did you mean '\(near.name)'? column names are case-sensitive)"
        }
        let list = schema.names.joined(separator: ", ")
        throw fail("unknown column '\(name)'", "\(hint); the columns are: \(list.isEmpty ? "(none)" : list)", sp?.column)
    }

    func leaf(_ e: FilterExpression, _ sp: FilterPredicateSpans?) throws -> BoundNode {
        func valueSpan(_ i: Int) -> FilterSpan? { sp.flatMap { i < $0.values.count ? $0.values[i] : nil } }
        switch e {
        case .compare(let name, let op, let v):
            let (i, col) = try column(name, sp)
            switch col.type {
            case .int, .float:
                let x = try numeric(v, col, valueSpan(0))
                let n = comparison(i, col.type, op == .notEqual ? .equal : op, x)
                return op == .notEqual ? .not(n) : n
            case .category:
                guard op == .equal || op == .notEqual else {
                    throw fail("operator '\(op)'", " cannot compare column '\(col.name)', a category: use =, != or IN", sp?.op)
                }
                let s = try string(v, col, valueSpan(0))
                let n = Self.resolveIfPossible(.category(column: i, strings: [s], codes: nil), col)
                return op == .notEqual ? .not(n) : n
            case .tags:
                throw fail("operator '\(op)'", " cannot compare column '\(col.name)', which holds tags: use HAS 'x', HAS ANY (...) or HAS ALL (...)", sp?.op)
            }
        case .between(let name, let lo, let hi):
            let (i, col) = try column(name, sp)
            guard col.type.isNumeric else {
                throw fail("BETWEEN", " needs a numeric column, but '\(col.name)' is \(col.type == .tags ? "tags" : "a category")", sp?.op)
            }
            let a = try numeric(lo, col, valueSpan(0)), b = try numeric(hi, col, valueSpan(1))
            let l = comparison(i, col.type, .greaterOrEqual, a), h = comparison(i, col.type, .lessOrEqual, b)
            switch (l, h) {
            case (.leaf(.intRange(_, let lo, _)), .leaf(.intRange(_, _, let hi))):
                return lo <= hi ? .leaf(.intRange(column: i, lo: lo, hi: hi)) : .constant(false)
            case (.leaf(.floatRange(_, let r1)), .leaf(.floatRange(_, let r2))):
                let r = DoubleRange(lo: r1.lo, loIn: true, hi: r2.hi, hiIn: true)
                return r.isEmpty ? .constant(false) : .leaf(.floatRange(column: i, range: r))
            default:
                return BoundNode.and([l, h]).simplified
            }
        case .isIn(let name, let values):
            let (i, col) = try column(name, sp)
            switch col.type {
            case .int:
                var set = [Int64]()
                for (k, v) in values.enumerated() {
                    switch try numeric(v, col, valueSpan(k)) {
                    case .int(let x): set.append(x)
                    case .double(let d): if let x = Self.exactInt(d) { set.append(x) }
                    case .string: break
                    }
                }
                let s = Array(Set(set)).sorted()
                return s.isEmpty ? .constant(false) : .leaf(.intSet(column: i, values: s))
            case .float:
                var set = [Double]()
                for (k, v) in values.enumerated() { set.append(try numeric(v, col, valueSpan(k)).numeric!) }
                let s = Array(Set(set)).sorted()
                return s.isEmpty ? .constant(false) : .leaf(.floatSet(column: i, values: s))
            case .category:
                var strings = [String]()
                for (k, v) in values.enumerated() { strings.append(try string(v, col, valueSpan(k))) }
                return Self.resolveIfPossible(.category(column: i, strings: Array(Set(strings)).sorted(), codes: nil), col)
            case .tags:
                throw fail("IN", " cannot test column '\(col.name)', which holds tags: use HAS ANY (...)", sp?.op)
            }
        case .has(let name, let tag):
            return try tags(name, [tag], all: false, sp)
        case .hasAny(let name, let t):
            return try tags(name, t, all: false, sp)
        case .hasAll(let name, let t):
            return try tags(name, t, all: true, sp)
        case .not, .and, .or:
            preconditionFailure("not a predicate")
        }
    }

    func tags(_ name: String, _ t: [String], all: Bool, _ sp: FilterPredicateSpans?) throws -> BoundNode {
        let (i, col) = try column(name, sp)
        guard col.type == .tags else {
            throw fail("HAS", " needs a tags column, but '\(col.name)' is \(col.type == .category ? "a category: use = or IN" : "\(col.type): use a comparison")", sp?.op)
        }
        if t.isEmpty { return .constant(all) }
        return Self.resolveIfPossible(.tags(column: i, all: all, strings: Array(Set(t)).sorted(), ids: nil), col)
    }

    static func resolveIfPossible(_ l: BoundLeaf, _ col: AttributeSchema.Column) -> BoundNode {
        guard let d = col.dictionary else { return .leaf(l) }
        return resolve(l, d)
    }

    static func resolve(_ l: BoundLeaf, _ d: AttributeDictionary) -> BoundNode {
        switch l {
        case .category(let c, let strings, nil):
            let codes = Array(Set(strings.compactMap { d.code(of: $0) })).sorted()
            return codes.isEmpty ? .constant(false) : .leaf(.category(column: c, strings: strings, codes: codes))
        case .tags(let c, let all, let strings, nil):
            let ids = strings.compactMap { d.code(of: $0) }
            if all && ids.count < strings.count { return .constant(false) }
            if ids.isEmpty { return .constant(all) }
            return .leaf(.tags(column: c, all: all, strings: strings, ids: Array(Set(ids)).sorted()))
        default:
            return .leaf(l)
        }
    }

    func numeric(_ v: FilterValue, _ col: AttributeSchema.Column, _ span: FilterSpan?) throws -> FilterValue {
        if case .string(let s) = v {
            throw fail(FilterValue.quote(s), " is a string but column '\(col.name)' is \(col.type); write a number", span)
        }
        if case .double(let d) = v, !d.isFinite {
            throw fail("\(d)", " is not a finite number", span)
        }
        return v
    }

    func string(_ v: FilterValue, _ col: AttributeSchema.Column, _ span: FilterSpan?) throws -> String {
        guard case .string(let s) = v else {
            throw fail("\(v)", " is a number but column '\(col.name)' is a category; write it as a string: '\(v)'", span)
        }
        return s
    }

    static let twoTo63 = 9.223372036854775808e18

    static func exactInt(_ d: Double) -> Int64? {
        guard d == d.rounded(), d >= -twoTo63, d < twoTo63 else { return nil }
        return Int64(d)
    }

    /// `column op x` with x converted to the column's type (never `!=`).
    func comparison(_ i: Int, _ type: AttributeType, _ op: FilterComparison, _ x: FilterValue) -> BoundNode {
        if type == .float {
            let d = x.numeric!
            let inf = Double.infinity
            let r: DoubleRange
            switch op {
            case .equal, .notEqual: r = DoubleRange(lo: d, loIn: true, hi: d, hiIn: true)
            case .less: r = DoubleRange(lo: -inf, loIn: false, hi: d, hiIn: false)
            case .lessOrEqual: r = DoubleRange(lo: -inf, loIn: false, hi: d, hiIn: true)
            case .greater: r = DoubleRange(lo: d, loIn: false, hi: inf, hiIn: false)
            case .greaterOrEqual: r = DoubleRange(lo: d, loIn: true, hi: inf, hiIn: false)
            }
            return .leaf(.floatRange(column: i, range: r))
        }
        // int column: exact integer bounds
        var lo = Int64.min, hi = Int64.max
        switch x {
        case .int(let t):
            switch op {
            case .equal, .notEqual: lo = t; hi = t
            case .less: if t == .min { return .constant(false) }; hi = t - 1
            case .lessOrEqual: hi = t
            case .greater: if t == .max { return .constant(false) }; lo = t + 1
            case .greaterOrEqual: lo = t
            }
        case .double(let d):
            let D = Self.twoTo63
            switch op {
            case .equal, .notEqual:
                guard let t = Self.exactInt(d) else { return .constant(false) }
                lo = t; hi = t
            case .less:
                if d >= D { return .constant(true) }
                if d <= -D { return .constant(false) }
                hi = Int64(d.rounded(.up)) - 1
            case .lessOrEqual:
                if d >= D { return .constant(true) }
                if d < -D { return .constant(false) }
                hi = Int64(d.rounded(.down))
            case .greater:
                if d >= D { return .constant(false) }
                if d < -D { return .constant(true) }
                let f = Int64(d.rounded(.down))
                if f == .max { return .constant(false) }
                lo = f + 1
            case .greaterOrEqual:
                if d >= D { return .constant(false) }
                if d <= -D { return .constant(true) }
                lo = Int64(d.rounded(.up))
            }
        case .string:
            return .constant(false)
        }
        if lo == .min && hi == .max { return .constant(true) }
        return .leaf(.intRange(column: i, lo: lo, hi: hi))
    }
}

// MARK: - Code filter

/// A compiled, conservative filter over a vector's packed attribute codes
/// (`QuantizedAttributes`): ``mayMatch(codes:)`` is false only if the vector's cells cannot
/// hold a matching row. Predicates on one column are merged into a single lookup table
/// `match[cell]`; the test allocates nothing.
public struct CodeFilter: @unchecked Sendable {
    // @unchecked: the raw pointers in `view` point into `owner`'s storage, which is
    // immutable after init and freed only when the last copy of this filter goes away.
    final class Program {
        struct Node {
            var kind: UInt8          // 0 const, 1 table, 2 and, 3 or, 4 not, 5 sigAny, 6 sigAll
            var tri: UInt8           // const value
            var wide: Bool           // the field can be read with one 8-byte load
            var byte: Int32          // field: first byte, byte count, shift, mask
            var nbytes: Int32
            var shift: UInt64
            var fieldMask: UInt64
            var start: Int32         // table offset / first child slot / child node
            var count: Int32         // children
            var mask: UInt64         // signature mask
        }
        let nodes: UnsafeMutablePointer<Node>
        let nodeCount: Int
        let children: UnsafeMutablePointer<Int32>
        let tables: UnsafeMutablePointer<UInt8>
        let conjuncts: UnsafeMutablePointer<Node>
        let conjunctCount: Int

        init(nodes n: [Node], children c: [Int32], tables t: [UInt8], conjuncts j: [Node]) {
            nodes = .allocate(capacity: max(1, n.count)); nodes.initialize(from: n, count: n.count); nodeCount = n.count
            children = .allocate(capacity: max(1, c.count)); children.initialize(from: c, count: c.count)
            tables = .allocate(capacity: max(1, t.count)); tables.initialize(from: t, count: t.count)
            conjuncts = .allocate(capacity: max(1, j.count)); conjuncts.initialize(from: j, count: j.count); conjunctCount = j.count
        }
        deinit {
            nodes.deinitialize(count: nodeCount); nodes.deallocate()
            children.deallocate()
            tables.deallocate()
            conjuncts.deinitialize(count: conjunctCount); conjuncts.deallocate()
        }
    }

    /// The program as plain pointers, so the test touches no reference counts.
    struct View {
        let nodes: UnsafeMutablePointer<Program.Node>
        let children: UnsafeMutablePointer<Int32>
        let tables: UnsafeMutablePointer<UInt8>
        let conjuncts: UnsafeMutablePointer<Program.Node>
        let conjunctCount: Int      // > 0: the filter is an AND of lookup tables (fast path)
        let root: Int

        @inline(__always) func field(_ n: UnsafeMutablePointer<Program.Node>, _ p: UnsafeRawPointer) -> UInt64 {
            let b = Int(n.pointee.byte)
            var v: UInt64
            if n.pointee.wide {
                v = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: b, as: UInt64.self))
            } else {
                v = 0
                for i in 0..<Int(n.pointee.nbytes) { v |= UInt64(p.load(fromByteOffset: b + i, as: UInt8.self)) << UInt64(8 * i) }
            }
            return (v >> n.pointee.shift) & n.pointee.fieldMask
        }

        func eval(_ i: Int, _ p: UnsafeRawPointer) -> UInt8 {
            let n = nodes + i
            switch n.pointee.kind {
            case 0: return n.pointee.tri
            case 1: return tables[Int(n.pointee.start) + Int(field(n, p))]
            case 2:
                var r = triTrue
                let s = Int(n.pointee.start)
                for k in 0..<Int(n.pointee.count) {
                    let x = eval(Int(children[s + k]), p)
                    if x & 1 == 0 { return triFalse }
                    r |= x
                }
                return r
            case 3:
                var r = triFalse
                let s = Int(n.pointee.start)
                for k in 0..<Int(n.pointee.count) {
                    let x = eval(Int(children[s + k]), p)
                    if x == triTrue { return triTrue }
                    r |= x
                }
                return r
            case 4: return triNot(eval(Int(n.pointee.start), p))
            case 5: return field(n, p) & n.pointee.mask == 0 ? triFalse : triMaybe
            default: return field(n, p) & n.pointee.mask != n.pointee.mask ? triFalse : triMaybe
            }
        }
    }

    let owner: Program
    let view: View
    /// Code bytes per vector this filter expects.
    public let bytesPerVector: Int
    /// True if no vector is rejected (nothing to test on the codes).
    public let passesEverything: Bool
    /// True if every vector is rejected.
    public let rejectsEverything: Bool
    /// True if the codes decide the filter exactly: ``mayMatch(codes:)`` is then the exact
    /// answer (every leaf on an exact column — categories, ints with few values — and no
    /// boundary cell), so survivors need no check on the raw values.
    public let decides: Bool

    init(root: BoundNode, quantized q: QuantizedAttributes) {
        var b = Builder(q: q)
        let r = b.compile(root)
        // Fast path: a table, or an AND of tables (most selective first).
        var conj = [Program.Node]()
        let rn = b.nodes[r]
        if rn.kind == 1 {
            conj = [rn]
        } else if rn.kind == 2 {
            let kids = (0..<Int(rn.count)).map { b.nodes[Int(b.children[Int(rn.start) + $0])] }
            if kids.allSatisfy({ $0.kind == 1 }) {
                conj = kids.sorted { b.passRate[Int($0.start)] ?? 1 < b.passRate[Int($1.start)] ?? 1 }
            }
        }
        owner = Program(nodes: b.nodes, children: b.children, tables: b.tables, conjuncts: conj)
        view = View(nodes: owner.nodes, children: owner.children, tables: owner.tables, conjuncts: owner.conjuncts,
                    conjunctCount: conj.count, root: r)
        bytesPerVector = q.bytesPerVector
        decides = b.isDefinite(r)
        passesEverything = rn.kind == 0 && rn.tri & 1 != 0
        rejectsEverything = rn.kind == 0 && rn.tri & 1 == 0
    }

    /// False only if the vector whose codes start at `codes` cannot match (no false negatives).
    /// Reads `bytesPerVector` bytes; allocates nothing.
    @inline(__always) public func mayMatch(codes: UnsafeRawPointer) -> Bool {
        let v = view
        if v.conjunctCount > 0 {
            var n = v.conjuncts
            for _ in 0..<v.conjunctCount {
                if v.tables[Int(n.pointee.start) + Int(v.field(n, codes))] & 1 == 0 { return false }
                n += 1
            }
            return true
        }
        return v.eval(v.root, codes) & 1 != 0
    }

    /// Tests every vector of `quantized`; returns a bitmask (bit i = vector i may match) and
    /// the number of passing vectors.
    public func mask(over quantized: QuantizedAttributes) -> (bits: [UInt64], passing: Int) {
        precondition(quantized.bytesPerVector == bytesPerVector, "codes of another quantizer")
        var bits = [UInt64](repeating: 0, count: (quantized.count + 63) / 64)
        var passing = 0
        let bpv = bytesPerVector
        var pad: UInt64 = 0   // stands in for the codes when there are none (0 bytes per vector)
        withUnsafeBytes(of: &pad) { padBuf in
            quantized.codes.withUnsafeBytes { buf in
                let base = buf.baseAddress ?? padBuf.baseAddress!
                for i in 0..<quantized.count where mayMatch(codes: base + i * bpv) {
                    bits[i >> 6] |= 1 << UInt64(i & 63)
                    passing += 1
                }
            }
        }
        return (bits, passing)
    }

    struct Builder {
        let q: QuantizedAttributes
        var nodes = [Program.Node]()
        var children = [Int32]()
        var tables = [UInt8]()
        /// Table start -> fraction of build-time rows whose cell passes (orders the fast path).
        var passRate = [Int: Double]()
        /// Starts of tables with a "maybe" entry for some cell that occurs.
        var indefinite = Set<Int>()

        /// True if the program's result for every code is "true" or "false", never "maybe":
        /// then the codes decide the filter exactly (no raw-value check needed).
        func isDefinite(_ i: Int) -> Bool {
            let n = nodes[i]
            switch n.kind {
            case 0: return n.tri != triMaybe
            case 1: return !indefinite.contains(Int(n.start))
            case 2, 3: return (0..<Int(n.count)).allSatisfy { isDefinite(Int(children[Int(n.start) + $0])) }
            case 4: return isDefinite(Int(n.start))
            default: return false
            }
        }

        mutating func add(_ n: Program.Node) -> Int { nodes.append(n); return nodes.count - 1 }

        func fieldNode(kind: UInt8, _ c: QuantizedAttributes.Column) -> Program.Node {
            let nb = c.bits == 0 ? 0 : ((c.bitOffset & 7) + c.bits + 7) >> 3
            let byte = c.bitOffset >> 3
            return Program.Node(kind: kind, tri: 0, wide: c.bits > 0 && byte + 8 <= q.bytesPerVector, byte: Int32(byte), nbytes: Int32(nb),
                                shift: UInt64(c.bitOffset & 7), fieldMask: c.bits == 0 ? 0 : (1 << UInt64(c.bits)) - 1,
                                start: 0, count: 0, mask: 0)
        }
        func constant(_ t: UInt8) -> Program.Node {
            Program.Node(kind: 0, tri: t, wide: false, byte: 0, nbytes: 0, shift: 0, fieldMask: 0, start: 0, count: 0, mask: 0)
        }

        mutating func compile(_ node: BoundNode) -> Int {
            if let col = node.singleColumn, let s = q.slot(ofTableColumn: col), q.columns[s].kind != .tagSignature {
                return table(node, q.columns[s])
            }
            switch node {
            case .constant(let b): return add(constant(b ? triTrue : triFalse))
            case .leaf(let l):
                if case .tags(_, let all, _, let ids?) = l, let s = q.slot(ofTableColumn: l.column),
                   q.columns[s].kind == .tagSignature {
                    var n = fieldNode(kind: all ? 6 : 5, q.columns[s])
                    for t in ids { n.mask |= 1 << UInt64(AttributeQuantizer.signatureBit(tag: t, bits: q.columns[s].bits)) }
                    if ids.isEmpty { return add(constant(all ? triMaybe : triFalse)) }
                    return add(n)
                }
                return add(constant(triMaybe))
            case .not(let x):
                let c = compile(x)
                if nodes[c].kind == 0 { return add(constant(triNot(nodes[c].tri))) }
                var n = constant(0); n.kind = 4; n.start = Int32(c)
                return add(n)
            case .and(let cs), .or(let cs):
                let isAnd: Bool
                if case .and = node { isAnd = true } else { isAnd = false }
                var kids = [Int]()
                var acc: UInt8 = isAnd ? triTrue : triFalse
                for c in cs {
                    let k = compile(c)
                    if nodes[k].kind == 0 {
                        let t = nodes[k].tri
                        if isAnd { if t & 1 == 0 { return add(constant(triFalse)) }; acc |= t }
                        else { if t == triTrue { return add(constant(triTrue)) }; acc |= t }
                        continue
                    }
                    kids.append(k)
                }
                if kids.isEmpty { return add(constant(acc)) }
                // A "maybe" constant child still matters for the result's can-be-false/true bits,
                // which only NOT above us reads; keep it as a child.
                if acc != (isAnd ? triTrue : triFalse) { kids.append(add(constant(acc))) }
                if kids.count == 1 { return kids[0] }
                var n = constant(0)
                n.kind = isAnd ? 2 : 3
                n.start = Int32(children.count)
                n.count = Int32(kids.count)
                children += kids.map { Int32($0) }
                return add(n)
            }
        }

        static func exactInt(_ d: Double) -> Int64? {
            guard d.isFinite, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
            return Int64(d)
        }

        mutating func table(_ node: BoundNode, _ c: QuantizedAttributes.Column) -> Int {
            let size = c.bits == 0 ? 1 : 1 << c.bits
            var t = [UInt8](repeating: triMaybe, count: size)
            switch c.kind {
            case .numeric:
                for cell in 0..<min(size, c.cellCount) {
                    if c.type == .int {
                        var L = cell == 0 ? Int64.min : c.intBoundaries[cell - 1]
                        var H = cell >= c.intBoundaries.count ? Int64.max : c.intBoundaries[cell] - 1
                        // The codes describe this table's rows: a cell holds only the values
                        // between its observed min and max (an open-ended edge cell of a 0/1
                        // column is then just {1}, and `flag = 1` is decided by the codes).
                        if cell < c.cellMin.count, cell < c.cellCounts.count, c.cellCounts[cell] > 0,
                           let lo = Self.exactInt(c.cellMin[cell]), let hi = Self.exactInt(c.cellMax[cell]), lo <= hi {
                            L = max(L, lo); H = min(H, hi)
                        }
                        t[cell] = node.tri { LeafTri.int($0, lo: L, hi: H) }
                    } else {
                        let lo = cell == 0 ? -Double.infinity : c.boundaries[cell - 1]
                        let hi = cell >= c.boundaries.count ? Double.infinity : c.boundaries[cell]
                        let r = DoubleRange(lo: lo, loIn: cell > 0, hi: hi, hiIn: false)
                        t[cell] = node.tri { LeafTri.float($0, r) }
                    }
                }
            case .category:
                let card = c.cardinality
                let k = c.folded ? size : 0
                // codes not named by the filter all behave alike: evaluate once, then the named ones
                var named = Set<Int>()
                node.visitLeaves { if case .category(_, _, let codes?) = $0 { for x in codes { named.insert(Int(x) % size) } } }
                let other = node.tri { l in
                    if case .category(_, _, let codes) = l, codes != nil { return triFalse }
                    return triMaybe
                }
                for i in 0..<size { t[i] = other }
                if c.folded {
                    // a bucket with no named code: every leaf is false for all its codes -> `other`
                    for b in named { t[b] = node.tri { LeafTri.category($0, code: b, stride: k, cardinality: card) } }
                } else {
                    for b in named { t[b] = node.tri { LeafTri.category($0, code: b, stride: 0, cardinality: card) } }
                }
            case .tagSignature:
                break
            }
            let start = tables.count
            tables += t
            let valid = min(size, c.cellCount)
            if t.prefix(valid).contains(triMaybe) { indefinite.insert(start) }
            let total = c.cellCounts.reduce(0.0) { $0 + Double($1) }
            if total > 0 {
                var pass = 0.0
                for (i, k) in c.cellCounts.enumerated() where i < t.count && t[i] & 1 != 0 { pass += Double(k) }
                passRate[start] = pass / total
            }
            var n = fieldNode(kind: 1, c)
            n.start = Int32(start)
            return add(n)
        }
    }
}

// MARK: - Selectivity

struct SelectivityEstimator {
    let quantized: QuantizedAttributes
    let table: AttributeTable
    var n: Double { Double(table.count) }

    func estimate(_ node: BoundNode) -> Double {
        if let col = node.singleColumn { return column(node, col) }
        switch node {
        case .constant(let b): return b ? 1 : 0
        case .leaf(let l): return column(node, l.column)
        case .not(let x): return 1 - estimate(x)
        case .and(let cs), .or(let cs):
            let isAnd: Bool
            if case .and = node { isAnd = true } else { isAnd = false }
            // predicates on the same column are estimated together
            var groups = [Int: [BoundNode]](), order = [Int](), loose = [BoundNode]()
            for c in cs {
                if let col = c.singleColumn {
                    if groups[col] == nil { order.append(col) }
                    groups[col, default: []].append(c)
                } else { loose.append(c) }
            }
            var ps = order.map { col -> Double in
                let g = groups[col]!
                return column(g.count == 1 ? g[0] : (isAnd ? .and(g) : .or(g)), col)
            }
            ps += loose.map(estimate)
            if isAnd { return ps.reduce(1, *) }
            return 1 - ps.reduce(1) { $0 * (1 - $1) }
        }
    }

    func column(_ node: BoundNode, _ col: Int) -> Double {
        switch table.columns[col] {
        case .int, .float:
            if let s = quantized.slot(ofTableColumn: col), quantized.columns[s].kind == .numeric {
                return numeric(node, quantized.columns[s])
            }
            return sampled(node)
        case .category:
            // codes not named by the filter all behave alike
            var named = Set<UInt32>()
            node.visitLeaves { if case .category(_, _, let codes?) = $0 { named.formUnion(codes) } }
            let counts = table.codeCounts[col]
            var namedRows = 0.0, hit = 0.0
            for c in named where Int(c) < counts.count {
                namedRows += Double(counts[Int(c)])
                if node.tri({ LeafTri.category($0, code: Int(c), stride: 0, cardinality: counts.count) }) & 1 != 0 {
                    hit += Double(counts[Int(c)])
                }
            }
            let otherTrue = node.tri { l in
                if case .category(_, _, let codes) = l, codes != nil { return triFalse }
                return triMaybe
            } & 1 != 0
            if otherTrue { hit += n - namedRows }
            return hit / n
        case .tags:
            return tags(node, col)
        }
    }

    func tags(_ node: BoundNode, _ col: Int) -> Double {
        switch node {
        case .constant(let b): return b ? 1 : 0
        case .not(let x): return 1 - tags(x, col)
        case .and(let cs): return cs.reduce(1) { $0 * tags($1, col) }
        case .or(let cs): return 1 - cs.reduce(1) { $0 * (1 - tags($1, col)) }
        case .leaf(let l):
            guard case .tags(_, let all, _, let ids?) = l else { return 0.5 }
            let counts = table.codeCounts[col]
            let ps = ids.map { Int($0) < counts.count ? Double(counts[Int($0)]) / n : 0 }
            return all ? ps.reduce(1, *) : 1 - ps.reduce(1) { $0 * (1 - $1) }
        }
    }

    /// Fallback for columns without a histogram: evaluate on up to 4096 evenly spaced rows.
    func sampled(_ node: BoundNode) -> Double {
        let m = min(table.count, 4096)
        guard m > 0 else { return 0 }
        var hit = 0
        for k in 0..<m where BoundFilter.eval(node, k * table.count / m, table) { hit += 1 }
        return Double(hit) / Double(m)
    }

    struct Bucket { var count: Double; var lo: Double; var hi: Double; var distinct: Double }

    /// Predicates on one numeric column: the truth value is constant between consecutive
    /// literals, so evaluate it at each literal and once per gap, and weight by the
    /// histogram's mass there (uniform within a cell; the cell's min and max are known to occur).
    func numeric(_ node: BoundNode, _ c: QuantizedAttributes.Column) -> Double {
        let isInt = c.type == .int
        var buckets = [Bucket]()
        if !c.histogramValues.isEmpty {
            for (v, k) in zip(c.histogramValues, c.histogramCounts) { buckets.append(Bucket(count: Double(k), lo: v, hi: v, distinct: 1)) }
        } else {
            for i in 0..<c.cellCounts.count where c.cellCounts[i] > 0 {
                buckets.append(Bucket(count: Double(c.cellCounts[i]), lo: c.cellMin[i], hi: c.cellMax[i], distinct: Double(max(1, c.cellDistinct[i]))))
            }
        }
        var points = [Double]()
        node.visitLeaves { l in
            switch l {
            case .intRange(_, let lo, let hi):
                if lo != .min { points.append(Double(lo)) }
                if hi != .max { points.append(Double(hi)) }
            case .intSet(_, let v): points += v.map(Double.init)
            case .floatRange(_, let r):
                if r.lo.isFinite { points.append(r.lo) }
                if r.hi.isFinite { points.append(r.hi) }
            case .floatSet(_, let v): points += v
            default: break
            }
        }
        points = Array(Set(points)).sorted()
        func truth(_ v: Double) -> Bool {
            node.tri { l in
                if isInt {
                    let x = v >= 9.2e18 ? Int64.max : (v <= -9.2e18 ? Int64.min : Int64(v))
                    return LeafTri.int(l, lo: x, hi: x)
                }
                return LeafTri.float(l, DoubleRange(lo: v, loIn: true, hi: v, hiIn: true))
            } & 1 != 0
        }
        // regions: (−inf, p0), {p0}, (p0, p1), ..., {pm}, (pm, +inf)
        var pointTrue = [Bool](), gapTrue = [Bool]()
        for p in points { pointTrue.append(truth(p)) }
        for g in 0...points.count {
            let a = g == 0 ? -Double.infinity : points[g - 1]
            let b = g == points.count ? Double.infinity : points[g]
            var rep: Double?
            if isInt {
                if a == -.infinity { rep = b == .infinity ? 0 : b - 1 }
                else if b == .infinity { rep = a + 1 }
                else if b - a >= 2 { rep = a + 1 }
            } else {
                if a == -.infinity { rep = b == .infinity ? 0 : b - max(1, abs(b)) }
                else if b == .infinity { rep = a + max(1, abs(a)) }
                else { let m = a + (b - a) / 2; if m > a && m < b { rep = m } }
            }
            gapTrue.append(rep.map(truth) ?? false)
        }
        var total = 0.0
        for bk in buckets {
            var mass = 0.0
            for (k, p) in points.enumerated() where pointTrue[k] { mass += pointMass(bk, p, isInt) }
            for g in 0...points.count where gapTrue[g] {
                let a = g == 0 ? -Double.infinity : points[g - 1]
                let b = g == points.count ? Double.infinity : points[g]
                mass += gapMass(bk, a, b, isInt)
            }
            total += min(bk.count, max(0, mass))
        }
        return total / n
    }

    func pointMass(_ b: Bucket, _ t: Double, _ isInt: Bool) -> Double {
        guard t >= b.lo && t <= b.hi else { return 0 }
        if b.lo == b.hi { return b.count }
        let per = b.count / b.distinct
        if t == b.lo || t == b.hi { return per }
        if isInt {
            let w = b.hi - b.lo + 1
            return w > 2 ? per * max(0, b.distinct - 2) / (w - 2) : 0
        }
        return per
    }

    /// Mass of the open interval (a, b) in bucket `bk`.
    func gapMass(_ bk: Bucket, _ a: Double, _ b: Double, _ isInt: Bool) -> Double {
        if bk.lo == bk.hi { return (a < bk.lo && bk.lo < b) ? bk.count : 0 }
        let per = bk.count / bk.distinct
        var mass = 0.0
        if a < bk.lo && bk.lo < b { mass += per }
        if a < bk.hi && bk.hi < b { mass += per }
        let interior = max(0, bk.distinct - 2) * per   // rows strictly inside (lo, hi)
        if isInt {
            let w = bk.hi - bk.lo - 1                      // integers strictly inside
            guard w > 0 else { return mass }
            let lo = max(a + 1, bk.lo + 1), hi = min(b - 1, bk.hi - 1)
            if hi >= lo { mass += interior * (hi - lo + 1) / w }
        } else {
            let lo = max(a, bk.lo), hi = min(b, bk.hi)
            if hi > lo { mass += interior * (hi - lo) / (bk.hi - bk.lo) }
        }
        return mass
    }
}

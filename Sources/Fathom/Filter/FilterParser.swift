import FathomCore
import FathomCodecs

// Recursive-descent parser for the filter language (grammar in docs/filters.md):
//
//   filter    = or_expr EOF
//   or_expr   = and_expr { OR and_expr }
//   and_expr  = not_expr { AND not_expr }
//   not_expr  = NOT not_expr | "(" or_expr ")" | predicate
//   predicate = column ( compop value | [NOT] BETWEEN value AND value
//                      | [NOT] IN "(" value { "," value } ")"
//                      | [NOT] HAS ( string | ANY list | ALL list ) )
//
// Errors are FathomError(.parse) naming the offending token, its offset (0-based, in Unicode
// scalars) and a caret line under it.

/// A source range in the filter text, in Unicode scalars.
public struct FilterSpan: Sendable, Equatable {
    public var offset: Int
    public var length: Int
}

struct FilterToken: Equatable {
    enum Kind: Equatable {
        case identifier(String)
        case keyword(String)          // upper-cased
        case int(Int64)
        case double(Double)
        case string(String)
        case op(FilterComparison)
        case lparen, rparen, comma
        case end
    }
    var kind: Kind
    var span: FilterSpan
}

struct FilterLexer {
    static func isIdentifierStart(_ c: Unicode.Scalar) -> Bool {
        (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_" || (c.value > 127 && c.properties.isAlphabetic)
    }
    static func isIdentifierPart(_ c: Unicode.Scalar) -> Bool {
        isIdentifierStart(c) || (c >= "0" && c <= "9")
    }
    static func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }

    /// The text of the quoted token whose opening quote is `s[i]` (a doubled quote stands for
    /// one); `i` ends after the closing quote. nil: the input ends first.
    static func quoted(_ s: [Unicode.Scalar], _ i: inout Int) -> String? {
        let quote = s[i]
        var v = String.UnicodeScalarView()
        i += 1
        while i < s.count {
            if s[i] == quote {
                if i + 1 < s.count && s[i + 1] == quote { v.append(quote); i += 2; continue }
                i += 1
                return String(v)
            }
            v.append(s[i]); i += 1
        }
        return nil
    }

    static func tokenize(_ s: [Unicode.Scalar], text: String) throws -> [FilterToken] {
        var out = [FilterToken]()
        var i = 0
        let n = s.count
        func err(_ m: String, _ at: Int, _ len: Int = 1) -> FathomError { FilterParser.error(m, text: text, scalars: s, offset: at, length: len) }
        while i < n {
            let c = s[i]
            if c == " " || c == "\t" || c == "\n" || c == "\r" { i += 1; continue }
            let start = i
            switch c {
            case "(": out.append(FilterToken(kind: .lparen, span: FilterSpan(offset: i, length: 1))); i += 1
            case ")": out.append(FilterToken(kind: .rparen, span: FilterSpan(offset: i, length: 1))); i += 1
            case ",": out.append(FilterToken(kind: .comma, span: FilterSpan(offset: i, length: 1))); i += 1
            case "=":
                let len = (i + 1 < n && s[i + 1] == "=") ? 2 : 1
                out.append(FilterToken(kind: .op(.equal), span: FilterSpan(offset: i, length: len))); i += len
            case "!":
                guard i + 1 < n && s[i + 1] == "=" else { throw err("unexpected '!' at \(i), expected '!=' (use NOT to negate)", i) }
                out.append(FilterToken(kind: .op(.notEqual), span: FilterSpan(offset: i, length: 2))); i += 2
            case "<":
                if i + 1 < n && s[i + 1] == "=" { out.append(FilterToken(kind: .op(.lessOrEqual), span: FilterSpan(offset: i, length: 2))); i += 2 }
                else if i + 1 < n && s[i + 1] == ">" { out.append(FilterToken(kind: .op(.notEqual), span: FilterSpan(offset: i, length: 2))); i += 2 }
                else { out.append(FilterToken(kind: .op(.less), span: FilterSpan(offset: i, length: 1))); i += 1 }
            case ">":
                if i + 1 < n && s[i + 1] == "=" { out.append(FilterToken(kind: .op(.greaterOrEqual), span: FilterSpan(offset: i, length: 2))); i += 2 }
                else { out.append(FilterToken(kind: .op(.greater), span: FilterSpan(offset: i, length: 1))); i += 1 }
            case "'":
                guard let v = quoted(s, &i) else {
                    throw err("unterminated string starting at \(start); close it with ' (write '' for a quote inside)", start, n - start)
                }
                out.append(FilterToken(kind: .string(v), span: FilterSpan(offset: start, length: i - start)))
            case "\"":
                guard let v = quoted(s, &i) else {
                    throw err("unterminated quoted column name starting at \(start); close it with \"", start, n - start)
                }
                guard !v.isEmpty else { throw err("empty column name \"\" at \(start)", start, 2) }
                out.append(FilterToken(kind: .identifier(v), span: FilterSpan(offset: start, length: i - start)))
            default:
                if isDigit(c) || c == "." || c == "-" || c == "+" {
                    out.append(try number(s, &i, text: text))
                } else if isIdentifierStart(c) {
                    while i < n && isIdentifierPart(s[i]) { i += 1 }
                    var word = String.UnicodeScalarView()
                    word.append(contentsOf: s[start..<i])
                    let w = String(word)
                    let upper = w.uppercased()
                    let kind: FilterToken.Kind = FilterColumn.keywords.contains(upper) ? .keyword(upper) : .identifier(w)
                    out.append(FilterToken(kind: kind, span: FilterSpan(offset: start, length: i - start)))
                } else {
                    throw err("unexpected character '\(FilterParser.printable(c))' at \(i)", i)
                }
            }
        }
        out.append(FilterToken(kind: .end, span: FilterSpan(offset: n, length: 0)))
        return out
    }

    /// [+-] digits [. digits] [(e|E) [+-] digits], or [+-] . digits ...
    static func number(_ s: [Unicode.Scalar], _ i: inout Int, text: String) throws -> FilterToken {
        let n = s.count
        let start = i
        if s[i] == "-" || s[i] == "+" { i += 1 }
        var digits = 0, isFloat = false
        while i < n && isDigit(s[i]) { i += 1; digits += 1 }
        if i < n && s[i] == "." {
            isFloat = true
            i += 1
            while i < n && isDigit(s[i]) { i += 1; digits += 1 }
        }
        var ok = digits > 0
        if ok && i < n && (s[i] == "e" || s[i] == "E") {
            isFloat = true
            i += 1
            if i < n && (s[i] == "+" || s[i] == "-") { i += 1 }
            var e = 0
            while i < n && isDigit(s[i]) { i += 1; e += 1 }
            if e == 0 { ok = false }
        }
        // a number must not run into a letter, digit or another dot
        while i < n && (isIdentifierPart(s[i]) || s[i] == ".") { ok = false; i += 1 }
        var lit = String.UnicodeScalarView()
        lit.append(contentsOf: s[start..<i])
        let text0 = String(lit)
        let span = FilterSpan(offset: start, length: i - start)
        guard ok else {
            if digits == 0 && i - start == 1 {
                throw FilterParser.error("unexpected '\(text0)' at \(start), expected a number after the sign", text: text, scalars: s, offset: start, length: 1)
            }
            throw FilterParser.error("malformed number '\(text0)' at \(start)", text: text, scalars: s, offset: start, length: i - start)
        }
        let body = text0.hasPrefix("+") ? String(text0.dropFirst()) : text0
        if !isFloat, let v = Int64(body) { return FilterToken(kind: .int(v), span: span) }
        guard let d = Double(body), d.isFinite else {
            throw FilterParser.error("number '\(text0)' at \(start) is out of range", text: text, scalars: s, offset: start, length: i - start)
        }
        return FilterToken(kind: .double(d), span: span)
    }
}

/// Where the parts of each predicate were written, in pre-order (left to right).
struct FilterPredicateSpans: Sendable, Equatable {
    var column: FilterSpan
    var op: FilterSpan
    var values: [FilterSpan]
}

/// A parsed filter: the expression, its text, and where each predicate was written (so
/// binding errors can point at the offending token).
public struct ParsedFilter: Sendable, Equatable {
    public let text: String
    public let expression: FilterExpression
    let spans: [FilterPredicateSpans]

    /// Type-checks against a schema; errors point into ``text``.
    public func bind(to schema: AttributeSchema) throws -> BoundFilter {
        var b = FilterBinder(schema: schema, text: text, spans: spans)
        return try b.bind(expression)
    }
}

/// Parses the filter language. Keywords (AND, OR, NOT, IN, BETWEEN, HAS, ANY, ALL) are
/// case-insensitive; column names are case-sensitive (double-quote names that are not plain
/// identifiers: `"unit price" < 3`). Also accepted: `==` for `=`, `<>` for `!=`.
public enum FilterParser {
    /// Maximum nesting of parentheses and NOT.
    public static let maxDepth = 64
    /// Maximum number of AND/OR operators in one filter.
    public static let maxOperators = 512

    public static func parse(_ text: String) throws -> ParsedFilter {
        let scalars = Array(text.unicodeScalars)
        var p = Parser(tokens: try FilterLexer.tokenize(scalars, text: text), text: text, scalars: scalars)
        if case .end = p.tokens[0].kind {
            throw error("empty filter at 0: expected a predicate such as price < 100", text: text, scalars: scalars, offset: 0, length: 0)
        }
        let e = try p.orExpr(depth: 0)
        if case .end = p.peek.kind {} else {
            throw p.unexpected(p.depthParens > 0 ? "AND, OR or ')'" : "AND, OR or the end of the filter")
        }
        return ParsedFilter(text: text, expression: e, spans: p.spans)
    }

    static func printable(_ c: Unicode.Scalar) -> String {
        if c.value < 32 || c.value == 127 { return "\\u{\(String(c.value, radix: 16))}" }
        return String(Character(c))
    }

    /// A `.parse` error: message, then the text with a caret under `offset`.
    static func error(_ message: String, text: String, scalars: [Unicode.Scalar], offset: Int, length: Int) -> FathomError {
        FathomError(.parse, message + "\n" + caret(scalars: scalars, offset: offset, length: length))
    }

    static func caret(scalars s: [Unicode.Scalar], offset: Int, length: Int) -> String {
        // Show at most ~100 scalars around the offset; control characters become spaces.
        let window = 100
        var from = 0, to = s.count
        if s.count > window {
            from = max(0, min(offset - window / 2, s.count - window))
            to = min(s.count, from + window)
        }
        var line = from > 0 ? "…" : ""
        var caretAt = from > 0 ? 1 : 0
        for k in from..<to {
            let c = s[k]
            let shown: Unicode.Scalar = c.value < 32 || c.value == 127 ? " " : c
            line.unicodeScalars.append(shown)
        }
        if to < s.count { line += "…" }
        caretAt += max(0, offset - from)
        let marks = String(repeating: "^", count: max(1, min(length, to - min(offset, to))))
        return "  " + line + "\n  " + String(repeating: " ", count: caretAt) + marks
    }

    struct Parser {
        let tokens: [FilterToken]
        let text: String
        let scalars: [Unicode.Scalar]
        var pos = 0
        var spans = [FilterPredicateSpans]()
        var operators = 0
        var depthParens = 0

        init(tokens: [FilterToken], text: String, scalars: [Unicode.Scalar]) {
            self.tokens = tokens; self.text = text; self.scalars = scalars
        }

        var peek: FilterToken { tokens[pos] }
        mutating func advance() -> FilterToken { let t = tokens[pos]; if pos < tokens.count - 1 { pos += 1 }; return t }

        func describe(_ t: FilterToken) -> String {
            if case .end = t.kind { return "end of input" }
            var v = String.UnicodeScalarView()
            v.append(contentsOf: scalars[t.span.offset..<(t.span.offset + t.span.length)])
            return "'\(String(v))'"
        }

        func unexpected(_ expected: String, _ t: FilterToken? = nil) -> FathomError {
            let t = t ?? peek
            return FilterParser.error("unexpected \(describe(t)) at \(t.span.offset), expected \(expected)",
                                      text: text, scalars: scalars, offset: t.span.offset, length: t.span.length)
        }

        func isKeyword(_ k: String) -> Bool { if case .keyword(k) = peek.kind { return true }; return false }

        mutating func countOperator(_ t: FilterToken) throws {
            operators += 1
            if operators > FilterParser.maxOperators {
                throw FilterParser.error("too many AND/OR operators (more than \(FilterParser.maxOperators)) at \(t.span.offset); use IN (...) or HAS ANY (...) for long lists",
                                         text: text, scalars: scalars, offset: t.span.offset, length: t.span.length)
            }
        }

        mutating func orExpr(depth: Int) throws -> FilterExpression {
            try chain("OR", depth: depth, { try $0.andExpr(depth: $1) }, FilterExpression.or)
        }

        mutating func andExpr(depth: Int) throws -> FilterExpression {
            try chain("AND", depth: depth, { try $0.notExpr(depth: $1) }, FilterExpression.and)
        }

        /// Operands (`operand`) joined by the keyword `word`, left to right (`join`).
        mutating func chain(_ word: String, depth: Int, _ operand: (inout Self, Int) throws -> FilterExpression,
                            _ join: (FilterExpression, FilterExpression) -> FilterExpression) throws -> FilterExpression {
            var e = try operand(&self, depth)
            while isKeyword(word) {
                try countOperator(advance())
                e = join(e, try operand(&self, depth))
            }
            return e
        }

        mutating func notExpr(depth: Int) throws -> FilterExpression {
            if depth >= FilterParser.maxDepth {
                throw FilterParser.error("nesting deeper than \(FilterParser.maxDepth) levels at \(peek.span.offset)",
                                         text: text, scalars: scalars, offset: peek.span.offset, length: peek.span.length)
            }
            switch peek.kind {
            case .keyword("NOT"):
                _ = advance()
                return .not(try notExpr(depth: depth + 1))
            case .lparen:
                _ = advance()
                depthParens += 1
                let e = try orExpr(depth: depth + 1)
                guard case .rparen = peek.kind else { throw unexpected("AND, OR or ')'") }
                _ = advance()
                depthParens -= 1
                return e
            case .identifier(let name):
                let col = advance()
                return try predicate(column: name, columnSpan: col.span)
            default:
                throw unexpected("a column name, NOT or '('")
            }
        }

        mutating func value() throws -> (FilterValue, FilterSpan) {
            let t = peek
            switch t.kind {
            case .int(let v): _ = advance(); return (.int(v), t.span)
            case .double(let v): _ = advance(); return (.double(v), t.span)
            case .string(let v): _ = advance(); return (.string(v), t.span)
            default: throw unexpected("a value (a number or a 'string')")
            }
        }

        mutating func stringValue() throws -> (String, FilterSpan) {
            let t = peek
            guard case .string(let v) = t.kind else { throw unexpected("a 'string'") }
            _ = advance()
            return (v, t.span)
        }

        mutating func list<T>(_ item: (inout Parser) throws -> (T, FilterSpan)) throws -> ([T], [FilterSpan]) {
            guard case .lparen = peek.kind else { throw unexpected("'('") }
            _ = advance()
            var items = [T](), spans = [FilterSpan]()
            while true {
                let (v, s) = try item(&self)
                items.append(v); spans.append(s)
                if case .comma = peek.kind { _ = advance(); continue }
                if case .rparen = peek.kind { _ = advance(); break }
                throw unexpected("',' or ')'")
            }
            return (items, spans)
        }

        mutating func predicate(column: String, columnSpan: FilterSpan) throws -> FilterExpression {
            var negate = false
            var opToken = peek
            if case .keyword("NOT") = peek.kind {
                _ = advance()
                negate = true
                opToken = peek
                switch peek.kind {
                case .keyword("BETWEEN"), .keyword("IN"), .keyword("HAS"): break
                default: throw unexpected("BETWEEN, IN or HAS after NOT")
                }
            }
            let e: FilterExpression
            var valueSpans = [FilterSpan]()
            switch peek.kind {
            case .op(let op):
                _ = advance()
                let (v, s) = try value()
                valueSpans = [s]
                e = .compare(column: column, op: op, value: v)
            case .keyword("BETWEEN"):
                _ = advance()
                let (lo, s1) = try value()
                guard isKeyword("AND") else { throw unexpected("AND (as in BETWEEN 1 AND 5)") }
                _ = advance()
                let (hi, s2) = try value()
                valueSpans = [s1, s2]
                e = .between(column: column, low: lo, high: hi)
            case .keyword("IN"):
                _ = advance()
                let (vs, ss) = try list { try $0.value() }
                valueSpans = ss
                e = .isIn(column: column, values: vs)
            case .keyword("HAS"):
                _ = advance()
                if isKeyword("ANY") || isKeyword("ALL") {
                    let all = isKeyword("ALL")
                    _ = advance()
                    let (ts, ss) = try list { try $0.stringValue() }
                    valueSpans = ss
                    e = all ? .hasAll(column: column, tags: ts) : .hasAny(column: column, tags: ts)
                } else if case .string(let t) = peek.kind {
                    valueSpans = [advance().span]
                    e = .has(column: column, tag: t)
                } else {
                    throw unexpected("a 'tag', ANY (...) or ALL (...)")
                }
            default:
                throw unexpected("an operator (=, !=, <, <=, >, >=, BETWEEN, IN, HAS)")
            }
            spans.append(FilterPredicateSpans(column: columnSpan, op: opToken.span, values: valueSpans))
            return negate ? .not(e) : e
        }
    }
}

import FathomCore
import Foundation

// SQUASH/OSQ-style attribute codes (ALGORITHMS.md §3): every numeric column is cut into cells
// (equal-count start, refined by 1-D Lloyd), the numeric bit budget is shared by the energy
// rule, category columns keep their dictionary code, and each vector gets a fixed number of
// bytes holding its cell/code per column, bit-packed. A filter turns into per-column
// lookup tables over cells that are conservative: a cell that may hold a matching value passes.
// Per-posting summaries (AttributeSummary) give the same guarantee for whole postings.

/// Settings for ``QuantizedAttributes/init(table:options:)``.
public struct AttributeQuantizerOptions: Sendable, Equatable {
    /// Bits per vector shared by the numeric columns (SQUASH `attribute_bit_budget`).
    public var numericBitBudget: Int = 32
    /// Upper bound on the cells of one numeric column (SQUASH caps at 256).
    public var maxCellsPerColumn: Int = 256
    /// Bits for a category code; larger dictionaries are folded (code mod 2^bits, still conservative).
    public var maxCategoryBits: Int = 16
    /// Bits of a Bloom-style signature per tags column (0 = tags are not in the codes; at most 32).
    public var tagSignatureBits: Int = 0
    /// Columns to quantize (nil = all columns of the table).
    public var columns: [String]? = nil
    /// Lloyd refinement: at most this many iterations...
    public var lloydIterations: Int = 250
    /// ...stopping when the distortion improves by less than this fraction.
    public var lloydTolerance: Double = 0.005
    /// Columns with at most this many distinct values keep an exact value histogram (selectivity).
    public var exactHistogramLimit: Int = 1024
    public init() {}
}

/// Attribute codes of every vector (fixed bytes per vector) and the cells behind them.
public struct QuantizedAttributes: Sendable {
    /// How one table column is represented in the codes.
    public struct Column: Sendable, Equatable {
        public enum Kind: UInt8, Sendable { case numeric = 0, category = 1, tagSignature = 2 }
        public let name: String
        /// Index of the column in the table / schema.
        public let tableColumn: Int
        public let type: AttributeType
        public let kind: Kind
        /// Bit position of the field in a vector's code bytes (little-endian bit order).
        public let bitOffset: Int
        /// Field width in bits (0 for a constant column).
        public let bits: Int
        /// Numeric: inner cell boundaries, strictly ascending. Cell c holds the values in
        /// [boundaries[c-1], boundaries[c]), with -inf before the first and +inf after the last.
        public let boundaries: [Double]
        /// Int columns: the same boundaries as exact integers (cell c = [B[c-1], B[c]-1]).
        public let intBoundaries: [Int64]
        /// Category / tags: the dictionary size.
        public let cardinality: Int
        /// Rows per cell (numeric) or per field value (category), at build time.
        public let cellCounts: [UInt32]
        /// Numeric: smallest and largest value and the number of distinct values seen in each cell.
        public let cellMin: [Double]
        public let cellMax: [Double]
        public let cellDistinct: [UInt32]
        /// Numeric columns with few distinct values: each value and its row count (ascending).
        public let histogramValues: [Double]
        public let histogramCounts: [UInt32]

        /// Number of cells (numeric) or field values in use (category); 0 for a tag signature.
        public var cellCount: Int {
            switch kind {
            case .numeric: return boundaries.count + 1
            case .category: return bits >= 32 ? cardinality : min(max(cardinality, 1), 1 << bits)
            case .tagSignature: return 0
            }
        }
        /// A category column whose codes do not fit `bits` (several codes share a field value).
        public var folded: Bool { kind == .category && cardinality > (1 << bits) }

        /// The cell of a numeric value (exact for int columns).
        @inlinable public func cell(ofDouble v: Double) -> Int {
            var lo = 0, hi = boundaries.count   // number of boundaries <= v
            while lo < hi { let m = (lo + hi) >> 1; if boundaries[m] <= v { lo = m + 1 } else { hi = m } }
            return lo
        }
        @inlinable public func cell(ofInt v: Int64) -> Int {
            var lo = 0, hi = intBoundaries.count
            while lo < hi { let m = (lo + hi) >> 1; if intBoundaries[m] <= v { lo = m + 1 } else { hi = m } }
            return lo
        }
    }

    /// Number of vectors.
    public let count: Int
    /// Bytes of codes per vector.
    public let bytesPerVector: Int
    /// The quantized columns, in code order.
    public let columns: [Column]
    /// `count × bytesPerVector` bytes: vector i's codes start at `i * bytesPerVector`.
    public let codes: [UInt8]
    /// The table's schema (with dictionaries).
    public let schema: AttributeSchema
    /// The options used to build.
    public let options: AttributeQuantizerOptions

    /// Index in ``columns`` of the table column `tableColumn`, or nil if it is not quantized.
    public func slot(ofTableColumn tableColumn: Int) -> Int? { columns.firstIndex { $0.tableColumn == tableColumn } }
    public func slot(named name: String) -> Int? { columns.firstIndex { $0.name == name } }

    /// Quantizes every (or the selected) column of `table`.
    public init(table: AttributeTable, options: AttributeQuantizerOptions = .init()) throws {
        guard options.numericBitBudget >= 0, options.maxCellsPerColumn >= 1, options.maxCellsPerColumn <= 1 << 16,
              (0...24).contains(options.maxCategoryBits), (0...32).contains(options.tagSignatureBits) else {
            throw FathomError(.invalidArgument, "attribute quantizer options out of range: budget ≥ 0, 1 ≤ cells ≤ 65536, category bits 0…24, tag signature bits 0…32")
        }
        var chosen = Array(0..<table.columns.count)
        if let names = options.columns {
            chosen = try names.map { n in
                guard let i = table.columnIndex(n) else {
                    throw FathomError(.invalidArgument, "cannot quantize unknown column '\(n)'; the table has \(table.names.joined(separator: ", "))")
                }
                return i
            }
        }
        let n = table.count
        // Numeric columns: sorted values, distinct counts, energy allocation.
        var sortedValues = [Int: [Double]]()
        var distinct = [Int: Int]()
        for c in chosen where table.schema.columns[c].type.isNumeric {
            var v = [Double](repeating: 0, count: n)
            for r in 0..<n { v[r] = table.double(row: r, column: c) }
            v.sort()
            sortedValues[c] = v
            var d = n > 0 ? 1 : 0
            if n > 1 { for i in 1..<n where v[i] != v[i - 1] { d += 1 } }
            distinct[c] = d
        }
        let numeric = chosen.filter { sortedValues[$0] != nil }
        let cells = AttributeQuantizer.allocateCells(
            energies: numeric.map { distinct[$0]! > 1 ? 1.0 : 0.0 },   // z-scored columns: variance 1
            budgetBits: options.numericBitBudget,
            maxCells: numeric.map { min(options.maxCellsPerColumn, AttributeQuantizer.nextPowerOfTwo(distinct[$0]!)) })
        var cellsFor = [Int: Int]()
        for (k, c) in numeric.enumerated() { cellsFor[c] = cells[k] }

        var cols = [Column]()
        var bitOffset = 0
        for c in chosen {
            let sc = table.schema.columns[c]
            switch table.columns[c] {
            case .int, .float:
                let isInt = sc.type == .int
                let v = sortedValues[c]!
                var b = AttributeQuantizer.cellBoundaries(sorted: v, cells: cellsFor[c]!,
                                                          iterations: options.lloydIterations, tolerance: options.lloydTolerance)
                var ib = [Int64]()
                if isInt {
                    // Snap to integers: v >= b  <=>  v >= ceil(b) for integer v, so cells keep their rows.
                    var last: Int64? = nil
                    for x in b {
                        let s = x >= 9.2e18 ? Int64.max : (x <= -9.2e18 ? Int64.min : Int64(x.rounded(.up)))
                        if s != last { ib.append(s); last = s }
                    }
                    b = ib.map { Double($0) }
                }
                let k = b.count + 1
                var counts = [UInt32](repeating: 0, count: k), mins = [Double](repeating: .infinity, count: k)
                var maxs = [Double](repeating: -.infinity, count: k), dist = [UInt32](repeating: 0, count: k)
                var hv = [Double](), hc = [UInt32]()
                let keepHistogram = distinct[c]! <= options.exactHistogramLimit
                if isInt, case .int(let raw) = table.columns[c] {
                    // exact integer cells (the Double sort above may merge huge values)
                    let sortedInts = raw.sorted()
                    var prev: Int64? = nil
                    var cell = 0
                    for x in sortedInts {
                        while cell < ib.count && ib[cell] <= x { cell += 1 }
                        counts[cell] += 1
                        mins[cell] = min(mins[cell], Double(x)); maxs[cell] = max(maxs[cell], Double(x))
                        if x != prev {
                            dist[cell] += 1
                            if keepHistogram { hv.append(Double(x)); hc.append(1) }
                        } else if keepHistogram { hc[hc.count - 1] += 1 }
                        prev = x
                    }
                } else {
                    var prev: Double? = nil
                    var cell = 0
                    for x in v {
                        while cell < b.count && b[cell] <= x { cell += 1 }
                        counts[cell] += 1
                        mins[cell] = min(mins[cell], x); maxs[cell] = max(maxs[cell], x)
                        if x != prev {
                            dist[cell] += 1
                            if keepHistogram { hv.append(x); hc.append(1) }
                        } else if keepHistogram { hc[hc.count - 1] += 1 }
                        prev = x
                    }
                }
                let bits = AttributeQuantizer.bitsFor(cells: k)
                cols.append(Column(name: sc.name, tableColumn: c, type: sc.type, kind: .numeric, bitOffset: bitOffset, bits: bits,
                                   boundaries: b, intBoundaries: ib, cardinality: 0, cellCounts: counts, cellMin: mins,
                                   cellMax: maxs, cellDistinct: dist, histogramValues: hv, histogramCounts: hc))
                bitOffset += bits
            case .category(_, let d):
                let bits = min(AttributeQuantizer.bitsFor(cells: d.count), options.maxCategoryBits)
                let k = min(max(d.count, 1), 1 << bits)
                var counts = [UInt32](repeating: 0, count: k)
                for (code, cnt) in table.codeCounts[c].enumerated() { counts[code % k] += cnt }
                cols.append(Column(name: sc.name, tableColumn: c, type: .category, kind: .category, bitOffset: bitOffset, bits: bits,
                                   boundaries: [], intBoundaries: [], cardinality: d.count, cellCounts: counts, cellMin: [],
                                   cellMax: [], cellDistinct: [], histogramValues: [], histogramCounts: []))
                bitOffset += bits
            case .tags(_, _, let d):
                guard options.tagSignatureBits > 0 else { continue }
                let bits = options.tagSignatureBits
                cols.append(Column(name: sc.name, tableColumn: c, type: .tags, kind: .tagSignature, bitOffset: bitOffset, bits: bits,
                                   boundaries: [], intBoundaries: [], cardinality: d.count, cellCounts: [], cellMin: [],
                                   cellMax: [], cellDistinct: [], histogramValues: [], histogramCounts: []))
                bitOffset += bits
            }
        }
        self.columns = cols
        self.count = n
        self.bytesPerVector = (bitOffset + 7) / 8
        self.schema = table.schema
        self.options = options
        var codes = [UInt8](repeating: 0, count: n * bytesPerVector)
        let bpv = bytesPerVector
        if bpv > 0 {
            codes.withUnsafeMutableBytes { buf in
                for r in 0..<n { Self.encodeRow(r, table: table, columns: cols, into: buf.baseAddress! + r * bpv) }
            }
        }
        self.codes = codes
    }

    init(count: Int, bytesPerVector: Int, columns: [Column], codes: [UInt8], schema: AttributeSchema, options: AttributeQuantizerOptions) {
        self.count = count; self.bytesPerVector = bytesPerVector; self.columns = columns
        self.codes = codes; self.schema = schema; self.options = options
    }

    /// The field value of `column` (an index in ``columns``) for vector `row`.
    public func code(row: Int, column: Int) -> Int {
        codes.withUnsafeBytes { Int(Self.readField($0.baseAddress! + row * bytesPerVector, bitOffset: columns[column].bitOffset, bits: columns[column].bits)) }
    }

    /// Calls `body` with a pointer to vector `row`'s code bytes.
    public func withCodes<R>(row: Int, _ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        precondition(row >= 0 && row < count, "row \(row) out of range 0..<\(count)")
        return try codes.withUnsafeBytes { try body($0.baseAddress! + row * bytesPerVector) }
    }

    /// The value range of a numeric cell: half-open [lo, hi) (infinite at the ends). For int
    /// columns the cell holds the integers lo...hi-1. For a category column the "cell" is a
    /// field value and the range is (code, code + 1) when not folded.
    public func cellRange(column: Int, cell: Int) -> (lo: Double, hi: Double) {
        let c = columns[column]
        switch c.kind {
        case .numeric:
            let lo = cell == 0 ? -Double.infinity : c.boundaries[cell - 1]
            let hi = cell >= c.boundaries.count ? Double.infinity : c.boundaries[cell]
            return (lo, hi)
        case .category, .tagSignature:
            return (Double(cell), Double(cell + 1))
        }
    }

    /// Writes the codes of row `row` of `table` (with this schema) to `out` (bytesPerVector
    /// bytes): use it to encode vectors added after the build.
    public func encode(row: Int, of table: AttributeTable, into out: UnsafeMutableRawPointer) {
        Self.encodeRow(row, table: table, columns: columns, into: out)
    }

    static func encodeRow(_ r: Int, table: AttributeTable, columns: [Column], into out: UnsafeMutableRawPointer) {
        let bpv = ((columns.last.map { $0.bitOffset + $0.bits } ?? 0) + 7) / 8
        out.initializeMemory(as: UInt8.self, repeating: 0, count: bpv)
        for c in columns where c.bits > 0 {
            let v: UInt64
            switch table.columns[c.tableColumn] {
            case .int(let x): v = UInt64(c.cell(ofInt: x[r]))
            case .float(let x): v = UInt64(c.cell(ofDouble: x[r]))
            case .category(let codes, _): v = UInt64(codes[r]) & ((1 << UInt64(c.bits)) - 1)
            case .tags(let o, let ids, _):
                var s: UInt64 = 0
                for k in Int(o[r])..<Int(o[r + 1]) { s |= 1 << UInt64(AttributeQuantizer.signatureBit(tag: ids[k], bits: c.bits)) }
                v = s
            }
            writeField(out, bitOffset: c.bitOffset, bits: c.bits, value: v)
        }
    }

    @inline(__always) static func writeField(_ p: UnsafeMutableRawPointer, bitOffset: Int, bits: Int, value: UInt64) {
        var v = value << UInt64(bitOffset & 7)
        var byte = bitOffset >> 3
        var remaining = bits + (bitOffset & 7)
        while remaining > 0 {
            let old = p.load(fromByteOffset: byte, as: UInt8.self)
            p.storeBytes(of: old | UInt8(truncatingIfNeeded: v), toByteOffset: byte, as: UInt8.self)
            v >>= 8; byte += 1; remaining -= 8
        }
    }

    /// Reads a bit field (at most 32 bits wide) of a vector's codes.
    @inline(__always) public static func readField(_ p: UnsafeRawPointer, bitOffset: Int, bits: Int) -> UInt64 {
        if bits == 0 { return 0 }
        let first = bitOffset >> 3
        let nbytes = ((bitOffset & 7) + bits + 7) >> 3
        var v: UInt64 = 0
        for i in 0..<nbytes { v |= UInt64(p.load(fromByteOffset: first + i, as: UInt8.self)) << UInt64(8 * i) }
        return (v >> UInt64(bitOffset & 7)) & ((1 << UInt64(bits)) - 1)
    }
}

/// The quantizer's building blocks, public for tests and tools.
public enum AttributeQuantizer {
    /// ⌈log₂ cells⌉ (0 for one cell).
    public static func bitsFor(cells: Int) -> Int {
        var b = 0
        while (1 << b) < cells { b += 1 }
        return b
    }
    public static func nextPowerOfTwo(_ x: Int) -> Int { 1 << bitsFor(cells: max(1, x)) }

    /// Energy-based allocation (SQUASH `vaqindex.py`): `budgetBits` times, pick the column
    /// with the largest energy that may still grow, double its cells and divide its energy by 4.
    public static func allocateCells(energies: [Double], budgetBits: Int, maxCells: [Int]) -> [Int] {
        var e = energies
        var cells = [Int](repeating: 1, count: energies.count)
        for _ in 0..<budgetBits {
            var best = -1
            for j in e.indices where cells[j] * 2 <= maxCells[j] && e[j] > 0 {
                if best < 0 || e[j] > e[best] { best = j }
            }
            if best < 0 { break }
            cells[best] *= 2
            e[best] /= 4
        }
        return cells
    }

    /// Bloom bit of a tag in a signature of `bits` bits.
    @inline(__always) public static func signatureBit(tag: UInt32, bits: Int) -> Int {
        Int(((UInt64(tag) &+ 1) &* 0x9E37_79B9_7F4A_7C15) >> 32) % bits
    }

    /// Inner boundaries of at most `cells` cells over sorted values: equal-count start (on
    /// distinct values, so heavy ties get a cell of their own), refined by 1-D Lloyd.
    /// Columns with at most `cells` distinct values get one cell per value.
    public static func cellBoundaries(sorted v: [Double], cells: Int, iterations: Int = 250, tolerance: Double = 0.005) -> [Double] {
        let n = v.count
        guard n > 0, cells > 1 else { return [] }
        var values = [Double](), counts = [Int]()
        for x in v {
            if let l = values.last, l == x { counts[counts.count - 1] += 1 } else { values.append(x); counts.append(1) }
        }
        let d = values.count
        if d <= cells { return Array(values.dropFirst()) }
        // Equal-count start over distinct values.
        var bounds = [Double]()
        var remaining = n, cellsLeft = cells, i = 0
        while cellsLeft > 1 && i < d {
            let target = Double(remaining) / Double(cellsLeft)
            var acc = 0
            repeat { acc += counts[i]; i += 1 } while i < d && Double(acc) < target && (d - i) > cellsLeft - 1
            if i >= d { break }
            bounds.append(values[i])
            remaining -= acc
            cellsLeft -= 1
        }
        // 1-D Lloyd on the sorted values with prefix sums (centred for precision).
        let mean = v.reduce(0, +) / Double(n)
        var p = [Double](repeating: 0, count: n + 1), q = [Double](repeating: 0, count: n + 1)
        for k in 0..<n { let x = v[k] - mean; p[k + 1] = p[k] + x; q[k + 1] = q[k] + x * x }
        func lowerBound(_ t: Double) -> Int {
            var lo = 0, hi = n
            while lo < hi { let m = (lo + hi) >> 1; if v[m] < t { lo = m + 1 } else { hi = m } }
            return lo
        }
        var previous = Double.infinity
        for _ in 0..<iterations {
            var starts = [0] + bounds.map(lowerBound) + [n]
            starts = starts.enumerated().filter { $0.offset == 0 || $0.offset == starts.count - 1 || $0.element > 0 }.map(\.element)
            var centroids = [Double](), distortion = 0.0
            for j in 0..<(starts.count - 1) where starts[j + 1] > starts[j] {
                let a = starts[j], b = starts[j + 1], m = Double(b - a)
                let s = p[b] - p[a]
                centroids.append(s / m + mean)
                distortion += max(0, (q[b] - q[a]) - s * s / m)
            }
            let converged = previous.isFinite && previous - distortion <= tolerance * previous
            if converged || distortion == 0 { break }
            previous = distortion
            var next = [Double]()
            for j in 0..<(centroids.count - 1) {
                let mid = centroids[j] + (centroids[j + 1] - centroids[j]) / 2
                if mid > v[0], mid <= v[n - 1], next.last.map({ mid > $0 }) ?? true { next.append(mid) }
            }
            bounds = next
        }
        var out = [Double]()
        for b in bounds where b > v[0] && (out.last.map { b > $0 } ?? true) { out.append(b) }
        return rebalance(sorted: v, boundaries: out, cells: cells)
    }

    /// Lloyd minimises squared error, which on heavy-tailed columns spends the cells on the
    /// tail and leaves most rows in one cell (useless for filtering). Keep the cell count and
    /// repeatedly merge the two lightest neighbouring cells and split the heaviest multi-valued
    /// cell at its median, until no multi-valued cell holds more than twice the equal-count share.
    public static func rebalance(sorted v: [Double], boundaries: [Double], cells: Int) -> [Double] {
        let n = v.count
        guard n > 0, cells > 1 else { return boundaries }
        var b = boundaries
        func lowerBound(_ t: Double) -> Int {
            var lo = 0, hi = n
            while lo < hi { let m = (lo + hi) >> 1; if v[m] < t { lo = m + 1 } else { hi = m } }
            return lo
        }
        let share = 2.0 * Double(n) / Double(cells)
        for _ in 0..<(4 * cells) {
            let starts = [0] + b.map(lowerBound) + [n]
            let k = starts.count - 1
            var big = -1
            for j in 0..<k where starts[j + 1] > starts[j] && v[starts[j]] != v[starts[j + 1] - 1] {
                if big < 0 || starts[j + 1] - starts[j] > starts[big + 1] - starts[big] { big = j }
            }
            guard big >= 0 else { break }
            let bigCount = starts[big + 1] - starts[big]
            guard Double(bigCount) > share else { break }
            // split point: the median, moved to a distinct value above the cell's first value
            let lo = starts[big], hi = starts[big + 1]
            var m = v[lo + bigCount / 2]
            if m == v[lo] {
                let next = lowerBound(v[lo].nextUp)
                guard next < hi else { break }
                m = v[next]
            }
            if b.count + 1 < cells {   // a cell to spare (fewer distinct boundaries than cells)
                b.insert(m, at: b.firstIndex { $0 > m } ?? b.count)
                continue
            }
            var pair = -1, pairCount = Int.max
            for j in 0..<(k - 1) where j != big && j + 1 != big {
                let c = starts[j + 2] - starts[j]
                if c < pairCount { pair = j; pairCount = c }
            }
            guard pair >= 0, pairCount < bigCount / 2 else { break }
            b.remove(at: pair)                 // boundary between cells pair and pair+1
            b.insert(m, at: b.firstIndex { $0 > m } ?? b.count)
        }
        return b
    }
}

// MARK: - Binary form

extension QuantizedAttributes {
    static let magic: [UInt8] = Array("FATQATR1".utf8)

    /// The binary form (little-endian; layout in docs/attributes.md), ending with a CRC32C.
    /// The schema's dictionaries are not stored: pass the table's schema to ``decode(_:schema:)``.
    public func encode() -> [UInt8] {
        var w = AttributeBinaryWriter(magic: Self.magic, version: 1)
        w.u64(UInt64(count))
        w.u32(UInt32(bytesPerVector))
        w.u32(UInt32(columns.count))
        w.u32(UInt32(options.numericBitBudget)); w.u32(UInt32(options.maxCellsPerColumn))
        w.u32(UInt32(options.maxCategoryBits)); w.u32(UInt32(options.tagSignatureBits))
        for c in columns {
            w.string(c.name)
            w.u32(UInt32(c.tableColumn))
            w.u8(c.kind.rawValue)
            w.u8(c.type == .int ? 0 : c.type == .float ? 1 : c.type == .category ? 2 : 3)
            w.u32(UInt32(c.bitOffset)); w.u32(UInt32(c.bits))
            w.u64(UInt64(c.cardinality))
            w.u64(UInt64(c.boundaries.count)); w.f64s(c.boundaries)
            w.u64(UInt64(c.intBoundaries.count)); w.i64s(c.intBoundaries)
            w.u64(UInt64(c.cellCounts.count)); w.u32s(c.cellCounts)
            w.u64(UInt64(c.cellMin.count)); w.f64s(c.cellMin); w.f64s(c.cellMax); w.u32s(c.cellDistinct)
            w.u64(UInt64(c.histogramValues.count)); w.f64s(c.histogramValues); w.u32s(c.histogramCounts)
        }
        w.raw(codes)
        w.sealWithChecksum()
        return w.bytes
    }

    /// Decodes ``encode()``'s output; `schema` is the attribute table's schema.
    public static func decode(_ data: [UInt8], schema: AttributeSchema) throws -> QuantizedAttributes {
        let what = "quantized attributes"
        return try data.withUnsafeBytes { raw in
            var r = try AttributeBinaryReader(sealed: raw, what: what, magic: magic, badMagic: "bad magic", version: 1)
            let body = r.bytes
            let n = try r.size()
            let bpv = Int(try r.u32())
            let nc = Int(try r.u32())
            var o = AttributeQuantizerOptions()
            o.numericBitBudget = Int(try r.u32()); o.maxCellsPerColumn = Int(try r.u32())
            o.maxCategoryBits = Int(try r.u32()); o.tagSignatureBits = Int(try r.u32())
            var cols = [Column]()
            for _ in 0..<nc {
                let name = try r.string()
                let tc = Int(try r.u32())
                guard let kind = Column.Kind(rawValue: try r.u8()) else { throw r.fail("bad column kind") }
                let t = try r.u8()
                guard t < 4 else { throw r.fail("bad column type") }
                let type: AttributeType = [.int, .float, .category, .tags][Int(t)]
                let off = Int(try r.u32()), bits = Int(try r.u32())
                let card = try r.size()
                let b = try r.f64s(try r.size())
                let ib = try r.i64s(try r.size())
                let cc = try r.u32s(try r.size())
                let k = try r.size()
                let mn = try r.f64s(k), mx = try r.f64s(k), dd = try r.u32s(k)
                let h = try r.size()
                let hv = try r.f64s(h), hc = try r.u32s(h)
                guard tc < schema.columns.count, schema.columns[tc].name == name, schema.columns[tc].type == type,
                      bits <= 32, off + bits <= bpv * 8 else {
                    throw r.fail("column '\(name)' does not match the attribute schema or the code width")
                }
                let consistent: Bool
                switch kind {
                case .numeric:
                    consistent = type.isNumeric && ib.count == (type == .int ? b.count : 0) && cc.count == b.count + 1
                        && k == b.count + 1 && AttributeQuantizer.bitsFor(cells: b.count + 1) <= bits && hv.count == hc.count
                        && zip(b, b.dropFirst()).allSatisfy { $0 < $1 } && zip(ib, ib.dropFirst()).allSatisfy { $0 < $1 }
                case .category:
                    consistent = type == .category && card == schema.columns[tc].dictionary.map(\.count) ?? card
                        && cc.count == min(max(card, 1), 1 << bits) && bits <= 24
                case .tagSignature:
                    consistent = type == .tags && bits >= 1
                }
                guard consistent else { throw r.fail("column '\(name)': inconsistent cells or code width") }
                cols.append(Column(name: name, tableColumn: tc, type: type, kind: kind, bitOffset: off, bits: bits, boundaries: b,
                                   intBoundaries: ib, cardinality: card, cellCounts: cc, cellMin: mn, cellMax: mx,
                                   cellDistinct: dd, histogramValues: hv, histogramCounts: hc))
            }
            guard n.multipliedReportingOverflow(by: bpv).overflow == false else { throw r.fail("size overflow") }
            let codes = try r.raw(n * bpv)
            guard r.pos == body.count else { throw r.fail("\(body.count - r.pos) trailing bytes") }
            return QuantizedAttributes(count: n, bytesPerVector: bpv, columns: cols, codes: codes, schema: schema, options: o)
        }
    }
}

// MARK: - Per-posting summaries

/// What a set of rows (a posting) holds, per column: numeric min/max, and the category codes
/// or tags present as a bitset. A filter rejects the posting only if no row can match.
public struct AttributeSummary: Sendable, Equatable {
    public enum Column: Sendable, Equatable {
        /// Not summarized: any predicate on it may match.
        case unknown
        case int(min: Int64, max: Int64)
        case float(min: Double, max: Double)
        /// Category codes or tag ids present: bit `id % modulus` of `bits`. When
        /// `modulus` equals the dictionary size the set is exact, otherwise it is folded
        /// (a set bit means "may be present").
        case codes(bits: [UInt64], modulus: Int, exact: Bool)
    }
    /// Largest bitset kept per category/tags column (bits); larger dictionaries are folded.
    public static let maxBitsetBits = 4096

    /// Rows summarized.
    public var count: Int
    /// One entry per table column.
    public var columns: [Column]

    public init(count: Int, columns: [Column]) { self.count = count; self.columns = columns }

    /// An empty summary for the table's columns (`quantized` restricts to its columns).
    public static func empty(table: AttributeTable, quantized: QuantizedAttributes? = nil) -> AttributeSummary {
        let keep = quantized.map { Set($0.columns.map(\.tableColumn)) }
        let cols: [Column] = table.columns.enumerated().map { (i, c) in
            if let keep, !keep.contains(i) { return .unknown }
            switch c {
            case .int: return .int(min: .max, max: .min)
            case .float: return .float(min: .infinity, max: -.infinity)
            case .category(_, let d), .tags(_, _, let d):
                let m = max(1, min(d.count, maxBitsetBits))
                return .codes(bits: [UInt64](repeating: 0, count: (m + 63) / 64), modulus: m, exact: d.count <= maxBitsetBits)
            }
        }
        return AttributeSummary(count: 0, columns: cols)
    }

    /// Summarizes the rows `ids` of `table`. With `quantized`, only its columns are summarized
    /// (the others are `.unknown`).
    public static func summarize(ids: [UInt32], table: AttributeTable, quantized: QuantizedAttributes? = nil) -> AttributeSummary {
        var s = empty(table: table, quantized: quantized)
        for id in ids { s.add(row: Int(id), table: table) }
        return s
    }

    /// Adds one row (e.g. a vector appended to the posting).
    public mutating func add(row r: Int, table: AttributeTable) {
        count += 1
        for i in columns.indices {
            switch (columns[i], table.columns[i]) {
            case (.int(let lo, let hi), .int(let v)): columns[i] = .int(min: Swift.min(lo, v[r]), max: Swift.max(hi, v[r]))
            case (.float(let lo, let hi), .float(let v)): columns[i] = .float(min: Swift.min(lo, v[r]), max: Swift.max(hi, v[r]))
            case (.codes(var bits, let m, let exact), .category(let codes, _)):
                columns[i] = .unknown   // release the array so the update is in place
                let x = Int(codes[r]) % m
                bits[x >> 6] |= 1 << UInt64(x & 63)
                columns[i] = .codes(bits: bits, modulus: m, exact: exact)
            case (.codes(var bits, let m, let exact), .tags(let o, let ids, _)):
                columns[i] = .unknown
                for k in Int(o[r])..<Int(o[r + 1]) {
                    let x = Int(ids[k]) % m
                    bits[x >> 6] |= 1 << UInt64(x & 63)
                }
                columns[i] = .codes(bits: bits, modulus: m, exact: exact)
            default: break
            }
        }
    }

    /// Binary form: u32 count, u32 columns, then per column a tag byte and its data
    /// (docs/attributes.md).
    public func encode() -> [UInt8] {
        var w = AttributeBinaryWriter()
        w.u32(UInt32(count))
        w.u32(UInt32(columns.count))
        for c in columns {
            switch c {
            case .unknown: w.u8(0)
            case .int(let lo, let hi): w.u8(1); w.i64(lo); w.i64(hi)
            case .float(let lo, let hi): w.u8(2); w.f64(lo); w.f64(hi)
            case .codes(let bits, let m, let exact):
                w.u8(exact ? 4 : 3); w.u32(UInt32(m))
                // sparse form when few bits are set: u32 count + u16 positions
                let set = bits.reduce(0) { $0 + $1.nonzeroBitCount }
                if m <= 65536 && set * 2 + 4 < bits.count * 8 {
                    w.u8(1); w.u32(UInt32(set))
                    for (wi, word) in bits.enumerated() {
                        var x = word
                        while x != 0 { let t = x.trailingZeroBitCount; w.u16(UInt16(wi * 64 + t)); x &= x - 1 }
                    }
                } else {
                    w.u8(0); for word in bits { w.u64(word) }
                }
            }
        }
        return w.bytes
    }

    /// Decodes ``encode()``'s output (throws `.corruptIndex`).
    public static func decode(_ data: [UInt8]) throws -> AttributeSummary {
        try data.withUnsafeBytes { try decode($0).summary }
    }

    /// Decodes a summary at the start of `data`; returns it and the bytes used.
    public static func decode(_ data: UnsafeRawBufferPointer) throws -> (summary: AttributeSummary, bytes: Int) {
        var r = AttributeBinaryReader(data, what: "attribute summary")
        let count = Int(try r.u32())
        let nc = Int(try r.u32())
        guard nc <= data.count else { throw r.fail("column count \(nc) exceeds the data") }
        var cols = [Column]()
        for _ in 0..<nc {
            switch try r.u8() {
            case 0: cols.append(.unknown)
            case 1: cols.append(.int(min: try r.i64(), max: try r.i64()))
            case 2: cols.append(.float(min: try r.f64(), max: try r.f64()))
            case let t where t == 3 || t == 4:
                let m = Int(try r.u32())
                guard m >= 1, m <= 1 << 24 else { throw r.fail("bad bitset size \(m)") }
                var bits = [UInt64](repeating: 0, count: (m + 63) / 64)
                if try r.u8() == 1 {
                    let k = Int(try r.u32())
                    guard k <= m else { throw r.fail("bad bit count") }
                    for _ in 0..<k {
                        let x = Int(try r.u16())
                        guard x < m else { throw r.fail("bit \(x) out of range") }
                        bits[x >> 6] |= 1 << UInt64(x & 63)
                    }
                } else {
                    for j in bits.indices { bits[j] = try r.u64() }
                }
                cols.append(.codes(bits: bits, modulus: m, exact: t == 4))
            case let t: throw r.fail("unknown summary column tag \(t)")
            }
        }
        return (AttributeSummary(count: count, columns: cols), r.pos)
    }
}

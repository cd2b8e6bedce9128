import FathomCodecs
import FathomCore

// A filter compiled once into a flat postfix program over the raw attribute columns, run on a
// block of row ids at a time: each instruction sweeps the whole block (one column access,
// one tight loop over the ids), so evaluation costs no allocation, no reference counting and
// no recursion per row. Used by the search after the code test (`CodeFilter.select`) to check
// the survivors of a posting exactly before any distance is computed.

/// The exact predicate of a ``BoundFilter`` as a flat program over an ``AttributeTable``'s
/// columns, evaluated on blocks of rows.
///
/// Thread safety: immutable and `Sendable`; share one program between threads, each with
/// its own ``FilterScratch``.
public struct FilterProgram: Sendable {
    enum Op: UInt8 {
        case constant, intRange, intSet, floatRange, floatSet, category, tags, not, and, or
    }
    struct Instr: Sendable {
        var op: Op
        var column: Int32 = 0
        /// constant: 0/1; tags: 1 = HAS ALL; and/or: number of operands
        var flag: Int32 = 0
        var lo: Int64 = 0, hi: Int64 = 0            // intRange
        var range = DoubleRange(lo: 0, loIn: true, hi: 0, hiIn: true)   // floatRange
        var start: Int32 = 0, count: Int32 = 0      // a slice of the matching pool
    }
    let code: [Instr]
    let ints: [Int64]
    let doubles: [Double]
    /// category: a membership byte per dictionary code
    let member: [UInt8]
    /// tags: sorted ids
    let tagIds: [UInt32]
    /// Mask slots the program needs (its stack depth).
    public let stackDepth: Int
    /// Rows per block (``FilterScratch`` holds `stackDepth` masks of this many bytes).
    public static let blockSize = 256

    /// Compiles `filter` for `table` (which must have the schema the filter was bound to;
    /// category and tag strings are resolved against its dictionaries here, once).
    public init(_ filter: BoundFilter, table: AttributeTable) {
        filter.checkCompatible(with: table.schema)
        let f = filter.resolved(with: table.schema)
        var b = Compiler(table: table)
        b.emit(f.root)
        code = b.code; ints = b.ints; doubles = b.doubles; member = b.member; tagIds = b.tagIds
        stackDepth = max(1, b.maxDepth)
    }

    struct Compiler {
        let table: AttributeTable
        var code = [Instr](), ints = [Int64](), doubles = [Double](), member = [UInt8](), tagIds = [UInt32]()
        var depth = 0, maxDepth = 0

        mutating func push(_ i: Instr) {
            code.append(i)
            depth += 1; maxDepth = max(maxDepth, depth)
        }

        mutating func emit(_ n: BoundNode) {
            switch n {
            case .constant(let v): push(Instr(op: .constant, flag: v ? 1 : 0))
            case .leaf(let l): leaf(l)
            case .not(let x): emit(x); code.append(Instr(op: .not))
            case .and(let cs), .or(let cs):
                var isAnd = false
                if case .and = n { isAnd = true }
                if cs.isEmpty { push(Instr(op: .constant, flag: isAnd ? 1 : 0)); return }
                for c in cs { emit(c) }
                var i = Instr(op: isAnd ? .and : .or)
                i.flag = Int32(cs.count)
                code.append(i)
                depth -= cs.count - 1
            }
        }

        mutating func leaf(_ l: BoundLeaf) {
            let c = Int32(l.column)
            switch l {
            case .intRange(_, let lo, let hi):
                push(Instr(op: .intRange, column: c, lo: lo, hi: hi))
            case .intSet(_, let values):
                push(Instr(op: .intSet, column: c, start: Int32(ints.count), count: Int32(values.count)))
                ints += values
            case .floatRange(_, let r):
                push(Instr(op: .floatRange, column: c, range: r))
            case .floatSet(_, let values):
                push(Instr(op: .floatSet, column: c, start: Int32(doubles.count), count: Int32(values.count)))
                doubles += values
            case .category(_, let strings, let codes):
                guard case .category(_, let dict) = table.columns[l.column] else { preconditionFailure("column \(c) is not a category") }
                var m = [UInt8](repeating: 0, count: dict.count)
                // Resolved filters carry codes; a string the dictionary lacks matches nothing.
                let resolved = codes ?? strings.compactMap { dict.code(of: $0) }
                for x in resolved where Int(x) < m.count { m[Int(x)] = 1 }
                push(Instr(op: .category, column: c, start: Int32(member.count), count: Int32(m.count)))
                member += m
            case .tags(_, let all, let strings, let ids):
                guard case .tags(_, _, let dict) = table.columns[l.column] else { preconditionFailure("column \(c) is not tags") }
                let want: [UInt32]
                if let ids { want = ids } else {
                    let found = strings.map { dict.code(of: $0) }
                    // HAS ALL of a tag that never occurs: nothing matches; HAS ANY: it is dropped.
                    if all && found.contains(where: { $0 == nil }) { push(Instr(op: .constant, flag: 0)); return }
                    want = Array(Set(found.compactMap { $0 })).sorted()
                }
                push(Instr(op: .tags, column: c, flag: all ? 1 : 0, start: Int32(tagIds.count), count: Int32(want.count)))
                tagIds += want
            }
        }
    }

    /// Writes `mask[i] = 1` if row `ids[i]` matches, else 0, for `count` ids (any count;
    /// blocks of ``blockSize`` internally). Allocates nothing once `scratch` has grown.
    public func evaluate(_ ids: UnsafePointer<UInt32>, count: Int, table: AttributeTable, scratch: FilterScratch,
                         into mask: UnsafeMutablePointer<UInt8>) {
        scratch.reserve(stackDepth)
        var at = 0
        while at < count {
            let n = min(Self.blockSize, count - at)
            block(ids + at, n, table, scratch.masks)
            (mask + at).update(from: scratch.masks, count: n)
            at += n
        }
    }

    /// Keeps, in place and in order, the ids that match (and the same entries of `aux`, when
    /// given); returns how many were kept.
    public func select(_ ids: UnsafeMutablePointer<UInt32>, aux: UnsafeMutablePointer<Int32>?, count: Int,
                       table: AttributeTable, scratch: FilterScratch) -> Int {
        scratch.reserve(stackDepth)
        var kept = 0, at = 0
        let m = scratch.masks
        while at < count {
            let n = min(Self.blockSize, count - at)
            block(ids + at, n, table, m)
            for i in 0..<n where m[i] != 0 {
                ids[kept] = ids[at + i]
                if let aux { aux[kept] = aux[at + i] }
                kept += 1
            }
            at += n
        }
        return kept
    }

    /// Runs the program on `n` ≤ blockSize ids; the result is left in the first mask slot.
    func block(_ ids: UnsafePointer<UInt32>, _ n: Int, _ table: AttributeTable, _ stack: UnsafeMutablePointer<UInt8>) {
        let B = Self.blockSize
        var top = 0   // slots in use
        code.withUnsafeBufferPointer { prog in
            for pc in 0..<prog.count {
                let ins = prog[pc]
                let out = stack + top * B
                switch ins.op {
                case .constant:
                    out.update(repeating: UInt8(ins.flag), count: n); top += 1
                case .intRange:
                    guard case .int(let col) = table.columns[Int(ins.column)] else { preconditionFailure("int column expected") }
                    let lo = ins.lo, hi = ins.hi
                    col.withUnsafeBufferPointer { v in
                        for i in 0..<n { let x = v[Int(ids[i])]; out[i] = (lo <= x && x <= hi) ? 1 : 0 }
                    }
                    top += 1
                case .intSet:
                    guard case .int(let col) = table.columns[Int(ins.column)] else { preconditionFailure("int column expected") }
                    col.withUnsafeBufferPointer { v in
                        ints.withUnsafeBufferPointer { pool in
                            let set = UnsafeBufferPointer(rebasing: pool[Int(ins.start)..<Int(ins.start + ins.count)])
                            for i in 0..<n { out[i] = Self.contains(set, v[Int(ids[i])]) ? 1 : 0 }
                        }
                    }
                    top += 1
                case .floatRange:
                    let r = ins.range
                    switch table.columns[Int(ins.column)] {
                    case .float(let col):
                        col.withUnsafeBufferPointer { v in for i in 0..<n { out[i] = r.contains(v[Int(ids[i])]) ? 1 : 0 } }
                    case .int(let col):
                        col.withUnsafeBufferPointer { v in for i in 0..<n { out[i] = r.contains(Double(v[Int(ids[i])])) ? 1 : 0 } }
                    default: preconditionFailure("numeric column expected")
                    }
                    top += 1
                case .floatSet:
                    doubles.withUnsafeBufferPointer { pool in
                        let set = UnsafeBufferPointer(rebasing: pool[Int(ins.start)..<Int(ins.start + ins.count)])
                        switch table.columns[Int(ins.column)] {
                        case .float(let col):
                            col.withUnsafeBufferPointer { v in for i in 0..<n { out[i] = Self.contains(set, v[Int(ids[i])]) ? 1 : 0 } }
                        case .int(let col):
                            col.withUnsafeBufferPointer { v in for i in 0..<n { out[i] = Self.contains(set, Double(v[Int(ids[i])])) ? 1 : 0 } }
                        default: preconditionFailure("numeric column expected")
                        }
                    }
                    top += 1
                case .category:
                    guard case .category(let col, _) = table.columns[Int(ins.column)] else { preconditionFailure("category column expected") }
                    col.withUnsafeBufferPointer { v in
                        member.withUnsafeBufferPointer { pool in
                            let m = pool.baseAddress! + Int(ins.start), size = UInt32(ins.count)
                            for i in 0..<n { let x = v[Int(ids[i])]; out[i] = x < size ? m[Int(x)] : 0 }
                        }
                    }
                    top += 1
                case .tags:
                    guard case .tags(let offsets, let rowTags, _) = table.columns[Int(ins.column)] else { preconditionFailure("tags column expected") }
                    let wantAll = ins.flag != 0
                    offsets.withUnsafeBufferPointer { o in
                        rowTags.withUnsafeBufferPointer { t in
                            tagIds.withUnsafeBufferPointer { pool in
                                let want = UnsafeBufferPointer(rebasing: pool[Int(ins.start)..<Int(ins.start + ins.count)])
                                for i in 0..<n {
                                    let r = Int(ids[i])
                                    let row = UnsafeBufferPointer(rebasing: t[Int(o[r])..<Int(o[r + 1])])
                                    out[i] = (wantAll ? Self.containsAll(row, want) : Self.containsAny(row, want)) ? 1 : 0
                                }
                            }
                        }
                    }
                    top += 1
                case .not:
                    let a = stack + (top - 1) * B
                    for i in 0..<n { a[i] ^= 1 }
                case .and, .or:
                    let k = Int(ins.flag)
                    let first = stack + (top - k) * B
                    for s in 1..<k {
                        let o = first + s * B
                        if ins.op == .and { for i in 0..<n { first[i] &= o[i] } } else { for i in 0..<n { first[i] |= o[i] } }
                    }
                    top -= k - 1
                }
            }
        }
    }

    @inline(__always) static func contains<T: Comparable>(_ a: UnsafeBufferPointer<T>, _ x: T) -> Bool {
        if a.count <= 8 {
            for v in a where v == x { return true }
            return false
        }
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) >> 1; if a[m] < x { lo = m + 1 } else { hi = m } }
        return lo < a.count && a[lo] == x
    }
    /// Sorted, distinct `b` all in sorted `a`?
    @inline(__always) static func containsAll(_ a: UnsafeBufferPointer<UInt32>, _ b: UnsafeBufferPointer<UInt32>) -> Bool {
        var i = 0
        for x in b {
            while i < a.count && a[i] < x { i += 1 }
            if i == a.count || a[i] != x { return false }
        }
        return true
    }
    @inline(__always) static func containsAny(_ a: UnsafeBufferPointer<UInt32>, _ b: UnsafeBufferPointer<UInt32>) -> Bool {
        var i = 0, j = 0
        while i < a.count && j < b.count {
            if a[i] == b[j] { return true }
            if a[i] < b[j] { i += 1 } else { j += 1 }
        }
        return false
    }
}

/// Per-thread working memory of ``FilterProgram`` (its mask stack) and of the per-posting
/// filter stage of the search (ids and record slots of a posting's survivors).
///
/// Thread safety: one thread at a time.
public final class FilterScratch {
    private(set) var masks: UnsafeMutablePointer<UInt8>
    private var depth: Int
    /// A posting's ids and record slots while it is filtered.
    var ids: UnsafeMutablePointer<UInt32>
    var slots: UnsafeMutablePointer<Int32>
    /// Records of the survivors, gathered contiguously for one scoring call.
    var gathered: UnsafeMutableRawPointer
    private var rowCapacity = 0, gatherCapacity = 0
    /// The walk's tally for the current query: records examined and records that matched.
    var records = 0, matched = 0
    /// (distance, posting) pairs while a few postings are ranked directly.
    private(set) var pairs: UnsafeMutablePointer<(Float, UInt32)> = .allocate(capacity: 1)
    private var pairCapacity = 1

    /// Bytes held (for the serving-memory report).
    var bytes: Int { depth * FilterProgram.blockSize + rowCapacity * 8 + gatherCapacity + pairCapacity * 8 }

    func reservePairs(_ n: Int) {
        guard n > pairCapacity else { return }
        pairs.deallocate()
        pairCapacity = n
        pairs = .allocate(capacity: n)
    }

    public init() {
        depth = 1
        masks = .allocate(capacity: FilterProgram.blockSize)
        ids = .allocate(capacity: 1); slots = .allocate(capacity: 1)
        gathered = .allocate(byteCount: 1, alignment: 64)
    }
    deinit { masks.deallocate(); ids.deallocate(); slots.deallocate(); gathered.deallocate(); pairs.deallocate() }

    func reserve(_ d: Int) {
        guard d > depth else { return }
        masks.deallocate()
        depth = d
        masks = .allocate(capacity: d * FilterProgram.blockSize)
    }

    func reserveRows(_ n: Int, recordBytes: Int) {
        if n > rowCapacity {
            ids.deallocate(); slots.deallocate()
            rowCapacity = n
            ids = .allocate(capacity: n); slots = .allocate(capacity: n)
        }
        if n * recordBytes > gatherCapacity {
            gathered.deallocate()
            gatherCapacity = n * recordBytes
            gathered = .allocate(byteCount: gatherCapacity, alignment: 64)
        }
    }
}

extension CodeFilter {
    /// Keeps, in place and in order, the ids whose codes may match (and the same entries of
    /// `aux`, when given); returns how many were kept. `quantized` must be the codes this
    /// filter was built for. Ids past its rows (vectors inserted after the build, which have
    /// no codes) are kept: the exact predicate decides them.
    public func select(_ ids: UnsafeMutablePointer<UInt32>, aux: UnsafeMutablePointer<Int32>?, count: Int,
                       quantized: QuantizedAttributes) -> Int {
        if passesEverything { return count }
        let bpv = bytesPerVector, coded = quantized.count
        if rejectsEverything {
            var kept = 0
            for i in 0..<count where Int(ids[i]) >= coded {
                ids[kept] = ids[i]
                if let aux { aux[kept] = aux[i] }
                kept += 1
            }
            return kept
        }
        return quantized.codes.withUnsafeBytes { buf -> Int in
            guard let base = buf.baseAddress else { return count }   // no codes: nothing to test
            var kept = 0
            for i in 0..<count where Int(ids[i]) >= coded || mayMatch(codes: base + Int(ids[i]) * bpv) {
                ids[kept] = ids[i]
                if let aux { aux[kept] = aux[i] }
                kept += 1
            }
            return kept
        }
    }
}

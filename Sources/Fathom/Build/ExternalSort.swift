import FathomCore
import FathomStorage
import Foundation

/// One 16-byte record of the build's external sort: `key` orders it (ties by `id`), `aux`
/// rides along. The assignment uses key = head << 32 | class bit << 31 | distance bits: a
/// vector's record in its nearest head (its *primary*, class 0) sorts before every other
/// vector's secondary replica (class 1) of that head, each class by distance, so the
/// posting cap cuts secondary replicas first and a vector loses its nearest posting only
/// when that posting holds more than `cap` primaries. aux = the vector's replica count
/// (orphan marks set ``SortRecord/orphanFlag``); the cut list uses key = vector id. Run
/// files hold these records raw, little-endian (docs/build.md).
struct SortRecord: Equatable {
    var key: UInt64
    var id: UInt32
    var aux: UInt32

    static let orphanFlag: UInt32 = 0x8000_0000

    @inline(__always) static func less(_ a: SortRecord, _ b: SortRecord) -> Bool {
        a.key < b.key || (a.key == b.key && a.id < b.id)
    }

    /// Distance bits that sort as the floats do (for finite floats of either sign).
    @inline(__always) static func sortable(_ f: Float) -> UInt32 {
        let b = f.bitPattern
        return b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
    }

    @inline(__always) static func distance(fromSortable s: UInt32) -> Float {
        Float(bitPattern: s & 0x8000_0000 != 0 ? s & 0x7FFF_FFFF : ~s)
    }

    static let secondaryBit: UInt64 = 0x8000_0000

    /// An assignment record. `distance` is a squared distance (≥ 0; the bit pattern of a
    /// non-negative float sorts as the float does); `primary`: the vector's nearest head.
    @inline(__always) static func assignment(head: Int, distance: Float, id: UInt32, replicas: Int, primary: Bool) -> SortRecord {
        let bits = UInt64(max(0, distance).bitPattern & 0x7FFF_FFFF)
        return SortRecord(key: UInt64(head) << 32 | (primary ? 0 : secondaryBit) | bits, id: id, aux: UInt32(replicas))
    }

    @inline(__always) var head: Int { Int(key >> 32) }
    @inline(__always) var isPrimary: Bool { key & Self.secondaryBit == 0 }
    @inline(__always) var distance: Float { Float(bitPattern: UInt32(truncatingIfNeeded: key) & 0x7FFF_FFFF) }
}

/// Collects records in a RAM buffer of fixed size and spills it as a sorted run file when
/// full (`DIR/PREFIX-K.tmp`). RAM: `capacity × 16` bytes, whatever the number of records.
/// Not thread-safe: one owner appends.
final class RunSpiller {
    let directory: String
    let prefix: String
    let capacity: Int
    private var buffer: UnsafeMutablePointer<SortRecord>
    private var used = 0
    private(set) var runs: [String] = []
    private(set) var total = 0

    let progress: ProgressReporter

    init(directory: String, prefix: String, capacityRecords: Int, progress: ProgressReporter = .silent) {
        self.progress = progress
        self.directory = directory
        self.prefix = prefix
        self.capacity = max(1, capacityRecords)
        buffer = .allocate(capacity: self.capacity)
    }

    deinit { buffer.deallocate() }

    @inline(__always) func append(_ r: SortRecord) throws {
        if used == capacity { try spill() }
        buffer[used] = r
        used += 1
        total += 1
    }

    private func spill() throws {
        guard used > 0 else { return }
        let t0 = Date()
        sortInPlace(buffer, used, by: SortRecord.less)
        let path = "\(directory)/\(prefix)-\(runs.count).tmp"
        let w = try SequentialFileWriter(path: path, bufferBytes: 4 << 20)
        try w.write(UnsafeRawPointer(buffer), count: used * MemoryLayout<SortRecord>.stride)
        try w.finish()
        runs.append(path)
        if used >= 1 << 20 { progress.note("\(prefix): run \(runs.count) of \(used) records sorted and written in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s") }
        used = 0
    }

    /// Spills what is left and frees the buffer; returns the run files (possibly none).
    func finish() throws -> [String] {
        try spill()
        buffer.deallocate()
        buffer = .allocate(capacity: 1)
        return runs
    }
}

/// Streams records from one run file through a small buffer.
final class RunReader {
    let path: String
    private let file: RandomAccessFile
    private let buffer: UnsafeMutablePointer<SortRecord>
    private let capacity: Int
    private var count = 0, pos = 0
    private var offset: UInt64 = 0
    let records: Int

    init(path: String, bufferBytes: Int) throws {
        self.path = path
        file = try RandomAccessFile(path: path)
        let stride = MemoryLayout<SortRecord>.stride
        guard file.size % UInt64(stride) == 0 else {
            throw FathomError(.corruptIndex, "run file of \(file.size) bytes is not a whole number of \(stride)-byte records; delete the build directory and rebuild", path: path)
        }
        records = Int(file.size) / stride
        capacity = max(1, bufferBytes / stride)
        buffer = .allocate(capacity: capacity)
    }

    deinit { buffer.deallocate() }

    /// The next record, or nil at the end.
    @inline(__always) func next() throws -> SortRecord? {
        if pos == count {
            let stride = MemoryLayout<SortRecord>.stride
            let left = Int(file.size - offset) / stride
            if left == 0 { return nil }
            let k = min(left, capacity)
            try file.read(into: UnsafeMutableRawPointer(buffer), count: k * stride, at: offset)
            offset += UInt64(k * stride)
            count = k; pos = 0
        }
        let r = buffer[pos]
        pos += 1
        return r
    }
}

/// K-way merge of sorted run files (a binary heap of the runs' heads), nearest key first.
/// RAM: runs × `bufferBytes`. Not thread-safe.
final class RunMerger {
    private var readers: [RunReader] = []
    private var heap: [(SortRecord, Int)] = []
    let total: Int

    /// Merge passes over intermediate files keep at most `maxFanIn` runs open at once.
    /// `deleteInputs`: remove the given runs once merged into an intermediate file (only
    /// when no later rerun needs them).
    static func open(runs: [String], bufferBytes: Int, maxFanIn: Int, scratchDirectory: String, prefix: String,
                     deleteInputs: Bool = true) throws -> RunMerger {
        let given = Set(runs)
        var runs = runs
        var pass = 0
        let fan = max(2, maxFanIn)
        while runs.count > fan {
            var next = [String]()
            var i = 0
            while i < runs.count {
                let group = Array(runs[i..<min(runs.count, i + fan)])
                let path = "\(scratchDirectory)/\(prefix)-merge\(pass)-\(next.count).tmp"
                let m = try RunMerger(runs: group, bufferBytes: bufferBytes)
                let w = try SequentialFileWriter(path: path, bufferBytes: bufferBytes)
                while var r = try m.next() { try withUnsafeBytes(of: &r) { try w.write($0.baseAddress!, count: 16) } }
                try w.finish()
                for g in group where deleteInputs || !given.contains(g) { try removeTree(g) }
                next.append(path)
                i += fan
            }
            runs = next
            pass += 1
        }
        return try RunMerger(runs: runs, bufferBytes: bufferBytes)
    }

    init(runs: [String], bufferBytes: Int) throws {
        var t = 0
        for p in runs {
            let r = try RunReader(path: p, bufferBytes: bufferBytes)
            t += r.records
            readers.append(r)
        }
        total = t
        for (i, r) in readers.enumerated() { if let rec = try r.next() { push((rec, i)) } }
    }

    private func push(_ e: (SortRecord, Int)) {
        heap.append(e)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if SortRecord.less(heap[i].0, heap[p].0) { heap.swapAt(i, p); i = p } else { break }
        }
    }

    /// The next record in order, or nil when every run is exhausted.
    func next() throws -> SortRecord? {
        guard !heap.isEmpty else { return nil }
        let top = heap[0]
        if let r = try readers[top.1].next() {
            heap[0] = (r, top.1)
        } else {
            let last = heap.removeLast()
            if heap.isEmpty { return top.0 }
            heap[0] = last
        }
        // Sift down.
        var i = 0
        let n = heap.count
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var c = l
            if l + 1 < n && SortRecord.less(heap[l + 1].0, heap[l].0) { c = l + 1 }
            if SortRecord.less(heap[c].0, heap[i].0) { heap.swapAt(i, c); i = c } else { break }
        }
        return top.0
    }
}

/// In-place introsort (quicksort with median-of-three, insertion sort below 16 elements,
/// heapsort past 2·log₂n levels): no temporary buffer, unlike the standard library's
/// stable sort, which allocates n/2 elements — the sort buffer and the pack bucket are
/// sized to the budget, so their sort must not need more.
@inline(__always)
func sortInPlace<T>(_ a: UnsafeMutablePointer<T>, _ n: Int, by less: (T, T) -> Bool) {
    guard n > 1 else { return }
    var depth = 0, m = n
    while m > 0 { depth += 2; m >>= 1 }
    introsort(a, 0, n, depth, less)
}

@inline(__always)
private func introsort<T>(_ a: UnsafeMutablePointer<T>, _ lo0: Int, _ hi0: Int, _ depth0: Int, _ less: (T, T) -> Bool) {
    var lo = lo0, hi = hi0, depth = depth0
    while hi - lo > 16 {
        if depth == 0 { heapsort(a + lo, hi - lo, less); return }
        depth -= 1
        // Median of three to a[lo], then Hoare partition.
        let mid = lo + (hi - lo) / 2
        if less(a[mid], a[lo]) { swap(&a[mid], &a[lo]) }
        if less(a[hi - 1], a[lo]) { swap(&a[hi - 1], &a[lo]) }
        if less(a[hi - 1], a[mid]) { swap(&a[hi - 1], &a[mid]) }
        let pivot = a[mid]
        var i = lo - 1, j = hi
        while true {
            repeat { i += 1 } while less(a[i], pivot)
            repeat { j -= 1 } while less(pivot, a[j])
            if i >= j { break }
            swap(&a[i], &a[j])
        }
        // Recurse into the smaller side, loop on the larger.
        if j + 1 - lo < hi - (j + 1) {
            introsort(a, lo, j + 1, depth, less); lo = j + 1
        } else {
            introsort(a, j + 1, hi, depth, less); hi = j + 1
        }
    }
    // Insertion sort of the small range.
    if hi - lo > 1 {
        for i in (lo + 1)..<hi {
            let x = a[i]
            var j = i
            while j > lo && less(x, a[j - 1]) { a[j] = a[j - 1]; j -= 1 }
            a[j] = x
        }
    }
}

@inline(__always)
private func heapsort<T>(_ a: UnsafeMutablePointer<T>, _ n: Int, _ less: (T, T) -> Bool) {
    func sift(_ start: Int, _ end: Int) {
        var i = start
        while true {
            let l = 2 * i + 1
            if l >= end { return }
            var c = l
            if l + 1 < end && less(a[l], a[l + 1]) { c = l + 1 }
            if less(a[i], a[c]) { swap(&a[i], &a[c]); i = c } else { return }
        }
    }
    var s = n / 2 - 1
    while s >= 0 { sift(s, n); s -= 1 }
    var e = n - 1
    while e > 0 { swap(&a[0], &a[e]); sift(0, e); e -= 1 }
}

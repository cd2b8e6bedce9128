import FathomCodecs
import FathomCore
import FathomStorage
import Foundation

/// The update log of an index directory (`DIR/updates.wal`, docs/updates.md): every insert,
/// delete and upsert since the index version was built, as checksummed, length-prefixed
/// records. An update is acknowledged once ``commit()`` has written and fsynced it; the
/// records appended since the last commit share that one write and one fsync (group commit).
///
/// Layout: the common 64-byte header (magic `FTHMWLOG`, `dimension` = d, `aux` = the
/// manifest checksum of the index version the log applies to), then records of
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | payload length L (UInt32) |
/// | 4 | 4 | CRC32C of the payload |
/// | 8 | 1 | op: 1 insert, 2 delete, 3 upsert |
/// | 9 | 8 | label (UInt64) |
/// | 17 | 1 | insert/upsert: m, the number of postings the vector was assigned to (≤ 8) |
/// | 18 | 4·m | insert/upsert: those postings' heads (UInt32) |
/// | 18 + 4·m | 4·d | insert/upsert: the vector as given, float32 |
///
/// An index with attributes logs its inserts and upserts as ops 10 (insert) and 11 (upsert):
/// the same fields, then the row's attributes, so replay rebuilds them:
///
/// | offset | size | field |
/// |---|---|---|
/// | 18 + 4·m + 4·d | 4 | A, the attribute row's length (UInt32, at most 65,536) |
/// | 22 + 4·m + 4·d | A | the row in the built table's binary row form (``AttributeRowCodec``: per column i64, f64, u32 code, or u32 count + u32 tag ids) |
///
/// (Ops 1 and 3 stay as they were, so logs of indexes without attributes are unchanged.)
///
/// The index's own maintenance (SPFresh's split, merge and reassign; docs/updates.md) logs
/// what it decided, so that replay repeats it without recomputing it:
///
/// | op | payload after the op byte |
/// |---|---|
/// | 4 split | head h (u32), new head g (u32), h's new vector (4·d), g's vector (4·d) |
/// | 5 retire | head h (u32): merged away, never routed to again |
/// | 6 relocate | head h (u32), offset (u64), records (u32), pages (u32), CRC32C (u32): h's list is now exactly these records of postings.upd, its delta list empty |
/// | 7 spill | rows (u64): the first `rows` inserted vectors are in vectors.upd |
/// | 8 attach | head h (u32), a posting record (its id and code): appended to h's delta (a vector a split's new head now serves, kept in its other lists too) |
/// | 9 repair | heads (u32): the head graph's reachability repair ran over that many heads |
///
/// Recovery reads records front to back and stops at the first one that is incomplete or
/// fails its checksum: a torn tail (the bytes of a commit that never finished), which a
/// writer cuts off. All integers little-endian.
///
/// Thread safety: one owner (``MutableVectorIndex``, under its writer lock).
final class WriteAheadLog {
    static let fileName = "updates.wal"
    static let magic = "FTHMWLOG"
    static let headerBytes = 64

    enum Op: UInt8 {
        case insert = 1, delete = 2, upsert = 3, split = 4, retire = 5, relocate = 6, spill = 7, attach = 8, repair = 9
        /// Insert and upsert carrying the row's attributes.
        case insertAttributed = 10, upsertAttributed = 11
    }

    /// One replayed record; its pointers are valid only during the replay callback.
    enum Record {
        case insert(label: UInt64, vector: UnsafePointer<Float>, heads: UnsafeBufferPointer<UInt32>, upsert: Bool, attributes: UnsafeRawBufferPointer?)
        case delete(label: UInt64)
        case split(head: UInt32, newHead: UInt32, headVector: UnsafePointer<Float>, newVector: UnsafePointer<Float>)
        case retire(head: UInt32)
        case relocate(head: UInt32, entry: PostingEntry)
        case spill(rows: UInt64)
        case attach(head: UInt32, record: UnsafeRawPointer)
        case repair(heads: UInt32)
    }

    let path: String
    let dimension: Int
    /// Bytes of one posting record (attach records carry one).
    let recordBytes: Int
    let file: LogFile?
    /// Bytes of the log known durable (header + committed records).
    private(set) var durableBytes = 0
    /// Records appended since the last commit, encoded.
    private var pending = [UInt8]()
    private(set) var pendingRecords = 0
    /// Records committed (replayed at open or committed since).
    private(set) var committedRecords = 0
    /// A failed commit may have left part of its bytes: cut them before the next write.
    private var dirtyTail = false

    static let maxHeads = 8
    var maxPayload: Int { max(14 + 4 * Self.maxHeads + 4 * dimension + AttributeRowCodec.maxRowBytes, 9 + 8 * dimension, 25, 5 + recordBytes) }

    /// Opens the log of `directory` (creating it, writable only, when missing). `identity`
    /// ties the log to one index version. Read-only with no log: an empty log.
    init(directory: String, dimension: Int, recordBytes: Int, identity: UInt64, writable: Bool) throws {
        path = directory + "/" + Self.fileName
        self.dimension = dimension
        self.recordBytes = recordBytes
        let exists = FileManager.default.fileExists(atPath: path)
        if !exists && !writable { file = nil; return }
        let f = try LogFile(path: path, create: writable)
        file = f
        var header = [UInt8](repeating: 0, count: Self.headerBytes)
        if f.size >= Self.headerBytes {
            _ = try header.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: Self.headerBytes, at: 0) }
        }
        // A header of zeros and nothing after it: its write never reached the disk, the size
        // did (a power cut before the creation's fsync returned; no record was ever appended).
        if f.size < Self.headerBytes || (f.size == Self.headerBytes && header.allSatisfy { $0 == 0 }) {
            // Missing or torn at creation (a crash before the header was synced): start it.
            guard writable else { return }
            try f.truncate(to: 0)
            let h = IndexFileHeader(magic: Self.magic, count: 0, dimension: UInt32(dimension), elementType: 0,
                                    payloadOffset: UInt64(Self.headerBytes), payloadBytes: 0, recordBytes: 0, aux: identity)
            try h.encode().withUnsafeBytes { try f.append($0.baseAddress!, count: $0.count) }
            try f.sync()
            try fsyncDirectory(directory)
        } else {
            let h = try header.withUnsafeBytes { try IndexFileHeader.decode($0, expectedMagic: Self.magic, path: path) }
            guard Int(h.dimension) == dimension else {
                throw FathomError(.corruptIndex, "updates.wal is for \(h.dimension)-d vectors, the index has \(dimension)", path: path, offset: 24)
            }
            guard h.aux == identity else {
                throw FathomError(.corruptIndex, String(format: "updates.wal belongs to another version of the index (manifest %08llx, the index is %08llx): it was copied from elsewhere — move it away to open the index", h.aux, identity), path: path, offset: 52)
            }
        }
        durableBytes = Self.headerBytes
    }

    /// Replays every complete record in order, then (writable) cuts a torn tail. Returns the
    /// records replayed and the bytes of torn tail found.
    func replay(writable: Bool, _ apply: (Record, _ offset: Int) throws -> Void) throws -> (records: Int, tornBytes: Int) {
        guard let f = file, f.size >= Self.headerBytes else { return (0, 0) }
        let size = f.size
        let block = 8 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: block + maxPayload + 8, alignment: 64)
        defer { buf.deallocate() }
        let vec = UnsafeMutablePointer<Float>.allocate(capacity: max(2 * dimension, 1))
        let heads = UnsafeMutablePointer<UInt32>.allocate(capacity: Self.maxHeads)
        defer { vec.deallocate(); heads.deallocate() }
        var at = Self.headerBytes          // next record's offset in the file
        var bufStart = at, bufEnd = at     // file range held in buf
        var records = 0
        func ensure(_ need: Int) throws -> Bool {
            if at + need <= bufEnd { return true }
            if at + need > size { return false }
            // Refill from `at`.
            let k = min(block + maxPayload + 8, size - at)
            let got = try f.read(into: buf, count: k, at: at)
            bufStart = at; bufEnd = at + got
            return at + need <= bufEnd
        }
        while true {
            guard try ensure(8) else { break }
            let p = UnsafeRawPointer(buf) + (at - bufStart)
            let len = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
            let crc = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            guard len >= 5, len <= maxPayload else { break }
            guard try ensure(8 + len) else { break }
            let q = UnsafeRawPointer(buf) + (at - bufStart)
            guard crc32c(q + 8, len, 0) == crc else { break }
            guard let op = Op(rawValue: q.load(fromByteOffset: 8, as: UInt8.self)) else { break }
            func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: q.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: q.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
            func floats(_ o: Int, _ n: Int, into x: UnsafeMutablePointer<Float>) { for j in 0..<n { x[j] = Float(bitPattern: u32(o + 4 * j)) } }
            var parsed: Record? = nil
            switch op {
            case .insert, .upsert:
                guard len >= 10 else { break }
                let m = Int(q.load(fromByteOffset: 17, as: UInt8.self))
                guard m <= Self.maxHeads, len == 10 + 4 * m + 4 * dimension else { break }
                for j in 0..<m { heads[j] = u32(18 + 4 * j) }
                floats(18 + 4 * m, dimension, into: vec)
                parsed = .insert(label: u64(9), vector: vec, heads: UnsafeBufferPointer(start: heads, count: m), upsert: op == .upsert, attributes: nil)
            case .insertAttributed, .upsertAttributed:
                guard len >= 10 else { break }
                let m = Int(q.load(fromByteOffset: 17, as: UInt8.self))
                let at = 18 + 4 * m + 4 * dimension
                guard m <= Self.maxHeads, len >= at + 4 - 8 else { break }
                let a = Int(u32(at))
                guard a <= AttributeRowCodec.maxRowBytes, len == at + 4 + a - 8 else { break }
                for j in 0..<m { heads[j] = u32(18 + 4 * j) }
                floats(18 + 4 * m, dimension, into: vec)
                parsed = .insert(label: u64(9), vector: vec, heads: UnsafeBufferPointer(start: heads, count: m), upsert: op == .upsertAttributed,
                                 attributes: UnsafeRawBufferPointer(start: q + at + 4, count: a))
            case .delete:
                guard len == 9 else { break }
                parsed = .delete(label: u64(9))
            case .split:
                guard len == 9 + 8 * dimension else { break }
                floats(17, 2 * dimension, into: vec)
                parsed = .split(head: u32(9), newHead: u32(13), headVector: vec, newVector: vec + dimension)
            case .retire:
                guard len == 5 else { break }
                parsed = .retire(head: u32(9))
            case .relocate:
                guard len == 25 else { break }
                parsed = .relocate(head: u32(9), entry: PostingEntry(offset: u64(13), count: u32(21), pages: u32(25), crc: u32(29)))
            case .spill:
                guard len == 9 else { break }
                parsed = .spill(rows: u64(9))
            case .attach:
                guard len == 5 + recordBytes else { break }
                parsed = .attach(head: u32(9), record: q + 13)
            case .repair:
                guard len == 5 else { break }
                parsed = .repair(heads: u32(9))
            }
            guard let record = parsed else { break }
            try apply(record, at)
            records += 1
            at += 8 + len
        }
        let torn = size - at
        if writable, torn > 0 {
            try f.truncate(to: at)
            try f.sync()
        }
        durableBytes = at
        committedRecords = records
        return (records, torn)
    }

    /// Appends a record to the pending group (not yet durable).
    /// `heads`: the postings an insert or upsert was assigned to (replay reuses them);
    /// `attributes`: its attribute row (an insert or upsert is then logged as op 10 or 11).
    func append(_ op: Op, label: UInt64, vector: UnsafePointer<Float>?, heads: UnsafeBufferPointer<UInt32> = .init(start: nil, count: 0),
                attributes: [UInt8]? = nil) {
        precondition(heads.count <= Self.maxHeads)
        let d = dimension
        let op = attributes == nil ? op : (op == .upsert ? .upsertAttributed : .insertAttributed)
        let a = attributes.map { 4 + $0.count } ?? 0
        appendRecord(op, body: op == .delete ? 8 : 9 + 4 * heads.count + 4 * d + a) { p in
            p.storeBytes(of: label.littleEndian, toByteOffset: 0, as: UInt64.self)
            guard let vector else { return }
            p.storeBytes(of: UInt8(heads.count), toByteOffset: 8, as: UInt8.self)
            for (j, h) in heads.enumerated() { p.storeBytes(of: h.littleEndian, toByteOffset: 9 + 4 * j, as: UInt32.self) }
            let vo = 9 + 4 * heads.count
            for j in 0..<d { p.storeBytes(of: vector[j].bitPattern.littleEndian, toByteOffset: vo + 4 * j, as: UInt32.self) }
            guard let attributes else { return }
            p.storeBytes(of: UInt32(attributes.count).littleEndian, toByteOffset: vo + 4 * d, as: UInt32.self)
            attributes.withUnsafeBytes { if let b = $0.baseAddress { (p + vo + 4 * d + 4).copyMemory(from: b, byteCount: $0.count) } }
        }
    }

    /// Appends a record of op `op` whose `body` bytes after the op byte are written by `fill`.
    private func appendRecord(_ op: Op, body: Int, _ fill: (UnsafeMutableRawPointer) -> Void) {
        let len = 1 + body
        let start = pending.count
        pending.append(contentsOf: repeatElement(0, count: 8 + len))
        pending.withUnsafeMutableBytes { b in
            let p = b.baseAddress! + start
            p.storeBytes(of: UInt32(len).littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: op.rawValue, toByteOffset: 8, as: UInt8.self)
            fill(p + 9)
            p.storeBytes(of: crc32c(UnsafeRawPointer(p + 8), len, 0).littleEndian, toByteOffset: 4, as: UInt32.self)
        }
        pendingRecords += 1
    }

    /// A split: head `h` moves to `hv`, new head `g` (the next id) is at `gv`.
    func appendSplit(head h: UInt32, newHead g: UInt32, headVector hv: UnsafePointer<Float>, newVector gv: UnsafePointer<Float>) {
        let d = dimension
        appendRecord(.split, body: 8 + 8 * d) { p in
            p.storeBytes(of: h.littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: g.littleEndian, toByteOffset: 4, as: UInt32.self)
            for j in 0..<d {
                p.storeBytes(of: hv[j].bitPattern.littleEndian, toByteOffset: 8 + 4 * j, as: UInt32.self)
                p.storeBytes(of: gv[j].bitPattern.littleEndian, toByteOffset: 8 + 4 * (d + j), as: UInt32.self)
            }
        }
    }

    /// The graph's reachability repair ran over `heads` heads.
    func appendRepair(heads: UInt32) {
        appendRecord(.repair, body: 4) { $0.storeBytes(of: heads.littleEndian, toByteOffset: 0, as: UInt32.self) }
    }

    /// Head `h` is retired (its posting merged away).
    func appendRetire(head h: UInt32) {
        appendRecord(.retire, body: 4) { $0.storeBytes(of: h.littleEndian, toByteOffset: 0, as: UInt32.self) }
    }

    /// Head `h`'s list is now `e` in postings.upd (already written and synced).
    func appendRelocate(head h: UInt32, entry e: PostingEntry) {
        appendRecord(.relocate, body: 24) { p in
            p.storeBytes(of: h.littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: e.offset.littleEndian, toByteOffset: 4, as: UInt64.self)
            p.storeBytes(of: e.count.littleEndian, toByteOffset: 12, as: UInt32.self)
            p.storeBytes(of: e.pages.littleEndian, toByteOffset: 16, as: UInt32.self)
            p.storeBytes(of: e.crc.littleEndian, toByteOffset: 20, as: UInt32.self)
        }
    }

    /// Record `record` (``recordBytes``) joins head `h`'s delta.
    func appendAttach(head h: UInt32, record: UnsafeRawPointer) {
        let rb = recordBytes
        appendRecord(.attach, body: 4 + rb) { p in
            p.storeBytes(of: h.littleEndian, toByteOffset: 0, as: UInt32.self)
            (p + 4).copyMemory(from: record, byteCount: rb)
        }
    }

    /// The first `rows` inserted vectors are in vectors.upd (written and synced).
    func appendSpill(rows: UInt64) {
        appendRecord(.spill, body: 8) { $0.storeBytes(of: rows.littleEndian, toByteOffset: 0, as: UInt64.self) }
    }

    /// Group commit: writes the pending records in one write and fsyncs. On failure (a full
    /// disk, an IO error) nothing of the group is acknowledged: its bytes are cut from the
    /// log, the group stays pending and the next commit retries it.
    func commit() throws {
        guard pendingRecords > 0, let f = file else { return }
        if dirtyTail { try f.truncate(to: durableBytes); dirtyTail = false }
        do {
            try pending.withUnsafeBytes { try f.append($0.baseAddress!, count: $0.count) }
            try f.sync()
        } catch {
            dirtyTail = true
            if (try? f.truncate(to: durableBytes)) != nil { dirtyTail = false }
            throw error
        }
        durableBytes += pending.count
        committedRecords += pendingRecords
        pending.removeAll(keepingCapacity: pending.count <= 64 << 20)
        pendingRecords = 0
    }
}

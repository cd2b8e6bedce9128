import FathomCore
import Foundation

/// The true k nearest neighbours of each query: `count × k` ids, row-major, nearest first,
/// and optionally their distances.
///
/// Files (docs/input-formats.md):
/// - big-ann-benchmarks `.ibin`: uint32 nq, uint32 k, nq·k int32 ids, nq·k float32 distances.
///   The size must be exactly `8 + 8·nq·k` (a file with ids only is rejected).
/// - TEXMEX `.ivecs`: per query an int32 k then k int32 ids (no distances).
public struct GroundTruth: Sendable, Equatable {
    /// Number of queries.
    public var count: Int
    /// Neighbours per query.
    public var k: Int
    /// `count × k` neighbour ids, row-major; row `q` lists query `q`'s neighbours nearest first.
    public var ids: [Int32]
    /// `count × k` distances matching `ids`, or `nil` when the file has none (`.ivecs`).
    public var distances: [Float]?

    /// Wraps flat arrays.
    /// - Precondition: `ids.count == count * k`, and likewise `distances` if present.
    public init(count: Int, k: Int, ids: [Int32], distances: [Float]?) {
        precondition(count >= 0 && k >= 0 && ids.count == count * k, "ids must hold count × k = \(count) × \(k) entries, not \(ids.count)")
        precondition(distances.map { $0.count == ids.count } ?? true, "distances must match ids in length")
        self.count = count
        self.k = k
        self.ids = ids
        self.distances = distances
    }

    /// The `k` neighbour ids of query `query`, nearest first.
    /// - Precondition: `0 <= query < count`.
    public func neighbors(of query: Int) -> ArraySlice<Int32> {
        precondition(query >= 0 && query < count, "query \(query) is out of range 0..<\(count)")
        return ids[query * k ..< (query + 1) * k]
    }

    /// The `k` distances of query `query`'s neighbours, or `nil` without distances.
    /// - Precondition: `0 <= query < count`.
    public func distances(of query: Int) -> ArraySlice<Float>? {
        precondition(query >= 0 && query < count, "query \(query) is out of range 0..<\(count)")
        return distances?[query * k ..< (query + 1) * k]
    }

    /// Reads a ground-truth file: `.ivecs` by extension, anything else as big-ann `.ibin`.
    ///
    /// - Throws: `.fileNotFound` (missing path or a directory), `.malformedFile` (header and
    ///   size disagree, overflow, a changing ivecs `k`, ...) with the byte offset, `.io`.
    public static func read(path: String) throws -> GroundTruth {
        let file = try SystemFile.open(path, .readOnly)
        defer { file.closeIgnoringErrors() }
        let st = try file.status()
        if st.isDirectory {
            throw FathomError(.fileNotFound, "is a directory, not a ground-truth file", path: path)
        }
        guard st.isRegularFile else {
            throw FathomError(.fileNotFound, "is not a regular file (a device, FIFO or socket)", path: path)
        }
        guard st.size > 0 else {
            throw FathomError(.malformedFile, "the ground-truth file is empty (0 bytes)", path: path, offset: 0)
        }
        if isIvecs(path) { return try readIvecs(file, size: st.size) }
        return try readIbin(file, size: st.size)
    }

    /// Writes the ground truth: `.ivecs` (ids only) if `path` ends in `.ivecs`, otherwise
    /// big-ann `.ibin`, which needs ``distances``.
    ///
    /// - Parameters:
    ///   - path: the destination (created or truncated).
    ///   - sync: `fsync` before closing.
    /// - Throws: `.invalidArgument` when writing `.ibin` without distances or when `count`/`k`
    ///   exceed the header fields; `.diskFull` / `.io` on write errors.
    public func write(path: String, sync: Bool = true) throws {
        let ivecs = Self.isIvecs(path)
        guard count <= Int(UInt32.max), k <= Int(Int32.max) else {
            throw FathomError(.invalidArgument, "ground truth of \(count) × \(k) does not fit the file header", path: path)
        }
        if !ivecs && distances == nil {
            throw FathomError(.invalidArgument, "this ground truth has no distances, which .ibin needs; write it as .ivecs instead", path: path)
        }
        let file = try SystemFile.open(path, .writeOnly, options: [.create, .truncate])
        do {
            if ivecs {
                let stride = 4 + 4 * k
                let rowsPerBlock = max(1, (4 << 20) / stride)
                var block = [UInt8](repeating: 0, count: min(rowsPerBlock, max(count, 1)) * stride)
                var q = 0
                while q < count {
                    let rows = min(rowsPerBlock, count - q)
                    block.withUnsafeMutableBytes { b in
                        ids.withUnsafeBytes { src in
                            for r in 0..<rows {
                                b.baseAddress!.storeLE(Int32(k), toByteOffset: r * stride)
                                (b.baseAddress! + r * stride + 4).copyMemory(from: src.baseAddress! + (q + r) * k * 4, byteCount: k * 4)
                            }
                        }
                    }
                    try block.withUnsafeBytes { try file.write($0.baseAddress!, count: rows * stride, at: q * stride) }
                    q += rows
                }
            } else {
                var header = [UInt8](repeating: 0, count: 8)
                header.withUnsafeMutableBytes {
                    $0.baseAddress!.storeLE(UInt32(count), toByteOffset: 0)
                    $0.baseAddress!.storeLE(UInt32(k), toByteOffset: 4)
                }
                try header.withUnsafeBytes { try file.write($0.baseAddress!, count: 8, at: 0) }
                try ids.withUnsafeBytes { if $0.count > 0 { try file.write($0.baseAddress!, count: $0.count, at: 8) } }
                try distances!.withUnsafeBytes { if $0.count > 0 { try file.write($0.baseAddress!, count: $0.count, at: 8 + ids.count * 4) } }
            }
            if sync { try file.sync() }
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        try file.close()
    }

    // MARK: - Internals

    static func isIvecs(_ path: String) -> Bool {
        ((path as NSString).pathExtension).lowercased() == "ivecs"
    }

    private static func readIbin(_ file: SystemFile, size: Int) throws -> GroundTruth {
        let path = file.path
        guard size >= 8 else {
            throw FathomError(.malformedFile, "the header is incomplete: the file has \(size) bytes but a ground-truth header needs 8 (uint32 nq, uint32 k)",
                              path: path, offset: UInt64(size))
        }
        var hdr = (UInt32(0), UInt32(0))
        _ = try withUnsafeMutableBytes(of: &hdr) { try file.read(into: $0.baseAddress!, count: 8, at: 0) }
        let nq = Int(UInt32(littleEndian: hdr.0)), k = Int(UInt32(littleEndian: hdr.1))
        guard k > 0 || nq == 0 else {
            throw FathomError(.malformedFile, "the header says k = 0 neighbours for \(nq) queries", path: path, offset: 4)
        }
        let (nk, o1) = nq.multipliedReportingOverflow(by: k)
        let (bytes, o2) = nk.multipliedReportingOverflow(by: 8)
        let (expected, o3) = bytes.addingReportingOverflow(8)
        if o1 || o2 || o3 {
            throw FathomError(.malformedFile, "the header says nq = \(nq), k = \(k): nq·k overflows a 64-bit byte count, so the header is corrupt",
                              path: path, offset: 0)
        }
        guard expected == size else {
            var msg = "the header says \(nq) queries × \(k) neighbours = \(expected) bytes (8-byte header + nq·k int32 ids + nq·k float32 distances) but the file has \(size) bytes"
            if nk * 4 + 8 == size {
                msg += ": it holds ids only, without distances; Fathom needs the big-ann layout with distances (or use .ivecs for ids only)"
            } else {
                msg += size < expected ? ": it is truncated (\(expected - size) bytes missing)" : ": \(size - expected) unexpected bytes follow the data"
            }
            throw FathomError(.malformedFile, msg, path: path, offset: UInt64(min(size, expected)))
        }
        var ids = [Int32](repeating: 0, count: nk)
        var dists = [Float](repeating: 0, count: nk)
        try ids.withUnsafeMutableBytes { try readExactly(file, into: $0, at: 8, fileSize: size) }
        try dists.withUnsafeMutableBytes { try readExactly(file, into: $0, at: 8 + nk * 4, fileSize: size) }
        #if _endian(big)
        for i in 0..<nk { ids[i] = Int32(littleEndian: ids[i]); dists[i] = Float(bitPattern: UInt32(littleEndian: dists[i].bitPattern)) }
        #endif
        return GroundTruth(count: nq, k: k, ids: ids, distances: dists)
    }

    private static func readIvecs(_ file: SystemFile, size: Int) throws -> GroundTruth {
        let path = file.path
        guard size >= 4 else {
            throw FathomError(.malformedFile, "the first record is incomplete: the file has \(size) bytes, fewer than its 4-byte int32 k",
                              path: path, offset: UInt64(size))
        }
        var raw: Int32 = 0
        _ = try withUnsafeMutableBytes(of: &raw) { try file.read(into: $0.baseAddress!, count: 4, at: 0) }
        let k = Int(Int32(littleEndian: raw))
        guard k > 0 else {
            throw FathomError(.malformedFile, "record 0 has k = \(k); each .ivecs record starts with a positive int32 count", path: path, offset: 0)
        }
        let stride = 4 + 4 * k
        guard stride <= size else {
            // Checked before any buffer is sized by k (a forged k must not allocate gigabytes).
            throw FathomError(.malformedFile, "record 0 says k = \(k) (\(stride) bytes per record) but the file has only \(size) bytes",
                              path: path, offset: 0)
        }
        let nq = size / stride
        let left = size % stride
        var ids = [Int32](repeating: 0, count: nq * k)
        let rowsPerBlock = max(1, min(nq, (4 << 20) / stride))
        let block = UnsafeMutableRawPointer.allocate(byteCount: rowsPerBlock * stride, alignment: 64)
        defer { block.deallocate() }
        var q = 0
        try ids.withUnsafeMutableBytes { out in
            while q < nq {
                let rows = min(rowsPerBlock, nq - q)
                try readExactly(file, into: UnsafeMutableRawBufferPointer(start: block, count: rows * stride), at: q * stride, fileSize: size)
                for r in 0..<rows {
                    let p = Int(UnsafeRawPointer(block).loadLE(fromByteOffset: r * stride, as: Int32.self))
                    guard p == k else {
                        throw FathomError(.malformedFile,
                                          "record \(q + r) has k = \(p) but record 0 has \(k): every .ivecs record must list the same number of neighbours",
                                          path: path, offset: UInt64((q + r) * stride))
                    }
                    (out.baseAddress! + (q + r) * k * 4).copyMemory(from: block + r * stride + 4, byteCount: k * 4)
                }
                q += rows
            }
        }
        guard left == 0 else {
            if nq * stride + 4 <= size {
                var p: Int32 = 0
                _ = try withUnsafeMutableBytes(of: &p) { try file.read(into: $0.baseAddress!, count: 4, at: nq * stride) }
                let pk = Int(Int32(littleEndian: p))
                if pk != k {
                    throw FathomError(.malformedFile, "record \(nq) has k = \(pk) but record 0 has \(k): every .ivecs record must list the same number of neighbours",
                                      path: path, offset: UInt64(nq * stride))
                }
            }
            throw FathomError(.malformedFile,
                              "the file has \(size) bytes, not a whole number of \(stride)-byte records (4-byte k + \(k) int32 ids): \(left) bytes are left over after \(nq) records; the last record is truncated",
                              path: path, offset: UInt64(nq * stride))
        }
        #if _endian(big)
        for i in 0..<ids.count { ids[i] = Int32(littleEndian: ids[i]) }
        #endif
        return GroundTruth(count: nq, k: k, ids: ids, distances: nil)
    }

    private static func readExactly(_ file: SystemFile, into b: UnsafeMutableRawBufferPointer, at offset: Int, fileSize: Int) throws {
        guard b.count > 0 else { return }
        let got = try file.read(into: b.baseAddress!, count: b.count, at: offset)
        guard got == b.count else {
            throw FathomError(.malformedFile, "unexpected end of file at byte \(offset + got): the file had \(fileSize) bytes when it was opened and is now shorter",
                              path: file.path, offset: UInt64(offset + got))
        }
    }
}

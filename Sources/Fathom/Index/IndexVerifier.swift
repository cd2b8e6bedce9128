import FathomCore
import FathomStorage
import Foundation

/// Checks every byte of an index against its checksums and every
/// structure against the manifest, and lists each problem with its file and offset.
///
/// ``verify(directory:progress:)`` checks the built files (here) and then the update log,
/// whose check belongs to the update code (Update/UpdateLogVerification.swift): this file
/// uses nothing above `Index/`.
///
/// Thread safety: stateless; verifications of any directories may run at once (they only
/// read).
public enum IndexVerifier {
    /// One problem found (a value type, `Sendable`).
    public struct Problem: Sendable, CustomStringConvertible {
        public var file: String
        public var offset: UInt64?
        public var message: String
        public var description: String { "\(file)\(offset.map { " at byte \($0)" } ?? ""): \(message)" }

        /// The problem an error reports, in `file` unless the error names its own.
        init(_ e: Error, file: String) {
            if let f = e as? FathomError { self.init(file: f.path ?? file, offset: f.offset, message: f.message) }
            else { self.init(file: file, offset: nil, message: "\(e)") }
        }

        init(file: String, offset: UInt64?, message: String) {
            self.file = file; self.offset = offset; self.message = message
        }
    }

    /// Checks the files a build wrote (those the manifest lists): sizes, checksums, headers,
    /// the graph, the posting table, every posting's checksum and ids, codec, attributes.
    /// Returns the problems and the manifest (nil when it cannot be loaded: nothing else is checked).
    static func verifyIndexFiles(directory: String, progress: ProgressReporter) -> (problems: [Problem], manifest: Manifest?) {
        var problems = [Problem]()
        func add(_ e: Error, _ file: String) { problems.append(Problem(e, file: file)) }
        let m: Manifest
        do { m = try Manifest.load(directory: directory) } catch { add(error, directory + "/manifest.json"); return (problems, nil) }
        // 1. Whole-file sizes and checksums.
        progress.begin("verify: file checksums", total: UInt64(m.files.count))
        for f in m.files {
            let path = directory + "/" + f.name
            do {
                let (bytes, crc) = try fileCRC32C(path)
                if bytes != f.bytes {
                    problems.append(Problem(file: path, offset: min(bytes, f.bytes), message: "size \(bytes) differs from the \(f.bytes) bytes in the manifest"))
                } else if String(format: "%08x", crc) != f.crc32c {
                    problems.append(Problem(file: path, offset: nil, message: "CRC32C \(String(format: "%08x", crc)) differs from \(f.crc32c) in the manifest: the file is corrupt"))
                }
            } catch { add(error, path) }
            progress.advance()
        }
        progress.end()
        // 2. Structures: headers, graph ids, posting table, every posting's checksum and ids.
        let layout = IndexLayout(directory: directory)
        do {
            let (heads, _) = try layout.readHeads()
            if heads.rows != m.heads || heads.cols != m.dimension {
                problems.append(Problem(file: layout.headsPath, offset: 16, message: "\(heads.rows) × \(heads.cols) heads, manifest says \(m.heads) × \(m.dimension)"))
            }
            _ = try layout.readGraph(heads: heads)
        } catch { add(error, layout.headsPath) }
        do {
            let vf = try RandomAccessFile(path: layout.vectorsPath)
            let vh = try vf.readHeader(magic: IndexLayout.vectorsMagic)
            let rowCount = m.shard?.vectors ?? m.count
            if vh.count != UInt64(rowCount) || Int(vh.dimension) != m.dimension {
                problems.append(Problem(file: layout.vectorsPath, offset: 16, message: "holds \(vh.count) × \(vh.dimension), manifest says \(rowCount) × \(m.dimension)"))
            }
            if Set(m.files.map(\.name)).contains(IndexLayout.vectorChecksumsFile) {
                problems += try checkVectorPages(vf, layout: layout, progress: progress)
            }
        } catch { add(error, layout.vectorsPath) }
        // Compact codec, attributes and summaries: decoded as an open does (a file whose CRC
        // was forged along with the manifest is still caught by its structure checks).
        let listed = Set(m.files.map(\.name))
        if listed.contains(IndexLayout.codecFile) {
            do { _ = try CompactCodec.read(from: layout.codecPath) } catch { add(error, layout.codecPath) }
        }
        if listed.contains(AttributeStore.attrsFile) {
            let path = directory + "/" + AttributeStore.attrsFile
            do {
                let (t, _) = try AttributeStore.readAttributes(path: path)
                if t.count != m.count {
                    problems.append(Problem(file: path, offset: 16, message: "\(t.count) attribute rows, manifest says \(m.count) vectors"))
                }
            } catch { add(error, path) }
        }
        if listed.contains(AttributeStore.summariesFile) {
            let path = directory + "/" + AttributeStore.summariesFile
            do { _ = try AttributeStore.readSummaries(path: path, heads: m.heads) } catch { add(error, path) }
        }
        // A shard: every id its postings hold must be one of its rows.
        var shardRows: ShardRows? = nil
        if let sh = m.shard {
            let path = directory + "/" + ShardRows.fileName
            do { shardRows = try ShardRows.read(path: path, count: m.count, members: sh.vectors) } catch { add(error, path) }
        }
        do {
            let pf = try RandomAccessFile(path: layout.postingsPath)
            let ph = try pf.readHeader(magic: IndexLayout.postingsMagic)
            if Int(ph.recordBytes) != m.record_bytes {
                problems.append(Problem(file: layout.postingsPath, offset: 48, message: "record size \(ph.recordBytes), manifest says \(m.record_bytes)"))
            }
            let table = try layout.readPostingTable(postingsBytes: pf.size, recordBytes: m.record_bytes)
            let buf = UnsafeMutableRawPointer.allocate(byteCount: max(1, (table.map { Int($0.count) }.max() ?? 1) * m.record_bytes), alignment: 64)
            defer { buf.deallocate() }
            var covered = [Bool](repeating: false, count: m.count)
            progress.begin("verify: \(table.count) postings", total: UInt64(table.count))
            for (h, e) in table.enumerated() {
                defer { progress.advance() }
                guard e.count > 0 else { continue }
                let bytes = Int(e.count) * m.record_bytes
                try pf.read(into: buf, count: bytes, at: e.offset)
                let c = crc32c(buf, bytes, 0)
                if c != e.crc {
                    problems.append(Problem(file: layout.postingsPath, offset: e.offset, message: String(format: "posting %d fails its checksum (stored %08x, computed %08x)", h, e.crc, c)))
                    continue
                }
                for r in 0..<Int(e.count) {
                    let id = Int(buf.loadUnaligned(fromByteOffset: r * m.record_bytes, as: UInt32.self))
                    if id >= m.count {
                        problems.append(Problem(file: layout.postingsPath, offset: e.offset + UInt64(r * m.record_bytes), message: "posting \(h) holds id \(id) ≥ \(m.count) vectors"))
                    } else if let rows = shardRows, !rows.contains(UInt32(id)) {
                        problems.append(Problem(file: layout.postingsPath, offset: e.offset + UInt64(r * m.record_bytes), message: "posting \(h) holds id \(id), which rows.bin does not mark: the shard has no vector for it"))
                    } else { covered[id] = true }
                }
            }
            progress.end()
            // A shard holds only its heads' postings: most vectors are in another shard's.
            if m.shard == nil, let missing = covered.firstIndex(of: false) {
                let count = covered.filter { !$0 }.count
                problems.append(Problem(file: layout.postingsPath, offset: nil, message: "\(count) vectors are in no posting (first: \(missing))"))
            }
        } catch { add(error, layout.postingsPath) }
        return (problems, m)
    }

    /// Checks every payload page of vectors.dat against vectors.crc; names the first pages
    /// that fail (a search reading one of them reports the same page).
    static func checkVectorPages(_ vf: RandomAccessFile, layout: IndexLayout, progress: ProgressReporter) throws -> [Problem] {
        let pages = IndexLayout.vectorPayloadPages(fileSize: vf.size)
        let sums = try layout.readVectorChecksums(payloadPages: pages)
        let block = 1024
        let buf = UnsafeMutableRawPointer.allocate(byteCount: block * 4096, alignment: 4096)
        defer { buf.deallocate() }
        var bad = [Problem](), failing = 0
        progress.begin("verify: \(pages) vectors.dat pages", total: UInt64(pages))
        var first = 0
        while first < pages {
            let k = min(block, pages - first)
            try vf.read(into: buf, count: k * 4096, at: 4096 + UInt64(first) * 4096)
            for p in 0..<k {
                let c = crc32c(buf + p * 4096, 4096, 0)
                guard c != sums[first + p] else { continue }
                failing += 1
                if bad.count < 10 {
                    bad.append(Problem(file: layout.vectorsPath, offset: 4096 + UInt64(first + p) * 4096,
                                       message: String(format: "page %d fails its checksum (stored %08x, computed %08x)", first + p, sums[first + p], c)))
                }
            }
            first += k
            progress.advance(UInt64(k))
        }
        progress.end()
        if failing > bad.count {
            bad.append(Problem(file: layout.vectorsPath, offset: nil, message: "\(failing) pages fail their checksums in all (the first \(bad.count) are listed)"))
        }
        return bad
    }
}

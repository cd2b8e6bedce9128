import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
#if canImport(Glibc)
import Glibc
#endif

/// `--no-checksums` (verifyChecksums false) plus an id ≥ count inside a posting: search must
/// fail with a corruptIndex error naming postings.dat and the record's offset, never return the
/// id or trap (the check is in `Searcher.collect`, which plain, compressed and filtered
/// search share).
@Suite struct UncheckedCorruptIdTests {
    /// Builds an index, overwrites the id of the first record of the first non-empty posting
    /// with `count + 5`, and returns the index directory and the record's offset.
    func corruptIndex(_ dir: TempDir, codec: PostingCodec, attributes: Bool) throws -> (String, UInt64, [Float]) {
        // Filtered queries over at most 2,000 estimated matches take the exact path, which reads
        // no postings: an attributed index is made large enough for the index path.
        let n = attributes ? 3000 : 600
        let (_, q) = try writeSynthetic(dir: dir, n: n, d: 16, nq: 1)
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.codec = codec
        if codec != .none { o.reduceDims = 8 }
        if attributes {
            try Data(FuzzReference.attributeCSV(rows: n).utf8).write(to: URL(fileURLWithPath: dir.file("attrs.csv")))
            o.attributes = dir.file("attrs.csv")
        }
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        let index = try VectorIndex.open(at: dir.file("idx"), io: .pread)
        let e = try #require(index.table.first { $0.count > 0 })
        let fd = open(dir.file("idx/postings.dat"), O_RDWR)
        var bad = UInt32(n + 5).littleEndian
        #expect(pwrite(fd, &bad, 4, off_t(e.offset)) == 4)
        close(fd)
        // verify (which always checks checksums) reports the damaged posting.
        #expect(IndexVerifier.verify(directory: dir.file("idx")).contains { $0.file.hasSuffix("postings.dat") && $0.offset == e.offset })
        return (dir.file("idx"), e.offset, Array(UnsafeBufferPointer(start: q.row(0), count: q.cols)))
    }

    func expectCorruptIdError(_ path: String, offset: UInt64, query: [Float], filter: String? = nil) throws {
        let index = try VectorIndex.open(at: path, io: .pread)
        let p = SearchParameters(probes: index.headCount, maxDistRatio: .infinity, headListSize: index.headCount,
                                 verifyChecksums: false)
        do {
            let hits = try index.search(query, k: 10, parameters: p, filter: try filter.map { try index.prepareFilter($0) })
            Issue.record("search returned \(hits.map(\.id)) from a posting holding id \(index.count + 5)")
        } catch let e as FathomError {
            #expect(e.code == .corruptIndex && e.path?.hasSuffix("postings.dat") == true && e.offset == offset, "\(e)")
        }
    }

    @Test func plainIndex() throws {
        let dir = TempDir()
        let (path, off, q) = try corruptIndex(dir, codec: .none, attributes: false)
        try expectCorruptIdError(path, offset: off, query: q)
    }

    @Test func compressedIndex() throws {
        let dir = TempDir()
        let (path, off, q) = try corruptIndex(dir, codec: .lvq8, attributes: false)
        try expectCorruptIdError(path, offset: off, query: q)
    }

    @Test func filteredIndex() throws {
        let dir = TempDir()
        let (path, off, q) = try corruptIndex(dir, codec: .none, attributes: true)
        try expectCorruptIdError(path, offset: off, query: q, filter: "price < 1000")
    }
}

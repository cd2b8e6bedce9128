import CKernels
import FathomStorage
import FathomTestSupport
import Foundation
import Testing
@testable import Fathom

/// vectors.crc: the CRC32C of each vectors.dat page, written by the build and checked by
/// every re-rank read and by `verify` (docs/format.md).
@Suite struct VectorPageChecksumTests {
    /// A compressed index (re-rank reads vectors.dat) of `n` × `d`, and its queries.
    func build(_ dir: TempDir, n: Int = 1500, d: Int = 24) throws -> (Manifest, Matrix) {
        let (_, q) = try writeSynthetic(dir: dir, n: n, d: d, nq: 5)
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1
        o.codec = .lvq8; o.reduceDims = 12
        return (try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build(), q)
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    @Test func checksumsAreThoseOfEveryPage() throws {
        let dir = TempDir()
        let (m, _) = try build(dir)
        #expect(m.files.contains { $0.name == "vectors.crc" })
        let vectors = try bytes(dir.file("idx/vectors.dat")), sums = try bytes(dir.file("idx/vectors.crc"))
        #expect(vectors.count % 4096 == 0)
        let pages = vectors.count / 4096 - 1
        #expect(sums.count == 64 + 4 * pages)
        for p in 0..<pages {
            // Scalar reference: the table-driven CRC32C over the page as read back.
            let want = vectors.withUnsafeBytes { fk_crc32c_scalar(0, $0.baseAddress! + 4096 * (p + 1), 4096) }
            let got = sums.withUnsafeBytes { $0.baseAddress!.loadLE(fromByteOffset: 64 + 4 * p, as: UInt32.self) }
            #expect(got == want, "page \(p)")
        }
    }

    /// The checksums a writer keeps do not depend on how its writes and flushes are split.
    @Test func pageChecksumsIgnoreHowWritesAreSplit() throws {
        let dir = TempDir()
        var rng = SeededRandom(seed: 5)
        let data = (0..<(3 * 4096 + 1000)).map { _ in UInt8(rng.below(256)) }
        var results = [[UInt32]]()
        for (i, buffer) in [4096, 8192, 1 << 20].enumerated() {
            let w = try SequentialFileWriter(path: dir.file("f\(i)"), bufferBytes: buffer, pageChecksumsFrom: 4096)
            var at = 0
            while at < data.count {
                let k = min(data.count - at, 1 + rng.below(5000))
                try data.withUnsafeBytes { try w.write($0.baseAddress! + at, count: k) }
                at += k
            }
            try w.patch([1, 2, 3], at: 0)    // before the checksummed range: no effect
            try w.finish()
            results.append(w.pageChecksums!)
        }
        let want = [4096, 8192].map { off in data.withUnsafeBytes { fk_crc32c_scalar(0, $0.baseAddress! + off, 4096) } }
            + [data.withUnsafeBytes { fk_crc32c_scalar(0, $0.baseAddress! + 3 * 4096, 1000) }]
        for r in results { #expect(r == want) }
    }

    /// A flipped byte in a re-ranked vector's page fails the query, naming vectors.dat and the
    /// page's offset; verify names the same page; without checks the query answers.
    @Test func aCorruptPageFailsTheQueryThatReadsIt() throws {
        let dir = TempDir()
        let (m, q) = try build(dir)
        let query = Array(UnsafeBufferPointer(start: q.row(0), count: q.cols))
        let params = SearchParameters(probes: 8, rerank: 20)
        let top = try VectorIndex.open(at: dir.file("idx")).search(query, k: 1, parameters: params)[0].id
        let placement = IndexLayout.VectorPlacement(rowBytes: m.dimension * 4)
        let row = placement.offset(Int(top))
        let page = row & ~4095
        let path = dir.file("idx/vectors.dat")
        let fd = open(path, O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, off_t(row + 5)); b ^= 0x40; pwrite(fd, &b, 1, off_t(row + 5))
        close(fd)
        let idx = try VectorIndex.open(at: dir.file("idx"))
        #expect { _ = try idx.search(query, k: 1, parameters: params) } throws: { e in
            guard let e = e as? FathomError else { return false }
            return e.code == .corruptIndex && e.path == path && e.offset == page && e.message.contains("checksum")
        }
        var unchecked = params; unchecked.verifyChecksums = false
        #expect(try idx.search(query, k: 1, parameters: unchecked).count == 1)
        let problems = IndexVerifier.verify(directory: dir.file("idx"))
        #expect(problems.contains { $0.file == path && $0.offset == page && $0.message.contains("fails its checksum") }, "\(problems)")
    }

    /// An index built before vectors.crc (its manifest does not list it) opens and searches
    /// unchecked, and verify does not ask for the file.
    @Test func indexesWithoutPageChecksumsStillOpen() throws {
        let dir = TempDir()
        let (m, q) = try build(dir)
        var old = m
        old.files.removeAll { $0.name == "vectors.crc" }
        try FileManager.default.removeItem(atPath: dir.file("idx/vectors.crc"))
        try old.sealedData().write(to: URL(fileURLWithPath: dir.file("idx/manifest.json")))
        let idx = try VectorIndex.open(at: dir.file("idx"))
        #expect(idx.servingMemory.checksums == 0)
        #expect(try idx.search(Array(UnsafeBufferPointer(start: q.row(0), count: q.cols)), k: 5).count == 5)
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }
}

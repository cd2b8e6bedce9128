import Foundation
import Testing
@testable import Fathom

/// Random corruption and truncation of every index file must be detected: by `verify`
/// always, and by open/search whenever the damaged bytes are ones search uses.
@Suite struct CorruptionTests {
    static let files = ["manifest.json", "heads.bin", "graph.bin", "postings.idx", "postings.dat", "vectors.dat"]

    func copyIndex(_ from: String, _ to: String) throws {
        try? FileManager.default.removeItem(atPath: to)
        try FileManager.default.copyItem(atPath: from, toPath: to)
    }

    @Test func randomByteFlipsAreAlwaysDetected() throws {
        let dir = TempDir()
        let (_, q) = try writeSynthetic(dir: dir, n: 1200, d: 8, nq: 3)
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("clean"), options: o).build()
        let clean = try VectorIndex.open(at: dir.file("clean"))
        let all = SearchParameters(probes: clean.headCount, maxDistRatio: .infinity, headListSize: clean.headCount)
        let query = Array(UnsafeBufferPointer(start: q.row(0), count: q.cols))
        let expected = try clean.search(query, k: 10, parameters: all)
        let trials = Int(ProcessInfo.processInfo.environment["FATHOM_CORRUPTION_TRIALS"] ?? "") ?? 300
        var rng = SeededRandom(seed: 77)
        var detectedByVerify = 0, searchErrors = 0, searchSame = 0
        let work = dir.file("work")
        for _ in 0..<trials {
            try copyIndex(dir.file("clean"), work)
            let name = Self.files[rng.below(Self.files.count)]
            let path = work + "/" + name
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
            let off = rng.below(size)
            let fd = open(path, O_RDWR)
            var b: UInt8 = 0
            pread(fd, &b, 1, off_t(off)); b ^= UInt8(1 + rng.below(255)); pwrite(fd, &b, 1, off_t(off))
            close(fd)
            if !IndexVerifier.verify(directory: work).isEmpty { detectedByVerify += 1 }
            // Search: an error, or exactly the clean answer (the flip hit bytes search never uses).
            do {
                let idx = try VectorIndex.open(at: work)
                let got = try idx.search(query, k: 10, parameters: all)
                #expect(got == expected, "flip in \(name) at \(off) changed results silently")
                searchSame += 1
            } catch is FathomError { searchErrors += 1 }
        }
        #expect(detectedByVerify == trials, "verify detected \(detectedByVerify) of \(trials) corruptions")
        #expect(searchErrors + searchSame == trials)
    }

    @Test func truncationOfEveryFileIsDetected() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 800, d: 8)
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 256 << 20; o.headRatio = 0.05
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("clean"), options: o).build()
        for name in Self.files {
            for cut in [1, 63, 4096] {
                let work = dir.file("t")
                try copyIndex(dir.file("clean"), work)
                let path = work + "/" + name
                let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
                guard size > cut else { continue }
                truncate(path, off_t(size - cut))
                #expect(!IndexVerifier.verify(directory: work).isEmpty, "\(name) cut by \(cut)")
                #expect(throws: FathomError.self, "\(name) cut by \(cut) still opens") { _ = try VectorIndex.open(at: work) }
            }
        }
    }

    @Test func wrongVersionAndMetricAreTypedErrors() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 500, d: 8)
        var o = BuildOptions(); o.codec = .none; o.memoryBudget = 256 << 20; o.headRatio = 0.05
        let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        var v2 = m; v2.format_version = 2
        try v2.sealedData().write(to: URL(fileURLWithPath: dir.file("idx/manifest.json")))
        #expect { _ = try VectorIndex.open(at: dir.file("idx")) } throws: { ($0 as? FathomError)?.code == .incompatibleIndex }
        var edited = m; edited.metric = .ip     // edited without resealing
        try edited.encoded().write(to: URL(fileURLWithPath: dir.file("idx/manifest.json")))
        #expect { _ = try VectorIndex.open(at: dir.file("idx")) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
    }
}

import FathomCore
@testable import FathomStorage
import FathomTestSupport
import Foundation
import Testing

/// The power-cut model of FathomTestSupport's `PowerCutRecorder` on small cases whose
/// outcomes are known (docs/reliability.md, "Power-loss model"): what an fsync makes durable,
/// what survives without one, atomic renames and exchanges, and that the seam sees every change.
@Suite struct PowerCutRecorderTests {
    func bytes(_ path: String) -> [UInt8]? { FileManager.default.contents(atPath: path).map { [UInt8]($0) } }

    func cut(_ rec: PowerCutRecorder, _ dir: TempDir, _ c: PowerCutRecorder.Cut, _ name: String) throws -> String {
        let out = dir.file(name)
        try rec.materialize(c, into: out)
        return out
    }

    @Test func anFsyncMakesDataDurableAndUnsyncedDataMayVanish() throws {
        let dir = TempDir("fathom-powercut-unit")
        try FileManager.default.createDirectory(atPath: dir.file("root"), withIntermediateDirectories: true)
        let rec = try PowerCutRecorder(root: dir.file("root"))
        let a = dir.file("root/a"), b = dir.file("root/b")
        let payload = [UInt8](repeating: 7, count: 10_000)
        var afterSync = 0
        try rec.record {
            let w = try SequentialFileWriter(path: a, bufferBytes: 4096)
            try w.write(payload); try w.finish()                  // data fsynced, name not yet
            try fsyncDirectory(dir.file("root"))                  // the name durable
            afterSync = rec.position
            let u = try SequentialFileWriter(path: b, bufferBytes: 1 << 20)
            try u.write(payload)
            try u.patch([1, 2, 3], at: 0)                         // written, never fsynced
        }
        #expect(try rec.modelMismatches() == [])
        let lost = try cut(rec, dir, .init(position: rec.position, seed: 1, loss: .loseEverything), "lost")
        #expect(bytes(lost + "/a") == payload)
        #expect(bytes(lost + "/b") == nil, "b's name was never made durable by a directory fsync")
        let kept = try cut(rec, dir, .init(position: rec.position, seed: 1, loss: .keepNothingLost), "kept")
        #expect(bytes(kept + "/b").map { Array($0.prefix(3)) } == [1, 2, 3])
        let early = try cut(rec, dir, .init(position: afterSync - 1, seed: 1, loss: .loseEverything), "early")
        #expect(bytes(early + "/a") == nil, "before the directory fsync a's name may be lost")
        // Random cuts of the unsynced file: whole, missing, torn (some pages) or zeros all occur.
        var seen = Set<String>()
        for s in 0..<64 {
            let p = try cut(rec, dir, .init(position: rec.position, seed: UInt64(s), loss: .random), "r\(s)")
            let got = bytes(p + "/b")
            seen.insert(got == nil ? "missing" : got!.isEmpty ? "empty" : got!.allSatisfy { $0 == 0 } ? "zeros"
                        : got! == [1, 2, 3] + payload.dropFirst(3) ? "whole" : "torn")
            #expect(bytes(p + "/a") == payload)
        }
        #expect(seen.isSuperset(of: ["missing", "whole", "torn"]), "\(seen)")
    }

    @Test func renamesAndExchangesAreAtomicAndDurableAfterTheDirectoryFsync() throws {
        let dir = TempDir("fathom-powercut-unit")
        for d in ["root", "root/x", "root/y"] { try FileManager.default.createDirectory(atPath: dir.file(d), withIntermediateDirectories: true) }
        try Data([1]).write(to: URL(fileURLWithPath: dir.file("root/x/f")))
        try Data([2]).write(to: URL(fileURLWithPath: dir.file("root/y/f")))
        let rec = try PowerCutRecorder(root: dir.file("root"))
        var exchanged = 0
        try rec.record {
            #expect(try exchangePaths(dir.file("root/x"), dir.file("root/y")))
            exchanged = rec.position
            try fsyncDirectory(dir.file("root"))
            try renamePath(dir.file("root/x/f"), dir.file("root/x/g"))   // no fsync of x
            try createDirectories(dir.file("root/z/w"))
            try removeTree(dir.file("root/y"))
        }
        #expect(try rec.modelMismatches() == [])
        let before = try cut(rec, dir, .init(position: exchanged - 1, seed: 0, loss: .keepNothingLost), "before")
        #expect(bytes(before + "/x/f") == [1] && bytes(before + "/y/f") == [2])
        for s in 0..<32 {
            for model in PowerCutRecorder.NamespaceModel.allCases {
                let p = try cut(rec, dir, .init(position: rec.position, seed: UInt64(s), loss: .random, namespace: model), "c\(s)-\(model)")
                // The exchange is durable; x now holds y's old content under f or (renamed) g.
                let xf = bytes(p + "/x/f"), xg = bytes(p + "/x/g")
                #expect((xf == [2]) != (xg == [2]), "seed \(s) \(model): x/f \(String(describing: xf)), x/g \(String(describing: xg))")
            }
        }
        let all = try cut(rec, dir, .init(position: rec.position, seed: 0, loss: .keepNothingLost), "all")
        #expect(bytes(all + "/x/g") == [2] && !FileManager.default.fileExists(atPath: all + "/y"))
        #expect(FileManager.default.fileExists(atPath: all + "/z/w"))
    }
}

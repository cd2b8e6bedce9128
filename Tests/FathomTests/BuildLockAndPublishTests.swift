import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
@testable import FathomStorage
#if canImport(Glibc)
import Glibc
#endif

/// The build directory lock, scratch files kept out of the published tree, the publish
/// without a moment with no index, and leftovers of a crashed publish.
@Suite struct BuildLockAndPublishTests {
    func options(seed: UInt64 = 3) -> BuildOptions {
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.seed = seed
        return o
    }

    func entries(_ path: String) -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
    }

    @Test func secondBuilderOfTheSameDestinationFailsAtOnce() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 600, d: 8)
        let a = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options())
        let b = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options())
        let held = try a.lockBuild()   // builder a is "running"
        do {
            try b.build()
            Issue.record("the second builder ran while the first held the lock")
        } catch let e as FathomError {
            #expect(e.code == .io)
            #expect(e.message.contains("another build of \(dir.file("idx")) is running (pid \(getpid()))"), "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("idx.fathom-build")), "the second builder touched the build directory")
        held.release()
        try b.build()
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }

    @Test func secondFathomBuildProcessGetsTheLockError() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 600, d: 8)
        let a = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options())
        let held = try a.lockBuild()
        defer { held.release() }
        let r = try runFathom(["build", "--input", dir.file("base.fbin"), "--output", dir.file("idx"), "--memory-budget", "256MiB", "--quiet"])
        #expect(r.status == 11, "\(r.status) \(r.stderr)")
        #expect(r.stderr.contains("another build of \(dir.file("idx")) is running (pid \(getpid()))"), "\(r.stderr)")
        #expect(!r.stderr.contains("open failed"), "\(r.stderr)")
    }

    @Test func publishedIndexHoldsExactlyItsManifestFiles() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 600, d: 8)
        let first = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options()).build()
        #expect(entries(dir.file("idx")) == Set(first.files.map(\.name) + ["manifest.json"]))
        // Replacing it (RENAME_EXCHANGE): the new generation, no scratch, no old generation left.
        let second = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options(seed: 4)).build()
        #expect(second.parameters.seed == 4)
        #expect(try Manifest.load(directory: dir.file("idx")) == second)
        #expect(entries(dir.file("idx")) == Set(second.files.map(\.name) + ["manifest.json"]))
        #expect(entries(dir.path) == ["base.fbin", "idx", "idx.fathom-build.lock"])
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }

    /// A generation directory with a manifest and one data file, as the publisher sees it.
    func generation(_ path: String, tag: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data("{\"tag\":\"\(tag)\"}".utf8).write(to: URL(fileURLWithPath: path + "/manifest.json"))
        try Data(tag.utf8).write(to: URL(fileURLWithPath: path + "/heads.bin"))
    }

    func tag(_ path: String) -> String? {
        (try? String(contentsOfFile: path + "/heads.bin", encoding: .utf8))
    }

    @Test func publishWithoutExchangeNeverLeavesTheDestinationMissing() throws {
        let dir = TempDir()
        let dest = dir.file("idx")
        try generation(dest, tag: "old")
        try generation(dir.file("idx.fathom-build"), tag: "new")
        var calls = 0
        let noExchange: (String, String) throws -> Bool = { _, _ in calls += 1; return false }
        // A non-empty destination: refused, both generations untouched.
        #expect { try Publisher.publish(buildDirectory: dir.file("idx.fathom-build"), destination: dest, exchange: noExchange) }
            throws: { ($0 as? FathomError)?.code == .io && "\($0)".contains("RENAME_EXCHANGE") && "\($0)".contains(dest) }
        #expect(calls == 1)
        #expect(tag(dest) == "old" && tag(dir.file("idx.fathom-build")) == "new")
        #expect(entries(dir.path) == ["idx", "idx.fathom-build"])
        // An empty destination directory is replaced by rename(2), which is atomic.
        try removeTree(dest)
        try FileManager.default.createDirectory(atPath: dest, withIntermediateDirectories: false)
        try Publisher.publish(buildDirectory: dir.file("idx.fathom-build"), destination: dest, exchange: noExchange)
        #expect(tag(dest) == "new")
        #expect(entries(dir.path) == ["idx"])
    }

    @Test func exchangeMovesTheOldGenerationAsideAndDeletesIt() throws {
        let dir = TempDir()
        let dest = dir.file("idx")
        try generation(dest, tag: "old")
        try generation(dir.file("idx.fathom-build"), tag: "new")
        var sawDestination = [String?]()
        try Publisher.publish(buildDirectory: dir.file("idx.fathom-build"), destination: dest, exchange: { a, b in
            let ok = try exchangePaths(a, b)
            sawDestination.append(self.tag(dest))
            return ok
        })
        #expect(sawDestination == ["new"])
        #expect(tag(dest) == "new")
        #expect(entries(dir.path) == ["idx"])
    }

    @Test func leftoversOfACrashedPublishAreCleanedByTheNextBuild() throws {
        let dir = TempDir()
        try writeSynthetic(dir: dir, n: 600, d: 8)
        let m = try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options()).build()
        // A crash after the exchange left the old generation aside, and an older one too.
        try generation(dir.file("idx.fathom-old-99998"), tag: "stale")
        try generation(dir.file("idx.fathom-old-99999"), tag: "stale2")
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: options(seed: 5)).build()
        #expect(entries(dir.path) == ["base.fbin", "idx", "idx.fathom-build.lock"])
        // A crash of the two-rename publish of older versions: no destination, the complete
        // old index aside. The next build puts it back before it builds (a reader never
        // stays without an index longer than that).
        try renamePath(dir.file("idx"), dir.file("idx.fathom-old-12345"))
        try Publisher.cleanLeftovers(destination: dir.file("idx"))
        #expect(entries(dir.path) == ["base.fbin", "idx", "idx.fathom-build.lock"])
        #expect(try Manifest.load(directory: dir.file("idx")).parameters.seed == 5)
        #expect(m.parameters.seed == 3)
    }
}

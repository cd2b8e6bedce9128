import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
@testable import FathomStorage

/// File-system faults during a build (FathomTestSupport's FaultInjector, bound as the storage
/// layer's FileOperations): EIO, ENOSPC or a short
/// write at one call of the storage layer's read / write / fsync. Every one must fail the
/// build with an io / diskFull error naming the file (and the offset, for reads and writes),
/// leave the destination a complete index (the old one, unless the fault came after the
/// exchange), and a rerun without the fault must resume and publish the same index as an
/// uninterrupted build. FATHOM_FAULT_TRIALS=all tries every call of the build.
@Suite(.serialized) struct BuildFaultTests {
    func files(_ dir: String) throws -> [Manifest.FileEntry] { try Manifest.load(directory: dir).files }

    @Test func everyFaultIsAClearErrorAndTheRerunResumes() throws {
        let dir = TempDir("fathom-faults")
        let n = 500
        try writeSynthetic(dir: dir, n: n, d: 16)
        try Data(FuzzReference.attributeCSV(rows: n).utf8).write(to: URL(fileURLWithPath: dir.file("attrs.csv")))
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1
        o.codec = .lvq8; o.reduceDims = 8; o.attributes = dir.file("attrs.csv")
        var old = o; old.seed = 2
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("previous"), options: old).build()
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("reference"), options: o).build()
        let previous = try files(dir.file("previous")), reference = try files(dir.file("reference"))
        let fm = FileManager.default
        let idx = dir.file("idx")
        func reset() throws {
            try removeTree(idx); try removeTree(idx + ".fathom-build")
            try fm.copyItem(atPath: dir.file("previous"), toPath: idx)
        }
        // Count the calls of a clean build over the previous index.
        try reset()
        let counting = FaultInjector(pathPrefix: dir.path + "/")
        try counting.inject { try IndexBuilder(input: dir.file("base.fbin"), output: idx, options: o).build() }
        let clean = counting.calls
        #expect(try files(idx) == reference)
        // Sequential IO: no per-record reads any more, so a small build makes few calls.
        #expect(clean.count > 50, "only \(clean.count) storage calls in a build")
        let all = ProcessInfo.processInfo.environment["FATHOM_FAULT_TRIALS"] == "all"
        let trials = all ? clean.count : min(clean.count, 100)
        let faults: [FaultInjector.Fault] = [.eio, .enospc, .shortWrite]
        var sites = Set<FaultInjector.Call>(), resumed = 0
        for t in 0..<trials {
            let at = all ? t : t * clean.count / trials
            let fault = faults[t % faults.count]
            try reset()
            let injector = FaultInjector(pathPrefix: dir.path + "/", failAt: at, fault: fault)
            var thrown: Error?
            do { try injector.inject { try IndexBuilder(input: dir.file("base.fbin"), output: idx, options: o).build() } } catch { thrown = error }
            let fired = injector.fired
            guard let call = fired else { Issue.record("call \(at): the fault never fired"); continue }
            sites.insert(call)
            guard let e = thrown as? FathomError else {
                Issue.record("\(call), \(fault): \(thrown.map { "non-Fathom error \($0)" } ?? "the build succeeded despite the fault")")
                continue
            }
            #expect(e.code == (fault == .enospc ? .diskFull : .io), "\(call): \(e)")
            #expect(e.path.map { $0.hasPrefix(dir.path + "/") && $0.hasSuffix(call.file) } == true, "\(call): error names \(e.path ?? "no file")")
            if call.operation != .fsync { #expect(e.offset != nil, "\(call): no offset in \(e)") }
            // The destination: a complete index, the old one unless the fault came after the exchange.
            let now = try files(idx)
            #expect(now == previous || now == reference, "\(call): destination is neither the old nor the new index")
            if now == previous { #expect(IndexVerifier.verify(directory: idx).isEmpty, "\(call): old index damaged") }
            // Rerun without the fault: resumes (fewer calls when a stage had finished) and
            // publishes the uninterrupted build's index.
            let hadStage = fm.fileExists(atPath: idx + ".fathom-build/stage-train.json")
            let rerunCounting = FaultInjector(pathPrefix: dir.path + "/")
            try rerunCounting.inject { try IndexBuilder(input: dir.file("base.fbin"), output: idx, options: o).build() }
            let rerun = rerunCounting.calls.count
            #expect(try files(idx) == reference, "\(call): the rerun published another index")
            if hadStage { #expect(rerun < clean.count, "\(call): the rerun did not resume"); resumed += 1 }
        }
        #expect(IndexVerifier.verify(directory: idx).isEmpty)
        print("build faults: \(trials) faults injected at \(sites.count) distinct call sites of \(clean.count) storage calls (\(Set(clean.map(\.file)).count) files); \(resumed) reruns resumed after a finished stage")
    }
}

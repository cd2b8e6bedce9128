import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Power cuts, ALICE-style (docs/reliability.md, "Power-loss model"): FathomTestSupport's
/// `PowerCutRecorder`, bound as the storage layer's `FileOperations`, logs every write,
/// truncation, fsync and namespace change of (a) the last stages of a build and its atomic
/// exchange into a destination holding an older index, and (b) a `MutableVectorIndex`'s
/// inserts, upserts, deletes, flushes and a checkpoint. Each cut writes, into a fresh
/// directory, a state a power loss at one point of that log may leave (writes after the last
/// fsync dropped, torn or zeroed; namespace changes after the last directory fsync lost),
/// and checks it:
/// - build: the destination is exactly the old index or the new one (its manifest's files,
///   no other file) and `verify` passes; the rerun of the build resumes and publishes the
///   uninterrupted build's index;
/// - log: the index opens, `verify` passes, and its live labels and vectors are exactly those
///   after the first k updates, for some k between the updates acknowledged by a completed
///   flush before the cut and those written before it (so no acknowledged update is lost, no
///   deleted label comes back, nothing is half-applied); a new flush after the reopen survives.
/// Cuts are seeded. FATHOM_POWER_CUTS (default 40) cuts in all, half for each; the
/// deliberately broken variants (an fsync skipped) must be caught.
@Suite(.serialized) struct PowerLossTests {
    static var totalCuts: Int { Int(ProcessInfo.processInfo.environment["FATHOM_POWER_CUTS"] ?? "") ?? 40 }

    /// The cut positions and kinds for `count` cuts over a log of `events` events: after
    /// fsyncs, just before them (unsynced writes present) and anywhere, with every loss kind
    /// and both namespace models.
    static func cuts(_ count: Int, events: Int, syncs: [Int], seed: UInt64) -> [PowerCutRecorder.Cut] {
        var rng = SeededRandom(seed: seed)
        return (0..<count).map { i in
            let position: Int
            switch i % 4 {
            case 0 where !syncs.isEmpty: position = syncs[rng.below(syncs.count)]
            case 1 where !syncs.isEmpty: position = max(0, syncs[rng.below(syncs.count)] - 1)
            default: position = rng.below(events + 1)
            }
            let loss: PowerCutRecorder.Loss = i % 10 == 3 ? .loseEverything : i % 10 == 7 ? .keepNothingLost : .random
            return .init(position: position, seed: seed &+ UInt64(i), loss: loss, namespace: i % 3 == 2 ? .perDirectory : .journaled)
        }
    }

    // MARK: (a) publish

    struct PublishSetup {
        let dir: TempDir
        let options: BuildOptions
        let previous: [Manifest.FileEntry]
        let reference: [Manifest.FileEntry]
        var input: String { dir.file("input/base.fbin") }
        var root: String { dir.file("root") }
    }

    /// An lvq8 + attributes index (nine files) as the old generation at root/idx, the new
    /// build stopped after its assign stage (so the log covers pack and publish), and the
    /// uninterrupted build's file list.
    static func publishSetup() throws -> PublishSetup {
        let dir = TempDir("fathom-powercut-build")
        let n = 500
        try FileManager.default.createDirectory(atPath: dir.file("input"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("root"), withIntermediateDirectories: true)
        try writeSynthetic(dir: dir, n: n, d: 16, base: "input/base.fbin")
        try Data(FuzzReference.attributeCSV(rows: n).utf8).write(to: URL(fileURLWithPath: dir.file("input/attrs.csv")))
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1
        o.codec = .lvq8; o.reduceDims = 8; o.attributes = dir.file("input/attrs.csv")
        var old = o; old.seed = 2
        let input = dir.file("input/base.fbin")
        try IndexBuilder(input: input, output: dir.file("root/idx"), options: old).build()
        try IndexBuilder(input: input, output: dir.file("reference"), options: o).build()
        var stop = o; stop.stopAfterStage = "assign"
        do { try IndexBuilder(input: input, output: dir.file("root/idx"), options: stop).build(); Issue.record("the stop hook did not stop") }
        catch let e as FathomError where e.code == .cancelled {}
        return PublishSetup(dir: dir, options: o, previous: try Manifest.load(directory: dir.file("root/idx")).files,
                            reference: try Manifest.load(directory: dir.file("reference")).files)
    }

    /// What is wrong with the destination `dest` of a materialized cut: it must be the old or
    /// the new complete index, holding exactly its manifest's files, and verify.
    static func publishProblems(_ dest: String, _ s: PublishSetup) -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dest, isDirectory: &isDir), isDir.boolValue else { return ["the destination is missing"] }
        let files: [Manifest.FileEntry]
        do { files = try Manifest.load(directory: dest).files } catch { return ["the destination has no readable manifest: \(error)"] }
        var problems = [String]()
        if files != s.previous && files != s.reference { problems.append("the manifest is neither the old index's nor the new one's") }
        let listed = Set((try? FileManager.default.contentsOfDirectory(atPath: dest)) ?? [])
        let expected = Set(files.map(\.name) + ["manifest.json"])
        if listed != expected { problems.append("the destination holds \(listed.sorted()), its manifest names \(expected.sorted())") }
        problems += IndexVerifier.verify(directory: dest).map { "verify: \($0)" }
        return problems
    }

    /// Materializes `cut` and checks it; with `resume`, also reruns the build there.
    static func checkPublishCut(_ rec: PowerCutRecorder, _ cut: PowerCutRecorder.Cut, _ s: PublishSetup, at path: String,
                                resume: Bool) throws -> (problems: [String], outcome: PowerCutRecorder.Outcome, published: Bool) {
        try? FileManager.default.removeItem(atPath: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try rec.materialize(cut, into: path)
        var problems = publishProblems(path + "/idx", s)
        let published = (try? Manifest.load(directory: path + "/idx").files) == s.reference
        if resume {
            do {
                try IndexBuilder(input: s.input, output: path + "/idx", options: s.options).build()
                let files = try Manifest.load(directory: path + "/idx").files
                if files != s.reference { problems.append("the resumed build published another index") }
                problems += IndexVerifier.verify(directory: path + "/idx").map { "verify after the resumed build: \($0)" }
                let left = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("idx.fathom-old-") || $0 == "idx.fathom-build" }
                if !left.isEmpty { problems.append("left behind after the resumed build: \(left)") }
            } catch { problems.append("the resumed build failed: \(error)") }
        }
        return (problems, outcome, published)
    }

    @Test func powerCutsDuringPackAndPublishLeaveTheOldOrTheNewIndex() throws {
        let s = try Self.publishSetup()
        let rec = try PowerCutRecorder(root: s.root)
        try rec.record { try IndexBuilder(input: s.input, output: s.root + "/idx", options: s.options).build() }
        #expect(try rec.modelMismatches() == [], "the seam missed changes of the build")
        #expect(try Manifest.load(directory: s.root + "/idx").files == s.reference)
        let count = max(1, Self.totalCuts / 2)
        var failures = 0, old = 0, new = 0
        for (i, cut) in Self.cuts(count, events: rec.position, syncs: rec.syncPositions, seed: 0x5EED_0001).enumerated() {
            let r = try Self.checkPublishCut(rec, cut, s, at: s.dir.file("cut"), resume: true)
            if r.published { new += 1 } else { old += 1 }
            if !r.problems.isEmpty {
                failures += 1
                Issue.record("cut \(i), \(cut) [\(r.outcome)]: \(r.problems.joined(separator: "; "))")
            }
        }
        print("power cuts, publish: \(count) cuts over \(rec.summary); \(old) left the old index, \(new) the new; \(failures) failures")
    }

    /// The harness must catch a publish that never fsyncs its manifest: the exchange and the
    /// parent's fsync make the new directory durable while manifest.json's bytes are not.
    @Test func aPublishThatSkipsTheManifestFsyncIsCaught() throws {
        let s = try Self.publishSetup()
        let rec = try PowerCutRecorder(root: s.root, skipSync: { $0.hasSuffix("/idx.fathom-build/manifest.json") })
        try rec.record { try IndexBuilder(input: s.input, output: s.root + "/idx", options: s.options).build() }
        let cut = PowerCutRecorder.Cut(position: rec.position, seed: 1, loss: .loseEverything)
        let r = try Self.checkPublishCut(rec, cut, s, at: s.dir.file("cut"), resume: false)
        #expect(!r.problems.isEmpty, "a published index whose manifest was never fsynced passed the checks")
        print("power cuts, broken publish caught: \(r.problems.first ?? "nothing")")
        // The same cut of the correct publish passes (the difference is the fsync).
        let good = try Self.publishSetup()
        let rec2 = try PowerCutRecorder(root: good.root)
        try rec2.record { try IndexBuilder(input: good.input, output: good.root + "/idx", options: good.options).build() }
        let r2 = try Self.checkPublishCut(rec2, .init(position: rec2.position, seed: 1, loss: .loseEverything), good, at: good.dir.file("cut"), resume: false)
        #expect(r2.problems == [] && r2.published)
    }

    // MARK: (b) the update log

    enum Update { case insert(UInt64, [Float]), upsert(UInt64, [Float]), delete(UInt64) }

    /// The recorded updates of a writer session and what was acknowledged when.
    final class LogSession {
        var updates: [Update] = []
        /// (log position when a flush, batch insert or checkpoint returned, updates acknowledged).
        var acks: [(position: Int, count: Int)] = []
        /// (log position when a flush began, updates it may write).
        var writes: [(position: Int, count: Int)] = []
        var states: [[UInt64: [Float]]] = []
    }

    struct LogSetup {
        let dir: TempDir
        let base: Matrix
        var root: String { dir.file("root") }
    }

    static func logSetup() throws -> LogSetup {
        let dir = TempDir("fathom-powercut-log")
        try FileManager.default.createDirectory(atPath: dir.file("root"), withIntermediateDirectories: true)
        let (all, _) = try writeSynthetic(dir: dir, n: 400, d: 16, base: "base.fbin")
        var o = BuildOptions(); o.memoryBudget = 256 << 20; o.headRatio = 0.05; o.postingPages = 1
        o.codec = .lvq8; o.reduceDims = 8
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("root/idx"), options: o).build()
        return LogSetup(dir: dir, base: all)
    }

    /// Runs a seeded session of inserts (batches and single), upserts, deletes (of built and
    /// inserted labels), re-inserts of deleted labels, flushes and one checkpoint, recording
    /// it with `rec`; returns what was issued and acknowledged.
    static func runSession(_ s: LogSetup, _ rec: PowerCutRecorder, rounds: Int = 6) throws -> LogSession {
        let session = LogSession()
        var rng = SeededRandom(seed: 23)
        let d = s.base.cols
        func vector() -> [Float] { (0..<d).map { _ in Float(rng.uniform() * 2 - 1) } }
        var live = Set((0..<UInt64(s.base.rows)))
        var deleted = [UInt64]()
        var next: UInt64 = 10_000
        try rec.record {
            let w = try MutableVectorIndex.open(at: s.root + "/idx", io: .pread)
            defer { w.close() }
            func flush() throws {
                session.writes.append((rec.position, session.updates.count))
                try w.flush()
                session.acks.append((rec.position, session.updates.count))
            }
            for round in 0..<(2 * rounds) {
                if round == rounds {
                    session.writes.append((rec.position, session.updates.count))
                    try w.checkpoint(memoryBudget: 256 << 20)
                    session.acks.append((rec.position, session.updates.count))
                }
                // A batch: checked whole, logged, one fsync.
                let labels = (0..<6).map { _ in next += 1; return next }
                let rows = labels.map { _ in vector() }
                session.writes.append((rec.position, session.updates.count + labels.count))
                try rows.flatMap { $0 }.withUnsafeBufferPointer { try w.insert(labels: labels, vectors: $0) }
                for (l, v) in zip(labels, rows) { session.updates.append(.insert(l, v)); live.insert(l) }
                session.acks.append((rec.position, session.updates.count))
                // Single updates, flushed together (group commit).
                let sorted = live.sorted()
                let victim = sorted[rng.below(sorted.count)]
                try w.delete(label: victim); session.updates.append(.delete(victim)); live.remove(victim); deleted.append(victim)
                let target = live.sorted()[rng.below(live.count)]
                let v = vector()
                try w.upsert(label: target, vector: v); session.updates.append(.upsert(target, v))
                if round % 3 == 1, let back = deleted.first {
                    let bv = vector()
                    try w.insert(label: back, vector: bv); session.updates.append(.insert(back, bv)); live.insert(back); deleted.removeFirst()
                }
                if round % 4 != 3 { try flush() }   // else these wait for the next round's batch
            }
            // Issued, never flushed: may or may not survive, never acknowledged.
            next += 1
            let v = vector()
            try w.insert(label: next, vector: v); session.updates.append(.insert(next, v))
        }
        // The expected state after each prefix of the updates.
        var state = [UInt64: [Float]]()
        for i in 0..<s.base.rows { state[UInt64(i)] = Array(UnsafeBufferPointer(start: s.base.row(i), count: d)) }
        session.states = [state]
        for u in session.updates {
            switch u {
            case .insert(let l, let v), .upsert(let l, let v): state[l] = v
            case .delete(let l): state[l] = nil
            }
            session.states.append(state)
        }
        return session
    }

    /// The live labels and vectors of the index at `dir`, as a read-only open replays it.
    static func recoveredState(_ dir: String, scratch: String) throws -> [UInt64: [Float]] {
        let st = try WriterState(directory: dir, writable: false, io: .pread, serveMemory: nil)
        try st.writeLive(vectors: scratch + ".fbin", labels: scratch + ".labels")
        defer { try? FileManager.default.removeItem(atPath: scratch + ".fbin"); try? FileManager.default.removeItem(atPath: scratch + ".labels") }
        let labels = try LabelsFile.parseText(path: scratch + ".labels")
        var out = [UInt64: [Float]]()
        guard !labels.isEmpty else { return out }
        let m = try Matrix.load(vectorFile: scratch + ".fbin")
        for (i, l) in labels.enumerated() { out[l] = Array(UnsafeBufferPointer(start: m.row(i), count: m.cols)) }
        return out
    }

    /// Materializes `cut` of a recorded session and checks the index there.
    static func checkLogCut(_ rec: PowerCutRecorder, _ cut: PowerCutRecorder.Cut, _ session: LogSession, at path: String)
        throws -> (problems: [String], outcome: PowerCutRecorder.Outcome, recovered: Int?) {
        try? FileManager.default.removeItem(atPath: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try rec.materialize(cut, into: path)
        let idx = path + "/idx"
        let c = min(cut.position, rec.position)
        let acked = session.acks.filter { $0.position <= c }.map(\.count).max() ?? 0
        let written = max(acked, session.writes.filter { $0.position < c }.map(\.count).max() ?? 0)
        var problems = IndexVerifier.verify(directory: idx).map { "verify: \($0)" }
        var recovered: Int? = nil
        do {
            let state = try recoveredState(idx, scratch: path + "-live")
            recovered = (acked...written).last { session.states[$0] == state }
            if recovered == nil {
                let lost = session.states[acked].keys.filter { state[$0] == nil }.count
                let back = state.keys.filter { session.states[acked][$0] == nil && session.states[written][$0] == nil }.count
                problems.append("the index holds the state of no update prefix between \(acked) (acknowledged) and \(written) (written): \(lost) acknowledged labels missing, \(back) labels present in neither")
            }
            // A writer opens it (cutting a torn tail), a new flush is acknowledged and survives a reopen.
            let w = try MutableVectorIndex.open(at: idx, io: .pread)
            try w.insert(label: 7_777_777, vector: [Float](repeating: 0.5, count: w.dimension))
            try w.flush()
            w.close()
            let after = try recoveredState(idx, scratch: path + "-live")
            if after[7_777_777] == nil { problems.append("an update flushed after the recovery was lost at the next open") }
            if let r = recovered, after.count != session.states[r].count + (session.states[r][7_777_777] == nil ? 1 : 0) {
                problems.append("the reopen after the recovery changed the state")
            }
            problems += IndexVerifier.verify(directory: idx).map { "verify after the recovery: \($0)" }
        } catch { problems.append("the index does not open: \(error)") }
        return (problems, outcome, recovered)
    }

    @Test func powerCutsDuringUpdatesKeepEveryAcknowledgedUpdate() throws {
        let s = try Self.logSetup()
        let rec = try PowerCutRecorder(root: s.root)
        let session = try Self.runSession(s, rec)
        // Scratch files of the checkpoint are removed with Foundation, outside the seam.
        #expect(try rec.modelMismatches(ignoring: { $0.contains(".fathom-checkpoint.") }) == [], "the seam missed changes of the updates")
        let count = max(1, Self.totalCuts - Self.totalCuts / 2)
        var failures = 0, lostTail = 0
        for (i, cut) in Self.cuts(count, events: rec.position, syncs: rec.syncPositions, seed: 0x5EED_0002).enumerated() {
            let r = try Self.checkLogCut(rec, cut, session, at: s.dir.file("cut"))
            let acked = session.acks.filter { $0.position <= cut.position }.map(\.count).max() ?? 0
            if let k = r.recovered, k > acked { lostTail += 1 }
            if !r.problems.isEmpty {
                failures += 1
                Issue.record("cut \(i), \(cut) [\(r.outcome)]: \(r.problems.joined(separator: "; "))")
            }
        }
        print("power cuts, update log: \(count) cuts over \(rec.summary), \(session.updates.count) updates, \(session.acks.count) acknowledgements; \(lostTail) cuts recovered unacknowledged updates too; \(failures) failures")
    }

    /// The harness must catch a log whose flush never fsyncs: acknowledged updates vanish.
    @Test func aFlushThatSkipsTheFsyncIsCaught() throws {
        let s = try Self.logSetup()
        let rec = try PowerCutRecorder(root: s.root, skipSync: { $0.hasSuffix("/updates.wal") })
        let session = try Self.runSession(s, rec, rounds: 2)
        // Before the checkpoint: the log holds acknowledged updates that were never fsynced.
        let beforeCheckpoint = session.writes[session.writes.count / 2 - 1].position
        let r = try Self.checkLogCut(rec, .init(position: beforeCheckpoint, seed: 1, loss: .loseEverything), session, at: s.dir.file("cut"))
        #expect(!r.problems.isEmpty, "acknowledged updates lost to a skipped fsync passed the checks")
        print("power cuts, broken log caught: \(r.problems.first ?? "nothing")")
        let good = try Self.logSetup()
        let rec2 = try PowerCutRecorder(root: good.root)
        let session2 = try Self.runSession(good, rec2, rounds: 2)
        let at2 = session2.writes[session2.writes.count / 2 - 1].position
        let r2 = try Self.checkLogCut(rec2, .init(position: at2, seed: 1, loss: .loseEverything), session2, at: good.dir.file("cut"))
        #expect(r2.problems == [])
    }
}

extension PowerLossTests {
    /// Every cut of the log's creation and first flush (every position): the writer's first
    /// moments, where the log file itself is new. It found that a log whose header write was
    /// lost while its size survived (64 bytes of zeros) made the index unopenable ("bad magic").
    @Test func everyCutOfTheLogsCreationRecovers() throws {
        let s = try Self.logSetup()
        let rec = try PowerCutRecorder(root: s.root)
        let session = LogSession()
        let v = [Float](repeating: 0.25, count: s.base.cols)
        try rec.record {
            let w = try MutableVectorIndex.open(at: s.root + "/idx", io: .pread)
            defer { w.close() }
            session.writes.append((rec.position, 1))
            try w.insert(label: 5000, vector: v)
            try w.flush()
            session.updates.append(.insert(5000, v))
            session.acks.append((rec.position, 1))
        }
        var state = [UInt64: [Float]]()
        for i in 0..<s.base.rows { state[UInt64(i)] = Array(UnsafeBufferPointer(start: s.base.row(i), count: s.base.cols)) }
        session.states = [state]
        state[5000] = v
        session.states.append(state)
        var cuts = 0, failures = 0
        // Default: per position, one random cut and the loss of everything unsynced, the models
        // alternating; FATHOM_POWER_CUTS set: every loss kind, both models, 8 random seeds.
        let full = ProcessInfo.processInfo.environment["FATHOM_POWER_CUTS"] != nil
        for position in 0...rec.position {
            for loss in PowerCutRecorder.Loss.allCases where full || loss != .keepNothingLost {
                for model in PowerCutRecorder.NamespaceModel.allCases where full || (model == .journaled) == (position % 2 == 0) {
                    for seed in 0..<(loss == .random && full ? 8 : 1) {
                        let cut = PowerCutRecorder.Cut(position: position, seed: UInt64(seed), loss: loss, namespace: model)
                        let r = try Self.checkLogCut(rec, cut, session, at: s.dir.file("cut"))
                        cuts += 1
                        if !r.problems.isEmpty { failures += 1; Issue.record("\(cut) [\(r.outcome)]: \(r.problems.joined(separator: "; "))") }
                    }
                }
            }
        }
        print("power cuts, log creation: \(cuts) cuts over \(rec.summary); \(failures) failures")
    }
}

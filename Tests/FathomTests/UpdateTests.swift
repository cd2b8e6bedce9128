import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Updates in place (docs/updates.md): labels, insert/delete/upsert through the delta
/// stores, the write-ahead log's recovery, one writer per directory, a full disk, kill -9.
@Suite struct UpdateTests {
    /// Writes rows `range` of `m` as an .fbin.
    static func write(_ m: Matrix, _ range: Range<Int>, to path: String) throws {
        let w = try VectorFileWriter(path: path, format: .fbin, elementType: .float32, dimension: m.cols)
        try w.append(UnsafeRawPointer(m.row(range.lowerBound)), count: range.count)
        try w.close()
    }

    static func row(_ m: Matrix, _ i: Int) -> [Float] { Array(UnsafeBufferPointer(start: m.row(i), count: m.cols)) }

    /// Builds an index over the first `built` rows of a seeded set of `n`.
    static func build(_ dir: TempDir, n: Int = 2000, built: Int = 1600, d: Int = 16, codec: PostingCodec = .none,
                      labels: String? = nil) throws -> (Matrix, Matrix) {
        let (all, q) = try writeSynthetic(dir: dir, n: n, d: d, nq: 40, base: "all.fbin")
        try write(all, 0..<built, to: dir.file("base.fbin"))
        var o = BuildOptions(); o.codec = codec; o.labels = labels
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.postingPages = 2
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        return (all, q)
    }

    static let everything = SearchParameters(probes: 10_000, maxDistRatio: .infinity, headListSize: 10_000)

    @Test func labelsAreStoredAndReturned() throws {
        let dir = TempDir()
        let text = (0..<1600).map { String(1_000_000_000_000 + 7 * UInt64($0)) }.joined(separator: "\n") + "\n"
        try text.write(toFile: dir.file("labels.txt"), atomically: true, encoding: .utf8)
        let (all, _) = try Self.build(dir, labels: dir.file("labels.txt"))
        let index = try VectorIndex.open(at: dir.file("idx"))
        for i in [0, 5, 1599] {
            let hit = try index.search(Self.row(all, i), k: 1, parameters: Self.everything)[0]
            #expect(hit.id == UInt32(i) && hit.label == 1_000_000_000_000 + 7 * UInt64(i))
        }
        #expect(index.manifest.files.contains { $0.name == "labels.bin" })
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
        // Without labels: label = row number.
        let plain = TempDir()
        let (p, _) = try Self.build(plain)
        let hit = try VectorIndex.open(at: plain.file("idx")).search(Self.row(p, 42), k: 1, parameters: Self.everything)[0]
        #expect(hit.id == 42 && hit.label == 42)
    }

    @Test func badLabelFilesAreRefusedWithTheLine() throws {
        let dir = TempDir()
        func refuse(_ text: String, _ expected: Int, _ needle: String) {
            try! text.write(toFile: dir.file("l.txt"), atomically: true, encoding: .utf8)
            do { _ = try LabelsFile.parseText(path: dir.file("l.txt"), expected: expected); Issue.record("accepted \(text)") }
            catch let e as FathomError { #expect(e.message.contains(needle), "\(e)"); #expect(e.path == dir.file("l.txt")) }
            catch { Issue.record("\(error)") }
        }
        refuse("1\n2\n", 3, "2 labels for 3")
        refuse("1\nx7\n3\n", 3, "line 2")
        refuse("1\n2\n1\n", 3, "repeats line 1")
        refuse("1\n\n3\n", 3, "line 2 is empty")
        refuse("-1\n", 1, "line 1")
        try "5\n 6 \r\n7".write(toFile: dir.file("ok.txt"), atomically: true, encoding: .utf8)
        #expect(try LabelsFile.parseText(path: dir.file("ok.txt"), expected: 3) == [5, 6, 7])
    }

    @Test(arguments: [PostingCodec.none, .lvq8])
    func insertDeleteUpsertRoundTrip(codec: PostingCodec) throws {
        let dir = TempDir()
        let (all, _) = try Self.build(dir, codec: codec)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        let inserted = 1600..<2000
        for i in inserted { try w.insert(label: 50_000 + UInt64(i), vector: Self.row(all, i)) }
        // Not visible before flush; visible after.
        #expect(w.snapshot().liveCount == 1600)
        try w.flush()
        #expect(w.count == 2000)
        for i in stride(from: 1600, to: 2000, by: 37) {
            let hit = try w.search(Self.row(all, i), k: 1, parameters: Self.everything)[0]
            #expect(hit.label == 50_000 + UInt64(i) && hit.distance < 1e-4, "inserted row \(i): \(hit)")
        }
        // Default parameters find the inserted vectors too.
        var found = 0
        for i in inserted { if try w.search(Self.row(all, i), k: 1)[0].label == 50_000 + UInt64(i) { found += 1 } }
        #expect(found >= 390, "\(found) of 400 inserted vectors found at default probes")
        // The pipelined batch search (several queries in flight per thread) sees the same.
        let snap = w.snapshot()
        let qs = (1600..<1640).flatMap { Self.row(all, $0) }
        let batch = qs.withUnsafeBufferPointer { snap.search(batch: $0, count: 40, k: 5, parameters: SearchParameters(probes: 8), threads: 2, window: 4) }
        for (j, r) in batch.enumerated() {
            let one = try snap.search(Self.row(all, 1600 + j), k: 5, parameters: SearchParameters(probes: 8))
            #expect(try r.get().map(\.label) == one.map(\.label), "query \(j)")
        }
        // Delete hides (a base row and an inserted one).
        #expect(try w.delete(label: 7))
        #expect(try w.delete(label: 51_700))
        #expect(try w.delete(label: 999_999) == false)   // unknown: reported, not fatal
        try w.flush()
        #expect(try w.search(Self.row(all, 7), k: 5, parameters: Self.everything).allSatisfy { $0.label != 7 })
        #expect(try w.search(Self.row(all, 1700), k: 5, parameters: Self.everything).allSatisfy { $0.label != 51_700 })
        // Insert of a present label fails; upsert replaces.
        #expect(throws: FathomError.self) { try w.insert(label: 3, vector: Self.row(all, 1999)) }
        try w.upsert(label: 3, vector: Self.row(all, 1999).map { $0 + 0.01 })
        try w.flush()
        let near3 = try w.search(Self.row(all, 3), k: 3, parameters: Self.everything)
        #expect(near3.allSatisfy { $0.label != 3 || $0.distance > 1e-3 })
        let hit = try w.search(Self.row(all, 1999).map { $0 + 0.01 }, k: 1, parameters: Self.everything)[0]
        #expect(hit.label == 3 && hit.distance < 1e-4)
        #expect(w.count == 1998)
        // Reopen replays the log: the same answers.
        let before = try w.search(Self.row(all, 1800), k: 10, parameters: Self.everything)
        w.close()
        let r = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(r.replayedRecords == 400 + 2 + 1 && r.tornBytes == 0)
        #expect(try r.search(Self.row(all, 1800), k: 10, parameters: Self.everything).map(\.label) == before.map(\.label))
        #expect(r.count == 1998)
        r.close()
        // A read-only open (fathom search) sees the same; verify accepts the index and its log.
        let ro = try VectorIndex.openCurrent(at: dir.file("idx"))
        #expect(try ro.search(Self.row(all, 1800), k: 10, parameters: Self.everything).map(\.label) == before.map(\.label))
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }

    @Test func badUpdatesAreRefusedAndLogNothing() throws {
        let dir = TempDir()
        let (all, _) = try Self.build(dir)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(throws: FathomError.self) { try w.insert(label: 1, vector: Self.row(all, 1700)) }           // duplicate
        #expect(throws: FathomError.self) { try w.insert(label: 9000, vector: [1, 2, 3]) }                  // dimension
        var nan = Self.row(all, 1700); nan[3] = .nan
        #expect(throws: FathomError.self) { try w.insert(label: 9000, vector: nan) }
        // A batch with one bad row is refused whole, naming the row.
        var rows = (1600..<1610).flatMap { Self.row(all, $0) }
        rows[5 * 16 + 2] = .infinity
        do {
            try rows.withUnsafeBufferPointer { try w.insert(labels: (0..<10).map { 9000 + UInt64($0) }, vectors: $0) }
            Issue.record("accepted a batch with an infinite value")
        } catch let e as FathomError { #expect(e.code == .nonFiniteValue && e.message.hasPrefix("row 5")) }
        #expect(w.pendingUpdates == 0 && w.loggedUpdates == 0 && w.count == 1600)
        // A second writer is refused with the holder's pid.
        do { _ = try MutableVectorIndex.open(at: dir.file("idx")); Issue.record("second writer admitted") }
        catch let e as FathomError { #expect(e.message.contains("open for writing by another process (pid \(getpid()))")) }
        w.close()
        _ = try MutableVectorIndex.open(at: dir.file("idx"))   // free again after close
    }

    @Test func recoveryStopsCleanlyAtATornTail() throws {
        let dir = TempDir()
        let (all, _) = try Self.build(dir)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        // One flush per insert: ends[i] is where record i ends in the log.
        var ends = [Int]()
        for i in 1600..<1650 { try w.insert(label: UInt64(i), vector: Self.row(all, i)); try w.flush(); ends.append(w.durableLogBytes) }
        let durable = w.durableLogBytes
        w.close()
        let log = dir.file("idx/updates.wal")
        #expect(durable == ends[49] && ends[0] > 64 + 8 + 10 + 16 * 4)
        // Cut the last record in the middle, then add garbage (a torn, unsynced tail).
        let f = try LogFile(path: log, create: false)
        let half = (ends[48] + ends[49]) / 2
        try f.truncate(to: half)
        let junk = [UInt8](repeating: 0xA5, count: 100)
        try junk.withUnsafeBytes { try f.append($0.baseAddress!, count: $0.count) }
        let r = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(r.replayedRecords == 49)
        #expect(r.tornBytes == half - ends[48] + 100)
        #expect(r.durableLogBytes == ends[48])
        #expect(try LogFile(path: log, create: false).size == ends[48])   // the tail was cut
        #expect(r.contains(1648) && !r.contains(1649))
        // Appending after recovery continues a sound log.
        try r.insert(label: 1649, vector: Self.row(all, 1649)); try r.flush()
        r.close()
        let again = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(again.replayedRecords == 50 && again.tornBytes == 0 && again.contains(1649))
        // Replay reuses the logged assignment: the same answers as before the restart.
        #expect(try again.search(Self.row(all, 1620), k: 1, parameters: Self.everything)[0].label == 1620)
        // A flipped byte inside record 10: replay stops before it.
        again.close()
        let g = try LogFile(path: log, create: false)
        var b: UInt8 = 0xFF
        try g.write(&b, count: 1, at: ends[9] + 40)
        let cut = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(cut.replayedRecords == 10)
    }

    @Test func checkpointFoldsTheLogIntoANewVersion() throws {
        let dir = TempDir()
        let (all, _) = try Self.build(dir)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        for i in 1600..<1700 { try w.insert(label: 70_000 + UInt64(i), vector: Self.row(all, i)) }
        for l in 0..<50 { try w.delete(label: UInt64(l)) }
        try w.flush()
        let before = try w.search(Self.row(all, 1650), k: 10, parameters: Self.everything)
        let held = w.snapshot()   // a search in flight keeps its version
        try w.checkpoint(memoryBudget: 512 << 20)
        #expect(w.count == 1650 && w.loggedUpdates == 0)
        let m = try Manifest.load(directory: dir.file("idx"))
        #expect(m.count == 1650)
        #expect(try LogFile(path: dir.file("idx/updates.wal"), create: false).size == 64)
        let after = try w.search(Self.row(all, 1650), k: 10, parameters: Self.everything)
        #expect(after.map(\.label) == before.map(\.label))
        #expect(try held.search(Self.row(all, 1650), k: 10, parameters: Self.everything).map(\.label) == before.map(\.label))
        #expect(try w.search(Self.row(all, 3), k: 3, parameters: Self.everything).allSatisfy { $0.label >= 50 })
        // Updates continue on the new version.
        try w.insert(label: 1, vector: Self.row(all, 1800)); try w.flush()
        #expect(try w.search(Self.row(all, 1800), k: 1, parameters: Self.everything)[0].label == 1)
        w.close()
        #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty)
    }

    /// Searches on other threads while the writer inserts, deletes and flushes: every answer
    /// comes from one snapshot (k results, labels that were live in some version, sorted
    /// distances), and searches never fail.
    @Test func searchesRunWhileTheWriterUpdates() throws {
        let dir = TempDir()
        let (all, q) = try Self.build(dir, n: 2400, built: 1200)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        let done = Tally()
        let failures = Tally()
        let queries = (0..<q.rows).map { Self.row(q, $0) }
        let group = DispatchGroup()
        for t in 0..<2 {
            DispatchQueue.global().async(group: group) {
                var i = t
                while done.peek() == 0 {
                    do {
                        let snap = w.snapshot()
                        let hits = try snap.search(queries[i % queries.count], k: 10, parameters: SearchParameters(probes: 8))
                        if hits.count != 10 || hits.map(\.distance) != hits.map(\.distance).sorted()
                            || hits.contains(where: { $0.label >= 2400 || snap.tombstones.contains($0.id) }) { _ = failures.next() }
                    } catch { _ = failures.next() }
                    i += 1
                }
            }
        }
        for start in stride(from: 1200, to: 2400, by: 100) {
            let rows = (start..<start + 100).flatMap { Self.row(all, $0) }
            try rows.withUnsafeBufferPointer { try w.insert(labels: (start..<start + 100).map { UInt64($0) }, vectors: $0) }
            for l in stride(from: start - 1200, to: start - 1100, by: 3) { try w.delete(label: UInt64(l)) }
            try w.flush()
        }
        _ = done.next()
        group.wait()
        #expect(failures.peek() == 0)
        #expect(w.count == 2400 - 12 * 34)
    }

    /// The 80/20/10 protocol at small n: build on 80%, insert 20%, delete 10% at random;
    /// recall@10 against the exact answer over the live set stays near a fresh build of it.
    @Test func recallAfterUpdatesStaysNearAFreshBuild() throws {
        let dir = TempDir()
        let n = 3000, built = 2400
        let (all, q) = try Self.build(dir, n: n, built: built)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        for start in stride(from: built, to: n, by: 200) {
            let rows = (start..<start + 200).flatMap { Self.row(all, $0) }
            try rows.withUnsafeBufferPointer { try w.insert(labels: (start..<start + 200).map { UInt64($0) }, vectors: $0) }
        }
        var rng = SeededRandom(seed: 99)
        let deleted = Set(rng.sample(n / 10, from: n).map { UInt64($0) })
        for l in deleted { #expect(try w.delete(label: l)) }
        try w.flush()
        let live = (0..<n).filter { !deleted.contains(UInt64($0)) }
        let liveM = Matrix(rows: live.count, cols: all.cols)
        for (r, i) in live.enumerated() { liveM.row(r).update(from: all.row(i), count: all.cols) }
        // A fresh build of the live set, labelled with the original rows.
        try Self.write(liveM, 0..<live.count, to: dir.file("live.fbin"))
        try live.map(String.init).joined(separator: "\n").write(toFile: dir.file("live.txt"), atomically: true, encoding: .utf8)
        var o = BuildOptions(); o.codec = .none; o.labels = dir.file("live.txt")
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.postingPages = 2
        try IndexBuilder(input: dir.file("live.fbin"), output: dir.file("fresh"), options: o).build()
        let fresh = try VectorIndex.open(at: dir.file("fresh"))
        let p = SearchParameters(probes: 4)
        var hitsUpdated = 0, hitsFresh = 0
        for i in 0..<q.rows {
            let truth = Set(bruteForce(liveM, q.row(i), k: 10, metric: .l2).map { UInt64(live[Int($0)]) })
            let qv = Self.row(q, i)
            hitsUpdated += try w.search(qv, k: 10, parameters: p).filter { truth.contains($0.label) }.count
            hitsFresh += try fresh.search(qv, k: 10, parameters: p).filter { truth.contains($0.label) }.count
            #expect(try w.search(qv, k: 10, parameters: p).allSatisfy { !deleted.contains($0.label) })
        }
        let ru = Double(hitsUpdated) / Double(q.rows * 10), rf = Double(hitsFresh) / Double(q.rows * 10)
        #expect(ru >= rf - 0.03, "recall after updates \(ru), fresh build \(rf)")
        #expect(ru >= 0.85, "recall after updates \(ru)")
    }

    /// kill -9 of a `fathom insert` child at random moments: after reopen every acknowledged
    /// batch is present, the inserted labels are a prefix of the input (nothing half-applied)
    /// and `fathom verify` passes.
    @Test func killDashNineLosesNothingAcknowledged() throws {
        let dir = TempDir()
        let (all, _) = try Self.build(dir, n: 6000, built: 1000)
        try Self.write(all, 1000..<6000, to: dir.file("ins.fbin"))
        var fathom = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: fathom.appendingPathComponent("fathom").path) && fathom.path != "/" {
            fathom = fathom.deletingLastPathComponent()
        }
        var inserted = 0
        var rng = SeededRandom(seed: 5)
        for round in 0..<3 {
            // Each round inserts the rest of the file (labels continue after the largest).
            try Self.write(all, 1000 + inserted..<6000, to: dir.file("rest.fbin"))
            let p = Process()
            p.executableURL = fathom.appendingPathComponent("fathom")
            p.arguments = ["insert", "--index", dir.file("idx"), "--input", dir.file("rest.fbin"), "--batch", "25", "--print-acks", "--quiet"]
            let out = Pipe()
            p.standardOutput = out; p.standardError = FileHandle.nullDevice
            try p.run()
            let wantAcks = 2 + rng.next() % 8
            var acked = 0, buffer = Data()
            while acked < Int(wantAcks) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                let lines = String(decoding: buffer, as: UTF8.self).split(separator: "\n")
                if let last = lines.last(where: { $0.hasPrefix("ack ") && $0.split(separator: " ").count == 3 }),
                   let v = Int(last.split(separator: " ")[1]) { acked = v / 25 }
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal, "round \(round): the insert ended before the kill")
            let text = String(decoding: buffer + out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let ackedRows = text.split(separator: "\n").compactMap { $0.hasPrefix("ack ") ? Int($0.split(separator: " ")[1]) : nil }.max() ?? 0
            let r = try MutableVectorIndex.open(at: dir.file("idx"))
            // Labels 1000 … are the input rows in order: present ones must form a prefix.
            var present = 0
            while r.contains(UInt64(1000 + present)) { present += 1 }
            #expect(present >= inserted + ackedRows, "round \(round): \(present - inserted) present, \(ackedRows) acknowledged")
            #expect(!r.contains(UInt64(1000 + present)) && !r.contains(UInt64(1001 + present)), "round \(round): a gap")
            if present > 0 {
                let hit = try r.search(Self.row(all, 1000 + present - 1), k: 1, parameters: Self.everything)[0]
                #expect(hit.label == UInt64(1000 + present - 1) && hit.distance < 1e-4)
            }
            inserted = present
            r.close()
            #expect(IndexVerifier.verify(directory: dir.file("idx")).isEmpty, "round \(round)")
        }
    }
}

/// A locked counter shared by test threads.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value - 1 }
    func peek() -> Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// The update log under the build fault tests' injector (FathomTestSupport's FaultInjector).
extension BuildFaultTests {
    @Test func aFullDiskFailsTheFlushAndLosesNothingAcknowledged() throws {
        let dir = TempDir()
        let (all, _) = try UpdateTests.build(dir)
        let w = try MutableVectorIndex.open(at: dir.file("idx"))
        for i in 1600..<1610 { try w.insert(label: UInt64(i), vector: UpdateTests.row(all, i)) }
        try w.flush()
        for i in 1610..<1620 { try w.insert(label: UInt64(i), vector: UpdateTests.row(all, i)) }
        let log = dir.file("idx/updates.wal")
        for fault in [FaultInjector.Fault.enospc, .shortWrite] {
            let injector = FaultInjector(pathPrefix: log, failAt: 1, fault: fault)
            do { try injector.inject { try w.flush() }; Issue.record("flush succeeded on a full disk") }
            catch let e as FathomError { #expect(e.code == (fault == .enospc ? .diskFull : .io) && e.path == log, "\(e)") }
            // Searches keep the last snapshot; the log holds exactly the acknowledged records.
            #expect(w.count == 1610)
            #expect(try LogFile(path: log, create: false).size == w.durableLogBytes)
        }
        try w.flush()   // space again: the pending group is retried
        #expect(w.count == 1620)
        w.close()
        let r = try MutableVectorIndex.open(at: dir.file("idx"))
        #expect(r.replayedRecords == 20 && r.tornBytes == 0 && r.count == 1620)
    }
}

/// `fathom insert` / `delete` / `search --output` on bad and good input.
@Suite struct UpdateCLITests {
    @Test func insertDeleteAndTheirBadInput() throws {
        let dir = TempDir()
        let (all, _) = try UpdateTests.build(dir)
        try UpdateTests.write(all, 1600..<1700, to: dir.file("new.fbin"))
        // Wrong dimension: names the input file.
        _ = try writeSynthetic(dir: dir, n: 10, d: 8, base: "d8.fbin")
        var r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("d8.fbin"), "--quiet"])
        #expect(r.status == 6 && r.stderr.contains(dir.file("d8.fbin")) && r.stderr.contains("dimension 8"), "\(r.stderr)")
        // NaN in row 30 of a batch: names the file, the row and the byte offset; earlier batches stay.
        let bad = Matrix(rows: 100, cols: 16)
        bad.data.update(from: all.row(1800), count: 100 * 16)   // other vectors than new.fbin
        bad.row(30)[4] = .nan
        try UpdateTests.write(bad, 0..<100, to: dir.file("nan.fbin"))
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("nan.fbin"), "--batch", "20", "--quiet"])
        #expect(r.status == 7 && r.stderr.contains("row 30") && r.stderr.contains("at byte \(8 + 30 * 64 + 16)"), "\(r.stderr)")
        // The first batch (rows 0-19) was acknowledged: it is there, labels 1600…
        r = try runFathom(["delete", "--index", dir.file("idx"), "--labels", try labels(dir, "a.txt", [1619, 1620]), "--quiet"])
        #expect(r.status == 0 && r.stdout.contains("deleted 1 vectors"), "\(r.stdout) \(r.stderr)")
        // Duplicate label: refused naming the labels file; --upsert replaces.
        let l = try labels(dir, "l.txt", Array(5..<105))
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("new.fbin"), "--labels", l, "--quiet"])
        #expect(r.status == 2 && r.stderr.contains("label 5 is already in the index") && r.stderr.contains(l), "\(r.stderr)")
        r = try runFathom(["insert", "--index", dir.file("idx"), "--input", dir.file("new.fbin"), "--labels", l, "--upsert", "--json", "--quiet"])
        #expect(r.status == 0 && r.stdout.contains("\"inserted\":100"), "\(r.stderr)")
        // Unknown labels on delete: reported, not fatal.
        r = try runFathom(["delete", "--index", dir.file("idx"), "--labels", try labels(dir, "u.txt", [1, 123_456_789])])
        #expect(r.status == 0 && r.stderr.contains("1 label(s) not in the index") && r.stderr.contains("123456789"), "\(r.stderr)")
        // search --output writes labels: the upserted vectors come back under labels 5…104.
        r = try runFathom(["search", "--index", dir.file("idx"), "--queries", dir.file("new.fbin"), "-k", "1", "--probes", "64",
                           "--threads", "1", "--output", dir.file("res.ibin"), "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let res = try GroundTruth.read(path: dir.file("res.ibin"))
        let top = (0..<100).map { res.neighbors(of: $0).first! }
        #expect(top == (5..<105).map { Int32($0) })
        r = try runFathom(["verify", dir.file("idx"), "--quiet"])
        #expect(r.status == 0, "\(r.stdout)")
    }

    func labels(_ dir: TempDir, _ name: String, _ ls: [Int]) throws -> String {
        try ls.map(String.init).joined(separator: "\n").write(toFile: dir.file(name), atomically: true, encoding: .utf8)
        return dir.file(name)
    }
}

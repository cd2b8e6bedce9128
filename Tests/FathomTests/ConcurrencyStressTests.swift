import FathomTestSupport
import Foundation
import Testing
@testable import Fathom
import FathomCore
import FathomMath
import FathomStorage

/// Concurrency stress (issue "Reliability", item 6): one shared `VectorIndex` searched by 32
/// threads at once while other threads keep opening and dropping other instances of the same
/// directory and of a second index. Every concurrent result must equal the single-threaded
/// result of the same query (ids and distances, bit for bit). Run it under ThreadSanitizer with
/// `tools/tsan`. Bounded to a few seconds in debug; FATHOM_STRESS_QUERIES sets the queries per
/// search thread (default 200).
@Suite struct ConcurrencyStressTests {
    /// Thread-safe collector of the first problems seen.
    final class Problems: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [String] = []
        private(set) var searched = 0
        func add(_ s: String) { lock.lock(); if list.count < 10 { list.append(s) }; lock.unlock() }
        func count(_ n: Int) { lock.lock(); searched += n; lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return list }
        var total: Int { lock.lock(); defer { lock.unlock() }; return searched }
    }

    /// Runs `body(i)` for i in 0..<n on n dedicated threads, all started together; returns
    /// when every one has finished.
    static func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let done = DispatchGroup()
        let start = DispatchSemaphore(value: 0)
        for i in 0..<n {
            done.enter()
            let t = Thread {
                start.wait()
                body(i)
                done.leave()
            }
            t.stackSize = 1 << 20
            t.start()
        }
        for _ in 0..<n { start.signal() }
        done.wait()
    }

    @Test func searchersAgreeWithASingleThreadWhileInstancesOpenAndClose() throws {
        let dir = TempDir("fathom-stress")
        let nq = 400, k = 10
        let (_, queries) = try writeSynthetic(dir: dir, n: 2000, d: 16, nq: nq)
        var o = BuildOptions(); o.codec = .none
        o.memoryBudget = 512 << 20; o.headRatio = 0.05; o.postingPages = 2
        try IndexBuilder(input: dir.file("base.fbin"), output: dir.file("idx"), options: o).build()
        try writeSynthetic(dir: dir, n: 1000, d: 16, seed: 99, base: "other.fbin")
        o.seed = 5
        try IndexBuilder(input: dir.file("other.fbin"), output: dir.file("other"), options: o).build()

        let index = try VectorIndex.open(at: dir.file("idx"))
        let params = SearchParameters(probes: 8)
        // The reference: every query once, on this thread.
        var expected = [[Neighbor]]()
        for i in 0..<nq {
            expected.append(try index.search(UnsafeBufferPointer(start: queries.row(i), count: 16), k: k, parameters: params))
        }
        let reference = expected
        let perThread = ProcessInfo.processInfo.environment["FATHOM_STRESS_QUERIES"].flatMap { Int($0) } ?? 200
        let searchers = 32, openers = 4
        let problems = Problems()
        let searchersDone = SharedCounter()
        let idxPath = dir.file("idx"), otherPath = dir.file("other")
        let expectedCount = index.count
        let started = Date()
        let openedBox = OpenCounts(openers)
        // Queries each search thread runs (batch threads: a contiguous slice).
        let planned = (0..<searchers).map { t in t % 4 == 3 ? min(perThread, nq - (t * 37) % nq) : perThread }

        Self.onThreads(searchers + openers) { t in
            if t < searchers {
                // Searchers: queries in a thread-specific order; every 4th thread uses the batch API.
                var n = 0
                if t % 4 == 3 {
                    let first = (t * 37) % nq
                    let count = planned[t]
                    let buf = UnsafeBufferPointer(start: UnsafePointer(queries.row(first)), count: count * 16)
                    let got = index.search(batch: buf, count: count, k: k, parameters: params, threads: 2)
                    for (j, r) in got.enumerated() {
                        switch r {
                        case .success(let hits) where hits == reference[first + j]: break
                        case .success(let hits): problems.add("thread \(t) batch query \(first + j): \(hits.map(\.id)) != \(reference[first + j].map(\.id))")
                        case .failure(let e): problems.add("thread \(t) batch query \(first + j) failed: \(e)")
                        }
                    }
                    n = count
                } else {
                    for j in 0..<perThread {
                        let q = (t * 37 + j * (t % 2 == 0 ? 1 : nq - 1)) % nq
                        do {
                            let hits = try index.search(UnsafeBufferPointer(start: queries.row(q), count: 16), k: k, parameters: params)
                            if hits != reference[q] {
                                problems.add("thread \(t) query \(q): \(hits.map(\.id)) != \(reference[q].map(\.id))")
                            }
                        } catch {
                            problems.add("thread \(t) query \(q) failed: \(error)")
                        }
                        n += 1
                    }
                }
                problems.count(n)
                _ = searchersDone.next()
            } else {
                // Openers: open and drop instances of both indexes until the searchers are done
                // (at least 5 rounds each).
                let o = t - searchers
                var rounds = 0
                while rounds < 5 || (searchersDone.value < searchers && Date().timeIntervalSince(started) < 120) {
                    do {
                        let a = try VectorIndex.open(at: idxPath, warn: { _ in })
                        let b = try VectorIndex.open(at: otherPath, warn: { _ in })
                        if a.count != expectedCount || b.count != 1000 || a.headCount != index.headCount {
                            problems.add("opener \(o): instance sizes \(a.count)/\(b.count)")
                        }
                    } catch {
                        problems.add("opener \(o) round \(rounds): open failed: \(error)")
                    }
                    rounds += 1
                }
                openedBox.set(o, rounds)
            }
        }
        let opened = (0..<openers).map { openedBox.get($0) }
        let seconds = Date().timeIntervalSince(started)
        print("ConcurrencyStress: \(problems.total) queries on \(searchers) threads, \(opened.reduce(0, +) * 2) opens on \(openers) threads in \(String(format: "%.1f", seconds)) s")
        #expect(problems.all.isEmpty, "\(problems.all.joined(separator: "\n"))")
        #expect(problems.total == planned.reduce(0, +))
        // The shared index still answers like before.
        for i in stride(from: 0, to: nq, by: 41) {
            #expect(try index.search(UnsafeBufferPointer(start: queries.row(i), count: 16), k: k, parameters: params) == reference[i])
        }
    }

    /// A counter shared by threads.
    final class SharedCounter: @unchecked Sendable {
        private let lock = NSLock()
        private var v = 0
        func next() -> Int { lock.lock(); defer { lock.unlock() }; v += 1; return v }
        var value: Int { lock.lock(); defer { lock.unlock() }; return v }
    }

    final class OpenCounts: @unchecked Sendable {
        private let lock = NSLock()
        private var v: [Int]
        init(_ n: Int) { v = [Int](repeating: 0, count: n) }
        func set(_ i: Int, _ x: Int) { lock.lock(); v[i] = x; lock.unlock() }
        func get(_ i: Int) -> Int { lock.lock(); defer { lock.unlock() }; return v[i] }
    }
}

import FathomCore
import FathomStorage
import Foundation

/// Batch search with several queries in flight on each thread (like PipeANN overlapping a
/// query's IO with its compute, but across queries): every thread owns one
/// ``AsyncIOEngine`` and `window` searchers; while some queries wait for their reads, the
/// thread scores the postings that arrived for others. A query still makes the same reads
/// in the same ≤ 2 round trips as alone; the device just sees them at a deeper queue.
///
/// Used by ``VectorIndex/search(batch:count:k:parameters:threads:window:)`` for plain
/// queries on the libaio engine; other engines and filtered queries run one query at a
/// time per thread.
struct SearchPipeline {
    let index: VectorIndex
    let window: Int

    /// Answers queries `next()` hands out (until it returns nil): `started(i)` when query
    /// `i` begins, `out(i, result, stats)` when it ends. Runs on the calling thread; throws
    /// only if the thread's IO context cannot be made or reaped.
    func run(queries: UnsafePointer<Float>, k: Int, parameters p: SearchParameters,
             next: () -> Int?, started: (Int) -> Void = { _ in },
             out: (Int, Result<[Neighbor], FathomError>, QueryStats) -> Void) throws {
        let d = index.dimension
        // A query's phase submits at most `probes` posting requests (coalescing only merges)
        // or its re-rank depth of vector requests: room for every slot's largest phase.
        let perQuery = max(p.probes, p.rerank ?? index.defaultRerank(k: k), 1)
        let engine = try AIOEngine(depth: max(64, window * perQuery))
        let searchers = try (0..<window).map { _ in try Searcher(index: index, engine: engine) }
        var query = [Int](repeating: -1, count: window)   // the query each slot answers, -1: free
        var done = [Int]()
        let result = UnsafeMutablePointer<Neighbor>.allocate(capacity: k)
        defer { result.deallocate() }
        var exhausted = false

        func finish(_ slot: Int) {
            let n = searchers[slot].finish(k: k, into: result)
            out(query[slot], .success(Array(UnsafeBufferPointer(start: result, count: n))), searchers[slot].stats)
            query[slot] = -1
        }
        func fail(_ slot: Int, _ e: Error) {
            out(query[slot], .failure(e as? FathomError ?? FathomError(.io, "\(e)")), searchers[slot].stats)
            query[slot] = -1
        }
        /// Submits the slot's staged reads, or moves it on when it has none.
        func drive(_ slot: Int, _ staged: UnsafeBufferPointer<ReadRequest>?) {
            var rq = staged
            do {
                while let r = rq, r.isEmpty { rq = try searchers[slot].advance() }
                guard let r = rq else { finish(slot); return }
                try engine.submit(r, tag: UInt64(slot) << 32, path: index.path)
            } catch { fail(slot, error) }
        }

        while true {
            // Fill free slots with new queries.
            for slot in 0..<window where query[slot] < 0 && !exhausted {
                guard let i = next() else { exhausted = true; break }
                query[slot] = i
                started(i)
                do {
                    let staged = try searchers[slot].start(UnsafeBufferPointer(start: queries + i * d, count: d), k: k, parameters: p)
                    drive(slot, staged)
                } catch { fail(slot, error) }
            }
            if engine.inFlight == 0 {
                if exhausted { break }
                continue
            }
            // Wait for at least one read; route each completion to its query.
            done.removeAll(keepingCapacity: true)
            try engine.reap(min: 1) { tag, res in
                let slot = Int(tag >> 32)
                searchers[slot].complete(Int(tag & 0xffff_ffff), res)
                if searchers[slot].pending == 0 { done.append(slot) }
            }
            for slot in done {
                do { drive(slot, try searchers[slot].advance()) } catch { fail(slot, error) }
            }
        }
    }
}

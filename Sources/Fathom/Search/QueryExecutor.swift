import FathomCore
import FathomStorage

/// The one query executor: runs queries, each a ``Searcher`` stepping through its plan
/// (stage → deliver → advance), with up to `window` of them in flight on one thread's
/// ``IOEngine``. While some queries wait for their reads, the thread scores the postings that
/// arrived for others (like PipeANN overlapping a query's IO with its compute, but across
/// queries). A query makes the same reads in the same round trips whatever the window; the
/// device just sees them at a deeper queue.
///
/// Window 1 is the synchronous query (``Searcher/search(_:k:parameters:filter:)``); batches
/// (``VectorIndex/search(batch:count:k:parameters:filters:threads:window:)``) keep several
/// queries in flight per thread. Plain, filtered and mutable-index queries all run here.
///
/// Thread safety: one run per thread; the engine and the searchers belong to that run.
enum QueryExecutor {
    /// One query to answer: its caller's number, its vector and its filter.
    struct Query {
        var id: Int
        var vector: UnsafeBufferPointer<Float>
        var filter: PreparedFilter?
        /// Postings to read instead of routing (a shard's part of a routed query).
        var postings: [UInt32]? = nil
    }

    /// Answers the queries `next()` hands out (until it returns nil), up to `window` at a
    /// time on `engine`, slot `i`'s queries on `searcher(i)`. Calls `started(id)` when a query
    /// begins and `out(id, searcher, error)` when it ends: with no error the answer is in the
    /// searcher (``Searcher/finish(into:)``, ``Searcher/stats``). A query's own failure (a bad
    /// argument, a failed read, a checksum mismatch, its ``SearchParameters/deadline``) ends
    /// only that query. Throws when the
    /// engine itself fails (its completions cannot be reaped), after ending every query in
    /// flight with that error.
    static func run(engine: IOEngine, window: Int, searcher: (Int) -> Searcher,
                    next: () -> Query?, k: Int, parameters p: SearchParameters,
                    started: (Int) -> Void = { _ in },
                    out: (Int, Searcher, Error?) -> Void) throws {
        try withUnsafeTemporaryAllocation(of: Int.self, capacity: window) { slots in
            slots.initialize(repeating: -1)   // the query each slot answers, -1: free
            var active = 0
            var exhausted = false

            func end(_ slot: Int, _ error: Error?) {
                out(slots[slot], searcher(slot), error)
                slots[slot] = -1
                active -= 1
            }
            /// Moves the slot's query on: through every phase that is complete (staging the
            /// next), then submits what the engine has room for.
            func drive(_ slot: Int) {
                let s = searcher(slot)
                do {
                    while true {
                        // Past its deadline a query submits no more reads; it ends once none of
                        // its reads is in flight (their buffers are its own).
                        if s.pending == 0, let d = p.deadline, d.hasPassed {
                            end(slot, FathomError(.cancelled, "the query passed its deadline; stopped before its next round of reads"))
                            return
                        }
                        guard s.phaseDone else { break }
                        if try !s.advance() { end(slot, nil); return }
                    }
                    if s.waitingToSubmit { try s.submit(slot: slot) }
                } catch { end(slot, error) }
            }

            while true {
                // Fill free slots with new queries.
                if !exhausted {
                    for slot in 0..<window where slots[slot] < 0 {
                        guard let q = next() else { exhausted = true; break }
                        slots[slot] = q.id
                        active += 1
                        started(q.id)
                        do { try searcher(slot).start(q.vector, k: k, parameters: p, filter: q.filter, postings: q.postings) } catch { end(slot, error); continue }
                        drive(slot)
                    }
                }
                if active == 0 {
                    if exhausted { return }
                    continue
                }
                precondition(engine.inFlight > 0, "queries in flight with no read submitted")
                // Wait for at least one read; route each completion to its query.
                do {
                    try engine.reap(min: 1) { tag, result in
                        searcher(Int(tag >> 32)).complete(Int(tag & 0xffff_ffff), result)
                    }
                } catch {
                    for slot in 0..<window where slots[slot] >= 0 { end(slot, error) }
                    throw error
                }
                for slot in 0..<window where slots[slot] >= 0 {
                    let s = searcher(slot)
                    if s.phaseDone || s.waitingToSubmit { drive(slot) }
                }
            }
        }
    }
}

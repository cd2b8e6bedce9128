import FathomCore
import Foundation

// The pipelined executor as a package API, for tools that time each query themselves
// (FathomTools' SearchBenchmark): the same ``SearchPipeline`` that
// ``VectorIndex/search(batch:count:k:parameters:threads:window:)`` runs, with a callback when
// each query starts and one with its result and ``QueryStats`` when it ends.
extension VectorIndex {
    /// Whether ``runPipelined(window:queries:k:parameters:next:started:out:)`` can run on this
    /// index: plain queries on the libaio engine (not an injected engine).
    package var supportsPipelinedSearch: Bool { canPipeline }

    /// Answers the queries `next()` hands out (row `i` of `queries`, `dimension` floats each)
    /// until it returns nil, keeping up to `window` of them in flight on the calling thread:
    /// `started(i)` when query `i` begins, `out(i, result, stats)` when it ends.
    ///
    /// Thread safety: any number of threads may call it at once (each call owns its IO
    /// context and searchers; the index is shared read-only); the callbacks run on the
    /// calling thread. Throws only if the thread's IO context cannot be made or reaped.
    package func runPipelined(window: Int, queries: UnsafePointer<Float>, k: Int, parameters: SearchParameters,
                              next: () -> Int?, started: (Int) -> Void,
                              out: (Int, Result<[Neighbor], FathomError>, QueryStats) -> Void) throws {
        try SearchPipeline(index: self, window: window).run(queries: queries, k: k, parameters: parameters,
                                                            next: next, started: started, out: out)
    }
}

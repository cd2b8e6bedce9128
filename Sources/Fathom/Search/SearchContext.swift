import FathomCore
import FathomStorage

/// What a ``Searcher`` searches: the immutable parts of one index version (router, stores,
/// codec, attributes, labels, tombstones) and how to make a per-thread scorer.
///
/// A searcher holds its context, never the ``VectorIndex``: the index owns its pool of
/// searchers, the searchers own nothing of the index but this, so there is no reference
/// cycle and an index (or a superseded snapshot of a ``MutableVectorIndex``) is freed, with
/// its pool, when its last user lets go of it.
///
/// Thread safety: immutable after init and shared by every searcher of the version.
final class SearchContext: @unchecked Sendable {
    // Invariant: every property is immutable after init.
    let path: String
    let metric: Metric
    let dimension: Int
    /// Ids of this version (base rows plus inserted rows, deleted ones included).
    let count: Int
    let router: any HeadRouter
    let postingStore: PostingStore
    let vectorStore: VectorStore
    let attributes: AttributeStore?
    let tombstones: Tombstones
    let labels: LabelMap
    /// Most records a posting was built to hold (sizes the score buffer).
    let postingCapacity: Int
    /// A scorer for the postings' codec (one per searcher).
    let makeScorer: @Sendable () -> QueryScorer
    /// Candidates re-ranked when ``SearchParameters/rerank`` is nil (``VectorIndex/defaultRerank(k:)``).
    let defaultRerank: @Sendable (Int) -> Int

    init(path: String, metric: Metric, dimension: Int, count: Int, router: any HeadRouter,
         postingStore: PostingStore, vectorStore: VectorStore, attributes: AttributeStore?,
         tombstones: Tombstones, labels: LabelMap, postingCapacity: Int,
         makeScorer: @escaping @Sendable () -> QueryScorer, defaultRerank: @escaping @Sendable (Int) -> Int) {
        self.path = path; self.metric = metric; self.dimension = dimension; self.count = count
        self.router = router; self.postingStore = postingStore; self.vectorStore = vectorStore
        self.attributes = attributes; self.tombstones = tombstones; self.labels = labels
        self.postingCapacity = postingCapacity; self.makeScorer = makeScorer; self.defaultRerank = defaultRerank
    }

    var headCount: Int { router.graph.count }
}

import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// A search result: the vector's id (its row in the input file) and its distance.
///
/// `distance` is always "smaller is nearer": squared L2 for `.l2`, `−⟨q,x⟩` for `.ip`,
/// and `1 − cos(q,x)` for `.cosine`.
public struct Neighbor: Sendable, Hashable, Codable {
    /// Internal id: the row in the index (dense; changes when a checkpoint rebuilds the index).
    public var id: UInt32
    public var distance: Float
    /// External label (``BuildOptions/labels`` at build, or given at insert; by default the row number).
    public var label: UInt64
    public init(id: UInt32, distance: Float, label: UInt64? = nil) {
        self.id = id; self.distance = distance; self.label = label ?? UInt64(id)
    }
}

/// An instant of the monotonic clock (`DispatchTime`'s uptime) when a search's caller stops
/// waiting (``SearchParameters/deadline``). A value type, `Sendable`.
public struct SearchDeadline: Sendable, Hashable, Codable {
    /// `DispatchTime.uptimeNanoseconds` of the instant.
    public var uptimeNanoseconds: UInt64
    public init(_ t: DispatchTime) { uptimeNanoseconds = t.uptimeNanoseconds }
    /// `interval` from now.
    public static func after(_ interval: DispatchTimeInterval) -> SearchDeadline { SearchDeadline(.now() + interval) }
    /// Whether the instant has passed.
    public var hasPassed: Bool { DispatchTime.now().uptimeNanoseconds >= uptimeNanoseconds }
}

/// Per-call search settings (like FAISS's `SearchParametersIVF`): they never change the index.
public struct SearchParameters: Sendable, Hashable, Codable {
    /// Most postings read per query (SPANN's SearchInternalResultNum after pruning).
    public var probes: Int = 32
    /// Query-aware pruning: read posting i only if d(q,hᵢ) ≤ `maxDistRatio` · d(q,h₁)
    /// (squared distances; SPTAG's MaxDistRatio, 8 in the paper's configs).
    public var maxDistRatio: Float = 8
    /// Beam width of the head-graph search (≥ probes; `nil`: max(2·probes, 64)).
    public var headListSize: Int? = nil
    /// Check each posting's CRC32C, and each vectors.dat page's (indexes with vectors.crc),
    /// after it is read: a corrupt posting or page then fails the query instead of returning
    /// wrong neighbours.
    public var verifyChecksums: Bool = true
    /// Compressed indexes: candidates kept from the compact codes and re-ranked with their
    /// full-precision vectors read from disk (`nil`: the codec's default, ``VectorIndex/defaultRerank(k:)``).
    public var rerank: Int? = nil
    /// When the caller stops waiting (nil: never). A query still running then stops before
    /// its next round of reads (reads already submitted complete first: their buffers are the
    /// query's) and fails with ``FathomError/Code/cancelled``; a query not yet started fails
    /// at once. Checked once per round of reads, never per record.
    public var deadline: SearchDeadline? = nil

    public init(probes: Int = 32, maxDistRatio: Float = 8, headListSize: Int? = nil, verifyChecksums: Bool = true,
                rerank: Int? = nil, deadline: SearchDeadline? = nil) {
        self.probes = probes; self.maxDistRatio = maxDistRatio
        self.headListSize = headListSize; self.verifyChecksums = verifyChecksums; self.rerank = rerank
        self.deadline = deadline
    }
}

/// Counters of one query, for reports.
public struct QueryStats: Sendable {
    /// Postings scored.
    public var postingsRead = 0
    /// Bytes read from disk (postings and vectors), whole 4 KiB pages.
    public var bytesRead = 0
    /// IO requests submitted (after coalescing neighbouring pages).
    public var ioRequests = 0
    /// Dependent IO round trips (batches handed to the IO engine; each waits for the last).
    public var roundTrips = 0
    /// 4 KiB pages read.
    public var pagesRead: Int { bytesRead / 4096 }
    public var candidatesScored = 0
    /// Full-precision vectors read for re-ranking (compressed indexes, exact filtered path).
    public var vectorsReranked = 0
    /// Filtered queries: postings skipped because their attribute summary cannot match.
    public var postingsSkipped = 0
    /// Filtered queries: the estimated selectivity of the filter.
    public var selectivity: Double? = nil
    /// Filtered queries: whether the exact path (enumerate matches) answered.
    public var exactPath = false
    /// Filtered queries: the planner's choice and the figures it chose by (FilteredSearch.swift).
    public var filterPlan: FilterPlan? = nil

    mutating func add(_ c: IOCounts, postings: Bool) {
        ioRequests += c.requests; bytesRead += c.bytes; roundTrips += c.roundTrips
        if postings { postingsRead += c.items } else { vectorsReranked += c.items }
    }
}

/// How ``VectorIndex`` reads postings from disk.
public enum IOMode: Sendable, Equatable {
    /// libaio with O_DIRECT; falls back to `.pread` with a warning where O_DIRECT is refused.
    case auto
    /// libaio with O_DIRECT, failing if unavailable.
    case aio
    /// Synchronous preads through the page cache.
    case pread
}

/// An open Fathom index: heads, head graph and posting table in RAM; postings and vectors
/// read from disk with O_DIRECT.
///
/// Immutable after `open` and safe to share across threads: each call borrows a
/// ``Searcher`` (its own IO context and scratch) from an internal pool.
///
/// OpenBLAS threads are the process owner's to set: per-query BLAS calls (the LeanVec
/// projection) are tiny, and OpenBLAS's worker threads would only spin beside the search
/// threads, so a process that searches should call `BLAS.setThreads(1)` once at start (the
/// CLI and the server do).
///
/// ```swift
/// let index = try VectorIndex.open(at: "myindex")
/// let hits = try index.search(query, k: 10)                 // [Neighbor]
/// let all = index.search(batch: queries, count: nq, k: 10, threads: 2)
/// ```
public final class VectorIndex: @unchecked Sendable {
    // Invariant: every stored property is immutable after init except `pool`, which is
    // guarded by `poolLock`.
    public let path: String
    public let manifest: Manifest
    public let metric: Metric
    public let dimension: Int
    public let elementType: ElementType
    /// What is searched: the heads (in the form ``codec`` serves them) and their graph.
    let router: any HeadRouter
    var graph: HeadGraph { router.graph }
    let table: [PostingEntry]
    /// Where posting lists live.
    let postingStore: PostingStore
    /// Where full-precision vectors live (the re-rank tier).
    let vectorStore: VectorStore
    /// How posting records are coded (flat full-precision rows, or LeanVec + LVQ codes).
    let codec: any RecordCodec
    /// Attributes and per-posting summaries (indexes built with ``BuildOptions/attributes``).
    let attributes: AttributeStore?
    public let ioMode: IOMode
    /// The engine actually used ("libaio" or "pread").
    public let ioEngineName: String
    /// Makes an IO engine with room for at least the given number of reads in flight (a
    /// custom engine keeps its own depth).
    let engineFactory: @Sendable (Int) throws -> IOEngine
    /// What the searchers search (this version's router, stores, codec, labels, tombstones).
    /// Searchers hold it, not the index: no reference cycle through the pool.
    private(set) var context: SearchContext! = nil
    private let poolLock = NSLock()
    private var pool: [Searcher] = []
    /// Id → external label.
    public let labels: LabelMap
    /// Deleted ids (all clear for an index without updates).
    let tombstones: Tombstones

    /// Number of ids (rows) in this version: the base rows plus inserted rows, deleted ones included.
    public let count: Int
    /// Number of live (not deleted) vectors.
    public var liveCount: Int { count - tombstones.deleted }
    /// Queries a batch search keeps in flight per thread by default.
    public static let defaultWindow = 4
    /// IO depth of a pooled searcher's engine.
    static let searcherDepth = 256
    /// Whether the postings are held in RAM (``open(at:io:engine:serveMemory:warn:)``).
    public var postingsResident: Bool { postingStore is ResidentPostingStore }
    /// Number of heads (postings).
    public var headCount: Int { graph.count }

    /// Opens the index directory at `path`: checks the manifest (format version, metric,
    /// element type, file sizes), loads heads, graph and posting table into RAM and opens
    /// postings.dat for direct reads.
    ///
    /// - Parameters:
    ///   - io: how postings are read (default: libaio + O_DIRECT, pread where refused).
    ///   - engine: a custom engine factory (tests inject faults with it); overrides `io`.
    ///   - serveMemory: RAM the open index may hold, in bytes (nil: the minimum: heads, graph,
    ///     table, codec). When the postings also fit (beside the search scratch of the
    ///     machine's threads), they are loaded into RAM (``ResidentPostingStore``) and a query
    ///     reads only its re-rank vectors from disk.
    public static func open(at path: String, io: IOMode = .auto,
                            engine: (@Sendable () throws -> IOEngine)? = nil,
                            serveMemory: UInt64? = nil,
                            warn: (String) -> Void = { FileHandle.standardError.write(("warning: " + $0 + "\n").data(using: .utf8)!) }) throws -> VectorIndex {
        try VectorIndex(path: path, io: io, engine: engine, serveMemory: serveMemory, warn: warn)
    }

    init(path: String, io: IOMode, engine: (@Sendable () throws -> IOEngine)?, serveMemory: UInt64?, warn: (String) -> Void) throws {
        self.path = path
        let m = try Manifest.load(directory: path)
        try m.checkFileSizes(directory: path)
        try m.checkResidentFiles(directory: path)
        manifest = m
        count = m.count
        tombstones = Tombstones(capacity: m.count)
        labels = LabelMap(base: m.files.contains { $0.name == LabelsFile.name }
                            ? try LabelsFile.read(path: path + "/" + LabelsFile.name, count: m.count) : nil,
                          baseCount: m.count)
        metric = m.metric
        dimension = m.dimension
        elementType = m.element_type
        let layout = IndexLayout(directory: path)
        let (heads, _) = try layout.readHeads()
        guard heads.cols == m.dimension, heads.rows == m.heads else {
            throw FathomError(.corruptIndex, "heads.bin holds \(heads.rows) × \(heads.cols), manifest says \(m.heads) × \(m.dimension)", path: layout.headsPath)
        }
        let graph = try layout.readGraph(heads: heads)
        // The codec the manifest names; postings.dat's header and record size must agree with it.
        let plain = try RandomAccessFile(path: layout.postingsPath)
        let ph = try plain.readHeader(magic: IndexLayout.postingsMagic)
        let codec = try RecordCodecs.open(manifest: m, layout: layout)
        try codec.checkPostings(ph, manifest: m, path: layout.postingsPath)
        self.codec = codec
        router = try codec.makeRouter(graph: graph, routerDimension: m.router_dimension)
        if m.attributes != nil {
            let (t, q) = try AttributeStore.readAttributes(path: path + "/" + AttributeStore.attrsFile)
            guard t.count == m.count else {
                throw FathomError(.corruptIndex, "attrs.bin has \(t.count) rows for \(m.count) vectors", path: path + "/" + AttributeStore.attrsFile)
            }
            attributes = AttributeStore(table: t, quantized: q,
                                        summaries: try AttributeStore.readSummaries(path: path + "/" + AttributeStore.summariesFile, heads: m.heads))
        } else {
            attributes = nil
        }
        let plainVectors = try RandomAccessFile(path: layout.vectorsPath)
        let vh = try plainVectors.readHeader(magic: IndexLayout.vectorsMagic)
        let vectorPlacement = IndexLayout.VectorPlacement(rowBytes: m.dimension * m.element_type.size)
        // A shard holds only its members' rows (rows.bin maps ids to them).
        let shardRows = try m.shard.map { try ShardRows.read(path: path + "/" + ShardRows.fileName, count: m.count, members: $0.vectors) }
        let rowCount = m.shard?.vectors ?? m.count
        guard vh.count == UInt64(rowCount), Int(vh.dimension) == m.dimension, vh.payloadOffset == 4096,
              vh.aux == UInt64(vectorPlacement.rowsPerPage), vh.payloadBytes == vectorPlacement.payloadBytes(count: rowCount) else {
            throw FathomError(.corruptIndex, "vectors.dat holds \(vh.count) × \(vh.dimension) (\(vh.aux) rows per page, \(vh.payloadBytes) bytes), manifest says \(rowCount) × \(m.dimension)", path: layout.vectorsPath, offset: 16)
        }
        table = try layout.readPostingTable(postingsBytes: plain.size, recordBytes: m.record_bytes)
        guard table.count == m.heads else {
            throw FathomError(.corruptIndex, "posting table has \(table.count) entries for \(m.heads) heads", path: layout.tablePath)
        }
        // Choose the IO path.
        var file = plain
        var vfile = plainVectors
        var mode = io
        if let engine {
            engineFactory = { _ in try engine() }
            ioMode = io
            ioEngineName = try engine().name
        } else {
            if io != .pread {
                do {
                    file = try RandomAccessFile(path: layout.postingsPath, direct: true)
                    vfile = try RandomAccessFile(path: layout.vectorsPath, direct: true)
                    _ = try AIOEngine(depth: 1)
                    mode = .aio
                } catch let e as FathomError {
                    if io == .aio { throw e }
                    warn("O_DIRECT/libaio unavailable for \(layout.postingsPath) (\(e.message)); reading through the page cache with pread")
                    mode = .pread
                    file = plain
                    vfile = plainVectors
                }
            }
            ioMode = mode
            if mode == .aio {
                engineFactory = { try AIOEngine(depth: $0) }
                ioEngineName = "libaio"
            } else {
                engineFactory = { _ in PreadEngine() }
                ioEngineName = "pread"
            }
        }
        // Where postings live: in RAM when the serving budget holds them beside everything else.
        let minimum = router.headBytes + router.graphBytes + codec.servingBytes + table.count * ServingMemory.tableEntryBytes
        let scratch = 2 * (4 << 20) * ProcessInfo.processInfo.activeProcessorCount   // generous: 8 MiB per thread
        if let budget = serveMemory, UInt64(minimum) + plain.size + UInt64(scratch) <= budget {
            postingStore = try ResidentPostingStore(table: table, file: plain, path: layout.postingsPath, recordBytes: m.record_bytes)
        } else {
            if let budget = serveMemory, UInt64(minimum) > budget {
                warn("the index needs \(formatBytes(UInt64(minimum))) to serve (heads, graph, table, codec), over the \(formatBytes(budget)) asked; serving it anyway")
            }
            postingStore = DiskPostingStore(table: table, file: file, path: layout.postingsPath, recordBytes: m.record_bytes)
        }
        // Page checksums of vectors.dat, when the index has them (built since vectors.crc).
        let pageChecksums = m.files.contains { $0.name == IndexLayout.vectorChecksumsFile }
            ? try layout.readVectorChecksums(payloadPages: IndexLayout.vectorPayloadPages(fileSize: plainVectors.size)) : nil
        vectorStore = DiskVectorStore(file: engine == nil ? vfile : plainVectors, path: layout.vectorsPath,
                                      dimension: m.dimension, elementType: m.element_type, pageChecksums: pageChecksums, rows: shardRows)
        context = makeContext()
    }

    /// A version of `base` with another router (heads split or retired), other stores, more
    /// rows, labels, tombstones and attributes (inserted rows, widened summaries): a snapshot
    /// of a ``MutableVectorIndex`` (same codec and built files).
    init(deriving base: VectorIndex, attributes: AttributeStore?, router: any HeadRouter, postingStore: PostingStore, vectorStore: VectorStore,
         count: Int, labels: LabelMap, tombstones: Tombstones) {
        path = base.path; manifest = base.manifest; metric = base.metric; dimension = base.dimension
        elementType = base.elementType; self.router = router; table = base.table
        self.postingStore = postingStore; self.vectorStore = vectorStore
        codec = base.codec; self.attributes = attributes; ioMode = base.ioMode
        ioEngineName = base.ioEngineName; engineFactory = base.engineFactory
        self.count = count; self.labels = labels; self.tombstones = tombstones
        context = makeContext()
    }

    /// This version's search context (called once, at the end of init).
    private func makeContext() -> SearchContext {
        let codec = codec
        return SearchContext(path: path, metric: metric, dimension: dimension, count: count, router: router,
                             postingStore: postingStore, vectorStore: vectorStore, attributes: attributes,
                             tombstones: tombstones, labels: labels,
                             postingCapacity: manifest.parameters.posting_capacity,
                             makeScorer: { codec.makeScorer() }, defaultRerank: { codec.defaultRerank(k: $0) })
    }

    /// RAM the index holds while open to serve (heads, graph, posting table, codec), in bytes;
    /// per-thread search scratch is in ``scratchBytes``.
    public var memoryBytes: Int { servingMemory.total }

    /// RAM by part (docs/memory.md).
    public var servingMemory: ServingMemory {
        ServingMemory(heads: router.headBytes, graph: router.graphBytes, table: postingStore.residentBytes + labels.residentBytes + tombstones.residentBytes,
                      codec: codec.servingBytes, checksums: vectorStore.checksumBytes, scratch: scratchBytes, vectors: count)
    }

    /// Bytes of per-thread scratch the searchers made so far hold (IO buffers, dedup tables).
    public var scratchBytes: Int {
        poolLock.lock(); defer { poolLock.unlock() }
        return pool.reduce(0) { $0 + $1.scratchBytes }
    }

    /// Candidates re-ranked with full vectors when ``SearchParameters/rerank`` is nil, as the
    /// codec sets it: max(20, 2·k) for lvq8 and lvq4x8, max(20, 4·k) for lvq4, 0 for an
    /// uncompressed index (its scores are exact: nothing is re-ranked). Thread-safe.
    public func defaultRerank(k: Int) -> Int { codec.defaultRerank(k: k) }

    // MARK: filters

    /// Parses and binds a filter expression (`price < 100 AND tags HAS 'cat'`, docs/filters.md)
    /// against this index's attributes, ready to pass to `search(…, filter:)`.
    public func prepareFilter(_ text: String) throws -> PreparedFilter {
        guard let a = attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes to filter on", path: path, remedies: [.rebuildWithAttributes])
        }
        return prepare(try FilterParser.parse(text).bind(to: a.table.schema), text: text, store: a)
    }

    /// Binds a filter built in Swift (`.column("price") < 100 && …`).
    public func prepareFilter(_ expression: FilterExpression) throws -> PreparedFilter {
        guard let a = attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes to filter on", path: path, remedies: [.rebuildWithAttributes])
        }
        return prepare(try expression.bind(to: a.table.schema), text: "\(expression)", store: a)
    }

    func prepare(_ b: BoundFilter, text: String, store a: AttributeStore) -> PreparedFilter {
        PreparedFilter(bound: b, store: a, heads: graph.count, postingCount: { postingStore.count(of: $0) }, text: text)
    }

    /// Whether vector `id` matches `filter` (exact, on its raw attributes).
    public func matches(_ filter: PreparedFilter, id: UInt32) -> Bool {
        guard let a = attributes else { return false }
        return filter.bound.matches(row: Int(id), table: a.table)
    }

    /// Number of vectors matching `filter` exactly (for reports and ground truth).
    public func matchingIds(_ filter: PreparedFilter) -> [UInt32] {
        guard let a = attributes else { return [] }
        // Rows inserted since the build have no codes: check every row exactly then.
        return a.table.count == a.quantized.count ? filter.bound.matchingRows(in: a.table, quantized: a.quantized)
            : filter.bound.matchingRows(in: a.table)
    }

    // MARK: searcher pool

    func borrowSearcher() throws -> Searcher {
        poolLock.lock()
        if let s = pool.popLast() { poolLock.unlock(); return s }
        poolLock.unlock()
        return Searcher(context: context, engine: try engineFactory(Self.searcherDepth))
    }

    /// Searchers idle in the pool now (each holds its own IO context); for metrics. Thread-safe.
    public var pooledSearcherCount: Int { poolLock.lock(); defer { poolLock.unlock() }; return pool.count }

    /// Takes a searcher back (one whose engine still has reads in flight, after an engine
    /// failure, is dropped).
    func returnSearcher(_ s: Searcher) {
        guard s.engine.inFlight == 0 else { return }
        poolLock.lock(); pool.append(s); poolLock.unlock()
    }

    /// Runs `body` with a searcher of its own (one per thread; reused across calls).
    public func withSearcher<T>(_ body: (Searcher) throws -> T) throws -> T {
        let s = try borrowSearcher()
        defer { returnSearcher(s) }
        return try body(s)
    }

    // MARK: search API

    /// The `k` nearest neighbours of one query (a contiguous buffer of `dimension` values).
    /// With `filter`, only vectors matching it are returned: min(k, number of matches) of them.
    public func search(_ query: UnsafeBufferPointer<Float>, k: Int,
                       parameters: SearchParameters = SearchParameters(), filter: PreparedFilter? = nil) throws -> [Neighbor] {
        try withSearcher { try $0.search(query, k: k, parameters: parameters, filter: filter) }
    }

    /// The `k` nearest neighbours of `query` (matching `filter`, if given).
    public func search(_ query: [Float], k: Int, parameters: SearchParameters = SearchParameters(),
                       filter: PreparedFilter? = nil) throws -> [Neighbor] {
        try query.withUnsafeBufferPointer { try search($0, k: k, parameters: parameters, filter: filter) }
    }

    /// Integer queries (uint8 / int8 data sets): converted to float once.
    public func search(_ query: [UInt8], k: Int, parameters: SearchParameters = SearchParameters()) throws -> [Neighbor] {
        try search(query.map { Float($0) }, k: k, parameters: parameters)
    }

    public func search(_ query: [Int8], k: Int, parameters: SearchParameters = SearchParameters()) throws -> [Neighbor] {
        try search(query.map { Float($0) }, k: k, parameters: parameters)
    }

    /// Searches `count` queries stored row-major in `queries` (`count × dimension` floats)
    /// over `threads` threads, query `i` filtered by `filters[i]` when given. Each query's
    /// failure (an IO error, a bad value) is reported in its own slot; the other queries are
    /// unaffected.
    ///
    /// Each thread keeps up to `window` queries in flight on its IO engine
    /// (``QueryExecutor``): while some wait for their reads, the thread scores others.
    /// `window: 1` answers one query at a time per thread.
    public func search(batch queries: UnsafeBufferPointer<Float>, count: Int, k: Int,
                       parameters: SearchParameters = SearchParameters(), filters: [PreparedFilter?]? = nil,
                       threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                       window: Int = VectorIndex.defaultWindow) -> [Result<[Neighbor], FathomError>] {
        var results = [Result<[Neighbor], FathomError>](repeating: .success([]), count: count)
        results.withUnsafeMutableBufferPointer { out in
            let outPtr = SendablePointer(out.baseAddress!)
            search(batch: queries, count: count, k: k, parameters: parameters, filters: filters, threads: threads,
                   window: window, completed: { i, r, _ in outPtr.p[i] = r })
        }
        return results
    }

    /// The streaming form of the batch search: calls `started(i)` when query `i` begins and
    /// `completed(i, result, stats)` when it ends, on the thread that ran it (up to `threads`
    /// threads call them concurrently, each for its own queries: the callbacks must be safe
    /// to call from several threads for distinct `i`). Returns when every query completed.
    public func search(batch queries: UnsafeBufferPointer<Float>, count: Int, k: Int,
                       parameters: SearchParameters = SearchParameters(), filters: [PreparedFilter?]? = nil,
                       threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                       window: Int = VectorIndex.defaultWindow,
                       started: @Sendable (Int) -> Void = { _ in },
                       completed: @Sendable (Int, Result<[Neighbor], FathomError>, QueryStats) -> Void) {
        precondition(queries.count >= count * dimension, "the query buffer holds fewer than count × dimension values")
        precondition(filters == nil || filters!.count >= count, "filters holds fewer than count entries")
        guard count > 0 else { return }
        let d = dimension
        let t = max(1, min(threads, count))
        let w = max(1, window)
        let next = Counter()
        let qPtr = SendablePointer(UnsafeMutablePointer(mutating: queries.baseAddress!))
        let context = context!
        // A query's phase submits at most `probes` posting requests (coalescing only merges)
        // or its re-rank depth of vector requests; filtered rounds and exact batches may
        // submit more, and wait for room.
        let perQuery = max(parameters.probes, parameters.rerank ?? defaultRerank(k: k), 1)
        DispatchQueue.concurrentPerform(iterations: t) { _ in
            func failRest(_ e: FathomError) {
                while true { let i = next.next(); if i >= count { break }; completed(i, .failure(e), QueryStats()) }
            }
            let engine: IOEngine
            do { engine = try engineFactory(max(Self.searcherDepth, w * perQuery)) } catch {
                failRest(error as? FathomError ?? FathomError(.io, "\(error)")); return
            }
            let searchers = (0..<w).map { _ in Searcher(context: context, engine: engine) }
            let result = UnsafeMutablePointer<Neighbor>.allocate(capacity: k)
            defer { result.deallocate() }
            do {
                try QueryExecutor.run(
                    engine: engine, window: w, searcher: { searchers[$0] },
                    next: {
                        let i = next.next()
                        guard i < count else { return nil }
                        return QueryExecutor.Query(id: i, vector: UnsafeBufferPointer(start: qPtr.p + i * d, count: d),
                                                   filter: filters?[i] ?? nil)
                    },
                    k: k, parameters: parameters, started: started,
                    out: { i, s, error in
                        if let error {
                            completed(i, .failure(error as? FathomError ?? FathomError(.io, "\(error)")), s.stats)
                        } else {
                            let n = s.finish(into: result)
                            completed(i, .success(Array(UnsafeBufferPointer(start: result, count: n))), s.stats)
                        }
                    })
            } catch {
                failRest(error as? FathomError ?? FathomError(.io, "\(error)"))
            }
        }
    }

    /// Async variant of the single-query search, for use from Swift concurrency.
    public func search(_ query: [Float], k: Int, parameters: SearchParameters = SearchParameters()) async throws -> [Neighbor] {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<[Neighbor], Error>) in
            DispatchQueue.global().async {
                do { c.resume(returning: try self.search(query, k: k, parameters: parameters)) }
                catch { c.resume(throwing: error) }
            }
        }
    }
}

/// A pointer that may cross threads; the code using it guarantees disjoint access.
struct SendablePointer<T>: @unchecked Sendable {
    let p: UnsafeMutablePointer<T>
    init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

/// A shared atomic-ish counter handing out work items (lock-based; uncontended here).
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; let v = value; value += 1; return v }
}

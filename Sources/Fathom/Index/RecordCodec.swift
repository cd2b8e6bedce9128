import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// What a posting record holds for a vector, and everything that depends on it: the one
/// seam between the codec and the build, the updates and the search (docs/codecs.md, "The
/// record codec seam"). A record is `{UInt32 id, code}`; the codec says what the code is.
///
/// - **encode**: the one encoding of a record's code, used by the build's assign stage
///   (whose codes pack copies into the postings) and by ``MutableVectorIndex``'s inserts;
/// - **score**: ``makeScorer()``, the per-thread ``QueryScorer`` (whole blocks per call);
/// - **route**: ``makeRouter(graph:routerDimension:)``, the ``HeadRouter`` form the heads
///   are served in;
/// - **re-rank**: ``defaultRerank(k:)``;
/// - **files**: what postings.dat's header and the manifest's `record_bytes` must say
///   (``postingsHeader(records:payloadBytes:)``, ``checkPostings(_:manifest:path:)``);
/// - **RAM**: ``servingBytes``.
///
/// Implementations: ``FlatCodec`` (full-precision float32 / uint8 / int8 records: exact
/// scores) and ``LeanVecLVQCodec`` (LeanVec projection + LVQ codes: estimates, re-ranked).
/// ``RecordCodecs`` makes the one an index or build names.
///
/// Thread safety: a codec is immutable and shared by all threads; ``encode(_:scratch:into:)``
/// writes only the caller's buffers, and the scorers and router scratches it makes belong to
/// one thread at a time.
protocol RecordCodec: Sendable {
    /// The name the manifest stores (`none`, `lvq8`, `lvq4`, `lvq4x8`; never `auto`).
    var kind: PostingCodec { get }
    /// Bytes of one record's code (the record is the u32 id and this code).
    var codeBytes: Int { get }
    /// The dimension postings.dat's header names: D for flat records, d′ for LeanVec codes.
    var recordDimension: Int { get }
    /// The element-type code of postings.dat's header: the ``IndexFileHeader/code(_:)`` of
    /// the element type for flat records, 100 + the LVQ kind code (0 lvq8, 1 lvq4, 2 lvq4x8).
    var postingsElementCode: UInt32 { get }
    /// Floats of scratch one ``encode(_:scratch:into:)`` needs (0: none).
    var encodeScratchFloats: Int { get }
    /// Whether a vector's code is its vectors.dat row (flat records): the build then writes
    /// vectors.dat from the encoded codes and pack reads the records back from it; other
    /// codecs' codes go through the build scratch file codes.tmp.
    var codesAreVectorRows: Bool { get }
    /// RAM the codec holds at query time (LeanVec matrices and mean; 0 for flat records).
    var servingBytes: Int { get }
    /// One phrase naming the codec and its shape, for messages.
    var summary: String { get }

    /// Encodes the code of the float vector `x` (the index's dimension, finite, normalized
    /// for cosine) into `code` (``codeBytes``, any alignment), using `scratch`
    /// (``encodeScratchFloats`` floats).
    func encode(_ x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, into code: UnsafeMutableRawPointer)
    /// A scorer for this codec's records (one per search thread).
    func makeScorer() -> QueryScorer
    /// The router over `graph` (which holds its float heads) in the form this codec serves
    /// heads in. `routerDimension`: the manifest's `router_dimension` (nil: the codec's default).
    /// - Throws: `.corruptIndex` for a router dimension the codec cannot route on.
    func makeRouter(graph: HeadGraph, routerDimension: Int?) throws -> any HeadRouter
    /// Candidates re-ranked with full vectors when ``SearchParameters/rerank`` is nil
    /// (0 when the scores are exact: nothing is re-ranked).
    func defaultRerank(k: Int) -> Int
}

extension RecordCodec {
    /// Bytes of one posting record: the u32 id and the code (the manifest's `record_bytes`,
    /// postings.dat's header record size).
    var recordBytes: Int { 4 + codeBytes }

    /// postings.dat's header for `records` records in `payloadBytes` bytes after the first page.
    func postingsHeader(records: Int, payloadBytes: UInt64) -> IndexFileHeader {
        IndexFileHeader(magic: IndexLayout.postingsMagic, count: UInt64(records), dimension: UInt32(recordDimension),
                        elementType: postingsElementCode, payloadOffset: 4096, payloadBytes: payloadBytes,
                        recordBytes: UInt32(recordBytes), aux: 4096)
    }

    /// Checks that postings.dat's header `h` and the manifest's `record_bytes` describe this
    /// codec's records. - Throws: `.incompatibleIndex` naming `path` (postings.dat) otherwise.
    func checkPostings(_ h: IndexFileHeader, manifest m: Manifest, path: String) throws {
        guard Int(h.dimension) == recordDimension, h.elementType == postingsElementCode,
              Int(h.recordBytes) == recordBytes, m.record_bytes == recordBytes else {
            throw FathomError(.incompatibleIndex, "postings.dat holds \(h.dimension)-d records (element code \(h.elementType)) of \(h.recordBytes) B and manifest.json says \(m.record_bytes) B; the codec \(summary) has \(recordDimension)-d records (element code \(postingsElementCode)) of \(recordBytes) B", path: path, offset: 24)
        }
    }
}

/// Full-precision records: the vector in the stored element type (float32, uint8, int8;
/// float32 for cosine), scored exactly. A record's code is the vector's vectors.dat row.
///
/// Thread safety: immutable value; see ``RecordCodec``.
struct FlatCodec: RecordCodec {
    let metric: Metric
    let elementType: ElementType
    let dimension: Int

    var kind: PostingCodec { .none }
    var codeBytes: Int { dimension * elementType.size }
    var recordDimension: Int { dimension }
    var postingsElementCode: UInt32 { IndexFileHeader.code(elementType) }
    var encodeScratchFloats: Int { 0 }
    var codesAreVectorRows: Bool { true }
    var servingBytes: Int { 0 }
    var summary: String { "none (\(elementType.rawValue), \(dimension) dims)" }

    /// Writes `x` as `elementType` components: float32 as is; uint8 / int8 rounded and
    /// clamped to the type's range (exact for values read from such a file).
    func encode(_ x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, into code: UnsafeMutableRawPointer) {
        switch elementType {
        case .float32:
            code.copyMemory(from: x, byteCount: dimension * 4)
        case .uint8:
            let c = code.assumingMemoryBound(to: UInt8.self)
            for j in 0..<dimension { c[j] = UInt8(min(max(x[j], 0), 255).rounded()) }
        case .int8:
            let c = code.assumingMemoryBound(to: Int8.self)
            for j in 0..<dimension { c[j] = Int8(min(max(x[j], -128), 127).rounded()) }
        }
    }

    func makeScorer() -> QueryScorer { FlatScorer(metric: metric, type: elementType, dimension: dimension) }

    /// Float heads. Flat records have no projection to route on, so `routerDimension` is
    /// not used.
    func makeRouter(graph: HeadGraph, routerDimension: Int?) throws -> any HeadRouter { FloatHeadRouter(graph: graph) }

    func defaultRerank(k: Int) -> Int { 0 }
}

/// LeanVec projection + LVQ codes (``CompactCodec``, codec.bin): a record's code is the LVQ
/// code of `Bᵀ(x − μ)`; scores are estimates, so the best candidates are re-ranked with
/// full vectors. Heads are served compressed (``CompressedHeadRouter``).
///
/// Thread safety: immutable value; see ``RecordCodec``.
struct LeanVecLVQCodec: RecordCodec {
    let compact: CompactCodec
    let metric: Metric

    var kind: PostingCodec {
        switch compact.lvq.kind {
        case .lvq8: return .lvq8
        case .lvq4: return .lvq4
        case .lvq4x8: return .lvq4x8
        }
    }
    var codeBytes: Int { compact.codeBytes }
    var recordDimension: Int { compact.reducedDim }
    var postingsElementCode: UInt32 { 100 + compact.kindCode }
    var encodeScratchFloats: Int { compact.reducedDim }
    var codesAreVectorRows: Bool { false }
    var servingBytes: Int { compact.servingBytes }
    var summary: String { "\(compact.lvq.kind.rawValue) (LeanVec \(compact.projection.inputDim) → \(compact.reducedDim) dims)" }

    func encode(_ x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, into code: UnsafeMutableRawPointer) {
        compact.encode(x, scratch: scratch, into: code)
    }

    func makeScorer() -> QueryScorer { LVQScorer(codec: compact, metric: metric) }

    /// Compressed heads in the first `routerDimension` components (nil: all d′, as indexes
    /// built before the field existed).
    func makeRouter(graph: HeadGraph, routerDimension: Int?) throws -> any HeadRouter {
        let r = routerDimension ?? compact.reducedDim
        guard (1...compact.reducedDim).contains(r) else {
            throw FathomError(.corruptIndex, "router dimension \(r) is not between 1 and the codec's \(compact.reducedDim) dimensions")
        }
        return CompressedHeadRouter(compressing: graph, projection: compact.projection, dimension: r)
    }

    /// max(20, 2·k) for lvq8 and lvq4x8, max(20, 4·k) for lvq4 (its coarser codes need more).
    func defaultRerank(k: Int) -> Int { max(20, k * (compact.lvq.kind == .lvq4 ? 4 : 2)) }
}

/// Makes the ``RecordCodec`` a build or an index names.
enum RecordCodecs {
    /// The codec `kind` names for `dimension`-component vectors stored as `elementType`
    /// under `metric`: ``FlatCodec`` for `.none`; otherwise ``LeanVecLVQCodec`` over the
    /// codec.bin at `codecPath`, which must hold that LVQ kind over `dimension` inputs.
    /// - Throws: `.incompatibleIndex` for `.auto` (never stored) or a codec.bin that
    ///   disagrees; what ``CompactCodec/read(from:)`` throws.
    static func load(_ kind: PostingCodec, metric: Metric, elementType: ElementType, dimension: Int,
                     codecPath: String) throws -> any RecordCodec {
        guard let lvqKind = kind.lvqKind else {
            guard kind == .none else {
                throw FathomError(.incompatibleIndex, "posting codec '\(kind.rawValue)' is resolved at build time and never stored", path: codecPath)
            }
            return FlatCodec(metric: metric, elementType: elementType, dimension: dimension)
        }
        let compact = try CompactCodec.read(from: codecPath)
        guard compact.lvq.kind == lvqKind, compact.projection.inputDim == dimension else {
            throw FathomError(.incompatibleIndex, "codec.bin holds \(compact.lvq.kind.rawValue) codes of a \(compact.projection.inputDim) → \(compact.reducedDim) projection, the manifest says \(kind.rawValue) over \(dimension) dims", path: codecPath)
        }
        return LeanVecLVQCodec(compact: compact, metric: metric)
    }

    /// The codec of the index in `layout`'s directory as its manifest `m` names it.
    /// - Throws: `.incompatibleIndex` for a codec name this Fathom does not know; see
    ///   ``load(_:metric:elementType:dimension:codecPath:)``.
    static func open(manifest m: Manifest, layout: IndexLayout) throws -> any RecordCodec {
        let name = m.codec ?? "none"
        guard let kind = PostingCodec(rawValue: name) else {
            throw FathomError(.incompatibleIndex, "unknown posting codec '\(name)' in manifest.json; this Fathom knows \(PostingCodec.allCases.map(\.rawValue))", path: layout.directory + "/manifest.json")
        }
        return try load(kind, metric: m.metric, elementType: m.element_type, dimension: m.dimension, codecPath: layout.codecPath)
    }
}

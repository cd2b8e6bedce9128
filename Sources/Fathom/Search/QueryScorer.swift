import FathomCodecs
import FathomCore
import FathomMath
import Foundation

/// How the codes of a posting are scored against one query (FAISS's `InvertedListScanner`,
/// DiskANN's `QueryComputer`): prepared once per query, then scores whole blocks of records
/// in one call, so no protocol call or allocation happens per record.
///
/// Implementations: ``FlatScorer`` (full-precision float32 / uint8 / int8 records: the
/// scores are exact distances) and ``LVQScorer`` (LeanVec projection + LVQ codes: the
/// scores are estimates, re-ranked with full vectors), made by the index's ``RecordCodec``
/// (``RecordCodec/makeScorer()``).
///
/// Thread safety: one scorer per search thread (it holds the prepared query).
public protocol QueryScorer: AnyObject {
    /// Whether scores are exact distances (then nothing is re-ranked).
    var exact: Bool { get }
    /// Prepares for `query` (`dimension` floats, normalized for cosine).
    func prepare(_ query: UnsafePointer<Float>)
    /// Scores `count` codes starting `stride` bytes apart at `codes`; smaller is nearer.
    func score(_ codes: UnsafeRawPointer, count: Int, stride: Int, into out: UnsafeMutablePointer<Float>)
}

/// Full-precision records: the query against raw float32 / uint8 / int8 rows.
final class FlatScorer: QueryScorer {
    let metric: Metric
    let type: ElementType
    let d: Int
    let query: UnsafeMutablePointer<Float>
    var exact: Bool { true }

    init(metric: Metric, type: ElementType, dimension: Int) {
        self.metric = metric; self.type = type; d = dimension
        query = .allocate(capacity: max(dimension, 1))
    }
    deinit { query.deallocate() }

    func prepare(_ q: UnsafePointer<Float>) { query.update(from: q, count: d) }

    func score(_ codes: UnsafeRawPointer, count: Int, stride: Int, into out: UnsafeMutablePointer<Float>) {
        Distance.batch(metric, type, query: query, base: codes, n: count, d: d, stride: stride, out: out)
    }
}

/// LeanVec + LVQ codes: the query is projected once (`Aᵀq`), then every code is scored
/// without decoding (docs/codecs.md). Scores rank like the true distances up to the
/// projection and quantization error, so the best candidates are re-ranked.
final class LVQScorer: QueryScorer {
    let codec: CompactCodec
    let metric: Metric
    let projected: UnsafeMutablePointer<Float>
    var prepared: LVQCodec.PreparedQuery
    var exact: Bool { false }

    init(codec: CompactCodec, metric: Metric) {
        self.codec = codec; self.metric = metric
        projected = .allocate(capacity: codec.reducedDim)
        prepared = LVQCodec.PreparedQuery(dim: codec.reducedDim)
    }
    deinit { projected.deallocate() }

    func prepare(_ q: UnsafePointer<Float>) {
        codec.projection.projectQuery(q, into: projected, metric: metric)
        prepared.update(projected)
    }

    func score(_ codes: UnsafeRawPointer, count: Int, stride: Int, into out: UnsafeMutablePointer<Float>) {
        codec.lvq.distances(prepared, codes: codes, count: count, stride: stride,
                            metric: metric == .l2 ? .l2 : .ip, out: out)
    }
}

import FathomCore
import Foundation

/// The RAM an open index holds to serve queries, by part (docs/memory.md). The same model
/// plans the build (the head count that fits a per-vector target) and reports what an open
/// index really holds (``VectorIndex/servingMemory``, ``IndexInfo``).
public struct ServingMemory: Sendable, Equatable, Codable {
    /// Heads in their serving representation (LVQ-8 codes of projected heads, or float32).
    public var heads: Int
    /// Head graph topology.
    public var graph: Int
    /// Posting table (or every posting, for a resident store).
    public var table: Int
    /// Codec parameters needed at query time (LeanVec query matrix and mean).
    public var codec: Int
    /// Page checksums of vectors.dat (4 B per 4 KiB page), checked on every re-rank read.
    public var checksums: Int
    /// Per-thread search scratch (IO buffers, dedup tables), summed over the search threads.
    public var scratch: Int
    /// Vectors served (for the per-vector figure).
    public var vectors: Int

    public init(heads: Int, graph: Int, table: Int, codec: Int, checksums: Int = 0, scratch: Int, vectors: Int) {
        self.heads = heads; self.graph = graph; self.table = table; self.codec = codec
        self.checksums = checksums; self.scratch = scratch; self.vectors = vectors
    }

    public var total: Int { heads + graph + table + codec + checksums + scratch }
    public var perVector: Double { Double(total) / Double(max(vectors, 1)) }

    /// Bytes of one posting-table entry in RAM.
    static let tableEntryBytes = MemoryLayout<PostingEntry>.stride

    /// The model: what an index of `vectors` vectors with `heads` heads will hold, with each
    /// of `threads` search threads reading `probes` postings of `meanRecords` records of
    /// `recordBytes` (its IO buffer, and 16 B of dedup table per record, plus 4 B per head of
    /// visited marks and 64 KiB for re-rank reads).
    /// - Parameters:
    ///   - dimension: D; `reduced`: the codec's d′ (nil: uncompressed, float32 heads);
    ///     `router`: the components the heads are coded in (nil: d′);
    ///     `twoMatrices`: the codec keeps a query and a data matrix (LeanVec-OOD);
    ///     `vectorPages`: pages of vectors.dat whose checksums are held (0: none).
    static func model(vectors: Int, heads: Int, dimension: Int, reduced: Int?, router: Int? = nil, twoMatrices: Bool = false,
                      degree: Int, recordBytes: Int, meanRecords: Double, probes: Int = 32, threads: Int,
                      vectorPages: Int = 0) -> ServingMemory {
        let headBytes = reduced.map { (router ?? $0) + 4 } ?? dimension * 4
        let codec = reduced.map { dimension * $0 * 4 * (twoMatrices ? 2 : 1) + dimension * 4 } ?? 0
        let perThread = probes * Int(meanRecords * Double(recordBytes + 16)) + 4 * heads + (64 << 10)
        return ServingMemory(heads: heads * headBytes, graph: heads * degree * 4, table: heads * tableEntryBytes,
                             codec: codec, checksums: 4 * vectorPages, scratch: perThread * threads, vectors: vectors)
    }

    /// One line for reports.
    public var summary: String {
        "\(formatBytes(UInt64(total))) = \(String(format: "%.1f", perVector)) B/vector (heads \(formatBytes(UInt64(heads))), graph \(formatBytes(UInt64(graph))), table \(formatBytes(UInt64(table))), codec \(formatBytes(UInt64(codec))), vector page checksums \(formatBytes(UInt64(checksums))), search scratch \(formatBytes(UInt64(scratch))))"
    }
}

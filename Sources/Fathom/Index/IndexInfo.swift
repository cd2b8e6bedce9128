import FathomCore
import FathomStorage
import Foundation

/// What an index holds and what serving it costs, as text or JSON (the CLI's info command
/// prints it).
///
/// Thread safety: stateless; reads the directory's files, callable from any thread.
public enum IndexInfo {
    public static func describe(directory: String, json: Bool) throws -> String {
        let m = try Manifest.load(directory: directory)
        try m.checkFileSizes(directory: directory)
        let layout = IndexLayout(directory: directory)
        let postingsBytes = m.files.first { $0.name == "postings.dat" }?.bytes ?? 0
        let table = try layout.readPostingTable(postingsBytes: postingsBytes, recordBytes: m.record_bytes)
        let disk = m.files.reduce(UInt64(0)) { $0 + $1.bytes }
        // RAM to serve (docs/memory.md): the same model the build planned with, on the real
        // posting lengths, with the search scratch of the machine's threads at 32 probes.
        let compressed = (m.codec ?? "none") != "none"
        let serving = ServingMemory.model(vectors: m.count, heads: m.heads, dimension: m.dimension,
                                          reduced: compressed ? m.reduced_dimension : nil, router: m.router_dimension,
                                          twoMatrices: m.leanvec?.kind == "ood", degree: m.parameters.graph_degree,
                                          recordBytes: m.record_bytes, meanRecords: Double(m.stats.records) / Double(max(m.heads, 1)),
                                          threads: ProcessInfo.processInfo.activeProcessorCount,
                                          vectorPages: m.files.first { $0.name == IndexLayout.vectorChecksumsFile }
                                              .map { Int(($0.bytes - 64) / 4) } ?? 0)
        let ram = UInt64(serving.total)
        let tierText = compressed
            ? "LVQ-8 codes of the projected heads (\(m.router_dimension ?? m.reduced_dimension ?? 0) dims) + graph + posting table + LeanVec query matrix in RAM; postings of \(m.codec!) codes (\(m.dimension) → \(m.reduced_dimension ?? 0) dims) on SSD; full-precision vectors on SSD for re-ranking"
            : "float32 heads + graph + posting table in RAM; postings of full-precision vectors on SSD"
        let recordVectorBytes = m.record_bytes - 4
        let fullBytes = m.dimension * 4
        // Histogram of posting lengths in 8 buckets up to the cap.
        let cap = max(1, m.parameters.posting_capacity)
        let buckets = 8
        var hist = [Int](repeating: 0, count: buckets + 1)
        for e in table {
            if e.count == 0 { hist[0] += 1; continue }
            hist[1 + min(buckets - 1, (Int(e.count) - 1) * buckets / cap)] += 1
        }
        var labels = ["empty"]
        for b in 0..<buckets { labels.append("\(b * cap / buckets + 1)-\((b + 1) * cap / buckets)") }
        if json {
            let obj: [String: Any] = [
                "path": directory, "count": m.count, "heads": m.heads, "dimension": m.dimension,
                "metric": m.metric.rawValue, "element_type": m.element_type.rawValue,
                "ram_to_serve_bytes": ram, "ram_per_vector_bytes": serving.perVector,
                "ram_index_per_vector_bytes": Double(serving.total - serving.scratch) / Double(max(m.count, 1)),
                "ram_by_part": ["heads": serving.heads, "graph": serving.graph, "table": serving.table,
                                "codec": serving.codec, "vector_page_checksums": serving.checksums,
                                "search_scratch": serving.scratch],
                "disk_bytes": disk, "mean_replicas": m.stats.mean_replicas,
                "posting_histogram": Dictionary(uniqueKeysWithValues: zip(labels, hist)),
                "tiers": tierText, "codec": m.codec ?? "none",
                "posting_bytes_per_vector": recordVectorBytes, "float32_bytes_per_vector": fullBytes,
                "model_fingerprint": m.model_fingerprint ?? NSNull(),
                "shard": m.shard.map { ["index": $0.index, "count": $0.count, "head_begin": $0.head_begin, "head_end": $0.head_end, "vectors": $0.vectors] as [String: Any] } ?? NSNull(),
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
            let manifest = String(decoding: try m.encoded(), as: UTF8.self)
            return "{\"summary\": " + String(decoding: data, as: UTF8.self) + ",\n\"manifest\": " + manifest + "}"
        }
        var s = """
        index:            \(directory)
        vectors:          \(m.count) × \(m.dimension) \(m.element_type.rawValue), metric \(m.metric.rawValue)
        heads:            \(m.heads) (ratio \(String(format: "%.4f", m.parameters.head_ratio)))
        RAM to serve:     \(serving.summary) at \(ProcessInfo.processInfo.activeProcessorCount) search threads
        tiers:            \(tierText)
        record:           \(recordVectorBytes) B per vector in postings (float32 would be \(fullBytes) B: \(String(format: "%.1f", Double(fullBytes) / Double(max(recordVectorBytes, 1))))× smaller)\(m.leanvec.map { " — LeanVec \($0.kind)" + ($0.explained_variance.map { String(format: ", %.1f%% variance kept", 100 * $0) } ?? "") + ($0.loss.map { String(format: ", loss %.4g", $0) } ?? "") } ?? "")
        disk:             \(formatBytes(disk))
        replicas/vector:  \(String(format: "%.2f", m.stats.mean_replicas)) (cap \(m.parameters.replicas); \(m.stats.cut_records) records cut by the posting cap (\(String(format: "%.2f", 100 * Double(m.stats.cut_records) / Double(max(1, m.stats.records + m.stats.cut_records))))%), \(m.stats.orphans_fixed) orphans placed back in their nearest heads with room\(m.stats.orphans_outside_nearest.map { $0 > 0 ? ", \($0) beyond their \(m.parameters.replicas) nearest" : "" } ?? ""))
        postings:         cap \(cap) records (\(m.parameters.posting_pages) pages of 4 KiB, \(m.record_bytes) B/record), longest \(m.stats.max_posting_records), empty \(m.stats.empty_postings)
        build:            seed \(m.parameters.seed), degree \(m.parameters.graph_degree), candidates \(m.parameters.candidate_heads), RNG factor \(m.parameters.rng_factor), sample \(m.parameters.sample_size); \(m.build.seconds.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.1f", $0.value)) s" }.joined(separator: ", ")); peak RSS \(formatBytes(m.build.peak_rss_bytes))
        posting lengths:
        """
        if let fp = m.model_fingerprint { s += "\nmodel:            fingerprint \(fp)" }
        if let sh = m.shard {
            s += "\nshard:            \(sh.index)/\(sh.count): postings of heads \(sh.head_begin)..<\(sh.head_end), \(sh.vectors) of the \(m.count) vectors (their rows in vectors.dat, rows.bin maps ids to them)"
        }
        let maxCount = max(1, hist.max() ?? 1)
        for (l, c) in zip(labels, hist) {
            s += "\n  \(l.padding(toLength: 10, withPad: " ", startingAt: 0)) \(String(c).padding(toLength: 8, withPad: " ", startingAt: 0)) " + String(repeating: "#", count: c * 40 / maxCount)
        }
        return s
    }
}

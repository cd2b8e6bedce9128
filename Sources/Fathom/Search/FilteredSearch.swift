import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage

/// A filter bound to the index's attributes for one query: the record test the pipeline's
/// scoring stage applies (OSQ codes first, which reject most non-matches without touching
/// the raw attributes, then the exact predicate).
struct FilterContext {
    let filter: PreparedFilter
    let attrs: AttributeStore

    @inline(__always)
    func matches(_ id: UInt32) -> Bool {
        let row = Int(id)
        return attrs.quantized.withCodes(row: row, { filter.codes.mayMatch(codes: $0) })
            && filter.bound.matches(row: row, table: attrs.table)
    }
}

/// Filtered search: the same pipeline as plain search with another plan (docs/filters.md).
///
/// - Selective filters (estimated matches ≤ `exactPathLimit`): the exact path enumerates the
///   matching ids and ranks their full vectors, read through the ``VectorReader``.
/// - Otherwise postings are probed nearest-first; a posting whose summary cannot match is
///   never read; records are scored, then tested by the ``FilterContext``; `probes·√(1/s)`
///   postings are read (no distance cutoff), in rounds of `probes`, and more until `2·k`
///   matching candidates were kept. If the probed postings still hold fewer than k
///   matches, the exact path runs, so a query always returns min(k, number of matches)
///   results, and never a vector that fails the predicate.
extension Searcher {
    /// Estimated matches at or below which the exact path is taken.
    func exactPathLimit() -> Double { max(2000, Double(index.count) * 0.001) }

    func searchFiltered(k: Int, parameters p: SearchParameters, filter: PreparedFilter,
                        into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        guard let attrs = index.attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes; rebuild it with --attributes FILE to filter", path: index.path)
        }
        stats.selectivity = filter.selectivity
        if filter.selectivity * Double(index.count) <= exactPathLimit() {
            return try exactFiltered(k: k, filter: filter, attrs: attrs, into: out)
        }
        let heads = index.graph.count
        let probes = min(p.probes, heads)
        // The filtered k nearest lie about as far as the unfiltered k/s nearest: probe
        // probes·√(1/s) postings (those whose summaries can match), and at least until 2·k
        // matching candidates were kept.
        let target = min(heads, Int((Double(probes) * (1 / max(filter.selectivity, 1e-4)).squareRoot()).rounded(.up)))
        let wide = min(heads, max(64, 2 * target))
        let found = route(count: wide, listSize: wide + 32)
        resetSeen(expected: 4096)
        let context = FilterContext(filter: filter, attrs: attrs)
        let needed = 2 * k
        var passing = 0, probed = 0, cursor = 0
        while cursor < found {
            if passing >= needed && probed >= target { break }
            lists.removeAll(keepingCapacity: true)
            while cursor < found && lists.count < probes {
                let h = Int(candIds[cursor]); cursor += 1
                if index.postingStore.count(of: h) == 0 { continue }
                if !filter.bound.mayMatch(summary: attrs.summaries[h]) { stats.postingsSkipped += 1; continue }
                lists.append(UInt32(h))
            }
            if lists.isEmpty { continue }
            probed += lists.count
            passing += try fetchAndScore(verify: p.verifyChecksums, filter: context)
        }
        if !scorer.exact { try rerank() }
        if heap.count < k {
            // The probed postings hold fewer than k matches: rank every match exactly.
            heap.reset()
            return try exactFiltered(k: k, filter: filter, attrs: attrs, into: out)
        }
        return finish(k: k, into: out)
    }

    /// Ranks every matching vector by its exact distance (vectors read in round trips of
    /// at most 256 rows).
    func exactFiltered(k: Int, filter: PreparedFilter, attrs: AttributeStore, into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        stats.exactPath = true
        let ids = filter.bound.matchingRows(in: attrs.table, quantized: attrs.quantized)
        let batch = 256
        try ids.withUnsafeBufferPointer { all in
            var start = 0
            while start < all.count {
                let n = min(batch, all.count - start)
                stats.candidatesScored += n
                try rankExactly(UnsafeBufferPointer(rebasing: all[start..<(start + n)]))
                start += n
            }
        }
        return finish(k: k, into: out)
    }
}

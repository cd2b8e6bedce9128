import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage

/// Filtered search: the planner and its two paths (docs/filters.md).
///
/// - Selective filters (estimated matches ≤ `exactPathLimit`): the exact path enumerates the
///   matching ids and ranks their full vectors, read from vectors.dat in async batches.
/// - Otherwise postings are probed nearest-first; a posting whose summary cannot match is
///   never read; each record's OSQ codes are tested, then its raw attributes, before its
///   vector is scored; `probes·√(1/s)` postings are read (no distance cutoff), and more
///   until `2·k` matching candidates were scored. If the probed postings still hold fewer than k matches, the
///   exact path runs, so a query always returns min(k, number of matches) results, and never
///   a vector that fails the predicate.
extension Searcher {
    /// Estimated matches at or below which the exact path is taken.
    func exactPathLimit() -> Double { max(2000, Double(index.count) * 0.001) }

    func searchFiltered(k: Int, parameters p: SearchParameters, filter: PreparedFilter,
                        into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        guard let attrs = index.attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes; rebuild it with --attributes FILE to filter", path: index.path)
        }
        heap.reset()
        stats.selectivity = filter.selectivity
        if filter.selectivity * Double(index.count) <= exactPathLimit() {
            return try exactFiltered(k: k, filter: filter, attrs: attrs, into: out)
        }
        let g = index.graph
        let probes = min(p.probes, g.count)
        stats.postingsSkipped = 0
        // The filtered k nearest lie about as far as the unfiltered k/s nearest: probe
        // probes·√(1/s) postings (those whose summaries can match), and at least until 2·k
        // matching candidates were scored.
        let target = min(g.count, Int((Double(probes) * (1 / max(filter.selectivity, 1e-4)).squareRoot()).rounded(.up)))
        let wide = min(g.count, max(64, 2 * target))
        ensureCapacity(probes: probes, list: wide + 32)
        let found = g.search(query, k: wide, listSize: wide + 32, scratch: headScratch, outIds: candIds, outDist: candDist)
        let codec = index.codec
        if let codec { prepareCompact(codec, k: k, parameters: p) }
        resetSeen(expected: 4096)
        let needed = 2 * k
        var passing = 0, probed = 0, cursor = 0
        let table = index.table, fd = index.postingsFile.fd
        let recordBytes = index.manifest.record_bytes
        let d = index.dimension, metric = index.metric, et = index.elementType
        while cursor < found {
            if passing >= needed && probed >= target { break }
            var nreq = 0
            while cursor < found && nreq < probes {
                let h = Int(candIds[cursor]); cursor += 1
                let e = table[h]
                if e.count == 0 { continue }
                if !filter.bound.mayMatch(summary: attrs.summaries[h]) { stats.postingsSkipped += 1; continue }
                requests[nreq] = ReadRequest(fd: fd, offset: e.offset & ~4095, length: Int(e.pages) * 4096,
                                             buffer: pageBuffer + nreq * slotBytes)
                postingOf[nreq] = h
                nreq += 1
            }
            if nreq == 0 { continue }
            probed += nreq
            var firstError: FathomError? = nil
            try engine.read(UnsafeBufferPointer(start: requests, count: nreq), path: index.postingsPath) { i, result in
                switch result {
                case .failure(let e): if firstError == nil { firstError = e }
                case .success:
                    let h = postingOf[i]
                    let e = table[h]
                    let base = UnsafeRawPointer(requests[i].buffer) + Int(e.offset & 4095)
                    let bytes = Int(e.count) * recordBytes
                    if p.verifyChecksums && crc32c(base, bytes, 0) != e.crc {
                        if firstError == nil {
                            firstError = FathomError(.corruptIndex, "posting \(h) fails its checksum: postings.dat is corrupt — run `fathom verify` and rebuild", path: index.postingsPath, offset: e.offset)
                        }
                        return
                    }
                    stats.postingsRead += 1
                    stats.bytesRead += requests[i].length
                    for j in 0..<Int(e.count) {
                        let rec = base + j * recordBytes
                        let id = UInt32(littleEndian: rec.loadUnaligned(as: UInt32.self))
                        let row = Int(id)
                        guard attrs.quantized.withCodes(row: row, { filter.codes.mayMatch(codes: $0) }),
                              filter.bound.matches(row: row, table: attrs.table) else { continue }
                        if !insertSeen(id) { continue }
                        passing += 1
                        stats.candidatesScored += 1
                        if let codec {
                            candidates.push(codec.lvq.distance(prepared, code: rec + 4, metric: metric == .l2 ? .l2 : .ip), id)
                        } else {
                            heap.push(Distance.one(metric, et, query: query, vector: rec + 4, d: d), id)
                        }
                    }
                }
            }
            if let e = firstError { throw e }
        }
        if codec != nil { try rerank() }
        if heap.count < k {
            // The probed postings hold fewer than k matches: rank every match exactly.
            heap.reset()
            return try exactFiltered(k: k, filter: filter, attrs: attrs, into: out)
        }
        return finish(k: k, into: out)
    }

    /// Ranks every matching vector by its exact distance (vectors read in batches of 64).
    func exactFiltered(k: Int, filter: PreparedFilter, attrs: AttributeStore, into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        stats.exactPath = true
        let ids = filter.bound.matchingRows(in: attrs.table, quantized: attrs.quantized)
        let batch = 64
        ensureRerank(batch)
        let placement = index.vectorPlacement
        let vecBytes = index.manifest.dimension * index.storedType.size
        let fd = index.vectorsFile.fd
        let d = index.dimension, metric = index.metric, type = index.storedType
        var start = 0
        while start < ids.count {
            let n = min(batch, ids.count - start)
            for i in 0..<n {
                let off = placement.offset(Int(ids[start + i]))
                let pageStart = off & ~4095
                rerankIds[i] = ids[start + i]
                rerankRequests[i] = ReadRequest(fd: fd, offset: pageStart, length: Int((off + UInt64(vecBytes) - pageStart + 4095) / 4096 * 4096),
                                                buffer: rerankBuffer + i * rerankSlotBytes)
            }
            var firstError: FathomError? = nil
            try engine.read(UnsafeBufferPointer(start: rerankRequests, count: n), path: index.vectorsPath) { i, result in
                switch result {
                case .failure(let e): if firstError == nil { firstError = e }
                case .success:
                    let off = placement.offset(Int(rerankIds[i]))
                    let v = UnsafeRawPointer(rerankRequests[i].buffer) + Int(off - rerankRequests[i].offset)
                    stats.bytesRead += rerankRequests[i].length
                    stats.vectorsReranked += 1
                    stats.candidatesScored += 1
                    heap.push(Distance.one(metric, type, query: query, vector: v, d: d), rerankIds[i])
                }
            }
            if let e = firstError { throw e }
            start += n
        }
        return finish(k: k, into: out)
    }
}

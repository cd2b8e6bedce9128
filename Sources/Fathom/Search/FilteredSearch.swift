import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage

/// How a filtered query was answered (``FilterPlan``).
public enum FilterPlanKind: String, Sendable, Codable, CaseIterable {
    /// The index walk: nearest postings first, summaries skipping postings that cannot match,
    /// codes and the compiled predicate rejecting records before any distance.
    case walk
    /// The bitmap path: every matching id, ranked by its full vector.
    case exact
    /// The walk found fewer than k matches in the postings it could afford; the exact path
    /// answered.
    case walkThenExact = "walk+exact"
}

/// The planner's choice for one filtered query and the figures it chose by, reported in
/// ``QueryStats/filterPlan`` and by `fathom search` (docs/filters.md, "The planner").
/// A value type, `Sendable`.
public struct FilterPlan: Sendable, Equatable {
    public var kind: FilterPlanKind
    /// Matching vectors the planner expected (estimated selectivity × count; for the exact
    /// path, the exact count once enumerated).
    public var estimatedMatches: Double
    /// Postings the walk planned to read (probes·√(1/s)).
    public var plannedPostings: Int
    /// Estimated IO requests of the walk (postings plus re-rank reads) and of the exact path
    /// (one read per match).
    public var walkCost: Double
    public var exactCost: Double
    /// Walk: fraction of the records of the read postings that matched (the local
    /// selectivity the walk re-planned with).
    public var observedSelectivity: Double? = nil
    /// Walk: rounds of posting reads (each one round trip).
    public var rounds = 0
    /// Walk: the filter's summaries admit few postings (at most 2,048), so these were ranked
    /// by their heads' distances directly instead of routing through the head graph.
    public var rankedMatchingPostings = false
}

/// The cost model of filtered search, in IO requests (on this class of SSD a query costs
/// its requests and round trips, not its bytes: docs/search.md).
enum FilterPlanner {
    /// Postings the walk reads for a filter of selectivity `s`: the filtered k nearest lie
    /// about as far as the unfiltered k/s nearest, which `probes·√(1/s)` postings cover
    /// (docs/filters.md).
    static func walkPostings(selectivity s: Double, probes: Int, heads: Int) -> Int {
        let t = (Double(probes) * (1 / max(s, 1e-6)).squareRoot()).rounded(.up)
        return max(1, min(heads, Int(min(t, Double(Int32.max)))))
    }

    /// Chooses between the walk and the exact path for `matches` (estimated) matching
    /// vectors among `count`: the exact path costs one read per match, the walk its postings
    /// plus `rerank` re-rank reads (0 for exact codecs).
    static func plan(matches: Double, count: Int, heads: Int, probes: Int, rerank: Int) -> FilterPlan {
        let s = matches / Double(max(count, 1))
        let postings = walkPostings(selectivity: s, probes: probes, heads: heads)
        let walk = Double(postings + rerank)
        let exact = matches
        return FilterPlan(kind: exact <= walk ? .exact : .walk, estimatedMatches: matches, plannedPostings: postings,
                          walkCost: walk, exactCost: exact)
    }
}

/// A filter bound to the index's attributes for one query: the per-posting record test of
/// the walk (OSQ codes first, then the compiled exact predicate on the survivors), with the
/// searcher's scratch.
struct FilterContext {
    let filter: PreparedFilter
    let attrs: AttributeStore
    let scratch: FilterScratch
}

/// Filtered search: the same route → fetch → score → re-rank stages as plain search with
/// another plan, chosen per query by ``FilterPlanner`` (docs/filters.md):
///
/// - **exact**: when the matches cost fewer reads than the walk, enumerate the matching ids
///   (codes, then the compiled predicate, over blocks of rows) and rank their full vectors.
/// - **walk**: read the nearest postings whose summaries can match, `probes·√(1/s)` of them
///   reject records by codes and predicate before any
///   distance (the plan in one round trip), and keep walking, re-planned from the
///   selectivity observed in the postings read (the plan only grows), until `2·k` matching
///   records were met (k distinct in the heap) and the re-planned count is read. If the affordable postings hold fewer than k matches, the exact path answers.
///
/// So a query always returns min(k, number of matches) results, never one failing the
/// predicate.
extension Searcher {
    func searchFiltered(k: Int, parameters p: SearchParameters, filter: PreparedFilter,
                        into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        guard let attrs = index.attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes; rebuild it with --attributes FILE to filter", path: index.path)
        }
        stats.selectivity = filter.selectivity
        let heads = index.graph.count
        let probes = min(p.probes, heads)
        let rerank = scorer.exact ? 0 : candidates.capacity
        var plan = FilterPlanner.plan(matches: filter.selectivity * Double(index.count), count: index.count,
                                      heads: heads, probes: probes, rerank: rerank)
        let context = FilterContext(filter: filter, attrs: attrs, scratch: filterScratch)
        if plan.kind == .exact {
            let ids = matchingIds(context)
            // The estimate can be wrong (correlated columns): re-plan from the exact count.
            let real = FilterPlanner.plan(matches: Double(ids.count), count: index.count, heads: heads, probes: probes, rerank: rerank)
            if real.kind == .exact || real.exactCost <= 2 * real.walkCost {
                plan.estimatedMatches = Double(ids.count); plan.exactCost = Double(ids.count)
                stats.filterPlan = plan
                return try exactFiltered(k: k, ids: ids, into: out)
            }
            plan = real
        }
        return try walkFiltered(k: k, parameters: p, probes: probes, plan: plan, context: context, into: out)
    }

    func walkFiltered(k: Int, parameters p: SearchParameters, probes: Int, plan initial: FilterPlan,
                      context: FilterContext, into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        var plan = initial
        let heads = index.graph.count
        let s0 = max(plan.estimatedMatches / Double(max(index.count, 1)), 1e-6)
        // Read at most this many postings (4× the plan, and never more than the reads the
        // exact path would cost) — or, while fewer than k matches were found, up to the exact
        // path's cost (an anti-correlated neighbourhood: the matches lie farther out).
        let hardCap = min(heads, max(64, Int(min(plan.exactCost, Double(heads)))))
        let cap = min(hardCap, plan.plannedPostings * 4)
        var found: Int
        var routed = 0
        let ranked: Bool
        if let listed = context.filter.postingList, listed.count * 2 <= heads {
            // Few postings can match (a correlated or narrow filter): rank exactly those by
            // their heads' distances, nearest first, so the walk meets no skipped posting.
            found = rankPostings(listed)
            plan.rankedMatchingPostings = true
            ranked = true
        } else {
            // Route enough heads that about 1.5× the plan's postings may match (summaries skip
            // the others); routed again, twice as wide, if the walk runs out.
            let want = Double(plan.plannedPostings) * 1.5 / max(context.filter.admittedFraction, 1e-3)
            routed = min(heads, max(64, Int(min(want, Double(heads)))))
            found = route(count: routed, listSize: routed + 32)
            ranked = false
        }
        var readSoFar = [UInt32]()     // postings read, sorted (only consulted after a re-route)
        var rerouted = false
        resetSeen(expected: 4096)
        let sc = context.scratch
        sc.records = 0; sc.matched = 0
        let needed = 2 * k
        var passing = 0, probed = 0, cursor = 0, firstK = 0
        var target = plan.plannedPostings
        // The first round trip reads the whole plan.
        var round = target
        var skippedUpTo = 0           // candidates already counted as skipped
        while probed < hardCap && (probed < cap || passing < k || (firstK > plan.plannedPostings && probed < firstK + firstK / 2)) {
            lists.removeAll(keepingCapacity: true)
            while cursor < found && lists.count < round {
                let h = Int(candIds[cursor]); cursor += 1
                if index.postingStore.count(of: h) == 0 { continue }
                if !context.filter.postingMayMatch(h) {
                    if cursor > skippedUpTo { stats.postingsSkipped += 1 }
                    continue
                }
                if rerouted && Self.sortedContains(readSoFar, UInt32(h)) { continue }
                lists.append(UInt32(h))
            }
            if lists.isEmpty {
                // The routed heads ran out before the walk was done: route twice as wide and
                // go on past the postings already read.
                guard !ranked, routed < heads else { break }
                skippedUpTo = max(skippedUpTo, cursor)
                routed = min(heads, routed * 2)
                found = route(count: routed, listSize: routed + 32)
                cursor = 0
                rerouted = true
                readSoFar.sort()
                continue
            }
            readSoFar.append(contentsOf: lists)
            if rerouted { readSoFar.sort() }
            probed += lists.count
            plan.rounds += 1
            passing += try fetchAndScoreFiltered(verify: p.verifyChecksums, context: context)
            // Re-plan from the postings read: a filter anti-correlated with this neighbourhood
            // (fewer matches here than overall) needs more postings. The plan only grows: the
            // postings read are biased towards matches (summaries skipped or excluded the
            // others), so a high local rate does not show that fewer would do. The prior (64
            // records at the global estimate) steadies the first rounds.
            let prior = 64.0
            let local = (Double(sc.matched) + prior * s0) / (Double(sc.records) + prior)
            plan.observedSelectivity = sc.records > 0 ? Double(sc.matched) / Double(sc.records) : nil
            target = max(plan.plannedPostings, FilterPlanner.walkPostings(selectivity: local, probes: probes, heads: heads))
            // Quality: when the plan's postings held fewer than k matches (the matches lie
            // farther out), the first k found are the nearest of a thin set; read half as many
            // postings again past that point before stopping.
            if firstK == 0 && passing >= k { firstK = probed }
            let enough = firstK > plan.plannedPostings ? max(target, firstK + firstK / 2) : target
            // (2·k matches met — records, replicas included — and k distinct in the heap.)
            if sc.matched >= needed && passing >= k && probed >= enough { break }
            if probed >= cap && passing >= k && probed >= enough { break }
            // Grow by at least 2·probes a round (an anti-correlated neighbourhood raises the
            // target a little after every round, and each round is a round trip), by half
            // the postings read so far while fewer than k matched, and to the quality margin.
            round = max(2 * probes, min(target - probed, cap - probed), passing < k ? probed / 2 : 0,
                        firstK > plan.plannedPostings ? firstK + firstK / 2 - probed : 0)
        }
        if !scorer.exact { try rerank() }
        if heap.count < k {
            // The postings walked hold fewer than k matches: rank every match exactly.
            heap.reset()
            plan.kind = .walkThenExact
            let ids = matchingIds(context)
            plan.exactCost = Double(ids.count)
            stats.filterPlan = plan
            return try exactFiltered(k: k, ids: ids, into: out)
        }
        stats.filterPlan = plan
        return finish(k: k, into: out)
    }

    static func sortedContains(_ a: [UInt32], _ x: UInt32) -> Bool {
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) >> 1; if a[m] < x { lo = m + 1 } else { hi = m } }
        return lo < a.count && a[lo] == x
    }

    /// Ranks `heads` by their distance to the query into `candIds` / `candDist`, nearest
    /// first; returns how many.
    func rankPostings(_ heads: [UInt32]) -> Int {
        ensureRouteCapacity(max(heads.count, 1))
        heads.withUnsafeBufferPointer { index.router.distances(query, to: $0, scratch: routeScratch, into: candDist) }
        let sc = filterScratch
        sc.reservePairs(heads.count)
        let pairs = sc.pairs
        for i in 0..<heads.count { pairs[i] = (candDist[i], heads[i]) }
        var buf = UnsafeMutableBufferPointer<(Float, UInt32)>(start: pairs, count: heads.count)
        buf.sort { (a: (Float, UInt32), b: (Float, UInt32)) -> Bool in a.0 < b.0 || (a.0 == b.0 && a.1 < b.1) }
        for i in 0..<heads.count { candDist[i] = pairs[i].0; candIds[i] = pairs[i].1 }
        return heads.count
    }

    /// Every id matching the filter: codes over blocks of rows, then the compiled predicate
    /// on the survivors.
    func matchingIds(_ f: FilterContext) -> [UInt32] {
        var out = [UInt32]()
        let n = index.count, block = 4096
        let tombstones = index.tombstones
        let sc = f.scratch
        sc.reserveRows(block, recordBytes: 0)
        var start = 0
        while start < n {
            let m0 = min(block, n - start)
            for i in 0..<m0 { sc.ids[i] = UInt32(start + i) }
            var m = f.filter.codes.select(sc.ids, aux: nil, count: m0, quantized: f.attrs.quantized)
            if !f.filter.codes.decides { m = f.filter.program.select(sc.ids, aux: nil, count: m, table: f.attrs.table, scratch: sc) }
            for i in 0..<m where !tombstones.contains(sc.ids[i]) { out.append(sc.ids[i]) }
            start += m0
        }
        return out
    }

    /// Ranks `ids` by their exact distances (vectors read in round trips of at most 256 rows).
    func exactFiltered(k: Int, ids: [UInt32], into out: UnsafeMutablePointer<Neighbor>) throws -> Int {
        stats.exactPath = true
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

    /// Reads the postings in `lists` (one round trip) and offers their matching records;
    /// returns how many distinct matching records scored within the current bound.
    func fetchAndScoreFiltered(verify: Bool, context: FilterContext) throws -> Int {
        var passing = 0
        let recordBytes = index.postingStore.recordBytes
        try lists.withUnsafeBufferPointer { l in
            let c = try postings.fetch(l, verify: verify) { h, records, count in
                passing += collectFiltered(records, count: count, recordBytes: recordBytes, filter: context, list: h)
            }
            stats.add(c, postings: true)
        }
        try checkIds()
        return passing
    }

    /// One posting of the walk: the ids are checked (a corrupt id fails the query), the codes
    /// and then the compiled predicate keep the matching records (a block at a time), and
    /// only those are scored: the whole posting in one kernel call when most match, else
    /// the survivors gathered into one contiguous block and scored in one call.
    func collectFiltered(_ records: UnsafeRawPointer, count: Int, recordBytes: Int, filter f: FilterContext, list: UInt32) -> Int {
        let sc = f.scratch
        sc.reserveRows(count, recordBytes: recordBytes)
        if count > scoreCapacity {
            scores.deallocate(); scoreCapacity = count; scores = .allocate(capacity: count)
        }
        let ids = sc.ids, slots = sc.slots
        let n = UInt32(index.count)
        let tombstones = index.tombstones
        var m = 0
        for j in 0..<count {
            let id = UInt32(littleEndian: records.loadUnaligned(fromByteOffset: j * recordBytes, as: UInt32.self))
            if id >= n { if badId == nil { badId = (id, list, j) }; continue }
            if tombstones.contains(id) { continue }
            ids[m] = id; slots[m] = Int32(j); m += 1
        }
        sc.records += m
        m = f.filter.codes.select(ids, aux: slots, count: m, quantized: f.attrs.quantized)
        if m > 0 && !f.filter.codes.decides {
            m = f.filter.program.select(ids, aux: slots, count: m, table: f.attrs.table, scratch: sc)
        }
        sc.matched += m
        if m == 0 { return 0 }
        let whole = 2 * m >= count
        if whole {
            scorer.score(records + 4, count: count, stride: recordBytes, into: scores)
            stats.candidatesScored += count
        } else {
            let g = sc.gathered
            for i in 0..<m {
                (g + i * recordBytes).copyMemory(from: records + Int(slots[i]) * recordBytes, byteCount: recordBytes)
            }
            scorer.score(UnsafeRawPointer(g) + 4, count: m, stride: recordBytes, into: scores)
            stats.candidatesScored += m
        }
        let target = scorer.exact ? heap : candidates
        var bound = target.bound
        var passing = 0
        for i in 0..<m {
            let dist = whole ? scores[Int(slots[i])] : scores[i]
            if dist > bound { continue }
            let id = ids[i]
            if !insertSeen(id) { continue }
            passing += 1
            if target.push(dist, id) { bound = target.bound }
        }
        return passing
    }
}

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
/// ``QueryStats/filterPlan`` and by the search reports (docs/filters.md, "The planner").
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

/// The state of a filtered walk between its rounds (``Searcher``): the plan as re-planned
/// so far, the routed candidates' cursor, and the walk's tallies.
struct FilterWalk {
    var plan = FilterPlan(kind: .walk, estimatedMatches: 0, plannedPostings: 0, walkCost: 0, exactCost: 0)
    var probes = 0
    /// Global selectivity estimate (the prior of the re-plan).
    var s0 = 0.0
    /// Postings the walk may read at most, and while it has k matches.
    var hardCap = 0, cap = 0
    /// Candidate postings routed (or ranked), and the cursor into them.
    var found = 0, routed = 0, cursor = 0
    var ranked = false, rerouted = false
    /// Candidates already counted as skipped (before a re-route).
    var skippedUpTo = 0
    /// Distinct matching records within the bound, postings read, and postings read when the
    /// k-th match was met.
    var passing = 0, probed = 0, firstK = 0
    /// The re-planned postings to read, and the size of the next round.
    var target = 0, round = 0
}

/// Filtered search: the same route → fetch → score → accept → re-rank steps as plain search
/// with another plan, chosen per query by ``FilterPlanner`` (docs/filters.md), and run by the
/// same executor (so filtered queries pipeline like plain ones):
///
/// - **exact**: when the matches cost fewer reads than the walk, enumerate the matching ids
///   (codes, then the compiled predicate, over blocks of rows) and rank their full vectors,
///   in round trips of at most 256 rows.
/// - **walk**: rounds of postings, nearest first, skipping postings whose summaries cannot
///   match; the first round reads the whole plan (`probes·√(1/s)` postings), and the walk
///   goes on, re-planned from the selectivity observed in the postings read (the plan only
///   grows), until `2·k` matching records were met (k distinct in the heap) and the
///   re-planned count is read. If the affordable postings hold fewer than k matches, the
///   exact path answers.
///
/// So a query always returns min(k, number of matches) results, never one failing the
/// predicate.
extension Searcher {
    /// Plans a filtered query and stages its first phase.
    func startFiltered(parameters p: SearchParameters, filter f: PreparedFilter) throws {
        guard let attrs = context.attributes else {
            throw FathomError(.invalidArgument, "this index has no attributes to filter on", path: context.path, remedies: [.rebuildWithAttributes])
        }
        // A filter prepared on another snapshot of an updated index: its posting bits are that
        // snapshot's summaries (heads split since, rows inserted since): prepare it again here.
        let f = f.store === attrs.token ? f
            : PreparedFilter(bound: f.bound, store: attrs, heads: self.context.headCount,
                             postingCount: { [postingStore = self.context.postingStore] in postingStore.count(of: $0) }, text: f.text)
        stats.selectivity = f.selectivity
        let context = FilterContext(filter: f, attrs: attrs, scratch: filterScratch)
        filter = context
        let count = self.context.count, heads = self.context.headCount
        let probes = min(p.probes, heads)
        let rerank = scorer.exact ? 0 : candidates.capacity
        var plan = FilterPlanner.plan(matches: f.selectivity * Double(count), count: count,
                                      heads: heads, probes: probes, rerank: rerank)
        if plan.kind == .exact {
            exactIds = matchingIds(context)
            // The estimate can be wrong (correlated columns): re-plan from the exact count.
            let real = FilterPlanner.plan(matches: Double(exactIds.count), count: count, heads: heads, probes: probes, rerank: rerank)
            if real.kind == .exact || real.exactCost <= 2 * real.walkCost {
                plan.estimatedMatches = Double(exactIds.count); plan.exactCost = Double(exactIds.count)
                walk.plan = plan
                kind = .exact
                stats.exactPath = true
                exactCursor = 0
                if !stageExactBatch() { _ = done() }
                return
            }
            plan = real
        }
        kind = .walk
        startWalk(probes: probes, plan: plan, context: context)
        if !walkStageNext() { _ = try afterPostings() }
    }

    func startWalk(probes: Int, plan: FilterPlan, context f: FilterContext) {
        let heads = context.headCount
        walk = FilterWalk()
        walk.plan = plan
        walk.probes = probes
        walk.s0 = max(plan.estimatedMatches / Double(max(context.count, 1)), 1e-6)
        // Read at most this many postings (4× the plan, and never more than the reads the
        // exact path would cost) — or, while fewer than k matches were found, up to the exact
        // path's cost (an anti-correlated neighbourhood: the matches lie farther out).
        walk.hardCap = min(heads, max(64, Int(min(plan.exactCost, Double(heads)))))
        walk.cap = min(walk.hardCap, plan.plannedPostings * 4)
        if let listed = f.filter.postingList, listed.count * 2 <= heads {
            // Few postings can match (a correlated or narrow filter): rank exactly those by
            // their heads' distances, nearest first, so the walk meets no skipped posting.
            walk.found = rankPostings(listed)
            walk.plan.rankedMatchingPostings = true
            walk.ranked = true
        } else {
            // Route enough heads that about 1.5× the plan's postings may match (summaries skip
            // the others); routed again, twice as wide, if the walk runs out.
            let want = Double(plan.plannedPostings) * 1.5 / max(f.filter.admittedFraction, 1e-3)
            walk.routed = min(heads, max(64, Int(min(want, Double(heads)))))
            walk.found = route(count: walk.routed, listSize: walk.routed + 32)
        }
        readSoFar.removeAll(keepingCapacity: true)
        resetSeen(expected: 4096)
        f.scratch.records = 0; f.scratch.matched = 0
        walk.target = plan.plannedPostings
        // The first round trip reads the whole plan.
        walk.round = walk.target
    }

    /// Stages the walk's next round of postings; false when the walk is over (its caps
    /// reached, or no candidate posting is left).
    func walkStageNext() -> Bool {
        guard let f = filter else { return false }
        let heads = context.headCount
        while walk.probed < walk.hardCap
                && (walk.probed < walk.cap || walk.passing < k
                    || (walk.firstK > walk.plan.plannedPostings && walk.probed < walk.firstK + walk.firstK / 2)) {
            lists.removeAll(keepingCapacity: true)
            while walk.cursor < walk.found && lists.count < walk.round {
                let h = Int(candIds[walk.cursor]); walk.cursor += 1
                if context.postingStore.count(of: h) == 0 { continue }
                if !f.filter.postingMayMatch(h) {
                    if walk.cursor > walk.skippedUpTo { stats.postingsSkipped += 1 }
                    continue
                }
                if walk.rerouted && Self.sortedContains(readSoFar, UInt32(h)) { continue }
                lists.append(UInt32(h))
            }
            if lists.isEmpty {
                // The routed heads ran out before the walk was done: route twice as wide and
                // go on past the postings already read.
                guard !walk.ranked, walk.routed < heads else { return false }
                walk.skippedUpTo = max(walk.skippedUpTo, walk.cursor)
                walk.routed = min(heads, walk.routed * 2)
                walk.found = route(count: walk.routed, listSize: walk.routed + 32)
                walk.cursor = 0
                walk.rerouted = true
                readSoFar.sort()
                continue
            }
            readSoFar.append(contentsOf: lists)
            if walk.rerouted { readSoFar.sort() }
            walk.probed += lists.count
            walk.plan.rounds += 1
            stagePostings()
            return true
        }
        return false
    }

    /// After a round's postings were scored: re-plans and says whether the walk goes on.
    func walkRoundDone() -> Bool {
        guard let f = filter else { return false }
        let sc = f.scratch
        walk.passing += roundPassing
        // Re-plan from the postings read: a filter anti-correlated with this neighbourhood
        // (fewer matches here than overall) needs more postings. The plan only grows: the
        // postings read are biased towards matches (summaries skipped or excluded the
        // others), so a high local rate does not show that fewer would do. The prior (64
        // records at the global estimate) steadies the first rounds.
        let prior = 64.0
        let local = (Double(sc.matched) + prior * walk.s0) / (Double(sc.records) + prior)
        walk.plan.observedSelectivity = sc.records > 0 ? Double(sc.matched) / Double(sc.records) : nil
        walk.target = max(walk.plan.plannedPostings,
                          FilterPlanner.walkPostings(selectivity: local, probes: walk.probes, heads: context.headCount))
        // Quality: when the plan's postings held fewer than k matches (the matches lie
        // farther out), the first k found are the nearest of a thin set; read half as many
        // postings again past that point before stopping.
        if walk.firstK == 0 && walk.passing >= k { walk.firstK = walk.probed }
        let thin = walk.firstK > walk.plan.plannedPostings
        let enough = thin ? max(walk.target, walk.firstK + walk.firstK / 2) : walk.target
        // (2·k matches met — records, replicas included — and k distinct in the heap.)
        if sc.matched >= 2 * k && walk.passing >= k && walk.probed >= enough { return false }
        if walk.probed >= walk.cap && walk.passing >= k && walk.probed >= enough { return false }
        // Grow by at least 2·probes a round (an anti-correlated neighbourhood raises the
        // target a little after every round, and each round is a round trip), by half
        // the postings read so far while fewer than k matched, and to the quality margin.
        walk.round = max(2 * walk.probes, min(walk.target - walk.probed, walk.cap - walk.probed),
                         walk.passing < k ? walk.probed / 2 : 0,
                         thin ? walk.firstK + walk.firstK / 2 - walk.probed : 0)
        return true
    }

    /// The postings walked hold fewer than k matches: rank every match exactly instead.
    func startExactFallback() {
        guard let f = filter else { return }
        heap.reset()
        walk.plan.kind = .walkThenExact
        exactIds = matchingIds(f)
        walk.plan.exactCost = Double(exactIds.count)
        kind = .exact
        stats.exactPath = true
        exactCursor = 0
    }

    /// Stages the exact path's next batch of at most 256 matching rows; false when every
    /// match was ranked.
    func stageExactBatch() -> Bool {
        let n = min(256, exactIds.count - exactCursor)
        guard n > 0 else { return false }
        ensureRerank(n)
        exactIds.withUnsafeBufferPointer { all in
            rerankIds.update(from: all.baseAddress! + exactCursor, count: n)
        }
        exactCursor += n
        stats.candidatesScored += n
        stageVectors(n)
        return true
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
        heads.withUnsafeBufferPointer { context.router.distances(query, to: $0, scratch: routeScratch, into: candDist) }
        let sc = filterScratch
        sc.reservePairs(heads.count)
        let pairs = sc.pairs
        for i in 0..<heads.count { pairs[i] = (candDist[i], heads[i]) }
        var buf = UnsafeMutableBufferPointer<(Float, UInt32)>(start: pairs, count: heads.count)
        buf.sort { (a: (Float, UInt32), b: (Float, UInt32)) -> Bool in a.0 < b.0 || (a.0 == b.0 && a.1 < b.1) }
        for i in 0..<heads.count { candDist[i] = pairs[i].0; candIds[i] = pairs[i].1 }
        return heads.count
    }

    /// Every live id matching the filter: codes over blocks of rows, then the compiled
    /// predicate on the survivors.
    func matchingIds(_ f: FilterContext) -> [UInt32] {
        var out = [UInt32]()
        let n = context.count, block = 4096
        let tombstones = context.tombstones
        let sc = f.scratch
        sc.reserveRows(block, recordBytes: 0)
        var start = 0
        while start < n {
            let m0 = min(block, n - start)
            for i in 0..<m0 { sc.ids[i] = UInt32(start + i) }
            var m = f.filter.codes.select(sc.ids, aux: nil, count: m0, quantized: f.attrs.quantized)
            if !f.filter.codes.decides || start + m0 > f.attrs.quantized.count {
                m = f.filter.program.select(sc.ids, aux: nil, count: m, table: f.attrs.table, scratch: sc)
            }
            for i in 0..<m where !tombstones.contains(sc.ids[i]) { out.append(sc.ids[i]) }
            start += m0
        }
        return out
    }
}

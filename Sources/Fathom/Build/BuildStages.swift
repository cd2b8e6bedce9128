import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

// The assign and pack stages (docs/build.md). Neither holds anything that grows with n:
// assign streams the input in chunks, spills (posting, distance, vector) records as sorted
// runs from a buffer the plan sizes, and merges them to apply the posting cap; pack merges
// the runs again and fills postings bucket by bucket from one ordered pass over the codes.

/// Per-thread state of the assignment: a head-graph search scratch and the candidate lists.
/// Each worker is used by exactly one thread at a time (its slice of a chunk).
final class AssignWorker: @unchecked Sendable {
    let scratch: HeadGraph.Scratch
    let candIds: UnsafeMutablePointer<UInt32>
    let candDist: UnsafeMutablePointer<Float>
    let chosen: UnsafeMutablePointer<Int>
    /// The record codec's encode scratch.
    let encodeScratch: UnsafeMutablePointer<Float>
    let gatherIds: UnsafeMutablePointer<UInt32>
    let gatherDist: UnsafeMutablePointer<Float>
    let pivotDist: UnsafeMutablePointer<Float>
    let entries: UnsafeMutablePointer<UInt32>
    init(heads: Int, beam: Int, degree: Int, pivots: Int, encodeScratch floats: Int) {
        scratch = HeadGraph.Scratch(graphSize: heads, beam: beam)
        candIds = .allocate(capacity: beam + 1)
        candDist = .allocate(capacity: beam + 1)
        chosen = .allocate(capacity: 8)
        encodeScratch = .allocate(capacity: max(1, floats))
        gatherIds = .allocate(capacity: degree)
        gatherDist = .allocate(capacity: degree)
        pivotDist = .allocate(capacity: max(1, pivots))
        entries = .allocate(capacity: HeadPivots.seeds)
    }
    deinit {
        candIds.deallocate(); candDist.deallocate(); chosen.deallocate(); encodeScratch.deallocate()
        gatherIds.deallocate(); gatherDist.deallocate(); pivotDist.deallocate(); entries.deallocate()
    }
}

/// The build's ``HeadPivots`` with their float rows gathered in one matrix, so a vector
/// scores all of them in one batched call.
struct SearchPivots {
    let pivots: HeadPivots
    let vectors: Matrix
    var count: Int { pivots.count }

    init(heads: Matrix) {
        pivots = HeadPivots(heads: heads.rows)
        vectors = Matrix(rows: pivots.count, cols: heads.cols)
        for (i, h) in pivots.ids.enumerated() { vectors.row(i).update(from: heads.row(Int(h)), count: heads.cols) }
    }

    /// The nearest pivots of `q` into `out` (``HeadPivots/seeds`` of them), nearest first.
    @inline(__always) func nearest(_ q: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                   out: UnsafeMutablePointer<UInt32>) -> UnsafeBufferPointer<UInt32> {
        let d = vectors.cols
        Distance.batch(.l2, .float32, query: q, base: UnsafeRawPointer(vectors.data), n: count, d: d, stride: d * 4, out: scratch)
        return UnsafeBufferPointer(start: out, count: pivots.nearest(distances: scratch, out: out))
    }
}

/// What every assignment thread reads (immutable during a chunk) and the per-row output
/// slots it writes (row i writes only slots of row i: the result does not depend on how
/// rows are split across threads).
struct AssignChunk: @unchecked Sendable {
    let graph: HeadGraph
    let heads: Matrix
    let pivots: SearchPivots
    let codec: any RecordCodec
    let floats: UnsafeMutablePointer<Float>
    let d: Int
    let K: Int
    let replicas: Int
    let rngFactor: Float
    let outHeads: UnsafeMutablePointer<UInt32>
    let outDist: UnsafeMutablePointer<Float>
    let outCount: UnsafeMutablePointer<UInt8>
    let codes: UnsafeMutableRawPointer
    let codeBytes: Int

    func run(rows: Range<Int>, worker w: AssignWorker) {
        for i in rows {
            let v = floats + i * d
            let found = graph.searchGathered(v, k: K, listSize: K + 32, entries: pivots.nearest(v, scratch: w.pivotDist, out: w.entries), scratch: w.scratch,
                                             gatherIds: w.gatherIds, gatherDist: w.gatherDist, outIds: w.candIds, outDist: w.candDist)
            let m = rngSelect(candidates: w.candIds, distances: w.candDist, count: found, replicas: replicas,
                              rngFactor: rngFactor, heads: heads, out: w.chosen)
            for c in 0..<m {
                outHeads[i * 8 + c] = w.candIds[w.chosen[c]]
                outDist[i * 8 + c] = w.candDist[w.chosen[c]]
            }
            outCount[i] = UInt8(m)
            codec.encode(v, scratch: w.encodeScratch, into: codes + i * codeBytes)
        }
    }
}

/// Reads rows of a row file (codes.tmp, or vectors.dat for uncompressed postings) forward
/// in chunks, skipping chunks no wanted row falls in.
final class RowChunkReader {
    let file: RandomAccessFile
    let rowBytes: Int
    let placement: IndexLayout.VectorPlacement?
    let rowsPerChunk: Int
    let buffer: UnsafeMutableRawPointer
    private(set) var first = 0, end = 0
    private var base: UInt64 = 0

    init(path: String, rowBytes: Int, placement: IndexLayout.VectorPlacement?, chunkBytes: Int = 4 << 20) throws {
        file = try RandomAccessFile(path: path)
        self.rowBytes = rowBytes
        self.placement = placement
        rowsPerChunk = max(1, chunkBytes / max(rowBytes, 1))
        let span: Int
        if let p = placement, p.rowsPerPage > 0 { span = (rowsPerChunk / p.rowsPerPage + 2) * 4096 } else { span = rowsPerChunk * rowBytes }
        buffer = .allocate(byteCount: span, alignment: 4096)
    }
    deinit { buffer.deallocate() }

    @inline(__always) func offset(_ i: Int) -> UInt64 { placement?.offset(i) ?? UInt64(i) * UInt64(rowBytes) }

    /// Loads the chunk starting at row `row` (rows row ..< min(count, row + rowsPerChunk)).
    func load(from row: Int, count: Int) throws {
        first = row
        end = min(count, row + rowsPerChunk)
        base = offset(row)
        let bytes = Int(offset(end - 1) - base) + rowBytes
        try file.read(into: buffer, count: bytes, at: base)
    }

    @inline(__always) func row(_ i: Int) -> UnsafeRawPointer { UnsafeRawPointer(buffer + Int(offset(i) - base)) }
}

extension IndexLayout {
    /// Codes of every vector in id order (build scratch, no header: n × codeBytes).
    var codesPath: String { directory + "/codes.tmp" }
    /// Final record count per posting after the cap and the orphans (build scratch: H × u32).
    var countsPath: String { directory + "/counts.tmp" }
    /// Cut records and orphans placed back (build scratch, JSON).
    var assignMetaPath: String { directory + "/assign-meta.tmp" }

    func runFiles(prefix: String) throws -> [String] {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) }
        catch { throw FathomError(.io, "cannot list the build directory", path: directory, cause: error) }
        let runs = names.filter { $0.hasPrefix(prefix + "-") && $0.hasSuffix(".tmp") }
        // Numeric order (prefix-K.tmp): the merge is order-independent, but keep it stable.
        return runs.sorted { a, b in
            let ka = Int(a.dropFirst(prefix.count + 1).dropLast(4)) ?? 0, kb = Int(b.dropFirst(prefix.count + 1).dropLast(4)) ?? 0
            return ka < kb
        }.map { directory + "/" + $0 }
    }
}

extension IndexBuilder {
    static let assignRunPrefix = "assign-run", cutRunPrefix = "cut-run", orphanRunPrefix = "orphan-run"

    // MARK: stage: assign

    func assignStage(plan: BuildPlan, layout: IndexLayout) throws {
        let n = plan.count, d = plan.dimension
        // A rerun of this stage starts from scratch: drop runs of an interrupted attempt.
        for p in try layout.runFiles(prefix: Self.assignRunPrefix) + layout.runFiles(prefix: Self.cutRunPrefix)
            + layout.runFiles(prefix: Self.orphanRunPrefix) { try removeTree(p) }
        let (heads, _) = try layout.readHeads()
        let graph = try layout.readGraph(heads: heads)
        let H = heads.rows
        let coder = try recordCodec(layout: layout)
        let codeBytes = coder.codeBytes
        let vectorsOut = try layout.createVectors(count: n, dimension: d, type: storedType)
        // Flat codes are the vectors.dat rows themselves (pack reads them from there).
        let codesOut = coder.codesAreVectorRows ? nil : try SequentialFileWriter(path: layout.codesPath)
        let placement = IndexLayout.VectorPlacement(rowBytes: d * storedType.size)
        let reader = try VectorFileReader(path: inputPath)
        let rowBytes = d * header.elementType.size
        let rows = plan.chunkRows
        let raw = UnsafeMutableRawPointer.allocate(byteCount: rows * rowBytes, alignment: 64)
        let floats = Matrix(rows: rows, cols: d)
        let outHeads = UnsafeMutablePointer<UInt32>.allocate(capacity: rows * 8)
        let outDist = UnsafeMutablePointer<Float>.allocate(capacity: rows * 8)
        let outCount = UnsafeMutablePointer<UInt8>.allocate(capacity: rows)
        let codes = UnsafeMutableRawPointer.allocate(byteCount: max(1, rows * codeBytes), alignment: 64)
        defer { raw.deallocate(); outHeads.deallocate(); outDist.deallocate(); outCount.deallocate(); codes.deallocate() }
        let K = min(options.candidateHeads, H)
        let T = max(1, plan.threads)
        let pivots = SearchPivots(heads: heads)
        let workers = (0..<T).map { _ in AssignWorker(heads: H, beam: K + 32, degree: graph.degree, pivots: pivots.count, encodeScratch: coder.encodeScratchFloats) }
        let spiller = RunSpiller(directory: buildDirectory, prefix: Self.assignRunPrefix, capacityRecords: plan.runRecords, progress: progress)
        var row = 0
        progress.begin("assign: closure assignment (≤ \(options.replicas) of \(K) nearest heads, \(T) thread(s))", total: UInt64(n))
        while true {
            let got = try reader.read(maxRows: rows, into: raw)
            if got == 0 { break }
            ElementConversion.toFloat(UnsafeRawPointer(raw), header.elementType, count: got * d, into: floats.data)
            for i in 0..<got {
                let v = floats.row(i)
                try checkFinite(v, d: d, row: row + i)
                if options.metric == .cosine { try normalizeOrThrow(v, d: d, row: row + i) }
            }
            let job = AssignChunk(graph: graph, heads: heads, pivots: pivots, codec: coder, floats: floats.data, d: d, K: K,
                                  replicas: options.replicas, rngFactor: options.rngFactor, outHeads: outHeads, outDist: outDist,
                                  outCount: outCount, codes: codes, codeBytes: codeBytes)
            if T == 1 {
                job.run(rows: 0..<got, worker: workers[0])
            } else {
                let ws = workers
                DispatchQueue.concurrentPerform(iterations: T) { t in
                    job.run(rows: (got * t / T)..<(got * (t + 1) / T), worker: ws[t])
                }
            }
            let vectorRows = coder.codesAreVectorRows ? UnsafeRawPointer(codes)
                : options.metric == .cosine ? UnsafeRawPointer(floats.data) : UnsafeRawPointer(raw)
            try layout.appendVectors(vectorsOut, vectorRows, first: row, count: got, placement: placement)
            for i in 0..<got {
                let m = Int(outCount[i])
                for c in 0..<m {
                    try spiller.append(.assignment(head: Int(outHeads[i * 8 + c]), distance: outDist[i * 8 + c], id: UInt32(row + i),
                                                   replicas: m, primary: c == 0))
                }
            }
            if let codesOut { try codesOut.write(UnsafeRawPointer(codes), count: got * codeBytes) }
            row += got
            progress.advance(UInt64(got))
        }
        guard row == n else { throw FathomError(.malformedFile, "input ended after \(row) of \(n) vectors", path: inputPath) }
        try layout.finishVectors(vectorsOut, count: n, dimension: d, type: storedType)
        try codesOut?.finish()
        let runs = try spiller.finish()
        progress.end("\(spiller.total) records in \(runs.count) sorted run(s)")

        // The cap: postings keep their `cap` nearest records (distance, then id). One merge
        // counts each posting's records and lists the cut ones by vector id.
        let cap = plan.postingCapacity
        var counts = [UInt32](repeating: 0, count: H)
        var cutRecords = 0
        do {
            let cuts = RunSpiller(directory: buildDirectory, prefix: Self.cutRunPrefix, capacityRecords: plan.runRecords)
            let merger = try RunMerger.open(runs: runs, bufferBytes: plan.mergeBufferBytes, maxFanIn: 4096,
                                            scratchDirectory: buildDirectory, prefix: Self.assignRunPrefix)
            progress.begin("assign: merging \(runs.count) run(s), posting cap \(cap)", total: UInt64(merger.total))
            var k = 0
            while let r = try merger.next() {
                let h = r.head
                guard h < H, r.id < UInt32(n) else {
                    throw FathomError(.corruptIndex, "run record names head \(h) / vector \(r.id) beyond \(H) heads / \(n) vectors; delete the build directory and rebuild", path: buildDirectory)
                }
                if counts[h] < UInt32(cap) { counts[h] += 1 } else {
                    cutRecords += 1
                    try cuts.append(SortRecord(key: UInt64(r.id), id: r.id, aux: r.aux))
                }
                k += 1
                if k & 0xFFFF == 0 { progress.advance(0x10000) }
            }
            progress.end("\(cutRecords) records cut")
            _ = try cuts.finish()
        }

        // Orphans: vectors whose every record was cut (as many cut records as replicas).
        // Each goes back to the nearest of its `replicas` nearest heads that holds fewer
        // than cap + slack records (the cap relaxed by a bounded slack); only when all of
        // those are that full does the search widen, nearest first, under the same bound.
        let capSlack = cap + plan.postingSlack
        var orphansFixed = 0, orphansOutside = 0
        let cutRuns = try layout.runFiles(prefix: Self.cutRunPrefix)
        if !cutRuns.isEmpty {
            let orphans = RunSpiller(directory: buildDirectory, prefix: Self.orphanRunPrefix, capacityRecords: min(plan.runRecords, 1 << 20))
            let merger = try RunMerger.open(runs: cutRuns, bufferBytes: plan.mergeBufferBytes, maxFanIn: 4096,
                                            scratchDirectory: buildDirectory, prefix: Self.cutRunPrefix)
            let store = try RandomAccessFile(path: layout.vectorsPath)
            let buf = UnsafeMutableRawPointer.allocate(byteCount: d * storedType.size, alignment: 64)
            let q = Matrix(rows: 1, cols: d)
            let widest = min(H, 16384)
            let wideIds = UnsafeMutablePointer<UInt32>.allocate(capacity: widest + 32)
            let wideDist = UnsafeMutablePointer<Float>.allocate(capacity: widest + 32)
            defer { buf.deallocate(); wideIds.deallocate(); wideDist.deallocate() }
            let scratch = workers[0].scratch
            let nearest = max(1, options.replicas)
            func place(_ id: UInt32) throws {
                // Orphans arrive in id order: these reads go forward through vectors.dat.
                try store.read(into: buf, count: d * storedType.size, at: placement.offset(Int(id)))
                ElementConversion.toFloat(UnsafeRawPointer(buf), storedType, count: d, into: q.data)
                var width = max(K, nearest)
                var from = 0
                while true {
                    let found = graph.search(FloatHeads(query: q.data, heads: heads), k: width, listSize: width + 32, scratch: scratch,
                                             outIds: wideIds, outDist: wideDist,
                                             entries: pivots.nearest(q.data, scratch: workers[0].pivotDist, out: workers[0].entries))
                    for c in from..<found where counts[Int(wideIds[c])] < UInt32(capSlack) {
                        counts[Int(wideIds[c])] += 1
                        try orphans.append(SortRecord(key: SortRecord.assignment(head: Int(wideIds[c]), distance: wideDist[c], id: id,
                                                                                 replicas: 0, primary: true).key,
                                                      id: id, aux: SortRecord.orphanFlag))
                        orphansFixed += 1
                        if c >= nearest { orphansOutside += 1 }
                        return
                    }
                    if width >= widest {
                        throw FathomError(.invalidArgument, "vector \(id) fits in no posting: its \(found) nearest postings hold \(capSlack) records each",
                                          remedies: [.raisePostingPages(atLeast: nil), .raiseHeadRatio])
                    }
                    from = found
                    width = min(widest, width * 4)
                }
            }
            var cur: UInt32 = 0, seen = 0, replicas: UInt32 = 0
            while let r = try merger.next() {
                if seen > 0 && r.id != cur {
                    if seen == Int(replicas) { try place(cur) }
                    seen = 0
                }
                cur = r.id; replicas = r.aux; seen += 1
            }
            if seen > 0 && seen == Int(replicas) { try place(cur) }
            _ = try orphans.finish()
            for p in cutRuns { try removeTree(p) }
            if orphansFixed > 0 {
                progress.note("assign: \(orphansFixed) vectors lost every posting to the size cap and went back to their nearest heads with room (cap \(cap) + slack \(plan.postingSlack)); \(orphansOutside) of them beyond their \(nearest) nearest")
            }
        }
        let w = try SequentialFileWriter(path: layout.countsPath, bufferBytes: 1 << 20)
        try w.write(array: counts.map { $0.littleEndian })
        try w.finish()
        let meta = try JSONSerialization.data(withJSONObject: ["cut_records": cutRecords, "orphans_fixed": orphansFixed,
                                                              "orphans_outside_nearest": orphansOutside], options: [.sortedKeys])
        let mw = try SequentialFileWriter(path: layout.assignMetaPath, bufferBytes: 4096)
        try mw.write([UInt8](meta)); try mw.finish()
    }

    // MARK: stage: pack

    func packStage(plan: BuildPlan, layout: IndexLayout) throws -> Manifest.Stats {
        let n = plan.count
        // Only the count: pack's RAM plan holds no head vectors (H × d × 4 bytes); loading
        // them here put the build over its budget by their size.
        let H = try layout.headCount()
        let cap = plan.postingCapacity
        let coder = try recordCodec(layout: layout)
        let recordBytes = coder.recordBytes, codeBytes = coder.codeBytes
        guard recordBytes == plan.recordBytes else {
            throw FathomError(.corruptIndex, "the codec \(coder.summary) makes \(recordBytes)-byte records, the plan \(plan.recordBytes); delete the build directory and rebuild", path: layout.codecPath)
        }
        var counts = [UInt32](repeating: 0, count: H)
        do {
            let f = try RandomAccessFile(path: layout.countsPath)
            guard f.size == UInt64(H * 4) else {
                throw FathomError(.corruptIndex, "counts.tmp has \(f.size) bytes, \(H) heads need \(H * 4); delete the build directory and rebuild", path: layout.countsPath)
            }
            try counts.withUnsafeMutableBytes { if H > 0 { try f.read(into: $0.baseAddress!, count: H * 4, at: 0) } }
            for i in 0..<H { counts[i] = UInt32(littleEndian: counts[i]) }
        }
        // A shard packs only its heads' records: the others are read from the runs and dropped.
        let owned = packedHeads(H)
        let all = counts
        for i in 0..<H where !owned.contains(i) { counts[i] = 0 }
        var members: [UInt64]? = shard == nil ? nil : [UInt64](repeating: 0, count: (n + 63) / 64)
        guard let metaData = FileManager.default.contents(atPath: layout.assignMetaPath),
              let meta = try? JSONSerialization.jsonObject(with: metaData) as? [String: Int],
              let cutRecords = meta["cut_records"], let orphansFixed = meta["orphans_fixed"] else {
            throw FathomError(.corruptIndex, "assign-meta.tmp is missing or unreadable; delete the build directory and rebuild", path: layout.assignMetaPath)
        }
        let runs = try layout.runFiles(prefix: Self.assignRunPrefix) + layout.runFiles(prefix: Self.orphanRunPrefix)
        let merger = try RunMerger.open(runs: runs, bufferBytes: plan.mergeBufferBytes, maxFanIn: 4096,
                                        scratchDirectory: buildDirectory, prefix: "pack", deleteInputs: false)
        let source = coder.codesAreVectorRows
            ? try RowChunkReader(path: layout.vectorsPath, rowBytes: codeBytes, placement: IndexLayout.VectorPlacement(rowBytes: codeBytes))
            : try RowChunkReader(path: layout.codesPath, rowBytes: codeBytes, placement: nil)
        if !coder.codesAreVectorRows {
            guard source.file.size == UInt64(n) * UInt64(codeBytes) else {
                throw FathomError(.corruptIndex, "codes.tmp has \(source.file.size) bytes, \(n) codes of \(codeBytes) B need \(n * codeBytes); delete the build directory and rebuild", path: layout.codesPath)
            }
        }
        let bucketBytes = max(plan.packBucketBytes, (cap + plan.postingSlack) * recordBytes)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: bucketBytes, alignment: 4096)
        let slots = bucketBytes / recordBytes
        let pairs = UnsafeMutablePointer<UInt64>.allocate(capacity: max(1, slots))
        defer { buf.deallocate(); pairs.deallocate() }
        let out = try SequentialFileWriter(path: layout.postingsPath)
        try out.pad(to: 4096)
        var entries = [PostingEntry](repeating: PostingEntry(offset: 0, count: 0, pages: 0, crc: 0), count: H)
        var cursor: UInt64 = 4096
        var records = 0, empty = 0, maxRecords = 0
        let attrs = !withAttributes ? nil : try AttributeStore.readAttributes(path: buildDirectory + "/" + AttributeStore.attrsFile)
        var summaries = [AttributeSummary]()
        var pending = try merger.next()
        var passes = 0
        progress.begin("pack: writing \(H) postings", total: UInt64(H))
        var h = 0
        while h < H {
            // A bucket: the postings h ..< h1 whose records fit the bucket buffer.
            var h1 = h, used = 0
            while h1 < H && (h1 == h || used + Int(counts[h1]) * recordBytes <= bucketBytes) {
                used += Int(counts[h1]) * recordBytes; h1 += 1
            }
            guard used <= bucketBytes else {
                throw FathomError(.corruptIndex, "posting \(h) has \(counts[h]) records, over the cap \(cap); delete the build directory and rebuild", path: layout.countsPath)
            }
            // Members, in posting order (the merge's order: distance, then id).
            var slot = 0
            for hh in h..<h1 {
                var kept = 0, found = 0
                let start = slot
                let mine = owned.contains(hh)
                while let r = pending, r.head == hh {
                    let orphan = r.aux & SortRecord.orphanFlag != 0
                    if orphan || kept < cap {
                        if !orphan { kept += 1 }
                        found += 1
                        if mine {
                            guard slot < slots, Int(r.id) < n else {
                                throw FathomError(.corruptIndex, "posting \(hh) holds more records than counts.tmp says (\(counts[hh])) or an id ≥ \(n); delete the build directory and rebuild", path: buildDirectory)
                            }
                            (buf + slot * recordBytes).storeBytes(of: r.id.littleEndian, as: UInt32.self)
                            pairs[slot] = UInt64(r.id) << 32 | UInt64(slot)
                            members?[Int(r.id) >> 6] |= 1 << UInt64(r.id & 63)
                            slot += 1
                        }
                    }
                    pending = try merger.next()
                }
                guard found == Int(all[hh]) else {
                    throw FathomError(.corruptIndex, "posting \(hh) has \(found) records in the runs but \(all[hh]) in counts.tmp; delete the build directory and rebuild", path: buildDirectory)
                }
            }
            // One forward pass over the codes fills every record of the bucket.
            sortInPlace(pairs, slot, by: <)
            var j = 0
            while j < slot {
                let id = Int(pairs[j] >> 32)
                try source.load(from: id, count: n)
                while j < slot, Int(pairs[j] >> 32) < source.end {
                    let s = Int(pairs[j] & 0xFFFF_FFFF)
                    (buf + s * recordBytes + 4).copyMemory(from: source.row(Int(pairs[j] >> 32)), byteCount: codeBytes)
                    j += 1
                }
            }
            passes += 1
            // Write the bucket's postings in order, page-aligned as docs/format.md says.
            var off = 0
            for hh in h..<h1 {
                let c = Int(counts[hh])
                if let attrs {
                    var ids = [UInt32](repeating: 0, count: c)
                    for k in 0..<c { ids[k] = UInt32(littleEndian: (buf + (off + k) * recordBytes).loadUnaligned(as: UInt32.self)) }
                    summaries.append(AttributeSummary.summarize(ids: ids, table: attrs.0, quantized: attrs.1))
                }
                if c == 0 { if owned.contains(hh) { empty += 1 }; entries[hh] = PostingEntry(offset: cursor, count: 0, pages: 0, crc: 0); progress.advance(); continue }
                let bytes = UInt64(c * recordBytes)
                let rem = bytes % 4096
                let inPage = cursor % 4096
                if rem == 0 || inPage + rem > 4096 { if inPage != 0 { cursor += 4096 - inPage } }
                let p = buf + off * recordBytes
                try out.pad(to: cursor)
                try out.write(UnsafeRawPointer(p), count: Int(bytes))
                let pages = UInt32((cursor % 4096 + bytes + 4095) / 4096)
                entries[hh] = PostingEntry(offset: cursor, count: UInt32(c), pages: pages, crc: crc32c(p, Int(bytes), 0))
                cursor += bytes
                records += c
                maxRecords = max(maxRecords, c)
                off += c
                progress.advance()
            }
            h = h1
        }
        guard pending == nil else {
            throw FathomError(.corruptIndex, "the runs hold records for head \(pending!.head) beyond the \(H) heads; delete the build directory and rebuild", path: buildDirectory)
        }
        // Pad to whole pages so every posting read stays inside the file.
        let end = (cursor + 4095) / 4096 * 4096
        try out.pad(to: end)
        try out.patch(coder.postingsHeader(records: records, payloadBytes: end - 4096).encode(), at: 0)
        try out.finish()
        try layout.writePostingTable(entries)
        if attrs != nil { try AttributeStore.writeSummaries(summaries, path: buildDirectory + "/" + AttributeStore.summariesFile) }
        progress.end("\(records) records, \(empty) empty postings, \(passes) bucket(s)\(shard == nil ? "" : " (heads \(owned.lowerBound)..<\(owned.upperBound) of \(H))")")
        var vectorsKept = plan.count
        if let members {
            var ids = [UInt32]()
            for (w, word) in members.enumerated() where word != 0 {
                for b in 0..<64 where word & (1 << UInt64(b)) != 0 { ids.append(UInt32(w * 64 + b)) }
            }
            try writeShardVectors(layout: layout, members: ids, count: n)
            vectorsKept = ids.count
        }
        // A shard's replicas per vector are over the vectors it holds.
        return Manifest.Stats(records: records, mean_replicas: Double(records) / Double(max(vectorsKept, 1)),
                              cut_records: cutRecords, orphans_fixed: orphansFixed,
                              orphans_outside_nearest: meta["orphans_outside_nearest"], empty_postings: empty,
                              max_posting_records: maxRecords, posting_bytes: end)
    }
}

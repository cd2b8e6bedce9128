import ArgumentParser
import Fathom
import FathomCodecs
import Foundation

/// How `insert` and `delete` keep the index good (docs/updates.md, "Keeping quality").
struct MaintenanceOptions: ParsableArguments {
    @Option(name: .customLong("delta-memory"), help: "RAM the delta tier may hold (records not yet written to their lists, inserted vectors not yet on disk), e.g. 64MiB; past it, maintenance writes them out.")
    var deltaMemory: ByteSize = ByteSize(bytes: UInt64(UpdatePolicy().deltaMemory))
    @Flag(name: .customLong("no-maintenance"), help: "Do not split, merge, reassign or write out the delta tier (updates only; `fathom checkpoint` folds them later).")
    var noMaintenance = false

    var policy: UpdatePolicy {
        var p = UpdatePolicy()
        p.deltaMemory = Int(clamping: deltaMemory.bytes)
        p.background = !noMaintenance
        return p
    }

    /// Runs maintenance until none is due (unless disabled); says what it did on stderr.
    func finish(_ idx: MutableVectorIndex, quiet: Bool) throws -> MaintenanceStats {
        if noMaintenance { return idx.maintenanceStats }
        if let e = idx.maintenanceError { throw e }
        let t0 = Date()
        let s = try idx.maintain()
        if !quiet {
            FileHandle.standardError.write(String(format: "maintenance: %d splits, %d merges, %d vectors reassigned, %d lists written, %d vectors spilled, %d deleted records reclaimed; %d heads (%d retired); delta tier %@ of %@ (%.1f s after the updates)\n",
                                                  s.splits, s.merges, s.reassigned, s.relocated, s.spilledRows, s.reclaimedRecords, s.heads, s.retiredHeads,
                                                  formatBytes(UInt64(s.deltaBytes)), formatBytes(UInt64(s.deltaBound)), Date().timeIntervalSince(t0)).data(using: .utf8)!)
        }
        return s
    }

    static func json(_ s: MaintenanceStats) -> String {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = .sortedKeys
        return String(data: try! e.encode(s), encoding: .utf8)!
    }
}

struct InsertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "insert",
        abstract: "Insert (or with --upsert, replace) vectors in an index in place, durably.",
        discussion: """
        Vectors are appended to their nearest postings by the build's assignment rule and logged
        in DIR/updates.wal; each batch of --batch vectors is made durable with one fsync (group
        commit) before the next starts, so a batch acknowledged on stdout survives a crash.
        Labels: one decimal per line (--labels), else continuing after the largest label in the
        index. An index built with attributes needs --attributes: one row per inserted vector, in
        the formats and with the columns of `build --attributes`; a category or tag value the
        index was not built with is refused (rebuild to add it). A bad row (dimension, NaN, a label already present without --upsert) rejects its
        batch, naming file and offset; earlier batches stay. One writer at a time per index
        (DIR.fathom-write.lock). Searches (`fathom search`) see the updates. docs/updates.md.
        """
    )
    @Option(help: ArgumentHelp("Index directory.", valueName: "dir")) var index: String
    @Option(help: ArgumentHelp("Vectors to insert (.fbin, .fvecs, .npy …), float32.", valueName: "path")) var input: String
    @Option(help: ArgumentHelp("Their labels, one decimal per line (default: after the largest label).", valueName: "path")) var labels: String?
    @Option(help: ArgumentHelp("Their attributes (CSV with a header, or JSON lines .jsonl), one row per vector, the index's columns; required when the index has attributes.", valueName: "path")) var attributes: String?
    @Flag(help: "Replace the vector of a label already in the index instead of failing.") var upsert = false
    @Option(help: "Vectors per durable batch (one fsync each).") var batch: Int = 10_000
    @Flag(name: .customLong("print-acks"), help: "After each durable batch print `ack ROWS LOGBYTES` on stdout: rows acknowledged so far and the log bytes known durable (for crash tests).") var printAcks = false
    @OptionGroup var maintenance: MaintenanceOptions
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func validate() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
    }

    func run() throws {
        try runReportingErrors {
            let progress = ProgressReporter(enabled: !quiet)
            let idx = try MutableVectorIndex.open(at: index, policy: maintenance.policy)
            defer { idx.close() }
            let header = try VectorFileHeader.inspect(path: input, format: nil)
            guard header.elementType == .float32 else {
                throw FathomError(.invalidArgument, "the input holds \(header.elementType.rawValue) vectors; the index stores float32: convert them first (`fathom convert`)", path: input)
            }
            guard header.dimension == idx.dimension else {
                throw FathomError(.dimensionMismatch, "the input has dimension \(header.dimension) but the index \(index) has \(idx.dimension)", path: input, offset: 4)
            }
            let n = header.count
            let given = try labels.map { try LabelsFile.parseText(path: $0, expected: n) }
            let attributeRows = try attributes.map { path -> [[String: AttributeValue]] in
                guard let schema = idx.attributeSchema else {
                    throw FathomError(.invalidArgument, "the index \(index) has no attributes; insert without --attributes (or rebuild it with them)", path: path)
                }
                let t = path.hasSuffix(".jsonl") || path.hasSuffix(".json")
                    ? try AttributeTable.loadJSONLines(path: path, schema: schema.withoutDictionaries, expectedRows: n)
                    : try AttributeTable.loadCSV(path: path, schema: schema.withoutDictionaries, expectedRows: n)
                let names = t.schema.names
                return (0..<t.count).map { r in
                    Dictionary(uniqueKeysWithValues: names.indices.map { (names[$0], t.value(row: r, column: $0)) })
                }
            }
            if attributeRows == nil, let schema = idx.attributeSchema {
                throw FathomError(.invalidArgument, "the index \(index) has attributes (\(schema.names.joined(separator: ", "))): give each inserted vector its row with --attributes", path: index)
            }
            let first = idx.maxLabel.map { $0 &+ 1 } ?? 0
            if given == nil, n > 0, idx.maxLabel == UInt64.max { throw FathomError(.invalidArgument, "the largest label is 2^64 − 1: give --labels", path: index) }
            let reader = try VectorFileReader(path: input)
            let m = Matrix(rows: min(batch, max(n, 1)), cols: header.dimension)
            var done = 0
            var latencies = [Double]()
            let t0 = Date()
            progress.begin("insert: \(n) vectors in batches of \(batch)", total: UInt64(n))
            while done < n {
                let k = try reader.readFloats(maxRows: min(batch, n - done), into: m.data)
                if k == 0 { throw FathomError(.malformedFile, "input ended after \(done) of \(n) vectors", path: input) }
                let view = Matrix(rows: k, cols: m.cols)
                view.data.update(from: m.data, count: k * m.cols)
                try checkVectors(view, path: input, what: "vectors to insert", one: "vector", dimension: idx.dimension, against: "the index \(index)", metric: nil, firstRow: done)
                let ls = given.map { Array($0[done..<done + k]) } ?? (0..<k).map { first + UInt64(done + $0) }
                let b0 = Date()
                do {
                    try idx.insert(labels: ls, vectors: UnsafeBufferPointer(start: view.data, count: k * m.cols), replace: upsert,
                                   attributes: attributeRows.map { Array($0[done..<done + k]) })
                } catch var e as FathomError {
                    if let r = Self.row(in: e.message) {
                        let attributeError = e.message.drop { $0 != ":" }.dropFirst(2).hasPrefix("attribute")
                        e.message = "input row \(done + r) (label \(ls[r])): " + e.message
                        if attributeError, let ap = attributes { e.path = ap; e.offset = nil }
                        else if e.code == .invalidArgument, let lp = labels { e.path = lp } else {
                            e.path = input
                            e.offset = UInt64(header.dataOffset) + UInt64(done + r) * UInt64(header.recordStride)
                        }
                    } else if e.path == nil { e.path = index }
                    if done > 0 { e.message += " (the \(done) vectors before this batch were inserted and are durable)" }
                    throw e
                }
                latencies.append(Date().timeIntervalSince(b0))
                done += k
                if printAcks { FileHandle.standardOutput.write("ack \(done) \(idx.durableLogBytes)\n".data(using: .utf8)!) }
                progress.advance(UInt64(k))
            }
            progress.end()
            let secs = Date().timeIntervalSince(t0)
            let sorted = latencies.sorted()
            let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
            let stats = try maintenance.finish(idx, quiet: quiet)
            if json {
                print(String(format: "{\"inserted\":%d,\"seconds\":%.3f,\"vectors_per_second\":%.1f,\"batches\":%d,\"p99_batch_ms\":%.2f,\"first_label\":%@,\"maintenance\":%@}",
                             done, secs, Double(done) / max(secs, 1e-9), latencies.count, p99 * 1000, given == nil ? "\(first)" : "null", MaintenanceOptions.json(stats)))
            } else {
                print("inserted \(done) vectors into \(index) in \(latencies.count) durable batches: \(String(format: "%.0f", Double(done) / max(secs, 1e-9))) vectors/s, p99 batch \(String(format: "%.1f", p99 * 1000)) ms" + (given == nil && done > 0 ? ", labels \(first)…\(first + UInt64(done - 1))" : ""))
            }
        }
    }

    /// The batch row a library error names ("row 12: …").
    static func row(in message: String) -> Int? {
        guard message.hasPrefix("row ") else { return nil }
        return Int(message.dropFirst(4).prefix { $0.isNumber })
    }
}

struct DeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete vectors from an index by label, durably.",
        discussion: """
        Labels: one decimal per line. A label not in the index is reported on stderr and skipped
        (not an error). The deletes are logged in DIR/updates.wal and made durable with one
        fsync before the summary is printed. docs/updates.md.
        """
    )
    @Option(help: ArgumentHelp("Index directory.", valueName: "dir")) var index: String
    @Option(help: ArgumentHelp("Labels to delete, one decimal per line.", valueName: "path")) var labels: String
    @OptionGroup var maintenance: MaintenanceOptions
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func run() throws {
        try runReportingErrors {
            let idx = try MutableVectorIndex.open(at: index, policy: maintenance.policy)
            defer { idx.close() }
            let ls = try LabelsFile.parseText(path: labels, unique: false)
            let progress = ProgressReporter(enabled: !quiet)
            progress.begin("delete: \(ls.count) labels", total: UInt64(max(ls.count, 1)))
            var deleted = 0, unknown = [UInt64]()
            for l in ls { if try idx.delete(label: l) { deleted += 1 } else { unknown.append(l) } }
            CrashTestPause.point("delete.applied")
            try idx.flush()
            progress.end()
            CrashTestPause.point("delete.flushed")
            if !unknown.isEmpty && !quiet {
                FileHandle.standardError.write("warning: \(unknown.count) label(s) not in the index, skipped: \(unknown.prefix(10).map(String.init).joined(separator: ", "))\(unknown.count > 10 ? ", …" : "")\n".data(using: .utf8)!)
            }
            let stats = try maintenance.finish(idx, quiet: quiet)
            if json { print("{\"deleted\":\(deleted),\"unknown\":\(unknown.count),\"maintenance\":\(MaintenanceOptions.json(stats))}") }
            else { print("deleted \(deleted) vectors from \(index)\(unknown.isEmpty ? "" : "; \(unknown.count) unknown label(s) skipped")") }
            CrashTestPause.point("delete.acknowledged")
        }
    }
}

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Fold an index's update log into a new index version (rebuild + atomic publish).",
        discussion: """
        Writes the live vectors and their labels next to DIR, rebuilds the index with the
        parameters in its manifest and publishes it atomically as `fathom build` does; the new
        version has no update log. Searches of DIR see the old version or the new one. Labels
        are kept; internal ids change. docs/updates.md.
        """
    )
    @Option(help: ArgumentHelp("Index directory.", valueName: "dir")) var index: String
    @Option(name: .customLong("memory-budget"), help: "Peak memory (RSS) of the rebuild, e.g. 2GiB.")
    var memoryBudget: ByteSize = ByteSize(bytes: 2 << 30)
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func run() throws {
        try runReportingErrors {
            let idx = try MutableVectorIndex.open(at: index)
            defer { idx.close() }
            let before = idx.loggedUpdates
            try idx.checkpoint(memoryBudget: memoryBudget.bytes, progress: ProgressReporter(enabled: !quiet))
            print("checkpointed \(index): \(before) logged updates folded, \(idx.count) vectors")
        }
    }
}

import Fathom
import FathomCodecs
import Foundation

/// The dataset tools (the CLI's gen, gt, convert and info commands run them): synthetic
/// data, exact ground truth, format conversion and file summaries.
///
/// Thread safety: stateless; each call owns the files it opens, so calls may run on any
/// thread (two calls writing the same output path race as any two writers do).
public enum DatasetTools {
    /// Writes a synthetic dataset (see ``SyntheticGenerator``) in chunks of 64K rows.
    public static func generate(n: Int, dim: Int, clusters: Int, intrinsicDim: Int?, seed: UInt64,
                                baseOut: String, queries: Int, queryOut: String?, ood: Bool,
                                attributesOut: String?, correlation: Double,
                                progress: ProgressReporter) throws {
        let gen = SyntheticGenerator(dim: dim, clusters: clusters, intrinsicDim: intrinsicDim, seed: seed)
        let chunk = max(1, min(65536, (64 << 20) / (dim * 4)))
        let buf = Matrix(rows: chunk, cols: dim)
        var labels = [Int32](repeating: 0, count: chunk)
        var attrs: AttributeWriter? = nil
        if let a = attributesOut { attrs = try AttributeWriter(path: a, generator: gen, seed: seed, correlation: correlation) }

        let writer = try VectorFileWriter(path: baseOut, format: VectorFileFormat.fromPath(baseOut), elementType: .float32, dimension: dim)
        progress.begin("gen base (\(n) × \(dim), \(clusters) clusters)", total: UInt64(n))
        var done = 0
        while done < n {
            let rows = min(chunk, n - done)
            labels.withUnsafeMutableBufferPointer { lb in
                gen.generate(.base, first: done, rows: rows, into: buf.data, labels: lb.baseAddress!)
            }
            try writer.append(UnsafeRawPointer(buf.data), count: rows)
            if attrs != nil { try attrs!.write(first: done, rows: rows, vectors: buf, labels: labels) }
            done += rows
            progress.advance(UInt64(rows))
        }
        try writer.close()
        try attrs?.close()
        progress.end()

        if queries > 0, let qo = queryOut {
            let qw = try VectorFileWriter(path: qo, format: VectorFileFormat.fromPath(qo), elementType: .float32, dimension: dim)
            var qdone = 0
            while qdone < queries {
                let rows = min(chunk, queries - qdone)
                gen.generate(.queries, first: qdone, rows: rows, ood: ood, into: buf.data)
                try qw.append(UnsafeRawPointer(buf.data), count: rows)
                qdone += rows
            }
            try qw.close()
            progress.note("wrote \(queries) \(ood ? "out-of-distribution " : "")queries to \(qo)")
        }
    }

    /// Exact ground truth written as big-ann `.ibin` (see ``ExactSearch``); with `filter`, only
    /// base vectors whose attributes (`attributes`: CSV or .jsonl, one row per base vector)
    /// match it are neighbours. sgemm runs on the OpenBLAS threads the process set.
    public static func groundTruth(base: String, queries: String, k: Int, metric: Metric, output: String,
                                   memoryBudget: UInt64, attributes: String? = nil, filter: String? = nil,
                                   progress: ProgressReporter) throws {
        let q = try Matrix.load(vectorFile: queries)
        var allowed: [Bool]? = nil
        if let filter {
            guard let attributes else {
                throw FathomError(.invalidArgument, "a filter needs the attributes of the base vectors, and no attribute file was given")
            }
            let n = try VectorFileHeader.inspect(path: base).count
            let table = attributes.hasSuffix(".jsonl") ? try AttributeTable.loadJSONLines(path: attributes, expectedRows: n)
                                                       : try AttributeTable.loadCSV(path: attributes, expectedRows: n)
            let bound = try FilterParser.parse(filter).bind(to: table.schema)
            var mask = [Bool](repeating: false, count: n)
            for id in bound.matchingRows(in: table) { mask[Int(id)] = true }
            progress.note("gt: \(mask.filter { $0 }.count) of \(n) vectors match the filter")
            allowed = mask
        }
        let gt = try ExactSearch.groundTruth(basePath: base, queries: q, k: k, metric: metric,
                                             memoryBudget: memoryBudget, allowed: allowed, progress: progress)
        try gt.write(path: output)
    }

    /// Streams rows from one container format to another (the element type is kept).
    public static func convert(input: String, output: String, from: String?, to: String?,
                               progress: ProgressReporter) throws {
        let inFormat = try from.map { try parseFormat($0) } ?? VectorFileFormat.fromPath(input)
        let outFormat = try to.map { try parseFormat($0) } ?? VectorFileFormat.fromPath(output)
        let reader = try VectorFileReader(path: input, format: inFormat)
        let writer = try VectorFileWriter(path: output, format: outFormat, elementType: reader.elementType,
                                          dimension: reader.dimension)
        let rowBytes = reader.dimension * reader.elementType.size
        let chunk = max(1, (16 << 20) / rowBytes)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk * rowBytes, alignment: 64)
        defer { buf.deallocate() }
        progress.begin("convert \(inFormat.rawValue) → \(outFormat.rawValue)", total: UInt64(reader.count))
        while true {
            let rows = try reader.read(maxRows: chunk, into: buf)
            if rows == 0 { break }
            try writer.append(UnsafeRawPointer(buf), count: rows)
            progress.advance(UInt64(rows))
        }
        try writer.close()
        progress.end()
    }

    static func parseFormat(_ s: String) throws -> VectorFileFormat {
        guard let f = VectorFileFormat(rawValue: s.lowercased()) else {
            throw FathomError(.unsupportedFormat, "unknown format '\(s)'; known: \(VectorFileFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return f
    }

    /// A vector file's format, n, d, element type, size, and a summary of norms
    /// (min / mean / max over up to 100,000 evenly spaced rows).
    public static func describe(path: String, json: Bool) throws -> String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            return try IndexInfo.describe(directory: path, json: json)
        }
        let h = try VectorFileHeader.inspect(path: path, format: nil)
        let mapped = try MappedVectorFile(path: path, format: h.format)
        let sampleCount = min(h.count, 100_000)
        var mn = Float.infinity, mx: Float = 0, sum = 0.0, nonFinite = 0
        let row = UnsafeMutablePointer<Float>.allocate(capacity: max(h.dimension, 1))
        defer { row.deallocate() }
        for s in 0..<sampleCount {
            let i = h.count <= sampleCount ? s : Int(Double(s) * Double(h.count) / Double(sampleCount))
            mapped.rowFloats(i, into: row)
            let n2 = Distance.dot(row, row, h.dimension)
            if !n2.isFinite { nonFinite += 1; continue }
            let nrm = n2.squareRoot()
            mn = min(mn, nrm); mx = max(mx, nrm); sum += Double(nrm)
        }
        let fileSize = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
        let mean = sampleCount > nonFinite ? sum / Double(sampleCount - nonFinite) : 0
        if json {
            let obj: [String: Any] = [
                "path": path, "format": h.format.rawValue, "count": h.count, "dimension": h.dimension,
                "element_type": h.elementType.rawValue, "bytes": fileSize,
                "norms": ["rows_sampled": sampleCount, "min": Double(mn), "mean": mean, "max": Double(mx), "non_finite_rows": nonFinite],
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
            return String(decoding: data, as: UTF8.self)
        }
        return """
        file:          \(path)
        format:        \(h.format.rawValue)
        vectors:       \(h.count)
        dimension:     \(h.dimension)
        element type:  \(h.elementType.rawValue)
        size:          \(formatBytes(fileSize))
        norms:         min \(String(format: "%.4g", mn))  mean \(String(format: "%.4g", mean))  max \(String(format: "%.4g", mx))  (\(sampleCount) rows sampled\(nonFinite > 0 ? ", \(nonFinite) with NaN/Inf" : ""))
        """
    }
}

/// Writes the synthetic attribute CSV of ``DatasetTools/generate``.
struct AttributeWriter {
    let handle: FileHandle
    let path: String
    let gen: SyntheticGenerator
    var rng: SeededRandom
    let correlation: Double
    let direction: [Float]
    let directionScale: Float

    init(path: String, generator: SyntheticGenerator, seed: UInt64, correlation: Double) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw FathomError(.io, "cannot create the attribute file", path: path)
        }
        handle = h
        self.path = path
        gen = generator
        rng = SeededRandom(seed: seed ^ 0xA77B)
        self.correlation = correlation
        // The first latent direction (the basis row with the largest spectrum weight).
        let d = generator.dim
        var dir = Array(generator.basis[0..<d])
        var nn: Float = 0
        for v in dir { nn += v * v }
        let norm = nn.squareRoot()
        for j in 0..<d { dir[j] /= norm }
        direction = dir
        // Std of the projection: centre spread (2.0) and within-cluster spread, times ‖basis row‖.
        directionScale = norm * Float((4.0 + 1.0).squareRoot())
        handle.write("id,uniform,correlated,category,cluster,tags\n".data(using: .utf8)!)
    }

    mutating func write(first: Int, rows: Int, vectors: Matrix, labels: [Int32]) throws {
        var out = ""
        out.reserveCapacity(rows * 48)
        let catWeights: [Double] = [0.35, 0.2, 0.12, 0.1, 0.07, 0.06, 0.04, 0.03, 0.02, 0.01]
        for i in 0..<rows {
            let u = rng.uniform()
            var p: Float = 0
            let v = vectors.row(i)
            for j in 0..<gen.dim { p += v[j] * direction[j] }
            let z = Double(p / directionScale)
            let phi = 0.5 * (1 + erf(z / 2.0.squareRoot()))
            let corr = min(0.999999, max(0, correlation * phi + (1 - correlation) * rng.uniform()))
            var cu = rng.uniform(), cat = 0
            while cat < 9 && cu >= catWeights[cat] { cu -= catWeights[cat]; cat += 1 }
            let ntags = 1 + rng.below(3)
            var tags = Set<Int>()
            while tags.count < ntags {
                // Zipf(1) over 20 tags by inverse transform on harmonic weights.
                let h = rng.uniform() * 3.5977   // H_20
                var acc = 0.0, t = 0
                while t < 19 { acc += 1 / Double(t + 1); if acc >= h { break }; t += 1 }
                tags.insert(t)
            }
            let tagText = tags.sorted().map { "t\($0)" }.joined(separator: ";")
            out += "\(first + i),\(String(format: "%.6f", u)),\(String(format: "%.6f", corr)),c\(cat),\(labels[i]),\(tagText)\n"
        }
        handle.write(out.data(using: .utf8)!)
    }

    func close() throws { try handle.close() }
}

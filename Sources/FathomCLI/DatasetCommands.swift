import ArgumentParser
import Fathom
import FathomTools
import Foundation

struct GenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gen",
        abstract: "Generate a seeded synthetic dataset (anisotropic Gaussian mixture).",
        discussion: """
        Writes float32 vectors in the format given by the output's extension (.fbin, .fvecs, .npy).
        The same --seed always gives the same bytes. With --ood the queries are drawn from a
        shifted, reflected copy of the distribution (for LeanVec-OOD experiments).
        --attributes writes a CSV with one row per base vector:
          id, uniform (float in [0,1): `uniform < s` selects a fraction s, independent of the vectors),
          correlated (float in [0,1) that follows the vectors' first latent direction, mixed with
                      noise by --correlation: `correlated < s` selects a region of space),
          category (c0..c9, skewed: c0 ≈ 35%, c9 ≈ 1%), cluster (the generating mixture component),
          tags (semicolon-separated, 1-3 of t0..t19, Zipf-distributed).
        """
    )

    @Option(help: "Number of base vectors.") var n: Int
    @Option(help: "Dimension of every vector.") var dim: Int
    @Option(help: ArgumentHelp("Output file for the base vectors (.fbin, .fvecs or .npy).", valueName: "path")) var out: String
    @Option(help: "Number of query vectors (0: none).") var queries: Int = 0
    @Option(name: .customLong("query-out"), help: ArgumentHelp("Output file for the queries (required with --queries).", valueName: "path")) var queryOut: String?
    @Option(help: "Mixture components (default: n/2000, between 16 and 1024).") var clusters: Int?
    @Option(name: .customLong("intrinsic-dim"), help: "Latent dimension of the data (default: min(dim, 32)).") var intrinsicDim: Int?
    @Option(help: "Random seed.") var seed: UInt64 = 42
    @Flag(help: "Draw queries from a shifted, reflected distribution (out of distribution).") var ood = false
    @Option(help: ArgumentHelp("Also write a CSV of attributes per base vector.", valueName: "path")) var attributes: String?
    @Option(help: "How strongly the `correlated` attribute follows the vectors, 0...1.") var correlation: Double = 1.0
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func validate() throws {
        guard n > 0 else { throw ValidationError("--n must be positive") }
        guard dim > 0, dim <= 65535 else { throw ValidationError("--dim must be between 1 and 65535") }
        guard queries >= 0 else { throw ValidationError("--queries must be >= 0") }
        if queries > 0 && queryOut == nil { throw ValidationError("--queries needs --query-out FILE") }
        if let c = clusters, c < 1 { throw ValidationError("--clusters must be >= 1") }
        guard (0...1).contains(correlation) else { throw ValidationError("--correlation must be within 0...1") }
    }

    func run() throws {
        try runReportingErrors {
            let progress = ProgressReporter(enabled: !quiet)
            let c = clusters ?? min(1024, max(16, n / 2000))
            try DatasetTools.generate(n: n, dim: dim, clusters: c, intrinsicDim: intrinsicDim, seed: seed,
                                      baseOut: out, queries: queries, queryOut: queryOut, ood: ood,
                                      attributesOut: attributes, correlation: correlation, progress: progress)
        }
    }
}

struct GroundTruthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gt",
        abstract: "Compute exact k-nearest-neighbour ground truth (big-ann .ibin).",
        discussion: """
        Brute force with OpenBLAS sgemm in blocks sized to --memory-budget, then exact Float64
        re-scoring of every pair that can enter the top k: results are exact, ties broken by the
        smaller id. Output distances: squared L2 for l2; the inner product (cosine similarity)
        for ip and cosine, descending.
        """
    )

    @Option(help: ArgumentHelp("Base vectors (any supported format).", valueName: "path")) var base: String
    @Option(help: ArgumentHelp("Query vectors (any supported format).", valueName: "path")) var queries: String
    @Option(name: .short, help: "Neighbours per query.") var k: Int = 100
    @Option(help: "Distance: l2 (squared Euclidean), ip (inner product) or cosine.") var metric: Metric = .l2
    @Option(help: ArgumentHelp("Output ground-truth file (.ibin).", valueName: "path")) var output: String
    @Option(name: .customLong("memory-budget"), help: "Peak memory to stay within (e.g. 512MiB, 4GiB).")
    var memoryBudget: ByteSize = ByteSize(bytes: 4 << 30)
    @Option(help: "OpenBLAS threads (default: 1, which is fastest on two vCPUs).") var threads: Int = 1
    @Option(help: ArgumentHelp("Attributes of the base vectors (CSV or .jsonl), for --filter.", valueName: "path")) var attributes: String?
    @Option(help: "Only vectors matching this filter are neighbours (ground truth for filtered search).") var filter: String?
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func validate() throws {
        guard k >= 1 else { throw ValidationError("-k must be >= 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
        if filter != nil && attributes == nil { throw ValidationError("--filter needs --attributes FILE") }
    }

    func run() throws {
        try runReportingErrors {
            let progress = ProgressReporter(enabled: !quiet)
            BLAS.setThreads(threads)   // this command's sgemm; the process default is 1
            let started = Date()
            let q = try loadQueries(queries)
            let n = try checkBase(base, dimension: q.cols, against: "the query file \(queries)", metric: metric)
            try checkVectors(q, path: queries, what: "queries", one: "query", dimension: nil, against: base, metric: metric)
            guard k <= n else { throw FathomError(.invalidArgument, "-k \(k) exceeds the \(n) base vectors", path: base) }
            try DatasetTools.groundTruth(base: base, queries: queries, k: k, metric: metric, output: output,
                                         memoryBudget: memoryBudget.bytes,
                                         attributes: attributes, filter: filter, progress: progress)
            progress.note(String(format: "wrote %@ in %.2f s", output, Date().timeIntervalSince(started)))
        }
    }
}

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a vector file between formats (fbin/u8bin/i8bin, fvecs/bvecs, npy).",
        discussion: "Formats come from the file extensions; --from/--to override them. The element type is kept: the output format must hold it (npy holds all)."
    )
    @Argument(help: ArgumentHelp("Input vector file.", valueName: "in")) var input: String
    @Argument(help: ArgumentHelp("Output vector file.", valueName: "out")) var output: String
    @Option(help: "Input format (default: from the extension).") var from: String?
    @Option(name: [.customLong("to"), .customLong("format")], help: "Output format (default: from the extension).") var to: String?
    @Flag(help: "Do not print progress on stderr.") var quiet = false

    func run() throws {
        try runReportingErrors {
            try DatasetTools.convert(input: input, output: output, from: from, to: to,
                                     progress: ProgressReporter(enabled: !quiet))
        }
    }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Describe a vector file (format, n, d, element type, size, norms) or an index directory."
    )
    @Argument(help: ArgumentHelp("A vector file or an index directory.", valueName: "path")) var path: String
    @Flag(help: "Print JSON on stdout.") var json = false

    func run() throws {
        try runReportingErrors {
            print(try DatasetTools.describe(path: path, json: json))
        }
    }
}

import ArgumentParser
import Fathom
import FathomObjectStore
import Foundation

/// The flags every command that reaches an object store shares.
struct ObjectStoreOptions: ParsableArguments {
    @Option(help: ArgumentHelp("S3-compatible endpoint, path-style (e.g. http://127.0.0.1:8333; default: $AWS_ENDPOINT_URL). Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (default us-east-1).", valueName: "url"))
    var endpoint: String?
    @Option(help: ArgumentHelp("Local cache directory for s3:// indexes (downloaded, verified, reused while their checksums match): CACHE/BUCKET/PREFIX.", valueName: "dir"))
    var cache: String?

    func client(partSize: ByteSize = ByteSize(bytes: 64 << 20)) throws -> S3Client {
        guard let url = endpoint ?? ProcessInfo.processInfo.environment["AWS_ENDPOINT_URL"].flatMap({ $0.isEmpty ? nil : $0 }) else {
            throw FathomError(.invalidArgument, "no object-store endpoint: give --endpoint URL (or set AWS_ENDPOINT_URL)")
        }
        guard partSize.bytes >= 5 << 20, partSize.bytes <= 5 << 30 else {
            throw FathomError(.invalidArgument, "--part-size \(partSize) is outside 5MiB … 5GiB (the S3 limits)")
        }
        return try S3Client(endpoint: url, credentials: try S3Credentials.fromEnvironment(), partSize: Int(partSize.bytes))
    }

    /// `index` itself when it is a local directory; for `s3://BUCKET/PREFIX`, pulls it into
    /// --cache (verified; cached files reused) and returns the local directory.
    func localIndex(_ index: String, flag: String, quiet: Bool) async throws -> String {
        guard S3Location.isObjectStoreURL(index) else { return index }
        guard let cache else {
            throw FathomError(.invalidArgument, "\(flag) \(index) is in an object store: give --cache DIR, a local directory to download it into")
        }
        let r = try await IndexTransfer.pull(from: try S3Location(index), client: try client(), cache: cache,
                                             progress: ProgressReporter(enabled: !quiet))
        if !quiet {
            FileHandle.standardError.write(Data("pull: \(index) → \(r.directory): \(r.upToDate ? "cache up to date" : "\(r.downloaded.count) downloaded (\(formatBytes(r.bytes))), \(r.reused.count) reused")\n".utf8))
        }
        return r.directory
    }
}

/// Runs `body`, turning a `FathomError` into its one-line report on stderr and the error
/// code's documented exit status (the async form of `runReportingErrors`).
func runReportingErrorsAsync(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let e as FathomError {
        throw report(e)
    }
}

struct PushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Upload an index directory to an S3-compatible object store, manifest last.",
        discussion: """
        Uploads every file manifest.json lists to s3://BUCKET/PREFIX/NAME, then manifest.json, so
        that a reader who finds the manifest finds every file. Each file is read once to check its
        CRC32C against the manifest (a damaged local file is refused, exit 8, before it is stored)
        and to compute the MD5 and SHA-256 the store checks the upload against; files above
        --part-size go as a multipart upload. Objects carry x-amz-meta-fathom-crc32c. Push each
        version of an index to its own prefix. docs/scale-out.md.
        """
    )
    @Option(help: ArgumentHelp("Index directory (from `fathom build`).", valueName: "dir")) var index: String
    @Option(help: ArgumentHelp("Destination, s3://BUCKET/PREFIX.", valueName: "s3-url")) var to: String
    @OptionGroup var store: ObjectStoreOptions
    @Option(name: .customLong("part-size"), help: "Files larger than this are uploaded in parts of this size (5MiB to 5GiB).")
    var partSize: ByteSize = ByteSize(bytes: 64 << 20)
    @Flag(help: "Do not print progress on stderr.") var quiet = false
    @Flag(help: "Print the result as JSON on stdout.") var json = false

    func run() async throws {
        try await runReportingErrorsAsync {
            let location = try S3Location(to)
            let r = try await IndexTransfer.push(directory: index, to: location, client: try store.client(partSize: partSize),
                                                 progress: ProgressReporter(enabled: !quiet))
            try printResult(r, json: json, text: "pushed \(index) to \(r.location): \(r.files.count) files, \(formatBytes(r.bytes)) in \(String(format: "%.1f", r.seconds)) s")
        }
    }
}

struct PullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Download an index from an S3-compatible object store into a local cache, verified.",
        discussion: """
        Reads s3://BUCKET/PREFIX/manifest.json (its self-checksum checked), keeps each cached file of
        CACHE/BUCKET/PREFIX whose size and CRC32C match it, downloads the others into
        CACHE/BUCKET/PREFIX.fathom-pull (checked, fsynced) and publishes that directory over the
        cached index atomically. A file that does not match the manifest is refused (exit 8, naming
        the object and both checksums) and the cache is left as it was. Prints the local directory.
        """
    )
    @Option(help: ArgumentHelp("Source, s3://BUCKET/PREFIX.", valueName: "s3-url")) var from: String
    @OptionGroup var store: ObjectStoreOptions
    @Flag(help: "Do not print progress on stderr.") var quiet = false
    @Flag(help: "Print the result as JSON on stdout.") var json = false

    func validate() throws {
        guard store.cache != nil else { throw ValidationError("--cache DIR is required") }
    }

    func run() async throws {
        try await runReportingErrorsAsync {
            let r = try await IndexTransfer.pull(from: try S3Location(from), client: try store.client(), cache: store.cache!,
                                                 progress: ProgressReporter(enabled: !quiet))
            if json {
                let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(r), as: UTF8.self))
            } else {
                if !quiet {
                    FileHandle.standardError.write(Data("pull: \(r.upToDate ? "cache up to date" : "\(r.downloaded.count) downloaded (\(formatBytes(r.bytes))), \(r.reused.count) reused") in \(String(format: "%.1f", r.seconds)) s\n".utf8))
                }
                print(r.directory)
            }
        }
    }
}

import ArgumentParser
import Fathom
import FathomCore
import Foundation

@main
struct FathomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fathom",
        abstract: "Fathom: billion-scale vector search from one machine (index in RAM, vectors on SSD).",
        discussion: """
        Progress and diagnostics go to stderr; results (tables, JSON) go to stdout.
        Sizes accept units: 512MiB, 2GiB, 1.5G (powers of 1024). Exit codes: docs/errors.md.
        """,
        version: "0.1.0",
        subcommands: [BuildCommand.self, SearchCommand.self, InfoCommand.self, VerifyCommand.self, GenCommand.self, GroundTruthCommand.self, ConvertCommand.self, ServeCommand.self]
    )
}

/// Runs `body`, turning a `FathomError` into a one-line message on stderr and the
/// error code's documented exit status.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as FathomError {
        FileHandle.standardError.write("error: \(e)\n".data(using: .utf8)!)
        throw ExitCode(e.code.exitCode)
    }
}

/// A byte size argument such as `2GiB`.
struct ByteSize: ExpressibleByArgument, CustomStringConvertible {
    let bytes: UInt64
    init(bytes: UInt64) { self.bytes = bytes }
    init?(argument: String) {
        guard let b = parseByteSize(argument), b > 0 else { return nil }
        bytes = b
    }
    var description: String { formatBytes(bytes) }
    var defaultValueDescription: String { formatBytes(bytes) }
}

extension Metric: ExpressibleByArgument {}

/// `--serve-memory`: bytes per vector (`32B`, `64`) or a total for the whole index (`4GiB`,
/// `512MiB`: any size with a K/M/G/T unit).
enum ServeMemory {
    static func perVector(_ text: String, vectors: Int, flag: String) throws -> Double {
        let t = text.trimmingCharacters(in: .whitespaces)
        let lower = t.lowercased()
        let total = ["k", "m", "g", "t"].contains { lower.contains($0) }
        guard let bytes = parseByteSize(t), bytes > 0 else {
            throw FathomError(.invalidArgument, "\(flag) '\(text)' is not a size: give bytes per vector (32B) or a total (4GiB)")
        }
        return total ? Double(bytes) / Double(max(vectors, 1)) : Double(bytes)
    }
}

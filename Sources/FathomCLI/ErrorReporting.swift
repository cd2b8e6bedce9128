import ArgumentParser
import Fathom
import Foundation

// How the CLI reports a library error: one line on stderr, `error: PATH at byte OFFSET:
// MESSAGE; REMEDY`, the remedies said with this CLI's flags, and the exit status of the
// error's code (docs/errors.md). The library knows neither.

extension FathomError.Code {
    /// The exit status of this code (docs/errors.md); 1 for a code this CLI does not know.
    var exitStatus: Int32 {
        switch self {
        case .invalidArgument: return 2
        case .fileNotFound: return 3
        case .malformedFile: return 4
        case .unsupportedFormat: return 5
        case .dimensionMismatch: return 6
        case .nonFiniteValue: return 7
        case .corruptIndex: return 8
        case .incompatibleIndex: return 9
        case .memoryBudget: return 10
        case .io: return 11
        case .diskFull: return 12
        case .parse: return 13
        case .resourceLimit: return 14
        case .cancelled: return 15
        default: return 1
        }
    }
}

extension FathomError.Remedy {
    /// The remedy with the CLI's flag names. `threadsFlag` is the flag that sets how many
    /// threads run at once in the command at hand (`--threads`; `--max-concurrent` for serve).
    func cliText(threadsFlag: String = "--threads") -> String {
        switch self {
        case .verifyAndRebuild: return "run `fathom verify` on the index and rebuild it"
        case .rebuildWithAttributes: return "rebuild it with --attributes FILE to filter"
        case .raiseMemoryBudget(let b): return "raise --memory-budget" + (b.map { " to at least \(formatBytes($0))" } ?? "")
        case .lowerHeadRatio: return "lower --head-ratio"
        case .raiseHeadRatio: return "raise --head-ratio"
        case .raisePostingPages(let p): return "raise --posting-pages" + (p.map { " to at least \($0)" } ?? "")
        case .useCompressingCodec: return "give a compressing --codec (lvq8, lvq4, lvq4x8)"
        case .useMetric(let m): return "use --metric \(m.rawValue)"
        case .removeVectorFromInput: return "remove it from the input"
        case .chooseAnotherDestination: return "choose another --output or remove it"
        case .freeDiskSpace: return "free space on the device or choose another --output"
        case .useFewerThreads: return "use fewer \(threadsFlag)"
        case .raiseSystemLimit(let name, let v): return "raise it: sysctl -w \(name)=\(v)"
        case .rebuildWithModel(let path, let shard):
            return "rebuild it with this model (fathom build --model \(path)\(shard.map { " --shard \($0)/N" } ?? "")) or use the model it was built with"
        }
    }
}

/// Prints `e` on stderr as the CLI reports errors and returns the exit code of its code.
func report(_ e: FathomError, threadsFlag: String = "--threads") -> ExitCode {
    let line = "error: " + e.description(remedy: { $0.cliText(threadsFlag: threadsFlag) }) + "\n"
    FileHandle.standardError.write(Data(line.utf8))
    return ExitCode(e.code.exitStatus)
}

/// Runs `body`, turning a `FathomError` into its one-line report on stderr and the error
/// code's documented exit status.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as FathomError {
        throw report(e)
    }
}

/// Prints a command's result on stdout: `value` as JSON (sorted keys, pretty) with `--json`,
/// else the line `text`.
func printResult<T: Encodable>(_ value: T, json: Bool, text: @autoclosure () -> String) throws {
    if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(value), as: UTF8.self))
    } else {
        print(text())
    }
}

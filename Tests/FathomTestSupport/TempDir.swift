import Fathom
import Foundation

/// The test process's setup, done once before the first test makes a ``TempDir`` (every
/// test that builds, opens or writes files makes one first): OpenBLAS on one thread, as the
/// CLI and the server set it at their start, so that test builds give the heads a one-thread
/// build gives (the determinism tests compare them byte for byte).
public enum TestProcess {
    private static let setUp: Void = { BLAS.setThreads(1) }()
    /// Runs the setup if it has not run yet. Thread-safe (a lazily initialized global).
    public static func prepare() { _ = setUp }
}

/// A unique temporary directory, removed with everything in it when the value is released.
///
/// Thread safety: immutable after init (`Sendable`); threads may create files in it at once.
public final class TempDir: Sendable {
    /// The directory's absolute path.
    public let path: String

    /// Creates `<tmp>/<name>-<pid>-<random>` (after ``TestProcess/prepare()``).
    public init(_ name: String = "fathom-test") {
        TestProcess.prepare()
        path = NSTemporaryDirectory() + "/\(name)-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// The path of `name` inside the directory.
    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes raw bytes to `name` and returns its path.
    @discardableResult
    public func write(_ name: String, _ bytes: [UInt8]) -> String {
        let p = file(name)
        FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }
}

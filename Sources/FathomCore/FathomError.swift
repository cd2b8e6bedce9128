import Foundation

/// The one error type Fathom throws.
///
/// Shaped like SwiftNIO's `FileSystemError`: a stable ``Code`` to switch on, a
/// message that says what happened and what to do, and the context needed to find
/// the problem (file path, byte offset, token, ...).
///
/// ```swift
/// do { _ = try VectorFileReader(path: "base.fbin") }
/// catch let error as FathomError where error.code == .malformedFile {
///     print(error)   // "base.fbin at byte 8: header says 1000 x 128 float32 ..."
/// }
/// ```
public struct FathomError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong, as a stable, extensible category.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// Stable identifier, e.g. `"malformedFile"`.
        public let rawValue: String
        /// Process exit status the CLI uses for this code (documented in docs/errors.md).
        public let exitCode: Int32
        public init(_ rawValue: String, exitCode: Int32) {
            self.rawValue = rawValue
            self.exitCode = exitCode
        }
        public var description: String { rawValue }
        public static func == (a: Code, b: Code) -> Bool { a.rawValue == b.rawValue }
        public func hash(into h: inout Hasher) { h.combine(rawValue) }

        /// A parameter or argument is out of range or inconsistent.
        public static let invalidArgument = Code("invalidArgument", exitCode: 2)
        /// The path does not exist, is a directory, or cannot be opened.
        public static let fileNotFound = Code("fileNotFound", exitCode: 3)
        /// A vector, ground-truth or attribute file does not match its declared layout.
        public static let malformedFile = Code("malformedFile", exitCode: 4)
        /// The file's format or element type is not one Fathom reads.
        public static let unsupportedFormat = Code("unsupportedFormat", exitCode: 5)
        /// Vectors or queries have a different dimension than expected.
        public static let dimensionMismatch = Code("dimensionMismatch", exitCode: 6)
        /// A vector holds NaN or infinity.
        public static let nonFiniteValue = Code("nonFiniteValue", exitCode: 7)
        /// An index file fails a checksum, size or structure check.
        public static let corruptIndex = Code("corruptIndex", exitCode: 8)
        /// The index was written by an incompatible format version or with other settings.
        public static let incompatibleIndex = Code("incompatibleIndex", exitCode: 9)
        /// The work cannot be done within the given memory budget.
        public static let memoryBudget = Code("memoryBudget", exitCode: 10)
        /// A read, write, sync or rename failed (see `errno`).
        public static let io = Code("io", exitCode: 11)
        /// The device is full (ENOSPC) or over quota.
        public static let diskFull = Code("diskFull", exitCode: 12)
        /// A filter expression or attribute file cannot be parsed.
        public static let parse = Code("parse", exitCode: 13)
        /// An operating-system resource limit was hit (e.g. aio-max-nr).
        public static let resourceLimit = Code("resourceLimit", exitCode: 14)
        /// The work was cancelled.
        public static let cancelled = Code("cancelled", exitCode: 15)
    }

    /// The category of the problem.
    public var code: Code
    /// What happened and, where possible, what to do about it.
    public var message: String
    /// The file the problem is in, if any.
    public var path: String?
    /// Byte offset in `path` where the problem was found, if known.
    public var offset: UInt64?
    /// The operating system's error number, if a system call failed.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, path: String? = nil, offset: UInt64? = nil,
                errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.offset = offset
        self.errno = errno
    }

    /// Builds an error from a failed system call, mapping ENOSPC/EDQUOT to ``Code/diskFull``.
    public static func system(_ what: String, path: String?, errno e: Int32, offset: UInt64? = nil) -> FathomError {
        let code: Code = (e == ENOSPC || e == EDQUOT) ? .diskFull : (e == ENOENT || e == EISDIR ? .fileNotFound : .io)
        var hint = ""
        if code == .diskFull { hint = "; free space on the device or choose another destination" }
        return FathomError(code, "\(what) failed: \(String(cString: strerror(e))) (errno \(e))\(hint)",
                           path: path, offset: offset, errno: e)
    }

    public var description: String {
        var s = ""
        if let path { s += path }
        if let offset { s += s.isEmpty ? "at byte \(offset)" : " at byte \(offset)" }
        if !s.isEmpty { s += ": " }
        return s + message
    }
}

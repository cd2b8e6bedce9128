import Foundation

/// The one error type Fathom throws.
///
/// Shaped like SwiftNIO's `FileSystemError`: a stable ``Code`` to switch on, a message that
/// says what happened, the context needed to find the problem (file path, byte offset, errno),
/// the ``cause`` it wraps, and what to do about it as typed ``Remedy`` values, which a front
/// end says in its own terms (the CLI names its flags, a service its request fields) and
/// ``description`` says in the library's.
///
/// ```swift
/// do { _ = try VectorFileReader(path: "base.fbin") }
/// catch let error as FathomError where error.code == .malformedFile {
///     print(error)   // "base.fbin at byte 8: header says 1000 x 128 float32 ..."
/// }
/// ```
///
/// Thread safety: a value type, `Sendable`; errors cross threads freely.
public struct FathomError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong, as a stable, extensible category. Front ends map it to their own
    /// statuses (the CLI's exit codes, HTTP statuses); the library attaches none.
    ///
    /// Thread safety: an immutable value, `Sendable`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// Stable identifier, e.g. `"malformedFile"`.
        public let rawValue: String
        /// A code named `rawValue` (codes compare by it).
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// A parameter or argument is out of range or inconsistent.
        public static let invalidArgument = Code("invalidArgument")
        /// The path does not exist, is a directory, or cannot be opened.
        public static let fileNotFound = Code("fileNotFound")
        /// A vector, ground-truth or attribute file does not match its declared layout.
        public static let malformedFile = Code("malformedFile")
        /// The file's format or element type is not one Fathom reads.
        public static let unsupportedFormat = Code("unsupportedFormat")
        /// Vectors or queries have a different dimension than expected.
        public static let dimensionMismatch = Code("dimensionMismatch")
        /// A vector holds NaN or infinity.
        public static let nonFiniteValue = Code("nonFiniteValue")
        /// An index file fails a checksum, size or structure check.
        public static let corruptIndex = Code("corruptIndex")
        /// The index was written by an incompatible format version or with other settings.
        public static let incompatibleIndex = Code("incompatibleIndex")
        /// The work cannot be done within the given memory budget.
        public static let memoryBudget = Code("memoryBudget")
        /// A read, write, sync or rename failed (see `errno`).
        public static let io = Code("io")
        /// The device is full (ENOSPC) or over quota.
        public static let diskFull = Code("diskFull")
        /// A filter expression or attribute file cannot be parsed.
        public static let parse = Code("parse")
        /// An operating-system resource limit was hit (e.g. aio-max-nr).
        public static let resourceLimit = Code("resourceLimit")
        /// The work was cancelled.
        public static let cancelled = Code("cancelled")
    }

    /// Something the caller can do about an error. An error lists its remedies in
    /// ``FathomError/remedies``; any one of them is enough. Each names the library setting
    /// involved (``description`` says it in library terms), so that a front end can say it
    /// with its own names: `.raiseMemoryBudget(atLeast:)` is the CLI's memory-budget flag, a
    /// server's configuration key, or `BuildOptions.memoryBudget` for a Swift caller.
    ///
    /// Thread safety: an immutable value, `Sendable`.
    public enum Remedy: Hashable, Sendable, CustomStringConvertible {
        /// An index file failed a checksum or structure check: verify the whole index
        /// (`IndexVerifier`) to list every damaged file, and rebuild it.
        case verifyAndRebuild
        /// The index holds no attributes: rebuild it with them (`BuildOptions.attributes`).
        case rebuildWithAttributes
        /// The work needs more memory: a larger budget (`BuildOptions.memoryBudget`, or the
        /// budget given to exact search), at least `atLeast` bytes when that is known.
        case raiseMemoryBudget(atLeast: UInt64?)
        /// Fewer heads: a smaller head ratio (`BuildOptions.headRatio`).
        case lowerHeadRatio
        /// More heads, so that each posting holds fewer vectors: a larger `BuildOptions.headRatio`.
        case raiseHeadRatio
        /// Larger postings (`BuildOptions.postingPages`), at least `atLeast` 4 KiB pages when known.
        case raisePostingPages(atLeast: Int?)
        /// A compressing posting codec (`BuildOptions.codec`: lvq8, lvq4 or lvq4x8).
        case useCompressingCodec
        /// Another distance metric (`BuildOptions.metric`).
        case useMetric(Metric)
        /// Remove the vector the message names from the input.
        case removeVectorFromInput
        /// The destination holds something that is not an index: write elsewhere, or remove it.
        case chooseAnotherDestination
        /// The device is full: free space on it, or write elsewhere.
        case freeDiskSpace
        /// A per-thread operating-system resource ran out: run fewer threads at once.
        case useFewerThreads
        /// An operating-system limit: raise the sysctl `name` to at least `atLeast`.
        case raiseSystemLimit(name: String, atLeast: Int)
        /// The index (or shard `shard`) was built from another model: rebuild it with the model
        /// at `path` (``IndexBuilder``'s `model`), or serve it with the model it was built with.
        case rebuildWithModel(path: String, shard: Int?)

        /// The remedy in library terms, e.g. "raise the memory budget to at least 1.5 GiB".
        public var description: String {
            switch self {
            case .verifyAndRebuild: return "verify the index (IndexVerifier) and rebuild it"
            case .rebuildWithAttributes: return "rebuild the index with attributes to filter on them"
            case .raiseMemoryBudget(let b): return "raise the memory budget" + (b.map { " to at least \(formatBytes($0))" } ?? "")
            case .lowerHeadRatio: return "lower the head ratio (fewer heads)"
            case .raiseHeadRatio: return "raise the head ratio (more heads)"
            case .raisePostingPages(let p): return "raise the posting size" + (p.map { " to at least \($0) pages" } ?? "")
            case .useCompressingCodec: return "choose a compressing codec (lvq8, lvq4 or lvq4x8)"
            case .useMetric(let m): return "use the \(m.rawValue) metric"
            case .removeVectorFromInput: return "remove the vector from the input"
            case .chooseAnotherDestination: return "choose another destination or remove what is there"
            case .freeDiskSpace: return "free space on the device or choose another destination"
            case .useFewerThreads: return "use fewer threads at once"
            case .raiseSystemLimit(let name, let v): return "raise the system limit: sysctl -w \(name)=\(v)"
            case .rebuildWithModel(let path, let shard):
                return "rebuild \(shard.map { "shard \($0)" } ?? "it") with the model at \(path), or use the model it was built with"
            }
        }
    }

    /// The category of the problem.
    public var code: Code
    /// What happened, in the library's terms (the file, value or count involved).
    public var message: String
    /// The file the problem is in, if any.
    public var path: String?
    /// Byte offset in `path` where the problem was found, if known.
    public var offset: UInt64?
    /// The operating system's error number, if a system call failed.
    public var errno: Int32?
    /// What to do about it (any one remedy is enough); empty when nothing but the message helps.
    public var remedies: [Remedy]
    /// The error this one wraps (e.g. the decoder's error behind a manifest that cannot be
    /// parsed), if any. ``description`` includes it, and its own cause, in turn.
    public var cause: (any Error)?

    /// An error of `code`: `message` says what happened (naming the value, row or count),
    /// `path`/`offset` where, `remedies` what fixes it, `cause` the error it wraps.
    public init(_ code: Code, _ message: String, path: String? = nil, offset: UInt64? = nil,
                errno: Int32? = nil, remedies: [Remedy] = [], cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.offset = offset
        self.errno = errno
        self.remedies = remedies
        self.cause = cause
    }

    /// Builds an error from a failed system call, mapping ENOSPC/EDQUOT to ``Code/diskFull``
    /// (with the ``Remedy/freeDiskSpace`` remedy) and ENOENT/EISDIR to ``Code/fileNotFound``.
    public static func system(_ what: String, path: String?, errno e: Int32, offset: UInt64? = nil) -> FathomError {
        let code: Code = (e == ENOSPC || e == EDQUOT) ? .diskFull : (e == ENOENT || e == EISDIR ? .fileNotFound : .io)
        return FathomError(code, "\(what) failed: \(String(cString: strerror(e))) (errno \(e))",
                           path: path, offset: offset, errno: e, remedies: code == .diskFull ? [.freeDiskSpace] : [])
    }

    /// `PATH at byte OFFSET: MESSAGE (cause: ...); REMEDY or REMEDY`, the remedies in library terms.
    public var description: String { description(remedy: \.description) }

    /// The ``description`` with each remedy said by `remedy` (a front end's own terms).
    public func description(remedy: (Remedy) -> String) -> String {
        var s = ""
        if let path { s += path }
        if let offset { s += s.isEmpty ? "at byte \(offset)" : " at byte \(offset)" }
        if !s.isEmpty { s += ": " }
        s += message
        if let cause { s += " (cause: \(Self.describe(cause)))" }
        if !remedies.isEmpty { s += "; " + remedies.map(remedy).joined(separator: ", or ") }
        return s
    }

    /// A cause as text: a FathomError's description, Foundation's localized text for its
    /// file errors, the error's own description otherwise (a DecodingError's coding path).
    static func describe(_ e: any Error) -> String {
        if let f = e as? FathomError { return f.description }
        if e is CocoaError || Swift.type(of: e) is NSError.Type { return e.localizedDescription }
        return String(describing: e)
    }

    /// Equal when code, message, context and remedies are equal and the causes describe alike.
    public static func == (a: FathomError, b: FathomError) -> Bool {
        a.code == b.code && a.message == b.message && a.path == b.path && a.offset == b.offset
            && a.errno == b.errno && a.remedies == b.remedies
            && a.cause.map { "\($0)" } == b.cause.map { "\($0)" }
    }
}

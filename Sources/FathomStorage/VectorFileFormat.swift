import FathomCore
import Foundation

/// The on-disk layouts Fathom reads and writes vectors in (byte layouts: docs/input-formats.md).
///
/// | format | layout | element type |
/// |---|---|---|
/// | `fbin`  | big-ann-benchmarks: uint32 n, uint32 d, n·d float32 (DiskANN's `.bin`) | float32 |
/// | `u8bin` | same header, n·d uint8 | uint8 |
/// | `i8bin` | same header, n·d int8 | int8 |
/// | `fvecs` | TEXMEX: per record int32 d, then d float32 | float32 |
/// | `bvecs` | TEXMEX: per record int32 d, then d uint8 | uint8 |
/// | `npy`   | NumPy `.npy` v1/v2/v3, 2-D C-order array | from the dtype |
///
/// All integers and floats are little-endian.
public enum VectorFileFormat: String, Sendable, CaseIterable {
    /// big-ann-benchmarks float32 (`.fbin`, and DiskANN's `.bin`).
    case fbin
    /// big-ann-benchmarks uint8 (`.u8bin`).
    case u8bin
    /// big-ann-benchmarks int8 (`.i8bin`).
    case i8bin
    /// TEXMEX float32 records with an int32 dimension prefix (`.fvecs`).
    case fvecs
    /// TEXMEX uint8 records with an int32 dimension prefix (`.bvecs`).
    case bvecs
    /// NumPy array file (`.npy`): `<f4`, `|u1` or `|i1`, shape `(n, d)`, C order.
    case npy

    /// The file name extensions recognised by ``fromPath(_:)``, with the format each selects.
    public static let knownExtensions: [(ext: String, format: VectorFileFormat)] = [
        ("fbin", .fbin), ("bin", .fbin), ("u8bin", .u8bin), ("i8bin", .i8bin),
        ("fvecs", .fvecs), ("bvecs", .bvecs), ("npy", .npy),
    ]

    /// Picks the format from the path's extension (case-insensitive). `.bin` is read as
    /// `fbin`, as DiskANN does.
    ///
    /// - Throws: `FathomError` `.unsupportedFormat` for any other extension; the message
    ///   lists the known ones.
    public static func fromPath(_ path: String) throws -> VectorFileFormat {
        let name = (path as NSString).lastPathComponent
        let ext = (name as NSString).pathExtension.lowercased()
        if let hit = knownExtensions.first(where: { $0.ext == ext }) { return hit.format }
        let known = knownExtensions.map { "." + $0.ext }.joined(separator: ", ")
        var hint = ""
        if ext == "ibin" || ext == "ivecs" {
            hint = "; .\(ext) holds ground truth (neighbour ids), read it as ground truth, not as vectors"
        } else if ext == "hdf5" || ext == "h5" {
            hint = "; convert HDF5 (ann-benchmarks) to .npy or .fbin first"
        }
        let what = ext.isEmpty ? "has no extension" : "has extension '.\(ext)'"
        throw FathomError(.unsupportedFormat,
                          "cannot tell the vector file format: the name \(what); known extensions: \(known) (or name the format explicitly)\(hint)",
                          path: path)
    }

    /// The element type the format fixes, or `nil` for `npy`, whose dtype decides.
    public var elementType: ElementType? {
        switch self {
        case .fbin, .fvecs: return .float32
        case .u8bin, .bvecs: return .uint8
        case .i8bin: return .int8
        case .npy: return nil
        }
    }

    /// Bytes before each record's components: 4 (the int32 dimension) for fvecs/bvecs, else 0.
    public var recordPrefix: Int { (self == .fvecs || self == .bvecs) ? 4 : 0 }

    /// Whether the format can store components of `type` (npy stores all three).
    public func supports(_ type: ElementType) -> Bool {
        elementType.map { $0 == type } ?? true
    }

    /// The usual file extension, without the dot.
    public var fileExtension: String { rawValue }

    /// Whether the format is the big-ann-benchmarks `uint32 n, uint32 d` layout.
    var isBigANN: Bool { self == .fbin || self == .u8bin || self == .i8bin }
}

/// What a vector file holds and where, as found by ``inspect(path:format:)``.
///
/// Row `i` starts at byte `dataOffset + i * recordStride`; its `dimension` components start
/// `recordPrefix` bytes later.
public struct VectorFileHeader: Sendable, Equatable {
    /// The file.
    public var path: String
    /// Its layout.
    public var format: VectorFileFormat
    /// Type of each component.
    public var elementType: ElementType
    /// Number of vectors (rows).
    public var count: Int
    /// Components per vector.
    public var dimension: Int
    /// Byte offset of the first record: 8 for fbin/u8bin/i8bin, 0 for fvecs/bvecs, the end
    /// of the header for npy.
    public var dataOffset: Int
    /// Bytes per record, including the 4-byte dimension prefix of fvecs/bvecs.
    public var recordStride: Int
    /// Bytes before the components of each record: 4 for fvecs/bvecs, else 0.
    public var recordPrefix: Int
    /// Size of the file in bytes when it was inspected.
    public var fileSize: Int

    /// Bytes of one vector's components (`dimension × elementType.size`), without the prefix.
    public var rowBytes: Int { dimension * elementType.size }

    /// Byte offset of record `row` (its prefix, if any).
    public func recordOffset(_ row: Int) -> Int { dataOffset + row * recordStride }

    /// Opens `path` and validates its header against the file size, without reading the data.
    ///
    /// Checks: the path exists and is a regular file (a directory is a `.fileNotFound` error
    /// saying so); it is not empty; the header is complete; for fbin/u8bin/i8bin,
    /// `8 + n·d·size == file size` (overflow-checked); for fvecs/bvecs, the first dimension is
    /// positive and the size is a whole number of records; for npy, the magic, version (1.0,
    /// 2.0, 3.0), the header dictionary, dtype (`<f4`, `|u1`, `|i1`), C order, shape and size.
    /// The dimension prefix of every fvecs/bvecs record is checked later, by
    /// ``VectorFileReader`` as it streams and by ``MappedVectorFile`` at open.
    ///
    /// A 1-D npy array of shape `(d,)` is read as one vector of dimension `d`.
    ///
    /// - Parameters:
    ///   - path: the file.
    ///   - format: the layout; `nil` picks it from the extension (``VectorFileFormat/fromPath(_:)``).
    /// - Throws: `FathomError` with code `.fileNotFound`, `.io`, `.malformedFile` or
    ///   `.unsupportedFormat`, carrying the path and, for layout problems, the byte offset.
    public static func inspect(path: String, format: VectorFileFormat? = nil) throws -> VectorFileHeader {
        let file = try SystemFile.open(path, .readOnly)
        defer { file.closeIgnoringErrors() }
        return try inspect(file: file, format: format)
    }

    /// ``inspect(path:format:)`` on an already open file (so readers validate what they read).
    static func inspect(file: SystemFile, format: VectorFileFormat?) throws -> VectorFileHeader {
        let path = file.path
        let st = try file.status()
        if st.isDirectory {
            throw FathomError(.fileNotFound, "is a directory, not a vector file: give the path of a file", path: path)
        }
        guard st.isRegularFile else {
            throw FathomError(.fileNotFound, "is not a regular file (a device, FIFO or socket); vector files must be regular files", path: path)
        }
        let format = try format ?? VectorFileFormat.fromPath(path)
        let size = st.size
        guard size > 0 else {
            throw FathomError(.malformedFile, "the file is empty (0 bytes); a \(format.rawValue) file starts with \(Self.headerDescription(format))",
                              path: path, offset: 0)
        }
        switch format {
        case .fbin, .u8bin, .i8bin:
            return try inspectBigANN(file: file, format: format, size: size)
        case .fvecs, .bvecs:
            return try inspectTexmex(file: file, format: format, size: size)
        case .npy:
            return try NpyHeader.inspect(file: file, size: size)
        }
    }

    static func headerDescription(_ format: VectorFileFormat) -> String {
        switch format {
        case .fbin, .u8bin, .i8bin: return "an 8-byte header (uint32 n, uint32 d)"
        case .fvecs, .bvecs: return "a 4-byte int32 dimension"
        case .npy: return "the magic \\x93NUMPY and a header"
        }
    }

    /// The little-endian T at byte `offset` of `file`.
    static func readLE<T: FixedWidthInteger>(_ file: SystemFile, _: T.Type, at offset: Int) throws -> T {
        var raw = T.zero
        _ = try withUnsafeMutableBytes(of: &raw) { try file.read(into: $0.baseAddress!, count: MemoryLayout<T>.size, at: offset) }
        return T(littleEndian: raw)
    }

    /// The data bytes of n × d elements of `size` bytes and where they end after a `header`
    /// of that many bytes; nil when either overflows.
    static func dataExtent(n: Int, d: Int, elementSize: Int, header: Int) -> (bytes: Int, end: Int)? {
        let (nd, o1) = n.multipliedReportingOverflow(by: d)
        let (bytes, o2) = nd.multipliedReportingOverflow(by: elementSize)
        let (end, o3) = bytes.addingReportingOverflow(header)
        return o1 || o2 || o3 ? nil : (bytes, end)
    }

    /// A file of `size` bytes shorter than the `needed` its header takes is `.malformedFile`
    /// at its end, with `message`.
    static func requireHeader(_ needed: Int, size: Int, path: String, _ message: @autoclosure () -> String) throws {
        guard size >= needed else { throw FathomError(.malformedFile, message(), path: path, offset: UInt64(size)) }
    }

    /// How a file of `size` bytes differs from the `expected` its header implies.
    static func sizeMismatch(size: Int, expected: Int) -> String {
        size < expected ? "it is truncated (\(expected - size) bytes missing)" : "\(size - expected) unexpected bytes follow the data"
    }

    private static func inspectBigANN(file: SystemFile, format: VectorFileFormat, size: Int) throws -> VectorFileHeader {
        let path = file.path
        let et = format.elementType!
        try requireHeader(8, size: size, path: path,
                          "the header is incomplete: the file has \(size) byte\(size == 1 ? "" : "s") but a \(format.rawValue) header needs 8 (uint32 n, uint32 d)")
        let n = Int(try readLE(file, UInt32.self, at: 0)), d = Int(try readLE(file, UInt32.self, at: 4))
        guard d > 0 else {
            throw FathomError(.malformedFile, "the header says dimension 0 (n = \(n)); vectors need at least one component", path: path, offset: 4)
        }
        guard let (_, expected) = dataExtent(n: n, d: d, elementSize: et.size, header: 8) else {
            throw FathomError(.malformedFile,
                              "the header says n = \(n), d = \(d): n·d·\(et.size) overflows a 64-bit byte count, so the header is corrupt or the file is not in \(format.rawValue) format (it has \(size) bytes)",
                              path: path, offset: 0)
        }
        guard expected == size else {
            var msg = "the header says \(n) × \(d) \(et.rawValue) = \(expected) bytes (8-byte header + n·d·\(et.size)) but the file has \(size) bytes: "
            msg += sizeMismatch(size: size, expected: expected)
            for other in [(4, "fbin"), (1, "u8bin or i8bin")] where other.0 != et.size {
                if dataExtent(n: n, d: d, elementSize: other.0, header: 8)?.end == size { msg += "; the size fits \(other.1): is the extension wrong?" }
            }
            throw FathomError(.malformedFile, msg, path: path, offset: UInt64(min(size, expected)))
        }
        return VectorFileHeader(path: path, format: format, elementType: et, count: n, dimension: d, dataOffset: 8,
                                recordStride: d * et.size, recordPrefix: 0, fileSize: size)
    }

    private static func inspectTexmex(file: SystemFile, format: VectorFileFormat, size: Int) throws -> VectorFileHeader {
        let path = file.path
        let et = format.elementType!
        try requireHeader(4, size: size, path: path,
                          "the first record is incomplete: the file has \(size) byte\(size == 1 ? "" : "s"), fewer than its 4-byte int32 dimension")
        let dim = Int(try readLE(file, Int32.self, at: 0))
        guard dim > 0 else {
            throw FathomError(.malformedFile, "record 0 has dimension \(dim); each \(format.rawValue) record starts with a positive int32 dimension",
                              path: path, offset: 0)
        }
        let stride = 4 + dim * et.size
        guard size % stride == 0 else {
            let whole = size / stride, left = size % stride
            // Tell a mid-file dimension change from a truncated last record.
            for r in 1..<max(whole + 1, 1) where r * stride + 4 <= size {
                let p = Int(try readLE(file, Int32.self, at: r * stride))
                if p != dim {
                    throw FathomError(.malformedFile, TexmexCheck.changeMessage(record: r, found: p, expected: dim, format: format),
                                      path: path, offset: UInt64(r * stride))
                }
            }
            throw FathomError(.malformedFile,
                              "the file has \(size) bytes, not a whole number of \(stride)-byte records (4-byte dimension + \(dim) × \(et.size)): \(left) byte\(left == 1 ? " is" : "s are") left over after \(whole) record\(whole == 1 ? "" : "s"); the last record is truncated",
                              path: path, offset: UInt64(whole * stride))
        }
        return VectorFileHeader(path: path, format: format, elementType: et, count: size / stride, dimension: dim,
                                dataOffset: 0, recordStride: stride, recordPrefix: 4, fileSize: size)
    }
}

/// Checks of fvecs/bvecs dimension prefixes, shared by the reader and the mapped file.
enum TexmexCheck {
    static func changeMessage(record: Int, found: Int, expected: Int, format: VectorFileFormat) -> String {
        "record \(record) has dimension \(found) but record 0 has \(expected): the dimension changes mid-file; every \(format.rawValue) record must have the same dimension"
    }

    /// Verifies the prefixes of `rows` records laid out `stride` bytes apart from `base`, the
    /// first being record `firstRow` at file offset `firstOffset`.
    static func verify(_ base: UnsafeRawPointer, rows: Int, stride: Int, firstRow: Int, firstOffset: Int,
                       header h: VectorFileHeader) throws {
        let want = Int32(truncatingIfNeeded: h.dimension)
        for r in 0..<rows {
            let p = base.loadLE(fromByteOffset: r * stride, as: Int32.self)
            if p != want {
                throw FathomError(.malformedFile,
                                  changeMessage(record: firstRow + r, found: Int(p), expected: h.dimension, format: h.format),
                                  path: h.path, offset: UInt64(firstOffset + r * stride))
            }
        }
    }
}

// MARK: - npy

/// Parsing of NumPy `.npy` headers (format versions 1.0, 2.0 and 3.0).
///
/// Layout: magic `\x93NUMPY`, major and minor version bytes, the header length (uint16 LE
/// for 1.0, uint32 LE for 2.0/3.0), then a Python dict literal
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (n, d), }` padded with spaces and a
/// newline; the data follows.
enum NpyHeader {
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
    /// Upper bound on the header dictionary we are willing to read.
    static let maxHeaderBytes = 1 << 20

    static func inspect(file: SystemFile, size: Int) throws -> VectorFileHeader {
        let path = file.path
        try VectorFileHeader.requireHeader(10, size: size, path: path,
                                           "the file has \(size) bytes, too few for an .npy header (at least 10: magic, version, length)")
        var pre = [UInt8](repeating: 0, count: 12)
        let got = try pre.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: min(12, size), at: 0) }
        guard Array(pre[0..<6]) == magic else {
            let seen = pre[0..<6].map { b -> String in
                (0x20...0x7e).contains(b) ? String(UnicodeScalar(b)) : String(format: "\\x%02x", b)
            }.joined()
            let zipHint = pre[0] == 0x50 && pre[1] == 0x4B ? " (a zip archive: an .npz? extract one array with np.load(...)[name] and np.save it)" : ""
            throw FathomError(.malformedFile, "not an .npy file: it starts with \"\(seen)\" instead of the magic \"\\x93NUMPY\"\(zipHint)",
                              path: path, offset: 0)
        }
        let major = pre[6], minor = pre[7]
        guard minor == 0, (1...3).contains(major) else {
            throw FathomError(.unsupportedFormat, "npy format version \(major).\(minor) is not supported (supported: 1.0, 2.0, 3.0)",
                              path: path, offset: 6)
        }
        let prelude: Int, headerLen: Int
        if major == 1 {
            prelude = 10
            headerLen = Int(UInt16(pre[8]) | UInt16(pre[9]) << 8)
        } else {
            guard got >= 12 else {
                throw FathomError(.malformedFile, "the file has \(size) bytes, too few for an .npy version \(major).0 header (at least 12)",
                                  path: path, offset: UInt64(size))
            }
            prelude = 12
            headerLen = Int(UInt32(pre[8]) | UInt32(pre[9]) << 8 | UInt32(pre[10]) << 16 | UInt32(pre[11]) << 24)
        }
        guard headerLen <= maxHeaderBytes else {
            throw FathomError(.malformedFile, "the .npy header length field says \(headerLen) bytes; more than \(maxHeaderBytes) is not a plausible header",
                              path: path, offset: 8)
        }
        guard prelude + headerLen <= size else {
            throw FathomError(.malformedFile, "the .npy header length field says the header ends at byte \(prelude + headerLen) but the file has \(size) bytes: truncated",
                              path: path, offset: 8)
        }
        var text = [UInt8](repeating: 0, count: headerLen)
        if headerLen > 0 {
            _ = try text.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: headerLen, at: prelude) }
        }
        var parser = PyLiteralParser(bytes: text, baseOffset: prelude, path: path, utf8: major == 3)
        let dict = try parser.parseDict()

        let knownKeys = ["descr", "fortran_order", "shape"]
        for entry in dict where !knownKeys.contains(entry.key) {
            throw FathomError(.malformedFile, "unexpected key '\(entry.key)' in the .npy header (expected exactly 'descr', 'fortran_order', 'shape')",
                              path: path, offset: UInt64(entry.offset))
        }
        /// A header key's value; errors about it point at the value.
        struct Field {
            let value: PyValue, offset: Int, path: String
            func error(_ code: FathomError.Code, _ message: String) -> FathomError {
                FathomError(code, message, path: path, offset: UInt64(offset))
            }
        }
        func lookup(_ k: String) throws -> Field {
            guard let e = dict.last(where: { $0.key == k }) else {
                throw FathomError(.malformedFile, "the .npy header has no '\(k)' key (it needs 'descr', 'fortran_order' and 'shape')",
                                  path: path, offset: UInt64(prelude))
            }
            return Field(value: e.value, offset: e.valueOffset, path: path)
        }

        // dtype
        let descrField = try lookup("descr")
        guard case .string(let descr) = descrField.value else {
            throw descrField.error(.unsupportedFormat,
                                   "the .npy dtype is a structured (record) dtype \(descrField.value); supported: \(supportedList); save a plain 2-D array")
        }
        guard let et = elementType(descr: descr) else {
            throw descrField.error(.unsupportedFormat,
                                   "unsupported .npy dtype '\(descr)' (\(describe(descr: descr))); supported: \(supportedList); convert with numpy, e.g. np.save(path, a.astype('<f4'))")
        }

        // order
        let order = try lookup("fortran_order")
        guard case .bool(let fortran) = order.value else {
            throw order.error(.malformedFile, "'fortran_order' in the .npy header is \(order.value), not True or False")
        }
        if fortran {
            throw order.error(.unsupportedFormat,
                              "the .npy array is in Fortran (column-major) order; Fathom reads C-order (row-major) arrays: save np.ascontiguousarray(a) instead")
        }

        // shape
        let shape = try lookup("shape"), shapeValue = shape.value
        guard case .tuple(let items) = shapeValue else {
            throw shape.error(.malformedFile, "'shape' in the .npy header is \(shapeValue), not a tuple of integers")
        }
        var dims = [Int]()
        for item in items {
            guard case .int(let v) = item, v >= 0 else {
                throw shape.error(.malformedFile, "'shape' in the .npy header is \(shapeValue): every entry must be a non-negative integer")
            }
            dims.append(v)
        }
        let n: Int, d: Int
        switch dims.count {
        case 2: n = dims[0]; d = dims[1]
        case 1: n = 1; d = dims[0]
        default:
            throw shape.error(.unsupportedFormat,
                              "the .npy array has shape \(shapeValue) (\(dims.count)-D); Fathom reads 2-D arrays (n, d), or a 1-D array (d,) as one vector: reshape it, e.g. a.reshape(len(a), -1)")
        }
        guard d > 0 else {
            throw shape.error(.malformedFile, "the .npy array has shape \(shapeValue): vectors of dimension 0")
        }
        let dataOffset = prelude + headerLen
        guard let (bytes, expected) = VectorFileHeader.dataExtent(n: n, d: d, elementSize: et.size, header: dataOffset) else {
            throw shape.error(.malformedFile, "the .npy shape \(shapeValue) overflows a 64-bit byte count: the header is corrupt")
        }
        guard expected == size else {
            var msg = "the .npy header says shape \(shapeValue) of \(et.rawValue) = \(bytes) data bytes after a \(dataOffset)-byte header (\(expected) in all) but the file has \(size) bytes: "
            msg += VectorFileHeader.sizeMismatch(size: size, expected: expected)
            throw FathomError(.malformedFile, msg, path: path, offset: UInt64(min(size, expected)))
        }
        return VectorFileHeader(path: path, format: .npy, elementType: et, count: n, dimension: d, dataOffset: dataOffset,
                                recordStride: d * et.size, recordPrefix: 0, fileSize: size)
    }

    static let supportedList = "'<f4' (float32), '|u1' (uint8), '|i1' (int8)"

    /// Maps a dtype string to an element type. float32 must be little-endian (`<` or `=`,
    /// native on the little-endian machines Fathom runs on); one-byte types take any byte order mark.
    static func elementType(descr: String) -> ElementType? {
        switch descr {
        case "<f4", "=f4": return .float32
        case "|u1", "<u1", ">u1", "=u1", "u1": return .uint8
        case "|i1", "<i1", ">i1", "=i1", "i1": return .int8
        default: return nil
        }
    }

    /// "float64", "big-endian float32", ... for an error message.
    static func describe(descr: String) -> String {
        var s = Substring(descr)
        var prefix = ""
        if let c = s.first, "<>|=".contains(c) {
            if c == ">" { prefix = "big-endian " }
            s = s.dropFirst()
        }
        guard let kind = s.first, let bytes = Int(s.dropFirst()) else { return "unknown dtype" }
        let names: [Character: String] = ["f": "float", "i": "int", "u": "uint", "c": "complex", "b": "bool",
                                          "U": "unicode string", "S": "byte string", "V": "void", "M": "datetime", "m": "timedelta"]
        guard let name = names[kind] else { return "unknown dtype" }
        if kind == "U" || kind == "S" || kind == "V" || kind == "b" { return prefix + name }
        return prefix + name + String(bytes * 8)
    }
}

/// A value of the Python literal subset found in .npy headers.
indirect enum PyValue: CustomStringConvertible {
    case string(String), bool(Bool), none, int(Int), tuple([PyValue]), list([PyValue])

    var description: String {
        switch self {
        case .string(let s): return "'\(s)'"
        case .bool(let b): return b ? "True" : "False"
        case .none: return "None"
        case .int(let v): return String(v)
        case .tuple(let t): return t.count == 1 ? "(\(t[0]),)" : "(" + t.map(\.description).joined(separator: ", ") + ")"
        case .list(let l): return "[" + l.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// Parses the Python dict literal of an .npy header: string keys; values that are strings,
/// True/False/None, integers (an old `L` suffix allowed), tuples and lists; any whitespace;
/// an optional trailing comma; keys in any order. Errors carry the byte offset in the file.
struct PyLiteralParser {
    let bytes: [UInt8]
    let baseOffset: Int
    let path: String
    let utf8: Bool
    var pos = 0

    init(bytes: [UInt8], baseOffset: Int, path: String, utf8: Bool) {
        self.bytes = bytes; self.baseOffset = baseOffset; self.path = path; self.utf8 = utf8
    }

    struct Entry { var key: String; var value: PyValue; var offset: Int; var valueOffset: Int }

    private var headerText: String {
        let s = String(decoding: bytes.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return bytes.count > 200 ? s + "..." : s
    }

    private func fail(_ what: String) -> FathomError {
        FathomError(.malformedFile, "cannot parse the .npy header dictionary: \(what) (header: \(headerText))",
                    path: path, offset: UInt64(baseOffset + pos))
    }

    private mutating func skipSpace() {
        while pos < bytes.count, [0x20, 0x09, 0x0A, 0x0D, 0x0C, 0x0B].contains(bytes[pos]) { pos += 1 }
    }

    private func peek() -> UInt8? { pos < bytes.count ? bytes[pos] : nil }

    mutating func parseDict() throws -> [Entry] {
        skipSpace()
        guard peek() == UInt8(ascii: "{") else { throw fail("expected '{'") }
        pos += 1
        var entries = [Entry]()
        while true {
            skipSpace()
            guard let c = peek() else { throw fail("unexpected end, expected a key or '}'") }
            if c == UInt8(ascii: "}") { pos += 1; break }
            let keyOffset = baseOffset + pos
            guard case .string(let key) = try parseValue() else {
                pos = keyOffset - baseOffset
                throw fail("expected a string key")
            }
            skipSpace()
            guard peek() == UInt8(ascii: ":") else { throw fail("expected ':' after key '\(key)'") }
            pos += 1
            skipSpace()
            let valueOffset = baseOffset + pos
            let value = try parseValue()
            entries.append(Entry(key: key, value: value, offset: keyOffset, valueOffset: valueOffset))
            skipSpace()
            if peek() == UInt8(ascii: ",") { pos += 1; continue }
            if peek() == UInt8(ascii: "}") { pos += 1; break }
            throw fail("expected ',' or '}' after the value of '\(key)'")
        }
        skipSpace()
        while pos < bytes.count, bytes[pos] == 0 { pos += 1 }  // tolerate NUL padding
        guard pos == bytes.count else { throw fail("unexpected text after the closing '}'") }
        return entries
    }

    mutating func parseValue() throws -> PyValue {
        skipSpace()
        guard let c = peek() else { throw fail("unexpected end, expected a value") }
        switch c {
        case UInt8(ascii: "'"), UInt8(ascii: "\""):
            return .string(try parseString(quote: c))
        case UInt8(ascii: "("), UInt8(ascii: "["):
            let close = c == UInt8(ascii: "(") ? UInt8(ascii: ")") : UInt8(ascii: "]")
            pos += 1
            var items = [PyValue]()
            var sawComma = false
            while true {
                skipSpace()
                guard let k = peek() else { throw fail("unexpected end inside \(c == UInt8(ascii: "(") ? "a tuple" : "a list")") }
                if k == close { pos += 1; break }
                items.append(try parseValue())
                skipSpace()
                if peek() == UInt8(ascii: ",") { pos += 1; sawComma = true; continue }
                if peek() == close { pos += 1; break }
                throw fail("expected ',' or '\(UnicodeScalar(close))'")
            }
            if close == UInt8(ascii: "]") { return .list(items) }
            // Python: "(3)" is the integer 3, "(3,)" a one-tuple.
            if items.count == 1 && !sawComma { return items[0] }
            return .tuple(items)
        case UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .int(try parseInt())
        default:
            var word = ""
            while let k = peek(), (k >= 0x41 && k <= 0x5A) || (k >= 0x61 && k <= 0x7A) || k == 0x5F {
                word.append(Character(UnicodeScalar(k))); pos += 1
            }
            switch word {
            case "True": return .bool(true)
            case "False": return .bool(false)
            case "None": return .none
            case "": throw fail("unexpected character '\(String(UnicodeScalar(c)))'")
            default:
                pos -= word.utf8.count
                throw fail("unexpected name '\(word)'")
            }
        }
    }

    private mutating func parseString(quote: UInt8) throws -> String {
        pos += 1
        var out = [UInt8]()
        while true {
            guard let k = peek() else { throw fail("unterminated string") }
            pos += 1
            if k == quote { break }
            if k == UInt8(ascii: "\\") {
                guard let e = peek() else { throw fail("unterminated string") }
                out.append(e); pos += 1
                continue
            }
            out.append(k)
        }
        if utf8 { return String(decoding: out, as: UTF8.self) }
        return String(String.UnicodeScalarView(out.map { UnicodeScalar($0) }))  // latin-1
    }

    private mutating func parseInt() throws -> Int {
        let start = pos
        var negative = false
        if peek() == UInt8(ascii: "-") || peek() == UInt8(ascii: "+") { negative = peek() == UInt8(ascii: "-"); pos += 1 }
        var v = 0
        var digits = 0
        while let k = peek(), k >= 0x30, k <= 0x39 {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(k - 0x30))
            if o1 || o2 { pos = start; throw fail("integer too large") }
            v = a; digits += 1; pos += 1
        }
        if digits == 0 { pos = start; throw fail("expected an integer") }
        if peek() == UInt8(ascii: "L") || peek() == UInt8(ascii: "l") { pos += 1 }  // Python 2 long
        return negative ? -v : v
    }
}

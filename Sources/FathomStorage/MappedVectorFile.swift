import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Random access to the vectors of a file through a read-only memory mapping.
///
/// The file is validated at open (``VectorFileHeader/inspect(path:format:)``); for fvecs/bvecs
/// the dimension prefix of every record is checked too, which touches every page of the file
/// once (O(file size)).
///
/// Sendable invariant: all stored properties are immutable after `init`, and the mapping is
/// `PROT_READ`, so nothing in this process writes through it; any number of threads may call
/// ``row(_:)`` and ``rowFloats(_:into:)`` at once. The file itself must not be truncated or
/// rewritten while it is mapped (touching a page that no longer exists raises SIGBUS):
/// treat input files as immutable. The mapping is removed in `deinit`, so pointers returned by
/// ``row(_:)`` are valid only while the `MappedVectorFile` is alive.
public final class MappedVectorFile: @unchecked Sendable {
    /// What the file holds, as validated at open.
    public let header: VectorFileHeader
    /// Number of vectors.
    public var count: Int { header.count }
    /// Components per vector.
    public var dimension: Int { header.dimension }
    /// Type of each component as stored.
    public var elementType: ElementType { header.elementType }

    private let base: UnsafeRawPointer
    private let length: Int

    /// Maps `path` read-only and validates it.
    ///
    /// - Parameters:
    ///   - path: the vector file.
    ///   - format: its layout; `nil` picks it from the extension.
    /// - Throws: `FathomError` (`.fileNotFound`, `.io`, `.malformedFile`, `.unsupportedFormat`),
    ///   including a `.malformedFile` naming the first fvecs/bvecs record whose dimension differs.
    public init(path: String, format: VectorFileFormat? = nil) throws {
        let file = try SystemFile.open(path, .readOnly)
        defer { file.closeIgnoringErrors() }  // the mapping outlives the descriptor
        let h = try VectorFileHeader.inspect(file: file, format: format)
        guard let p = mmap(nil, h.fileSize, PROT_READ, MAP_SHARED, file.rawValue, 0),
              p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw FathomError.system("mmap", path: path, errno: errno)
        }
        if h.recordPrefix != 0 {
            do {
                try TexmexCheck.verify(UnsafeRawPointer(p), rows: h.count, stride: h.recordStride,
                                       firstRow: 0, firstOffset: 0, header: h)
            } catch {
                munmap(p, h.fileSize)
                throw error
            }
        }
        header = h
        base = UnsafeRawPointer(p)
        length = h.fileSize
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), length)
    }

    /// The components of row `i` (`dimension × elementType.size` bytes), without any prefix.
    ///
    /// Alignment follows the file: 4-byte aligned for fbin, fvecs and numpy-written npy files;
    /// use `loadUnaligned` or ``rowFloats(_:into:)`` if unsure.
    /// - Precondition: `0 <= i < count`.
    public func row(_ i: Int) -> UnsafeRawPointer {
        precondition(i >= 0 && i < header.count, "row \(i) is out of range 0..<\(header.count) of \(header.path)")
        return base + header.dataOffset + i * header.recordStride + header.recordPrefix
    }

    /// Converts row `i` to `dimension` floats at `into`.
    /// - Precondition: `0 <= i < count`.
    public func rowFloats(_ i: Int, into: UnsafeMutablePointer<Float>) {
        ElementConversion.toFloat(row(i), header.elementType, count: header.dimension, into: into)
    }
}

import FathomCodecs
import FathomCore
import FathomMath
import FathomStorage
import Foundation

/// What the postings store for each vector.
public enum PostingCodec: String, Sendable, Codable, CaseIterable {
    /// Chosen at build time from the data (``IndexBuilder`` resolves it before planning):
    /// LVQ-4 where its quantization error is small next to what the LeanVec projection
    /// already drops, else LVQ-8. Never stored in a manifest.
    case auto
    /// Full-precision vectors (the input element type; float32 for cosine).
    case none
    /// LeanVec projection + LVQ-8 codes (1 byte per reduced dimension + 4).
    case lvq8
    /// LeanVec projection + LVQ-4 codes (½ byte per reduced dimension + 4).
    case lvq4
    /// LeanVec projection + two-level LVQ-4x8 (1½ bytes per reduced dimension + 4).
    case lvq4x8

    var lvqKind: LVQKind? {
        switch self {
        case .none, .auto: return nil
        case .lvq8: return .lvq8
        case .lvq4: return .lvq4
        case .lvq4x8: return .lvq4x8
        }
    }
}

/// The compact tier: a LeanVec projection followed by LVQ, as stored in `codec.bin`.
/// Postings hold `{UInt32 id, LVQ code of Bᵀ(x − μ)}`; full vectors stay in vectors.dat.
struct CompactCodec: Sendable {
    let projection: LeanVecProjection
    let lvq: LVQCodec

    var reducedDim: Int { projection.outputDim }
    /// RAM needed at query time: the query matrix (scoring), the data matrix (routing over
    /// projected heads; the same matrix for PCA) and the mean.
    var servingBytes: Int {
        projection.queryMatrix.byteCount + (projection.kind == .pca ? 0 : projection.dataMatrix.byteCount) + projection.inputDim * 4
    }
    var codeBytes: Int { lvq.bytesPerVector }
    /// The LVQ kind as codec.bin's header stores it (0 lvq8, 1 lvq4, 2 lvq4x8).
    var kindCode: UInt32 { lvq.kind == .lvq8 ? 0 : (lvq.kind == .lvq4 ? 1 : 2) }

    /// Encodes a full-precision float vector (already normalized for cosine).
    func encode(_ x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, into code: UnsafeMutableRawPointer) {
        projection.projectData(x, into: scratch)
        lvq.encode(UnsafePointer(scratch), into: code)
    }

    static let magic = "FTHMCODC"

    func write(to path: String) throws {
        let body = projection.encode()
        let w = try SequentialFileWriter(path: path)
        let h = IndexFileHeader(magic: Self.magic, count: 0, dimension: UInt32(reducedDim), elementType: kindCode,
                                payloadBytes: UInt64(body.count), recordBytes: UInt32(codeBytes))
        try w.write(h.encode())
        try w.write(body)
        try w.finish()
    }

    static func read(from path: String) throws -> CompactCodec {
        let f = try RandomAccessFile(path: path)
        let h = try f.readHeader(magic: magic)
        guard h.elementType <= 2 else {
            throw FathomError(.corruptIndex, "unknown LVQ kind \(h.elementType)", path: path, offset: 28)
        }
        var body = [UInt8](repeating: 0, count: Int(h.payloadBytes))
        try body.withUnsafeMutableBytes { try f.read(into: $0.baseAddress!, count: $0.count, at: h.payloadOffset) }
        let projection: LeanVecProjection
        do { projection = try LeanVecProjection.decode(body) }
        catch let e as FathomError { throw FathomError(.corruptIndex, e.message, path: path, offset: 64) }
        let kind: LVQKind = [LVQKind.lvq8, .lvq4, .lvq4x8][Int(h.elementType)]
        guard projection.outputDim == Int(h.dimension) else {
            throw FathomError(.corruptIndex, "projection outputs \(projection.outputDim) dimensions, header says \(h.dimension)", path: path, offset: 24)
        }
        return CompactCodec(projection: projection, lvq: LVQCodec(kind: kind, dim: projection.outputDim))
    }
}

import FathomCore
@testable import FathomStorage
import FathomTestSupport
import Foundation
import Testing

/// The storage tests' name for the shared ``TempDir``.
typealias FormatTestDir = TempDir

/// Little-endian byte builders for hand-made files.
func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
func le32(_ v: Int32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
func leFloats(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

/// Deterministic pseudo-random bytes (SplitMix64).
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var s = seed
    var out = [UInt8](); out.reserveCapacity(count)
    while out.count < count {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        withUnsafeBytes(of: z) { out.append(contentsOf: $0.prefix(count - out.count)) }
    }
    return out
}

/// Random finite float32 components as bytes.
func randomFloatBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    let raw = randomBytes(count * 4, seed: seed)
    var f = [Float](repeating: 0, count: count)
    for i in 0..<count {
        let u = UInt32(raw[4 * i]) | UInt32(raw[4 * i + 1]) << 8 | UInt32(raw[4 * i + 2]) << 16 | UInt32(raw[4 * i + 3]) << 24
        f[i] = Float(Int32(bitPattern: u)) / Float(1 << 20)
    }
    return leFloats(f)
}

/// The datasets folder next to the package: `<package>/../shared/datasets`.
let sharedDatasets: String = {
    let testFile = URL(fileURLWithPath: #filePath)
    let package = testFile.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return package.deletingLastPathComponent().appendingPathComponent("shared/datasets").path
}()

/// Expects `body` to throw a `FathomError` with `code` whose message contains every fragment.
@discardableResult
func expectFathomError(_ code: FathomError.Code, _ fragments: [String] = [], offset: UInt64? = nil,
                       sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () throws -> Void) -> FathomError? {
    let caught = #expect(throws: FathomError.self, sourceLocation: sourceLocation) { try body() }
    guard let e = caught else { return nil }
    #expect(e.code == code, "expected code \(code), got \(e.code): \(e)", sourceLocation: sourceLocation)
    for f in fragments {
        #expect(e.message.contains(f), "message lacks '\(f)': \(e.message)", sourceLocation: sourceLocation)
    }
    if let offset {
        #expect(e.offset == offset, "expected offset \(offset), got \(String(describing: e.offset)): \(e)", sourceLocation: sourceLocation)
    }
    return e
}

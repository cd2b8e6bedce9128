import FathomCore

/// Converts stored vector components to `Float`.
///
/// uint8 and int8 values convert exactly (every value is representable); float32 is copied
/// byte for byte. Sources need no particular alignment.
public enum ElementConversion {
    /// Converts `count` components of type `type` starting at `src` into `dst`.
    ///
    /// - Parameters:
    ///   - src: the first component; any alignment.
    ///   - type: the element type of the components at `src`.
    ///   - count: number of components (not bytes).
    ///   - dst: room for `count` floats; must not overlap `src`.
    public static func toFloat(_ src: UnsafeRawPointer, _ type: ElementType, count: Int,
                               into dst: UnsafeMutablePointer<Float>) {
        guard count > 0 else { return }
        switch type {
        case .float32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .uint8:
            let s = src.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { dst[i] = Float(s[i]) }
        case .int8:
            let s = src.assumingMemoryBound(to: Int8.self)
            for i in 0..<count { dst[i] = Float(s[i]) }
        }
    }
}

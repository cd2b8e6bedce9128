/// Element type of stored vectors.
public enum ElementType: String, Sendable, Codable, CaseIterable {
    case float32, uint8, int8

    /// Bytes per component.
    @inlinable public var size: Int { self == .float32 ? 4 : 1 }
}

/// Distance function. Smaller is always nearer:
/// - `l2`: squared Euclidean distance;
/// - `ip`: negated inner product (`-<q, x>`), so that larger products rank first;
/// - `cosine`: `1 - cos(q, x)`; vectors and queries are normalized to unit length at build
///   and query time and scored as inner product.
public enum Metric: String, Sendable, Codable, CaseIterable {
    case l2, ip, cosine
}

/// Parses sizes such as `2GiB`, `512MiB`, `1.5G`, `4096` (bytes). Units are powers of 1024;
/// `KB/MB/GB` are accepted as synonyms of `KiB/MiB/GiB`.
public func parseByteSize(_ text: String) -> UInt64? {
    let t = text.trimmingCharacters(in: .whitespaces)
    var numEnd = t.startIndex
    while numEnd < t.endIndex, t[numEnd].isNumber || t[numEnd] == "." { numEnd = t.index(after: numEnd) }
    guard let value = Double(t[t.startIndex..<numEnd]), value >= 0 else { return nil }
    let unit = t[numEnd...].trimmingCharacters(in: .whitespaces).lowercased()
    let mult: Double
    switch unit {
    case "", "b": mult = 1
    case "k", "kb", "kib": mult = 1024
    case "m", "mb", "mib": mult = 1024 * 1024
    case "g", "gb", "gib": mult = 1024 * 1024 * 1024
    case "t", "tb", "tib": mult = 1024 * 1024 * 1024 * 1024
    default: return nil
    }
    let bytes = value * mult
    guard bytes < 1.8e19 else { return nil }
    return UInt64(bytes)
}

/// Formats a byte count as `1.50 GiB`.
public func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(bytes)
    var i = 0
    while v >= 1024, i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(bytes) B" : String(format: "%.2f", v) + " " + units[i]
}

import Foundation

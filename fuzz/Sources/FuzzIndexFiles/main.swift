// Fuzz target: the binary index files an open reads (heads.bin, graph.bin, postings.idx,
// codec.bin, attrs.bin, summaries.bin). The first input byte picks the file (byte % 6) and
// the reference index (byte / 6 even: the LVQ-8 + attributes index; odd: the plain one, for
// the files it has); the rest of the input replaces that file. The harness then rewrites
// manifest.json with the new file's size and CRC32C and re-seals it (public Manifest API),
// as a writer would, so the input reaches the file's parser instead of stopping at the
// manifest's size/CRC checks; then the index is opened and searched. Likewise, when the
// selector byte is < 128 and the payload starts with a "FTHM" magic, the harness recomputes
// the 64-byte common header's CRC (bytes 60..<64), so mutated header fields reach the
// structural checks; selectors >= 128 leave the header CRC as the input has it.
import Fathom
import FuzzSupport
import Foundation

let fileNames = ["heads.bin", "graph.bin", "postings.idx", "codec.bin", "attrs.bin", "summaries.bin"]

final class Target: @unchecked Sendable {
    let reference: ReferenceIndexes
    let dirs: [String]              // work dirs: [full, plain]
    let manifests: [Manifest]       // their manifests
    init() throws {
        reference = try ReferenceIndexes(root: scratch + "/reference")
        dirs = [scratch + "/work-full", scratch + "/work-plain"]
        linkIndex(reference.full, into: dirs[0])
        linkIndex(reference.plain, into: dirs[1])
        manifests = try [reference.full, reference.plain].map {
            try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: $0 + "/manifest.json")))
        }
    }
}
nonisolated(unsafe) var target: Target! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    guard size >= 1 else { return 0 }
    let pick = Int(data[0])
    let name = fileNames[pick % fileNames.count]
    var which = (pick / fileNames.count) % 2
    if which == 1 && !target.manifests[1].files.contains(where: { $0.name == name }) { which = 0 }
    let dir = target.dirs[which], original = [target.reference.full, target.reference.plain][which]
    var m = target.manifests[which]
    guard let i = m.files.firstIndex(where: { $0.name == name }) else { return 0 }
    var bytes = [UInt8](UnsafeBufferPointer(start: data + 1, count: size - 1))
    if pick < 128 && bytes.count >= 64 && bytes.starts(with: Array("FTHM".utf8)) {
        let c = bytes.withUnsafeBytes { crc32c($0.baseAddress!, 60, 0) }
        for j in 0..<4 { bytes[60 + j] = UInt8(truncatingIfNeeded: c >> (8 * UInt32(j))) }
    }
    let n = bytes.count
    m.files[i].bytes = UInt64(n)
    m.files[i].crc32c = bytes.withUnsafeBytes { crcHex($0.baseAddress, n) }
    guard let sealed = try? m.sealedData() else { fatalError("cannot seal the manifest") }
    let p = dir + "/" + name, mp = dir + "/manifest.json"
    unlink(p); unlink(mp)
    writeFile(p, bytes)
    sealed.withUnsafeBytes { writeFile(mp, $0.baseAddress, $0.count) }
    openAndSearch(dir)
    // Restore the links to the reference files.
    unlink(p); unlink(mp)
    precondition(link(original + "/" + name, p) == 0 && link(original + "/manifest.json", mp) == 0)
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    do { target = try Target() } catch { fatalError("cannot build the reference indexes: \(error)") }
    writeSeedsIfAsked("indexfiles") { dir in
        // The real files (valid header + payload), each behind its selector byte, then a few
        // broken variants: header only, a flipped count, a truncated payload.
        for (w, index) in [target.reference.full, target.reference.plain].enumerated() {
            for (k, name) in fileNames.enumerated() {
                let path = index + "/" + name
                guard FileManager.default.fileExists(atPath: path) else { continue }
                let bytes = readFile(path), sel = UInt8(k + fileNames.count * w)
                let tag = (w == 0 ? "full-" : "plain-") + name
                writeFile(dir + "/valid-" + tag, [sel] + bytes)
                guard w == 0 else { continue }
                writeFile(dir + "/header-only-" + tag, [sel] + Array(bytes.prefix(64)))
                writeFile(dir + "/truncated-" + tag, [sel] + Array(bytes.prefix(bytes.count - 5)))
                var big = bytes
                if big.count >= 24 { big[19] = 0x40 }                 // count × 2^24
                writeFile(dir + "/count-huge-" + tag, [sel] + big)
            }
        }
    }
    return 0
}

@_cdecl("FuzzIndexFiles_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

// Fuzz target: manifest.json. The input is written as the manifest of a directory that
// otherwise holds a valid index (hard links to a reference index built at startup), then the
// index is opened and, if that succeeds, searched. The manifest's self-checksum is filled in
// for the input first (sealManifestBytes), so mutations reach the checks behind it: file
// sizes and CRCs, the consistency of the manifest with every file header, the codec and
// attribute sections. Inputs that mention "lvq" or "attributes" go to the reference index
// with LVQ-8 postings and attributes, the others to the plain one.
import Fathom
import FuzzSupport
import Foundation

nonisolated(unsafe) var reference: ReferenceIndexes! = nil
let plainDir = scratch + "/work-plain", fullDir = scratch + "/work-full"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    var bytes = [UInt8](UnsafeBufferPointer(start: data, count: size))
    let full = bytes.firstRange(of: Array("lvq".utf8)) != nil || bytes.firstRange(of: Array("\"attributes\"".utf8)) != nil
    let dir = full ? fullDir : plainDir
    sealManifestBytes(&bytes)
    writeFile(dir + "/manifest.json", bytes)
    openAndSearch(dir)
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    do { reference = try ReferenceIndexes(root: scratch + "/reference") }
    catch { fatalError("cannot build the reference indexes: \(error)") }
    // The manifest is rewritten per input (a new file, not through the link).
    linkIndex(reference.plain, into: plainDir); unlink(plainDir + "/manifest.json")
    linkIndex(reference.full, into: fullDir); unlink(fullDir + "/manifest.json")
    writeSeedsIfAsked("manifest") { dir in
        let plain = readFile(reference.plain + "/manifest.json"), full = readFile(reference.full + "/manifest.json")
        writeFile(dir + "/valid-plain.json", plain)
        writeFile(dir + "/valid-lvq8-attributes.json", full)
        let text = String(decoding: plain, as: UTF8.self)
        func variant(_ name: String, _ from: String, _ to: String) {
            writeFile(dir + "/" + name + ".json", Array(text.replacingOccurrences(of: from, with: to).utf8))
        }
        variant("dimension-0", "\"dimension\" : 16", "\"dimension\" : 0")
        variant("dimension-huge", "\"dimension\" : 16", "\"dimension\" : 4611686018427387904")
        variant("count-negative", "\"count\" : 300", "\"count\" : -1")
        variant("heads-0", "\"heads\" : 24", "\"heads\" : 0")
        variant("element-uint8", "\"element_type\" : \"float32\"", "\"element_type\" : \"uint8\"")
        variant("version-2", "\"format_version\" : 1", "\"format_version\" : 2")
        variant("codec-unknown", "\"codec\" : \"none\"", "\"codec\" : \"lvq3\"")
        writeFile(dir + "/truncated.json", Array(plain.prefix(plain.count / 2)))
        writeFile(dir + "/empty.json", [])
    }
    return 0
}

@_cdecl("FuzzManifest_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

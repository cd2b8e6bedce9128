// Fuzz target: the vector file readers (docs/input-formats.md). Each input is written as a
// .fbin, .u8bin, .fvecs, .bvecs and .npy file; each is inspected, read to the end with
// VectorFileReader and, if the header is valid, mapped with MappedVectorFile and every row
// converted. Malformed files must give a FathomError, never a trap.
import Fathom
import FuzzSupport
import Foundation

let extensions = ["fbin", "u8bin", "fvecs", "bvecs", "npy"]
let paths = extensions.map { scratch + "/input." + $0 }

func exercise(_ path: String) {
    var inspected = false
    expectingFathomErrors("VectorFileHeader.inspect") {
        let h = try VectorFileHeader.inspect(path: path)
        inspected = h.count >= 0
    }
    expectingFathomErrors("VectorFileReader") {
        let r = try VectorFileReader(path: path, blockBytes: 512)
        guard r.count > 0 else { return }      // n = 0 allows any d: buffers below are rows × d
        let rows = max(1, min(r.count, 16))
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: rows * r.dimension)
        defer { buf.deallocate() }
        var total = 0
        while true {
            let got = try r.readFloats(maxRows: rows, into: buf)
            if got == 0 { break }
            total += got
        }
        precondition(total == r.count, "VectorFileReader delivered \(total) rows of \(r.count)")
    }
    guard inspected else { return }
    expectingFathomErrors("MappedVectorFile") {
        let m = try MappedVectorFile(path: path)
        guard m.count > 0 else { return }
        let row = UnsafeMutablePointer<Float>.allocate(capacity: max(1, m.dimension))
        defer { row.deallocate() }
        var sum: Float = 0
        for i in 0..<m.count { m.rowFloats(i, into: row); sum += row[0] }
        blackHole(sum)
    }
}

@inline(never) func blackHole(_ x: Float) { if x == 0x1p100 { print("") } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    for p in paths {
        writeFile(p, data, size)
        exercise(p)
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    writeSeedsIfAsked("vectorfiles") { dir in
        let src = scratch + "/seed.fbin"
        try writeBase(src, n: 6, d: 5)
        let rows = try MappedVectorFile(path: src)
        // Valid files of every format, written by VectorFileWriter.
        for (format, type) in [(VectorFileFormat.fbin, ElementType.float32), (.u8bin, .uint8), (.fvecs, .float32),
                               (.bvecs, .uint8), (.npy, .float32), (.npy, .uint8)] {
            let out = dir + "/valid-\(format.rawValue)-\(type.rawValue)." + format.rawValue
            let w = try VectorFileWriter(path: out, format: format, elementType: type, dimension: 5)
            for i in 0..<rows.count {
                if type == .float32 { try w.append(rows.row(i), count: 1) }
                else {
                    var f = [Float](repeating: 0, count: 5); rows.rowFloats(i, into: &f)
                    let b = f.map { UInt8(clamping: Int(abs($0) * 100)) }
                    try b.withUnsafeBytes { try w.append($0.baseAddress!, count: 1) }
                }
            }
            try w.close(sync: false)
        }
        // Broken ones: truncated, trailing bytes, dimension change, overflowing header, bad npy dict.
        let fbin = readFile(dir + "/valid-fbin-float32.fbin")
        writeFile(dir + "/truncated.fbin", Array(fbin.dropLast(3)))
        writeFile(dir + "/trailing.fbin", fbin + [1, 2, 3, 4])
        writeFile(dir + "/overflow.fbin", [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F] + Array(repeating: 0, count: 16))
        writeFile(dir + "/zero-dim.fbin", [3, 0, 0, 0, 0, 0, 0, 0])
        var fvecs = readFile(dir + "/valid-fvecs-float32.fvecs")
        fvecs[2 * 24] = 4                                   // record 2 claims d = 4
        writeFile(dir + "/dimchange.fvecs", fvecs)
        writeFile(dir + "/negative-dim.bvecs", [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        let npy = readFile(dir + "/valid-npy-float32.npy")
        var dict = npy
        let s = Array("'descr': '<f4'".utf8)
        if let r = dict.firstRange(of: s) { dict.replaceSubrange(r, with: Array("'descr': '<f8'".utf8)) }
        writeFile(dir + "/f8.npy", dict)
        var shape3 = npy
        if let r = shape3.firstRange(of: Array("(6, 5)".utf8)) { shape3.replaceSubrange(r, with: Array("(6,5,1)".utf8)) }
        writeFile(dir + "/shape3.npy", shape3)
        writeFile(dir + "/v2.npy", [0x93] + Array("NUMPY".utf8) + [2, 0, 20, 0, 0, 0] + Array("{'shape': (1,)}    \n".utf8))
    }
    return 0
}

@_cdecl("FuzzVectorFiles_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

// Fuzz target: ground-truth files (.ibin with distances, .ivecs) through GroundTruth.read.
import Fathom
import FuzzSupport
import Foundation

let paths = [scratch + "/gt.ibin", scratch + "/gt.ivecs"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let data = data ?? emptyInput     // libFuzzer may pass NULL for an empty input
    for p in paths {
        writeFile(p, data, size)
        expectingFathomErrors("GroundTruth.read") {
            let gt = try GroundTruth.read(path: p)
            var s = 0
            for q in 0..<gt.count {
                s &+= gt.neighbors(of: q).reduce(0) { $0 &+ Int($1) }
                if let d = gt.distances(of: q) { s &+= d.count }
            }
            if s == 0x5EED_F00D { print("") }
        }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    writeSeedsIfAsked("groundtruth") { dir in
        let gt = GroundTruth(count: 3, k: 4, ids: (0..<12).map { Int32($0 * 7 % 13) },
                             distances: (0..<12).map { Float($0) * 0.5 })
        try gt.write(path: dir + "/valid.ibin", sync: false)
        try GroundTruth(count: 3, k: 4, ids: gt.ids, distances: nil).write(path: dir + "/valid.ivecs", sync: false)
        let ibin = readFile(dir + "/valid.ibin")
        writeFile(dir + "/ids-only.ibin", Array(ibin.prefix(8 + 4 * 12)))
        writeFile(dir + "/truncated.ibin", Array(ibin.dropLast(1)))
        writeFile(dir + "/overflow.ibin", [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        var ivecs = readFile(dir + "/valid.ivecs")
        ivecs[20] = 3                                          // record 1 claims k = 3
        writeFile(dir + "/kchange.ivecs", ivecs)
        writeFile(dir + "/negative-k.ivecs", [0xFE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0])
    }
    return 0
}

@_cdecl("FuzzGroundTruth_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}

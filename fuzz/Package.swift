// swift-tools-version:6.0
// libFuzzer targets for Fathom's parsers, kept out of the main package. One executable per
// parser; each defines LLVMFuzzerTestOneInput and goes through Fathom's public API only.
// Build and run them with `tools/fuzz` (docs/reliability.md), which passes
//   -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
import PackageDescription

let targets = ["FuzzVectorFiles", "FuzzGroundTruth", "FuzzManifest", "FuzzIndexFiles",
               "FuzzAttributes", "FuzzFilter", "FuzzBlobs"]

let package = Package(
    name: "FathomFuzz",
    platforms: [.macOS(.v13)],
    dependencies: [.package(name: "Fathom", path: "..")],
    targets: [
        // libFuzzer's driver entry, called from each target's (renamed) main.
        .target(name: "CFuzz", path: "Sources/CFuzz"),
        // Shared: scratch files, the reference indexes, seed-corpus writers.
        .target(name: "FuzzSupport", dependencies: ["CFuzz", .product(name: "Fathom", package: "Fathom"),
                                                  .product(name: "FathomTools", package: "Fathom")],
                path: "Sources/FuzzSupport"),
    ] + targets.map {
        .executableTarget(name: $0, dependencies: ["FuzzSupport", .product(name: "Fathom", package: "Fathom")],
                          path: "Sources/\($0)")
    }
)

// swift-tools-version:6.0
// Fathom: a disk-resident vector search engine (SPANN partitioning, LeanVec/LVQ codes,
// libaio reads). Layers, dependencies pointing down:
//   FathomCLI (fathom) -> Fathom -> FathomCodecs -> FathomStorage -> FathomMath -> FathomCore
//   C below them: CKernels (SIMD distances), CAIO (libaio), CLZ4, CBLAS (OpenBLAS + LAPACK).
import PackageDescription

let package = Package(
    name: "Fathom",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Fathom", targets: ["Fathom"]),
        .executable(name: "fathom", targets: ["FathomCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C layer
        .target(name: "CKernels", path: "Sources/CKernels"),
        .systemLibrary(name: "CAIO", path: "Sources/CAIO", providers: [.apt(["libaio-dev"])]),
        .systemLibrary(name: "CLZ4", path: "Sources/CLZ4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", providers: [.apt(["libopenblas-dev"])]),

        // Swift layers
        .target(name: "FathomCore", path: "Sources/FathomCore"),
        .target(name: "FathomMath", dependencies: ["FathomCore", "CKernels", "CBLAS"],
                path: "Sources/FathomMath"),
        .target(name: "FathomStorage", dependencies: ["FathomCore", "FathomMath", "CAIO", "CLZ4"],
                path: "Sources/FathomStorage"),
        .target(name: "FathomCodecs", dependencies: ["FathomCore", "FathomMath", "CKernels", "CBLAS"],
                path: "Sources/FathomCodecs"),
        .target(name: "Fathom", dependencies: ["FathomCore", "FathomMath", "FathomStorage", "FathomCodecs"],
                path: "Sources/Fathom"),
        .executableTarget(name: "FathomCLI",
                          dependencies: ["Fathom",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/FathomCLI"),

        // Benchmarks (release mode only; they write JSON under bench/results/)
        .executableTarget(name: "KernelBench", dependencies: ["FathomMath", "CKernels"],
                          path: "bench/KernelBench"),

        // Tests: one target per layer
        .testTarget(name: "FathomMathTests", dependencies: ["FathomMath", "CKernels"]),
        .testTarget(name: "FathomStorageTests", dependencies: ["FathomStorage"]),
        .testTarget(name: "FathomCodecsTests", dependencies: ["FathomCodecs", "CKernels"]),
        .testTarget(name: "FathomTests", dependencies: ["Fathom"]),
    ]
)

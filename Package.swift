// swift-tools-version:6.0
// Fathom: a disk-resident vector search engine (SPANN partitioning, LeanVec/LVQ codes,
// libaio reads). Targets, every dependency pointing down (docs/architecture.md):
//   FathomCLI (fathom) -> FathomServer, FathomTools -> Fathom
//   Fathom -> FathomCodecs -> FathomMath -> FathomCore
//   Fathom -> FathomStorage -> FathomCore
//   FathomCLI -> FathomObjectStore -> FathomStorage, FathomCore (S3 push/pull of index directories)
//   C below them: CKernels (SIMD kernels, CRC32C; used by FathomMath, FathomCodecs,
//   FathomStorage), CBLAS (OpenBLAS + LAPACK; FathomMath, FathomCodecs), CAIO (libaio;
//   FathomStorage). Each target declares exactly the modules it imports.
import PackageDescription

let package = Package(
    name: "Fathom",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Fathom", targets: ["Fathom"]),
        .library(name: "FathomServer", targets: ["FathomServer"]),
        // Dataset tools and the search benchmark (for the fuzz package and scripts; not the search library).
        .library(name: "FathomTools", targets: ["FathomTools"]),
        .executable(name: "fathom", targets: ["FathomCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // fathom serve (FathomServer): HTTP, lifecycle, logs, Prometheus metrics; AsyncHTTPClient for the router's
        // requests to shards (and the server tests).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // NIOHTTPTypes: the request parts seen by the server's body-deadline channel handler.
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.26.0"),
        // FathomObjectStore: its S3 client (streamed PUT/GET of index files) and SigV4 signing;
        // the router's shard client (FathomServer).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // C layer
        .target(name: "CKernels", path: "Sources/CKernels"),
        .systemLibrary(name: "CAIO", path: "Sources/CAIO", providers: [.apt(["libaio-dev"])]),
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", providers: [.apt(["libopenblas-dev"])]),

        // Swift layers
        .target(name: "FathomCore", path: "Sources/FathomCore"),
        .target(name: "FathomMath", dependencies: ["FathomCore", "CKernels", "CBLAS"],
                path: "Sources/FathomMath"),
        .target(name: "FathomStorage", dependencies: ["FathomCore", "CKernels", "CAIO"],
                path: "Sources/FathomStorage"),
        .target(name: "FathomCodecs", dependencies: ["FathomCore", "FathomMath", "CKernels", "CBLAS"],
                path: "Sources/FathomCodecs"),
        .target(name: "Fathom", dependencies: ["FathomCore", "FathomMath", "FathomStorage", "FathomCodecs"],
                path: "Sources/Fathom"),
        // Datasets (synthetic data, exact ground truth, conversion) and the search benchmark:
        // the CLI's tools, kept out of the library.
        .target(name: "FathomTools", dependencies: ["Fathom", "FathomCodecs"], path: "Sources/FathomTools"),
        // Index directories in an S3-compatible object store: SigV4 client, push (manifest last),
        // pull into a local cache (verified, atomically published). docs/scale-out.md.
        .target(name: "FathomObjectStore",
                dependencies: ["FathomCore", "FathomStorage",
                               .product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "AsyncHTTPClient", package: "async-http-client"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOHTTP1", package: "swift-nio")],
                path: "Sources/FathomObjectStore"),
        // fathom serve: the index as an HTTP/JSON service, or the router of a sharded one; uses only Fathom's public API.
        .target(name: "FathomServer",
                dependencies: ["Fathom",
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "HummingbirdCore", package: "hummingbird"),
                               .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOHTTP1", package: "swift-nio"),
                               .product(name: "AsyncHTTPClient", package: "async-http-client")],
                path: "Sources/FathomServer"),
        .executableTarget(name: "FathomCLI",
                          dependencies: ["Fathom", "FathomTools", "FathomServer", "FathomObjectStore",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Sources/FathomCLI"),

        // Benchmarks (release mode only; they write JSON under bench/results/)
        .executableTarget(name: "KernelBench", dependencies: ["CKernels"],
                          path: "bench/KernelBench"),

        // Tests: one target per layer, and the helpers they share (temporary directories,
        // synthetic data files, fault injection): a regular target only test targets use.
        .target(name: "FathomTestSupport", dependencies: ["Fathom", "FathomTools"], path: "Tests/FathomTestSupport"),
        .testTarget(name: "FathomMathTests", dependencies: ["FathomMath", "CKernels"]),
        .testTarget(name: "FathomStorageTests", dependencies: ["FathomStorage", "FathomCore", "FathomTestSupport"]),
        .testTarget(name: "FathomCodecsTests", dependencies: ["FathomCodecs", "FathomMath", "FathomCore", "CKernels"]),
        .testTarget(name: "FathomTests", dependencies: ["Fathom", "FathomCore", "FathomMath", "FathomStorage", "FathomCodecs",
                                                "FathomTools", "FathomTestSupport"]),
        // Starts a real S3 server (SeaweedFS `weed`, installed by tools/bootstrap).
        .testTarget(name: "FathomObjectStoreTests",
                    dependencies: ["FathomObjectStore", "Fathom", "FathomStorage", "FathomCore", "FathomTestSupport"]),
        .testTarget(name: "FathomServerTests",
                    dependencies: ["FathomServer", "Fathom", "FathomTestSupport",
                                   .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                   .product(name: "Logging", package: "swift-log"),
                                   .product(name: "NIOCore", package: "swift-nio"),
                                   .product(name: "NIOHTTP1", package: "swift-nio")]),
    ]
)

// CRC32C (Sources/CKernels/crc32c.c): the dispatched kernel (three-way interleaved SSE4.2
// where the CPU has it) against the table-driven scalar body, on every length up to three
// pages plus random ones, every alignment within a word, seeds 0 and continued streams.
import Testing
import CKernels
import FathomMath

@Suite struct CRC32CTests {
    @Test func theCheckValueOfTheStandard() {
        // RFC 3720 (iSCSI) / the catalogue's check value of "123456789".
        let s = Array("123456789".utf8)
        #expect(fk_crc32c(0, s, s.count) == 0xE306_9283)
        #expect(fk_crc32c_scalar(0, s, s.count) == 0xE306_9283)
        let zeros = [UInt8](repeating: 0, count: 32)
        #expect(fk_crc32c(0, zeros, 32) == 0x8A91_36AA)    // RFC 3720 B.4: 32 bytes of zeros
    }

    @Test func hardwareEqualsScalarOnEveryLengthAndAlignment() {
        var rng = SplitMix64(seed: 11)
        let bytes = (0..<(3 * 4096 + 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        bytes.withUnsafeBytes { b in
            var mismatches = 0
            for n in 0...(3 * 4096) {
                let off = n % 8, seed = n % 3 == 0 ? 0 : UInt32(truncatingIfNeeded: rng.next())
                if fk_crc32c(seed, b.baseAddress! + off, n) != fk_crc32c_scalar(seed, b.baseAddress! + off, n) { mismatches += 1 }
            }
            #expect(mismatches == 0)
        }
    }

    @Test func aStreamSplitAnywhereGivesTheSameCRC() {
        var rng = SplitMix64(seed: 12)
        let bytes = (0..<10_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        bytes.withUnsafeBytes { b in
            let whole = fk_crc32c(0, b.baseAddress!, b.count)
            for cut in [1, 7, 255, 768, 3072, 4096, 5000, 9999] {
                #expect(fk_crc32c(fk_crc32c(0, b.baseAddress!, cut), b.baseAddress! + cut, b.count - cut) == whole, "cut at \(cut)")
            }
        }
    }
}

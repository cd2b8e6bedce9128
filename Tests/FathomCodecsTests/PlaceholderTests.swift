import Testing
@testable import FathomCodecs

@Test func codecsModuleLoads() { #expect(FathomCodecsVersion.current == 1) }

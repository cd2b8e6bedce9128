import Foundation

/// Deleted internal ids of one index version: a bitset over every id (base and inserted).
/// An index without deletes has an all-clear set; ``Searcher`` drops a deleted id where it
/// drops a duplicate, so deletes cost one bit test per candidate under the heap's bound.
///
/// Thread safety: immutable once published (the writer copies it for the next version).
public final class Tombstones: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt64>
    let wordCount: Int
    /// Number of ids marked deleted.
    public private(set) var deleted: Int

    init(capacity ids: Int) {
        wordCount = max(1, (ids + 63) / 64)
        words = .allocate(capacity: wordCount)
        words.initialize(repeating: 0, count: wordCount)
        deleted = 0
    }

    /// A copy with room for `ids` ids.
    func copy(capacity ids: Int) -> Tombstones {
        let t = Tombstones(capacity: max(ids, wordCount * 64))
        t.words.update(from: words, count: wordCount)
        t.deleted = deleted
        return t
    }

    deinit { words.deallocate() }

    @inline(__always)
    public func contains(_ id: UInt32) -> Bool {
        let w = Int(id >> 6)
        return w < wordCount && (words[w] >> UInt64(id & 63)) & 1 != 0
    }

    /// Marks `id` (writer side, before publication).
    func insert(_ id: UInt32) {
        let w = Int(id >> 6)
        precondition(w < wordCount)
        if (words[w] >> UInt64(id & 63)) & 1 == 0 { deleted += 1 }
        words[w] |= 1 << UInt64(id & 63)
    }

    var residentBytes: Int { wordCount * 8 }
}

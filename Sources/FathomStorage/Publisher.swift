import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Atomic publication of a finished directory (an index generation).
public enum Publisher {
    /// Name of the directory an old generation is moved to before it is deleted; one left
    /// behind by a crash is removed by `cleanLeftovers` (the next build).
    public static func asideName(_ destination: String) -> String { destination + ".fathom-old-\(getpid())" }

    /// Moves the complete `buildDirectory` to `destination` so that a reader of `destination`
    /// sees the previous complete directory or the new one, never a mix and never nothing:
    ///
    /// - no destination: `rename` (then fsync of the parent);
    /// - a destination: `renameat2(RENAME_EXCHANGE)` swaps the two in one step; the old
    ///   generation, now at `buildDirectory`, is renamed to `DEST.fathom-old-PID`, the parent
    ///   fsynced, and then deleted (and the parent fsynced again);
    /// - a file system without RENAME_EXCHANGE: an empty destination directory is replaced by
    ///   `rename` (atomic); a non-empty one is refused with an error, because every other
    ///   way (move the old one aside, then rename) leaves a moment with no index at all.
    ///
    /// The caller has fsynced every file and the build directory itself. `exchange` swaps two
    /// paths (tests pass one that fails, to take the path of a file system without it).
    ///
    /// `marker` is the file that makes an existing destination one Fathom may replace
    /// (`manifest.json` for an index, `model.json` for a model).
    public static func publish(buildDirectory: String, destination: String, marker: String = "manifest.json",
                               exchange: (String, String) throws -> Bool = exchangePaths) throws {
        let fm = FileManager.default
        let parent = URL(fileURLWithPath: destination).deletingLastPathComponent().path
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: destination, isDirectory: &isDir) else {
            try renamePath(buildDirectory, destination)
            try fsyncDirectory(parent)
            return
        }
        guard isDir.boolValue else {
            throw FathomError(.invalidArgument, "the destination exists and is not a directory", path: destination, remedies: [.chooseAnotherDestination])
        }
        let hasManifest = fm.fileExists(atPath: destination + "/" + marker)
        let entries = (try? fm.contentsOfDirectory(atPath: destination)) ?? []
        guard hasManifest || entries.isEmpty else {
            throw FathomError(.invalidArgument, "the destination is a non-empty directory that is not a Fathom \(marker == "manifest.json" ? "index" : "model"); refusing to replace it", path: destination,
                              remedies: [.chooseAnotherDestination])
        }
        if try exchange(buildDirectory, destination) {
            CrashTestPause.point("publish.exchanged")
            try fsyncDirectory(parent)
            CrashTestPause.point("publish.exchange-durable")
            // The old generation: out of the build path first (so that a crash here leaves
            // nothing a rerun could mistake for its own build), then deleted.
            let aside = asideName(destination)
            try removeTree(aside)
            try renamePath(buildDirectory, aside)
            try fsyncDirectory(parent)
            CrashTestPause.point("publish.old-aside")
            try removeTree(aside)
            try fsyncDirectory(parent)
            return
        }
        guard entries.isEmpty else {
            throw FathomError(.io, "this file system cannot exchange two directories atomically (no renameat2 RENAME_EXCHANGE), and replacing the index any other way would leave a moment with no index; remove the old index first or build on a file system that supports it (ext4, xfs, btrfs, tmpfs)", path: destination)
        }
        try renamePath(buildDirectory, destination)   // replaces the empty directory atomically
        try fsyncDirectory(parent)
    }

    /// Removes the old generations of `destination` a crashed publish left behind
    /// (`DEST.fathom-old-PID`). If the destination itself is missing (a crash of an older
    /// Fathom between its two renames), the newest complete leftover is put back first.
    /// Call it only while holding the build lock of `destination`.
    public static func cleanLeftovers(destination: String) throws {
        let fm = FileManager.default
        let url = URL(fileURLWithPath: destination)
        let parent = url.deletingLastPathComponent().path, prefix = url.lastPathComponent + ".fathom-old-"
        let leftovers = ((try? fm.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.hasPrefix(prefix) }.map { parent + "/" + $0 }
        guard !leftovers.isEmpty else { return }
        if !fm.fileExists(atPath: destination),
           let restore = leftovers.filter({ fm.fileExists(atPath: $0 + "/manifest.json") })
               .max(by: { modified($0) < modified($1) }) {
            try renamePath(restore, destination)
            try fsyncDirectory(parent)
        }
        for l in leftovers where fm.fileExists(atPath: l) { try removeTree(l) }
        try fsyncDirectory(parent)
    }

    private static func modified(_ path: String) -> Date {
        ((try? FileManager.default.attributesOfItem(atPath: path + "/manifest.json"))?[.modificationDate] as? Date) ?? .distantPast
    }
}

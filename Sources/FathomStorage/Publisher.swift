import CAIO
import FathomCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Atomic publication of a finished directory (an index generation).
public enum Publisher {
    /// Moves the complete `buildDirectory` to `destination` so that a reader of `destination`
    /// sees either the previous complete directory or the new one, never a mix:
    /// `renameat2(RENAME_EXCHANGE)` swaps them in one step when `destination` exists (the old
    /// one is then deleted from the build path), a plain `rename` publishes a first one.
    /// The parent directory is fsynced afterwards. The caller has fsynced every file and the
    /// build directory itself.
    public static func publish(buildDirectory: String, destination: String) throws {
        let fm = FileManager.default
        let parent = (URL(fileURLWithPath: destination).deletingLastPathComponent().path)
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: destination, isDirectory: &isDir) {
            guard isDir.boolValue else {
                throw FathomError(.invalidArgument, "the destination exists and is not a directory; choose another --output or remove it", path: destination)
            }
            let hasManifest = fm.fileExists(atPath: destination + "/manifest.json")
            let entries = (try? fm.contentsOfDirectory(atPath: destination)) ?? []
            guard hasManifest || entries.isEmpty else {
                throw FathomError(.invalidArgument, "the destination is a non-empty directory that is not a Fathom index; refusing to replace it — choose another --output", path: destination)
            }
            let r = caio_rename_exchange(buildDirectory, destination)
            if r == 0 {
                try fsyncDirectory(parent)
                try? fm.removeItem(atPath: buildDirectory)   // the old generation
                return
            }
            // No RENAME_EXCHANGE (old kernel or filesystem): move the old one aside first.
            let aside = destination + ".fathom-old-\(getpid())"
            guard rename(destination, aside) == 0 else { throw FathomError.system("rename", path: destination, errno: errno) }
            guard rename(buildDirectory, destination) == 0 else {
                let e = errno
                _ = rename(aside, destination)
                throw FathomError.system("rename", path: buildDirectory, errno: e)
            }
            try fsyncDirectory(parent)
            try? fm.removeItem(atPath: aside)
            return
        }
        guard rename(buildDirectory, destination) == 0 else { throw FathomError.system("rename", path: buildDirectory, errno: errno) }
        try fsyncDirectory(parent)
    }
}

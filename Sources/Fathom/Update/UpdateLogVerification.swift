import FathomCore
import Foundation

// The update log's part of verifying an index: it belongs to the update code (it replays
// the log the way a writer's open does), so `Index/IndexVerifier.swift` does not reach up
// into Update/ for it.
extension IndexVerifier {
    /// Verifies the index at `directory`: every file the build wrote (checksums, sizes,
    /// structures; see ``IndexVerifier``) and, when there is one, the update log
    /// (docs/updates.md), which must belong to this version of the index and replay.
    /// Returns the problems, each with its file and offset (empty: the index is sound).
    ///
    /// Thread safety: reads only; callable from any thread, for any directories at once.
    public static func verify(directory: String, progress: ProgressReporter = .silent) -> [Problem] {
        var (problems, manifest) = verifyIndexFiles(directory: directory, progress: progress)
        if manifest != nil { problems += verifyUpdateLog(directory: directory) }
        return problems
    }

    /// The update log's problems: none without a log; else the first error of a read-only
    /// replay (a log of another version, a record that does not apply, a relocated list
    /// outside postings.upd), then every relocated list whose records fail their CRC32C.
    static func verifyUpdateLog(directory: String) -> [Problem] {
        let path = directory + "/" + WriteAheadLog.fileName
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        let w: WriterState
        do { w = try WriterState(directory: directory, writable: false, io: .pread, serveMemory: nil) }
        catch { return [Problem(error, file: path)] }
        var problems = [Problem]()
        for h in 0..<w.headCount where w.moved[h] && w.relocated[h].count > 0 {
            do { try w.loadLive(h) } catch { problems.append(Problem(error, file: w.files.postingsPath)) }
        }
        return problems
    }
}

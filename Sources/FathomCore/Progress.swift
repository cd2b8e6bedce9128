import Foundation

/// Reports the progress of long work on stderr: stage, percent and ETA.
///
/// On a terminal the line is redrawn in place (at most 10 times a second); otherwise a
/// plain line is written every 10 percent, so logs stay readable. Results never go here:
/// stdout is reserved for results and JSON.
public final class ProgressReporter: @unchecked Sendable {
    // Invariant: all mutable state is guarded by `lock`.
    private let lock = NSLock()
    private let enabled: Bool
    private let isTTY: Bool
    private var stage = ""
    private var total: UInt64 = 0
    private var done: UInt64 = 0
    private var stageStart = Date()
    private var lastDraw = Date.distantPast
    private var lastDecile = -1

    /// A reporter that writes nothing (for libraries and tests).
    public static let silent = ProgressReporter(enabled: false)

    public init(enabled: Bool = true) {
        self.enabled = enabled
        self.isTTY = isatty(STDERR_FILENO) != 0
    }

    /// Starts a named stage of `total` units (vectors, rows, pages...).
    public func begin(_ stage: String, total: UInt64) {
        lock.lock(); defer { lock.unlock() }
        self.stage = stage
        self.total = max(total, 1)
        self.done = 0
        self.stageStart = Date()
        self.lastDraw = .distantPast
        self.lastDecile = -1
        draw(force: true)
    }

    /// Adds `units` finished units to the current stage.
    public func advance(_ units: UInt64 = 1) {
        lock.lock(); defer { lock.unlock() }
        done = min(total, done + units)
        draw(force: false)
    }

    /// Ends the stage, printing its duration and throughput. Returns the elapsed seconds.
    @discardableResult
    public func end(_ summary: String = "") -> Double {
        lock.lock(); defer { lock.unlock() }
        done = total
        let secs = Date().timeIntervalSince(stageStart)
        if enabled {
            let rate = secs > 0 ? Double(total) / secs : 0
            let extra = summary.isEmpty ? "" : "  \(summary)"
            emit("\(stage): done in \(Self.fmtDuration(secs)) (\(Self.fmtRate(rate))/s)\(extra)", final: true)
        }
        return secs
    }

    /// Writes a free-form note (a plan, a warning) on its own line.
    public func note(_ text: String) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        emit(text, final: true)
    }

    private func draw(force: Bool) {
        guard enabled else { return }
        let now = Date()
        let frac = Double(done) / Double(total)
        let pct = Int(frac * 100)
        if isTTY {
            guard force || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        } else {
            let decile = pct / 10
            guard force || decile > lastDecile else { return }
            lastDecile = decile
        }
        lastDraw = now
        let elapsed = now.timeIntervalSince(stageStart)
        var eta = "--"
        if frac > 0.001, elapsed > 0.5 { eta = Self.fmtDuration(elapsed * (1 - frac) / frac) }
        emit("\(stage): \(pct)% (\(done)/\(total)) elapsed \(Self.fmtDuration(elapsed)) ETA \(eta)", final: false)
    }

    private func emit(_ line: String, final: Bool) {
        let text: String
        if isTTY {
            text = "\r\u{1B}[2K" + line + (final ? "\n" : "")
        } else {
            text = line + "\n"
        }
        FileHandle.standardError.write(text.data(using: .utf8)!)
    }

    static func fmtDuration(_ s: Double) -> String {
        if s < 60 { return String(format: "%.1fs", s) }
        if s < 3600 { return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60) }
        return String(format: "%dh%02dm", Int(s) / 3600, (Int(s) % 3600) / 60)
    }

    static func fmtRate(_ r: Double) -> String {
        if r >= 1e6 { return String(format: "%.2fM", r / 1e6) }
        if r >= 1e3 { return String(format: "%.1fK", r / 1e3) }
        return String(format: "%.1f", r)
    }
}

import Fathom
import Foundation

/// File-system faults for tests, through the storage layer's seam (``FileOperations``):
/// bound around a piece of work with ``inject(_:)``, it counts every read, write and fsync of
/// a file whose path starts with `pathPrefix` (so tests running at once do not disturb each
/// other) and fails the `failAt`-th of them (from 0, among `operations`) with EIO, ENOSPC or a
/// short write; every other call goes to the system.
///
/// ```swift
/// let faults = FaultInjector(pathPrefix: dir.path + "/", failAt: 12, fault: .enospc)
/// do { try faults.inject { try IndexBuilder(input: …, output: …, options: o).build() } }
/// catch { … }          // faults.fired: the call that failed; faults.calls: all counted
/// ```
///
/// Thread safety: `Sendable`; the counters are behind a lock, so the bound work may call it
/// from several threads (calls on Dispatch threads outside the bound task go to the system,
/// not here: see ``StorageIO/fileOperations``).
public final class FaultInjector: FileOperations, @unchecked Sendable {
    /// The kind of storage call.
    public enum Operation: String, Sendable, CaseIterable { case read, write, fsync }

    /// What the failing call does.
    public enum Fault: Sendable, Equatable {
        case eio, enospc
        /// Half the bytes are written, then EIO (writes only; on reads and fsyncs: EIO).
        case shortWrite
        var errno: Int32 { self == .enospc ? ENOSPC : EIO }
    }

    /// One call of the storage layer, as counted: operation, file name (the path after the
    /// prefix), and how many such calls on that file came before it (a distinct call site).
    public struct Call: Hashable, Sendable, CustomStringConvertible {
        public var operation: Operation
        public var file: String
        public var ordinal: Int
        public var description: String { "\(operation.rawValue) #\(ordinal) of \(file)" }
    }

    private let prefix: String
    private let target: (call: Int, fault: Fault, operations: Set<Operation>)?
    private let system = SystemFileOperations()
    private let lock = NSLock()
    private var counted: [Call] = []
    private var perFile: [String: Int] = [:]
    private var matched = 0
    private var firedCall: Call?

    /// Counts the calls under `pathPrefix`; with `failAt`, that call (from 0, among those of
    /// `operations`) fails with `fault`.
    public init(pathPrefix: String, failAt: Int? = nil, fault: Fault = .eio,
                operations: Set<Operation> = Set(Operation.allCases)) {
        prefix = pathPrefix
        target = failAt.map { ($0, fault, operations) }
    }

    /// Runs `body` with this injector as the storage layer's file operations.
    @discardableResult
    public func inject<R>(_ body: () throws -> R) rethrows -> R {
        try StorageIO.$fileOperations.withValue(self, operation: body)
    }

    /// The calls counted so far, in order.
    public var calls: [Call] { lock.lock(); defer { lock.unlock() }; return counted }

    /// The call that failed, if the fault fired.
    public var fired: Call? { lock.lock(); defer { lock.unlock() }; return firedCall }

    /// Counts one call; returns the fault it must fail with, if it is the chosen one.
    private func hit(_ op: Operation, _ path: String) -> Fault? {
        lock.lock(); defer { lock.unlock() }
        guard path.hasPrefix(prefix) else { return nil }
        let name = String(path.dropFirst(prefix.count))
        let key = op.rawValue + " " + name
        let call = Call(operation: op, file: name, ordinal: perFile[key, default: 0])
        perFile[key, default: 0] += 1
        counted.append(call)
        guard let t = target, t.operations.contains(op) else { return nil }
        let index = matched
        matched += 1
        guard index == t.call, firedCall == nil else { return nil }
        firedCall = call
        return op == .write ? t.fault : (t.fault == .enospc ? .enospc : .eio)
    }

    public func read(_ file: OpenFile, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        if let fault = hit(.read, file.path) {
            throw FathomError.system("read", path: file.path, errno: fault.errno, offset: UInt64(offset))
        }
        return try system.read(file, into: buffer, count: count, at: offset)
    }

    public func write(_ file: OpenFile, _ buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        if let fault = hit(.write, file.path) {
            if fault == .shortWrite && count > 1 {
                // Part of the bytes reach the file, then the device fails.
                let done = count / 2
                try system.write(file, buffer, count: done, at: offset)
                throw FathomError.system("write (short: \(done) of \(count) bytes written)", path: file.path, errno: EIO,
                                         offset: UInt64(offset + done))
            }
            throw FathomError.system("write", path: file.path, errno: fault.errno, offset: UInt64(offset))
        }
        try system.write(file, buffer, count: count, at: offset)
    }

    public func sync(_ file: OpenFile) throws {
        if let fault = hit(.fsync, file.path) {
            throw FathomError.system("fsync", path: file.path, errno: fault.errno)
        }
        try system.sync(file)
    }
}

import Fathom
import Foundation
import Logging
import NIOCore
import NIOHTTPTypes

// Bad input over HTTP: the checks a JSON body passes before it is decoded (Content-Type,
// nesting depth, bare NaN/Infinity), and the deadline on a request body's arrival
// (docs/serve.md, "Limits and bad input").

/// What a JSON body must declare: `application/json`, with no charset or `charset=utf-8`
/// (RFC 8259: JSON exchanged between systems is UTF-8). Anything else, or no Content-Type,
/// is a 415 naming the header. Pure: safe from any thread.
func checkJSONContentType(_ value: String?) throws {
    func refuse(_ message: String) -> APIError {
        APIError(415, ServeErrorCode.unsupportedMediaType, message, APIErrorDetail(field: "Content-Type"))
    }
    guard let value, !value.trimmingCharacters(in: .whitespaces).isEmpty else {
        throw refuse("the request has no Content-Type: send the JSON body with Content-Type: application/json")
    }
    let parts = value.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
    guard let type = parts.first, type.lowercased() == "application/json" else {
        throw refuse("Content-Type is '\(value.prefix(100))': the body must be JSON sent as Content-Type: application/json")
    }
    for p in parts.dropFirst() {
        let kv = p.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard kv.count == 2, kv[0].lowercased() == "charset" else { continue }
        let charset = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")).lowercased()
        guard charset == "utf-8" || charset == "utf8" else {
            throw refuse("Content-Type charset '\(kv[1].prefix(40))': JSON bodies are UTF-8; send charset=utf-8 or no charset")
        }
    }
}

/// A linear pass over a JSON body that refuses, before the decoder sees it, nesting deeper
/// than a limit and the bare tokens `NaN` / `Infinity` that some encoders write (JSON has
/// neither), naming where they are (`vectors[3][7]`). It keeps one frame per open array or
/// object, so its memory is bounded by the limit, not by the body. Everything else (syntax,
/// types) is left to the decoder.
///
/// Foundation's decoder itself stops at 512 levels with only "not valid JSON"; this scan
/// gives the limit and the place instead, and a far lower limit (requests need 3 levels).
/// Stateless: safe from any thread.
struct JSONBodyScan {
    private struct Frame {
        var isArray: Bool
        var index = 0
        var key = ""
    }

    /// Throws a 400 naming the field for nesting deeper than `maxDepth` (`nestingTooDeep`)
    /// or a bare non-finite number (`nonFiniteValue`).
    static func check(_ bytes: UnsafeRawBufferPointer, maxDepth: Int) throws {
        var frames = [Frame]()
        frames.reserveCapacity(min(maxDepth, 64) + 1)
        var i = 0
        let n = bytes.count
        var keyStart = -1, lastString = ""
        func path() -> String {
            var s = ""
            for f in frames {
                if f.isArray { s += "[\(f.index)]" } else if !f.key.isEmpty { s += s.isEmpty ? f.key : "." + f.key }
            }
            return s
        }
        while i < n {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                // A string: skip it (escapes included); remember its start for an object key.
                keyStart = i + 1
                i += 1
                while i < n, bytes[i] != UInt8(ascii: "\"") { i += bytes[i] == UInt8(ascii: "\\") ? 2 : 1 }
                let end = min(i, n, keyStart + 64)
                lastString = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[keyStart..<max(keyStart, end)]), as: UTF8.self)
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                guard frames.count < maxDepth else {
                    let at = path()
                    throw APIError(400, ServeErrorCode.nestingTooDeep,
                                   "the JSON nests deeper than \(maxDepth) levels\(at.isEmpty ? "" : " at \(at)"): requests need 3 (an object, 'vectors', one vector)",
                                   APIErrorDetail(field: at.isEmpty ? nil : at, limit: maxDepth))
                }
                frames.append(Frame(isArray: c == UInt8(ascii: "[")))
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                if !frames.isEmpty { frames.removeLast() }
            case UInt8(ascii: ","):
                if let last = frames.indices.last, frames[last].isArray { frames[last].index += 1 }
            case UInt8(ascii: ":"):
                if let last = frames.indices.last, !frames[last].isArray { frames[last].key = lastString }
            case UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"):
                // A bare word (true, false, null) or a sign: read the letters that follow.
                let start = i
                if c == UInt8(ascii: "-") || c == UInt8(ascii: "+") { i += 1 }
                let wordStart = i
                while i < n, (bytes[i] | 0x20) >= UInt8(ascii: "a"), (bytes[i] | 0x20) <= UInt8(ascii: "z") { i += 1 }
                let word = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[wordStart..<i]), as: UTF8.self).lowercased()
                if ["nan", "inf", "infinity"].contains(word) {
                    let token = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
                    let at = path()
                    throw APIError(400, FathomError.Code.nonFiniteValue.rawValue,
                                   "\(at.isEmpty ? "the body" : at) is \(token): vectors must hold finite numbers (JSON has no NaN or Infinity)",
                                   APIErrorDetail(field: at.isEmpty ? nil : at))
                }
                continue
            default:
                break
            }
            i += 1
        }
    }
}

/// Closes a connection whose request body has not fully arrived `timeout` after its head:
/// a client trickling a body byte by byte would otherwise hold a connection (and its
/// buffered bytes) for as long as it likes. Requests still being answered are not affected
/// (the deadline ends with the body). A connection that sends nothing, or trickles its
/// headers, is closed by the HTTP server's idle timeout instead.
///
/// Thread-safety: one instance per connection, used only on that channel's event loop.
final class RequestBodyDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    private let metrics: ServerMetrics
    private let logger: Logger
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount, metrics: ServerMetrics, logger: Logger) {
        self.timeout = timeout; self.metrics = metrics; self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            deadline?.cancel()
            let ms = timeout.nanoseconds / 1_000_000
            let path = head.path ?? ""
            let (m, log) = (metrics, logger)
            deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                m.slowClientClosed()
                log.notice("connection closed: the request body did not arrive within the body timeout",
                           metadata: ["path": "\(path.prefix(200))", "timeout_ms": "\(ms)",
                                      "peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
                context.close(promise: nil)
            }
        case .end:
            deadline?.cancel(); deadline = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel(); deadline = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel(); deadline = nil
    }
}

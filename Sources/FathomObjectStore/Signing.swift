import Crypto
import FathomCore
import Foundation

/// Credentials and region of an S3-compatible store, as AWS tools read them.
///
/// Thread safety: an immutable value, `Sendable`.
public struct S3Credentials: Sendable, Equatable {
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    public var accessKeyId: String
    /// The secret access key (`AWS_SECRET_ACCESS_KEY`); never printed.
    public var secretAccessKey: String
    /// A session token for temporary credentials (`AWS_SESSION_TOKEN`), sent as `x-amz-security-token`.
    public var sessionToken: String?
    /// The signing region (`AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`).
    public var region: String

    /// Credentials given directly.
    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil, region: String = "us-east-1") {
        self.accessKeyId = accessKeyId; self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken; self.region = region
    }

    /// Reads the standard variables from `environment` (the process's by default). Missing
    /// or empty keys are an `invalidArgument` error naming the variables to set.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> S3Credentials {
        func value(_ k: String) -> String? { environment[k].flatMap { $0.isEmpty ? nil : $0 } }
        guard let id = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") else {
            let missing = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].filter { value($0) == nil }
            throw FathomError(.invalidArgument, "no object-store credentials: set \(missing.joined(separator: " and ")) in the environment (and AWS_REGION if the store is not in us-east-1)")
        }
        return S3Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN"),
                             region: value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? "us-east-1")
    }
}

/// AWS Signature Version 4 for S3 (header-based, path-style requests): the canonical
/// request, the string to sign and the `Authorization` header.
///
/// Thread safety: stateless functions on immutable values; callable from any thread.
public enum SigV4 {
    /// SHA-256 of the empty payload, hex.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// RFC 3986 percent-encoding as SigV4 wants it: everything but `A-Z a-z 0-9 - _ . ~`
    /// (and `/` when `keepSlash`) becomes `%XX`.
    public static func uriEncode(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        let hexDigits: [Character] = Array("0123456789ABCDEF")
        for b in s.utf8 {
            let unreserved: Bool
            switch b {
            case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x5F, 0x2E, 0x7E: unreserved = true   // A-Z a-z 0-9 - _ . ~
            default: unreserved = false
            }
            if unreserved || (keepSlash && b == 0x2F) {
                out.unicodeScalars.append(UnicodeScalar(b))
            } else {
                out.append("%"); out.append(hexDigits[Int(b >> 4)]); out.append(hexDigits[Int(b & 15)])
            }
        }
        return out
    }

    /// The canonical query string: pairs sorted by encoded name, both parts encoded.
    public static func canonicalQuery(_ query: [(String, String)]) -> String {
        var pairs: [(name: String, value: String)] = []
        for (n, v) in query { pairs.append((uriEncode(n, keepSlash: false), uriEncode(v, keepSlash: false))) }
        pairs.sort { (a, b) -> Bool in a.name == b.name ? a.value < b.value : a.name < b.name }
        var parts: [String] = []
        for p in pairs { parts.append(p.name + "=" + p.value) }
        return parts.joined(separator: "&")
    }

    /// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
    public static func amzDate(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var tm = tm()
        gmtime_r(&t, &tm)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    }

    /// Lowercase hex of bytes.
    public static func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Signs a request. `headers` must hold every header to sign, with `host`,
    /// `x-amz-date` and `x-amz-content-sha256` among them (names in any case); returns the
    /// `Authorization` header value.
    public static func authorization(method: String, canonicalURI: String, query: [(String, String)],
                                     headers: [(String, String)], payloadHash: String,
                                     credentials: S3Credentials, amzDate: String) -> String {
        let day = String(amzDate.prefix(8))
        var canon = [String: String]()
        for (k, v) in headers {
            let key = k.lowercased()
            let val = v.trimmingCharacters(in: .whitespaces).split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            canon[key] = canon[key].map { $0 + "," + val } ?? val
        }
        let names = canon.keys.sorted()
        let signedHeaders = names.joined(separator: ";")
        let canonicalHeaders = names.map { "\($0):\(canon[$0]!)\n" }.joined()
        let canonicalRequest = [method, canonicalURI, canonicalQuery(query), canonicalHeaders, signedHeaders, payloadHash]
            .joined(separator: "\n")
        let scope = "\(day)/\(credentials.region)/s3/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(SHA256.hash(data: Data(canonicalRequest.utf8)))]
            .joined(separator: "\n")
        func hmac(_ key: SymmetricKey, _ s: String) -> SymmetricKey {
            SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(s.utf8), using: key)))
        }
        var key = SymmetricKey(data: Data(("AWS4" + credentials.secretAccessKey).utf8))
        for part in [day, credentials.region, "s3", "aws4_request"] { key = hmac(key, part) }
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: key))
        return "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
    }
}

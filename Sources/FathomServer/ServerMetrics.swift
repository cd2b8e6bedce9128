import Foundation
import Prometheus

/// The server's Prometheus metrics, on a registry of its own (not the process-wide
/// MetricsSystem, so several servers can run in one process, as in the tests).
///
/// Thread-safety: swift-prometheus collectors are thread-safe; this type only holds them.
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let queueDepth: Gauge
    private let inFlight: Gauge
    private let workers: Gauge

    init(workers n: Int) {
        queueDepth = registry.makeGauge(descriptor: Self.d("admission_queue_depth", "", "Searches waiting for a worker."))
        inFlight = registry.makeGauge(descriptor: Self.d("searches_in_flight", "", "Searches running on a worker now."))
        workers = registry.makeGauge(descriptor: Self.d("search_workers", "", "Worker threads (the bound on concurrent searches)."))
        workers.set(Double(n))
    }

    static func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "fathom", metricName: name, unitName: unit, helpText: help)
    }

    /// Counts one answered request.
    func request(route: String, method: String, status: Int) {
        registry.makeCounter(descriptor: Self.d("http_requests", "total", "HTTP requests by route, method and status."),
                             labels: [("route", route), ("method", method), ("status", String(status))]).increment()
    }

    static let latencyBuckets: [Duration] = [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                                             .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                             .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5)]

    /// One search request answered (all its queries): its wall time from arrival.
    func searchRequest(index: String, seconds: Double) {
        registry.makeDurationHistogram(descriptor: Self.d("search_request_duration", "seconds", "Search request latency per index, arrival to answer."),
                                       labels: [("index", index)], buckets: Self.latencyBuckets)
            .recordNanoseconds(Int64(seconds * 1e9))
    }

    /// One query: its IOs and KiB.
    func query(index: String, ios: Int, kib: Double) {
        registry.makeValueHistogram(descriptor: Self.d("query_ios", "", "Reads per query (postings and re-ranked vectors)."),
                                    labels: [("index", index)], buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
            .record(Double(ios))
        registry.makeValueHistogram(descriptor: Self.d("query_read", "kib", "KiB read per query."),
                                    labels: [("index", index)], buckets: [4, 16, 64, 256, 1024, 4096, 16384, 65536])
            .record(kib)
    }

    /// Queries of a batch left unsearched because the request's deadline passed.
    func abandonedQueries(index: String, count: Int) {
        registry.makeCounter(descriptor: Self.d("search_queries_abandoned", "total", "Queries of a batch not searched, or stopped before their next reads, because the deadline had passed (the request got 504)."),
                             labels: [("index", index)]).increment(by: Int64(count))
    }

    /// One connection closed because its request body did not arrive within the body timeout.
    func slowClientClosed() {
        registry.makeCounter(descriptor: Self.d("http_body_timeouts", "total", "Connections closed because a request body did not fully arrive within the body timeout (slow or stalled clients).")).increment()
    }

    /// Vectors written by acknowledged writes: op is insert, upsert or delete.
    func written(index: String, op: String, count: Int) {
        registry.makeCounter(descriptor: Self.d("written_vectors", "total", "Vectors inserted, upserted or deleted by acknowledged (durable) writes."),
                             labels: [("index", index), ("op", op)]).increment(by: Int64(count))
    }

    /// Router: one request to a shard replica (answered or failed; a failure is retried on
    /// the next replica of the shard).
    func shardCall(shard: Int, replica: String, seconds: Double, succeeded: Bool) {
        registry.makeDurationHistogram(descriptor: Self.d("shard_request_duration", "seconds", "Router: latency of requests to shard replicas."),
                                       labels: [("shard", String(shard)), ("replica", replica), ("outcome", succeeded ? "ok" : "failed")],
                                       buckets: Self.latencyBuckets)
            .recordNanoseconds(Int64(seconds * 1e9))
        if !succeeded {
            registry.makeCounter(descriptor: Self.d("shard_request_failures", "total", "Router: failed requests to shard replicas (each retried on the next replica)."),
                                 labels: [("shard", String(shard)), ("replica", replica)]).increment()
        }
    }

    /// Refreshes the gauges read at scrape time.
    func refresh(executor: SearchExecutor, registry r: IndexRegistry) {
        queueDepth.set(Double(executor.queueDepth))
        inFlight.set(Double(executor.inFlight))
        for name in r.names {
            let s = r[name]!
            registry.makeGauge(descriptor: Self.d("index_generation", "", "Generation of the index now serving (1 at start, +1 per reload)."),
                               labels: [("index", name)]).set(Double(s.generation))
            registry.makeGauge(descriptor: Self.d("index_open_generations", "", "Generations holding files open (current + retired still in use)."),
                               labels: [("index", name)]).set(Double(s.openGenerationCount))
            registry.makeGauge(descriptor: Self.d("index_ready", "", "1 when the index has an open generation."),
                               labels: [("index", name)]).set(Double(s.generation > 0 ? 1 : 0))
            let g = s.currentGeneration
            registry.makeGauge(descriptor: Self.d("index_active_queries", "", "Queries holding the current generation now (queued or searching)."),
                               labels: [("index", name)]).set(Double(g?.activeQueries ?? 0))
            if s.writable {
                registry.makeGauge(descriptor: Self.d("index_version", "", "Writable indexes: updates in the log of the snapshot now served."),
                                   labels: [("index", name)]).set(Double(g?.version ?? 0))
                registry.makeGauge(descriptor: Self.d("index_queued_writes", "", "Writable indexes: writes waiting for the writer or running."),
                                   labels: [("index", name)]).set(Double(s.queuedWrites))
            }
            var pooled = 0
            if let l = try? s.lease() { pooled = l.index.pooledSearcherCount; l.release() }
            registry.makeGauge(descriptor: Self.d("index_idle_searchers", "", "Searchers (each with its IO context) idle in the current generation's pool; open searchers = idle + in flight."),
                               labels: [("index", name)]).set(Double(pooled))
        }
    }

    /// The text exposition format.
    func exposition() -> [UInt8] {
        var buf = [UInt8]()
        registry.emit(into: &buf)
        return buf
    }
}

//! Prometheus metrics of a running replica, served over HTTP at `GET /metrics`.
//!
//! Every update is a lock-free atomic operation except the first use of a new label value in a
//! family, so the protocol task can update metrics on its hot path. Scrapes encode the current
//! values in the OpenMetrics text format.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the request latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// A replica's metrics. Create one with [`Metrics::new`], share the `Arc` with every task that
/// updates it, and pass it to [`serve`] to expose it.
///
/// Exposed names (counters get the `_total` suffix from the encoder):
/// `pbft_committed_requests_total`, `pbft_committed_batches_total`, `pbft_view_changes_total`,
/// `pbft_view`, `pbft_last_executed`, `pbft_stable_checkpoint`,
/// `pbft_rejected_messages_total{reason}`, `pbft_queue_depth{queue}` and the histograms
/// `pbft_request_latency_seconds` and `pbft_persist_seconds`.
pub struct Metrics {
    registry: Registry,
    committed_requests: Counter,
    committed_batches: Counter,
    view_changes: Counter,
    view: U64Gauge,
    last_executed: U64Gauge,
    stable_checkpoint: U64Gauge,
    rejected: Family<ReasonLabel, Counter>,
    queue_depth: Family<QueueLabel, U64Gauge>,
    latency: Histogram,
    persist: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero, registered under the names listed on [`Metrics`].
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let committed_requests = Counter::default();
        let committed_batches = Counter::default();
        let view_changes = Counter::default();
        let view = U64Gauge::default();
        let last_executed = U64Gauge::default();
        let stable_checkpoint = U64Gauge::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let queue_depth = Family::<QueueLabel, U64Gauge>::default();
        let latency = Histogram::new(LATENCY_BUCKETS);
        let persist = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "pbft_committed_requests",
            "Client requests executed by this replica",
            committed_requests.clone(),
        );
        registry.register(
            "pbft_committed_batches",
            "Batches (sequence numbers) executed by this replica",
            committed_batches.clone(),
        );
        registry.register(
            "pbft_view_changes",
            "Views this replica entered after the initial one",
            view_changes.clone(),
        );
        registry.register("pbft_view", "The replica's current view", view.clone());
        registry.register(
            "pbft_last_executed",
            "The highest sequence number executed",
            last_executed.clone(),
        );
        registry.register(
            "pbft_stable_checkpoint",
            "The sequence number of the latest stable checkpoint",
            stable_checkpoint.clone(),
        );
        registry.register(
            "pbft_rejected_messages",
            "Messages refused at the boundary or by the protocol, by reason",
            rejected.clone(),
        );
        registry.register(
            "pbft_queue_depth",
            "Items waiting in an internal queue, by queue",
            queue_depth.clone(),
        );
        registry.register(
            "pbft_request_latency_seconds",
            "Time from a request's arrival at this replica to its execution",
            latency.clone(),
        );
        registry.register(
            "pbft_persist_seconds",
            "Time to write and sync one group of durable records before sending",
            persist.clone(),
        );
        Arc::new(Metrics {
            registry,
            committed_requests,
            committed_batches,
            view_changes,
            view,
            last_executed,
            stable_checkpoint,
            rejected,
            queue_depth,
            latency,
            persist,
        })
    }

    /// Counts `requests` newly executed client requests.
    pub fn add_committed(&self, requests: u64) {
        self.committed_requests.inc_by(requests);
    }

    /// Counts one executed batch.
    pub fn add_batch(&self) {
        self.committed_batches.inc();
    }

    /// Counts one completed view change.
    pub fn add_view_change(&self) {
        self.view_changes.inc();
    }

    /// Records the replica's current view.
    pub fn set_view(&self, view: u64) {
        self.view.set(view);
    }

    /// Records the highest executed sequence number.
    pub fn set_last_executed(&self, seq: u64) {
        self.last_executed.set(seq);
    }

    /// Records the latest stable checkpoint's sequence number.
    pub fn set_stable_checkpoint(&self, seq: u64) {
        self.stable_checkpoint.set(seq);
    }

    /// Counts one refused message. Use a small fixed set of reasons: every distinct reason is a
    /// time series kept forever, so never put peer-controlled text here.
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records how many items wait in `queue`. Like reasons, queue names must be a fixed set.
    pub fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.queue_depth
            .get_or_create(&QueueLabel {
                queue: queue.to_string(),
            })
            .set(depth);
    }

    /// Records one request's latency from arrival to execution.
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Records one durable write (and its sync).
    pub fn observe_persist(&self, elapsed: Duration) {
        self.persist.observe(elapsed.as_secs_f64());
    }

    /// The current values in the OpenMetrics text format (ending in `# EOF`), as served with
    /// [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `addr` (port 0 picks a free port). Returns the bound address and
/// the server task, which runs until it is aborted or the runtime shuts down; an error is
/// returned only if the address cannot be bound.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    use axum::http::header::CONTENT_TYPE as CONTENT_TYPE_HEADER;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(CONTENT_TYPE_HEADER, CONTENT_TYPE)], metrics.encode()) }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw HTTP/1.1 GET, returning the whole response. The blocking client keeps the test free
    /// of tokio's io-util feature.
    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap()
    }

    #[test]
    fn encodes_names_values_and_labels() {
        let metrics = Metrics::new();
        metrics.add_committed(5);
        metrics.add_batch();
        metrics.add_view_change();
        metrics.set_view(3);
        metrics.set_last_executed(42);
        metrics.set_stable_checkpoint(32);
        metrics.rejected("signature invalid");
        metrics.rejected("signature invalid");
        metrics.set_queue_depth("inputs", 7);
        metrics.observe_latency(Duration::from_millis(3));
        let text = metrics.encode();
        for line in [
            "pbft_committed_requests_total 5",
            "pbft_committed_batches_total 1",
            "pbft_view_changes_total 1",
            "pbft_view 3",
            "pbft_last_executed 42",
            "pbft_stable_checkpoint 32",
            "pbft_rejected_messages_total{reason=\"signature invalid\"} 2",
            "pbft_queue_depth{queue=\"inputs\"} 7",
            "pbft_request_latency_seconds_count 1",
            "pbft_request_latency_seconds_bucket{le=\"0.0025\"} 0",
            "pbft_request_latency_seconds_bucket{le=\"0.005\"} 1",
            "pbft_request_latency_seconds_bucket{le=\"10.0\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let metrics = Metrics::new();
        metrics.set_view(9);
        metrics.add_committed(17);
        let (addr, server) = serve(metrics.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);

        let response = http_get(addr, "/metrics").await;

        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"));
        assert!(response.contains("pbft_view 9"), "{response}");
        assert!(response.contains("pbft_committed_requests_total 17"));
        assert!(response.contains("# EOF"));
        server.abort();
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let (addr, server) = serve(Metrics::new(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let response = http_get(addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        server.abort();
    }
}

//! Prometheus metrics of a running replica, served over HTTP at `GET /metrics`, with
//! `GET /healthz` (the process serves) and `GET /readyz` (the replica takes part in agreement;
//! see [`Metrics::readiness`]) beside them.
//!
//! Every update is a lock-free atomic operation except the first use of a new label value in a
//! family, so the protocol task can update metrics on its hot path. Scrapes encode the current
//! values in the OpenMetrics text format.
//!
//! The endpoint is open to whoever can reach its address, so every connection is bounded:
//! at most [`MetricsServerConfig::max_connections`] are served at once (more are closed as
//! soon as they are accepted), each must send its request headers within
//! [`MetricsServerConfig::header_timeout_ms`] and is closed
//! [`MetricsServerConfig::request_timeout_ms`] after it was accepted, whatever it is doing,
//! and each serves one request. Request headers are read into at most 8 KiB.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// The most a config may set [`MetricsServerConfig::max_connections`] to: each connection holds
/// a file descriptor, and the node reserves them at start (see [`crate::fds`]).
pub const MAX_METRICS_CONNECTIONS: usize = 4096;

/// The buffer for one request's headers; hyper's smallest.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// How long the accept loop waits after a failed accept (such as no descriptor left), so that
/// it does not spin while the cause persists.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the metrics endpoint treats connections: the `[metrics_server]` table of `node.toml`.
/// Absent fields take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsServerConfig {
    /// Connections served at once; more are closed as soon as they are accepted, and counted
    /// (`pbft_metrics_connections_closed_total{reason="over_limit"}`). Default 64; at most
    /// [`MAX_METRICS_CONNECTIONS`].
    pub max_connections: usize,
    /// Milliseconds a connection may take to send its request headers. Default 5,000.
    pub header_timeout_ms: u64,
    /// Milliseconds after which a connection is closed whatever it is doing (counted as
    /// `reason="timed_out"`). Default 10,000.
    pub request_timeout_ms: u64,
    /// Whether `metrics` may be an address other than loopback. Off by default, so that
    /// exposing the endpoint beyond this machine is a decision.
    pub public: bool,
}

impl Default for MetricsServerConfig {
    fn default() -> Self {
        MetricsServerConfig {
            max_connections: 64,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            public: false,
        }
    }
}

impl MetricsServerConfig {
    /// Checks the values and, unless [`MetricsServerConfig::public`], that `addr` is loopback.
    /// Errors name the field at fault (within the table) and why.
    pub fn check(&self, addr: Option<SocketAddr>) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 || self.max_connections > MAX_METRICS_CONNECTIONS {
            return Err((
                "max_connections",
                format!(
                    "{} is not between 1 and {MAX_METRICS_CONNECTIONS}",
                    self.max_connections
                ),
            ));
        }
        if self.header_timeout_ms == 0 {
            return Err(("header_timeout_ms", "must be positive, not 0".into()));
        }
        if self.request_timeout_ms == 0 {
            return Err(("request_timeout_ms", "must be positive, not 0".into()));
        }
        if let Some(addr) = addr {
            if !self.public && !addr.ip().is_loopback() {
                return Err((
                    "public",
                    format!(
                        "metrics address {addr} is not loopback: set metrics_server.public = \
                         true to serve metrics beyond this machine"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

/// A replica's metrics. Create one with [`Metrics::new`], share the `Arc` with every task that
/// updates it, and pass it to [`serve`] to expose it. The README's metrics table describes
/// every name; counters get the `_total` suffix from the encoder.
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
    dropped_queue_full: Counter,
    metrics_closed: Family<ReasonLabel, Counter>,
    latency: Histogram,
    persist: Histogram,
    peers_connected: U64Gauge,
    peers_needed: U64Gauge,
    view_change_in_progress: U64Gauge,
    fetching_state: U64Gauge,
    rejoining: U64Gauge,
    evidence_held: U64Gauge,
    log_bytes: U64Gauge,
    state_bytes: U64Gauge,
}

/// What the replica reports to [`Metrics::set_position`] once a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Other replicas with an open connection to this one.
    pub peers_connected: u64,
    pub view_change_in_progress: bool,
    pub fetching_state: bool,
    /// Rejoining after a lost disk, and still silent.
    pub rejoining: bool,
    /// Replicas this one holds proof of equivocation against.
    pub evidence_held: u64,
    pub log_bytes: u64,
    /// The encoded state at the stable checkpoint.
    pub state_bytes: u64,
    /// Frames dropped because a peer's send queue was full, since the start.
    pub dropped_queue_full: u64,
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
        let metrics_closed = Family::<ReasonLabel, Counter>::default();
        let latency = Histogram::new(LATENCY_BUCKETS);
        let persist = Histogram::new(LATENCY_BUCKETS);
        let dropped_queue_full = Counter::default();
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = U64Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let peers_connected = gauge(
            &mut registry,
            "pbft_peers_connected",
            "Other replicas with an open connection to this one",
        );
        let peers_needed = gauge(
            &mut registry,
            "pbft_peers_needed",
            "Other replicas this one needs connected to take part in agreement (2f)",
        );
        let view_change_in_progress = gauge(
            &mut registry,
            "pbft_view_change_in_progress",
            "1 from sending a VIEW-CHANGE until the next view starts",
        );
        let fetching_state = gauge(
            &mut registry,
            "pbft_fetching_state",
            "1 while a state transfer is under way",
        );
        let rejoining = gauge(
            &mut registry,
            "pbft_rejoining",
            "1 while rejoining silent after a lost disk",
        );
        let evidence_held = gauge(
            &mut registry,
            "pbft_evidence_held",
            "Replicas this one holds signed proof of equivocation against",
        );
        let log_bytes = gauge(
            &mut registry,
            "pbft_log_bytes",
            "Bytes of the write-ahead log on disk",
        );
        let state_bytes = gauge(
            &mut registry,
            "pbft_state_bytes",
            "Bytes of the encoded state at the stable checkpoint",
        );
        let build = Family::<BuildLabel, U64Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("pbft_build_info", "The running version; always 1", build);
        registry.register(
            "pbft_frames_dropped_queue_full",
            "Frames to other replicas dropped because the peer's send queue was full",
            dropped_queue_full.clone(),
        );
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
            "pbft_metrics_connections_closed",
            "Metrics connections closed by the server: over_limit (too many at once) or \
             timed_out",
            metrics_closed.clone(),
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
            dropped_queue_full,
            metrics_closed,
            latency,
            persist,
            peers_connected,
            peers_needed,
            view_change_in_progress,
            fetching_state,
            rejoining,
            evidence_held,
            log_bytes,
            state_bytes,
        })
    }

    /// Records how many other replicas must be connected for the replica to be ready: 2f.
    pub fn set_peers_needed(&self, peers: u64) {
        self.peers_needed.set(peers);
    }

    /// Records the replica's position (see [`Position`]).
    pub fn set_position(&self, position: &Position) {
        self.peers_connected.set(position.peers_connected);
        self.view_change_in_progress
            .set(position.view_change_in_progress.into());
        self.fetching_state.set(position.fetching_state.into());
        self.rejoining.set(position.rejoining.into());
        self.evidence_held.set(position.evidence_held);
        self.log_bytes.set(position.log_bytes);
        self.state_bytes.set(position.state_bytes);
        let counted = self.dropped_queue_full.get();
        self.dropped_queue_full
            .inc_by(position.dropped_queue_full.saturating_sub(counted));
    }

    /// `Ok` when the replica takes part in agreement: no view change in progress, at least
    /// [`Metrics::set_peers_needed`] peers connected, no state transfer under way, and not
    /// rejoining silent. Otherwise every reason it does not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.view_change_in_progress.get() != 0 {
            reasons.push(format!(
                "changing to view {}: no primary is known yet",
                self.view.get()
            ));
        }
        let (connected, needed) = (self.peers_connected.get(), self.peers_needed.get());
        if connected < needed {
            reasons.push(format!(
                "{connected} other replicas connected, {needed} needed"
            ));
        }
        if self.fetching_state.get() != 0 {
            reasons.push("fetching state from other replicas".into());
        }
        if self.rejoining.get() != 0 {
            reasons.push("rejoining after a lost disk: silent until caught up".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
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

    /// Counts one metrics connection the server closed, for `reason` (`over_limit` or
    /// `timed_out`).
    fn metrics_connection_closed(&self, reason: &str) {
        self.metrics_closed
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
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

/// Asks the endpoint at `addr` for `path` (`/healthz` or `/readyz`), blocking up to `timeout`
/// for each step: `Ok` if it answers 200, else why not (the body of another answer).
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read as _, Write as _};

    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // The answers are a line or two; more is not read.
    let mut response = Vec::with_capacity(1024);
    (&mut stream)
        .take(4096)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    if response.starts_with("HTTP/1.1 200") {
        return Ok(());
    }
    let status = response.lines().next().unwrap_or("an empty answer");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Err(format!("{status}: {}", body.trim()))
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `addr` (port 0 picks a free port) within the bounds of `limits`
/// (see the module docs). Returns the bound address and the server task, which runs until it
/// is aborted or the runtime shuts down; an error is returned only if the address cannot be
/// bound. The address is not checked here: [`MetricsServerConfig::check`] does that.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    limits: &MetricsServerConfig,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    use axum::http::header::CONTENT_TYPE as CONTENT_TYPE_HEADER;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    use axum::http::StatusCode;

    let scraped = metrics.clone();
    let asked = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = scraped.clone();
                async move { ([(CONTENT_TYPE_HEADER, CONTENT_TYPE)], metrics.encode()) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let metrics = asked.clone();
                async move {
                    match metrics.readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(reasons) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", reasons.join("; ")),
                        ),
                    }
                }
            }),
        );
    let task = tokio::spawn(accept_loop(listener, app, metrics, limits.clone()));
    Ok((bound, task))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    metrics: Arc<Metrics>,
    limits: MetricsServerConfig,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let deadline = Duration::from_millis(limits.request_timeout_ms);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Dropping the stream closes it: a full endpoint holds no descriptor for it.
            metrics.metrics_connection_closed("over_limit");
            tracing::debug!(%remote, "metrics endpoint full; connection closed");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    if error.is_timeout() {
                        metrics.metrics_connection_closed("timed_out");
                    }
                    tracing::debug!(%remote, %error, "metrics connection failed");
                }
                Err(_) => metrics.metrics_connection_closed("timed_out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Serves `metrics` on a free loopback port with the default bounds.
    async fn serve_with_defaults(
        metrics: &Arc<Metrics>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        serve(
            metrics.clone(),
            localhost(),
            &MetricsServerConfig::default(),
        )
        .await
        .unwrap()
    }

    /// Connects and reads until the server closes the connection, with `sent` written first.
    /// Returns what was read; a read still blocked after a minute fails the test.
    async fn until_closed(addr: SocketAddr, sent: &'static [u8]) -> Vec<u8> {
        tokio::task::spawn_blocking(move || {
            use std::io::{ErrorKind, Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            stream.write_all(sent).unwrap();
            let mut read = Vec::new();
            match stream.read_to_end(&mut read) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
            read
        })
        .await
        .unwrap()
    }

    /// The value of `series` in a scrape, 0 if absent.
    fn value_of(scrape: &str, series: &str) -> u64 {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Scrapes until a scrape succeeds; a connection may be refused while the endpoint is full.
    async fn scrape(addr: SocketAddr) -> String {
        for _ in 0..600 {
            let response = http_get_lenient(addr).await;
            if response.starts_with("HTTP/1.1 200") {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no scrape succeeded");
    }

    /// Like [`http_get`] of `/metrics`, but a refused or cut connection gives an empty response.
    async fn http_get_lenient(addr: SocketAddr) -> String {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let attempt = || -> std::io::Result<String> {
                let mut stream = std::net::TcpStream::connect(addr)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            };
            attempt().unwrap_or_default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
        let limits = MetricsServerConfig {
            max_connections: 2,
            header_timeout_ms: 600_000,
            request_timeout_ms: 600_000,
            ..MetricsServerConfig::default()
        };
        let (addr, server) = serve(Metrics::new(), localhost(), &limits).await.unwrap();
        // Two silent connections hold both places; the accept loop takes them in order.
        let held: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();

        let read = until_closed(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(read.is_empty(), "a third connection was served");

        drop(held);
        let scrape = scrape(addr).await;
        let over = r#"pbft_metrics_connections_closed_total{reason="over_limit"}"#;
        assert!(value_of(&scrape, over) >= 1, "{scrape}");
        server.abort();
    }

    #[tokio::test]
    async fn silent_and_slow_connections_are_closed_and_counted() {
        let limits = MetricsServerConfig {
            header_timeout_ms: 200,
            request_timeout_ms: 400,
            ..MetricsServerConfig::default()
        };
        let (addr, server) = serve(Metrics::new(), localhost(), &limits).await.unwrap();
        assert!(until_closed(addr, b"").await.is_empty());
        let half = until_closed(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
        assert!(
            !String::from_utf8_lossy(&half).contains("200 OK"),
            "an unfinished request was answered"
        );
        let scrape = scrape(addr).await;
        let timed_out = r#"pbft_metrics_connections_closed_total{reason="timed_out"}"#;
        assert!(value_of(&scrape, timed_out) >= 2, "{scrape}");
        server.abort();
    }

    #[tokio::test]
    async fn readiness_names_every_reason_and_health_only_needs_the_process() {
        let metrics = Metrics::new();
        metrics.set_peers_needed(2);
        let (addr, server) = serve_with_defaults(&metrics).await;
        let health = http_get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");

        let not_ready = http_get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.contains("0 other replicas connected, 2 needed"),
            "{not_ready}"
        );

        let mut position = Position {
            peers_connected: 2,
            ..Position::default()
        };
        metrics.set_position(&position);
        let ready = http_get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        let probe_ready = move || probe(addr, "/readyz", Duration::from_secs(10));
        assert_eq!(
            tokio::task::spawn_blocking(probe_ready).await.unwrap(),
            Ok(())
        );

        position.view_change_in_progress = true;
        position.fetching_state = true;
        position.rejoining = true;
        metrics.set_position(&position);
        let reasons = http_get(addr, "/readyz").await;
        assert!(reasons.starts_with("HTTP/1.1 503"), "{reasons}");
        for reason in ["no primary is known", "fetching state", "rejoining"] {
            assert!(reasons.contains(reason), "{reason}: {reasons}");
        }
        assert!(
            !reasons.contains("connected"),
            "peers are connected: {reasons}"
        );
        let probed = tokio::task::spawn_blocking(probe_ready).await.unwrap();
        let reason = probed.unwrap_err();
        assert!(
            reason.contains("503") && reason.contains("fetching state"),
            "{reason}"
        );
        let health = http_get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        server.abort();
    }

    #[test]
    fn dropped_frames_are_a_counter_that_follows_the_transport() {
        let metrics = Metrics::new();
        for dropped in [3, 3, 10] {
            metrics.set_position(&Position {
                dropped_queue_full: dropped,
                ..Position::default()
            });
        }
        let scrape = metrics.encode();
        assert_eq!(
            value_of(&scrape, "pbft_frames_dropped_queue_full_total"),
            10,
            "{scrape}"
        );
        assert!(scrape.contains("# TYPE pbft_frames_dropped_queue_full counter"));
        assert!(scrape.contains("pbft_build_info{version="), "{scrape}");
    }

    /// The dashboard and the alerts name only series a replica exports.
    #[test]
    fn the_dashboard_and_the_alerts_name_exported_series() {
        let metrics = Metrics::new();
        metrics.rejected("bad_signature");
        metrics.set_queue_depth("verified_inputs", 1);
        metrics.metrics_connection_closed("over_limit");
        let scrape = metrics.encode();
        let exported: Vec<&str> = (scrape.lines())
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut named = 0;
        for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
            let text = std::fs::read_to_string(deploy.join(file)).unwrap();
            for (at, _) in text.match_indices("pbft_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name == "pbft_" || text[..at].ends_with(|c: char| c.is_ascii_alphanumeric()) {
                    continue;
                }
                named += 1;
                assert!(exported.contains(&name.as_str()), "{file} names {name}");
            }
        }
        assert!(named > 20, "only {named} series named");
    }

    #[test]
    fn a_metrics_address_beyond_loopback_must_be_asked_for() {
        let limits = MetricsServerConfig::default();
        assert!(limits
            .check(Some("127.0.0.1:9000".parse().unwrap()))
            .is_ok());
        assert!(limits.check(Some("[::1]:9000".parse().unwrap())).is_ok());
        assert!(limits.check(None).is_ok());
        let (field, reason) = limits
            .check(Some("0.0.0.0:9000".parse().unwrap()))
            .unwrap_err();
        assert_eq!(field, "public");
        assert!(reason.contains("0.0.0.0:9000"), "{reason}");
        let public = MetricsServerConfig {
            public: true,
            ..limits.clone()
        };
        assert!(public.check(Some("0.0.0.0:9000".parse().unwrap())).is_ok());
        for bad in [0, MAX_METRICS_CONNECTIONS + 1] {
            let limits = MetricsServerConfig {
                max_connections: bad,
                ..MetricsServerConfig::default()
            };
            assert_eq!(limits.check(None).unwrap_err().0, "max_connections");
        }
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
        let (addr, server) = serve_with_defaults(&metrics).await;
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
        let (addr, server) = serve(Metrics::new(), localhost(), &MetricsServerConfig::default())
            .await
            .unwrap();
        let response = http_get(addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        server.abort();
    }
}

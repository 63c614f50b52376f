//! A closed-loop load generator: C clients, each with its own key and W requests outstanding,
//! putting values to distinct keys (or overwriting a few, with `keys`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use pbft_client::{Client, ClientError, ClientSetup};

/// When a benchmark stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchStop {
    /// After this many requests in total were issued.
    Requests(u64),
    /// After this long; requests in flight then are still waited for.
    Duration(Duration),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Client identities, each with a freshly generated key and its own connections.
    pub clients: usize,
    /// Requests outstanding per client.
    pub window: usize,
    /// When to stop.
    pub stop: BenchStop,
    /// The size of each value put, in bytes.
    pub payload: usize,
    /// Keys each outstanding slot overwrites in turn; `None` puts every value to a new key, so
    /// the replicated state grows for the whole run.
    pub keys: Option<u64>,
}

/// Latency percentiles and throughput of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// Requests that completed with f+1 matching replies.
    pub requests: u64,
    /// Requests that failed (timed out or were rejected).
    pub errors: u64,
    /// From the first request to the last completion.
    pub seconds: f64,
    /// Completed requests per second.
    pub throughput: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile latency in milliseconds.
    pub p90_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Largest latency in milliseconds.
    pub max_ms: f64,
    /// Mean latency in milliseconds.
    pub mean_ms: f64,
    /// Client identities used.
    pub clients: usize,
    /// Requests outstanding per client.
    pub window: usize,
    /// Value size in bytes.
    pub payload: usize,
    /// Keys each outstanding slot overwrites in turn (absent: every put writes a new key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// The first error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Counters a progress display can read while a run is going.
#[derive(Debug, Default)]
pub struct BenchProgress {
    /// Requests completed so far.
    pub completed: AtomicU64,
    /// Requests failed so far.
    pub failed: AtomicU64,
}

/// Connects `options.clients` clients to the cluster of `template` (each with its own session
/// and connections, all with the template's key, which is the one the replicas admit) and waits
/// until each reaches 2f+1 replicas, so connection setup is not measured.
pub async fn connect_clients(
    template: &ClientSetup,
    options: &BenchOptions,
) -> Result<Vec<Client>, ClientError> {
    let mut clients = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        clients.push(Client::connect(template.clone()).await?);
    }
    let quorum = 2 * template.f + 1;
    for client in &clients {
        client
            .wait_connected(quorum, Duration::from_secs(10))
            .await?;
    }
    Ok(clients)
}

/// Runs the benchmark on already connected clients, updating `progress` as requests finish.
pub async fn run(
    clients: &[Client],
    options: &BenchOptions,
    progress: Arc<BenchProgress>,
) -> BenchReport {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match options.stop {
        BenchStop::Duration(d) => Some(start + d),
        BenchStop::Requests(_) => None,
    };
    let limit = match options.stop {
        BenchStop::Requests(n) => n,
        BenchStop::Duration(_) => u64::MAX,
    };
    let value = vec![b'v'; options.payload];
    let keys = options.keys;
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let prefix = format!("bench-{}-{c}-", &client.public_key().to_hex()[..8]);
        for w in 0..options.window.max(1) {
            let client = client.clone();
            let issued = issued.clone();
            let progress = progress.clone();
            let value = value.clone();
            let prefix = prefix.clone();
            workers.spawn(async move {
                let mut latencies = Vec::new();
                let mut first_error = None;
                let mut i = 0u64;
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d)
                        || issued.fetch_add(1, Ordering::Relaxed) >= limit
                    {
                        break;
                    }
                    let key = slot_key(&prefix, w, i, keys);
                    i += 1;
                    let sent = Instant::now();
                    match client.put(key, value.clone()).await {
                        Ok(()) => {
                            latencies.push(sent.elapsed());
                            progress.completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (latencies, first_error, Instant::now())
            });
        }
    }
    let mut latencies = Vec::new();
    let mut first_error = None;
    let mut end = start;
    while let Some(joined) = workers.join_next().await {
        if let Ok((mut worker, error, finished)) = joined {
            latencies.append(&mut worker);
            if first_error.is_none() {
                first_error = error;
            }
            end = end.max(finished);
        }
    }
    let errors = progress.failed.load(Ordering::Relaxed);
    report(latencies, errors, end - start, options, first_error)
}

/// The key of outstanding slot `slot`'s `i`-th put: a new one each time, or one of `keys`.
fn slot_key(prefix: &str, slot: usize, i: u64, keys: Option<u64>) -> String {
    format!("{prefix}{slot}-{}", keys.map_or(i, |keys| i % keys))
}

/// Summarises latencies of completed requests over a run of `elapsed`.
pub fn report(
    mut latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
    options: &BenchOptions,
    first_error: Option<String>,
) -> BenchReport {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let seconds = elapsed.as_secs_f64();
    let requests = latencies.len() as u64;
    let mean_ms = if latencies.is_empty() {
        0.0
    } else {
        ms(latencies.iter().sum::<Duration>()) / latencies.len() as f64
    };
    BenchReport {
        requests,
        errors,
        seconds,
        throughput: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(percentile(&latencies, 50.0)),
        p90_ms: ms(percentile(&latencies, 90.0)),
        p99_ms: ms(percentile(&latencies, 99.0)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
        mean_ms,
        clients: options.clients,
        window: options.window,
        payload: options.payload,
        keys: options.keys,
        first_error,
    }
}

/// The nearest-rank percentile `p` (0..=100) of sorted `values`; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_write_new_keys_or_cycle_through_theirs() {
        let distinct: std::collections::BTreeSet<String> =
            (0..10).map(|i| slot_key("p-", 3, i, None)).collect();
        assert_eq!(distinct.len(), 10);
        let cycled: Vec<String> = (0..5).map(|i| slot_key("p-", 3, i, Some(2))).collect();
        assert_eq!(cycled, ["p-3-0", "p-3-1", "p-3-0", "p-3-1", "p-3-0"]);
        assert_ne!(slot_key("p-", 1, 0, Some(2)), slot_key("p-", 2, 0, Some(2)));
    }

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn report_has_the_documented_json_fields() {
        let options = BenchOptions {
            clients: 1,
            window: 1,
            stop: BenchStop::Requests(4),
            payload: 8,
            keys: None,
        };
        let report = report(ms(&[4, 1, 3, 2]), 1, Duration::from_secs(2), &options, None);
        assert_eq!(report.requests, 4);
        assert_eq!(report.throughput, 2.0);
        assert_eq!(report.p50_ms, 2.0);
        assert_eq!(report.max_ms, 4.0);
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "requests",
            "seconds",
            "throughput",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "errors",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
    }
}

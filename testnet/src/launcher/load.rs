//! The client workload `testnet up --load` runs: puts to new keys at a fixed rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_client::Client;
use tokio::sync::Semaphore;

/// Counters of the client workload.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests submitted.
    pub sent: AtomicU64,
    /// Requests whose result f+1 replicas agreed on.
    pub ok: AtomicU64,
    /// Requests that timed out or failed.
    pub failed: AtomicU64,
}

/// A client workload: puts to distinct keys at a fixed rate.
pub struct Load {
    /// Its counters.
    pub stats: Arc<LoadStats>,
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// Most workload requests outstanding; beyond, the workload waits.
const MAX_IN_FLIGHT: usize = 1024;

impl Load {
    /// Starts putting `rate` values per second through `client`, each to a new key.
    pub fn start(client: Client, rate: f64) -> Load {
        let stats = Arc::new(LoadStats::default());
        let task = tokio::spawn(run_load(client.clone(), rate, stats.clone()));
        Load {
            stats,
            client,
            task,
        }
    }

    /// Stops issuing requests and closes the client.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.client.close().await;
    }
}

async fn run_load(client: Client, rate: f64, stats: Arc<LoadStats>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let prefix: String = client.public_key().to_hex().chars().take(8).collect();
    let start = Instant::now();
    let mut issued: u64 = 0;
    loop {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let client = client.clone();
            let stats = stats.clone();
            let key = format!("load-{prefix}-{issued}");
            let value = format!("value-{issued}");
            stats.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let counter = match client.put(key, value).await {
                    Ok(()) => &stats.ok,
                    Err(_) => &stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            issued += 1;
        }
        let next = Duration::from_secs_f64((issued + 1) as f64 / rate);
        tokio::time::sleep(
            next.saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        )
        .await;
    }
}

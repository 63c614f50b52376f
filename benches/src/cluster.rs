//! A loopback cluster of real replicas (QUIC on 127.0.0.1, in this process) under closed-loop load.
//!
//! Every replica and client runs on one multi-threaded tokio runtime with a worker per core.
//! `clients` clients each keep `window` puts outstanding: every worker task puts a value, waits
//! for f+1 matching replies, and puts again. Each worker overwrites its own key, so the state
//! (and the cost of a checkpoint snapshot) stays the same however long a run lasts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pbft_client::{Client, ClientSetup};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::messages::{NodeStatus, ReplicaId};
use pbft_core::protocol::ProtocolConfig;
use pbft_crypto::KeyPair;
use pbft_node::local::loopback_cluster;
use pbft_node::runtime::RunningNode;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub f: usize,
    /// Bytes of each value put.
    pub payload: usize,
    /// Client identities, each with its own key and connections.
    pub clients: usize,
    /// Puts each client keeps outstanding.
    pub window: usize,
    /// A replica that runs a named faulty behaviour.
    pub faulty: Option<(ReplicaId, BehaviorKind)>,
    pub protocol: ProtocolConfig,
}

impl LoadSpec {
    /// The default load: 4 clients with 128 puts outstanding each, enough to saturate 2 cores,
    /// against replicas with the default [`ProtocolConfig`]. For exploring, the environment
    /// overrides `PBFT_BENCH_CLIENTS`, `PBFT_BENCH_WINDOW` and the primary's
    /// `PBFT_BENCH_MAX_OUTSTANDING` (batches in flight).
    pub fn new(f: usize, payload: usize) -> LoadSpec {
        let defaults = ProtocolConfig::default();
        LoadSpec {
            f,
            payload,
            clients: env_or("PBFT_BENCH_CLIENTS", 4),
            window: env_or("PBFT_BENCH_WINDOW", 128),
            faulty: None,
            protocol: ProtocolConfig {
                max_outstanding: env_or(
                    "PBFT_BENCH_MAX_OUTSTANDING",
                    defaults.max_outstanding as usize,
                ) as u64,
                ..defaults
            },
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// State shared between the load workers and the measuring thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
    /// The completion count a measurement waits for.
    target: AtomicU64,
    reached: Notify,
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
}

/// What a run looked like, from the replicas' counters and the clients' latencies.
#[derive(Clone, Debug)]
pub struct Observed {
    pub completed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Highest view among correct replicas.
    pub view: u64,
    /// Committed requests per executed batch since the mark.
    pub requests_per_batch: f64,
    /// Committed requests per second since the mark.
    pub throughput: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU time this process's threads ran since the mark.
    pub cpu: Duration,
    /// Time they waited, runnable, for a CPU since the mark: a sign the machine was busy with
    /// something else.
    pub runnable_wait: Duration,
    /// Wall time since the mark.
    pub elapsed: Duration,
}

/// A started cluster with its load running.
pub struct LoadedCluster {
    spec: LoadSpec,
    runtime: Runtime,
    nodes: Vec<RunningNode>,
    clients: Vec<Client>,
    shared: Arc<Shared>,
    mark: Option<(Instant, Vec<NodeStatus>, (Duration, Duration))>,
    _dir: tempfile::TempDir,
}

impl LoadedCluster {
    /// Starts the replicas and clients, waits until they are connected, and starts the load.
    pub fn start(spec: LoadSpec) -> anyhow::Result<LoadedCluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let n = 3 * spec.f + 1;
        let (nodes, clients) = runtime.block_on(async {
            let mut setups = loopback_cluster(spec.f, spec.protocol.clone(), dir.path())?;
            if let Some((id, kind)) = spec.faulty {
                setups[id as usize].behavior = Some(kind);
            }
            let peers = setups[0].peers.clone();
            let mut nodes = Vec::with_capacity(n);
            for setup in setups {
                nodes.push(RunningNode::start(setup).await?);
            }
            let mut clients = Vec::with_capacity(spec.clients);
            for _ in 0..spec.clients {
                let setup = ClientSetup::new(KeyPair::generate(), spec.f, peers.clone());
                clients.push(Client::connect(setup).await.context("client connect")?);
            }
            for client in &clients {
                client
                    .wait_connected(n, Duration::from_secs(10))
                    .await
                    .context("client links")?;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let mut linked = 0;
                for node in &nodes {
                    if node
                        .status()
                        .await
                        .is_some_and(|s| s.connected_peers.len() + 1 >= n)
                    {
                        linked += 1;
                    }
                }
                if linked == n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok((nodes, clients))
        })?;
        let shared = Arc::new(Shared {
            target: AtomicU64::new(u64::MAX),
            ..Shared::default()
        });
        let value = vec![b'v'; spec.payload];
        for (c, client) in clients.iter().enumerate() {
            for w in 0..spec.window {
                let key = format!("bench-{c}-{w}").into_bytes();
                runtime.spawn(worker(client.clone(), key, value.clone(), shared.clone()));
            }
        }
        Ok(LoadedCluster {
            spec,
            runtime,
            nodes,
            clients,
            shared,
            mark: None,
            _dir: dir,
        })
    }

    pub fn spec(&self) -> &LoadSpec {
        &self.spec
    }

    /// Every replica's status, in id order (`None` for one that did not answer).
    pub fn statuses(&self) -> Vec<Option<NodeStatus>> {
        self.runtime.block_on(async {
            let mut out = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                out.push(node.status().await);
            }
            out
        })
    }

    /// Lets the load run for at least `at_least`, and then until `ready` holds for the statuses
    /// of the correct replicas; fails after `timeout`. Marks the start of the measured run.
    pub fn warm_up(
        &mut self,
        at_least: Duration,
        ready: impl Fn(&[NodeStatus]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            if started.elapsed() < at_least {
                continue;
            }
            let correct = self.correct_statuses();
            if ready(&correct) {
                break;
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "warm-up did not finish in {timeout:?}: {}",
                    describe(&correct)
                );
            }
        }
        self.shared.latencies_us.lock().expect("poisoned").clear();
        self.shared.recording.store(true, Ordering::Relaxed);
        self.mark = Some((Instant::now(), self.correct_statuses(), sched_times()));
        Ok(())
    }

    fn correct_statuses(&self) -> Vec<NodeStatus> {
        let faulty = self.spec.faulty.map(|(id, _)| id);
        self.statuses()
            .into_iter()
            .flatten()
            .filter(|s| Some(s.replica) != faulty)
            .collect()
    }

    /// Waits until `requests` more puts completed with f+1 matching replies; returns how long
    /// that took. Panics if the cluster makes no progress for 60 s.
    pub fn time_requests(&self, requests: u64) -> Duration {
        let shared = &self.shared;
        self.runtime.block_on(async {
            let started = Instant::now();
            let target = shared.completed.load(Ordering::Relaxed) + requests;
            shared.target.store(target, Ordering::Relaxed);
            loop {
                let reached = shared.reached.notified();
                let before = shared.completed.load(Ordering::Relaxed);
                if before >= target {
                    break;
                }
                if tokio::time::timeout(Duration::from_secs(60), reached)
                    .await
                    .is_err()
                    && shared.completed.load(Ordering::Relaxed) == before
                {
                    panic!(
                        "no request completed for 60 s (failed: {}, first error: {:?})",
                        shared.failed.load(Ordering::Relaxed),
                        shared.first_error.lock().expect("poisoned")
                    );
                }
            }
            shared.target.store(u64::MAX, Ordering::Relaxed);
            started.elapsed()
        })
    }

    /// Counters and latencies since [`LoadedCluster::warm_up`] marked the start.
    pub fn observed(&self) -> Observed {
        let now = self.correct_statuses();
        let (since, before, sched_before) = self
            .mark
            .clone()
            .unwrap_or_else(|| (Instant::now(), now.clone(), sched_times()));
        let sched_now = sched_times();
        // The correct replica that executed most, against its own earlier counters.
        let best = now.iter().max_by_key(|s| s.last_executed);
        let (requests, batches) = best
            .and_then(|s| {
                let old = before.iter().find(|o| o.replica == s.replica)?;
                Some((
                    s.committed_requests - old.committed_requests,
                    s.last_executed - old.last_executed,
                ))
            })
            .unwrap_or((0, 0));
        let mut latencies = self.shared.latencies_us.lock().expect("poisoned").clone();
        latencies.sort_unstable();
        let pick = |p: f64| -> Duration {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            Duration::from_micros(latencies[rank.clamp(1, latencies.len()) - 1] as u64)
        };
        Observed {
            completed: self.shared.completed.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            first_error: self.shared.first_error.lock().expect("poisoned").clone(),
            view: now.iter().map(|s| s.view).max().unwrap_or(0),
            requests_per_batch: requests as f64 / batches.max(1) as f64,
            throughput: requests as f64 / since.elapsed().as_secs_f64(),
            p50: pick(50.0),
            p99: pick(99.0),
            cpu: sched_now.0.saturating_sub(sched_before.0),
            runnable_wait: sched_now.1.saturating_sub(sched_before.1),
            elapsed: since.elapsed(),
        }
    }

    /// Stops the load, the clients and the replicas.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let LoadedCluster {
            runtime,
            nodes,
            clients,
            ..
        } = self;
        runtime.block_on(async {
            for client in clients {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
            }
            for node in nodes {
                let _ = tokio::time::timeout(Duration::from_secs(2), node.stop()).await;
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// One closed-loop worker: put, wait for the result, put again.
async fn worker(client: Client, key: Vec<u8>, value: Vec<u8>, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        match client.put(key.clone(), value.clone()).await {
            Ok(()) => {
                if shared.recording.load(Ordering::Relaxed) {
                    let micros = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    shared.latencies_us.lock().expect("poisoned").push(micros);
                }
                let done = shared.completed.fetch_add(1, Ordering::Relaxed) + 1;
                if done >= shared.target.load(Ordering::Relaxed) {
                    shared.reached.notify_one();
                }
            }
            Err(e) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared
                    .first_error
                    .lock()
                    .expect("poisoned")
                    .get_or_insert_with(|| e.to_string());
                // A closed client fails at once; do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// CPU time and time spent runnable but waiting for a CPU, summed over this process's threads
/// (from `/proc/self/task/*/schedstat`; zero where that is not available).
fn sched_times() -> (Duration, Duration) {
    let mut run = 0u64;
    let mut wait = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            run += fields.next().unwrap_or(0);
            wait += fields.next().unwrap_or(0);
        }
    }
    (Duration::from_nanos(run), Duration::from_nanos(wait))
}

/// One line per replica: view, executed sequence number, committed requests.
pub fn describe(statuses: &[NodeStatus]) -> String {
    statuses
        .iter()
        .map(|s| {
            format!(
                "r{}: view {}{} executed {} requests {}",
                s.replica,
                s.view,
                if s.view_active { "" } else { " (changing)" },
                s.last_executed,
                s.committed_requests
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

//! `testnet nemesis`: clients run put, get and cas on shared keys while faults are injected on
//! a random schedule; then every operation's invocation and completion is checked for
//! linearizability, key by key ([`checker`]), and the correct replicas for agreement.
//!
//! Faults: partitions (halves, a bridge, an isolated primary, one-way cuts) and added latency
//! on the links between replicas ([`relay`]); kill -9 and restart, SIGSTOP and SIGCONT of
//! replicas. One fault is active at a time; each is healed before the next.

pub mod checker;
mod cluster;
pub mod relay;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pbft_core::messages::ReplicaId;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::launcher::report::Agreement;
use crate::launcher::setup::BehaviorChoice;
use crate::launcher::LaunchError;
use cluster::Cluster;
pub use cluster::{ContainerTarget, CONTAINER_PROJECT, CONTAINER_SUBNET};
use relay::LinkFaults;

/// A kind of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The replicas split into two halves that cannot reach each other.
    PartitionHalves,
    /// Two halves, and one replica that reaches both (a bridge).
    PartitionBridge,
    /// The primary of the current view cut off from every other replica.
    IsolatePrimary,
    /// Some replicas stop hearing from others while they are still heard.
    OneWay,
    /// A replica killed with SIGKILL, restarted when the fault heals.
    Kill,
    /// A replica stopped with SIGSTOP, continued with SIGCONT when the fault heals.
    Pause,
    /// Every link between replicas delayed.
    Latency,
    /// A container taken off its network, so that neither replicas nor clients reach it
    /// (containers only).
    Disconnect,
}

impl Fault {
    /// Every fault, in the order of their names.
    pub const ALL: [Fault; 8] = [
        Fault::PartitionHalves,
        Fault::PartitionBridge,
        Fault::IsolatePrimary,
        Fault::OneWay,
        Fault::Kill,
        Fault::Pause,
        Fault::Latency,
        Fault::Disconnect,
    ];

    /// Whether replicas run as processes on loopback can suffer it.
    pub fn for_processes(self) -> bool {
        self != Fault::Disconnect
    }

    /// The name the command line and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionBridge => "partition-bridge",
            Fault::IsolatePrimary => "isolate-primary",
            Fault::OneWay => "one-way",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Latency => "latency",
            Fault::Disconnect => "disconnect",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Fault, String> {
        Fault::ALL
            .into_iter()
            .find(|fault| fault.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown fault {text:?}; the faults are {}",
                    names.join(", ")
                )
            })
    }
}

/// Everything `testnet nemesis` takes.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Byzantine replicas tolerated; the cluster has 3f+1.
    pub f: usize,
    /// How many replicas are Byzantine (the first ids, so the view-0 primary is one).
    pub byzantine: usize,
    /// What the Byzantine replicas do.
    pub behavior: Option<BehaviorChoice>,
    /// How long clients run and faults are injected.
    pub duration: Duration,
    /// Concurrent clients, each a session of its own.
    pub clients: usize,
    /// The keys the clients share.
    pub keys: usize,
    /// Operations per second over all clients.
    pub rate: f64,
    /// The faults to draw from; `None` for every fault the cluster's kind allows.
    pub faults: Option<Vec<Fault>>,
    /// The one-way delay a latency fault adds to every link.
    pub latency: Duration,
    /// How long a fault lasts, at most; each lasts between a third of this and this.
    pub fault_time: Duration,
    /// How long the cluster runs without a fault between two faults, at most.
    pub quiet_time: Duration,
    /// Draws the schedule and the clients' choices.
    pub seed: u64,
    /// How long a client waits for an operation before its outcome is unknown.
    pub request_timeout: Duration,
    /// The testnet directory.
    pub dir: PathBuf,
    /// Wipe an earlier run's directory.
    pub force: bool,
    /// The node binary; see [`crate::launcher::process::NodeProgram::resolve`] (for
    /// containers, the `pbft-node` binary to put in the image).
    pub node_bin: Option<PathBuf>,
    /// Run the replicas as containers instead of processes on loopback.
    pub containers: Option<ContainerTarget>,
}

impl NemesisOptions {
    /// The defaults of `testnet nemesis --f f`.
    pub fn new(f: usize) -> NemesisOptions {
        NemesisOptions {
            f,
            byzantine: 0,
            behavior: None,
            duration: Duration::from_secs(60),
            clients: 8,
            keys: 8,
            rate: 100.0,
            faults: None,
            latency: Duration::from_millis(50),
            fault_time: Duration::from_secs(8),
            quiet_time: Duration::from_secs(6),
            seed: 0,
            request_timeout: Duration::from_secs(30),
            dir: PathBuf::from("nemesis-data"),
            force: false,
            node_bin: None,
            containers: None,
        }
    }
}

/// Counts of operations by how they ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OperationCounts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

/// What `testnet nemesis` found; printed as one JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct NemesisReport {
    pub f: usize,
    pub n: usize,
    pub byzantine: Vec<ReplicaId>,
    pub seed: u64,
    pub seconds: f64,
    /// Faults injected, by name.
    pub faults: BTreeMap<&'static str, usize>,
    pub faults_per_minute: f64,
    pub operations: OperationCounts,
    /// The checker's verdict on the history.
    #[serde(flatten)]
    pub judgement: checker::Judgement,
    /// Whether an ordered operation completed on every key once every fault had healed.
    pub recovered: bool,
    /// The correct replicas' agreement at the end (see `testnet status --help`).
    pub agreement: Agreement,
    /// How long completed operations took, in milliseconds.
    pub latency_ms: Latency,
    /// `processes` or `containers`.
    pub target: &'static str,
    /// Every operation, one JSON object a line.
    pub history: String,
}

impl NemesisReport {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.judgement.linearizable() && self.recovered && self.agreement == Agreement::Yes
    }
}

/// Runs the nemesis against a new cluster (processes, or containers with `options.containers`)
/// and reports what it found. The cluster is stopped at the end; its directory stays.
pub async fn run(options: NemesisOptions) -> Result<NemesisReport, LaunchError> {
    if options.clients == 0 || options.keys == 0 || !options.rate.is_finite() || options.rate <= 0.0
    {
        return Err(LaunchError::Usage(
            "--clients, --keys and --rate must be positive".into(),
        ));
    }
    let containers = options.containers.is_some();
    let faults: Vec<Fault> = match &options.faults {
        Some(faults) if faults.is_empty() => {
            return Err(LaunchError::Usage("--faults names no fault".into()))
        }
        Some(faults) => {
            if let Some(fault) = faults.iter().find(|f| !containers && !f.for_processes()) {
                return Err(LaunchError::Usage(format!(
                    "{} needs --containers: processes on loopback share one network",
                    fault.name()
                )));
            }
            faults.clone()
        }
        None => (Fault::ALL.into_iter())
            .filter(|f| containers || f.for_processes())
            .collect(),
    };
    let mut cluster = match &options.containers {
        Some(target) => Cluster::containers(&options, target).await?,
        None => Cluster::processes(&options).await?,
    };
    let n = cluster.n();
    let byzantine = cluster.byzantine();
    eprintln!(
        "nemesis: {n} replica {} (f = {}, Byzantine: {:?}) in {}; {} clients on {} keys for {:?}",
        cluster.kind(),
        options.f,
        byzantine,
        cluster.dir.display(),
        options.clients,
        options.keys,
        options.duration
    );
    let result = tokio::select! {
        result = drive(&options, &faults, &mut cluster) => result,
        () = crate::launcher::shutdown_signal() => Err(LaunchError::Failure(
            "interrupted; the cluster is stopped".into(),
        )),
    };
    cluster.stop();
    let (history, injected, recovered, agreement) = result?;

    let history_path = cluster.dir.join("history.jsonl");
    workload::save(&history, &history_path)?;
    let mut operations = OperationCounts::default();
    for op in &history {
        match op.outcome {
            checker::Outcome::Failed => operations.failed += 1,
            checker::Outcome::Unknown => operations.unknown += 1,
            _ => operations.ok += 1,
        }
    }
    let judgement = checker::judge(&history, checker::SEARCH_BUDGET);
    let total: usize = injected.values().sum();
    let minutes = options.duration.as_secs_f64() / 60.0;
    Ok(NemesisReport {
        f: options.f,
        n,
        byzantine,
        seed: options.seed,
        seconds: options.duration.as_secs_f64(),
        faults: injected,
        faults_per_minute: (total as f64 / minutes * 10.0).round() / 10.0,
        operations,
        judgement,
        recovered,
        agreement,
        latency_ms: Latency::of(&history),
        target: cluster.kind(),
        history: history_path.display().to_string(),
    })
}

type Outcome = (
    Vec<checker::Operation>,
    BTreeMap<&'static str, usize>,
    bool,
    Agreement,
);

/// Runs the workload and the fault schedule, heals, and checks recovery and agreement.
async fn drive(
    options: &NemesisOptions,
    faults: &[Fault],
    cluster: &mut Cluster,
) -> Result<Outcome, LaunchError> {
    let setup = cluster.client_setup()?;
    let observer = pbft_client::Client::connect(setup.clone())
        .await
        .map_err(|e| LaunchError::Failure(format!("cannot connect to the cluster: {e}")))?;
    cluster
        .wait_connected(&observer, Duration::from_secs(120))
        .await?;
    let start = Instant::now();
    let workload = workload::Workload::start(options, setup.clone(), start).await?;

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    let end = start + options.duration;
    let n = cluster.n();
    let at = |start: Instant| start.elapsed().as_secs_f64();
    loop {
        let quiet = options.quiet_time.mul_f64(rng.random_range(0.5..=1.0));
        tokio::time::sleep_until((Instant::now() + quiet).min(end).into()).await;
        if Instant::now() + options.fault_time / 3 >= end {
            break;
        }
        let fault = *faults.choose(&mut rng).expect("faults is not empty");
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(&mut rng);
        let what = match fault {
            Fault::PartitionHalves | Fault::PartitionBridge => {
                let half = n / 2;
                let mut links = LinkFaults::healed();
                let (a, b) = ids.split_at(half);
                let (side, bridge) = if fault == Fault::PartitionBridge {
                    // The bridge (the last of `b`) reaches both sides.
                    (a.to_vec(), b.last().copied())
                } else {
                    (a.to_vec(), None)
                };
                let side: BTreeSet<usize> = side.into_iter().collect();
                links.isolate(&side, n);
                if let Some(bridge) = bridge {
                    links.cut.retain(|&(x, y)| x != bridge && y != bridge);
                }
                cluster.relay.set(links);
                match bridge {
                    Some(bridge) => {
                        format!("{side:?} | {:?}, {bridge} bridging", &b[..b.len() - 1])
                    }
                    None => format!("{side:?} | {b:?}"),
                }
            }
            Fault::IsolatePrimary => {
                let primary = primary(&observer).await.unwrap_or(0) as usize;
                let mut links = LinkFaults::healed();
                links.isolate(&BTreeSet::from([primary]), n);
                cluster.relay.set(links);
                format!("replica {primary}")
            }
            Fault::OneWay => {
                // Replicas of `deaf` stop hearing from those of `mute`, and are still heard.
                let k = rng.random_range(1..=n / 2);
                let (deaf, mute) = ids.split_at(k);
                let mut links = LinkFaults::healed();
                for &from in mute {
                    for &to in deaf {
                        links.cut.insert((from, to));
                    }
                }
                cluster.relay.set(links);
                format!("{deaf:?} stop hearing {mute:?}")
            }
            Fault::Kill => {
                let id = ids[0] as ReplicaId;
                cluster.kill(id)?;
                format!("replica {id}")
            }
            Fault::Pause => {
                let id = ids[0] as ReplicaId;
                cluster.pause(id)?;
                format!("replica {id}")
            }
            Fault::Latency => {
                cluster.relay.set(LinkFaults {
                    delay: options.latency,
                    ..LinkFaults::healed()
                });
                format!("{:?} one way on every link", options.latency)
            }
            Fault::Disconnect => {
                let id = ids[0] as ReplicaId;
                cluster.disconnect(id)?;
                format!("replica {id} off the network")
            }
        };
        *injected.entry(fault.name()).or_default() += 1;
        eprintln!("[{:7.1} s] {}: {what}", at(start), fault.name());
        let lasts = options
            .fault_time
            .mul_f64(rng.random_range(1.0 / 3.0..=1.0));
        tokio::time::sleep_until((Instant::now() + lasts).min(end).into()).await;
        cluster.heal()?;
        eprintln!("[{:7.1} s] healed", at(start));
        if Instant::now() >= end {
            break;
        }
    }
    cluster.heal()?;
    let history = workload.stop().await;
    eprintln!(
        "[{:7.1} s] workload stopped after {} operations; checking recovery",
        at(start),
        history.len()
    );
    let recovered = workload::recovers(&observer, options.keys, Duration::from_secs(120)).await;
    let agreement = settle(&observer, cluster, Duration::from_secs(60)).await;
    observer.close().await;
    Ok((history, injected, recovered, agreement))
}

/// Waits until every correct replica has executed as far as the others and they agree, up to
/// `patience`; returns the last verdict.
async fn settle(client: &pbft_client::Client, cluster: &Cluster, patience: Duration) -> Agreement {
    let start = Instant::now();
    loop {
        let (nodes, agreement, pairs) = cluster.report(client).await;
        let correct = (nodes.iter())
            .filter(|node| node.record.behavior.is_none())
            .count();
        let settled = agreement == Agreement::No || pairs == correct * (correct - 1) / 2;
        if settled || start.elapsed() >= patience {
            return agreement;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The primary most replicas report, if any answers.
async fn primary(client: &pbft_client::Client) -> Option<ReplicaId> {
    let mut votes: BTreeMap<ReplicaId, usize> = BTreeMap::new();
    for (_, status) in client.status_all(Duration::from_secs(1)).await {
        if let Ok(status) = status {
            *votes.entry(status.primary).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .max_by_key(|&(_, count)| count)
        .map(|(id, _)| id)
}

/// How long completed operations took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(history: &[checker::Operation]) -> Latency {
        let mut ms: Vec<f64> = (history.iter())
            .filter(|op| {
                !matches!(
                    op.outcome,
                    checker::Outcome::Unknown | checker::Outcome::Failed
                )
            })
            .map(|op| op.completed.saturating_sub(op.invoked) as f64 / 1e6)
            .collect();
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| (ms[((ms.len() - 1) as f64 * q).round() as usize] * 10.0).round() / 10.0;
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

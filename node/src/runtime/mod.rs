//! The tokio driver around the pure replica core.
//!
//! ```text
//!  QUIC inbox ──► verifier workers (decode, signatures; one per core) ──► protocol task ──► outbox ──► QUIC
//!                                                timers, status queries ──┘   (Replica)     │  ▲
//!                                                                        records of a step ▼  │ durable
//!                                                                                    log's thread (write, fsync)
//! ```
//! The protocol task owns the [`Replica`] and is the only place its state changes. What it
//! sends waits in the outbox until the records handed to the log before it are durable, while
//! the task goes on with the next inputs. Decoding and
//! signature checks happen before it, in parallel, and a signature already checked is answered
//! from a cache, so each request's signature is verified once per replica however often it is
//! forwarded or retransmitted.

mod log_writer;
mod protocol_task;
mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pbft_crypto::{KeyPair, PublicKey};
use pbft_net::{Peer, PeerInfo, ReplicaTransport, TransportConfig};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use log_writer::Outbox;
use protocol_task::{ProtocolTask, RateLimit, STATUS_QUERIES_PER_SECOND};
use verify::{spawn_verifiers, Rejections};

use crate::data_dir::{self, DirLock};
use crate::error::NodeError;
use crate::metrics::{Metrics, MetricsServerConfig};
use crate::storage::{ReplicaStore, StorageConfig};
use pbft_core::app::{AppFactory, KvStore};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::byzantine::Harness;
use pbft_core::committee::Committee;
use pbft_core::messages::{Message, NodeStatus, ReplicaId, SignatureCache, Verified};
use pbft_core::protocol::{ProtocolConfig, Replica};

/// Everything a node needs to run, already validated (see [`crate::config`]).
#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub id: ReplicaId,
    pub key: KeyPair,
    /// The UDP address the replica's QUIC endpoint listens on.
    pub listen: SocketAddr,
    /// The replicas, and the clients they serve (the transport admits those, and the core
    /// refuses every other key's envelopes).
    pub committee: Committee,
    /// Every replica's id, address and key (this one included).
    pub peers: Vec<PeerInfo>,
    pub protocol: ProtocolConfig,
    pub transport: TransportConfig,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    /// Where Prometheus metrics are served over HTTP, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The bounds of the metrics endpoint's connections.
    pub metrics_server: MetricsServerConfig,
    /// A named faulty behaviour, for test clusters only.
    pub behavior: Option<BehaviorKind>,
}

/// Runs a replica of the key-value store until `shutdown` completes or the replica fails.
pub async fn run(
    setup: NodeSetup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_app(setup, KvStore::factory(), shutdown).await
}

/// Runs a replica of the application `app` makes until `shutdown` completes or the replica
/// fails.
pub async fn run_app(
    setup: NodeSetup,
    app: AppFactory,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let mut node = RunningNode::start_app(setup, app).await?;
    let stop = node.stop.take();
    tokio::select! {
        _ = shutdown => {
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            joined(&mut node.task).await
        }
        result = joined(&mut node.task) => result,
    }
}

async fn joined(
    task: &mut tokio::task::JoinHandle<Result<(), NodeError>>,
) -> Result<(), NodeError> {
    task.await.map_err(NodeError::Task)?
}

/// What reaches the protocol task.
#[allow(clippy::large_enum_variant)] // messages dominate; boxing would allocate per message
enum Input {
    /// A message that passed the boundary checks, who sent it, and on which connection.
    Message(Verified<Message>, Peer, usize),
    StatusQuery {
        from: Peer,
        connection: usize,
        nonce: u64,
    },
    /// A local status request (tests, tools).
    Status(oneshot::Sender<NodeStatus>),
    /// A client sent what no correct client sends on this connection; it is cut off for a
    /// while.
    Misbehaved(PublicKey, usize),
}

/// A replica running on the tokio runtime.
pub struct RunningNode {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    inputs: mpsc::Sender<Input>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Binds the transport and metrics endpoint and starts a replica of the key-value store.
    pub async fn start(setup: NodeSetup) -> Result<RunningNode, NodeError> {
        RunningNode::start_app(setup, KvStore::factory()).await
    }

    /// Binds the transport and metrics endpoint and starts a replica of the application `app`
    /// makes.
    pub async fn start_app(setup: NodeSetup, app: AppFactory) -> Result<RunningNode, NodeError> {
        let (replica, store, lock) = open_replica(&setup, &app)?;
        let (transport, inbox) = ReplicaTransport::bind(
            setup.id,
            &setup.key,
            setup.listen,
            setup.peers.clone(),
            setup.committee.clients().clone(),
            setup.transport.clone(),
        )
        .await
        .map_err(|source| NodeError::Listen {
            addr: setup.listen,
            source,
        })?;
        let local_addr = transport.local_addr();
        let metrics = Metrics::new();
        metrics.set_peers_needed(2 * setup.committee.f() as u64);
        let metrics_addr = match setup.metrics {
            Some(addr) => {
                let (bound, _server) =
                    crate::metrics::serve(metrics.clone(), addr, &setup.metrics_server)
                        .await
                        .map_err(|source| NodeError::Metrics { addr, source })?;
                Some(bound)
            }
            None => None,
        };
        if let Some(kind) = setup.behavior {
            tracing::warn!(replica = setup.id, behavior = %kind, "this replica is Byzantine: {kind}; for test clusters only");
        }
        let (inputs, input_rx) = mpsc::channel(4096);
        let rejections: Rejections = Arc::default();
        let cache = Arc::new(Mutex::new(SignatureCache::default()));
        spawn_verifiers(
            inbox,
            inputs.clone(),
            &setup,
            cache,
            rejections.clone(),
            metrics.clone(),
        );
        let (stop, stop_rx) = oneshot::channel();
        let behavior = setup.behavior.map(|kind| kind.build_with(&setup.protocol));
        let outbox =
            Outbox::new(setup.id, store, lock, metrics.clone()).map_err(NodeError::Thread)?;
        let driver = ProtocolTask {
            id: setup.id,
            behavior_name: setup.behavior.map(|k| k.to_string()),
            driver: Harness::new(replica, behavior),
            outbox,
            transport: Arc::new(transport),
            metrics,
            rejections,
            origin: Instant::now(),
            rng: rand::rngs::StdRng::from_os_rng(),
            arrivals: HashMap::new(),
            committed_requests: 0,
            last_view: 0,
            status_queries: RateLimit::new(STATUS_QUERIES_PER_SECOND),
        };
        let task = tokio::spawn(driver.run(input_rx, stop_rx));
        Ok(RunningNode {
            local_addr,
            metrics_addr,
            inputs,
            stop: Some(stop),
            task,
        })
    }

    /// The address the replica's QUIC endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The replica's current status.
    pub async fn status(&self) -> Option<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops the replica and closes its connections.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the replica stops by itself (it only does so on a fatal error).
    pub async fn finished(mut self) -> Result<(), NodeError> {
        joined(&mut self.task).await
    }
}

/// Builds the replica from its durable state in `data_dir`, which must have been initialised
/// for it ([`data_dir::init`]) and is locked for as long as the replica runs. A directory never
/// initialised, one whose log is gone, a log that is corrupt before its last record, or a
/// snapshot that fails to load is an error: the node must not run on state it cannot trust.
fn open_replica(
    setup: &NodeSetup,
    app: &AppFactory,
) -> Result<(Replica, Option<ReplicaStore>, Option<DirLock>), NodeError> {
    let fresh = || {
        Replica::new(
            setup.id,
            setup.committee.clone(),
            setup.protocol.clone(),
            setup.key.clone(),
            app(),
        )
        .map_err(NodeError::Setup)
    };
    if !setup.storage.durable {
        tracing::warn!(
            replica = setup.id,
            "durable state is off: a restart forgets what this replica signed"
        );
        return Ok((fresh()?, None, None));
    }
    let started = std::time::Instant::now();
    let dir = &setup.data_dir;
    let lock = data_dir::lock(dir)?;
    data_dir::check(dir, setup.id, &setup.committee)?;
    let opened = ReplicaStore::open(dir, setup.storage.fsync, setup.protocol.log_window).map_err(
        |source| NodeError::Storage {
            dir: dir.clone(),
            source,
        },
    )?;
    if opened.records.is_empty() {
        return Err(data_dir::log_lost(dir).into());
    }
    let (replica, report) = Replica::recover(
        setup.id,
        setup.committee.clone(),
        setup.protocol.clone(),
        setup.key.clone(),
        app(),
        opened.records,
    )
    .map_err(|source| NodeError::Recovery {
        dir: dir.clone(),
        source,
    })?;
    tracing::info!(
        replica = setup.id,
        records = report.records,
        snapshot = report.snapshot_seq,
        reexecuted = report.reexecuted,
        view = report.view,
        last_executed = report.last_executed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered from durable state"
    );
    if let Some(rejoin) = replica.rejoin().filter(|r| r.silent) {
        tracing::warn!(
            replica = setup.id,
            point = ?rejoin.point,
            "rejoining after a lost disk: silent until caught up past what it may have signed"
        );
    }
    Ok((replica, Some(opened.store), Some(lock)))
}

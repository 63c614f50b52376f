//! The tokio driver around the pure replica core.
//!
//! ```text
//!  QUIC inbox ──► verifier workers (decode, signatures; one per core) ──► protocol task ──► QUIC
//!                                                timers, status queries ──┘   (Replica)
//! ```
//! The protocol task owns the [`Replica`] and is the only place its state changes. Decoding and
//! signature checks happen before it, in parallel, and a signature already checked is answered
//! from a cache, so each request's signature is verified once per replica however often it is
//! forwarded or retransmitted.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::{ClusterId, Digest, Domain, KeyPair, PublicKey, Signature};
use pbft_net::{Inbox, Peer, PeerInfo, ReplicaTransport, TransportConfig};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::data_dir::{self, DirLock};
use crate::error::NodeError;
use crate::metrics::{Metrics, MetricsServerConfig, Position};
use crate::storage::{ReplicaStore, StorageConfig};
use pbft_core::app::KvStore;
use pbft_core::byzantine::{BehaviorKind, Payload};
use pbft_core::committee::Committee;
use pbft_core::driver::{Driver, Effects, Flushed};
use pbft_core::messages::{
    self, Limits, Message, NodeStatus, Rejection, ReplicaId, Reply, Sender, SignatureCache,
    SignatureCheck, Timestamp, Verified,
};
use pbft_core::protocol::{Durable, ProtocolConfig, Replica};

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

/// Runs a replica until `shutdown` completes or the replica fails.
pub async fn run(
    setup: NodeSetup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let mut node = RunningNode::start(setup).await?;
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

/// A [`SignatureCheck`] backed by the cache the verifier workers share. Checks run outside the
/// lock.
struct SharedCheck<'a>(&'a Mutex<SignatureCache>);

impl SignatureCheck for SharedCheck<'_> {
    fn check(
        &mut self,
        cluster: &ClusterId,
        key: &PublicKey,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> bool {
        let question = (*cluster, *key, domain, *digest, *signature);
        if let Some(valid) = self
            .0
            .lock()
            .expect("signature cache poisoned")
            .get(&question)
        {
            return valid;
        }
        let valid = key.verify(cluster, domain, digest, signature).is_ok();
        self.0
            .lock()
            .expect("signature cache poisoned")
            .insert(question, valid);
        valid
    }
}

/// What reaches the protocol task.
#[allow(clippy::large_enum_variant)] // messages dominate; boxing would allocate per message
enum Input {
    /// A message that passed the boundary checks, and where it came from.
    Message(Verified<Message>, Peer),
    StatusQuery {
        from: Peer,
        nonce: u64,
    },
    /// A local status request (tests, tools).
    Status(oneshot::Sender<NodeStatus>),
    /// A client sent what no correct client sends on this connection; it is cut off for a
    /// while.
    Misbehaved(PublicKey, usize),
}

/// Rejection labels that only a faulty client earns: an honest client's messages always decode,
/// carry its own key and are signed with it.
const CLIENT_FAULTS: [&str; 3] = ["undecodable", "bad_signature", "wrong_sender"];

/// Status queries answered per second to clients, all together; more are dropped and counted.
const STATUS_QUERIES_PER_SECOND: f64 = 200.0;

/// A token bucket: `rate` per second, bursts of up to one second's worth.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(rate: f64) -> RateLimit {
        RateLimit {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counters of refused messages by reason, shared by the verifiers and the protocol task.
type Rejections = Arc<Mutex<BTreeMap<String, u64>>>;

fn count_rejection(metrics: &Metrics, rejections: &Rejections, reason: &'static str) {
    metrics.rejected(reason);
    *rejections
        .lock()
        .expect("poisoned")
        .entry(reason.to_string())
        .or_default() += 1;
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
    /// Binds the transport and metrics endpoint and starts the replica.
    pub async fn start(setup: NodeSetup) -> Result<RunningNode, NodeError> {
        let (replica, store, lock) = open_replica(&setup)?;
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
        let driver = ProtocolTask {
            id: setup.id,
            behavior_name: setup.behavior.map(|k| k.to_string()),
            driver: Driver::new(replica, behavior),
            store,
            _lock: lock,
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
) -> Result<(Replica, Option<ReplicaStore>, Option<DirLock>), NodeError> {
    let fresh = || {
        Replica::new(
            setup.id,
            setup.committee.clone(),
            setup.protocol.clone(),
            setup.key.clone(),
            Box::new(KvStore::new()),
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
        Box::new(KvStore::new()),
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

/// Runs blocking disk work from the protocol task without stalling the other tasks of a
/// multi-threaded runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Decodes and verifies incoming frames on one task per core.
fn spawn_verifiers(
    inbox: Inbox,
    inputs: mpsc::Sender<Input>,
    setup: &NodeSetup,
    cache: Arc<Mutex<SignatureCache>>,
    rejections: Rejections,
    metrics: Arc<Metrics>,
) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
    let limits = setup.protocol.limits.clone();
    let mismatch_warned: MismatchWarnings = Arc::default();
    for _ in 0..workers {
        let inbox = inbox.clone();
        let inputs = inputs.clone();
        let committee = setup.committee.clone();
        let limits = limits.clone();
        let cache = cache.clone();
        let rejections = rejections.clone();
        let metrics = metrics.clone();
        let mismatch_warned = mismatch_warned.clone();
        tokio::spawn(async move {
            loop {
                let incoming = { inbox.lock().await.recv().await };
                let Some(incoming) = incoming else { return };
                let input =
                    check_frame(incoming.from, &incoming.frame, &committee, &limits, &cache);
                match input {
                    Ok(input) => {
                        if inputs.send(input).await.is_err() {
                            return;
                        }
                    }
                    Err(rejection) => {
                        let reason = rejection.label();
                        if let (Rejection::ConfigMismatch(part), Peer::Replica(peer)) =
                            (&rejection, incoming.from)
                        {
                            warn_config_mismatch(&mismatch_warned, peer, part);
                        }
                        if let Peer::Client(key) = incoming.from {
                            if CLIENT_FAULTS.contains(&reason)
                                && inputs
                                    .send(Input::Misbehaved(key, incoming.connection))
                                    .await
                                    .is_err()
                            {
                                return;
                            }
                        }
                        count_rejection(&metrics, &rejections, reason);
                        tracing::debug!(?incoming.from, reason, "message refused");
                    }
                }
            }
        });
    }
}

/// When each peer's configuration difference was last logged.
type MismatchWarnings = Arc<std::sync::Mutex<BTreeMap<ReplicaId, Instant>>>;

/// How often a peer whose configuration differs is named in the log.
const MISMATCH_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Names a replica whose configuration differs from this one's, at most once per interval:
/// its status messages arrive every retransmission interval.
fn warn_config_mismatch(warned: &MismatchWarnings, peer: ReplicaId, part: &str) {
    let now = Instant::now();
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get(&peer)
        .is_some_and(|last| now.duration_since(*last) < MISMATCH_WARNING_INTERVAL)
    {
        return;
    }
    warned.insert(peer, now);
    tracing::warn!(
        peer,
        "replica {peer} is configured differently: {part} differs from this replica's; every \
         replica of a cluster needs the same f, replica keys and client list"
    );
}

fn check_frame(
    from: Peer,
    frame: &Bytes,
    committee: &Committee,
    limits: &Limits,
    cache: &Mutex<SignatureCache>,
) -> Result<Input, Rejection> {
    let message = Message::decode(frame, limits).map_err(|_| Rejection::Undecodable)?;
    if let Message::StatusQuery { nonce } = message {
        return Ok(Input::StatusQuery { from, nonce });
    }
    let sender = match from {
        Peer::Replica(id) => Sender::Replica(id),
        Peer::Client(key) => Sender::Client(key),
    };
    let verified = messages::verify(message, sender, committee, limits, &mut SharedCheck(cache))?;
    Ok(Input::Message(verified, from))
}

/// The protocol task's state.
struct ProtocolTask {
    id: ReplicaId,
    behavior_name: Option<String>,
    /// The replica, its behaviour and its timers.
    driver: Driver,
    /// Durable state; `None` when turned off.
    store: Option<ReplicaStore>,
    /// Held while the replica runs, so no other process uses its data directory.
    _lock: Option<DirLock>,
    transport: Arc<ReplicaTransport>,
    metrics: Arc<Metrics>,
    rejections: Rejections,
    /// The replica's clock starts here; it only ever sees durations since.
    origin: Instant,
    rng: rand::rngs::StdRng,
    /// When each client envelope (client, first timestamp) arrived, for the latency histogram.
    arrivals: HashMap<(PublicKey, Timestamp), Instant>,
    committed_requests: u64,
    last_view: u64,
    status_queries: RateLimit,
}

const MAX_TRACKED_ARRIVALS: usize = 100_000;

impl ProtocolTask {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), NodeError> {
        let now = self.now();
        self.driver.replica_mut().start(now);
        self.flush()?;
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next_timer = self.driver.timers().next();
            // A behaviour that holds messages back must be woken when they are due.
            let next_wake = match (next_timer.map(|(_, at)| at), self.driver.next_wakeup()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match next_wake {
                    Some(at) => tokio::time::sleep_until(self.origin + at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // Take whatever else is queued before flushing: the outputs of all of them
                    // share one write and one sync, and go out together.
                    for _ in 0..256 {
                        match inputs.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                    self.flush()?;
                }
                _ = sleep => {
                    let now = self.now();
                    if let Some((timer, at)) = next_timer {
                        let (driver, rng, mut effects) = self.parts();
                        if let Some(flushed) = driver.fire_timer(timer, at, now, rng, &mut effects)
                        {
                            let flushed = flushed?;
                            self.after_flush(flushed)?;
                        }
                    }
                    let (driver, _, mut effects) = self.parts();
                    driver.release_delayed(now, &mut effects);
                }
                _ = gauges.tick() => self.update_gauges(inputs.len()),
            }
        }
        match Arc::try_unwrap(self.transport) {
            Ok(transport) => transport.shutdown().await,
            Err(_) => tracing::debug!("transport still shared at shutdown"),
        }
        Ok(())
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message(message, from) => {
                if let (Message::Request(envelope), Peer::Client(_)) = (message.get(), from) {
                    if self.arrivals.len() < MAX_TRACKED_ARRIVALS {
                        self.arrivals
                            .entry((envelope.client, envelope.first_timestamp()))
                            .or_insert_with(Instant::now);
                    }
                }
                let now = self.now();
                self.driver.replica_mut().handle_message(now, message);
            }
            Input::StatusQuery { from, nonce } => {
                if matches!(from, Peer::Client(_)) && !self.status_queries.allow(Instant::now()) {
                    count_rejection(&self.metrics, &self.rejections, "status_rate_limited");
                    return;
                }
                let status = self.status(nonce);
                let frame = Bytes::from(Message::StatusReport(status).encode());
                match from {
                    Peer::Client(key) => self.transport.send_to_client(&key, frame),
                    Peer::Replica(id) => self.transport.send_to_replica(id, frame),
                }
            }
            Input::Misbehaved(key, connection) => {
                tracing::info!(client = %key, "client sent invalid input; disconnected for a while");
                self.transport.ban_client(&key, connection);
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status(0));
            }
        }
    }

    fn status(&self, nonce: u64) -> NodeStatus {
        let core = self.driver.replica().status();
        let mut rejected: BTreeMap<String, u64> = self.rejections.lock().expect("poisoned").clone();
        for (reason, count) in self.driver.replica().ignored() {
            *rejected.entry(reason.label().to_string()).or_default() += count;
        }
        let transport = self.transport.stats();
        for (label, count) in [
            ("client_not_admitted", transport.clients_refused),
            ("client_banned", transport.clients_banned),
            ("client_refused_while_banned", transport.banned_refused),
            ("frame_too_large", transport.rejected_oversized_in),
            ("frame_too_slow", transport.frames_too_slow),
            ("connection_refused", transport.connections_refused),
            ("client_evicted", transport.clients_evicted),
        ] {
            if count > 0 {
                rejected.insert(label.into(), count);
            }
        }
        NodeStatus {
            nonce,
            replica: self.id,
            view: core.view,
            view_active: core.view_active,
            primary: core.primary,
            last_executed: core.last_executed,
            stable_checkpoint: core.stable_checkpoint,
            state_digest: core.state_digest,
            connected_peers: self.transport.connected_replicas(),
            rejected: rejected.into_iter().collect(),
            evidence_against: core.evidence_against,
            behavior: self.behavior_name.clone(),
            pending_requests: core.pending_requests as u64,
            committed_requests: self.committed_requests,
        }
    }

    fn update_gauges(&mut self, input_queue: usize) {
        self.metrics.set_view(self.driver.replica().view());
        self.metrics
            .set_last_executed(self.driver.replica().last_executed());
        self.metrics
            .set_stable_checkpoint(self.driver.replica().stable_checkpoint());
        self.metrics
            .set_queue_depth("verified_inputs", input_queue as u64);
        let replica = self.driver.replica();
        self.metrics.set_position(&Position {
            peers_connected: self.transport.connected_replicas().len() as u64,
            view_change_in_progress: !replica.is_view_active(),
            fetching_state: replica.is_fetching_state(),
            rejoining: replica.rejoin().is_some_and(|rejoin| rejoin.silent),
            evidence_held: replica.evidence().len() as u64,
            log_bytes: self.store.as_ref().map_or(0, ReplicaStore::disk_bytes),
            state_bytes: replica.stable_state_bytes().unwrap_or(0),
            dropped_queue_full: self.transport.stats().dropped_queue_full,
        });
        // Forget arrivals whose replies never came (the client gave up or went elsewhere).
        if self.arrivals.len() >= MAX_TRACKED_ARRIVALS {
            self.arrivals.clear();
        }
    }

    /// The driver, the behaviour's randomness and the effects, borrowed apart.
    fn parts(&mut self) -> (&mut Driver, &mut rand::rngs::StdRng, NodeEffects<'_>) {
        let effects = NodeEffects {
            id: self.id,
            store: self.store.as_mut(),
            transport: &self.transport,
            metrics: &self.metrics,
            arrivals: &mut self.arrivals,
        };
        (&mut self.driver, &mut self.rng, effects)
    }

    /// Carries out the replica's outputs (see [`Driver::flush`]). A failed write or a halt stops
    /// the replica; nothing that depends on the write is sent.
    fn flush(&mut self) -> Result<(), NodeError> {
        let now = self.now();
        let (driver, rng, mut effects) = self.parts();
        let flushed = driver.flush(now, rng, &mut effects)?;
        self.after_flush(flushed)
    }

    /// Counts what a flush executed, and stops on a halt.
    fn after_flush(&mut self, flushed: Flushed) -> Result<(), NodeError> {
        for executed in &flushed.executed {
            self.metrics.add_batch();
            self.metrics.add_committed(executed.requests.len() as u64);
            self.committed_requests += executed.requests.len() as u64;
        }
        let view = self.driver.replica().view();
        if view > self.last_view {
            self.last_view = view;
            self.metrics.add_view_change();
            self.metrics.set_view(view);
        }
        match flushed.halt {
            Some(halt) => Err(NodeError::Halted(halt)),
            None => Ok(()),
        }
    }
}

/// Where the runtime's replica writes, sends and replies.
struct NodeEffects<'a> {
    id: ReplicaId,
    store: Option<&'a mut ReplicaStore>,
    transport: &'a ReplicaTransport,
    metrics: &'a Metrics,
    arrivals: &'a mut HashMap<(PublicKey, Timestamp), Instant>,
}

impl Effects for NodeEffects<'_> {
    type Error = NodeError;

    fn persist(&mut self, records: &[Durable]) -> Result<(), NodeError> {
        let Some(store) = self.store.as_deref_mut() else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        blocking(|| store.persist(records)).map_err(|error| {
            tracing::error!(replica = self.id, %error, "durable write failed; stopping");
            NodeError::DurableWrite(error)
        })?;
        self.metrics.observe_persist(started.elapsed());
        Ok(())
    }

    fn send(&mut self, to: &[ReplicaId], payload: Payload) {
        let frame = match payload {
            Payload::Message(message) => Bytes::from(message.encode()),
            Payload::Garbage(bytes) => Bytes::from(bytes),
        };
        for id in to {
            self.transport.send_to_replica(*id, frame.clone());
        }
    }

    fn reply(&mut self, reply: Reply) {
        for result in &reply.results {
            if let Some(arrived) = self.arrivals.remove(&(reply.client, result.timestamp)) {
                self.metrics.observe_latency(arrived.elapsed());
            }
        }
        let client = reply.client;
        let frame = Bytes::from(Message::Reply(reply).encode());
        self.transport.send_to_client(&client, frame);
    }
}

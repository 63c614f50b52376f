//! A deterministic simulation of a PBFT cluster in one thread.
//!
//! Replicas are the real [`Replica`] core; the network, the clock, crashes and Byzantine
//! behaviours are simulated, and every random choice comes from one seeded generator, so a seed
//! replays a run exactly. Every message a replica receives goes through the same boundary check
//! ([`messages::verify`]) as in a real node. After every step the invariants the README's
//! Simulator section lists are checked ([`Checker`]); the first violation stops the run with the seed in the message.
//!
//! Each replica persists its outputs' durable records to a simulated disk before they are sent,
//! as the real node does. A crashed replica loses its memory, receives nothing and its timers
//! are lost; when it recovers it is rebuilt from its disk by [`Replica::recover`]. A crash can
//! also hit in the middle of a write ([`Simulation::crash_during_next_write`]): part of the
//! step's records reach the disk and none of its messages leave.
//!
//! A replica given the [`BehaviorKind::Twin`] behaviour gets a second instance with the same
//! key and a state of its own, as two processes sharing one replica's key and port would: each
//! node that sends to the replica reaches one of the two, drawn once per sender.

pub mod app;
pub mod campaign;
mod checker;
mod client;
mod config;
mod disk;
mod events;
mod kv;
mod network;
mod twins;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use pbft_client::session::Target;
use pbft_core::byzantine::{BehaviorKind, FaultyClient, Harness, Payload};
use pbft_core::committee::ClientPolicy;
use pbft_core::driver::Flushed;
use pbft_core::messages::{self, Limits, Message, ReplicaId, Sender, SessionKey, SignatureCache};
use pbft_core::protocol::{signed_statements, Replica};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, PublicKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use app::SimApp;
pub use checker::{Checker, Violation};
pub use client::{Issued, SimClient};
pub use config::SimConfig;
use disk::{Crashed, SimDisk, SimEffects};
use events::{Event, Queued};
pub use kv::{KvApp, Workload};
pub use network::{Network, NetworkConfig, Node};

/// More events than this in flight means messages multiply without bound.
const MAX_QUEUED_EVENTS: usize = 200_000;

struct SimReplica {
    /// The replica id this instance signs as; only a twin's differs from its place.
    identity: ReplicaId,
    /// The replica, its behaviour and its timers.
    driver: Harness,
    key: KeyPair,
    crashed: bool,
    disk: SimDisk,
    /// Crash during the next write, keeping only this fraction of its records.
    crash_in_write: Option<f64>,
    /// The earliest wake-up scheduled for the behaviour, if any.
    wake_at: Option<Duration>,
}

/// Counters of a run.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub events: u64,
    pub messages_sent: u64,
    pub rejected: BTreeMap<&'static str, u64>,
}

/// A simulated cluster. See the module documentation.
pub struct Simulation {
    pub config: SimConfig,
    /// The replicated application.
    app: Arc<dyn SimApp>,
    rng: ChaCha8Rng,
    now: Duration,
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    replicas: Vec<SimReplica>,
    pub clients: Vec<SimClient>,
    attackers: Vec<FaultyClient>,
    /// The keys attackers sent with, indexed by `Node::Attacker`.
    attacker_keys: Vec<PublicKey>,
    attacker_index: BTreeMap<PublicKey, usize>,
    pub network: Network,
    committee: Committee,
    limits: Limits,
    /// Each distinct signature is verified once per simulation, as once per node in the
    /// real runtime; the answer is the strict rule's.
    checks: SignatureCache,
    pub checker: Checker,
    pub stats: SimStats,
    /// Each replica's last executed sequence number and state-transfer count when last checked.
    last_seen: Vec<(u64, u64)>,
    /// The place in `replicas` of each twin, by the replica id it shares.
    twins: BTreeMap<ReplicaId, ReplicaId>,
    /// Which process of a twinned replica each node's link reaches (`true`: the twin).
    twin_sides: BTreeMap<(Node, ReplicaId), bool>,
}

impl Simulation {
    /// A simulation of the key-value store with clients running `config.workload`.
    pub fn new(config: SimConfig) -> Simulation {
        let app = Arc::new(KvApp {
            workload: config.workload,
        });
        Simulation::with_app(config, app)
    }

    /// A simulation of the application `app`.
    pub fn with_app(config: SimConfig, app: Arc<dyn SimApp>) -> Simulation {
        let n = 3 * config.f + 1;
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| key_from(config.seed, b'r', i as u64))
            .collect();
        let listed = (0..config.clients)
            .map(|i| key_from(config.seed, b'c', i as u64).public())
            .chain(
                (0..config.attackers.len()).map(|i| key_from(config.seed, b'a', i as u64).public()),
            )
            .collect();
        let policy = if config.open_clients {
            ClientPolicy::Open
        } else {
            ClientPolicy::Allow(listed)
        };
        let committee = Committee::new(keys.iter().map(KeyPair::public).collect(), config.f)
            .expect("n = 3f+1")
            .with_clients(policy);
        let replicas = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let replica = Replica::new(
                    i as ReplicaId,
                    committee.clone(),
                    config.protocol.clone(),
                    key.clone(),
                    app.state_machine(),
                )
                .expect("valid replica");
                SimReplica {
                    identity: i as ReplicaId,
                    driver: Harness::new(replica, None),
                    key,
                    crashed: false,
                    disk: SimDisk::default(),
                    crash_in_write: None,
                    wake_at: None,
                }
            })
            .collect();
        let clients = (0..config.clients)
            .map(|i| {
                SimClient::new(
                    i,
                    key_from(config.seed, b'c', i as u64),
                    committee.clone(),
                    config.requests_per_client,
                    config.client_window,
                    config.client_retransmit,
                    app.client_ops(i, config.seed),
                )
            })
            .collect();
        let attackers = config
            .attackers
            .iter()
            .enumerate()
            .map(|(i, attack)| {
                let key = committee.signer(key_from(config.seed, b'a', i as u64));
                FaultyClient::new(*attack, key, i as u64 + 1, config.protocol.limits.clone())
            })
            .collect();
        let mut sim = Simulation {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now: Duration::ZERO,
            order: 0,
            queue: BinaryHeap::new(),
            replicas,
            clients,
            attackers,
            attacker_keys: Vec::new(),
            attacker_index: BTreeMap::new(),
            network: Network::new(config.network.clone()),
            committee,
            limits: config.protocol.limits.clone(),
            checks: SignatureCache::default(),
            checker: Checker::new(app.model()),
            stats: SimStats::default(),
            last_seen: vec![(0, 0); n],
            twins: BTreeMap::new(),
            twin_sides: BTreeMap::new(),
            config,
            app,
        };
        for id in 0..n {
            let now = sim.now;
            sim.replicas[id].driver.replica_mut().start(now);
            sim.flush(id as ReplicaId)
                .expect("starting executes nothing");
        }
        for client in 0..sim.clients.len() {
            let at = Duration::from_micros(client as u64 * 137);
            sim.schedule(at, Event::ClientTick { client });
        }
        for attacker in 0..sim.attackers.len() {
            let at = Duration::from_micros(attacker as u64 * 211 + 50);
            sim.schedule(at, Event::AttackTick { attacker });
        }
        sim
    }

    // ----- fault injection -----

    /// Makes replica `id` Byzantine with `kind` from now on. A [`BehaviorKind::Twin`] starts
    /// the replica's twin, fresh, now.
    pub fn set_behavior(&mut self, id: ReplicaId, kind: BehaviorKind) {
        let replica = &mut self.replicas[id as usize];
        replica
            .driver
            .set_behavior(Some(kind.build_with(&self.config.protocol)));
        replica.wake_at = None;
        if kind == BehaviorKind::Twin && !self.twins.contains_key(&id) {
            self.start_twin(id);
        }
    }

    /// Makes replica `id` correct again.
    pub fn clear_behavior(&mut self, id: ReplicaId) {
        let replica = &mut self.replicas[id as usize];
        replica.driver.set_behavior(None);
        replica.wake_at = None;
    }

    pub fn is_correct(&self, id: ReplicaId) -> bool {
        self.replicas[id as usize].driver.behavior().is_none()
    }

    /// Cuts every link to and from replica `id`.
    pub fn isolate(&mut self, id: ReplicaId) {
        let node = Node::Replica(id);
        for other in self.all_nodes() {
            if other != node {
                self.network.cut_both(node, other);
            }
        }
    }

    /// Restores every link to and from replica `id`.
    pub fn reconnect(&mut self, id: ReplicaId) {
        self.network.restore(Node::Replica(id));
    }

    /// Cuts every link between the two groups of replicas (clients keep reaching everyone).
    pub fn split(&mut self, a: &[ReplicaId], b: &[ReplicaId]) {
        for x in a {
            for y in b {
                self.network.cut_both(Node::Replica(*x), Node::Replica(*y));
            }
        }
    }

    pub fn heal(&mut self) {
        self.network.heal();
    }

    /// Stops replica `id` between two steps: what it wrote is on its disk, the rest is lost.
    pub fn crash(&mut self, id: ReplicaId) {
        let replica = &mut self.replicas[id as usize];
        replica.crashed = true;
        replica.driver.clear_timers();
    }

    /// Crashes replica `id` in the middle of its next write: only the first `kept` fraction
    /// (0 to 1) of that step's records reach the disk, and none of its messages leave.
    pub fn crash_during_next_write(&mut self, id: ReplicaId, kept: f64) {
        self.replicas[id as usize].crash_in_write = Some(kept.clamp(0.0, 1.0));
    }

    /// Restarts a crashed replica from its disk.
    pub fn recover(&mut self, id: ReplicaId) -> Result<(), Violation> {
        let now = self.now;
        let r = &mut self.replicas[id as usize];
        if !r.crashed {
            // A crash waiting for a write that never came is called off.
            r.crash_in_write = None;
            return Ok(());
        }
        let (replica, report) = Replica::recover(
            id,
            self.committee.clone(),
            self.config.protocol.clone(),
            r.key.clone(),
            self.app.state_machine(),
            r.disk.records(),
        )
        .map_err(|e| Violation(format!("replica {id} cannot recover from its disk: {e}")))?;
        r.driver.replace_replica(replica);
        r.crashed = false;
        r.crash_in_write = None;
        tracing::debug!(replica = id, ?report, "recovered from disk");
        r.driver.replica_mut().start(now);
        // Batches above the snapshot execute again; they are not repeats.
        self.checker
            .forget_executions_after(id, report.snapshot_seq);
        self.last_seen[id as usize] = (report.snapshot_seq, u64::MAX);
        self.flush(id)
    }

    /// Replica `id` loses its disk and comes back at once with an empty one, initialised to
    /// rejoin ([`Replica::rejoining`]): what it had in memory, on disk and in flight to it is
    /// gone.
    pub fn wipe_and_rejoin(&mut self, id: ReplicaId) -> Result<(), Violation> {
        let now = self.now;
        let r = &mut self.replicas[id as usize];
        let replica = Replica::rejoining(
            id,
            self.committee.clone(),
            self.config.protocol.clone(),
            r.key.clone(),
            self.app.state_machine(),
        )
        .map_err(|e| Violation(format!("replica {id} cannot rejoin: {e}")))?;
        r.driver.clear_timers();
        r.driver.replace_replica(replica);
        r.disk = SimDisk::default();
        r.crashed = false;
        r.crash_in_write = None;
        r.driver.replica_mut().start(now);
        // A new process: nothing sent to the old one reaches it.
        self.queue.retain(|Reverse(queued)| {
            !matches!(queued.event, Event::Deliver { to: Node::Replica(to), .. } if to == id)
        });
        self.checker.forget_executions_after(id, 0);
        self.last_seen[id as usize] = (0, u64::MAX);
        tracing::debug!(replica = id, "lost its disk; rejoining");
        self.flush(id)
    }

    /// Gives client `index` `count` more requests to issue.
    pub fn add_requests(&mut self, index: usize, count: usize) {
        let idle = self.clients[index].is_done();
        self.clients[index].add_requests(count);
        if idle {
            let at = self.now + self.config.client_tick;
            self.schedule(at, Event::ClientTick { client: index });
        }
    }

    /// Whether replica `id` is down or will go down at its next write.
    pub fn is_crashed(&self, id: ReplicaId) -> bool {
        let r = &self.replicas[id as usize];
        r.crashed || r.crash_in_write.is_some()
    }

    // ----- inspection -----

    pub fn now(&self) -> Duration {
        self.now
    }

    /// The committee's size (twins not counted).
    pub fn n(&self) -> usize {
        self.committee.n()
    }

    pub fn replica(&self, id: ReplicaId) -> &Replica {
        self.replicas[id as usize].driver.replica()
    }

    pub fn correct_ids(&self) -> Vec<ReplicaId> {
        (0..self.n() as ReplicaId)
            .filter(|id| self.is_correct(*id))
            .collect()
    }

    /// Every client accepted every request of its workload.
    pub fn clients_done(&self) -> bool {
        self.clients.iter().all(SimClient::is_done)
    }

    /// A one-line summary for failure messages.
    pub fn describe(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                let s = r.driver.replica().status();
                format!(
                    "r{}[v{}{} exec {} stable {} pending {}{}{}]",
                    s.id,
                    s.view,
                    if s.view_active { "" } else { "*" },
                    s.last_executed,
                    s.stable_checkpoint,
                    s.pending_requests,
                    r.driver
                        .behavior()
                        .map(|b| format!(" {}", b.name()))
                        .unwrap_or_default(),
                    if r.crashed { " crashed" } else { "" }
                )
            })
            .collect();
        let outstanding: usize = self.clients.iter().map(SimClient::outstanding).sum();
        format!(
            "seed {} at {:?}: {} ; clients outstanding {outstanding}, accepted {}",
            self.config.seed,
            self.now,
            replicas.join(" "),
            self.checker.accepted_count
        )
    }

    // ----- running -----

    /// Runs until simulated time `deadline`.
    pub fn run_until(&mut self, deadline: Duration) -> Result<(), Violation> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > deadline {
                break;
            }
            self.step()?;
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// Runs for `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), Violation> {
        let deadline = self.now + duration;
        self.run_until(deadline)
    }

    /// Runs until every client is done, or fails after `limit` of simulated time.
    pub fn run_until_clients_done(&mut self, limit: Duration) -> Result<(), Violation> {
        let deadline = self.now + limit;
        while !self.clients_done() {
            if self.now >= deadline || self.queue.is_empty() {
                return Err(Violation(format!(
                    "liveness: clients not done within {limit:?}: {}",
                    self.describe()
                )));
            }
            self.step()?;
        }
        Ok(())
    }

    /// Checks that correct replicas have equal states, and that each correct replica's state is
    /// what the committed history and the accepted results give ([`app::AppModel::check_final`]).
    pub fn check_final_state(&mut self) -> Result<(), Violation> {
        for id in self.correct_ids() {
            let replica = self.replica(id);
            let (seq, digest) = (replica.last_executed(), replica.state_digest());
            self.checker
                .on_state(id, seq, digest)
                .map_err(|v| self.annotate(v))?;
        }
        for id in self.correct_ids() {
            if self.is_crashed(id) {
                continue;
            }
            let replica = self.replica(id);
            let caught_up = replica.last_executed() == self.checker.max_executed();
            if let Err(reason) = self
                .checker
                .check_final(replica.app(), caught_up, &self.clients)
            {
                return Err(Violation(format!(
                    "{reason} at replica {id} after seq {}: {}",
                    replica.last_executed(),
                    self.describe()
                )));
            }
        }
        Ok(())
    }

    fn all_nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = (0..self.replicas.len() as u32).map(Node::Replica).collect();
        nodes.extend((0..self.clients.len()).map(Node::Client));
        nodes
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at,
            order: self.order,
            event,
        }));
    }

    fn step(&mut self) -> Result<(), Violation> {
        if self.queue.len() > MAX_QUEUED_EVENTS {
            return Err(Violation(format!(
                "bounded memory: {} messages and timers in flight ({:?}): {}",
                self.queue.len(),
                self.in_flight_kinds(),
                self.describe()
            )));
        }
        let Some(Reverse(queued)) = self.queue.pop() else {
            return Ok(());
        };
        self.now = self.now.max(queued.at);
        self.stats.events += 1;
        match queued.event {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload)?,
            Event::Timer { replica, timer, at } => {
                if !self.replicas[replica as usize].crashed {
                    self.drive(replica, |driver, now, rng, effects| {
                        driver.fire_timer(timer, at, now, rng, effects)
                    })?;
                }
            }
            Event::Wake { replica } => {
                let r = &mut self.replicas[replica as usize];
                if r.wake_at.is_some_and(|at| at <= self.now) {
                    r.wake_at = None;
                }
                // A crashed replica sends nothing; what it holds waits for its recovery, whose
                // flush schedules the next wake-up.
                if !r.crashed {
                    self.drive(replica, |driver, now, _, effects| {
                        driver.release_delayed(now, effects);
                        None
                    })?;
                    self.schedule_wake(replica);
                }
            }
            Event::AttackTick { attacker } => {
                for sent in self.attackers[attacker].tick(&mut self.rng) {
                    let key = sent.from.public();
                    let next = self.attacker_keys.len();
                    let index = *self.attacker_index.entry(key).or_insert(next);
                    if index == next {
                        self.attacker_keys.push(key);
                    }
                    let from = Node::Attacker(index);
                    let message = Payload::Message(Arc::new(sent.message));
                    for id in 0..self.n() as ReplicaId {
                        self.transmit(from, Node::Replica(id), message.clone());
                    }
                }
                let at = self.now + self.config.attack_interval;
                if at < self.config.attack_until {
                    self.schedule(at, Event::AttackTick { attacker });
                }
            }
            Event::ClientTick { client } => {
                let (issued, frames) = self.clients[client].tick(self.now);
                let session = self.clients[client].session;
                for (timestamp, issued) in issued {
                    self.checker.on_issued(session, timestamp, issued);
                }
                for (target, frame) in frames {
                    // What the client library sends is what the replicas decode.
                    let message = match Message::decode(&frame, &self.limits) {
                        Ok(message) => Payload::Message(Arc::new(message)),
                        Err(_) => Payload::Garbage(frame.to_vec()),
                    };
                    let to: Vec<ReplicaId> = match target {
                        Target::Replica(id) => vec![id],
                        Target::All => (0..self.n() as ReplicaId).collect(),
                    };
                    for id in to {
                        self.transmit(Node::Client(client), Node::Replica(id), message.clone());
                    }
                }
                if !self.clients[client].is_done() {
                    let at = self.now + self.config.client_tick;
                    self.schedule(at, Event::ClientTick { client });
                }
            }
        }
        self.check_states()
    }

    fn deliver(&mut self, from: Node, to: Node, payload: Payload) -> Result<(), Violation> {
        match to {
            // An attacker's replies are of no interest.
            Node::Attacker(_) => Ok(()),
            Node::Client(index) => {
                let Node::Replica(place) = from else {
                    return Ok(());
                };
                let replica = self.replicas[place as usize].identity;
                let Payload::Message(message) = payload else {
                    return Ok(());
                };
                let Message::Reply(reply) = &*message else {
                    return Ok(());
                };
                let client = &mut self.clients[index];
                let accepted = client.on_reply(replica, reply.clone());
                let key = client.session;
                for (timestamp, result) in accepted {
                    self.checker
                        .on_accepted(key, timestamp, &result)
                        .map_err(|v| self.annotate(v))?;
                }
                Ok(())
            }
            Node::Replica(id) => {
                if self.replicas[id as usize].crashed {
                    return Ok(());
                }
                let sender = match from {
                    Node::Replica(r) => Sender::Replica(self.replicas[r as usize].identity),
                    Node::Client(c) => Sender::Client(self.clients[c].key),
                    Node::Attacker(index) => Sender::Client(self.attacker_keys[index]),
                };
                let message = match payload {
                    Payload::Message(message) => (*message).clone(),
                    Payload::Garbage(bytes) => match Message::decode(&bytes, &self.limits) {
                        Ok(message) => message,
                        Err(_) => {
                            *self.stats.rejected.entry("undecodable").or_default() += 1;
                            return Ok(());
                        }
                    },
                };
                match messages::verify(
                    message,
                    sender,
                    &self.committee,
                    &self.limits,
                    &mut self.checks,
                ) {
                    Ok(verified) => {
                        let now = self.now;
                        self.replicas[id as usize]
                            .driver
                            .replica_mut()
                            .handle_message(now, verified);
                        self.flush(id)
                    }
                    Err(rejection) => {
                        *self.stats.rejected.entry(rejection.label()).or_default() += 1;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Carries out a replica's outputs (through its behaviour, if Byzantine).
    fn flush(&mut self, id: ReplicaId) -> Result<(), Violation> {
        self.drive(id, |driver, now, rng, effects| {
            Some(driver.flush(now, rng, effects))
        })
    }

    /// Runs `step` on replica `id`'s driver, then carries out what it sent and checks what a
    /// correct replica did. A step that flushed returns `Some`.
    fn drive(
        &mut self,
        id: ReplicaId,
        step: impl FnOnce(
            &mut Harness,
            Duration,
            &mut ChaCha8Rng,
            &mut SimEffects<'_>,
        ) -> Option<Result<Flushed, Crashed>>,
    ) -> Result<(), Violation> {
        let now = self.now;
        let r = &mut self.replicas[id as usize];
        let mut effects = SimEffects {
            id,
            disk: &mut r.disk,
            crash_in_write: &mut r.crash_in_write,
            log_window: self.config.protocol.log_window,
            sends: Vec::new(),
            replies: Vec::new(),
            checkpoints: Vec::new(),
        };
        let result = step(&mut r.driver, now, &mut self.rng, &mut effects);
        let SimEffects {
            sends,
            replies,
            checkpoints,
            ..
        } = effects;
        let flushed = match result {
            Some(Ok(flushed)) => flushed,
            Some(Err(Crashed)) => {
                r.crashed = true;
                r.driver.clear_timers();
                return Ok(());
            }
            None => Flushed::default(),
        };
        let correct = r.driver.behavior().is_none();
        if let (Some(halt), true) = (&flushed.halt, correct) {
            return Err(self.annotate(Violation(format!("correct replica {id} halted: {halt}"))));
        }
        for (timer, at) in flushed.timers_set {
            self.schedule(
                at,
                Event::Timer {
                    replica: id,
                    timer,
                    at,
                },
            );
        }
        if correct {
            for (seq, digest) in &checkpoints {
                self.checker
                    .on_checkpoint(id, *seq, *digest)
                    .map_err(|v| self.annotate(v))?;
            }
            let accused: Vec<ReplicaId> = self.replica(id).evidence().keys().copied().collect();
            if !accused.is_empty() {
                let faulty: Vec<bool> = (0..self.n() as ReplicaId)
                    .map(|r| !self.is_correct(r))
                    .collect();
                self.checker
                    .on_evidence(id, accused, |culprit| !faulty[culprit as usize])
                    .map_err(|v| self.annotate(v))?;
            }
            for executed in &flushed.executed {
                let unlisted = (executed.requests.iter())
                    .find(|(session, _)| !self.committee.admits_client(&session.client));
                if let Some((session, _)) = unlisted {
                    let violation = Violation(format!(
                        "client list: replica {id} executed a request of unlisted key {:?} at seq {}",
                        session.client, executed.seq
                    ));
                    return Err(self.annotate(violation));
                }
                self.checker
                    .on_executed(id, executed)
                    .map_err(|v| self.annotate(v))?;
            }
            // Ordered results only: a read-only answer reflects one replica's state.
            for reply in replies.iter().filter(|r| !r.read_only) {
                let session = SessionKey {
                    client: reply.client,
                    session: reply.session,
                };
                for result in &reply.results {
                    self.checker
                        .on_correct_result(session, result.timestamp, &result.outcome)
                        .map_err(|v| self.annotate(v))?;
                }
            }
        }
        if correct {
            let identity = self.replicas[id as usize].identity;
            for (_, payload) in &sends {
                let Payload::Message(message) = payload else {
                    continue;
                };
                for statement in signed_statements(message) {
                    if statement.replica == identity {
                        self.checker
                            .on_signed(statement)
                            .map_err(|v| self.annotate(v))?;
                    }
                }
            }
        }
        let from = Node::Replica(id);
        for (to, payload) in sends {
            for to in to {
                self.transmit(from, Node::Replica(to), payload.clone());
            }
        }
        self.schedule_wake(id);
        for reply in replies {
            if let Some(index) = self.clients.iter().position(|c| c.key == reply.client) {
                self.transmit(
                    Node::Replica(id),
                    Node::Client(index),
                    Payload::Message(Arc::new(Message::Reply(reply))),
                );
            }
        }
        Ok(())
    }

    /// Schedules a wake-up for the behaviour of replica `id` if it holds sends due earlier than
    /// any wake-up already scheduled.
    fn schedule_wake(&mut self, id: ReplicaId) {
        let r = &mut self.replicas[id as usize];
        let Some(at) = r.driver.next_wakeup() else {
            return;
        };
        if r.wake_at.is_some_and(|scheduled| scheduled <= at) {
            return;
        }
        r.wake_at = Some(at);
        let at = at.max(self.now);
        self.schedule(at, Event::Wake { replica: id });
    }

    fn transmit(&mut self, from: Node, to: Node, payload: Payload) {
        self.stats.messages_sent += 1;
        let Some(to) = self.twin_route(from, to) else {
            return;
        };
        for delay in self.network.deliveries(from, to, &mut self.rng) {
            let at = self.now + delay;
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Equal state, for every correct replica that reached a checkpoint or installed a state.
    /// Between those points agreement on batches and deterministic execution imply it, and
    /// hashing the whole state after every batch would make long runs quadratic.
    fn check_states(&mut self) -> Result<(), Violation> {
        let interval = self.config.protocol.checkpoint_interval;
        for id in 0..self.n() {
            let r = &self.replicas[id];
            let seq = r.driver.replica().last_executed();
            let transfers = r.driver.replica().state_transfers();
            if seq == self.last_seen[id].0 {
                continue;
            }
            let transferred = transfers != self.last_seen[id].1;
            self.last_seen[id] = (seq, transfers);
            if r.driver.behavior().is_some() || !(transferred || seq.is_multiple_of(interval)) {
                continue;
            }
            let digest = r.driver.replica().state_digest();
            self.checker
                .on_state(id as ReplicaId, seq, digest)
                .map_err(|v| self.annotate(v))?;
        }
        Ok(())
    }

    /// Counts in-flight messages by kind, for diagnosing a storm.
    fn in_flight_kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for Reverse(queued) in self.queue.iter() {
            let kind = match &queued.event {
                Event::Deliver {
                    payload: Payload::Message(m),
                    ..
                } => m.kind(),
                Event::Deliver { .. } => "garbage",
                Event::Timer { .. } => "timer",
                Event::ClientTick { .. } => "client tick",
                Event::AttackTick { .. } => "attack tick",
                Event::Wake { .. } => "wake-up",
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    fn annotate(&self, violation: Violation) -> Violation {
        Violation(format!("{} ({})", violation.0, self.describe()))
    }

    /// A random number from the simulation's generator (for tests that pick faults).
    pub fn random_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.rng.random_range(range)
    }
}

/// A deterministic key for node `index` of kind `tag` under `seed`.
fn key_from(seed: u64, tag: u8, index: u64) -> KeyPair {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = tag;
    bytes[9..17].copy_from_slice(&index.to_le_bytes());
    KeyPair::from_seed(&bytes).expect("ed25519 seeds always give valid keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour hook that releases held messages: a slow primary is tolerated while its
    /// delays stay under the view-change timeout, and replaced once they exceed it.
    #[test]
    fn a_slow_primary_is_tolerated_then_replaced() {
        let mut config = SimConfig::new(7, 1);
        config.requests_per_client = 80;
        let mut sim = Simulation::new(config);
        sim.set_behavior(0, BehaviorKind::Slow);
        while sim.replica(1).last_executed() < 10 {
            sim.run_for(Duration::from_millis(100)).unwrap();
            assert!(sim.now() < Duration::from_secs(60), "{}", sim.describe());
        }
        assert_eq!(sim.replica(1).view(), 0, "{}", sim.describe());
        sim.run_until_clients_done(Duration::from_secs(600))
            .unwrap();
        sim.run_for(Duration::from_secs(5)).unwrap();
        sim.check_final_state().unwrap();
        for id in sim.correct_ids() {
            assert!(sim.replica(id).view() >= 1, "{}", sim.describe());
        }
    }
}

//! The protocol task: the one owner of the replica, carrying out its outputs (log writes before
//! sends) and answering status queries within a rate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::PublicKey;
use pbft_net::{Peer, ReplicaTransport};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::log_writer::{Outbound, Outbox};
use super::verify::{count_rejection, Rejections};
use super::Input;
use crate::error::NodeError;
use crate::metrics::{Metrics, Position};
use pbft_core::byzantine::{Harness, RawEffects};
use pbft_core::driver::{Effects, Flushed};
use pbft_core::messages::{Message, NodeStatus, ReplicaId, Reply, Timestamp};
use pbft_core::protocol::Durable;

/// Status queries answered per second to clients, all together; more are dropped and counted.
pub(super) const STATUS_QUERIES_PER_SECOND: f64 = 200.0;

/// A token bucket: `rate` per second, bursts of up to one second's worth.
pub(super) struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub(super) fn new(rate: f64) -> RateLimit {
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

/// The protocol task's state.
pub(super) struct ProtocolTask {
    pub(super) id: ReplicaId,
    pub(super) behavior_name: Option<String>,
    /// The replica, its behaviour and its timers.
    pub(super) driver: Harness,
    /// Where records go to the log and frames wait for them.
    pub(super) outbox: Outbox,
    pub(super) transport: Arc<ReplicaTransport>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) rejections: Rejections,
    /// The replica's clock starts here; it only ever sees durations since.
    pub(super) origin: Instant,
    pub(super) rng: rand::rngs::StdRng,
    /// When each client envelope (client, first timestamp) arrived, for the latency histogram.
    pub(super) arrivals: HashMap<(PublicKey, Timestamp), Instant>,
    pub(super) committed_requests: u64,
    pub(super) last_view: u64,
    pub(super) status_queries: RateLimit,
}

const MAX_TRACKED_ARRIVALS: usize = 100_000;

impl ProtocolTask {
    pub(super) async fn run(
        mut self,
        inputs: mpsc::Receiver<Input>,
        stop: oneshot::Receiver<()>,
    ) -> Result<(), NodeError> {
        let result = self.serve(inputs, stop).await;
        // The log's thread finishes what it was handed (a halting replica's last records
        // included) before the data directory is unlocked.
        let outbox = std::mem::replace(&mut self.outbox, Outbox::none());
        outbox.close().await;
        match Arc::try_unwrap(self.transport) {
            Ok(transport) => transport.shutdown().await,
            Err(_) => tracing::debug!("transport still shared at shutdown"),
        }
        result
    }

    async fn serve(
        &mut self,
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
            let wake_at = next_wake.map(|at| self.origin + at);
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // While the log is too far behind, inputs wait in their queue (and, once it is
            // full, in the verifiers and the transport).
            let take_inputs = self.outbox.has_room();
            tokio::select! {
                _ = &mut stop => return Ok(()),
                written = self.outbox.written(|out| out.deliver(&self.transport, &self.metrics)) => {
                    if let Err(error) = written {
                        tracing::error!(replica = self.id, %error, "durable write failed; stopping");
                        return Err(NodeError::DurableWrite(error));
                    }
                }
                input = inputs.recv(), if take_inputs => {
                    let Some(input) = input else { return Ok(()) };
                    self.handle(input);
                    // Take whatever else is queued before flushing: the outputs of all of them
                    // share one group of records and go out together.
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
    }

    /// Routes the replies of a client's own session to the connection it sent from, and notes
    /// when its requests arrived (for the latency metric).
    fn note_client_request(&mut self, message: &Message, key: PublicKey, connection: usize) {
        let (client, session) = match message {
            Message::Request(envelope) => {
                if self.arrivals.len() < MAX_TRACKED_ARRIVALS {
                    self.arrivals
                        .entry((envelope.client, envelope.first_timestamp()))
                        .or_insert_with(Instant::now);
                }
                (envelope.client, envelope.session)
            }
            Message::Read(read) => (read.client, read.session),
            _ => return,
        };
        // A connection may pass on others' requests; only the key's own sessions move to it.
        if client == key {
            self.transport.note_session(&key, session, connection);
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message(message, from, connection) => {
                if let Peer::Client(key) = from {
                    self.note_client_request(message.get(), key, connection);
                }
                let now = self.now();
                self.driver.replica_mut().handle_message(now, message);
            }
            Input::StatusQuery {
                from,
                connection,
                nonce,
            } => {
                if matches!(from, Peer::Client(_)) && !self.status_queries.allow(Instant::now()) {
                    count_rejection(&self.metrics, &self.rejections, "status_rate_limited");
                    return;
                }
                let status = self.status(nonce);
                let frame = Bytes::from(Message::StatusReport(status).encode());
                match from {
                    Peer::Client(key) => self.transport.send_to_connection(&key, connection, frame),
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
            log_bytes: self.outbox.disk_bytes(),
            state_bytes: replica.stable_state_bytes().unwrap_or(0),
            dropped_queue_full: self.transport.stats().dropped_queue_full,
        });
        // Forget arrivals whose replies never came (the client gave up or went elsewhere).
        if self.arrivals.len() >= MAX_TRACKED_ARRIVALS {
            self.arrivals.clear();
        }
    }

    /// The driver, the behaviour's randomness and the effects, borrowed apart.
    fn parts(&mut self) -> (&mut Harness, &mut rand::rngs::StdRng, NodeEffects<'_>) {
        let effects = NodeEffects {
            outbox: &mut self.outbox,
            transport: &self.transport,
            metrics: &self.metrics,
            arrivals: &mut self.arrivals,
        };
        (&mut self.driver, &mut self.rng, effects)
    }

    /// Carries out the replica's outputs (see [`Harness::flush`]). A failed write or a halt stops
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
    outbox: &'a mut Outbox,
    transport: &'a ReplicaTransport,
    metrics: &'a Metrics,
    arrivals: &'a mut HashMap<(PublicKey, Timestamp), Instant>,
}

impl NodeEffects<'_> {
    fn send_frame(&mut self, to: &[ReplicaId], frame: Bytes) {
        for id in to {
            let outbound = Outbound::Replica(*id, frame.clone());
            self.outbox
                .send(outbound, |out| out.deliver(self.transport, self.metrics));
        }
    }
}

impl RawEffects for NodeEffects<'_> {
    fn send_raw(&mut self, to: &[ReplicaId], bytes: Vec<u8>) {
        self.send_frame(to, Bytes::from(bytes));
    }
}

impl Effects for NodeEffects<'_> {
    type Error = NodeError;

    /// Hands the records to the log's thread; the step's frames wait for them in the outbox.
    fn persist(&mut self, records: Vec<Durable>) -> Result<(), NodeError> {
        self.outbox.persist(records);
        Ok(())
    }

    fn send(&mut self, to: &[ReplicaId], message: Arc<Message>) {
        self.send_frame(to, Bytes::from(message.encode()));
    }

    fn reply(&mut self, reply: Reply) {
        let arrived = reply
            .results
            .iter()
            .filter_map(|result| self.arrivals.remove(&(reply.client, result.timestamp)))
            .collect();
        let (client, session) = (reply.client, reply.session);
        let outbound = Outbound::Reply {
            client,
            session,
            frame: Bytes::from(Message::Reply(reply).encode()),
            arrived,
        };
        self.outbox
            .send(outbound, |out| out.deliver(self.transport, self.metrics));
    }
}

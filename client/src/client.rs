//! The async client: a background task drives a [`Session`] over the QUIC transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pbft_config::ConfigError;
use pbft_core::messages::{Limits, Message, NodeStatus, Outcome, ReplicaId, Timestamp};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, PublicKey};
use pbft_net::{ClientTransport, PeerInfo, TransportConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{ClientError, StatusUnavailable};
use crate::session::{new_session_id, Session, Target};

/// Everything [`Client::connect`] needs. [`ClientSetup::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct ClientSetup {
    /// The client's identity: it signs requests and authenticates the client's connections.
    /// Any number of processes may use one key at once: each runs its own session.
    pub key: KeyPair,
    /// The number of faulty replicas tolerated; the cluster has 3f+1 replicas.
    pub f: usize,
    /// Every replica's id (`0..n`), address and key.
    pub replicas: Vec<PeerInfo>,
    /// How long [`Client::submit`] waits for 2f+1 matching replies, including waiting for room
    /// behind other outstanding requests. Default 30 s.
    pub request_timeout: Duration,
    /// The first wait before an unanswered envelope is sent again, to every replica. Default 1 s.
    pub retransmit_interval: Duration,
    /// Retransmission waits double up to this. Default 8 s.
    pub max_retransmit_interval: Duration,
    /// Transport limits and timings.
    pub transport: TransportConfig,
}

impl ClientSetup {
    /// A setup with the default timings.
    pub fn new(key: KeyPair, f: usize, replicas: Vec<PeerInfo>) -> ClientSetup {
        ClientSetup {
            key,
            f,
            replicas,
            request_timeout: Duration::from_secs(30),
            retransmit_interval: Duration::from_secs(1),
            max_retransmit_interval: Duration::from_secs(8),
            transport: TransportConfig::default(),
        }
    }

    /// The committee of the listed replicas, checking that their ids are exactly `0..3f+1`.
    pub fn committee(&self) -> Result<Committee, ClientError> {
        let mut replicas = self.replicas.clone();
        replicas.sort_by_key(|r| r.id);
        for (index, replica) in replicas.iter().enumerate() {
            if replica.id as usize != index {
                return Err(ConfigError::invalid(
                    "replicas",
                    format!(
                        "ids must be 0..{} without gaps or repeats (found id {} at position \
                         {index})",
                        replicas.len(),
                        replica.id
                    ),
                )
                .into());
            }
        }
        let keys = replicas.iter().map(|r| r.public_key).collect();
        Committee::new(keys, self.f)
            .map_err(|e| ConfigError::invalid("replicas", e.to_string()).into())
    }
}

/// A request waiting for a timestamp.
struct Submit {
    op: Vec<u8>,
    /// Try it as a read-only request first.
    read_only: bool,
    done: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// Requests to the background task other than submissions.
enum Control {
    /// Broadcast a status query and forward matching reports.
    Status {
        nonce: u64,
        reports: mpsc::UnboundedSender<(ReplicaId, NodeStatus)>,
    },
    /// Stop collecting reports for `nonce`.
    StatusDone(u64),
    /// Stop the task; failing every request still waiting.
    Close(oneshot::Sender<()>),
}

/// A connection to the cluster: submits operations and waits for 2f+1 matching replies.
///
/// Cheap to clone; clones share one identity, one session, one set of connections and one
/// background task, so requests from many tasks are signed together. Other processes may use
/// the same key at the same time: each [`Client::connect`] starts its own session. The
/// background task stops once every clone is dropped or [`Client::close`] is called. Must be
/// used within a tokio runtime.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn example() -> Result<(), pbft_client::ClientError> {
/// let setup = pbft_client::load_client_config("testnet-data/client.toml")?;
/// let client = pbft_client::Client::connect(setup).await?;
/// client.wait_connected(3, Duration::from_secs(10)).await?;
/// client.put("greeting", "hello").await?;
/// let value = client.get("greeting").await?;
/// assert_eq!(value.as_deref(), Some(&b"hello"[..]));
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    submits: mpsc::Sender<Submit>,
    control: mpsc::UnboundedSender<Control>,
    transport: Arc<ClientTransport>,
    public_key: PublicKey,
    replicas: Arc<Vec<PeerInfo>>,
    request_timeout: Duration,
    max_op_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("public_key", &self.public_key)
            .field("replicas", &self.replicas.len())
            .finish()
    }
}

/// Status query nonces, distinct within a process.
static NEXT_NONCE: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Starts connecting to every replica and returns at once; links come up in the background
    /// and requests sent meanwhile wait for them. Each replica's connection pins its listed key.
    pub async fn connect(setup: ClientSetup) -> Result<Client, ClientError> {
        let committee = setup.committee()?;
        if setup.retransmit_interval.is_zero() || setup.request_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "request_timeout",
                "request_timeout and retransmit_interval must be positive",
            )
            .into());
        }
        let (transport, frames) =
            ClientTransport::connect(&setup.key, setup.replicas.clone(), setup.transport.clone())
                .await
                .map_err(ClientError::Transport)?;
        let transport = Arc::new(transport);
        let session = Session::new(
            setup.key.clone(),
            committee,
            new_session_id(wall_clock_millis(), session_bits()),
            setup.retransmit_interval,
            setup.max_retransmit_interval,
        );
        let limits = Limits::default();
        // Bounded: submitters wait here while the session has no room.
        let (submits, submit_rx) = mpsc::channel(64);
        let (control, control_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            session,
            origin: Instant::now(),
            transport: transport.clone(),
            frames,
            submits: submit_rx,
            control: control_rx,
            waiting: HashMap::new(),
            status: HashMap::new(),
            limits: limits.clone(),
        };
        tokio::spawn(driver.run());
        Ok(Client {
            submits,
            control,
            transport,
            public_key: setup.key.public(),
            replicas: Arc::new(setup.replicas),
            request_timeout: setup.request_timeout,
            max_op_bytes: limits.max_op_bytes,
        })
    }

    /// Submits `op` for ordered execution and returns its result once 2f+1 distinct replicas
    /// sent the same result. Waits for room first if many requests of this client are
    /// outstanding. The result comes from the replicated application; [`ClientError::Timeout`]
    /// means no agreement in time (the operation may still execute, at most once).
    pub async fn submit(&self, op: Vec<u8>) -> Result<Bytes, ClientError> {
        self.send(op, false).await
    }

    /// Submits the read-only `op` to every replica unordered (TOCS 2002, section 5.1.3) and
    /// returns its result once 2f+1 distinct replicas sent the same one; without such agreement
    /// in a retransmission interval it is ordered like [`Client::submit`]. Linearizable with
    /// concurrent writes (see [`crate::session`]).
    pub async fn submit_read(&self, op: Vec<u8>) -> Result<Bytes, ClientError> {
        self.send(op, true).await
    }

    async fn send(&self, op: Vec<u8>, read_only: bool) -> Result<Bytes, ClientError> {
        if op.len() > self.max_op_bytes {
            return Err(ClientError::Rejected(format!(
                "operation of {} bytes exceeds the limit of {} bytes",
                op.len(),
                self.max_op_bytes
            )));
        }
        let (done, result) = oneshot::channel();
        let wait = async {
            self.submits
                .send(Submit {
                    op,
                    read_only,
                    done,
                })
                .await
                .map_err(|_| closed())?;
            result.await.map_err(|_| closed())?
        };
        tokio::time::timeout(self.request_timeout, wait)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Asks every replica for its status and waits up to `timeout` for the reports. Returns one
    /// entry per replica, in id order; a replica that did not answer gets an error saying
    /// whether it was connected at all.
    pub async fn status_all(
        &self,
        timeout: Duration,
    ) -> Vec<(u32, Result<NodeStatus, StatusUnavailable>)> {
        let nonce = NEXT_NONCE.fetch_add(1, Ordering::Relaxed) ^ (wall_clock_millis() << 20);
        let (reports, mut received) = mpsc::unbounded_channel();
        let mut answers: HashMap<u32, NodeStatus> = HashMap::new();
        if self
            .control
            .send(Control::Status { nonce, reports })
            .is_ok()
        {
            let deadline = Instant::now() + timeout;
            while answers.len() < self.replicas.len() {
                match tokio::time::timeout_at(deadline, received.recv()).await {
                    Ok(Some((from, report))) => {
                        answers.entry(from).or_insert(report);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = self.control.send(Control::StatusDone(nonce));
        }
        let connected = self.transport.connected_replicas();
        let mut ids: Vec<u32> = self.replicas.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let entry = answers.remove(&id).ok_or(if connected.contains(&id) {
                    StatusUnavailable::NoReport(timeout)
                } else {
                    StatusUnavailable::Unreachable
                });
                (id, entry)
            })
            .collect()
    }

    /// The replicas whose connection is up, in increasing order.
    pub fn connected_replicas(&self) -> Vec<u32> {
        self.transport.connected_replicas()
    }

    /// Waits until at least `count` replicas are connected; fails with [`ClientError::Timeout`]
    /// if they are not within `timeout`.
    pub async fn wait_connected(&self, count: usize, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.transport.connected_replicas().len() >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The replicas this client talks to.
    pub fn replicas(&self) -> &[PeerInfo] {
        &self.replicas
    }

    /// The client's identity key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Stops the background task, failing requests still waiting, and closes the connections
    /// once no other clone holds them, so replicas see the client leave at once.
    pub async fn close(self) {
        let (done, stopped) = oneshot::channel();
        if self.control.send(Control::Close(done)).is_ok() {
            let _ = stopped.await;
        }
        let Client { transport, .. } = self;
        if let Ok(transport) = Arc::try_unwrap(transport) {
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.shutdown()).await;
        }
    }
}

fn closed() -> ClientError {
    ClientError::Closed
}

/// Random low bits of a session id, so that processes starting in the same millisecond differ.
fn session_bits() -> u32 {
    use rand::{Rng, SeedableRng};
    rand::rngs::StdRng::from_os_rng().random()
}

/// What an agreed outcome means to the caller.
fn result_of(outcome: Outcome) -> Result<Bytes, ClientError> {
    match outcome {
        Outcome::Done(result) => Ok(Bytes::from(result)),
        Outcome::Forgotten => Err(ClientError::ResultForgotten),
        Outcome::SessionExpired => Err(ClientError::SessionExpired),
        Outcome::SessionsFull => Err(ClientError::SessionsFull),
        Outcome::NotReadOnly => Err(ClientError::Rejected(
            "the replicas refused to answer the operation unordered".into(),
        )),
    }
}

/// Milliseconds since the Unix epoch: the start of a session id (see [`new_session_id`]).
fn wall_clock_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// The background task: owns the session, the replies channel and the waiting callers.
struct Driver {
    session: Session,
    /// The session's clock starts here.
    origin: Instant,
    transport: Arc<ClientTransport>,
    frames: mpsc::Receiver<(u32, Bytes)>,
    submits: mpsc::Receiver<Submit>,
    control: mpsc::UnboundedReceiver<Control>,
    waiting: HashMap<Timestamp, oneshot::Sender<Result<Bytes, ClientError>>>,
    status: HashMap<u64, mpsc::UnboundedSender<(ReplicaId, NodeStatus)>>,
    limits: Limits,
}

/// How often callers that gave up are looked for, so their requests stop holding room.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Most frames handled in one go before new submissions get a turn.
const FRAMES_PER_TURN: usize = 256;

impl Driver {
    async fn run(mut self) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.session.next_deadline().map(|at| self.origin + at);
            let has_room = self.session.has_room();
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Close(done)) => {
                        self.fail_all();
                        // Release the transport first, so the closer can shut it down.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    Some(control) => self.on_control(control),
                    // Every handle is gone.
                    None => return,
                },
                frame = self.frames.recv() => match frame {
                    Some((from, frame)) => {
                        self.on_frame(from, &frame);
                        for _ in 1..FRAMES_PER_TURN {
                            match self.frames.try_recv() {
                                Ok((from, frame)) => self.on_frame(from, &frame),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        self.fail_all();
                        return;
                    }
                },
                submit = self.submits.recv(), if has_room => match submit {
                    Some(submit) => self.admit(submit),
                    None => return,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = self.origin.elapsed();
                    for (target, frame) in self.session.poll_retransmits(now) {
                        self.send(target, frame);
                    }
                }
                _ = sweep.tick() => self.sweep(),
            }
            // Take every submission already waiting, so they share one envelope.
            while self.session.has_room() {
                match self.submits.try_recv() {
                    Ok(submit) => self.admit(submit),
                    Err(_) => break,
                }
            }
            let now = self.origin.elapsed();
            for (target, frame) in self.session.poll_envelopes(now) {
                self.send(target, frame);
            }
        }
    }

    fn admit(&mut self, submit: Submit) {
        if submit.done.is_closed() {
            return;
        }
        let timestamp = if submit.read_only {
            self.session.admit_read(submit.op)
        } else {
            self.session.admit(submit.op)
        };
        self.waiting.insert(timestamp, submit.done);
    }

    fn send(&self, target: Target, frame: Bytes) {
        match target {
            Target::Replica(id) => self.transport.send(id, frame),
            Target::All => self.transport.broadcast(frame),
        }
    }

    fn on_frame(&mut self, from: u32, frame: &[u8]) {
        match Message::decode(frame, &self.limits) {
            Ok(Message::Reply(reply)) => {
                for (timestamp, outcome) in self.session.on_reply(from, reply) {
                    if let Some(done) = self.waiting.remove(&timestamp) {
                        let _ = done.send(result_of(outcome));
                    }
                }
            }
            Ok(Message::StatusReport(report)) => {
                if report.replica != from {
                    tracing::debug!(from, "status report naming another replica ignored");
                    return;
                }
                self.session.observe_view(from, report.view);
                if let Some(reports) = self.status.get(&report.nonce) {
                    let _ = reports.send((from, report));
                }
            }
            Ok(other) => tracing::debug!(from, kind = other.kind(), "unexpected message ignored"),
            Err(e) => tracing::debug!(from, error = %e, "undecodable frame ignored"),
        }
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Status { nonce, reports } => {
                self.status.insert(nonce, reports);
                let frame = Bytes::from(Message::StatusQuery { nonce }.encode());
                self.transport.broadcast(frame);
            }
            Control::StatusDone(nonce) => {
                self.status.remove(&nonce);
            }
            Control::Close(_) => {}
        }
    }

    /// Forgets requests whose callers stopped waiting (timed out or dropped).
    fn sweep(&mut self) {
        let gone: Vec<Timestamp> = (self.waiting.iter())
            .filter(|(_, done)| done.is_closed())
            .map(|(timestamp, _)| *timestamp)
            .collect();
        for timestamp in gone {
            self.waiting.remove(&timestamp);
            self.session.abandon(timestamp);
        }
        self.status.retain(|_, reports| !reports.is_closed());
    }

    fn fail_all(&mut self) {
        for (_, done) in self.waiting.drain() {
            let _ = done.send(Err(closed()));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

//! `testnet attack`: a faulty client against a running testnet.
//!
//! Runs one of the named strategies of [`pbft_core::byzantine::clients`] (the ones the
//! simulator runs) over real QUIC connections: the strategy's own identity is the key of the
//! testnet's `client.toml`, a client the replicas admit; fresh identities get connections of
//! their own, which a testnet that lists its clients refuses at the handshake.
//!
//! Two more strategies attack the transport itself, which the simulator does not model:
//! `connection-flood` and `unfinished-frames` ([`Strategy`]). They use fresh identities, so they
//! get past the handshake only on a testnet started with `--open-clients`. One attacks the
//! replicas' metrics endpoint: `metrics-flood`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pbft_client::session::new_session_id;
use pbft_client::ClientSetup;
use pbft_core::byzantine::{ClientAttack, FaultyClient};
use pbft_core::messages::Limits;
use pbft_crypto::{KeyPair, PublicKey};
use pbft_net::raw::{RawConnection, RawDialer};
use pbft_net::{ClientTransport, PeerInfo};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::layout::{Layout, State};
use super::report::fresh_client_setup;
use super::LaunchError;

/// Connections kept open at once for fresh identities; older ones are closed.
const MAX_OPEN_IDENTITIES: usize = 64;
/// Fresh identities a transport attack dials from.
const RAW_IDENTITIES: usize = 16;
/// Connections a transport attack keeps open at once; older ones are closed.
const MAX_RAW_CONNECTIONS: usize = 4096;
/// Bytes of each announced frame that `unfinished-frames` sends before it stops.
const UNFINISHED_SENT: usize = 1 << 20;
/// How long `unfinished-frames` tries to write those bytes; a replica that reads no more
/// leaves the connection stalled, which is the point.
const UNFINISHED_WRITE_TIME: Duration = Duration::from_secs(1);

/// Connections `metrics-flood` opens in all.
pub const METRICS_FLOOD_CONNECTIONS: u64 = 20_000;
/// Connections `metrics-flood` starts per tick.
const METRICS_FLOOD_PER_TICK: u64 = 1_000;
/// Open files `metrics-flood` keeps for itself (standard streams, the runtime, the state file).
const METRICS_FLOOD_OWN_FILES: u64 = 128;
/// How long one connection attempt of `metrics-flood` may take.
const METRICS_FLOOD_CONNECT_TIME: Duration = Duration::from_secs(10);

/// What `testnet attack` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// A faulty client's strategy, as the simulator runs it.
    Client(ClientAttack),
    /// Every tick, one new connection from each of 16 fresh identities to every replica, held
    /// open without a frame, up to 4,096 at once: bounded by the connection limits, where
    /// silent clients make way; replicas keep their reserved room.
    ConnectionFlood,
    /// Every tick, one new connection per replica from one of 16 fresh identities, announcing
    /// a frame of the largest length a client may send and sending 1 MiB of it, then nothing:
    /// bounded by the assembly room, the frame deadline and the client receive window; small
    /// requests do not wait for it.
    UnfinishedFrames,
    /// 20,000 TCP connections in all to replica 0's metrics endpoint, 1,000 more every tick,
    /// each held open without a byte sent until the replica closes it or the attack ends:
    /// bounded by the endpoint's connection cap and timeouts. Runs until all were tried and
    /// the duration is over. It holds as many at once as its open files limit allows (raised
    /// to the hard limit, less 128 for itself); further ones wait for one to close.
    MetricsFlood,
}

impl Strategy {
    /// The transport attacks' names; every [`ClientAttack`] name is a strategy too.
    pub const TRANSPORT: [(&'static str, Strategy); 3] = [
        ("connection-flood", Strategy::ConnectionFlood),
        ("unfinished-frames", Strategy::UnfinishedFrames),
        ("metrics-flood", Strategy::MetricsFlood),
    ];

    /// The kebab-case name, which [`FromStr`] parses back.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Client(attack) => attack.name(),
            Strategy::ConnectionFlood => "connection-flood",
            Strategy::UnfinishedFrames => "unfinished-frames",
            Strategy::MetricsFlood => "metrics-flood",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Strategy, String> {
        if let Some((_, strategy)) = Strategy::TRANSPORT.iter().find(|(name, _)| *name == text) {
            return Ok(*strategy);
        }
        ClientAttack::from_str(text)
            .map(Strategy::Client)
            .map_err(|_| {
                let names: Vec<&str> = ClientAttack::ALL
                    .iter()
                    .map(|a| a.name())
                    .chain(Strategy::TRANSPORT.iter().map(|(name, _)| *name))
                    .collect();
                format!("unknown attack {text:?}; known: {}", names.join(", "))
            })
    }
}

/// How an attack is run.
#[derive(Clone, Debug)]
pub struct AttackOptions {
    /// The strategy.
    pub attack: Strategy,
    /// How long to keep attacking.
    pub duration: Duration,
    /// How often the strategy acts.
    pub interval: Duration,
}

/// What an attack sent, printed as one JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AttackReport {
    /// The strategy's name.
    pub attack: String,
    /// How many times the strategy acted.
    pub ticks: u64,
    /// Messages handed to the transport, each to every replica.
    pub messages: u64,
    /// Distinct client keys used.
    pub identities: u64,
    /// Frames the transports dropped (queues full, connections refused or closed).
    pub dropped: u64,
    /// Handshakes that failed, as when replicas refuse a key they do not admit.
    pub handshake_failures: u64,
    /// Connections a transport attack got past the hello.
    pub connections_opened: u64,
    /// Connections a transport attack could not open (refused, timed out, or closed before
    /// the hello was answered).
    pub connections_failed: u64,
    /// Connections `metrics-flood` opened that the replica closed before the attack ended.
    pub connections_closed: u64,
}

impl AttackReport {
    fn count(&mut self, transport: &ClientTransport) {
        let stats = transport.stats();
        self.dropped += stats.dropped_queue_full
            + stats.dropped_not_connected
            + stats.lost_on_disconnect
            + stats.rejected_oversized_out;
        self.handshake_failures += stats.handshake_failures;
    }
}

/// Runs `options.attack` against the testnet in `layout` and reports what it sent.
pub async fn attack(layout: &Layout, options: AttackOptions) -> Result<AttackReport, LaunchError> {
    let state = State::load(layout)?;
    if options.attack == Strategy::MetricsFlood {
        let target = state.node(0)?.metrics.ok_or_else(|| {
            LaunchError::Usage("replica 0 serves no metrics: nothing to flood".into())
        })?;
        return metrics_flood(target, options).await;
    }
    let setup = fresh_client_setup(layout, &state)?;
    match options.attack {
        Strategy::Client(attack) => client_attack(setup, attack, options).await,
        transport => transport_attack(setup, transport, options).await,
    }
}

async fn client_attack(
    setup: ClientSetup,
    attack: ClientAttack,
    options: AttackOptions,
) -> Result<AttackReport, LaunchError> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let session = new_session_id(millis, rng.random());
    let committee = setup
        .committee()
        .map_err(|e| LaunchError::Failure(e.to_string()))?;
    let signer = committee.signer(setup.key.clone());
    let mut client = FaultyClient::new(attack, signer, session, Limits::default());
    let mut transports: HashMap<PublicKey, ClientTransport> = HashMap::new();
    let mut opened: VecDeque<PublicKey> = VecDeque::new();
    let mut report = AttackReport {
        attack: attack.name().to_string(),
        ..AttackReport::default()
    };
    let own = setup.key.public();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    while start.elapsed() < options.duration {
        ticker.tick().await;
        report.ticks += 1;
        for sent in client.tick(&mut rng) {
            let key = sent.from.public();
            if let Entry::Vacant(slot) = transports.entry(key) {
                let (transport, mut replies) = ClientTransport::connect(
                    &sent.from,
                    setup.replicas.clone(),
                    setup.transport.clone(),
                )
                .await
                .map_err(|e| LaunchError::Failure(format!("cannot start a connection: {e}")))?;
                // Replies are read and dropped, so that replicas never wait on this client.
                tokio::spawn(async move { while replies.recv().await.is_some() {} });
                slot.insert(transport);
                report.identities += 1;
                if key != own {
                    opened.push_back(key);
                }
            }
            if opened.len() > MAX_OPEN_IDENTITIES {
                let oldest = opened.pop_front().expect("longer than the cap");
                if let Some(transport) = transports.remove(&oldest) {
                    report.count(&transport);
                    transport.shutdown().await;
                }
            }
            transports[&key].broadcast(Bytes::from(sent.message.encode()));
            report.messages += 1;
        }
    }
    // Let the queued frames leave before closing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, transport) in transports {
        report.count(&transport);
        transport.shutdown().await;
    }
    Ok(report)
}

/// Runs `connection-flood` or `unfinished-frames` (see [`Strategy`]).
async fn transport_attack(
    setup: ClientSetup,
    strategy: Strategy,
    options: AttackOptions,
) -> Result<AttackReport, LaunchError> {
    let ipv6 = setup.replicas.first().is_some_and(|r| r.addr.is_ipv6());
    let dialers = (0..RAW_IDENTITIES)
        .map(|_| RawDialer::new(&KeyPair::generate(), ipv6, setup.transport.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LaunchError::Failure(format!("cannot start a connection: {e}")))?;
    // The longest frame replicas take from a client: one envelope of a full batch.
    let announced = Limits::default().max_client_message_bytes() as u32;
    let mut report = AttackReport {
        attack: strategy.name().to_string(),
        identities: dialers.len() as u64,
        ..AttackReport::default()
    };
    let mut open: VecDeque<RawConnection> = VecDeque::new();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    while start.elapsed() < options.duration {
        ticker.tick().await;
        let tick = report.ticks as usize;
        report.ticks += 1;
        let mut attempts = tokio::task::JoinSet::new();
        for replica in &setup.replicas {
            let senders: Vec<Arc<RawDialer>> = match strategy {
                Strategy::UnfinishedFrames => vec![dialers[tick % dialers.len()].clone()],
                _ => dialers.clone(),
            };
            for dialer in senders {
                let replica: PeerInfo = replica.clone();
                attempts.spawn(async move {
                    let mut conn = dialer.open(&replica).await.ok()?;
                    if strategy == Strategy::UnfinishedFrames {
                        let mut begun = announced.to_be_bytes().to_vec();
                        begun.resize(4 + UNFINISHED_SENT, 0);
                        // Whatever did not fit stays unsent: the frame never finishes.
                        let _ =
                            tokio::time::timeout(UNFINISHED_WRITE_TIME, conn.write(&begun)).await;
                    }
                    Some(conn)
                });
            }
        }
        while let Some(attempt) = attempts.join_next().await {
            match attempt.ok().flatten() {
                Some(conn) => {
                    report.connections_opened += 1;
                    if strategy == Strategy::UnfinishedFrames {
                        report.messages += 1;
                    }
                    open.push_back(conn);
                }
                None => report.connections_failed += 1,
            }
        }
        open.retain(|conn| !conn.is_closed());
        while open.len() > MAX_RAW_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.close();
            }
        }
    }
    for conn in open {
        conn.close();
    }
    Ok(report)
}

/// Raises this process's soft open files limit to the hard limit, and returns it.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Runs `metrics-flood` (see [`Strategy::MetricsFlood`]) against the endpoint at `target`.
async fn metrics_flood(
    target: SocketAddr,
    options: AttackOptions,
) -> Result<AttackReport, LaunchError> {
    let limit = raise_open_files_limit();
    let at_once = limit
        .saturating_sub(METRICS_FLOOD_OWN_FILES)
        .clamp(1, METRICS_FLOOD_CONNECTIONS);
    let files = Arc::new(tokio::sync::Semaphore::new(at_once as usize));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut report = AttackReport {
        attack: Strategy::MetricsFlood.name().to_string(),
        ..AttackReport::default()
    };
    let mut held = tokio::task::JoinSet::new();
    let mut started = 0;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    while start.elapsed() < options.duration || started < METRICS_FLOOD_CONNECTIONS {
        ticker.tick().await;
        report.ticks += 1;
        let batch = METRICS_FLOOD_PER_TICK.min(METRICS_FLOOD_CONNECTIONS - started);
        for _ in 0..batch {
            let Ok(file) = files.clone().acquire_owned().await else {
                break;
            };
            let (opened, failed, closed) = (opened.clone(), failed.clone(), closed.clone());
            held.spawn(async move {
                let _file = file;
                let connecting = tokio::net::TcpStream::connect(target);
                let stream =
                    match tokio::time::timeout(METRICS_FLOOD_CONNECT_TIME, connecting).await {
                        Ok(Ok(stream)) => stream,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                opened.fetch_add(1, Ordering::Relaxed);
                // Silent: wait for the replica to close it; the attack's end drops it.
                let mut byte = [0u8; 1];
                while stream.readable().await.is_ok() {
                    match stream.try_read(&mut byte) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        _ => break,
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
            });
        }
        started += batch;
        // Forget finished tasks, so that the set does not grow with them.
        while held.try_join_next().is_some() {}
    }
    // Every attempt ends within the connect time; the connections still open are then dropped.
    let settling = Instant::now();
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < started
        && settling.elapsed() < METRICS_FLOOD_CONNECT_TIME
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.shutdown().await;
    report.connections_opened = opened.load(Ordering::Relaxed);
    report.connections_failed = failed.load(Ordering::Relaxed);
    report.connections_closed = closed.load(Ordering::Relaxed);
    Ok(report)
}

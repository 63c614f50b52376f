//! The replica side: a listening endpoint, links to every other replica, and client
//! connections.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use pbft_core::messages::SessionId;
use pbft_crypto::{KeyPair, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::admission::{Admission, Bans, Full, Slot};
use crate::frame::{
    frame_queue, Assembly, ByteBudget, FrameQueue, FrameReader, ACK, CLOSE_BANNED, CLOSE_EVICTED,
    CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_SHUTDOWN, HELLO,
};
use crate::link::{pump, read_frames, Link, PumpEnd};
use crate::stats::{bump, Counters};
use crate::tls::{self, public_key_of, Identity};
use crate::{
    endpoint, validate_cluster, ClientPolicy, Incoming, NetError, Peer, PeerInfo, TlsSetupError,
    TransportConfig, TransportStats,
};

/// A replica's transport: sends to other replicas and to connected clients, and receives from
/// both through the [`Inbox`] returned by [`ReplicaTransport::bind`].
///
/// Dropping it closes every connection.
pub struct ReplicaTransport {
    id: u32,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// The frames a replica received, from replicas and from clients.
///
/// Each kind of sender has its own buffer of [`TransportConfig::incoming_capacity`] frames and
/// [`TransportConfig::incoming_bytes`] bytes, and [`Inbox::recv`] alternates between the two
/// when both have frames waiting, so neither flooding clients nor faulty replicas can hold back
/// the other kind. When a buffer is full, the connections feeding it stop being read until
/// there is room.
pub struct Inbox {
    replicas: mpsc::Receiver<Incoming>,
    clients: mpsc::Receiver<Incoming>,
    replica_bytes: ByteBudget,
    client_bytes: ByteBudget,
    clients_first: bool,
}

impl Inbox {
    /// The next frame, or `None` once the transport and all its connections are gone.
    /// Cancel-safe: a frame is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.clients_first = !self.clients_first;
        let (first, second) = if self.clients_first {
            (&mut self.clients, &mut self.replicas)
        } else {
            (&mut self.replicas, &mut self.clients)
        };
        let incoming = tokio::select! {
            biased;
            Some(incoming) = first.recv() => incoming,
            Some(incoming) = second.recv() => incoming,
            else => return None,
        };
        Some(self.taken(incoming))
    }

    /// A frame if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.clients_first = !self.clients_first;
        let (first, second) = if self.clients_first {
            (&mut self.clients, &mut self.replicas)
        } else {
            (&mut self.replicas, &mut self.clients)
        };
        let incoming = first.try_recv().or_else(|_| second.try_recv()).ok()?;
        Some(self.taken(incoming))
    }

    /// Returns the bytes `incoming` held in its sender kind's budget.
    fn taken(&self, incoming: Incoming) -> Incoming {
        let budget = match incoming.from {
            Peer::Replica(_) => &self.replica_bytes,
            Peer::Client(_) => &self.client_bytes,
        };
        budget.give_back(incoming.frame.len());
        incoming
    }
}

/// State shared with the connection tasks.
struct Shared {
    cfg: Arc<TransportConfig>,
    counters: Arc<Counters>,
    /// Replica ids by key: an accepted connection presenting one of these keys is that replica.
    replicas: HashMap<PublicKey, u32>,
    /// Outgoing links to the other replicas.
    links: HashMap<u32, Link>,
    /// Frames from replicas and from clients, kept apart so neither can crowd out the other.
    from_replicas: mpsc::Sender<Incoming>,
    from_clients: mpsc::Sender<Incoming>,
    replica_bytes: ByteBudget,
    client_bytes: ByteBudget,
    /// Room and deadline for frames clients are sending.
    assembly: Assembly,
    /// The server settings for connections from elsewhere than a replica's listed address.
    client_server: Arc<quinn::ServerConfig>,
    accepted: Mutex<Accepted>,
    admission: Arc<Admission>,
    bans: Arc<Bans>,
    /// Client activity is timed from here.
    started: Instant,
}

/// The accepted connections: one per replica (a newer one replaces the older), and up to
/// `max_connections_per_client` per client key, oldest first (processes sharing a key each
/// have one).
#[derive(Default)]
struct Accepted {
    replicas: HashMap<u32, Connection>,
    clients: HashMap<PublicKey, Vec<ClientLink>>,
}

/// The sending side of an accepted client connection.
struct ClientLink {
    conn: Connection,
    queue: FrameQueue,
    /// When the client last sent a frame, in milliseconds since the transport started.
    last_active: Arc<AtomicU64>,
    /// The sessions whose last request came on this connection, oldest first.
    sessions: VecDeque<SessionId>,
}

/// Sessions remembered per client connection; replies to a session forgotten here go to every
/// connection of its key, as to a session never seen.
const MAX_SESSIONS_PER_CONNECTION: usize = 16;

impl ReplicaTransport {
    /// Listens on `listen` as replica `id` with identity `key`, and starts dialing the other
    /// replicas in `cluster` (which must list `id` with `key`'s public key). Received frames
    /// arrive in the returned [`Inbox`]; read it promptly, as a full inbox stops reading.
    ///
    /// The other replicas' addresses must be of `listen`'s address family. Must be called
    /// within a tokio runtime. Fails with [`NetError::AddressInUse`] when the port is taken.
    pub async fn bind(
        id: u32,
        key: &KeyPair,
        listen: SocketAddr,
        cluster: Vec<PeerInfo>,
        clients: ClientPolicy,
        cfg: TransportConfig,
    ) -> Result<(Self, Inbox), NetError> {
        cfg.validate()?;
        validate_cluster(&cluster)?;
        let me = cluster
            .iter()
            .find(|peer| peer.id == id)
            .ok_or_else(|| NetError::Cluster(format!("replica {id} is not in the cluster")))?;
        if me.public_key != key.public() {
            return Err(NetError::Cluster(format!(
                "the key {} is not the one listed for replica {id}",
                key.public()
            )));
        }
        let identity = Identity::new(key)?;
        let tls_error = TlsSetupError::Quic;

        let counters = Arc::new(Counters::default());
        let bans = Arc::new(Bans::default());
        let admitted = tls::AdmittedPeer::new(
            cluster.iter().map(|peer| peer.public_key).collect(),
            clients,
            bans.clone(),
            counters.clone(),
        );
        let server_crypto = QuicServerConfig::try_from(tls::server_config(&identity, admitted)?)
            .map_err(tls_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::new(cfg.quic(1)?));
        // Connections from elsewhere than a replica's address get small receive windows.
        let mut client_server = server.clone();
        let window = quinn::VarInt::from_u32(cfg.client_receive_window);
        let mut client_quic = cfg.quic(1)?;
        client_quic
            .stream_receive_window(window)
            .receive_window(window);
        client_server.transport_config(Arc::new(client_quic));
        let endpoint = endpoint(key, Some(server), listen, cfg.share_port)?;

        let cfg = Arc::new(cfg);
        let dial_transport = Arc::new(cfg.quic(0)?);
        let mut links = HashMap::new();
        for peer in cluster.iter().filter(|peer| peer.id != id) {
            let crypto =
                QuicClientConfig::try_from(tls::client_config(&identity, peer.public_key)?)
                    .map_err(tls_error)?;
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            client.transport_config(dial_transport.clone());
            let link = Link::spawn(
                endpoint.clone(),
                client,
                peer.addr,
                peer.id,
                cfg.clone(),
                counters.clone(),
                None,
            );
            links.insert(peer.id, link);
        }

        let (from_replicas, replica_frames) = mpsc::channel(cfg.incoming_capacity);
        let (from_clients, client_frames) = mpsc::channel(cfg.incoming_capacity);
        let replica_bytes = ByteBudget::new(cfg.incoming_bytes);
        let client_bytes = ByteBudget::new(cfg.incoming_bytes);
        let admission = Arc::new(Admission::new(
            &cfg,
            cluster
                .iter()
                .filter(|peer| peer.id != id)
                .map(|peer| peer.addr)
                .collect(),
        ));
        let assembly = Assembly {
            room: ByteBudget::new(cfg.client_assembly_bytes),
            deadline: cfg.client_frame_timeout,
        };
        let shared = Arc::new(Shared {
            cfg,
            counters,
            replicas: cluster
                .iter()
                .map(|peer| (peer.public_key, peer.id))
                .collect(),
            links,
            from_replicas,
            from_clients,
            replica_bytes: replica_bytes.clone(),
            client_bytes: client_bytes.clone(),
            assembly,
            client_server: Arc::new(client_server),
            accepted: Mutex::new(Accepted::default()),
            admission,
            bans,
            started: Instant::now(),
        });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        info!(replica = id, addr = ?endpoint.local_addr().ok(), "replica transport listening");
        let transport = ReplicaTransport {
            id,
            endpoint,
            shared,
            accept_task,
        };
        let inbox = Inbox {
            replicas: replica_frames,
            clients: client_frames,
            replica_bytes,
            client_bytes,
            clients_first: false,
        };
        Ok((transport, inbox))
    }

    /// This replica's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The address the endpoint is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Queues `frame` for replica `id` without waiting. The frame is dropped (and counted) when
    /// the queue is full, when it exceeds the maximum frame size, or when `id` is this replica
    /// or not in the cluster. While the replica is unreachable, frames wait in the queue.
    pub fn send_to_replica(&self, id: u32, frame: Bytes) {
        match self.shared.links.get(&id) {
            Some(link) => {
                link.queue.push(frame, &self.shared.counters);
            }
            None => bump(&self.shared.counters.dropped_not_connected, 1),
        }
    }

    /// Queues `frame` for every other replica, as [`ReplicaTransport::send_to_replica`] does.
    pub fn broadcast(&self, frame: Bytes) {
        for link in self.shared.links.values() {
            link.queue.push(frame.clone(), &self.shared.counters);
        }
    }

    /// Remembers that `session` of `client` last sent on `connection`, where its replies then
    /// go. Call it only for requests signed with the key the connection proved.
    pub fn note_session(&self, client: &PublicKey, session: SessionId, connection: usize) {
        let mut accepted = self.shared.accepted.lock().expect("accepted table lock");
        let Some(links) = accepted.clients.get_mut(client) else {
            return;
        };
        if !links.iter().any(|link| link.conn.stable_id() == connection) {
            return;
        }
        for link in links.iter_mut() {
            if link.conn.stable_id() == connection {
                if link.sessions.back() != Some(&session) {
                    link.sessions.retain(|known| *known != session);
                    link.sessions.push_back(session);
                    if link.sessions.len() > MAX_SESSIONS_PER_CONNECTION {
                        link.sessions.pop_front();
                    }
                }
            } else {
                link.sessions.retain(|known| *known != session);
            }
        }
    }

    /// Queues a reply to `session` of `client` on the connection that session last sent from
    /// ([`ReplicaTransport::note_session`]), or on every connection of the key while that is
    /// unknown (each process sharing the key picks out what is its own). Dropped and counted
    /// when the client is not connected or the queue is full: clients retransmit.
    pub fn send_to_session(&self, client: &PublicKey, session: SessionId, frame: Bytes) {
        let accepted = self.shared.accepted.lock().expect("accepted table lock");
        let Some(links) = accepted.clients.get(client) else {
            bump(&self.shared.counters.dropped_not_connected, 1);
            return;
        };
        match links.iter().find(|link| link.sessions.contains(&session)) {
            Some(link) => {
                link.queue.push(frame, &self.shared.counters);
            }
            None => {
                for link in links {
                    link.queue.push(frame.clone(), &self.shared.counters);
                }
            }
        }
    }

    /// Queues `frame` on `connection` of `client` only: an answer to what came on it. Dropped
    /// and counted when that connection is gone or its queue is full.
    pub fn send_to_connection(&self, client: &PublicKey, connection: usize, frame: Bytes) {
        let accepted = self.shared.accepted.lock().expect("accepted table lock");
        let link = accepted.clients.get(client).and_then(|links| {
            links
                .iter()
                .find(|link| link.conn.stable_id() == connection)
        });
        match link {
            Some(link) => {
                link.queue.push(frame, &self.shared.counters);
            }
            None => bump(&self.shared.counters.dropped_not_connected, 1),
        }
    }

    /// The replicas this replica can currently send to (its dialed link to them is up), in
    /// increasing order.
    pub fn connected_replicas(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (self.shared.links.iter())
            .filter(|(_, link)| link.is_connected())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Closes `connection` of the client holding `client`, which sent on it what no correct
    /// client sends, and refuses new handshakes with that key for
    /// [`TransportConfig::client_ban`]. Other connections of the key (processes sharing it that
    /// behaved) stay. Replicas' keys are never refused.
    pub fn ban_client(&self, client: &PublicKey, connection: usize) {
        if self.shared.replicas.contains_key(client) {
            return;
        }
        self.shared
            .bans
            .ban(*client, Instant::now() + self.shared.cfg.client_ban);
        bump(&self.shared.counters.clients_banned, 1);
        let offending = {
            let mut accepted = self.shared.accepted.lock().expect("accepted table lock");
            let Some(links) = accepted.clients.get_mut(client) else {
                return;
            };
            let position = links
                .iter()
                .position(|link| link.conn.stable_id() == connection);
            let offending = position.map(|i| links.remove(i));
            if links.is_empty() {
                accepted.clients.remove(client);
            }
            offending
        };
        if let Some(link) = offending {
            link.conn
                .close(CLOSE_BANNED, b"invalid input; refused for a while");
        }
    }

    /// The clients with a live accepted connection.
    pub fn connected_clients(&self) -> Vec<PublicKey> {
        let accepted = self.shared.accepted.lock().expect("accepted table lock");
        accepted.clients.keys().copied().collect()
    }

    /// The counters since [`ReplicaTransport::bind`].
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Closes every connection and waits until the peers were told, so the port can be bound
    /// again right away.
    pub async fn shutdown(self) {
        self.close();
        self.endpoint.wait_idle().await;
    }

    fn close(&self) {
        self.accept_task.abort();
        for link in self.shared.links.values() {
            link.stop();
        }
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
    }
}

impl Drop for ReplicaTransport {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let admission = &shared.admission;
        // An unvalidated Incoming may always be retried (quinn guarantees it).
        if admission.needs_retry(&remote, incoming.remote_address_validated()) {
            bump(&shared.counters.retries_sent, 1);
            if incoming.retry().is_err() {
                debug!(%remote, "could not ask for a retry");
            }
            continue;
        }
        let slot = match admission.admit(remote, false) {
            Ok(slot) => Some(slot),
            Err(Full::Replica) => None,
            Err(Full::Total) => shared
                .evict_silent_client(None)
                .then(|| admission.admit(remote, true).ok())
                .flatten(),
            Err(Full::Address(ip)) => shared
                .evict_silent_client(Some(ip))
                .then(|| admission.admit(remote, true).ok())
                .flatten(),
        };
        let Some(slot) = slot else {
            bump(&shared.counters.connections_refused, 1);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move { serve(incoming, slot, &shared).await });
    }
}

impl Shared {
    fn millis_since_start(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Closes the client connection (from `ip`, if given) that has been silent longest, if it
    /// has been silent for at least `client_idle_eviction`. Returns whether one was closed.
    fn evict_silent_client(&self, ip: Option<IpAddr>) -> bool {
        let now = self.millis_since_start();
        let quiet_enough = self.cfg.client_idle_eviction.as_millis() as u64;
        let mut accepted = self.accepted.lock().expect("accepted table lock");
        let oldest = accepted
            .clients
            .iter()
            .flat_map(|(key, links)| links.iter().map(move |link| (key, link)))
            .filter(|(_, link)| ip.is_none_or(|ip| link.conn.remote_address().ip() == ip))
            .map(|(key, link)| {
                (
                    link.last_active.load(Ordering::Relaxed),
                    *key,
                    link.conn.stable_id(),
                )
            })
            .filter(|(last, _, _)| now.saturating_sub(*last) >= quiet_enough)
            .min();
        let Some((_, key, stable_id)) = oldest else {
            return false;
        };
        let links = accepted
            .clients
            .get_mut(&key)
            .expect("the key was just found");
        let position = links
            .iter()
            .position(|link| link.conn.stable_id() == stable_id)
            .expect("the link was just found");
        let link = links.remove(position);
        if links.is_empty() {
            accepted.clients.remove(&key);
        }
        drop(accepted);
        link.conn.close(CLOSE_EVICTED, b"silent while others wait");
        bump(&self.counters.clients_evicted, 1);
        true
    }
}

#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Read(#[from] quinn::ReadExactError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error("no usable client certificate")]
    NoCertificate,
    #[error("bad hello")]
    BadHello,
    #[error("timed out")]
    TimedOut,
}

/// Completes the handshake, identifies the peer by its key, and answers its hello.
async fn accept(
    incoming: quinn::Incoming,
    shared: &Shared,
) -> Result<(Connection, Peer, SendStream, RecvStream), AcceptError> {
    let handshake = async {
        // Resolves only once the client's certificate and Finished were verified.
        let connecting = if shared
            .admission
            .is_replica_address(&incoming.remote_address())
        {
            incoming.accept()?
        } else {
            incoming.accept_with(shared.client_server.clone())?
        };
        let conn = connecting.await?;
        let key = peer_key(&conn).ok_or(AcceptError::NoCertificate)?;
        let peer = match shared.replicas.get(&key) {
            Some(id) => Peer::Replica(*id),
            None => Peer::Client(key),
        };
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut hello = [0u8; HELLO.len()];
        recv.read_exact(&mut hello).await?;
        if hello != HELLO {
            conn.close(CLOSE_PROTOCOL, b"bad hello");
            return Err(AcceptError::BadHello);
        }
        send.write_all(&ACK).await?;
        Ok((conn, peer, send, recv))
    };
    tokio::time::timeout(shared.cfg.handshake_timeout, handshake)
        .await
        .map_err(|_| AcceptError::TimedOut)?
}

/// The key in the peer's verified certificate.
fn peer_key(conn: &Connection) -> Option<PublicKey> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    public_key_of(chain.first()?).ok()
}

/// Runs one accepted connection until it ends; its admission `slot` is held until then.
async fn serve(incoming: quinn::Incoming, mut slot: Slot, shared: &Shared) {
    let remote = incoming.remote_address();
    let (conn, peer, mut send, recv) = match accept(incoming, shared).await {
        Ok(accepted) => accepted,
        Err(e) => {
            bump(&shared.counters.handshake_failures, 1);
            debug!(%remote, error = %e, "incoming connection refused");
            return;
        }
    };
    slot.established();
    debug!(%remote, ?peer, "incoming connection");
    let counters = &shared.counters;
    match peer {
        Peer::Replica(id) => {
            let replaced = {
                let mut accepted = shared.accepted.lock().expect("accepted table lock");
                accepted.replicas.insert(id, conn.clone())
            };
            if let Some(old) = replaced {
                old.close(CLOSE_REPLACED, b"replaced by a newer connection");
            }
            // Replicas receive only on accepted connections: nothing is sent back.
            let _ = send.finish();
            let out = &shared.from_replicas;
            let budget = Some(&shared.replica_bytes);
            let connection = conn.stable_id();
            let wrap = |frame| Incoming {
                from: peer,
                frame,
                connection,
            };
            let reader = FrameReader::new(recv, shared.cfg.max_frame(), None);
            read_frames(&conn, reader, counters, out, budget, wrap).await;
            let mut accepted = shared.accepted.lock().expect("accepted table lock");
            if accepted.replicas.get(&id).map(Connection::stable_id) == Some(conn.stable_id()) {
                accepted.replicas.remove(&id);
            }
        }
        Peer::Client(key) => {
            let (queue, mut queued) = frame_queue(&shared.cfg, shared.cfg.client_queue_bytes);
            let last_active = Arc::new(AtomicU64::new(shared.millis_since_start()));
            let evicted = {
                let mut accepted = shared.accepted.lock().expect("accepted table lock");
                let links = accepted.clients.entry(key).or_default();
                links.push(ClientLink {
                    conn: conn.clone(),
                    queue,
                    last_active: last_active.clone(),
                    sessions: VecDeque::new(),
                });
                let over = links
                    .len()
                    .saturating_sub(shared.cfg.max_connections_per_client);
                links.drain(..over).collect::<Vec<_>>()
            };
            for old in evicted {
                old.conn
                    .close(CLOSE_REPLACED, b"replaced by a newer connection");
            }
            let out = &shared.from_clients;
            let budget = Some(&shared.client_bytes);
            let max_frame = shared.cfg.max_client_frame().min(shared.cfg.max_frame());
            let reader = FrameReader::new(recv, max_frame, Some(shared.assembly.clone()));
            let wrap = |frame| {
                last_active.store(shared.millis_since_start(), Ordering::Relaxed);
                Incoming {
                    from: peer,
                    frame,
                    connection: conn.stable_id(),
                }
            };
            tokio::select! {
                () = read_frames(&conn, reader, counters, out, budget, wrap) => {}
                end = pump(&conn, send, &mut queued, counters) => {
                    if let PumpEnd::Lost(reason) = end {
                        debug!(%remote, %reason, "client connection lost");
                    }
                }
            }
            let mut accepted = shared.accepted.lock().expect("accepted table lock");
            if let Some(links) = accepted.clients.get_mut(&key) {
                links.retain(|link| link.conn.stable_id() != conn.stable_id());
                if links.is_empty() {
                    accepted.clients.remove(&key);
                }
            }
        }
    }
    conn.close(CLOSE_SHUTDOWN, b"done");
}

//! The replica side: a listening endpoint, links to every other replica, and client
//! connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pbft_crypto::{KeyPair, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::frame::{enqueue, ACK, CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_SHUTDOWN, HELLO};
use crate::link::{pump, read_frames, Link, PumpEnd};
use crate::stats::{bump, Counters};
use crate::tls::{self, public_key_of, Identity};
use crate::{
    endpoint, validate_cluster, ClientPolicy, Incoming, NetError, Peer, PeerInfo, TransportConfig,
    TransportStats,
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
/// Each kind of sender has its own buffer of [`TransportConfig::incoming_capacity`] frames, and
/// [`Inbox::recv`] alternates between the two when both have frames waiting, so neither
/// flooding clients nor faulty replicas can hold back the other kind. When a buffer is full, the
/// connections feeding it stop being read until there is room.
pub struct Inbox {
    replicas: mpsc::Receiver<Incoming>,
    clients: mpsc::Receiver<Incoming>,
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
        tokio::select! {
            biased;
            Some(incoming) = first.recv() => Some(incoming),
            Some(incoming) = second.recv() => Some(incoming),
            else => None,
        }
    }

    /// A frame if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.clients_first = !self.clients_first;
        let (first, second) = if self.clients_first {
            (&mut self.clients, &mut self.replicas)
        } else {
            (&mut self.replicas, &mut self.clients)
        };
        first.try_recv().or_else(|_| second.try_recv()).ok()
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
    accepted: Mutex<Accepted>,
    /// Accepted connections alive, handshakes included.
    open: AtomicUsize,
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
    queue: mpsc::Sender<Bytes>,
}

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
            .ok_or_else(|| NetError::Config(format!("replica {id} is not in the cluster")))?;
        if me.public_key != key.public() {
            return Err(NetError::Config(format!(
                "the key {} is not the one listed for replica {id}",
                key.public()
            )));
        }
        let identity = Identity::new(key)?;
        let tls_error =
            |e: quinn::crypto::rustls::NoInitialCipherSuite| NetError::Tls(e.to_string());

        let counters = Arc::new(Counters::default());
        let admitted = tls::AdmittedPeer::new(
            cluster.iter().map(|peer| peer.public_key).collect(),
            clients,
            counters.clone(),
        );
        let server_crypto = QuicServerConfig::try_from(tls::server_config(&identity, admitted)?)
            .map_err(tls_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::new(cfg.quic(1)?));
        let endpoint = endpoint(key, Some(server), listen)?;

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
            accepted: Mutex::new(Accepted::default()),
            open: AtomicUsize::new(0),
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
                enqueue(
                    &link.queue,
                    frame,
                    self.shared.cfg.max_frame,
                    &self.shared.counters,
                );
            }
            None => bump(&self.shared.counters.dropped_not_connected, 1),
        }
    }

    /// Queues `frame` for every other replica, as [`ReplicaTransport::send_to_replica`] does.
    pub fn broadcast(&self, frame: Bytes) {
        for link in self.shared.links.values() {
            enqueue(
                &link.queue,
                frame.clone(),
                self.shared.cfg.max_frame,
                &self.shared.counters,
            );
        }
    }

    /// Queues `frame` for the client holding `client`, on every connection it dialed (each
    /// process sharing the key picks out what is its own). Dropped and counted when that
    /// client is not connected or a queue is full: clients retransmit their requests.
    pub fn send_to_client(&self, client: &PublicKey, frame: Bytes) {
        let accepted = self.shared.accepted.lock().expect("accepted table lock");
        match accepted.clients.get(client) {
            Some(links) => {
                for link in links {
                    enqueue(
                        &link.queue,
                        frame.clone(),
                        self.shared.cfg.max_frame,
                        &self.shared.counters,
                    );
                }
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
        if shared.open.load(Ordering::Relaxed) >= shared.cfg.max_connections {
            bump(&shared.counters.connections_refused, 1);
            incoming.refuse();
            continue;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(incoming, &shared).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
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
        let conn = incoming.accept()?.await?;
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

/// Runs one accepted connection until it ends.
async fn serve(incoming: quinn::Incoming, shared: &Shared) {
    let remote = incoming.remote_address();
    let (conn, peer, mut send, recv) = match accept(incoming, shared).await {
        Ok(accepted) => accepted,
        Err(e) => {
            bump(&shared.counters.handshake_failures, 1);
            debug!(%remote, error = %e, "incoming connection refused");
            return;
        }
    };
    debug!(%remote, ?peer, "incoming connection");
    let max_frame = shared.cfg.max_frame;
    let counters = &shared.counters;
    let wrap = |frame| Incoming { from: peer, frame };
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
            read_frames(&conn, recv, max_frame, counters, out, wrap).await;
            let mut accepted = shared.accepted.lock().expect("accepted table lock");
            if accepted.replicas.get(&id).map(Connection::stable_id) == Some(conn.stable_id()) {
                accepted.replicas.remove(&id);
            }
        }
        Peer::Client(key) => {
            let (queue, mut queued) = mpsc::channel(shared.cfg.queue_capacity);
            let evicted = {
                let mut accepted = shared.accepted.lock().expect("accepted table lock");
                let links = accepted.clients.entry(key).or_default();
                links.push(ClientLink {
                    conn: conn.clone(),
                    queue,
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
            tokio::select! {
                () = read_frames(&conn, recv, max_frame, counters, out, wrap) => {}
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

//! Authenticated QUIC transport for PBFT replicas and their clients.
//!
//! The transport moves opaque frames (byte strings) between nodes; it knows nothing about
//! protocol messages. It offers [`ReplicaTransport`] for replicas and [`ClientTransport`] for
//! clients.
//!
//! # Identity
//!
//! Every node is its ed25519 identity key. Its TLS certificate is self-signed with that key, and
//! peers are authenticated by the key alone: names, issuers and expiry are ignored, and the
//! TLS 1.3 handshake signature is verified against the certificate's key. Only TLS 1.3 and the
//! ALPN protocol `pbft/1` are spoken, with rustls' ring provider passed explicitly to every
//! config (no process-wide provider is installed or used).
//!
//! - The dialing side pins the key listed in the cluster for the replica it dials.
//! - The accepting side requires a client certificate with any valid ed25519 key. If that key is
//!   a cluster replica's key the connection is from that replica ([`Peer::Replica`]); otherwise
//!   it is from a client ([`Peer::Client`]). A node with an unlisted key is never a replica.
//!
//! # Connections
//!
//! Each replica dials every other replica and *sends* only on the connections it dialed; it
//! *receives* from replicas only on connections it accepted. Two replicas therefore share two
//! connections, one per direction, and neither side needs a tie-break rule: a restarted replica
//! simply dials again, and a newer accepted connection from the same key replaces the older one.
//! Clients dial every replica; a replica answers a client on the connection the client dialed.
//!
//! # When a link counts as up
//!
//! In TLS 1.3 the dialer finishes its handshake before the acceptor has checked the dialer's
//! certificate, so a returning `connect` does not mean the acceptor took the connection. After
//! the handshake the dialer opens one bidirectional stream, writes a fixed hello, and waits for
//! the acceptor's fixed acknowledgement. The acceptor only obtains the connection once its own
//! handshake is complete (the client certificate and `Finished` verified; 0.5-RTT data is never
//! used), and only then sends the acknowledgement. The dialer starts sending frames, and reports
//! the link as connected, only after reading it.
//!
//! # Framing
//!
//! Frames travel on that one long-lived stream, each prefixed by its length as a big-endian
//! `u32`. On loopback, a long-lived stream carried three times as many 200-byte frames per
//! second as a stream per frame (1.6 times for 4 KiB, 1.2 times for 64 KiB). A length above
//! [`TransportConfig::max_frame`] closes the connection before anything of that size is
//! allocated; reads are always bounded.
//!
//! # Queues and loss
//!
//! Sending never blocks. Each destination has a queue bounded in frames and in bytes; when it is
//! full the newest frame is dropped and counted in [`TransportStats::dropped_queue_full`].
//! Frames may also be lost when a connection breaks. The protocol above retransmits, so the
//! transport does not. A replica's received frames go to its [`Inbox`], which buffers frames
//! from replicas and from clients separately, each bounded in frames and in bytes; when a buffer
//! is full, reading stops, and QUIC flow control pushes back on the senders.
//!
//! # Reconnection
//!
//! A link that cannot be established, or that breaks, is dialed again with exponential backoff
//! (by default 50 ms doubling to 2 s). Keep-alives keep quiet links open; a peer that stops
//! answering is noticed after the idle timeout. A node that crashed and restarted on the same
//! address answers packets of its old connections with a QUIC stateless reset (its reset and
//! connection-id keys are derived from its identity key), so its peers redial at once instead
//! of waiting for the idle timeout.
//!
//! Frames queued for a link while it is down stay queued and are sent once it is up again.
//! Frames addressed to an unknown replica, to the sending replica itself, or to a client
//! without a live connection are dropped and counted.

#![deny(missing_docs)]

mod admission;
mod client;
pub mod cluster;
mod frame;
mod link;
pub mod raw;
mod replica;
mod stats;
mod tls;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::{KeyPair, PublicKey};
use quinn::Endpoint;

pub use client::ClientTransport;
pub use cluster::{ClientAccess, ClusterConfig, ConfigError, ReplicaEntry};
pub use link::DialError;
pub use replica::{Inbox, ReplicaTransport};
pub use stats::TransportStats;

/// A replica as listed in the cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The replica's id, `0..n`.
    pub id: u32,
    /// The address the replica listens on.
    pub addr: SocketAddr,
    /// The replica's identity key; its certificate must carry exactly this key.
    pub public_key: PublicKey,
}

/// Who sent a frame, as established by the TLS handshake.
// The key is kept parsed so it can verify requests directly; boxing it would cost an
// allocation per received frame to save a few hundred bytes per queued one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A replica of the cluster: the peer proved it holds that replica's listed key.
    Replica(u32),
    /// Any other node, identified by the key it proved it holds.
    Client(PublicKey),
}

/// A frame received by a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The authenticated sender.
    pub from: Peer,
    /// The frame, at most [`TransportConfig::max_frame`] bytes.
    pub frame: Bytes,
    /// The connection it came on, as [`ReplicaTransport::ban_client`] names it.
    pub connection: usize,
}

/// Which clients a replica admits: checked at the TLS handshake from the key the client's
/// certificate carries (replicas are always admitted), and by the core for every envelope.
pub use pbft_core::committee::ClientPolicy;

/// Transport limits and timings. [`Default`] gives values suited to a LAN or a single host.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The largest frame sent or accepted, in bytes (at most `u32::MAX`). Default 16 MiB.
    pub max_frame: usize,
    /// The largest frame a replica accepts from a client (one request envelope); a longer
    /// length prefix closes the connection. `max_frame` applies where it is smaller. Default
    /// 8 MiB + 64 bytes.
    pub max_client_frame: usize,
    /// Bytes of frames being received from all clients together: each frame takes the room
    /// its length prefix claims until it has arrived, and reading waits for room. Default
    /// 256 MiB.
    pub client_assembly_bytes: usize,
    /// How long a client frame may take from its first byte to its last before the
    /// connection is closed, so unfinished frames do not hold that room. Default 20 s.
    pub client_frame_timeout: Duration,
    /// Frames waiting per destination before new ones are dropped. Default 1024.
    pub queue_capacity: usize,
    /// Bytes waiting per destination before new frames are dropped; a larger frame is taken
    /// only into an empty queue. Default 64 MiB.
    pub queue_bytes: usize,
    /// The same for each accepted client connection (its replies). Default 1 MiB.
    pub client_queue_bytes: usize,
    /// Received frames waiting for the caller before reading pauses (per kind of sender in an
    /// [`Inbox`]). Default 1024.
    pub incoming_capacity: usize,
    /// Bytes of received frames waiting for the caller before reading pauses (per kind of
    /// sender in an [`Inbox`]; a larger frame waits alone). Default 128 MiB.
    pub incoming_bytes: usize,
    /// How often an idle connection sends a keep-alive. Default 1 s.
    pub keep_alive: Duration,
    /// How long without any packet from the peer before a connection is dead. Must exceed
    /// `keep_alive`. Default 5 s.
    pub idle_timeout: Duration,
    /// The limit for the QUIC handshake plus the hello exchange. Default 5 s.
    pub handshake_timeout: Duration,
    /// The first delay before dialing again after a failure. Default 50 ms.
    pub backoff_min: Duration,
    /// The largest delay between dial attempts. Default 2 s.
    pub backoff_max: Duration,
    /// Accepted connections from anyone but the replicas (handshakes in progress included)
    /// beyond which new ones are refused, unless a silent client makes way. Default 1024.
    pub max_connections: usize,
    /// Of those, the most from one IP address. Default 256.
    pub max_connections_per_address: usize,
    /// Accepted connections kept per client key (several processes may share a key); a newer
    /// one beyond this closes the oldest. Default 64.
    pub max_connections_per_client: usize,
    /// Connections accepted from each replica's listed address, beside `max_connections`, so
    /// that other parties can never lock a replica out. Such a connection takes a place only
    /// once it proved its address with a QUIC Retry, so forged packets take none. Default 4.
    pub connections_per_replica: usize,
    /// When the room for clients is full, a client connection silent for this long is closed
    /// to admit a new one. Default 5 s.
    pub client_idle_eviction: Duration,
    /// How long a client that sent an undecodable or wrongly signed message is disconnected
    /// and refused. Default 10 s.
    pub client_ban: Duration,
    /// Handshakes in progress beyond which a new connection must first prove its address with
    /// a QUIC Retry round trip. Default 64.
    pub retry_above_handshakes: usize,
    /// Bytes a connection from anywhere but a replica's listed address may have in flight
    /// unread (its QUIC stream and connection receive windows): with `max_connections`, this
    /// bounds what clients can make a replica buffer before the frame reader takes anything.
    /// Default 128 KiB.
    pub client_receive_window: u32,
    /// Binds the listening port so that another process may bind it too (`SO_REUSEPORT`); the
    /// kernel then hands each peer's packets to one of them. Only for two processes that share
    /// one replica's key on purpose (the `twin` test behaviour). Default false.
    pub share_port: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame: 16 << 20,
            max_client_frame: (8 << 20) + 64,
            client_assembly_bytes: 256 << 20,
            client_frame_timeout: Duration::from_secs(20),
            queue_capacity: 1024,
            queue_bytes: 64 << 20,
            client_queue_bytes: 1 << 20,
            incoming_capacity: 1024,
            incoming_bytes: 128 << 20,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_connections: 1024,
            max_connections_per_address: 256,
            max_connections_per_client: 64,
            connections_per_replica: 4,
            client_idle_eviction: Duration::from_secs(5),
            client_ban: Duration::from_secs(10),
            retry_above_handshakes: 64,
            client_receive_window: 128 << 10,
            share_port: false,
        }
    }
}

impl TransportConfig {
    fn validate(&self) -> Result<(), NetError> {
        let fail = |reason: &str| Err(NetError::Config(reason.to_string()));
        if self.max_frame == 0 || u32::try_from(self.max_frame).is_err() {
            return fail("max_frame must be between 1 and u32::MAX");
        }
        if self.max_client_frame == 0 {
            return fail("max_client_frame must be positive");
        }
        if self.queue_capacity == 0
            || self.queue_bytes == 0
            || self.client_queue_bytes == 0
            || self.client_assembly_bytes == 0
            || self.incoming_capacity == 0
            || self.incoming_bytes == 0
            || self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.max_connections_per_client == 0
            || self.connections_per_replica == 0
            || self.client_receive_window == 0
        {
            return fail(
                "queue_capacity, queue_bytes, client_queue_bytes, client_assembly_bytes, \
                 incoming_capacity, \
                 incoming_bytes, max_connections, \
                 max_connections_per_address, max_connections_per_client, \
                 connections_per_replica and client_receive_window must be positive",
            );
        }
        if self.keep_alive.is_zero() || self.idle_timeout <= self.keep_alive {
            return fail("keep_alive must be positive and shorter than idle_timeout");
        }
        if self.handshake_timeout.is_zero() || self.client_frame_timeout.is_zero() {
            return fail("handshake_timeout and client_frame_timeout must be positive");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return fail("backoff_min must be positive and at most backoff_max");
        }
        Ok(())
    }

    /// QUIC settings shared by both sides; `peer_streams` is how many bidirectional streams the
    /// peer may open (one for an accepted connection, none for a dialed one).
    fn quic(&self, peer_streams: u32) -> Result<quinn::TransportConfig, NetError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| NetError::Config("idle_timeout is too large".into()))?;
        let mut quic = quinn::TransportConfig::default();
        quic.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(peer_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .datagram_receive_buffer_size(None);
        Ok(quic)
    }
}

/// Errors from setting up a transport. Once running, a transport reports problems through logs
/// and [`TransportStats`] and keeps retrying.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Another socket is bound to the listen address.
    #[error("address {0} is already in use (is another node running on this port?)")]
    AddressInUse(SocketAddr),
    /// The UDP socket could not be bound for another reason.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address that was to be bound.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or the TLS configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The transport configuration or the cluster list is inconsistent.
    #[error("invalid transport configuration: {0}")]
    Config(String),
}

impl NetError {
    fn bind(addr: SocketAddr, source: std::io::Error) -> NetError {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            NetError::AddressInUse(addr)
        } else {
            NetError::Bind { addr, source }
        }
    }
}

/// A QUIC endpoint on `addr`. Its stateless-reset key and connection-id key are derived from
/// the identity key, so a restarted node recognises the connection ids of its previous run and
/// resets those connections as soon as their peers send on them, instead of the peers waiting
/// for the idle timeout.
fn endpoint(
    key: &KeyPair,
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
    share_port: bool,
) -> Result<Endpoint, NetError> {
    use ring::hmac;
    let master = hmac::Key::new(hmac::HMAC_SHA256, key.secret_seed().as_slice());
    let reset = hmac::sign(&master, b"pbft quic stateless reset key v1");
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref());
    let cid = hmac::sign(&master, b"pbft quic connection id key v1");
    let cid_key = u64::from_le_bytes(cid.as_ref()[..8].try_into().expect("32-byte tag"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = if share_port {
        shared_socket(addr).map_err(|e| NetError::bind(addr, e))?
    } else {
        std::net::UdpSocket::bind(addr).map_err(|e| NetError::bind(addr, e))?
    };
    Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| NetError::bind(addr, e))
}

/// A UDP socket bound to `addr` with `SO_REUSEPORT`, which other processes may bind too.
fn shared_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Checks that ids and keys are unique across the cluster.
fn validate_cluster(cluster: &[PeerInfo]) -> Result<(), NetError> {
    for (i, a) in cluster.iter().enumerate() {
        for b in &cluster[i + 1..] {
            if a.id == b.id {
                return Err(NetError::Config(format!(
                    "replica id {} is listed twice",
                    a.id
                )));
            }
            if a.public_key == b.public_key {
                return Err(NetError::Config(format!(
                    "replicas {} and {} share a public key",
                    a.id, b.id
                )));
            }
        }
    }
    Ok(())
}

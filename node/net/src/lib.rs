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
//! [`TransportConfig::max_frame()`] closes the connection before anything of that size is
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
mod config;
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

use bytes::Bytes;
use pbft_crypto::{KeyPair, PublicKey};
use quinn::Endpoint;

pub use client::ClientTransport;
pub use config::{TransportConfig, TransportConfigError};
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
    /// The frame, at most [`TransportConfig::max_frame()`] bytes.
    pub frame: Bytes,
    /// The connection it came on, as [`ReplicaTransport::ban_client`] names it.
    pub connection: usize,
}

/// Which clients a replica admits: checked at the TLS handshake from the key the client's
/// certificate carries (replicas are always admitted), and by the core for every envelope.
pub use pbft_core::committee::ClientPolicy;

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
    #[error("TLS setup failed")]
    Tls(#[from] TlsSetupError),
    /// The transport configuration is unusable.
    #[error("invalid transport configuration")]
    Config(#[from] TransportConfigError),
    /// The cluster list is inconsistent, or does not list this replica with its key.
    #[error("invalid cluster: {0}")]
    Cluster(String),
}

/// Why a node's certificate or TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The self-signed certificate could not be made from the identity key.
    #[error("building the certificate")]
    Certificate(#[source] rcgen::Error),
    /// The certificate made does not carry the identity key (or cannot be read back), so no
    /// peer could pin it.
    #[error("the certificate does not carry the identity key")]
    CertificateKey(#[source] Option<rustls::Error>),
    /// rustls refused the configuration.
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
    /// QUIC cannot use the TLS configuration: it has no initial cipher suite.
    #[error("building the QUIC crypto configuration")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
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
                return Err(NetError::Cluster(format!(
                    "replica id {} is listed twice",
                    a.id
                )));
            }
            if a.public_key == b.public_key {
                return Err(NetError::Cluster(format!(
                    "replicas {} and {} share a public key",
                    a.id, b.id
                )));
            }
        }
    }
    Ok(())
}

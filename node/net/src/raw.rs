//! Bare connections for load and attack tools. A [`RawConnection`] is authenticated like a
//! client's and past the hello exchange, and then writes whatever bytes it is given on the frame
//! stream. [`ClientTransport`](crate::ClientTransport) only ever sends whole frames and keeps a
//! single connection per replica; these can hold many connections open and idle, or send a
//! length prefix and stop, as a faulty client would.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use pbft_crypto::KeyPair;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::frame::CLOSE_SHUTDOWN;
use crate::link::{dial, DialError};
use crate::tls::{self, Identity};
use crate::{endpoint, NetError, PeerInfo, TlsSetupError, TransportConfig};

/// Opens [`RawConnection`]s as the holder of one key, from one local UDP port.
pub struct RawDialer {
    endpoint: Endpoint,
    identity: Identity,
    transport: Arc<quinn::TransportConfig>,
    cfg: TransportConfig,
}

impl RawDialer {
    /// A dialer with `key`'s identity on an ephemeral port of the address family of `ipv6`.
    /// Must be called within a tokio runtime.
    pub fn new(key: &KeyPair, ipv6: bool, cfg: TransportConfig) -> Result<RawDialer, NetError> {
        let local = if ipv6 {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        Ok(RawDialer {
            endpoint: endpoint(key, None, local, false)?,
            identity: Identity::new(key)?,
            transport: Arc::new(cfg.quic(0)?),
            cfg,
        })
    }

    /// Connects to `replica`, pinning its key, and exchanges the hello.
    pub async fn open(&self, replica: &PeerInfo) -> Result<RawConnection, RawError> {
        let crypto = tls::client_config(&self.identity, replica.public_key)?;
        let crypto = QuicClientConfig::try_from(crypto)
            .map_err(|e| NetError::from(TlsSetupError::Quic(e)))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        let timeout = self.cfg.handshake_timeout;
        let (conn, send, recv) = dial(&self.endpoint, config, replica.addr, timeout).await?;
        Ok(RawConnection {
            conn,
            send,
            _recv: recv,
        })
    }
}

/// Why a raw connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Setup(#[from] NetError),
    /// The connection could not be set up.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// Writing failed, as when the replica closed the connection.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
}

/// One connection to a replica, past the hello, writing raw bytes on the frame stream.
pub struct RawConnection {
    conn: Connection,
    send: SendStream,
    /// Kept so that the stream stays open; what the replica sends is not read.
    _recv: RecvStream,
}

impl RawConnection {
    /// Writes `bytes` as they are: frames are a big-endian `u32` length and that many bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), RawError> {
        Ok(self.send.write_all(bytes).await?)
    }

    /// Whether the connection has ended (closed by either side, or lost).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(CLOSE_SHUTDOWN, b"done");
    }
}

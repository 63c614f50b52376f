//! Outgoing links: dialing a replica, the hello exchange, reconnecting with backoff, and the
//! loops that move frames between queues and streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::frame::{
    frame_queue, write_frames, ByteBudget, FrameError, FrameQueue, FrameReader, QueuedFrames, ACK,
    CLOSE_FRAME_TOO_LARGE, CLOSE_PROTOCOL, CLOSE_SHUTDOWN, CLOSE_TOO_SLOW, HELLO, WRITE_BATCH,
};
use crate::stats::{bump, Counters};
use crate::tls::SERVER_NAME;
use crate::TransportConfig;

/// The sending side of an outgoing link, owned by the transport.
pub(crate) struct Link {
    pub(crate) queue: FrameQueue,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts dialing `addr` with `config` (which pins the replica's key). Frames the replica
    /// sends back on the link go to `inbound`; without it they are not read.
    pub(crate) fn spawn(
        endpoint: Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        replica: u32,
        cfg: Arc<TransportConfig>,
        counters: Arc<Counters>,
        inbound: Option<mpsc::Sender<(u32, Bytes)>>,
    ) -> Link {
        let (queue, queued) = frame_queue(&cfg, cfg.queue_bytes);
        let connected = Arc::new(AtomicBool::new(false));
        let dialer = Dialer {
            endpoint,
            config,
            addr,
            replica,
            cfg,
            counters,
            connected: connected.clone(),
            inbound,
        };
        let task = tokio::spawn(dialer.run(queued));
        Link {
            queue,
            connected,
            task,
        }
    }

    /// Whether the link is established (the acceptor acknowledged it).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Stops dialing and closes the link's connection.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a connection to a replica could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The dial could not start.
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection broke.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// The hello could not be written.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// The acknowledgement could not be read.
    #[error(transparent)]
    Read(#[from] quinn::ReadExactError),
    /// The peer answered the hello with something else.
    #[error("the peer did not acknowledge the hello")]
    BadAck,
    /// The handshake and hello took longer than allowed.
    #[error("timed out")]
    TimedOut,
}

impl DialError {
    /// Whether the peer refused the handshake because it speaks another version of the wire
    /// format (no common ALPN protocol).
    pub fn is_version_mismatch(&self) -> bool {
        let refused = quinn::TransportErrorCode::crypto(crate::tls::NO_APPLICATION_PROTOCOL);
        match self {
            DialError::Connection(quinn::ConnectionError::ConnectionClosed(close)) => {
                close.error_code == refused
            }
            DialError::Connection(quinn::ConnectionError::TransportError(error)) => {
                error.code == refused
            }
            _ => false,
        }
    }
}

/// Dials `addr`, then exchanges hello and acknowledgement, within `timeout`; see the crate docs
/// for why a link only counts once the acknowledgement arrived.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> Result<(Connection, SendStream, RecvStream), DialError> {
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME)?;
    let handshake = async {
        let conn = connecting.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&HELLO).await?;
        let mut ack = [0u8; ACK.len()];
        recv.read_exact(&mut ack).await?;
        if ack != ACK {
            conn.close(CLOSE_PROTOCOL, b"bad acknowledgement");
            return Err(DialError::BadAck);
        }
        Ok((conn, send, recv))
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| DialError::TimedOut)?
}

struct Dialer {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    replica: u32,
    cfg: Arc<TransportConfig>,
    counters: Arc<Counters>,
    connected: Arc<AtomicBool>,
    inbound: Option<mpsc::Sender<(u32, Bytes)>>,
}

impl Dialer {
    async fn run(self, mut queue: QueuedFrames) {
        let mut backoff = self.cfg.backoff_min;
        // Said once per link: the peer will not change version by itself.
        let mut version_warned = false;
        loop {
            match self.establish().await {
                Ok((conn, send, recv)) => {
                    backoff = self.cfg.backoff_min;
                    info!(replica = self.replica, addr = %self.addr, "link up");
                    self.connected.store(true, Ordering::Release);
                    let end = self.serve(&conn, send, recv, &mut queue).await;
                    self.connected.store(false, Ordering::Release);
                    match end {
                        PumpEnd::QueueClosed => {
                            conn.close(CLOSE_SHUTDOWN, b"shutdown");
                            return;
                        }
                        PumpEnd::Lost(reason) => {
                            info!(replica = self.replica, %reason, "link down");
                            conn.close(CLOSE_SHUTDOWN, b"reconnecting");
                        }
                    }
                }
                Err(e) if e.is_version_mismatch() => {
                    bump(&self.counters.dial_failures, 1);
                    if !version_warned {
                        version_warned = true;
                        warn!(
                            replica = self.replica,
                            addr = %self.addr,
                            ours = %String::from_utf8_lossy(crate::tls::ALPN),
                            "replica {} speaks another wire format version; every replica of a \
                             cluster must run the same one",
                            self.replica
                        );
                    }
                }
                Err(e) => {
                    bump(&self.counters.dial_failures, 1);
                    debug!(replica = self.replica, addr = %self.addr, error = %e, "dial failed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    async fn establish(&self) -> Result<(Connection, SendStream, RecvStream), DialError> {
        let timeout = self.cfg.handshake_timeout;
        dial(&self.endpoint, self.config.clone(), self.addr, timeout).await
    }

    async fn serve(
        &self,
        conn: &Connection,
        send: SendStream,
        recv: RecvStream,
        queue: &mut QueuedFrames,
    ) -> PumpEnd {
        let writing = pump(conn, send, queue, &self.counters);
        match &self.inbound {
            Some(inbound) => {
                let replica = self.replica;
                let reading = read_frames(
                    conn,
                    FrameReader::new(recv, self.cfg.max_frame(), None),
                    &self.counters,
                    inbound,
                    None,
                    |frame| (replica, frame),
                );
                tokio::select! {
                    end = writing => end,
                    () = reading => PumpEnd::Lost("the replica stopped sending".into()),
                }
            }
            None => {
                // The acceptor sends nothing after its acknowledgement on replica links.
                drop(recv);
                writing.await
            }
        }
    }
}

/// Why [`pump`] returned.
pub(crate) enum PumpEnd {
    /// The transport dropped the queue: it is shutting down or replaced this connection.
    QueueClosed,
    /// The connection failed.
    Lost(String),
}

/// Writes queued frames to `send` until the connection fails or the queue is closed.
pub(crate) async fn pump(
    conn: &Connection,
    mut send: SendStream,
    queue: &mut QueuedFrames,
    counters: &Counters,
) -> PumpEnd {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            biased;
            reason = conn.closed() => return PumpEnd::Lost(reason.to_string()),
            n = queue.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    let _ = send.finish();
                    return PumpEnd::QueueClosed;
                }
                if let Err(e) = write_frames(&mut send, &batch).await {
                    bump(&counters.lost_on_disconnect, n as u64);
                    return PumpEnd::Lost(e.to_string());
                }
                bump(&counters.frames_out, n as u64);
                batch.clear();
            }
        }
    }
}

/// Reads frames from `recv` into `out` until the stream ends, the connection fails, or `out`
/// is dropped. Waiting on a full `out` or on `budget` stops reading, which pushes back on the
/// peer. An oversized length prefix closes the connection.
pub(crate) async fn read_frames<T>(
    conn: &Connection,
    mut reader: FrameReader,
    counters: &Counters,
    out: &mpsc::Sender<T>,
    budget: Option<&ByteBudget>,
    wrap: impl Fn(Bytes) -> T,
) {
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(FrameError::Oversized { len, max }) => {
                warn!(remote = %conn.remote_address(), len, max, "oversized frame; closing the connection");
                bump(&counters.rejected_oversized_in, 1);
                conn.close(CLOSE_FRAME_TOO_LARGE, b"frame too large");
                return;
            }
            Err(FrameError::TooSlow(allowance)) => {
                debug!(remote = %conn.remote_address(), ?allowance, "frame too slow; closing the connection");
                bump(&counters.frames_too_slow, 1);
                conn.close(CLOSE_TOO_SLOW, b"frame too slow");
                return;
            }
            Err(e) => {
                debug!(remote = %conn.remote_address(), error = %e, "stream ended");
                return;
            }
        };
        bump(&counters.frames_in, 1);
        let len = frame.len();
        if let Some(budget) = budget {
            tokio::select! {
                () = budget.take(len) => {}
                _ = conn.closed() => return,
            }
        }
        let give_back = || {
            if let Some(budget) = budget {
                budget.give_back(len);
            }
        };
        tokio::select! {
            sent = out.send(wrap(frame)) => {
                if sent.is_err() {
                    give_back();
                    return;
                }
            }
            _ = conn.closed() => {
                give_back();
                return;
            }
        }
    }
}

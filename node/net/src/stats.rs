//! Transport counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a transport's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames received from connections.
    pub frames_in: u64,
    /// Frames written to a connection (not necessarily delivered).
    pub frames_out: u64,
    /// Frames dropped because the destination's queue was full.
    pub dropped_queue_full: u64,
    /// Frames dropped because the destination is unknown or not connected (a client without a
    /// live connection, or a replica id outside the cluster).
    pub dropped_not_connected: u64,
    /// Frames lost because their connection broke while they were being written.
    pub lost_on_disconnect: u64,
    /// Received length prefixes above the maximum frame size; each closed its connection.
    pub rejected_oversized_in: u64,
    /// Frames the caller asked to send that were above the maximum frame size.
    pub rejected_oversized_out: u64,
    /// Client connections closed because a frame did not arrive within
    /// `client_frame_timeout` of its first byte.
    pub frames_too_slow: u64,
    /// Incoming connections whose handshake or hello failed (bad or missing certificate, wrong
    /// protocol, timeout).
    pub handshake_failures: u64,
    /// Outgoing dial attempts that did not end in an established link.
    pub dial_failures: u64,
    /// Incoming connections refused because their room was full (`max_connections`,
    /// `max_connections_per_address`, or `connections_per_replica`) and no silent client could
    /// make way.
    pub connections_refused: u64,
    /// Silent client connections closed to make way for new ones.
    pub clients_evicted: u64,
    /// Incoming connections asked to prove their address (QUIC Retry) because handshakes
    /// piled up.
    pub retries_sent: u64,
    /// Clients disconnected for sending undecodable or wrongly signed messages.
    pub clients_banned: u64,
    /// Handshakes refused because the client's key is serving a ban.
    pub banned_refused: u64,
    /// Incoming connections refused during the handshake because their key is neither a
    /// replica's nor admitted by the client policy.
    pub clients_refused: u64,
}

/// Live counters shared by a transport's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_not_connected: AtomicU64,
    pub(crate) lost_on_disconnect: AtomicU64,
    pub(crate) rejected_oversized_in: AtomicU64,
    pub(crate) rejected_oversized_out: AtomicU64,
    pub(crate) frames_too_slow: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) clients_evicted: AtomicU64,
    pub(crate) retries_sent: AtomicU64,
    pub(crate) clients_banned: AtomicU64,
    pub(crate) banned_refused: AtomicU64,
    pub(crate) clients_refused: AtomicU64,
}

/// Adds `n` to a counter; counters are statistics, so no ordering with other memory is needed.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_not_connected: get(&self.dropped_not_connected),
            lost_on_disconnect: get(&self.lost_on_disconnect),
            rejected_oversized_in: get(&self.rejected_oversized_in),
            rejected_oversized_out: get(&self.rejected_oversized_out),
            frames_too_slow: get(&self.frames_too_slow),
            handshake_failures: get(&self.handshake_failures),
            dial_failures: get(&self.dial_failures),
            connections_refused: get(&self.connections_refused),
            clients_evicted: get(&self.clients_evicted),
            retries_sent: get(&self.retries_sent),
            clients_banned: get(&self.clients_banned),
            banned_refused: get(&self.banned_refused),
            clients_refused: get(&self.clients_refused),
        }
    }
}

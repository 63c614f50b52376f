//! A simulated client: the client crate's own [`Session`] (the code `pbft-client` runs), fed the
//! application's operations ([`ClientOps`]) and simulated time.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pbft_client::session::{new_session_id, Session, Target};
use pbft_core::messages::{Outcome, ReplicaId, Reply, SessionKey, Timestamp, View};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, PublicKey};

use super::app::ClientOps;

/// What a client tick admitted, and the frames to send.
pub type Tick = (Vec<(Timestamp, Issued)>, Vec<(Target, Bytes)>);

/// An operation a client admitted, and whether it went out as a read-only request.
#[derive(Clone, Debug, PartialEq)]
pub struct Issued {
    /// The operation, encoded.
    pub op: Vec<u8>,
    pub read_only: bool,
}

/// A client of the simulated cluster.
pub struct SimClient {
    pub index: usize,
    pub key: PublicKey,
    /// The client's key and its session.
    pub session: SessionKey,
    session_state: Session,
    /// Requests still to issue.
    remaining: usize,
    /// Most requests admitted and not yet accepted.
    window: usize,
    /// What the client asks for.
    source: Box<dyn ClientOps>,
    /// The operation of each admitted request not yet accepted.
    ops: BTreeMap<Timestamp, Vec<u8>>,
    /// Results this client accepted, by timestamp, with the operation.
    pub accepted: BTreeMap<Timestamp, (Vec<u8>, Outcome)>,
}

impl SimClient {
    /// A client that will issue `requests` operations from `source`, at most `window` at a
    /// time, and retransmits an unanswered envelope after `retransmit`, doubling up to eight
    /// times that.
    pub fn new(
        index: usize,
        key: KeyPair,
        committee: Committee,
        requests: usize,
        window: usize,
        retransmit: Duration,
        source: Box<dyn ClientOps>,
    ) -> SimClient {
        let session = SessionKey {
            client: key.public(),
            session: new_session_id(index as u64 + 1, 0),
        };
        SimClient {
            index,
            key: key.public(),
            session,
            session_state: Session::new(
                key,
                committee,
                session.session,
                retransmit,
                retransmit * 8,
            ),
            remaining: requests,
            window: window.max(1),
            source,
            ops: BTreeMap::new(),
            accepted: BTreeMap::new(),
        }
    }

    /// The view whose primary the client sends new requests to.
    pub fn view(&self) -> View {
        self.session_state.view()
    }

    /// All requests were issued and accepted.
    pub fn is_done(&self) -> bool {
        self.remaining == 0 && self.session_state.outstanding() == 0
    }

    pub fn outstanding(&self) -> usize {
        self.session_state.outstanding()
    }

    /// Adds `count` more requests to the workload.
    pub fn add_requests(&mut self, count: usize) {
        self.remaining += count;
    }

    /// Admits new requests up to the window, and returns the operations admitted and the frames
    /// to send: new envelopes for the primary, read-only requests for every replica, and
    /// retransmissions.
    pub fn tick(&mut self, now: Duration) -> Tick {
        let mut issued = Vec::new();
        while self.remaining > 0 && self.session_state.outstanding() < self.window {
            if !self.session_state.has_room() {
                break;
            }
            let timestamp = self.session_state.next_timestamp();
            let next = self.source.next_op(timestamp);
            let admitted = if next.read_only {
                self.session_state.admit_read(next.op.clone())
            } else {
                self.session_state.admit(next.op.clone())
            };
            debug_assert_eq!(admitted, timestamp);
            self.ops.insert(admitted, next.op.clone());
            issued.push((admitted, next));
            self.remaining -= 1;
        }
        let mut frames = self.session_state.poll_envelopes(now);
        frames.extend(self.session_state.poll_retransmits(now));
        (issued, frames)
    }

    /// Takes a reply from replica `from` (the channel authenticated it). Returns the requests
    /// it completed, with their results.
    pub fn on_reply(&mut self, from: ReplicaId, reply: Reply) -> Vec<(Timestamp, Outcome)> {
        let done = self.session_state.on_reply(from, reply);
        for (timestamp, result) in &done {
            if let Some(op) = self.ops.remove(timestamp) {
                self.source.on_accepted(&op, result);
                self.accepted.insert(*timestamp, (op, result.clone()));
            }
        }
        done
    }
}

//! A simulated client: the client crate's own [`Session`] (the code `pbft-client` runs), fed a
//! fixed workload of unique-key writes and simulated time.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pbft_client::session::{new_session_id, Session, Target};
use pbft_core::app::KvOp;
use pbft_core::messages::{Outcome, ReplicaId, Reply, SessionKey, Timestamp, View};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, PublicKey};

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
    /// The operation of each admitted request not yet accepted.
    ops: BTreeMap<Timestamp, KvOp>,
    /// Results this client accepted, by timestamp, with the operation.
    pub accepted: BTreeMap<Timestamp, (KvOp, Outcome)>,
}

impl SimClient {
    /// A client that will issue `requests` puts, at most `window` at a time, and retransmits an
    /// unanswered envelope after `retransmit`, doubling up to eight times that.
    pub fn new(
        index: usize,
        key: KeyPair,
        committee: Committee,
        requests: usize,
        window: usize,
        retransmit: Duration,
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

    /// Admits new requests up to the window, and returns the frames to send: new envelopes for
    /// the primary, and retransmissions for every replica.
    pub fn tick(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        while self.remaining > 0 && self.session_state.outstanding() < self.window {
            if !self.session_state.has_room() {
                break;
            }
            let timestamp = self.session_state.next_timestamp();
            let op = KvOp::Put {
                key: format!("c{}/{}", self.index, timestamp).into_bytes(),
                value: format!("v{timestamp}").into_bytes(),
            };
            let admitted = self.session_state.admit(op.encode());
            debug_assert_eq!(admitted, timestamp);
            self.ops.insert(admitted, op);
            self.remaining -= 1;
        }
        let mut frames = self.session_state.poll_envelopes(now);
        frames.extend(self.session_state.poll_retransmits(now));
        frames
    }

    /// Takes a reply from replica `from` (the channel authenticated it). Returns the requests
    /// it completed, with their results.
    pub fn on_reply(&mut self, from: ReplicaId, reply: Reply) -> Vec<(Timestamp, Outcome)> {
        let done = self.session_state.on_reply(from, reply);
        for (timestamp, result) in &done {
            if let Some(op) = self.ops.remove(timestamp) {
                self.accepted.insert(*timestamp, (op, result.clone()));
            }
        }
        done
    }
}

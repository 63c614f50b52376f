//! A simulated client: the client crate's own [`Session`] (the code `pbft-client` runs), fed a
//! workload and simulated time.
//!
//! The [`Workload::UniquePuts`] workload writes keys no other client touches, so every accepted
//! write must be in every correct replica's final state. [`Workload::Mixed`] adds writes,
//! compare-and-swaps and read-only gets of a few keys every client shares, which the checker
//! judges against a model of the committed history.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pbft_client::session::{new_session_id, Session, Target};
use pbft_core::app::{KvOp, KvResult};
use pbft_core::messages::{Outcome, ReplicaId, Reply, SessionKey, Timestamp, View};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, PublicKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Keys every client of a [`Workload::Mixed`] run reads and writes.
pub const SHARED_KEYS: usize = 4;

/// What a simulated client asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// A put of a key of its own per request.
    #[default]
    UniquePuts,
    /// Per request: a put of a key of its own (40 %), a put of a shared key (20 %), a
    /// compare-and-swap of a shared key against the value the client last saw there (20 %), or
    /// a read-only get of a shared key (20 %).
    Mixed,
}

/// How the names of shared keys begin.
pub const SHARED_PREFIX: &str = "shared/";

/// The name of shared key `index`.
pub fn shared_key(index: usize) -> Vec<u8> {
    format!("{SHARED_PREFIX}{index}").into_bytes()
}

/// What a client tick admitted, and the frames to send.
pub type Tick = (Vec<(Timestamp, Issued)>, Vec<(Target, Bytes)>);

/// An operation a client admitted, and whether it went out as a read-only request.
#[derive(Clone, Debug, PartialEq)]
pub struct Issued {
    pub op: KvOp,
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
    workload: Workload,
    rng: ChaCha8Rng,
    /// The value this client last saw at each shared key, which its compare-and-swaps expect.
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The operation of each admitted request not yet accepted.
    ops: BTreeMap<Timestamp, KvOp>,
    /// Results this client accepted, by timestamp, with the operation.
    pub accepted: BTreeMap<Timestamp, (KvOp, Outcome)>,
}

impl SimClient {
    /// A client that will issue `requests` operations of `workload` (drawn from `seed`), at most
    /// `window` at a time, and retransmits an unanswered envelope after `retransmit`, doubling up
    /// to eight times that.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        key: KeyPair,
        committee: Committee,
        requests: usize,
        window: usize,
        retransmit: Duration,
        workload: Workload,
        seed: u64,
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
            workload,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9)),
            seen: BTreeMap::new(),
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
            let next = self.next_op(timestamp);
            let admitted = if next.read_only {
                self.session_state.admit_read(next.op.encode())
            } else {
                self.session_state.admit(next.op.encode())
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

    fn next_op(&mut self, timestamp: Timestamp) -> Issued {
        let value = format!("c{}/v{timestamp}", self.index).into_bytes();
        let own = KvOp::Put {
            key: format!("c{}/{}", self.index, timestamp).into_bytes(),
            value: value.clone(),
        };
        if self.workload == Workload::UniquePuts {
            return Issued {
                op: own,
                read_only: false,
            };
        }
        let key = shared_key(self.rng.random_range(0..SHARED_KEYS));
        let (op, read_only) = match self.rng.random_range(0..10) {
            0..4 => (own, false),
            4..6 => (KvOp::Put { key, value }, false),
            6..8 => {
                let expected = self.seen.get(&key).cloned().flatten();
                (
                    KvOp::Cas {
                        key,
                        expected,
                        new: value,
                    },
                    false,
                )
            }
            _ => (KvOp::Get { key }, true),
        };
        Issued { op, read_only }
    }

    /// Takes a reply from replica `from` (the channel authenticated it). Returns the requests
    /// it completed, with their results.
    pub fn on_reply(&mut self, from: ReplicaId, reply: Reply) -> Vec<(Timestamp, Outcome)> {
        let done = self.session_state.on_reply(from, reply);
        for (timestamp, result) in &done {
            if let Some(op) = self.ops.remove(timestamp) {
                self.remember(&op, result);
                self.accepted.insert(*timestamp, (op, result.clone()));
            }
        }
        done
    }

    /// Notes what an accepted result says a shared key holds.
    fn remember(&mut self, op: &KvOp, outcome: &Outcome) {
        let Outcome::Done(bytes) = outcome else {
            return;
        };
        let Ok(result) = KvResult::decode(bytes) else {
            return;
        };
        match (op, result) {
            (KvOp::Put { key, value }, KvResult::Done) => {
                self.seen.insert(key.clone(), Some(value.clone()));
            }
            (KvOp::Cas { key, new, .. }, KvResult::Done) => {
                self.seen.insert(key.clone(), Some(new.clone()));
            }
            (KvOp::Cas { key, .. } | KvOp::Get { key }, KvResult::CasFailed(current))
            | (KvOp::Get { key }, KvResult::Value(current)) => {
                self.seen.insert(key.clone(), current);
            }
            _ => {}
        }
    }
}

//! A simulated client: signs envelopes of requests, sends them to the primary it believes in,
//! retransmits to every replica on timeout, and accepts a result once f+1 replicas agree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pbft_core::app::KvOp;
use pbft_core::messages::{ClientRequest, ReplicaId, Reply, RequestEnvelope, Timestamp, View};
use pbft_crypto::KeyPair;

/// One request the client is waiting for.
#[derive(Debug)]
struct Outstanding {
    /// The envelope that carries it (retransmitted unchanged, so its signature stays valid).
    envelope: Arc<RequestEnvelope>,
    sent_at: Duration,
    /// Each replica's answer.
    answers: BTreeMap<ReplicaId, Vec<u8>>,
}

/// What the client does next.
pub enum ClientAction {
    /// Send to the primary of the view the client believes in.
    ToPrimary(Arc<RequestEnvelope>),
    /// Send to every replica.
    ToAll(Arc<RequestEnvelope>),
}

/// A client of the simulated cluster running a fixed workload of unique-key writes.
pub struct SimClient {
    pub index: usize,
    pub key: KeyPair,
    f: usize,
    next_timestamp: Timestamp,
    remaining: usize,
    window: usize,
    retransmit_after: Duration,
    outstanding: BTreeMap<Timestamp, Outstanding>,
    /// Results this client accepted, by timestamp, with the operation.
    pub accepted: BTreeMap<Timestamp, (KvOp, Vec<u8>)>,
    ops: BTreeMap<Timestamp, KvOp>,
    /// The view each replica last reported.
    views: BTreeMap<ReplicaId, View>,
    view: View,
}

impl SimClient {
    pub fn new(
        index: usize,
        key: KeyPair,
        f: usize,
        requests: usize,
        window: usize,
        retransmit_after: Duration,
    ) -> SimClient {
        SimClient {
            index,
            key,
            f,
            next_timestamp: 1,
            remaining: requests,
            window: window.max(1),
            retransmit_after,
            outstanding: BTreeMap::new(),
            accepted: BTreeMap::new(),
            ops: BTreeMap::new(),
            views: BTreeMap::new(),
            view: 0,
        }
    }

    /// The view whose primary the client sends new requests to.
    pub fn view(&self) -> View {
        self.view
    }

    /// All requests were issued and accepted.
    pub fn is_done(&self) -> bool {
        self.remaining == 0 && self.outstanding.is_empty()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Adds `count` more requests to the workload.
    pub fn add_requests(&mut self, count: usize) {
        self.remaining += count;
    }

    /// Issues new requests up to the window, and retransmits old ones.
    pub fn tick(&mut self, now: Duration) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        let room = self
            .window
            .saturating_sub(self.outstanding.len())
            .min(self.remaining);
        if room > 0 {
            let requests: Vec<ClientRequest> = (0..room)
                .map(|_| {
                    let timestamp = self.next_timestamp;
                    self.next_timestamp += 1;
                    let op = KvOp::Put {
                        key: format!("c{}/{}", self.index, timestamp).into_bytes(),
                        value: format!("v{timestamp}").into_bytes(),
                    };
                    self.ops.insert(timestamp, op.clone());
                    ClientRequest {
                        timestamp,
                        op: op.encode(),
                    }
                })
                .collect();
            self.remaining -= room;
            let envelope = Arc::new(RequestEnvelope::new(&self.key, requests));
            for request in &envelope.requests {
                self.outstanding.insert(
                    request.timestamp,
                    Outstanding {
                        envelope: envelope.clone(),
                        sent_at: now,
                        answers: BTreeMap::new(),
                    },
                );
            }
            actions.push(ClientAction::ToPrimary(envelope));
        }
        let mut resent = BTreeSet::new();
        for outstanding in self.outstanding.values_mut() {
            if now >= outstanding.sent_at + self.retransmit_after {
                outstanding.sent_at = now;
                let envelope = &outstanding.envelope;
                if resent.insert(envelope.first_timestamp()) {
                    actions.push(ClientAction::ToAll(envelope.clone()));
                }
            }
        }
        actions
    }

    /// Takes a reply from replica `from` (the channel authenticated it).
    pub fn on_reply(&mut self, from: ReplicaId, reply: &Reply) -> Vec<(Timestamp, Vec<u8>)> {
        if reply.client != self.key.public() || reply.replica != from {
            return Vec::new();
        }
        self.views.insert(from, reply.view);
        let mut views: Vec<View> = self.views.values().copied().collect();
        views.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(view) = views.get(self.f) {
            // f+1 replicas are at this view or later, so at least one correct one is.
            self.view = self.view.max(*view);
        }
        let mut newly_accepted = Vec::new();
        for result in &reply.results {
            let Some(outstanding) = self.outstanding.get_mut(&result.timestamp) else {
                continue;
            };
            outstanding.answers.insert(from, result.result.clone());
            let matching = outstanding
                .answers
                .values()
                .filter(|r| **r == result.result)
                .count();
            if matching > self.f {
                self.outstanding.remove(&result.timestamp);
                let op = self.ops.remove(&result.timestamp).expect("issued");
                self.accepted
                    .insert(result.timestamp, (op, result.result.clone()));
                newly_accepted.push((result.timestamp, result.result.clone()));
            }
        }
        newly_accepted
    }
}

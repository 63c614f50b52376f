//! The protocol core of 3f+1 replicas in one thread, messages handed over directly: no network
//! and no encoding.
//!
//! Every message goes through [`messages::verify`] (shape, limits, digests). With
//! [`Signatures::Trusted`] its checker accepts every signature, so verification costs nothing;
//! with [`Signatures::Verified`] clients sign their envelopes and every replica checks each
//! signature it receives once, remembering answers as the node runtime does. Signing always
//! happens inside the core (every PRE-PREPARE, PREPARE, COMMIT and CHECKPOINT is signed with
//! ed25519), so the figure includes 2n signatures per batch.
//!
//! The primary may have one batch in flight (`max_outstanding = 1`), and the envelopes of the
//! next batch are handed to it while the previous one is being ordered: each
//! [`CoreCluster::commit`] orders and executes exactly one batch made of the envelopes handed in
//! by the call before, the way batches form under load.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::app::{KvOp, KvStore};
use pbft_core::driver::{Driver, Effects};
use pbft_core::fixtures::TrustAll;
use pbft_core::messages::{
    self, ClientRequest, Limits, Message, ReplicaId, Reply, RequestEnvelope, Sender,
    SignatureCache, Timestamp,
};
use pbft_core::protocol::{Durable, ProtocolConfig, Replica};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, Signature, Signer};

/// Distinct keys each client cycles through, so the state stays small.
const KEYS_PER_CLIENT: u64 = 64;

/// Queues what a replica sends; persistence and replies go nowhere.
struct Queue<'a> {
    from: ReplicaId,
    queue: &'a mut VecDeque<(ReplicaId, ReplicaId, Arc<Message>)>,
}

impl Effects for Queue<'_> {
    type Error = std::convert::Infallible;

    fn persist(&mut self, _: Vec<Durable>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn send(&mut self, to: &[ReplicaId], message: Arc<Message>) {
        for to in to {
            self.queue.push_back((self.from, *to, message.clone()));
        }
    }

    fn reply(&mut self, _: Reply) {}
}

/// Whether the cluster checks signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signatures {
    /// Every signature is taken as valid and envelopes are not signed: the core's own cost.
    Trusted,
    /// Clients sign envelopes and each replica verifies every signature it receives once.
    Verified,
}

/// 3f+1 replicas and a set of clients, driven synchronously.
pub struct CoreCluster {
    replicas: Vec<Driver>,
    committee: Committee,
    limits: Limits,
    signatures: Signatures,
    /// Each replica's remembered signature checks (used with [`Signatures::Verified`]).
    caches: Vec<SignatureCache>,
    clients: Vec<(Signer, Timestamp)>,
    per_envelope: usize,
    value: Vec<u8>,
    /// (from, to, message) in delivery order.
    queue: VecDeque<(ReplicaId, ReplicaId, Arc<Message>)>,
    /// Batches executed by each replica.
    executed: Vec<u64>,
    /// Requests executed by the primary.
    pub executed_requests: u64,
    now: Duration,
}

impl CoreCluster {
    /// A cluster whose batches hold `clients` envelopes of `per_envelope` puts of `payload`
    /// bytes each, with signatures taken as valid. Already primed: one batch is in flight.
    pub fn new(f: usize, clients: usize, per_envelope: usize, payload: usize) -> CoreCluster {
        CoreCluster::with_signatures(f, clients, per_envelope, payload, Signatures::Trusted)
    }

    /// [`CoreCluster::new`] with the given signature checking.
    pub fn with_signatures(
        f: usize,
        clients: usize,
        per_envelope: usize,
        payload: usize,
        signatures: Signatures,
    ) -> CoreCluster {
        let n = 3 * f + 1;
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed(&[i as u8 + 1; 32]).expect("valid seed"))
            .collect();
        let committee =
            Committee::new(keys.iter().map(KeyPair::public).collect(), f).expect("committee");
        let config = ProtocolConfig {
            max_outstanding: 1,
            ..ProtocolConfig::default()
        };
        let limits = config.limits.clone();
        let replicas = keys
            .into_iter()
            .enumerate()
            .map(|(id, key)| {
                let mut replica = Replica::new(
                    id as ReplicaId,
                    committee.clone(),
                    config.clone(),
                    key,
                    Box::new(KvStore::new()),
                )
                .expect("replica");
                replica.start(Duration::ZERO);
                let _ = replica.poll_ready();
                Driver::new(replica)
            })
            .collect();
        let clients = (0..clients)
            .map(|c| {
                let key = KeyPair::from_seed(&[200 - c as u8; 32]).expect("valid seed");
                (committee.signer(key), 1)
            })
            .collect();
        let mut cluster = CoreCluster {
            replicas,
            committee,
            limits,
            signatures,
            caches: (0..n).map(|_| SignatureCache::default()).collect(),
            clients,
            per_envelope,
            value: vec![b'v'; payload],
            queue: VecDeque::new(),
            executed: vec![0; n],
            executed_requests: 0,
            now: Duration::ZERO,
        };
        // One envelope goes out at once as batch 1; later ones wait behind it.
        let first = cluster.envelope(0);
        cluster.hand_to_primary(vec![first]);
        cluster
    }

    /// The next batch's envelopes: one per client, signed only when signatures are verified.
    pub fn envelopes(&mut self) -> Vec<RequestEnvelope> {
        (0..self.clients.len()).map(|c| self.envelope(c)).collect()
    }

    fn envelope(&mut self, c: usize) -> RequestEnvelope {
        let (client, next) = &mut self.clients[c];
        let requests = (0..self.per_envelope)
            .map(|_| {
                let timestamp = *next;
                *next += 1;
                let key = format!("c{c}-{}", timestamp % KEYS_PER_CLIENT).into_bytes();
                let op = KvOp::Put {
                    key,
                    value: self.value.clone(),
                };
                ClientRequest {
                    timestamp,
                    op: op.encode(),
                }
            })
            .collect();
        match self.signatures {
            Signatures::Trusted => RequestEnvelope {
                client: client.public(),
                session: 1,
                requests,
                signature: Signature::EMPTY,
            },
            Signatures::Verified => RequestEnvelope::new(client, 1, requests),
        }
    }

    /// Hands `envelopes` to the primary, then delivers messages until every replica executed
    /// one more batch (the one in flight). Returns the requests in that batch.
    pub fn commit(&mut self, envelopes: Vec<RequestEnvelope>) -> u64 {
        let executed_before = self.executed_requests;
        self.now += Duration::from_micros(100);
        self.hand_to_primary(envelopes);
        let target = self.executed.iter().copied().min().unwrap_or(0) + 1;
        while self.executed.iter().any(|e| *e < target) {
            let (from, to, message) = self
                .queue
                .pop_front()
                .expect("messages left until the batch executes everywhere");
            let verified = self
                .verify(to, (*message).clone(), Sender::Replica(from))
                .expect("a correct replica's message passes the boundary");
            self.replicas[to as usize]
                .replica_mut()
                .handle_message(self.now, verified);
            self.collect(to);
        }
        self.executed_requests - executed_before
    }

    fn hand_to_primary(&mut self, envelopes: Vec<RequestEnvelope>) {
        let primary = self.committee.primary(self.replicas[0].replica().view());
        for envelope in envelopes {
            let sender = Sender::Client(envelope.client);
            let verified = self
                .verify(primary, Message::Request(envelope), sender)
                .expect("a well-formed envelope passes the boundary");
            self.replicas[primary as usize]
                .replica_mut()
                .handle_message(self.now, verified);
            self.collect(primary);
        }
    }

    /// The boundary check of `message` arriving at replica `at`.
    fn verify(
        &mut self,
        at: ReplicaId,
        message: Message,
        sender: Sender,
    ) -> Result<messages::Verified<Message>, messages::Rejection> {
        match self.signatures {
            Signatures::Trusted => messages::verify(
                message,
                sender,
                &self.committee,
                &self.limits,
                &mut TrustAll,
            ),
            Signatures::Verified => messages::verify(
                message,
                sender,
                &self.committee,
                &self.limits,
                &mut self.caches[at as usize],
            ),
        }
    }

    /// Carries out a replica's outputs: messages are queued, replies and persistence dropped.
    fn collect(&mut self, id: ReplicaId) {
        let mut effects = Queue {
            from: id,
            queue: &mut self.queue,
        };
        let driver = &mut self.replicas[id as usize];
        let Ok(flushed) = driver.flush(&mut effects);
        self.executed[id as usize] += flushed.executed.len() as u64;
        if id == self.committee.primary(driver.replica().view()) {
            self.executed_requests += flushed
                .executed
                .iter()
                .map(|e| e.requests.len() as u64)
                .sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_commit_executes_one_full_batch() {
        let mut cluster = CoreCluster::new(1, 4, 16, 64);
        // The priming batch of one envelope.
        let envelopes = cluster.envelopes();
        assert_eq!(cluster.commit(envelopes), 16);
        for _ in 0..300 {
            let envelopes = cluster.envelopes();
            assert_eq!(cluster.commit(envelopes), 64);
        }
        assert!(cluster
            .replicas
            .iter()
            .all(|r| r.replica().stable_checkpoint() >= 256));
    }

    #[test]
    fn verified_signatures_commit_the_same_batches() {
        let mut cluster = CoreCluster::with_signatures(2, 2, 8, 64, Signatures::Verified);
        let envelopes = cluster.envelopes();
        assert_eq!(cluster.commit(envelopes), 8);
        for _ in 0..20 {
            let envelopes = cluster.envelopes();
            assert_eq!(cluster.commit(envelopes), 16);
        }
        // Every replica verified what it received: its cache holds the signatures it checked.
        assert!(cluster.caches.iter().all(|cache| cache.len() > 20));
    }
}

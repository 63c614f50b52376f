//! Test fixtures (the `test-util` feature): a cluster of replicas with deterministic keys, and
//! builders of validly signed messages made with the real constructors. Shared by the tests of
//! every crate, the simulator and the benchmarks.

use std::time::Duration;

use pbft_crypto::{Digest, Domain, KeyPair, PublicKey, Signature};

use crate::app::KvStore;
use crate::committee::Committee;
use crate::messages::{
    self, Batch, Checkpoint, ClientRequest, Limits, Message, NewView, Phase, PreparedCert,
    Rejection, ReplicaId, RequestEnvelope, Sender, Seq, SignatureCheck, StrictCheck, Verified,
    View, ViewChange, Vote,
};
use crate::protocol::{ProtocolConfig, Replica};

/// The key of replica `i` in every test cluster.
pub fn replica_key(i: usize) -> KeyPair {
    KeyPair::from_seed(&[i as u8 + 1; 32]).expect("every 32-byte seed is a key")
}

/// The key of test client `i`.
pub fn client_key(i: usize) -> KeyPair {
    KeyPair::from_seed(&[100 + i as u8; 32]).expect("every 32-byte seed is a key")
}

/// A digest standing for the state at `seq`.
pub fn state_digest(seq: Seq) -> Digest {
    Digest::of(Domain::Content, &seq.to_le_bytes())
}

/// A request with raw operation bytes.
pub fn request(timestamp: u64, op: &[u8]) -> ClientRequest {
    ClientRequest {
        timestamp,
        op: op.to_vec(),
    }
}

/// A batch of `n` envelopes from clients 0 to n-1, each with two requests.
pub fn batch(n: usize) -> Batch {
    Batch {
        envelopes: (0..n)
            .map(|i| {
                RequestEnvelope::new(
                    &client_key(i),
                    1,
                    vec![request(1, b"put a 1"), request(2, b"get a")],
                )
            })
            .collect(),
    }
}

/// Accepts every signature: for measurements that leave verification out.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustAll;

impl SignatureCheck for TrustAll {
    fn check(&mut self, _: &PublicKey, _: Domain, _: &Digest, _: &Signature) -> bool {
        true
    }
}

/// 3f+1 replicas with the keys of [`replica_key`].
pub struct TestCluster {
    pub keys: Vec<KeyPair>,
    pub committee: Committee,
}

impl TestCluster {
    pub fn new(f: usize) -> TestCluster {
        let keys: Vec<KeyPair> = (0..3 * f + 1).map(replica_key).collect();
        let committee = Committee::new(keys.iter().map(KeyPair::public).collect(), f)
            .expect("3f+1 distinct keys");
        TestCluster { keys, committee }
    }

    pub fn f(&self) -> usize {
        self.committee.f()
    }

    pub fn key(&self, id: ReplicaId) -> &KeyPair {
        &self.keys[id as usize]
    }

    pub fn primary(&self, view: View) -> ReplicaId {
        self.committee.primary(view)
    }

    /// A backup of `view` other than `not`.
    pub fn backup(&self, view: View, not: ReplicaId) -> ReplicaId {
        self.committee
            .ids()
            .find(|&i| i != self.primary(view) && i != not)
            .expect("a cluster has at least three backups")
    }

    /// A replica of this cluster with the default protocol parameters and a key-value store,
    /// started at time zero, its first outputs taken.
    pub fn replica(&self, id: ReplicaId) -> Replica {
        self.replica_with(id, ProtocolConfig::default())
    }

    pub fn replica_with(&self, id: ReplicaId, config: ProtocolConfig) -> Replica {
        let mut replica = Replica::new(
            id,
            self.committee.clone(),
            config,
            self.key(id).clone(),
            Box::new(KvStore::new()),
        )
        .expect("a valid replica");
        replica.start(Duration::ZERO);
        replica.poll_ready();
        replica
    }

    /// Checks `message` from `sender` at the boundary with the strict signature rule.
    pub fn verify(&self, sender: Sender, message: Message) -> Result<Verified<Message>, Rejection> {
        self.verify_with(sender, message, &Limits::default())
    }

    pub fn verify_with(
        &self,
        sender: Sender,
        message: Message,
        limits: &Limits,
    ) -> Result<Verified<Message>, Rejection> {
        messages::verify(message, sender, &self.committee, limits, &mut StrictCheck)
    }

    /// Verifies `message` as sent by replica `from` and hands it to `replica` at `now`.
    pub fn deliver(&self, replica: &mut Replica, now: Duration, from: ReplicaId, message: Message) {
        let verified = self
            .verify(Sender::Replica(from), message)
            .expect("a fixture message passes the boundary");
        replica.handle_message(now, verified);
    }

    pub fn vote(
        &self,
        phase: Phase,
        view: View,
        seq: Seq,
        digest: Digest,
        replica: ReplicaId,
    ) -> Vote {
        Vote::new(self.key(replica), phase, view, seq, digest, replica)
    }

    /// The PRE-PREPARE header of `view`'s primary.
    pub fn header(&self, view: View, seq: Seq, digest: Digest) -> Vote {
        self.vote(Phase::PrePrepare, view, seq, digest, self.primary(view))
    }

    pub fn pre_prepare(&self, view: View, seq: Seq, batch: Batch) -> Message {
        Message::PrePrepare {
            header: self.header(view, seq, batch.digest()),
            batch,
        }
    }

    pub fn prepare(&self, view: View, seq: Seq, digest: Digest, replica: ReplicaId) -> Message {
        Message::Prepare {
            vote: self.vote(Phase::Prepare, view, seq, digest, replica),
            pre_prepare: self.header(view, seq, digest),
        }
    }

    pub fn commit(&self, view: View, seq: Seq, digest: Digest, replica: ReplicaId) -> Message {
        Message::Commit(self.vote(Phase::Commit, view, seq, digest, replica))
    }

    /// `batch` with 2f+1 COMMITs for it from the replicas after the first.
    pub fn committed(&self, view: View, seq: Seq, batch: &Batch) -> Message {
        let commits = (1..=self.committee.quorum() as ReplicaId)
            .map(|r| self.vote(Phase::Commit, view, seq, batch.digest(), r))
            .collect();
        Message::Committed {
            batch: batch.clone(),
            commits,
        }
    }

    /// Replica `replica`'s CHECKPOINT for the state of [`state_digest`].
    pub fn checkpoint(&self, seq: Seq, replica: ReplicaId) -> Checkpoint {
        Checkpoint::new(self.key(replica), seq, state_digest(seq), replica)
    }

    /// 2f+1 matching checkpoints for `seq`.
    pub fn proof(&self, seq: Seq) -> Vec<Checkpoint> {
        (0..self.committee.quorum() as ReplicaId)
            .map(|i| self.checkpoint(seq, i))
            .collect()
    }

    /// A prepared certificate for `digest` at (`view`, `seq`): the primary's PRE-PREPARE and the
    /// PREPAREs of the first 2f backups.
    pub fn prepared(&self, view: View, seq: Seq, digest: Digest) -> PreparedCert {
        let primary = self.primary(view);
        PreparedCert {
            pre_prepare: self.header(view, seq, digest),
            prepares: self
                .committee
                .ids()
                .filter(|&i| i != primary)
                .take(2 * self.f())
                .map(|i| self.vote(Phase::Prepare, view, seq, digest, i))
                .collect(),
        }
    }

    /// Signs `view_change` with its replica's key.
    pub fn sign_view_change(&self, mut view_change: ViewChange) -> ViewChange {
        view_change.sign(self.key(view_change.replica));
        view_change
    }

    /// A VIEW-CHANGE into `new_view` from the initial state with `prepared`.
    pub fn view_change(
        &self,
        replica: ReplicaId,
        new_view: View,
        prepared: Vec<PreparedCert>,
    ) -> ViewChange {
        self.sign_view_change(ViewChange {
            new_view,
            stable_seq: 0,
            checkpoint_proof: Vec::new(),
            prepared,
            replica,
            signature: Signature::EMPTY,
        })
    }

    /// Signs `new_view` with its replica's key.
    pub fn sign_new_view(&self, mut new_view: NewView) -> NewView {
        new_view.sign(self.key(new_view.replica));
        new_view
    }

    /// The NEW-VIEW of `view`'s primary with `view_changes` and the PRE-PREPAREs of `orders`.
    pub fn new_view(
        &self,
        view: View,
        view_changes: Vec<ViewChange>,
        orders: &[(Seq, Digest)],
    ) -> NewView {
        self.sign_new_view(NewView {
            view,
            view_changes,
            pre_prepares: orders
                .iter()
                .map(|(seq, digest)| self.header(view, *seq, *digest))
                .collect(),
            replica: self.primary(view),
            signature: Signature::EMPTY,
        })
    }
}

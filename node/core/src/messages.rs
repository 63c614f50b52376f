//! The wire messages, their canonical signing digests, size limits and boundary validation.
//!
//! A message from the network goes through [`verify`] exactly once, at the boundary: shape and
//! size limits, membership, the signer being the sender, and every signature it carries (nested
//! certificates included). Only then does it become a [`Verified`] value that the protocol core
//! accepts. Checks that need replica state (watermarks, the current view) are the core's.

use pbft_crypto::{Digest, DigestBuilder, Domain, KeyPair, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::committee::Committee;

pub type ReplicaId = u32;
pub type View = u64;
pub type Seq = u64;
pub type Timestamp = u64;

/// One operation of a client, identified by the client's timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub timestamp: Timestamp,
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

/// ⟨REQUEST, o, t, c⟩ for several requests of one client under one signature.
///
/// A client signs one envelope for the requests it has outstanding, so that the cost of a
/// signature is shared by all of them. Timestamps in an envelope are strictly increasing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub client: PublicKey,
    pub requests: Vec<ClientRequest>,
    pub signature: Signature,
}

impl RequestEnvelope {
    /// Builds and signs an envelope.
    pub fn new(key: &KeyPair, requests: Vec<ClientRequest>) -> RequestEnvelope {
        let mut envelope = RequestEnvelope {
            client: key.public(),
            requests,
            signature: Signature::EMPTY,
        };
        envelope.signature = key.sign(Domain::Request, &envelope.signing_digest());
        envelope
    }

    /// What the client's signature covers: its key and every (timestamp, op) in order.
    pub fn signing_digest(&self) -> Digest {
        let mut builder = DigestBuilder::new(Domain::Request)
            .public_key(&self.client)
            .u64(self.requests.len() as u64);
        for request in &self.requests {
            builder = builder.u64(request.timestamp).bytes(&request.op);
        }
        builder.finish()
    }

    pub fn first_timestamp(&self) -> Timestamp {
        self.requests.first().map_or(0, |r| r.timestamp)
    }

    pub fn last_timestamp(&self) -> Timestamp {
        self.requests.last().map_or(0, |r| r.timestamp)
    }

    fn payload_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.op.len() + 8).sum::<usize>() + 96
    }
}

/// The requests the primary orders at one sequence number. An empty batch is the null request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub envelopes: Vec<RequestEnvelope>,
}

impl Batch {
    /// The null request that fills sequence-number gaps after a view change.
    pub fn null() -> Batch {
        Batch::default()
    }

    /// `d` in ⟨PRE-PREPARE, v, n, d⟩: covers every envelope's signed content.
    pub fn digest(&self) -> Digest {
        Batch::digest_of(&self.envelope_digests())
    }

    /// The signing digest of every envelope, in order.
    pub fn envelope_digests(&self) -> Vec<Digest> {
        self.envelopes
            .iter()
            .map(RequestEnvelope::signing_digest)
            .collect()
    }

    /// The batch digest from the envelopes' signing digests (hashing each envelope only once).
    pub fn digest_of(envelope_digests: &[Digest]) -> Digest {
        let mut builder = DigestBuilder::new(Domain::Content)
            .u8(b'B')
            .u64(envelope_digests.len() as u64);
        for digest in envelope_digests {
            builder = builder.digest(digest);
        }
        builder.finish()
    }

    pub fn request_count(&self) -> usize {
        self.envelopes.iter().map(|e| e.requests.len()).sum()
    }
}

/// The three ordering phases, which share one signed shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    PrePrepare,
    Prepare,
    Commit,
}

impl Phase {
    fn domain(self) -> Domain {
        match self {
            Phase::PrePrepare => Domain::PrePrepare,
            Phase::Prepare => Domain::Prepare,
            Phase::Commit => Domain::Commit,
        }
    }
}

/// ⟨PRE-PREPARE | PREPARE | COMMIT, v, n, d, i⟩ signed by replica `i`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub phase: Phase,
    pub view: View,
    pub seq: Seq,
    pub digest: Digest,
    pub replica: ReplicaId,
    pub signature: Signature,
}

impl Vote {
    pub fn new(
        key: &KeyPair,
        phase: Phase,
        view: View,
        seq: Seq,
        digest: Digest,
        replica: ReplicaId,
    ) -> Vote {
        let mut vote = Vote {
            phase,
            view,
            seq,
            digest,
            replica,
            signature: Signature::EMPTY,
        };
        vote.signature = key.sign(phase.domain(), &vote.signing_digest());
        vote
    }

    pub fn signing_digest(&self) -> Digest {
        DigestBuilder::new(self.phase.domain())
            .u64(self.view)
            .u64(self.seq)
            .digest(&self.digest)
            .u32(self.replica)
            .finish()
    }

    fn check_signature(
        &self,
        committee: &Committee,
        checker: &mut dyn SignatureCheck,
    ) -> Result<(), Rejection> {
        let key = committee
            .key(self.replica)
            .ok_or(Rejection::UnknownReplica)?;
        checker
            .check(
                key,
                self.phase.domain(),
                &self.signing_digest(),
                &self.signature,
            )
            .then_some(())
            .ok_or(Rejection::BadSignature)
    }
}

/// ⟨REPLY, v, t, c, i, r⟩ for every request of one client executed in one batch.
///
/// Replies are not signed: they travel on a channel authenticated to the replica that sent them,
/// and a client never shows a reply to anyone else, so no transferable proof is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub view: View,
    pub replica: ReplicaId,
    pub client: PublicKey,
    pub results: Vec<RequestResult>,
}

/// The result of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestResult {
    pub timestamp: Timestamp,
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// ⟨CHECKPOINT, n, d, i⟩: replica `i`'s state digest after executing sequence number `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: Seq,
    pub state_digest: Digest,
    pub replica: ReplicaId,
    pub signature: Signature,
}

impl Checkpoint {
    pub fn new(key: &KeyPair, seq: Seq, state_digest: Digest, replica: ReplicaId) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            seq,
            state_digest,
            replica,
            signature: Signature::EMPTY,
        };
        checkpoint.signature = key.sign(Domain::Checkpoint, &checkpoint.signing_digest());
        checkpoint
    }

    pub fn signing_digest(&self) -> Digest {
        DigestBuilder::new(Domain::Checkpoint)
            .u64(self.seq)
            .digest(&self.state_digest)
            .u32(self.replica)
            .finish()
    }

    fn check_signature(
        &self,
        committee: &Committee,
        checker: &mut dyn SignatureCheck,
    ) -> Result<(), Rejection> {
        let key = committee
            .key(self.replica)
            .ok_or(Rejection::UnknownReplica)?;
        checker
            .check(
                key,
                Domain::Checkpoint,
                &self.signing_digest(),
                &self.signature,
            )
            .then_some(())
            .ok_or(Rejection::BadSignature)
    }
}

/// A PRE-PREPARE with 2f matching PREPAREs from distinct backups: proof that the request was
/// prepared in `pre_prepare.view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    pub pre_prepare: Vote,
    pub prepares: Vec<Vote>,
}

impl PreparedCert {
    pub fn seq(&self) -> Seq {
        self.pre_prepare.seq
    }

    pub fn view(&self) -> View {
        self.pre_prepare.view
    }

    pub fn digest(&self) -> Digest {
        self.pre_prepare.digest
    }

    fn hash_into(&self, mut builder: DigestBuilder) -> DigestBuilder {
        builder = hash_vote(builder, &self.pre_prepare).u64(self.prepares.len() as u64);
        for prepare in &self.prepares {
            builder = hash_vote(builder, prepare);
        }
        builder
    }

    fn verify(
        &self,
        committee: &Committee,
        checker: &mut dyn SignatureCheck,
    ) -> Result<(), Rejection> {
        let pp = &self.pre_prepare;
        if pp.phase != Phase::PrePrepare || pp.replica != committee.primary(pp.view) {
            return Err(Rejection::InvalidCertificate(
                "pre-prepare not from that view's primary",
            ));
        }
        if self.prepares.len() != 2 * committee.f() {
            return Err(Rejection::InvalidCertificate(
                "a prepared certificate holds exactly 2f prepares",
            ));
        }
        let mut seen = Vec::with_capacity(self.prepares.len());
        for prepare in &self.prepares {
            if prepare.phase != Phase::Prepare
                || prepare.view != pp.view
                || prepare.seq != pp.seq
                || prepare.digest != pp.digest
            {
                return Err(Rejection::InvalidCertificate(
                    "prepare does not match its pre-prepare",
                ));
            }
            if prepare.replica == pp.replica || seen.contains(&prepare.replica) {
                return Err(Rejection::InvalidCertificate(
                    "prepares must come from distinct backups",
                ));
            }
            seen.push(prepare.replica);
        }
        pp.check_signature(committee, checker)?;
        for prepare in &self.prepares {
            prepare.check_signature(committee, checker)?;
        }
        Ok(())
    }
}

fn hash_vote(builder: DigestBuilder, vote: &Vote) -> DigestBuilder {
    builder
        .digest(&vote.signing_digest())
        .bytes(&vote.signature.0)
}

fn hash_checkpoint(builder: DigestBuilder, checkpoint: &Checkpoint) -> DigestBuilder {
    builder
        .digest(&checkpoint.signing_digest())
        .bytes(&checkpoint.signature.0)
}

/// ⟨VIEW-CHANGE, v+1, n, C, P, i⟩: replica `i` moves to `new_view`; its last stable checkpoint is
/// `stable_seq` with proof `checkpoint_proof` (2f+1 matching CHECKPOINTs, empty for the initial
/// state at 0), and `prepared` holds a certificate for every request prepared above it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    pub new_view: View,
    pub stable_seq: Seq,
    pub checkpoint_proof: Vec<Checkpoint>,
    pub prepared: Vec<PreparedCert>,
    pub replica: ReplicaId,
    pub signature: Signature,
}

impl ViewChange {
    pub fn signing_digest(&self) -> Digest {
        let mut builder = DigestBuilder::new(Domain::ViewChange)
            .u64(self.new_view)
            .u64(self.stable_seq)
            .u32(self.replica)
            .u64(self.checkpoint_proof.len() as u64);
        for checkpoint in &self.checkpoint_proof {
            builder = hash_checkpoint(builder, checkpoint);
        }
        builder = builder.u64(self.prepared.len() as u64);
        for cert in &self.prepared {
            builder = cert.hash_into(builder);
        }
        builder.finish()
    }

    pub fn sign(&mut self, key: &KeyPair) {
        self.signature = key.sign(Domain::ViewChange, &self.signing_digest());
    }

    /// The state digest certified for `stable_seq`, or `None` for the initial state.
    pub fn stable_digest(&self) -> Option<Digest> {
        self.checkpoint_proof.first().map(|c| c.state_digest)
    }

    fn verify(
        &self,
        committee: &Committee,
        limits: &Limits,
        checker: &mut dyn SignatureCheck,
    ) -> Result<(), Rejection> {
        if self.new_view == 0 {
            return Err(Rejection::InvalidCertificate("no view change into view 0"));
        }
        verify_checkpoint_proof(self.stable_seq, &self.checkpoint_proof, committee, checker)?;
        if self.prepared.len() as u64 > limits.log_window {
            return Err(Rejection::TooLarge("prepared certificates"));
        }
        let mut last_seq = self.stable_seq;
        for cert in &self.prepared {
            // Sorted, distinct, inside (h, h + L], and from earlier views.
            if cert.seq() <= last_seq
                || cert.seq() > self.stable_seq.saturating_add(limits.log_window)
            {
                return Err(Rejection::InvalidCertificate(
                    "prepared sequence numbers out of order or outside the window",
                ));
            }
            if cert.view() >= self.new_view {
                return Err(Rejection::InvalidCertificate(
                    "prepared certificate not from an earlier view",
                ));
            }
            last_seq = cert.seq();
        }
        let key = committee
            .key(self.replica)
            .ok_or(Rejection::UnknownReplica)?;
        if !checker.check(
            key,
            Domain::ViewChange,
            &self.signing_digest(),
            &self.signature,
        ) {
            return Err(Rejection::BadSignature);
        }
        for cert in &self.prepared {
            cert.verify(committee, checker)?;
        }
        Ok(())
    }
}

/// Checks that `proof` is 2f+1 valid CHECKPOINTs from distinct replicas for `seq` with one digest,
/// or empty for the initial state at sequence number 0.
pub fn verify_checkpoint_proof(
    seq: Seq,
    proof: &[Checkpoint],
    committee: &Committee,
    checker: &mut dyn SignatureCheck,
) -> Result<(), Rejection> {
    if seq == 0 && proof.is_empty() {
        return Ok(());
    }
    if proof.len() != committee.quorum() {
        return Err(Rejection::InvalidCertificate(
            "a checkpoint proof holds exactly 2f+1 checkpoints",
        ));
    }
    let digest = proof[0].state_digest;
    let mut seen = Vec::with_capacity(proof.len());
    for checkpoint in proof {
        if checkpoint.seq != seq || checkpoint.state_digest != digest {
            return Err(Rejection::InvalidCertificate(
                "checkpoints in a proof must match",
            ));
        }
        if seen.contains(&checkpoint.replica) {
            return Err(Rejection::InvalidCertificate(
                "checkpoint proof repeats a replica",
            ));
        }
        seen.push(checkpoint.replica);
    }
    for checkpoint in proof {
        checkpoint.check_signature(committee, checker)?;
    }
    Ok(())
}

/// Checks that `commits` are 2f+1 valid COMMITs from distinct replicas for one view, sequence
/// number and digest.
pub fn verify_commit_certificate(
    commits: &[Vote],
    committee: &Committee,
    checker: &mut dyn SignatureCheck,
) -> Result<(), Rejection> {
    if commits.len() != committee.quorum() {
        return Err(Rejection::InvalidCertificate(
            "a commit certificate holds exactly 2f+1 commits",
        ));
    }
    let first = &commits[0];
    let mut seen = Vec::with_capacity(commits.len());
    for commit in commits {
        if commit.phase != Phase::Commit
            || commit.view != first.view
            || commit.seq != first.seq
            || commit.digest != first.digest
        {
            return Err(Rejection::InvalidCertificate(
                "commits in a certificate must match",
            ));
        }
        if seen.contains(&commit.replica) {
            return Err(Rejection::InvalidCertificate(
                "commit certificate repeats a replica",
            ));
        }
        seen.push(commit.replica);
    }
    for commit in commits {
        commit.check_signature(committee, checker)?;
    }
    Ok(())
}

/// ⟨NEW-VIEW, v+1, V, O⟩ from the new primary: 2f+1 VIEW-CHANGEs and the PRE-PREPAREs computed
/// from them (each signed on its own, since they later appear in prepared certificates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    pub view: View,
    pub view_changes: Vec<ViewChange>,
    pub pre_prepares: Vec<Vote>,
    pub replica: ReplicaId,
    pub signature: Signature,
}

impl NewView {
    pub fn signing_digest(&self) -> Digest {
        let mut builder = DigestBuilder::new(Domain::NewView)
            .u64(self.view)
            .u32(self.replica)
            .u64(self.view_changes.len() as u64);
        for view_change in &self.view_changes {
            builder = builder
                .digest(&view_change.signing_digest())
                .bytes(&view_change.signature.0);
        }
        builder = builder.u64(self.pre_prepares.len() as u64);
        for pre_prepare in &self.pre_prepares {
            builder = hash_vote(builder, pre_prepare);
        }
        builder.finish()
    }

    pub fn sign(&mut self, key: &KeyPair) {
        self.signature = key.sign(Domain::NewView, &self.signing_digest());
    }
}

/// What a replica reports about itself to a status query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Echo of the query's nonce.
    pub nonce: u64,
    pub replica: ReplicaId,
    pub view: View,
    /// False while a view change is in progress.
    pub view_active: bool,
    pub primary: ReplicaId,
    pub last_executed: Seq,
    pub stable_checkpoint: Seq,
    pub state_digest: Digest,
    /// Replicas this one currently has a working link to.
    pub connected_peers: Vec<ReplicaId>,
    /// Messages refused, by reason label, at the boundary and in the core.
    pub rejected: Vec<(String, u64)>,
    /// Replicas this one holds signed proof of equivocation against.
    pub evidence_against: Vec<ReplicaId>,
    /// The named faulty behaviour this node runs, if any.
    pub behavior: Option<String>,
    pub pending_requests: u64,
    pub committed_requests: u64,
}

/// Every message replicas and clients exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Request(RequestEnvelope),
    PrePrepare {
        header: Vote,
        batch: Batch,
    },
    /// A backup's PREPARE, carrying the primary's signed PRE-PREPARE header it answers: a peer
    /// that accepted another header for the same view and number holds proof that the primary
    /// equivocated, and a peer that missed the PRE-PREPARE learns what to fetch.
    Prepare {
        vote: Vote,
        pre_prepare: Vote,
    },
    Commit(Vote),
    Reply(Reply),
    Checkpoint(Checkpoint),
    ViewChange(ViewChange),
    NewView(NewView),
    /// Asks for the batch with `digest` ordered at `seq` (after a view change, or when a
    /// replica saw the commits but not the PRE-PREPARE).
    FetchBatch {
        seq: Seq,
        digest: Digest,
        replica: ReplicaId,
    },
    /// A batch body; the receiver checks it against the digest it is waiting for.
    BatchData {
        seq: Seq,
        batch: Batch,
    },
    /// A replica's position, sent periodically so that peers ahead of it can help it catch up.
    /// Unsigned: the authenticated channel names the sender.
    Status {
        replica: ReplicaId,
        view: View,
        last_executed: Seq,
    },
    /// A batch with 2f+1 matching COMMITs for it: proof that it is committed at `seq`, for a
    /// replica that missed the ordering messages.
    Committed {
        batch: Batch,
        commits: Vec<Vote>,
    },
    /// A client (or operator tool) asks a replica for its [`NodeStatus`]; answered by the
    /// node's runtime, never by the protocol core.
    StatusQuery {
        nonce: u64,
    },
    /// A replica's answer to a [`Message::StatusQuery`]. Unsigned, like replies.
    StatusReport(NodeStatus),
    /// Asks for the application state at the stable checkpoint `seq`.
    FetchState {
        seq: Seq,
        replica: ReplicaId,
    },
    /// The state at checkpoint `seq`, with the proof that it is stable. The receiver checks the
    /// snapshot's digest against the proof before installing it.
    StateData {
        seq: Seq,
        proof: Vec<Checkpoint>,
        #[serde(with = "serde_bytes")]
        snapshot: Vec<u8>,
    },
}

impl Message {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare { .. } => "pre-prepare",
            Message::Prepare { .. } => "prepare",
            Message::Commit(_) => "commit",
            Message::Reply(_) => "reply",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(_) => "view-change",
            Message::NewView(_) => "new-view",
            Message::FetchBatch { .. } => "fetch-batch",
            Message::BatchData { .. } => "batch-data",
            Message::FetchState { .. } => "fetch-state",
            Message::Status { .. } => "status",
            Message::StatusQuery { .. } => "status-query",
            Message::StatusReport(_) => "status-report",
            Message::Committed { .. } => "committed",
            Message::StateData { .. } => "state-data",
        }
    }

    /// Decodes a message with the byte limit of `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, crate::codec::CodecError> {
        crate::codec::decode(bytes, limits.max_message_bytes)
    }

    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }
}

/// Size limits that every message is checked against before anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message accepted (state transfer included).
    pub max_message_bytes: u64,
    /// Most requests in one envelope.
    pub max_envelope_requests: usize,
    /// Most bytes of one operation.
    pub max_op_bytes: usize,
    /// Most envelopes in one batch.
    pub max_batch_envelopes: usize,
    /// Most payload bytes in one batch.
    pub max_batch_bytes: usize,
    /// L: how far above the low watermark sequence numbers may go.
    pub log_window: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_envelope_requests: 1024,
            max_op_bytes: 64 << 10,
            max_batch_envelopes: 4096,
            max_batch_bytes: 8 << 20,
            log_window: 256,
        }
    }
}

/// Why a message was refused at the boundary; a counter label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("undecodable")]
    Undecodable,
    #[error("signature invalid")]
    BadSignature,
    #[error("sender is not a replica of the cluster")]
    UnknownReplica,
    #[error("signed by a replica other than the sender")]
    WrongSender,
    #[error("not from the primary of its view")]
    NotFromPrimary,
    #[error("batch does not match its digest")]
    DigestMismatch,
    #[error("too large: {0}")]
    TooLarge(&'static str),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(&'static str),
    #[error("only replicas may send this message")]
    NotFromReplica,
}

impl Rejection {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Undecodable => "undecodable",
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownReplica => "unknown_replica",
            Rejection::WrongSender => "wrong_sender",
            Rejection::NotFromPrimary => "not_from_primary",
            Rejection::DigestMismatch => "digest_mismatch",
            Rejection::TooLarge(_) => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::InvalidCertificate(_) => "invalid_certificate",
            Rejection::NotFromReplica => "not_from_replica",
        }
    }
}

/// Decides whether one signature is valid. Implementations must give the same answer as
/// [`PublicKey::verify`]; they may remember answers so each signature is checked once.
pub trait SignatureCheck {
    fn check(
        &mut self,
        key: &PublicKey,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> bool;
}

/// Checks every signature, remembering nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct StrictCheck;

impl SignatureCheck for StrictCheck {
    fn check(
        &mut self,
        key: &PublicKey,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> bool {
        key.verify(domain, digest, signature).is_ok()
    }
}

/// Who a message arrived from, as the authenticated channel says.
#[allow(clippy::large_enum_variant)] // built once per received message, never stored in bulk
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    Replica(ReplicaId),
    Client(PublicKey),
}

/// A message that passed [`verify`]. Only this module can make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
    /// The signing digests of the client envelopes the message carries, in order, as computed
    /// while checking their signatures, so the core does not hash them again.
    envelope_digests: Vec<Digest>,
}

impl<T> Verified<T> {
    fn checked(value: T, envelope_digests: Vec<Digest>) -> Verified<T> {
        Verified {
            value,
            envelope_digests,
        }
    }

    pub fn get(&self) -> &T {
        &self.value
    }

    pub fn into_inner(self) -> T {
        self.value
    }

    /// The message and the signing digests of the client envelopes it carries (empty for a
    /// message that carries none).
    pub fn into_parts(self) -> (T, Vec<Digest>) {
        (self.value, self.envelope_digests)
    }

    /// For messages this replica built and signed itself.
    pub(crate) fn own(value: T) -> Verified<T> {
        Verified::checked(value, Vec::new())
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Checks a client's envelope: shape, limits and the client's signature.
pub fn verify_envelope(
    envelope: RequestEnvelope,
    limits: &Limits,
    checker: &mut dyn SignatureCheck,
) -> Result<Verified<RequestEnvelope>, Rejection> {
    check_envelope_shape(&envelope, limits)?;
    let digest = envelope.signing_digest();
    if !checker.check(
        &envelope.client,
        Domain::Request,
        &digest,
        &envelope.signature,
    ) {
        return Err(Rejection::BadSignature);
    }
    Ok(Verified::checked(envelope, vec![digest]))
}

fn check_envelope_shape(envelope: &RequestEnvelope, limits: &Limits) -> Result<(), Rejection> {
    if envelope.requests.is_empty() {
        return Err(Rejection::Malformed("empty request envelope"));
    }
    if envelope.requests.len() > limits.max_envelope_requests {
        return Err(Rejection::TooLarge("requests in an envelope"));
    }
    let mut last = 0;
    for request in &envelope.requests {
        if request.op.len() > limits.max_op_bytes {
            return Err(Rejection::TooLarge("operation"));
        }
        if request.timestamp <= last {
            return Err(Rejection::Malformed(
                "timestamps in an envelope must be positive and increasing",
            ));
        }
        last = request.timestamp;
    }
    Ok(())
}

/// Checks a batch's shape and every client signature in it; returns its envelopes' signing
/// digests.
fn verify_batch(
    batch: &Batch,
    limits: &Limits,
    checker: &mut dyn SignatureCheck,
) -> Result<Vec<Digest>, Rejection> {
    let digests = batch.envelope_digests();
    check_batch(batch, &digests, limits, checker)?;
    Ok(digests)
}

/// Checks a batch's shape and every client signature, given its envelopes' signing digests.
fn check_batch(
    batch: &Batch,
    digests: &[Digest],
    limits: &Limits,
    checker: &mut dyn SignatureCheck,
) -> Result<(), Rejection> {
    if batch.envelopes.len() > limits.max_batch_envelopes {
        return Err(Rejection::TooLarge("envelopes in a batch"));
    }
    let bytes: usize = batch
        .envelopes
        .iter()
        .map(RequestEnvelope::payload_bytes)
        .sum();
    if bytes > limits.max_batch_bytes {
        return Err(Rejection::TooLarge("batch bytes"));
    }
    for (envelope, digest) in batch.envelopes.iter().zip(digests) {
        check_envelope_shape(envelope, limits)?;
        if !checker.check(
            &envelope.client,
            Domain::Request,
            digest,
            &envelope.signature,
        ) {
            return Err(Rejection::BadSignature);
        }
    }
    Ok(())
}

/// Validates a message that arrived from `sender` before the core sees it: limits, membership,
/// the signer is the sender, the primary of the view sent a PRE-PREPARE or NEW-VIEW, digests match
/// content, and every signature in it (nested certificates included) is valid.
pub fn verify(
    message: Message,
    sender: Sender,
    committee: &Committee,
    limits: &Limits,
    checker: &mut dyn SignatureCheck,
) -> Result<Verified<Message>, Rejection> {
    let from = match (&message, sender) {
        (Message::Request(_) | Message::StatusQuery { .. }, _) => None,
        (_, Sender::Replica(id)) if committee.key(id).is_some() => Some(id),
        (_, Sender::Replica(_)) => return Err(Rejection::UnknownReplica),
        (_, Sender::Client(_)) => return Err(Rejection::NotFromReplica),
    };
    let signed_by = |replica: ReplicaId| -> Result<(), Rejection> {
        match from {
            Some(id) if id == replica => Ok(()),
            _ => Err(Rejection::WrongSender),
        }
    };
    let mut envelope_digests = Vec::new();
    match &message {
        Message::Request(envelope) => {
            if let Sender::Client(client) = sender {
                if client != envelope.client {
                    return Err(Rejection::WrongSender);
                }
            }
            check_envelope_shape(envelope, limits)?;
            let digest = envelope.signing_digest();
            if !checker.check(
                &envelope.client,
                Domain::Request,
                &digest,
                &envelope.signature,
            ) {
                return Err(Rejection::BadSignature);
            }
            envelope_digests.push(digest);
        }
        Message::PrePrepare { header, batch } => {
            signed_by(header.replica)?;
            if header.phase != Phase::PrePrepare {
                return Err(Rejection::Malformed("phase does not match message"));
            }
            if header.replica != committee.primary(header.view) {
                return Err(Rejection::NotFromPrimary);
            }
            let digests = batch.envelope_digests();
            if Batch::digest_of(&digests) != header.digest {
                return Err(Rejection::DigestMismatch);
            }
            header.check_signature(committee, checker)?;
            check_batch(batch, &digests, limits, checker)?;
            envelope_digests = digests;
        }
        Message::Prepare { vote, pre_prepare } => {
            signed_by(vote.replica)?;
            if vote.phase != Phase::Prepare || pre_prepare.phase != Phase::PrePrepare {
                return Err(Rejection::Malformed("phase does not match message"));
            }
            if vote.replica == committee.primary(vote.view) {
                return Err(Rejection::Malformed("the primary sends no prepare"));
            }
            if pre_prepare.replica != committee.primary(vote.view)
                || pre_prepare.view != vote.view
                || pre_prepare.seq != vote.seq
                || pre_prepare.digest != vote.digest
            {
                return Err(Rejection::Malformed(
                    "prepare does not match the pre-prepare it carries",
                ));
            }
            vote.check_signature(committee, checker)?;
            pre_prepare.check_signature(committee, checker)?;
        }
        Message::Commit(vote) => {
            signed_by(vote.replica)?;
            if vote.phase != Phase::Commit {
                return Err(Rejection::Malformed("phase does not match message"));
            }
            vote.check_signature(committee, checker)?;
        }
        Message::Checkpoint(checkpoint) => {
            signed_by(checkpoint.replica)?;
            checkpoint.check_signature(committee, checker)?;
        }
        Message::ViewChange(view_change) => {
            signed_by(view_change.replica)?;
            view_change.verify(committee, limits, checker)?;
        }
        Message::NewView(new_view) => {
            signed_by(new_view.replica)?;
            if new_view.replica != committee.primary(new_view.view) {
                return Err(Rejection::NotFromPrimary);
            }
            if new_view.view_changes.len() < committee.quorum()
                || new_view.view_changes.len() > committee.n()
            {
                return Err(Rejection::InvalidCertificate(
                    "a new view carries 2f+1 view changes",
                ));
            }
            if new_view.pre_prepares.len() as u64 > limits.log_window {
                return Err(Rejection::TooLarge("pre-prepares in a new view"));
            }
            let mut senders = Vec::new();
            for view_change in &new_view.view_changes {
                if view_change.new_view != new_view.view || senders.contains(&view_change.replica) {
                    return Err(Rejection::InvalidCertificate(
                        "view changes must be for this view, from distinct replicas",
                    ));
                }
                senders.push(view_change.replica);
            }
            for pre_prepare in &new_view.pre_prepares {
                if pre_prepare.phase != Phase::PrePrepare
                    || pre_prepare.view != new_view.view
                    || pre_prepare.replica != new_view.replica
                {
                    return Err(Rejection::InvalidCertificate(
                        "new-view pre-prepares belong to the new view's primary",
                    ));
                }
            }
            let key = committee
                .key(new_view.replica)
                .ok_or(Rejection::UnknownReplica)?;
            if !checker.check(
                key,
                Domain::NewView,
                &new_view.signing_digest(),
                &new_view.signature,
            ) {
                return Err(Rejection::BadSignature);
            }
            for view_change in &new_view.view_changes {
                view_change.verify(committee, limits, checker)?;
            }
            for pre_prepare in &new_view.pre_prepares {
                pre_prepare.check_signature(committee, checker)?;
            }
        }
        Message::Reply(_) | Message::StatusReport(_) => {
            return Err(Rejection::Malformed("replicas do not accept replies"))
        }
        Message::StatusQuery { .. } => {}
        Message::Committed { batch, commits } => {
            verify_commit_certificate(commits, committee, checker)?;
            let digests = verify_batch(batch, limits, checker)?;
            if Batch::digest_of(&digests) != commits[0].digest {
                return Err(Rejection::DigestMismatch);
            }
            envelope_digests = digests;
        }
        Message::FetchBatch { replica, .. }
        | Message::FetchState { replica, .. }
        | Message::Status { replica, .. } => {
            // Unsigned: the authenticated channel names the asker.
            signed_by(*replica)?;
        }
        Message::BatchData { batch, .. } => {
            // Used only if its digest is one the receiver is waiting for (the core checks); its
            // requests are checked like a PRE-PREPARE's.
            envelope_digests = verify_batch(batch, limits, checker)?;
        }
        Message::StateData { seq, proof, .. } => {
            verify_checkpoint_proof(*seq, proof, committee, checker)?;
            if *seq == 0 {
                return Err(Rejection::Malformed(
                    "the initial state is never transferred",
                ));
            }
        }
    }
    Ok(Verified::checked(message, envelope_digests))
}

/// Verifies a reply's shape for a client; the channel already authenticated `replica`.
pub fn check_reply(reply: &Reply, from: ReplicaId, committee: &Committee) -> Result<(), Rejection> {
    if committee.key(from).is_none() {
        return Err(Rejection::UnknownReplica);
    }
    if reply.replica != from {
        return Err(Rejection::WrongSender);
    }
    Ok(())
}

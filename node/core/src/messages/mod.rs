//! The wire messages, their canonical signing digests, size limits and boundary validation.
//!
//! A message from the network goes through [`verify`] exactly once, at the boundary: shape and
//! size limits, membership, the signer being the sender, and every signature it carries (nested
//! certificates included). Only then does it become a [`Verified`] value that the protocol core
//! accepts. Checks that need replica state (watermarks, the current view) are the core's.
//!
//! Each kind of message lives in its own file with its signing digest and its `verify_*`
//! function; [`verify`] picks the one for a message.

mod certificate;
mod checkpoint;
mod request;
pub mod state;
mod status;
mod view_change;
mod vote;

use std::collections::HashMap;

use pbft_crypto::{ClusterId, Digest, Domain, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::committee::{Committee, Fingerprint};

pub use certificate::PreparedCert;
pub use checkpoint::Checkpoint;
pub use request::{
    check_reply, verify_envelope, Batch, ClientRequest, Outcome, ReadRequest, Reply,
    RequestEnvelope, RequestResult, SessionId, SessionKey,
};
pub use status::NodeStatus;
pub use view_change::{NewView, ViewChange};
pub use vote::{Phase, Vote};

pub use crate::ids::{ReplicaId, Seq, Timestamp, View};

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
        /// The sender's configuration, which must be the receiver's.
        fingerprint: Fingerprint,
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
    /// The layout of the state at checkpoint `seq` (see [`state`]): the digest of each
    /// partition, with the proof that the checkpoint is stable, whose digest covers them.
    StateManifest {
        seq: Seq,
        proof: Vec<Checkpoint>,
        partitions: Vec<Digest>,
    },
    /// A client's read-only request, to every replica.
    Read(ReadRequest),
    /// Asks for piece `piece` of partition `partition` of the state at checkpoint `seq`.
    FetchStateChunk {
        seq: Seq,
        partition: u32,
        piece: u64,
        replica: ReplicaId,
    },
    /// Piece `piece` of partition `partition` of the state at checkpoint `seq`, whose encoding
    /// is `len` bytes long, from `replica`. The receiver checks the partition against the
    /// manifest it holds once it has every piece, all from the replica it asked.
    StateChunk {
        seq: Seq,
        replica: ReplicaId,
        partition: u32,
        piece: u64,
        len: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

impl Message {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::Read(_) => "read",
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
            Message::StateManifest { .. } => "state-manifest",
            Message::FetchStateChunk { .. } => "fetch-state-chunk",
            Message::StateChunk { .. } => "state-chunk",
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

/// Size limits that every message is checked against before anything else: the
/// `[protocol.limits]` table of a node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// L: how far above the low watermark sequence numbers may go. Always the protocol's
    /// `log_window`, which [`crate::protocol::ProtocolConfig::checked`] copies here.
    #[serde(skip)]
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

/// Bytes a message adds around the one envelope a client's request carries (its variant tag,
/// with room to spare).
const CLIENT_MESSAGE_OVERHEAD: usize = 64;
/// Bytes a read adds to its operation (client key, session, timestamp, lengths), with room.
const READ_OVERHEAD: usize = 256;

impl Limits {
    /// The largest message a correct client sends: one request envelope as large as a batch
    /// may be (a larger envelope is refused anyway), or a read of one operation.
    pub fn max_client_message_bytes(&self) -> u64 {
        let largest = self
            .max_batch_bytes
            .max(self.max_op_bytes.saturating_add(READ_OVERHEAD))
            .saturating_add(CLIENT_MESSAGE_OVERHEAD);
        (largest as u64).min(self.max_message_bytes)
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
    #[error("signed by a client key the cluster does not serve")]
    ClientNotAdmitted,
    #[error("the sender's configuration differs from this replica's: {0}")]
    ConfigMismatch(&'static str),
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
            Rejection::ClientNotAdmitted => "client_not_admitted",
            Rejection::ConfigMismatch(_) => "config_mismatch",
        }
    }
}

/// Decides whether one signature is valid. Implementations must give the same answer as
/// [`PublicKey::verify`]; they may remember answers so each signature is checked once.
pub trait SignatureCheck {
    fn check(
        &mut self,
        cluster: &ClusterId,
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
        cluster: &ClusterId,
        key: &PublicKey,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> bool {
        key.verify(cluster, domain, digest, signature).is_ok()
    }
}

/// One signature check: the cluster, the key, what was signed, and the signature.
pub type SignatureQuestion = (ClusterId, PublicKey, Domain, Digest, Signature);

/// Answers of signature checks remembered, so each signature is verified once however often it
/// is forwarded or retransmitted. Bounded: two generations of at most
/// [`SignatureCache::GENERATION`] answers each; when the newer fills up, the older is dropped.
#[derive(Debug, Default)]
pub struct SignatureCache {
    current: HashMap<SignatureQuestion, bool>,
    previous: HashMap<SignatureQuestion, bool>,
}

impl SignatureCache {
    pub const GENERATION: usize = 1 << 17;

    /// The remembered answer, if any.
    pub fn get(&self, question: &SignatureQuestion) -> Option<bool> {
        self.current
            .get(question)
            .or_else(|| self.previous.get(question))
            .copied()
    }

    /// Answers remembered, in both generations.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers an answer.
    pub fn insert(&mut self, question: SignatureQuestion, valid: bool) {
        if self.current.len() >= SignatureCache::GENERATION {
            // The older generation's table is cleared and reused: a fresh one would grow
            // through every size again, on newly faulted pages.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(question, valid);
    }
}

/// Where answers of signature checks are remembered: a [`SignatureCache`], or one shared by
/// threads behind a lock (taken for the lookup and the insert, never for the verification).
/// Each is a [`SignatureCheck`] that verifies only what it does not remember.
pub trait RememberedAnswers {
    fn recall(&self, question: &SignatureQuestion) -> Option<bool>;
    fn remember(&mut self, question: SignatureQuestion, valid: bool);
}

impl RememberedAnswers for SignatureCache {
    fn recall(&self, question: &SignatureQuestion) -> Option<bool> {
        self.get(question)
    }

    fn remember(&mut self, question: SignatureQuestion, valid: bool) {
        self.insert(question, valid);
    }
}

impl<R: RememberedAnswers> SignatureCheck for R {
    fn check(
        &mut self,
        cluster: &ClusterId,
        key: &PublicKey,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> bool {
        let question = (*cluster, *key, domain, *digest, *signature);
        if let Some(valid) = self.recall(&question) {
            return valid;
        }
        let valid = StrictCheck.check(cluster, key, domain, digest, signature);
        self.remember(question, valid);
        valid
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

/// What every check of one message needs: the cluster, the limits, the signature checker, and
/// the replica the authenticated channel names (none for a client).
struct Check<'a> {
    committee: &'a Committee,
    limits: &'a Limits,
    signatures: &'a mut dyn SignatureCheck,
    from: Option<ReplicaId>,
}

impl Check<'_> {
    /// The message is signed by `replica`, which must be the sender.
    fn signed_by(&self, replica: ReplicaId) -> Result<(), Rejection> {
        match self.from {
            Some(id) if id == replica => Ok(()),
            _ => Err(Rejection::WrongSender),
        }
    }

    /// Checks one signature of replica `replica` over `digest`.
    fn replica_signature(
        &mut self,
        replica: ReplicaId,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> Result<(), Rejection> {
        let key = self
            .committee
            .key(replica)
            .ok_or(Rejection::UnknownReplica)?;
        self.signatures
            .check(self.committee.cluster_id(), key, domain, digest, signature)
            .then_some(())
            .ok_or(Rejection::BadSignature)
    }
}

/// Validates a message that arrived from `sender` before the core sees it: limits, membership,
/// the signer is the sender, the primary of the view sent a PRE-PREPARE or NEW-VIEW, digests match
/// content, and every signature in it (nested certificates included) is valid.
pub fn verify(
    message: Message,
    sender: Sender,
    committee: &Committee,
    limits: &Limits,
    signatures: &mut dyn SignatureCheck,
) -> Result<Verified<Message>, Rejection> {
    let from = match (&message, sender) {
        (Message::Request(_) | Message::Read(_) | Message::StatusQuery { .. }, _) => None,
        (_, Sender::Replica(id)) if committee.key(id).is_some() => Some(id),
        (_, Sender::Replica(_)) => return Err(Rejection::UnknownReplica),
        (_, Sender::Client(_)) => return Err(Rejection::NotFromReplica),
    };
    let mut check = Check {
        committee,
        limits,
        signatures,
        from,
    };
    let envelope_digests = match &message {
        Message::Request(envelope) => vec![request::verify_request(&mut check, envelope, sender)?],
        Message::Read(read) => {
            request::verify_read(&mut check, read, sender)?;
            Vec::new()
        }
        Message::PrePrepare { header, batch } => {
            vote::verify_pre_prepare(&mut check, header, batch)?
        }
        Message::Prepare { vote, pre_prepare } => {
            vote::verify_prepare(&mut check, vote, pre_prepare)?;
            Vec::new()
        }
        Message::Commit(vote) => {
            vote::verify_commit(&mut check, vote)?;
            Vec::new()
        }
        Message::Checkpoint(checkpoint) => {
            checkpoint::verify_checkpoint(&mut check, checkpoint)?;
            Vec::new()
        }
        Message::ViewChange(view_change) => {
            check.signed_by(view_change.replica)?;
            view_change::verify_view_change(&mut check, view_change)?;
            Vec::new()
        }
        Message::NewView(new_view) => {
            view_change::verify_new_view(&mut check, new_view)?;
            Vec::new()
        }
        Message::Reply(_) | Message::StatusReport(_) => {
            return Err(Rejection::Malformed("replicas do not accept replies"))
        }
        Message::StatusQuery { .. } => Vec::new(),
        Message::Committed { batch, commits } => {
            certificate::verify_committed(&mut check, batch, commits)?
        }
        Message::Status {
            replica,
            fingerprint,
            ..
        } => {
            check.signed_by(*replica)?;
            if let Some(part) = committee.fingerprint().difference(fingerprint) {
                return Err(Rejection::ConfigMismatch(part));
            }
            Vec::new()
        }
        Message::FetchBatch { replica, .. }
        | Message::FetchState { replica, .. }
        | Message::FetchStateChunk { replica, .. } => {
            // Unsigned: the authenticated channel names the asker.
            check.signed_by(*replica)?;
            Vec::new()
        }
        // Used only if its digest is one the receiver is waiting for (the core checks); its
        // requests are checked like a PRE-PREPARE's.
        Message::BatchData { batch, .. } => request::verify_batch(&mut check, batch)?,
        Message::StateManifest {
            seq,
            proof,
            partitions,
        } => {
            checkpoint::verify_state_data(&mut check, *seq, proof)?;
            if partitions.is_empty() || partitions.len() > state::MAX_STATE_PARTITIONS {
                return Err(Rejection::Malformed("partition count out of bounds"));
            }
            if state::state_digest(partitions) != proof[0].state_digest {
                return Err(Rejection::DigestMismatch);
            }
            Vec::new()
        }
        // Checked against the manifest by the core.
        Message::StateChunk {
            replica,
            partition,
            piece,
            len,
            data,
            ..
        } => {
            // Unsigned: the authenticated channel names the sender.
            check.signed_by(*replica)?;
            if data.len() > state::STATE_PIECE_BYTES {
                return Err(Rejection::TooLarge("state piece"));
            }
            if *partition as usize >= state::MAX_STATE_PARTITIONS
                || *len > state::MAX_PARTITION_BYTES
                || state::piece_range(*len, *piece).map(|range| range.len()) != Some(data.len())
            {
                return Err(Rejection::Malformed(
                    "state piece does not fit its partition",
                ));
            }
            Vec::new()
        }
    };
    Ok(Verified::checked(message, envelope_digests))
}

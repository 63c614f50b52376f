//! Client requests, batches of them, and replies.

use pbft_crypto::{ClusterId, Digest, DigestBuilder, Domain, PublicKey, Signature, Signer};
use serde::{Deserialize, Serialize};

use crate::committee::Committee;

use super::{
    Check, Limits, Rejection, ReplicaId, Sender, SignatureCheck, Timestamp, Verified, View,
};

/// One operation of a client, identified by the client's timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub timestamp: Timestamp,
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

/// A session of a client: one process's run with the client's key. Processes sharing a key use
/// different sessions, so their timestamps never collide. A session id is the session's start
/// time in milliseconds since the Unix epoch shifted left 20 bits, with random low bits: later
/// sessions have larger ids, which expiry relies on (see
/// [`crate::protocol::ClientTable`]).
pub type SessionId = u64;

/// Who a request belongs to: the client's key and the session it was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub client: PublicKey,
    pub session: SessionId,
}

/// ⟨REQUEST, o, t, c⟩ for several requests of one client session under one signature.
///
/// A client signs one envelope for the requests it has outstanding, so that the cost of a
/// signature is shared by all of them. Timestamps in an envelope are strictly increasing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub client: PublicKey,
    pub session: SessionId,
    pub requests: Vec<ClientRequest>,
    pub signature: Signature,
}

impl RequestEnvelope {
    /// Builds and signs an envelope of `session`.
    pub fn new(key: &Signer, session: SessionId, requests: Vec<ClientRequest>) -> RequestEnvelope {
        let mut envelope = RequestEnvelope {
            client: key.public(),
            session,
            requests,
            signature: Signature::EMPTY,
        };
        envelope.signature = key.sign(Domain::Request, &envelope.signing_digest());
        envelope
    }

    /// The session the envelope belongs to.
    pub fn session_key(&self) -> SessionKey {
        SessionKey {
            client: self.client,
            session: self.session,
        }
    }

    /// What the client's signature covers: its key, the session and every (timestamp, op) in
    /// order.
    pub fn signing_digest(&self) -> Digest {
        let mut builder = DigestBuilder::new(Domain::Request)
            .public_key(&self.client)
            .u64(self.session)
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

    /// The envelope's encoded size: what it adds to a batch. The primary fills batches and
    /// backups check them with this one measure, so an honest batch is never refused as too
    /// large.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_OVERHEAD
            + self
                .requests
                .iter()
                .map(|r| REQUEST_OVERHEAD + r.op.len())
                .sum::<usize>()
    }
}

/// Encoded bytes of an envelope besides its requests: key, session, request count, signature.
const ENVELOPE_OVERHEAD: usize = 32 + 8 + 8 + 64;
/// Encoded bytes of a request besides its operation: timestamp and operation length.
const REQUEST_OVERHEAD: usize = 8 + 8;

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

    /// The bytes its envelopes take encoded.
    pub fn encoded_len(&self) -> usize {
        self.envelopes
            .iter()
            .map(RequestEnvelope::encoded_len)
            .sum()
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

/// A read-only request (TOCS 2002, section 5.1.3): sent to every replica, executed at once on
/// the replica's executed state without ordering, and answered with a read-only [`Reply`]. Not
/// signed: it changes nothing, and the answer goes back on the channel that authenticated the
/// client. `timestamp` names it within the session, and is the timestamp the client orders it
/// with if the read-only answers do not agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub client: PublicKey,
    pub session: SessionId,
    pub timestamp: Timestamp,
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

/// ⟨REPLY, v, t, c, i, r⟩ for every request of one client session executed in one batch, or for
/// one read-only request.
///
/// Replies are not signed: they travel on a channel authenticated to the replica that sent them,
/// and a client never shows a reply to anyone else, so no transferable proof is needed. A reply
/// names exactly the requests it answers: the client, the session and each timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub view: View,
    pub replica: ReplicaId,
    pub client: PublicKey,
    pub session: SessionId,
    /// An answer to a [`ReadRequest`], from the replica's state without ordering.
    pub read_only: bool,
    pub results: Vec<RequestResult>,
}

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestResult {
    pub timestamp: Timestamp,
    pub outcome: Outcome,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It executed with this result.
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// It executed, but its result is no longer cached (the client waited too long).
    Forgotten,
    /// Its session expired (see [`crate::protocol::ClientTable`]); it will never execute.
    SessionExpired,
    /// A read-only request whose operation is not read-only: order it instead.
    NotReadOnly,
    /// A new session found the client table full of active sessions (see
    /// [`crate::protocol::ClientTable`]): not executed; it may be sent again later.
    SessionsFull,
}

/// Checks a client's envelope on its own (outside a message): shape, limits and the client's
/// signature.
pub fn verify_envelope(
    envelope: RequestEnvelope,
    cluster: &ClusterId,
    limits: &Limits,
    signatures: &mut dyn SignatureCheck,
) -> Result<Verified<RequestEnvelope>, Rejection> {
    check_envelope_shape(&envelope, limits)?;
    let digest = envelope.signing_digest();
    check_client_signature(signatures, cluster, &envelope, &digest)?;
    Ok(Verified::checked(envelope, vec![digest]))
}

/// A REQUEST: from the client that signed it (when a client sent it), well formed, validly
/// signed. Returns the envelope's signing digest.
pub(super) fn verify_request(
    check: &mut Check<'_>,
    envelope: &RequestEnvelope,
    sender: Sender,
) -> Result<Digest, Rejection> {
    if let Sender::Client(client) = sender {
        if client != envelope.client {
            return Err(Rejection::WrongSender);
        }
    }
    check_envelope_shape(envelope, check.limits)?;
    check_client_admitted(check, &envelope.client)?;
    let digest = envelope.signing_digest();
    check_client_signature(
        check.signatures,
        check.committee.cluster_id(),
        envelope,
        &digest,
    )?;
    Ok(digest)
}

/// Every correct replica serves the same clients, so an envelope of another key is refused
/// wherever it appears, alike at all of them.
fn check_client_admitted(check: &Check<'_>, client: &PublicKey) -> Result<(), Rejection> {
    check
        .committee
        .admits_client(client)
        .then_some(())
        .ok_or(Rejection::ClientNotAdmitted)
}

fn check_client_signature(
    signatures: &mut dyn SignatureCheck,
    cluster: &ClusterId,
    envelope: &RequestEnvelope,
    digest: &Digest,
) -> Result<(), Rejection> {
    signatures
        .check(
            cluster,
            &envelope.client,
            Domain::Request,
            digest,
            &envelope.signature,
        )
        .then_some(())
        .ok_or(Rejection::BadSignature)
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
    // Refused here rather than proposed alone: no correct backup would accept a batch holding it.
    if envelope.encoded_len() > limits.max_batch_bytes {
        return Err(Rejection::TooLarge("envelope larger than a batch may be"));
    }
    Ok(())
}

/// A READ from the client it names, its operation within the limits.
pub(super) fn verify_read(
    check: &mut Check<'_>,
    read: &ReadRequest,
    sender: Sender,
) -> Result<(), Rejection> {
    match sender {
        Sender::Client(client) if client == read.client => {}
        _ => return Err(Rejection::WrongSender),
    }
    check_client_admitted(check, &read.client)?;
    if read.op.len() > check.limits.max_op_bytes {
        return Err(Rejection::TooLarge("operation"));
    }
    if read.timestamp == 0 {
        return Err(Rejection::Malformed("timestamps are positive"));
    }
    Ok(())
}

/// Checks a batch's shape and every client signature in it; returns its envelopes' signing
/// digests.
pub(super) fn verify_batch(check: &mut Check<'_>, batch: &Batch) -> Result<Vec<Digest>, Rejection> {
    let digests = batch.envelope_digests();
    check_batch(check, batch, &digests)?;
    Ok(digests)
}

/// Checks a batch's shape and every client signature, given its envelopes' signing digests.
pub(super) fn check_batch(
    check: &mut Check<'_>,
    batch: &Batch,
    digests: &[Digest],
) -> Result<(), Rejection> {
    let limits = check.limits;
    if batch.envelopes.len() > limits.max_batch_envelopes {
        return Err(Rejection::TooLarge("envelopes in a batch"));
    }
    let bytes: usize = batch
        .envelopes
        .iter()
        .map(RequestEnvelope::encoded_len)
        .sum();
    if bytes > limits.max_batch_bytes {
        return Err(Rejection::TooLarge("batch bytes"));
    }
    for (envelope, digest) in batch.envelopes.iter().zip(digests) {
        check_envelope_shape(envelope, limits)?;
        check_client_admitted(check, &envelope.client)?;
        check_client_signature(
            check.signatures,
            check.committee.cluster_id(),
            envelope,
            digest,
        )?;
    }
    Ok(())
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

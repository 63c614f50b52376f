//! PRE-PREPARE, PREPARE and COMMIT: the three ordering phases share one signed shape.

use pbft_crypto::{Digest, DigestBuilder, Domain, Signature, Signer};
use serde::{Deserialize, Serialize};

use super::request::check_batch;
use super::{Batch, Check, Rejection, ReplicaId, Seq, View};

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
        key: &Signer,
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

    /// Checks the vote's signature by its replica.
    pub(super) fn check_signature(&self, check: &mut Check<'_>) -> Result<(), Rejection> {
        check.replica_signature(
            self.replica,
            self.phase.domain(),
            &self.signing_digest(),
            &self.signature,
        )
    }
}

/// A PRE-PREPARE: from the primary of its view, its digest the batch's, every client signature in
/// the batch valid. Returns the batch's envelope digests.
pub(super) fn verify_pre_prepare(
    check: &mut Check<'_>,
    header: &Vote,
    batch: &Batch,
) -> Result<Vec<Digest>, Rejection> {
    check.signed_by(header.replica)?;
    if header.phase != Phase::PrePrepare {
        return Err(Rejection::Malformed("phase does not match message"));
    }
    if header.replica != check.committee.primary(header.view) {
        return Err(Rejection::NotFromPrimary);
    }
    let digests = batch.envelope_digests();
    if Batch::digest_of(&digests) != header.digest {
        return Err(Rejection::DigestMismatch);
    }
    header.check_signature(check)?;
    check_batch(check, batch, &digests)?;
    Ok(digests)
}

/// A PREPARE from a backup, carrying the primary's PRE-PREPARE header it answers.
pub(super) fn verify_prepare(
    check: &mut Check<'_>,
    vote: &Vote,
    pre_prepare: &Vote,
) -> Result<(), Rejection> {
    check.signed_by(vote.replica)?;
    if vote.phase != Phase::Prepare || pre_prepare.phase != Phase::PrePrepare {
        return Err(Rejection::Malformed("phase does not match message"));
    }
    let primary = check.committee.primary(vote.view);
    if vote.replica == primary {
        return Err(Rejection::Malformed("the primary sends no prepare"));
    }
    if pre_prepare.replica != primary
        || pre_prepare.view != vote.view
        || pre_prepare.seq != vote.seq
        || pre_prepare.digest != vote.digest
    {
        return Err(Rejection::Malformed(
            "prepare does not match the pre-prepare it carries",
        ));
    }
    vote.check_signature(check)?;
    pre_prepare.check_signature(check)
}

/// A COMMIT.
pub(super) fn verify_commit(check: &mut Check<'_>, vote: &Vote) -> Result<(), Rejection> {
    check.signed_by(vote.replica)?;
    if vote.phase != Phase::Commit {
        return Err(Rejection::Malformed("phase does not match message"));
    }
    vote.check_signature(check)
}

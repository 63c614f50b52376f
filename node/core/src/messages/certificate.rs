//! Certificates: 2f+1 signed votes that prove a batch prepared or committed.

use pbft_crypto::{Digest, DigestBuilder};
use serde::{Deserialize, Serialize};

use super::request::verify_batch;
use super::{Batch, Check, Checkpoint, Phase, Rejection, Seq, View, Vote};

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

    pub(super) fn hash_into(&self, mut builder: DigestBuilder) -> DigestBuilder {
        builder = hash_vote(builder, &self.pre_prepare).u64(self.prepares.len() as u64);
        for prepare in &self.prepares {
            builder = hash_vote(builder, prepare);
        }
        builder
    }

    /// Checks the certificate: a PRE-PREPARE from its view's primary and 2f matching PREPAREs
    /// from distinct backups, every signature valid.
    pub(super) fn verify(&self, check: &mut Check<'_>) -> Result<(), Rejection> {
        let committee = check.committee;
        let pp = &self.pre_prepare;
        if pp.phase != Phase::PrePrepare || pp.replica != committee.primary(pp.view) {
            return Err(Rejection::InvalidCertificate(
                "pre-prepare not from that view's primary",
            ));
        }
        if self.prepares.len() != committee.prepared_quorum() {
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
        pp.check_signature(check)?;
        for prepare in &self.prepares {
            prepare.check_signature(check)?;
        }
        Ok(())
    }
}

pub(super) fn hash_vote(builder: DigestBuilder, vote: &Vote) -> DigestBuilder {
    builder
        .digest(&vote.signing_digest())
        .bytes(&vote.signature.0)
}

pub(super) fn hash_checkpoint(builder: DigestBuilder, checkpoint: &Checkpoint) -> DigestBuilder {
    builder
        .digest(&checkpoint.signing_digest())
        .bytes(&checkpoint.signature.0)
}

/// Checks that `commits` are 2f+1 valid COMMITs from distinct replicas for one view, sequence
/// number and digest.
fn verify_commit_certificate(check: &mut Check<'_>, commits: &[Vote]) -> Result<(), Rejection> {
    if commits.len() != check.committee.quorum() {
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
        commit.check_signature(check)?;
    }
    Ok(())
}

/// A COMMITTED message: a valid commit certificate and a batch that matches its digest, every
/// client signature valid. Returns the batch's envelope digests.
pub(super) fn verify_committed(
    check: &mut Check<'_>,
    batch: &Batch,
    commits: &[Vote],
) -> Result<Vec<Digest>, Rejection> {
    verify_commit_certificate(check, commits)?;
    let digests = verify_batch(check, batch)?;
    if Batch::digest_of(&digests) != commits[0].digest {
        return Err(Rejection::DigestMismatch);
    }
    Ok(digests)
}

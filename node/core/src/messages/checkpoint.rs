//! CHECKPOINTs and the 2f+1 of them that make a checkpoint stable.

use pbft_crypto::{Digest, DigestBuilder, Domain, Signature, Signer};
use serde::{Deserialize, Serialize};

use super::{Check, Rejection, ReplicaId, Seq};

/// ⟨CHECKPOINT, n, d, i⟩: replica `i`'s state digest after executing sequence number `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: Seq,
    pub state_digest: Digest,
    pub replica: ReplicaId,
    pub signature: Signature,
}

impl Checkpoint {
    pub fn new(key: &Signer, seq: Seq, state_digest: Digest, replica: ReplicaId) -> Checkpoint {
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

    /// Checks the checkpoint's signature by its replica.
    pub(super) fn check_signature(&self, check: &mut Check<'_>) -> Result<(), Rejection> {
        check.replica_signature(
            self.replica,
            Domain::Checkpoint,
            &self.signing_digest(),
            &self.signature,
        )
    }
}

/// A CHECKPOINT from its signer.
pub(super) fn verify_checkpoint(
    check: &mut Check<'_>,
    checkpoint: &Checkpoint,
) -> Result<(), Rejection> {
    check.signed_by(checkpoint.replica)?;
    checkpoint.check_signature(check)
}

/// A transferred state: its proof is a valid checkpoint proof for `seq` (the core checks the
/// snapshot against it).
pub(super) fn verify_state_data(
    check: &mut Check<'_>,
    seq: Seq,
    proof: &[Checkpoint],
) -> Result<(), Rejection> {
    verify_checkpoint_proof(check, seq, proof)?;
    if seq == 0 {
        return Err(Rejection::Malformed(
            "the initial state is never transferred",
        ));
    }
    Ok(())
}

/// Checks that `proof` is 2f+1 valid CHECKPOINTs from distinct replicas for `seq` with one digest,
/// or empty for the initial state at sequence number 0.
pub(super) fn verify_checkpoint_proof(
    check: &mut Check<'_>,
    seq: Seq,
    proof: &[Checkpoint],
) -> Result<(), Rejection> {
    if seq == 0 && proof.is_empty() {
        return Ok(());
    }
    if proof.len() != check.committee.quorum() {
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
        checkpoint.check_signature(check)?;
    }
    Ok(())
}

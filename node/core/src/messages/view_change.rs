//! VIEW-CHANGE and NEW-VIEW (TOCS 2002, section 4.4).

use pbft_crypto::{Digest, DigestBuilder, Domain, Signature, Signer};
use serde::{Deserialize, Serialize};

use super::certificate::{hash_checkpoint, hash_vote};
use super::checkpoint::verify_checkpoint_proof;
use super::{Check, Checkpoint, Phase, PreparedCert, Rejection, ReplicaId, Seq, View, Vote};

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

    pub fn sign(&mut self, key: &Signer) {
        self.signature = key.sign(Domain::ViewChange, &self.signing_digest());
    }

    /// The state digest certified for `stable_seq`, or `None` for the initial state.
    pub fn stable_digest(&self) -> Option<Digest> {
        self.checkpoint_proof.first().map(|c| c.state_digest)
    }
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

    pub fn sign(&mut self, key: &Signer) {
        self.signature = key.sign(Domain::NewView, &self.signing_digest());
    }
}

/// A VIEW-CHANGE (its sender is checked by the caller: inside a NEW-VIEW it is the new primary):
/// for a view above 0, a valid checkpoint proof, prepared certificates sorted, distinct, inside
/// (h, h + L] and from earlier views, every signature valid.
pub(super) fn verify_view_change(
    check: &mut Check<'_>,
    view_change: &ViewChange,
) -> Result<(), Rejection> {
    if view_change.new_view == 0 {
        return Err(Rejection::InvalidCertificate("no view change into view 0"));
    }
    verify_checkpoint_proof(check, view_change.stable_seq, &view_change.checkpoint_proof)?;
    let log_window = check.limits.log_window;
    if view_change.prepared.len() as u64 > log_window {
        return Err(Rejection::TooLarge("prepared certificates"));
    }
    let mut last_seq = view_change.stable_seq;
    for cert in &view_change.prepared {
        if cert.seq() <= last_seq || cert.seq() > view_change.stable_seq.saturating_add(log_window)
        {
            return Err(Rejection::InvalidCertificate(
                "prepared sequence numbers out of order or outside the window",
            ));
        }
        if cert.view() >= view_change.new_view {
            return Err(Rejection::InvalidCertificate(
                "prepared certificate not from an earlier view",
            ));
        }
        last_seq = cert.seq();
    }
    check.replica_signature(
        view_change.replica,
        Domain::ViewChange,
        &view_change.signing_digest(),
        &view_change.signature,
    )?;
    for cert in &view_change.prepared {
        cert.verify(check)?;
    }
    Ok(())
}

/// A NEW-VIEW from the new primary: 2f+1 VIEW-CHANGEs for its view from distinct replicas, each
/// valid, and PRE-PREPAREs of that view signed by it. Whether O follows from V is the core's
/// check.
pub(super) fn verify_new_view(check: &mut Check<'_>, new_view: &NewView) -> Result<(), Rejection> {
    check.signed_by(new_view.replica)?;
    let committee = check.committee;
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
    if new_view.pre_prepares.len() as u64 > check.limits.log_window {
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
    check.replica_signature(
        new_view.replica,
        Domain::NewView,
        &new_view.signing_digest(),
        &new_view.signature,
    )?;
    for view_change in &new_view.view_changes {
        verify_view_change(check, view_change)?;
    }
    for pre_prepare in &new_view.pre_prepares {
        pre_prepare.check_signature(check)?;
    }
    Ok(())
}

//! The pure part of the view change (TOCS 2002, section 4.4): computing O from a set V of
//! VIEW-CHANGE messages. The new primary and every backup run the same function, so a NEW-VIEW
//! whose O differs from the recomputed one is rejected.

use std::collections::BTreeMap;

use pbft_crypto::Digest;

use crate::messages::{Batch, Checkpoint, Seq, View, ViewChange};

/// What a NEW-VIEW must contain, derived from its view changes alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// min-s: the latest stable checkpoint in V.
    pub min_s: Seq,
    /// The checkpoint proof for `min_s` (empty for the initial state).
    pub checkpoint_proof: Vec<Checkpoint>,
    /// max-s: the highest sequence number prepared in V (at least `min_s`).
    pub max_s: Seq,
    /// For every n in (min-s, max-s], the digest to pre-prepare in the new view: the one from
    /// the prepared certificate of the highest view, or the null request.
    pub orders: Vec<(Seq, Digest)>,
}

/// Computes min-s, max-s and O from V. V's certificates must already be verified.
pub fn plan_new_view(view_changes: &[ViewChange]) -> NewViewPlan {
    let best = view_changes
        .iter()
        .max_by_key(|vc| vc.stable_seq)
        .expect("a new view is computed from 2f+1 view changes");
    let min_s = best.stable_seq;
    let checkpoint_proof = best.checkpoint_proof.clone();

    // For each n, the certificate from the highest view; ties between equal views cannot
    // disagree with at most f faults, but pick the smallest digest so the choice is total.
    let mut chosen: BTreeMap<Seq, (View, Digest)> = BTreeMap::new();
    for cert in view_changes.iter().flat_map(|vc| vc.prepared.iter()) {
        if cert.seq() <= min_s {
            continue;
        }
        let candidate = (cert.view(), cert.digest());
        chosen
            .entry(cert.seq())
            .and_modify(|current| {
                if candidate.0 > current.0 || (candidate.0 == current.0 && candidate.1 < current.1)
                {
                    *current = candidate;
                }
            })
            .or_insert(candidate);
    }
    let max_s = chosen
        .keys()
        .next_back()
        .copied()
        .unwrap_or(min_s)
        .max(min_s);
    let null = Batch::null().digest();
    let orders = (min_s + 1..=max_s)
        .map(|seq| (seq, chosen.get(&seq).map_or(null, |(_, digest)| *digest)))
        .collect();
    NewViewPlan {
        min_s,
        checkpoint_proof,
        max_s,
        orders,
    }
}

//! A primary that equivocates: for each PRE-PREPARE it sends the real batch to one group of
//! backups and a conflicting, equally valid batch (the same envelopes in reverse order, or the
//! null request) under the same view and sequence number to the other group.
//!
//! Every message it sends verifies on its own; only a comparison shows the fault. A correct
//! cluster keeps agreement: no two digests can both gather 2f+1 commits at one sequence number.
//! - [`EquivocationMode::Split`]: the backups are split in halves and the primary withholds its
//!   own COMMITs for those numbers, so neither digest commits; backups time out and change view,
//!   and the new primary carries over at most one prepared digest.
//! - [`EquivocationMode::Minority`]: only f backups get the conflicting batch and the primary
//!   votes normally, so the majority commits the real batch and the minority must catch up (from
//!   the commits, by fetching the batch or the state).
//!
//! When this replica is not the primary it behaves honestly.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::messages::{Batch, Message, Phase, ReplicaId, Seq, View, Vote};
use crate::protocol::{Destination, Ready};

/// How many equivocated slots are remembered to withhold commits for; older ones are forgotten.
const REMEMBERED_SLOTS: usize = 4096;

/// Who gets the conflicting PRE-PREPARE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EquivocationMode {
    /// The higher-id ceil(3f/2) backups get the conflicting batch, the rest the real one, and the
    /// primary sends no COMMIT for those sequence numbers: nothing can commit.
    Split,
    /// The f highest-id backups get the conflicting batch; the primary keeps voting.
    Minority,
}

/// Sends conflicting PRE-PREPAREs to two groups of backups.
#[derive(Clone, Debug)]
pub struct EquivocatingPrimary {
    mode: EquivocationMode,
    /// Slots equivocated on, whose own COMMITs are withheld in `Split` mode.
    equivocated: BTreeSet<(View, Seq)>,
}

impl EquivocatingPrimary {
    /// An equivocating primary that picks its victims as `mode` says.
    pub fn new(mode: EquivocationMode) -> EquivocatingPrimary {
        EquivocatingPrimary {
            mode,
            equivocated: BTreeSet::new(),
        }
    }

    /// Who gets the conflicting batch.
    pub fn mode(&self) -> EquivocationMode {
        self.mode
    }

    /// The backups that get the conflicting batch: the highest ids, so the choice is stable.
    fn conflicting_group(&self, ctx: &Context<'_>) -> Vec<ReplicaId> {
        let mut backups = ctx.peers();
        let count = match self.mode {
            EquivocationMode::Split => backups.len().div_ceil(2),
            EquivocationMode::Minority => ctx.committee.f(),
        };
        backups.split_off(backups.len().saturating_sub(count))
    }

    fn remember(&mut self, view: View, seq: Seq) {
        self.equivocated.insert((view, seq));
        while self.equivocated.len() > REMEMBERED_SLOTS {
            self.equivocated.pop_first();
        }
    }
}

/// A different valid batch for the same slot; `None` if none differs from `batch`.
fn conflicting_batch(batch: &Batch) -> Option<Batch> {
    let other = if batch.envelopes.len() >= 2 {
        Batch {
            envelopes: batch.envelopes.iter().rev().cloned().collect(),
        }
    } else {
        Batch::null()
    };
    (other.digest() != batch.digest()).then_some(other)
}

impl Behavior for EquivocatingPrimary {
    fn name(&self) -> &'static str {
        match self.mode {
            EquivocationMode::Split => "equivocate-primary-split",
            EquivocationMode::Minority => "equivocate-primary-minority",
        }
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        let conflicting_group = self.conflicting_group(ctx);
        for outgoing in messages {
            match &*outgoing.message {
                Message::PrePrepare { header, batch }
                    if header.replica == ctx.id && ctx.committee.primary(header.view) == ctx.id =>
                {
                    let Some(other) = conflicting_batch(batch) else {
                        out.sends.push(outgoing.into());
                        continue;
                    };
                    self.remember(header.view, header.seq);
                    let other_header = Vote::new(
                        ctx.key,
                        Phase::PrePrepare,
                        header.view,
                        header.seq,
                        other.digest(),
                        ctx.id,
                    );
                    let other = Arc::new(Message::PrePrepare {
                        header: other_header,
                        batch: other,
                    });
                    // The same split on every send, retransmissions included, so each backup
                    // only ever sees one of the two.
                    for to in ctx.recipients(outgoing.to) {
                        let message = if conflicting_group.contains(&to) {
                            other.clone()
                        } else {
                            outgoing.message.clone()
                        };
                        out.sends
                            .push(FaultySend::message(Destination::Replica(to), message));
                    }
                }
                Message::Commit(vote)
                    if self.mode == EquivocationMode::Split
                        && vote.replica == ctx.id
                        && self.equivocated.contains(&(vote.view, vote.seq)) => {}
                _ => out.sends.push(outgoing.into()),
            }
        }
        out
    }
}

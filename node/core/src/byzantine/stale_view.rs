//! A replica that talks about the past: it sends everything its correct replica sends and, beside
//! each of its own PRE-PREPAREs, PREPAREs and COMMITs, a copy signed again for the previous view;
//! beside each of its checkpoints it sends again the older checkpoints it sent before.
//!
//! The stale COMMITs and checkpoints are validly signed. A stale PRE-PREPARE is not from the
//! primary of its view, and a stale PREPARE carries an old PRE-PREPARE header that this replica
//! signed in the old primary's name, so both fail at the boundary (unless this replica was that
//! primary). Correct replicas ignore votes for views they have left and checkpoints at or below
//! their stable one, without moving back.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::messages::{Checkpoint, Message, Phase, View, Vote};
use crate::protocol::Ready;

/// How many of its own older checkpoints it keeps sending again.
const OLD_CHECKPOINTS: usize = 4;

/// Adds votes for the previous view and old checkpoints to what it sends.
#[derive(Clone, Debug, Default)]
pub struct StaleView {
    /// Own checkpoints already sent, by increasing sequence number.
    checkpoints: VecDeque<Checkpoint>,
}

/// `vote` signed again by this replica for `view`.
fn in_view(vote: &Vote, view: View, ctx: &Context<'_>) -> Vote {
    Vote::new(ctx.key, vote.phase, view, vote.seq, vote.digest, ctx.id)
}

impl StaleView {
    fn stale_copies(&mut self, message: &Message, ctx: &Context<'_>) -> Vec<Message> {
        match message {
            Message::PrePrepare { header, batch }
                if header.replica == ctx.id && header.view > 0 =>
            {
                vec![Message::PrePrepare {
                    header: in_view(header, header.view - 1, ctx),
                    batch: batch.clone(),
                }]
            }
            Message::Prepare { vote, .. } if vote.replica == ctx.id && vote.view > 0 => {
                let old = vote.view - 1;
                let pre_prepare = Vote::new(
                    ctx.key,
                    Phase::PrePrepare,
                    old,
                    vote.seq,
                    vote.digest,
                    ctx.committee.primary(old),
                );
                vec![Message::Prepare {
                    vote: in_view(vote, old, ctx),
                    pre_prepare,
                }]
            }
            Message::Commit(vote) if vote.replica == ctx.id && vote.view > 0 => {
                vec![Message::Commit(in_view(vote, vote.view - 1, ctx))]
            }
            Message::Checkpoint(checkpoint) if checkpoint.replica == ctx.id => {
                let old = self
                    .checkpoints
                    .iter()
                    .filter(|c| c.seq < checkpoint.seq)
                    .map(|c| Message::Checkpoint(c.clone()))
                    .collect();
                if self
                    .checkpoints
                    .back()
                    .is_none_or(|c| c.seq < checkpoint.seq)
                {
                    if self.checkpoints.len() == OLD_CHECKPOINTS {
                        self.checkpoints.pop_front();
                    }
                    self.checkpoints.push_back(checkpoint.clone());
                }
                old
            }
            _ => Vec::new(),
        }
    }
}

impl Behavior for StaleView {
    fn name(&self) -> &'static str {
        "stale-view"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let copies = self.stale_copies(&outgoing.message, ctx);
            let to = outgoing.to;
            out.sends.push(outgoing.into());
            for copy in copies {
                out.sends.push(FaultySend::message(to, Arc::new(copy)));
            }
        }
        out
    }
}

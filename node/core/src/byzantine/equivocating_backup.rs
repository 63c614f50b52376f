//! A backup that equivocates: each PREPARE and COMMIT it broadcasts goes in its real form to one
//! half of the other replicas and, re-signed for a random digest, to the other half.
//!
//! A conflicting PREPARE keeps the primary's PRE-PREPARE header, so correct replicas refuse it at
//! the boundary (the vote no longer matches the header it carries). A conflicting COMMIT is
//! validly signed and is counted only towards a digest nobody else votes for. Either way one
//! faulty vote cannot complete a quorum: the cluster commits with the 2f+1 correct replicas.

use std::sync::Arc;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::messages::{Message, Vote};
use crate::protocol::{Destination, Ready};

/// Sends conflicting PREPAREs and COMMITs to two halves of the other replicas.
#[derive(Clone, Copy, Debug, Default)]
pub struct EquivocatingBackup;

/// `vote` signed again by this replica for another digest.
fn conflicting_vote(vote: &Vote, ctx: &mut Context<'_>) -> Vote {
    let digest = ctx.random_digest();
    Vote::new(ctx.key, vote.phase, vote.view, vote.seq, digest, ctx.id)
}

impl Behavior for EquivocatingBackup {
    fn name(&self) -> &'static str {
        "equivocate-backup"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let other = match (&*outgoing.message, outgoing.to) {
                (Message::Prepare { vote, pre_prepare }, Destination::AllReplicas)
                    if vote.replica == ctx.id =>
                {
                    Message::Prepare {
                        vote: conflicting_vote(vote, ctx),
                        pre_prepare: pre_prepare.clone(),
                    }
                }
                (Message::Commit(vote), Destination::AllReplicas) if vote.replica == ctx.id => {
                    Message::Commit(conflicting_vote(vote, ctx))
                }
                _ => {
                    out.sends.push(outgoing.into());
                    continue;
                }
            };
            let other = Arc::new(other);
            let peers = ctx.peers();
            let (real, conflicting) = peers.split_at(peers.len().div_ceil(2));
            for &to in real {
                out.sends.push(FaultySend::message(
                    Destination::Replica(to),
                    outgoing.message.clone(),
                ));
            }
            for &to in conflicting {
                out.sends
                    .push(FaultySend::message(Destination::Replica(to), other.clone()));
            }
        }
        out
    }
}

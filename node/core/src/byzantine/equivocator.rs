//! A replica that equivocates in whatever role it has: as the primary of a view it sends
//! conflicting PRE-PREPAREs ([`EquivocatingPrimary`], in the chosen [`EquivocationMode`]); as a
//! backup it sends conflicting PREPAREs and COMMITs to two halves of its peers
//! ([`EquivocatingBackup`]).
//!
//! Each vote goes to the role it was cast in: a PRE-PREPARE, PREPARE or COMMIT for a view this
//! replica leads is handled as the primary would (so in minority mode its own COMMITs stay
//! honest and the majority commits), every other one as a backup would. Whatever carries no
//! vote passes unchanged.

use super::FaultyOutput;
use super::{Behavior, Context, EquivocatingBackup, EquivocatingPrimary, EquivocationMode};
use crate::messages::Message;
use crate::protocol::{Outgoing, Ready};

/// Equivocates as primary and as backup.
#[derive(Clone, Debug)]
pub struct Equivocator {
    primary: EquivocatingPrimary,
    backup: EquivocatingBackup,
}

impl Equivocator {
    /// An equivocator that, as primary, picks its victims as `mode` says.
    pub fn new(mode: EquivocationMode) -> Equivocator {
        Equivocator {
            primary: EquivocatingPrimary::new(mode),
            backup: EquivocatingBackup,
        }
    }
}

/// Whether `outgoing` is a vote this replica casts as the primary of the vote's view.
fn as_primary(outgoing: &Outgoing, ctx: &Context<'_>) -> bool {
    let view = match &*outgoing.message {
        Message::PrePrepare { header, .. } => header.view,
        Message::Prepare { vote, .. } | Message::Commit(vote) => vote.view,
        _ => return false,
    };
    ctx.committee.primary(view) == ctx.id
}

impl Behavior for Equivocator {
    fn name(&self) -> &'static str {
        match self.primary.mode() {
            EquivocationMode::Split => "equivocate",
            EquivocationMode::Minority => "equivocate-minority",
        }
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let Ready {
            persist,
            messages,
            replies,
            timers,
            ..
        } = ready;
        let (primary, backup): (Vec<Outgoing>, Vec<Outgoing>) =
            messages.into_iter().partition(|o| as_primary(o, ctx));
        let mut out = self.primary.transform(
            Ready {
                persist,
                messages: primary,
                replies,
                timers,
                ..Ready::default()
            },
            ctx,
        );
        let as_backup = self.backup.transform(
            Ready {
                messages: backup,
                ..Ready::default()
            },
            ctx,
        );
        out.sends.extend(as_backup.sends);
        out
    }
}

//! A replica that has gone quiet: it sends no protocol message and answers no client, while its
//! wrapped replica keeps running (persisting and setting timers) as if all were well.
//!
//! A correct cluster tolerates up to f of these. A silent primary makes backups time out and
//! change view; a silent backup is simply not needed, since 2f+1 quorums form without it.

use super::{Behavior, Context, FaultyOutput};
use crate::protocol::Ready;

/// Sends nothing, replies nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Behavior for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }

    fn transform(&mut self, ready: Ready, _ctx: &mut Context<'_>) -> FaultyOutput {
        FaultyOutput {
            persist: ready.persist,
            timers: ready.timers,
            ..FaultyOutput::default()
        }
    }
}

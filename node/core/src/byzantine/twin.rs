//! Twins: two processes that hold one replica's key, each running the correct protocol on a
//! state of its own. Each peer and client reaches one twin or the other, so each twin sees part
//! of the cluster, and the two sign conflicting messages in the replica's name: two PRE-PREPAREs
//! for one slot when the replica is primary, votes for different batches, VIEW-CHANGEs that
//! disagree.
//!
//! The behaviour changes nothing a process sends; the second process is what makes the replica
//! faulty. The simulator runs a second instance of every replica with this behaviour, and a node
//! configured with it binds its port so that a second process with the same configuration can
//! share it (`testnet up --behavior twin` starts both).

use super::{honest, Behavior, Context, FaultyOutput};
use crate::protocol::Ready;

/// One of two processes that share a replica's key; it sends what the correct protocol says.
#[derive(Clone, Copy, Debug, Default)]
pub struct Twin;

impl Behavior for Twin {
    fn name(&self) -> &'static str {
        "twin"
    }

    fn transform(&mut self, ready: Ready, _ctx: &mut Context<'_>) -> FaultyOutput {
        honest(ready)
    }
}

//! A replica that forges: every signed message it sends (its own votes, checkpoints, view
//! changes and new views, the client requests it forwards, and the commit certificates it passes
//! on) carries a signature with one bit flipped. Fetches, status and state transfer, which carry
//! no signature of the sender, pass unchanged.
//!
//! A correct replica rejects each of these at the boundary with a bad signature before it
//! touches any state, so the forger counts as a silent replica for the protocol.

use std::sync::Arc;

use super::{unsent, with_forged_signature, Behavior, Context, FaultyOutput, FaultySend};
use crate::protocol::Ready;

/// Breaks the signature of everything it signs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForgedSignatures;

impl Behavior for ForgedSignatures {
    fn name(&self) -> &'static str {
        "forge"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let send = match with_forged_signature(&outgoing.message, ctx.rng) {
                Some(forged) => FaultySend::message(outgoing.to, Arc::new(forged)),
                None => outgoing.into(),
            };
            out.sends.push(send);
        }
        out
    }
}

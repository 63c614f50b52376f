//! A replica that shuns one correct peer: it runs the protocol honestly with everyone else and
//! sends the shunned replica nothing, the replica after it in id order.
//!
//! As primary it starves the shunned backup of PRE-PREPAREs, so that backup sees only 2f
//! PREPAREs and COMMITs per slot and cannot commit; and its CHECKPOINTs never arrive, so that
//! backup holds f+1 matching checkpoints past it but never the 2f+1 of a stable one, while the
//! others collect the batches it lacks. A twin on the far side of a shared port does the same
//! to the peers whose link reaches the other process. The shunned replica must notice that it
//! is stranded and fetch a stable state, with its proof, from the replicas that are ahead.

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::protocol::{Destination, Ready};

/// Sends nothing to the next replica in id order; everything else as the protocol says.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shun;

impl Shun {
    /// The replica that `id` shuns in a cluster of `n`.
    pub fn victim(id: u32, n: usize) -> u32 {
        (id + 1) % n as u32
    }
}

impl Behavior for Shun {
    fn name(&self) -> &'static str {
        "shun"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let victim = Shun::victim(ctx.id, ctx.committee.n());
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            for to in ctx.recipients(outgoing.to) {
                if to != victim {
                    out.sends.push(FaultySend::message(
                        Destination::Replica(to),
                        outgoing.message.clone(),
                    ));
                }
            }
        }
        out
    }
}

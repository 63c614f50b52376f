//! A replica that tries to get requests of keys the cluster does not serve executed.
//!
//! As primary it adds to every batch it proposes an envelope signed by a fresh key that no
//! client list holds, and signs the PRE-PREPARE for the new batch; whatever its role, it relays
//! such envelopes to every replica as if a client had sent them, one per COMMIT it sends. Every
//! correct replica checks the client list for every envelope it accepts, so the PRE-PREPAREs
//! are refused (the view changes away from this primary) and the relayed envelopes are dropped:
//! in a cluster that lists its clients, none of them ever executes. In an open cluster they are
//! ordinary requests.

use std::sync::Arc;

use pbft_crypto::KeyPair;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::app::KvOp;
use crate::messages::{ClientRequest, Message, Phase, RequestEnvelope, Vote};
use crate::protocol::{Destination, Ready};

/// Proposes and relays envelopes signed by keys outside the client list.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnlistedClients;

/// An envelope of one put, signed by a fresh key drawn from the context's RNG.
fn unlisted_envelope(ctx: &mut Context<'_>) -> RequestEnvelope {
    let mut seed = [0u8; 32];
    ctx.rng.fill_bytes(&mut seed);
    let key = KeyPair::from_seed(&seed)
        .expect("any 32 bytes are a seed")
        .for_cluster(*ctx.key.cluster());
    let op = KvOp::Put {
        key: format!("unlisted/{}", ctx.rng.next_u32()).into_bytes(),
        value: b"x".to_vec(),
    };
    let session = ctx.rng.next_u64() >> 1;
    RequestEnvelope::new(
        &key,
        session.max(1),
        vec![ClientRequest {
            timestamp: 1,
            op: op.encode(),
        }],
    )
}

impl Behavior for UnlistedClients {
    fn name(&self) -> &'static str {
        "unlisted-clients"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        // One relayed envelope per own COMMIT: as many as the cluster orders, not one per
        // input, which would let its own relays feed each other.
        let relays = (messages.iter())
            .filter(|m| matches!(&*m.message, Message::Commit(vote) if vote.replica == ctx.id))
            .count();
        for outgoing in messages {
            match &*outgoing.message {
                Message::PrePrepare { header, batch }
                    if header.replica == ctx.id && ctx.committee.primary(header.view) == ctx.id =>
                {
                    let mut batch = batch.clone();
                    batch.envelopes.push(unlisted_envelope(ctx));
                    let header = Vote::new(
                        ctx.key,
                        Phase::PrePrepare,
                        header.view,
                        header.seq,
                        batch.digest(),
                        ctx.id,
                    );
                    out.sends.push(FaultySend::message(
                        outgoing.to,
                        Arc::new(Message::PrePrepare { header, batch }),
                    ));
                }
                _ => out.sends.push(outgoing.into()),
            }
        }
        for _ in 0..relays {
            let relayed = Arc::new(Message::Request(unlisted_envelope(ctx)));
            out.sends
                .push(FaultySend::message(Destination::AllReplicas, relayed));
        }
        out
    }
}

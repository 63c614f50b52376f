//! A replica that sends junk: each message its correct replica would send is replaced by a broken
//! one, chosen at random: the message with its signature broken, a PRE-PREPARE whose header names
//! another digest than its batch (or a PREPARE whose vote disagrees with the header it carries),
//! or up to 4 KiB of random bytes that are not a message at all. Its replies carry random results.
//!
//! Correct replicas reject every one of these messages at the boundary (undecodable, bad
//! signature, digest mismatch, malformed) before it touches state, so for the protocol this
//! replica is silent; a client accepts a result only once f+1 replicas agree on it.

use std::sync::Arc;

use rand::Rng;

use super::{unsent, with_forged_signature, Behavior, Context, FaultyOutput, FaultySend, Payload};
use crate::messages::{Message, Outcome, Phase, Vote};
use crate::protocol::Ready;

/// Garbage payloads are shorter than this.
pub const MAX_GARBAGE_BYTES: usize = 4096;

/// Replaces every message with a broken one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Corrupt;

fn random_bytes(len: usize, ctx: &mut Context<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ctx.rng.fill_bytes(&mut bytes);
    bytes
}

/// A validly signed vote whose digest disagrees with the content it travels with, or `None` for
/// messages without such a pair.
fn with_wrong_digest(message: &Message, ctx: &mut Context<'_>) -> Option<Message> {
    match message {
        Message::PrePrepare { header, batch } => {
            let digest = ctx.random_digest();
            let header = Vote::new(
                ctx.key,
                Phase::PrePrepare,
                header.view,
                header.seq,
                digest,
                header.replica,
            );
            Some(Message::PrePrepare {
                header,
                batch: batch.clone(),
            })
        }
        Message::Prepare { vote, pre_prepare } => {
            let digest = ctx.random_digest();
            let vote = Vote::new(
                ctx.key,
                Phase::Prepare,
                vote.view,
                vote.seq,
                digest,
                vote.replica,
            );
            Some(Message::Prepare {
                vote,
                pre_prepare: pre_prepare.clone(),
            })
        }
        _ => None,
    }
}

impl Behavior for Corrupt {
    fn name(&self) -> &'static str {
        "corrupt"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let broken = match ctx.rng.random_range(0..3) {
                0 => with_forged_signature(&outgoing.message, ctx.rng),
                1 => with_wrong_digest(&outgoing.message, ctx),
                _ => None,
            };
            let payload = match broken {
                Some(message) => Payload::Message(Arc::new(message)),
                None => {
                    let len = ctx.rng.random_range(0..MAX_GARBAGE_BYTES);
                    Payload::Garbage(random_bytes(len, ctx))
                }
            };
            out.sends.push(FaultySend {
                to: outgoing.to,
                payload,
            });
        }
        for reply in &mut out.replies {
            for result in &mut reply.results {
                let len = ctx.rng.random_range(1..=32);
                result.outcome = Outcome::Done(random_bytes(len, ctx));
            }
        }
        out
    }
}

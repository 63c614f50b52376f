//! A replica that replays: it sends everything its correct replica sends, and with each step
//! also sends again a few random messages from the last [`REPLAY_WINDOW`] it sent, each to a
//! random other replica.
//!
//! The old messages are validly signed, so they pass the boundary; a correct replica must
//! recognise them as duplicates or as belonging to past views, checkpoints and slots, and
//! ignore them without double counting a vote or moving backwards.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::Rng;

use super::{honest, Behavior, Context, FaultyOutput, FaultySend, Payload};
use crate::messages::Message;
use crate::protocol::{Destination, Ready};

/// How many sent messages are kept for replaying.
pub const REPLAY_WINDOW: usize = 256;

/// Most old messages replayed per step.
const MAX_REPLAYS_PER_STEP: usize = 3;

/// Passes everything through and re-sends old messages.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    sent: VecDeque<Arc<Message>>,
}

impl Replay {
    /// How many old messages it holds for replaying; at most [`REPLAY_WINDOW`].
    pub fn remembered(&self) -> usize {
        self.sent.len()
    }
}

impl Behavior for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let mut out = honest(ready);
        let mut replays = Vec::new();
        let peers = ctx.peers();
        if !self.sent.is_empty() && !peers.is_empty() {
            for _ in 0..ctx.rng.random_range(0..=MAX_REPLAYS_PER_STEP) {
                let old = self.sent[ctx.rng.random_range(0..self.sent.len())].clone();
                let to = peers[ctx.rng.random_range(0..peers.len())];
                replays.push(FaultySend::message(Destination::Replica(to), old));
            }
        }
        for send in &out.sends {
            if let Payload::Message(message) = &send.payload {
                if self.sent.len() == REPLAY_WINDOW {
                    self.sent.pop_front();
                }
                self.sent.push_back(message.clone());
            }
        }
        out.sends.extend(replays);
        out
    }
}

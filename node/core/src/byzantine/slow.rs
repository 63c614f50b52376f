//! A primary that stalls: it holds back each PRE-PREPARE it sends as primary, first for just
//! under the view-change timeout (a correct but sluggish leader, which backups must tolerate),
//! then, after [`GENTLE_BATCHES`] batches, for well past it, so that backups suspect it and
//! change view.
//!
//! Backups start waiting for a request only once it reaches them, which a client does when its
//! own retransmission timer fires, so "past the timeout" has to cover that wait too: the long
//! delay is [`STALL_FACTOR`] times the timeout. Retransmissions of a held PRE-PREPARE are held
//! until the same moment. Everything else, and every PRE-PREPARE of a view it does not lead,
//! passes unchanged. Held messages are released by [`Behavior::poll_delayed`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::messages::{Message, ReplicaId, Seq, View};
use crate::protocol::{Destination, Ready};

/// Batches delayed by just under the timeout before the delays exceed it.
pub const GENTLE_BATCHES: u64 = 20;

/// The delay after [`GENTLE_BATCHES`], in multiples of the view-change timeout.
pub const STALL_FACTOR: u32 = 3;

/// Slots whose release time is remembered; older ones are forgotten.
const REMEMBERED_SLOTS: usize = 4096;

/// Delays its PRE-PREPAREs as primary.
#[derive(Clone, Debug)]
pub struct Slow {
    view_change_timeout: Duration,
    /// Distinct slots delayed so far.
    delayed: u64,
    /// When the PRE-PREPAREs of each slot may leave.
    release_at: BTreeMap<(View, Seq), Duration>,
    /// Held sends by release time; one per slot and destination, so retransmissions do not pile
    /// up.
    held: BTreeMap<(Duration, View, Seq, Option<ReplicaId>), FaultySend>,
}

impl Slow {
    /// A slow primary for a cluster whose view-change timeout is `view_change_timeout`.
    pub fn new(view_change_timeout: Duration) -> Slow {
        Slow {
            view_change_timeout,
            delayed: 0,
            release_at: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    /// The delay of the `nth` slot (from 0).
    fn delay(&self, nth: u64) -> Duration {
        if nth < GENTLE_BATCHES {
            self.view_change_timeout * 4 / 5
        } else {
            self.view_change_timeout * STALL_FACTOR
        }
    }

    fn release_time(&mut self, slot: (View, Seq), now: Duration) -> Duration {
        if let Some(at) = self.release_at.get(&slot) {
            return *at;
        }
        let at = now + self.delay(self.delayed);
        self.delayed += 1;
        self.release_at.insert(slot, at);
        while self.release_at.len() > REMEMBERED_SLOTS {
            self.release_at.pop_first();
        }
        at
    }
}

impl Behavior for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            match &*outgoing.message {
                Message::PrePrepare { header, .. }
                    if header.replica == ctx.id && ctx.committee.primary(header.view) == ctx.id =>
                {
                    let (view, seq) = (header.view, header.seq);
                    let at = self.release_time((view, seq), ctx.now);
                    if at <= ctx.now {
                        out.sends.push(outgoing.into());
                    } else {
                        let to = match outgoing.to {
                            Destination::Replica(id) => Some(id),
                            Destination::AllReplicas => None,
                        };
                        self.held.insert((at, view, seq, to), outgoing.into());
                    }
                }
                _ => out.sends.push(outgoing.into()),
            }
        }
        out
    }

    fn poll_delayed(&mut self, now: Duration) -> Vec<FaultySend> {
        let mut due = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    fn next_wakeup(&self) -> Option<Duration> {
        self.held.keys().next().map(|(at, ..)| *at)
    }
}

//! Faulty replicas that craft protocol messages of their own, validly signed with their key,
//! besides (or instead of) what their correct replica sends:
//!
//! - [`SelectiveViewChange`] sends its VIEW-CHANGEs to only f peers and, as a new primary, its
//!   NEW-VIEW to only f+1, so that correct replicas see different sets.
//! - [`WrongNewView`] as a new primary sends a NEW-VIEW whose O orders other batches than its
//!   view changes prove, plus a slot beyond them.
//! - [`FarFuture`] adds copies of its votes at sequence numbers far beyond the watermarks and at
//!   the largest ones, and VIEW-CHANGEs and votes for views far ahead, up to the largest view.
//! - [`Unsolicited`] sends batch bodies and state chunks nobody asked for, for slots in and
//!   beyond the window, and status messages claiming a position far ahead.
//!
//! Correct replicas must refuse or ignore all of it without moving, stalling, or accusing a
//! correct replica.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;

use super::{unsent, Behavior, Context, FaultyOutput, FaultySend};
use crate::messages::{
    Batch, ClientRequest, Message, NewView, Phase, ReplicaId, RequestEnvelope, Seq, View,
    ViewChange, Vote,
};
use crate::protocol::{Destination, Ready};

/// `count` peers of this replica, drawn at random.
fn some_peers(ctx: &mut Context<'_>, count: usize) -> Vec<ReplicaId> {
    let mut peers = ctx.peers();
    peers.shuffle(ctx.rng);
    peers.truncate(count);
    peers
}

/// Sends its VIEW-CHANGEs to f peers and its NEW-VIEWs to f+1; everything else honestly.
#[derive(Clone, Debug, Default)]
pub struct SelectiveViewChange;

impl Behavior for SelectiveViewChange {
    fn name(&self) -> &'static str {
        "selective-view-change"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let f = ctx.committee.f();
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let chosen = match &*outgoing.message {
                Message::ViewChange(_) => Some(f),
                Message::NewView(_) => Some(f + 1),
                _ => None,
            };
            match chosen {
                Some(count) if outgoing.to == Destination::AllReplicas => {
                    for peer in some_peers(ctx, count) {
                        out.sends.push(FaultySend::message(
                            Destination::Replica(peer),
                            outgoing.message.clone(),
                        ));
                    }
                }
                _ => out.sends.push(outgoing.into()),
            }
        }
        out
    }
}

/// As a new primary, replaces its NEW-VIEW by one whose O names random batches at the slots
/// its view changes prove, and one more slot beyond them, all signed with its key.
#[derive(Clone, Debug, Default)]
pub struct WrongNewView;

impl WrongNewView {
    fn falsify(new_view: &NewView, ctx: &mut Context<'_>) -> NewView {
        let mut wrong = new_view.clone();
        let next = new_view
            .pre_prepares
            .iter()
            .map(|p| p.seq)
            .max()
            .unwrap_or_else(|| {
                new_view
                    .view_changes
                    .iter()
                    .map(|v| v.stable_seq)
                    .max()
                    .unwrap_or(0)
            })
            + 1;
        let mut seqs: Vec<Seq> = new_view.pre_prepares.iter().map(|p| p.seq).collect();
        seqs.push(next);
        wrong.pre_prepares = seqs
            .into_iter()
            .map(|seq| {
                let digest = ctx.random_digest();
                Vote::new(
                    ctx.key,
                    Phase::PrePrepare,
                    new_view.view,
                    seq,
                    digest,
                    ctx.id,
                )
            })
            .collect();
        wrong.sign(ctx.key);
        wrong
    }
}

impl Behavior for WrongNewView {
    fn name(&self) -> &'static str {
        "wrong-new-view"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            match &*outgoing.message {
                Message::NewView(new_view) if new_view.replica == ctx.id => {
                    let wrong = Self::falsify(new_view, ctx);
                    out.sends.push(FaultySend::message(
                        outgoing.to,
                        Arc::new(Message::NewView(wrong)),
                    ));
                }
                _ => out.sends.push(outgoing.into()),
            }
        }
        out
    }
}

/// Views this far ahead are claimed beside the current one.
const FAR_VIEWS: View = 1 << 20;

/// Sends everything honestly, plus copies of its own votes at sequence numbers beyond any
/// window and in views far ahead, and VIEW-CHANGEs for views far ahead and for the largest.
#[derive(Clone, Debug, Default)]
pub struct FarFuture;

impl FarFuture {
    fn copies(message: &Message, ctx: &Context<'_>) -> Vec<Message> {
        let again = |vote: &Vote, view: View, seq: Seq| {
            Vote::new(ctx.key, vote.phase, view, seq, vote.digest, ctx.id)
        };
        match message {
            Message::Commit(vote) if vote.replica == ctx.id => {
                let (view, seq) = (vote.view, vote.seq);
                vec![
                    Message::Commit(again(vote, view, seq.saturating_add(1 << 32))),
                    Message::Commit(again(vote, view, Seq::MAX)),
                    Message::Commit(again(vote, view.saturating_add(FAR_VIEWS), seq)),
                    Message::Commit(again(vote, View::MAX, Seq::MAX)),
                ]
            }
            Message::Prepare { vote, pre_prepare } if vote.replica == ctx.id => {
                let far = vote.seq.saturating_add(1 << 32);
                // The PRE-PREPARE header is the primary's and cannot be signed again here; a
                // copy with a moved vote no longer matches it and fails at the boundary.
                vec![Message::Prepare {
                    vote: again(vote, vote.view, far),
                    pre_prepare: pre_prepare.clone(),
                }]
            }
            Message::PrePrepare { header, batch } if header.replica == ctx.id => {
                vec![Message::PrePrepare {
                    header: again(header, header.view, header.seq.saturating_add(1 << 32)),
                    batch: batch.clone(),
                }]
            }
            Message::ViewChange(view_change) if view_change.replica == ctx.id => {
                [view_change.new_view.saturating_add(FAR_VIEWS), View::MAX]
                    .into_iter()
                    .map(|new_view| {
                        let mut copy: ViewChange = view_change.clone();
                        copy.new_view = new_view;
                        copy.sign(ctx.key);
                        Message::ViewChange(copy)
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Behavior for FarFuture {
    fn name(&self) -> &'static str {
        "far-future"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        for outgoing in messages {
            let copies = Self::copies(&outgoing.message, ctx);
            let to = outgoing.to;
            out.sends.push(outgoing.into());
            for copy in copies {
                out.sends.push(FaultySend::message(to, Arc::new(copy)));
            }
        }
        out
    }
}

/// Sends everything honestly and, with each of its own COMMITs, a batch body and a state chunk
/// nobody asked for, and a status claiming a position far ahead. (Tied to its votes, not to every input, so two
/// such replicas do not keep each other busy.)
#[derive(Clone, Debug, Default)]
pub struct Unsolicited {
    /// The highest sequence number it has seen in its own votes.
    seen: Seq,
}

impl Behavior for Unsolicited {
    fn name(&self) -> &'static str {
        "unsolicited"
    }

    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput {
        let (mut out, messages) = unsent(ready);
        let mut view = None;
        for outgoing in messages {
            if let Message::Commit(vote) = &*outgoing.message {
                self.seen = self.seen.max(vote.seq);
                view = view.max(Some(vote.view));
            }
            out.sends.push(outgoing.into());
        }
        let Some(view) = view else {
            return out;
        };
        // A body signed with its own key as a client's: valid, but matching no slot's digest.
        let seq = self.seen + ctx.rng.random_range(0..64);
        let envelope = RequestEnvelope::new(
            ctx.key,
            ctx.rng.random(),
            vec![ClientRequest {
                timestamp: 1,
                op: ctx.random_digest().as_bytes().to_vec(),
            }],
        );
        let batch = Batch {
            envelopes: vec![envelope],
        };
        out.sends.push(FaultySend::message(
            Destination::AllReplicas,
            Arc::new(Message::BatchData { seq, batch }),
        ));
        // Matches no layout a correct replica fetches, and comes from a replica nobody asked
        // unless by chance; at most one piece's worth of bytes.
        let data = ctx.random_digest().as_bytes().repeat(8);
        out.sends.push(FaultySend::message(
            Destination::AllReplicas,
            Arc::new(Message::StateChunk {
                seq,
                replica: ctx.id,
                partition: ctx.rng.random_range(0..4),
                piece: 0,
                len: data.len() as u64,
                data,
            }),
        ));
        out.sends.push(FaultySend::message(
            Destination::AllReplicas,
            Arc::new(Message::Status {
                replica: ctx.id,
                view: view.saturating_add(FAR_VIEWS),
                last_executed: self.seen.saturating_add(1 << 32),
                fingerprint: *ctx.committee.fingerprint(),
            }),
        ));
        out
    }
}

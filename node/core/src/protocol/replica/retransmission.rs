//! Retransmission and catching up: resending unanswered messages, fetching batch bodies, and
//! helping peers that report they are behind (bounded per peer).

use std::sync::Arc;

use pbft_crypto::Digest;

use super::{BatchBody, Replica};
use crate::messages::{Message, ReplicaId, Seq, View, Vote};
use crate::protocol::{Destination, Ignored, Outgoing, Timer};

/// Help a replica gives a peer on request (catch-up, new views, batches, state). Answers cost
/// far more than the asking, so each peer gets a bounded number of answers of each kind, and a
/// bounded number of bytes of batches and state in all, per retransmission interval: a faulty
/// peer cannot turn this replica into an amplifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Help {
    CatchUp,
    NewView,
    Batch,
    State,
    /// A piece of a partition of the state: counted as well as metered in bytes, since a
    /// partition may be a few bytes and every answer costs a step.
    StatePiece,
}

impl Help {
    pub(super) fn per_interval(self) -> u32 {
        match self {
            Help::CatchUp | Help::NewView | Help::State => 1,
            Help::Batch => 64,
            Help::StatePiece => 1024,
        }
    }
}

impl Replica {
    /// Asks every peer for the batch of slot `seq`, once per view; retransmission repeats it.
    pub(super) fn fetch_batch(&mut self, seq: Seq) {
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        let Some(digest) = entry.digest else { return };
        if entry.batch.is_some() || entry.fetch_sent {
            return;
        }
        entry.fetch_sent = true;
        let replica = self.id;
        self.broadcast(Message::FetchBatch {
            seq,
            digest,
            replica,
        });
    }

    pub(super) fn on_fetch_batch(&mut self, seq: Seq, digest: Digest, requester: ReplicaId) {
        let archived = (self.checkpoints.archive.get(&seq))
            .map(|(body, _)| body.clone())
            .filter(|body| body.digest == digest);
        let Some(batch) = archived.or_else(|| self.log.get(&seq)?.body_for(digest)) else {
            return;
        };
        let bytes = batch.batch.encoded_len();
        if self.may_help(requester, Help::Batch) && self.may_send_help_bytes(requester, bytes) {
            let batch = batch.batch.clone();
            self.send(
                Destination::Replica(requester),
                Message::BatchData { seq, batch },
            );
        }
    }

    pub(super) fn on_batch_data(&mut self, seq: Seq, body: Arc<BatchBody>) {
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.batch.is_some() {
            return;
        }
        let Some(digest) = entry.digest else { return };
        if body.digest != digest {
            self.ignore(Ignored::BatchMismatch);
            return;
        }
        entry.batch = Some(body);
        self.maybe_send_prepare(seq);
        self.check_prepared(seq);
    }

    /// A peer reports its position: show it the view it missed, or the batches it lacks.
    pub(super) fn on_status(&mut self, from: ReplicaId, view: View, last_executed: Seq) {
        if from == self.id {
            return;
        }
        self.note_position(from, view, last_executed);
        if view < self.view && self.view_active {
            self.send_new_view_to(from);
        }
        if last_executed >= self.last_executed || !self.may_help(from, Help::CatchUp) {
            return;
        }
        // A checkpoint interval's worth per retransmission interval: more than a cluster
        // under load orders in that time, so a replica behind gains on it.
        let max_batches = self.config.checkpoint_interval as usize;
        let first = last_executed.saturating_add(1);
        let archived = (self.checkpoints.archive.range(first..))
            .map(|(seq, (batch, commits))| (*seq, Some(batch), Some(commits)));
        let logged = (self.log.range(first..))
            .take_while(|(_, entry)| entry.is_committed())
            .map(|(seq, entry)| (*seq, entry.batch.as_ref(), entry.commit_cert.as_ref()));
        let mut answers = Vec::new();
        for (next, (seq, batch, commits)) in (first..).zip(archived.chain(logged)) {
            // Only an unbroken run from the first missing slot helps.
            if answers.len() >= max_batches || seq != next {
                break;
            }
            let (Some(batch), Some(commits)) = (batch, commits) else {
                break;
            };
            answers.push((batch.clone(), commits.clone()));
        }
        for (batch, commits) in answers {
            if !self.may_send_help_bytes(from, batch.batch.encoded_len()) {
                break;
            }
            let message = Message::Committed {
                batch: batch.batch.clone(),
                commits,
            };
            self.ready.messages.push(Outgoing {
                to: Destination::Replica(from),
                message: Arc::new(message),
            });
        }
    }

    /// A batch with a commit certificate: committed, whatever view it was ordered in.
    pub(super) fn on_committed(&mut self, body: Arc<BatchBody>, commits: Vec<Vote>) {
        let Some(first) = commits.first() else {
            return;
        };
        let (seq, digest) = (first.seq, first.digest);
        // Below the low watermark too: a replica catching up to its stable checkpoint.
        let in_reach = self.in_window(seq) || seq <= self.low();
        if seq <= self.last_executed || !in_reach || body.digest != digest {
            return;
        }
        self.commit_slot(commits, "a peer's commit certificate");
        if let Some(entry) = self.log.get_mut(&seq) {
            if entry.digest == Some(digest) && entry.batch.is_none() {
                entry.batch = Some(body);
            }
        }
    }

    pub(super) fn on_retransmit_timer(&mut self) {
        let interval = self.config.retransmit_interval;
        self.set_timer(Timer::Retransmit, self.now + interval);
        if !self.view_active {
            if let Some(own) = self
                .view_changes
                .get(self.id)
                .filter(|vc| vc.new_view == self.view)
                .cloned()
            {
                self.broadcast(Message::ViewChange(own));
            }
        } else {
            let stale_before = self.now.saturating_sub(interval);
            let mut resend = Vec::new();
            let silent = self.silent();
            for (seq, entry) in self.log.range(self.last_executed + 1..) {
                if entry.view != self.view || entry.touched > stale_before {
                    continue;
                }
                // Below the low watermark (catching up) or while rejoining silent, only bodies
                // are asked for: no signed statement goes out again.
                let fetch_only = silent || *seq <= self.low();
                if entry.is_committed() || fetch_only {
                    if let (None, Some(digest)) = (&entry.batch, entry.digest) {
                        resend.push(Message::FetchBatch {
                            seq: *seq,
                            digest,
                            replica: self.id,
                        });
                    }
                } else if let (true, Some(pp), Some(batch)) =
                    (self.is_primary(), &entry.pre_prepare, &entry.batch)
                {
                    resend.push(Message::PrePrepare {
                        header: pp.clone(),
                        batch: batch.batch.clone(),
                    });
                } else if let (Some(pp), Some(prepare)) =
                    (&entry.pre_prepare, entry.prepares.get(self.id))
                {
                    resend.push(Message::Prepare {
                        vote: prepare.clone(),
                        pre_prepare: pp.clone(),
                    });
                } else if let (Some(digest), None) = (entry.digest, &entry.batch) {
                    resend.push(Message::FetchBatch {
                        seq: *seq,
                        digest,
                        replica: self.id,
                    });
                }
                if let Some(commit) = entry.commits.get(self.id).filter(|_| !fetch_only) {
                    resend.push(Message::Commit(commit.clone()));
                }
            }
            for message in resend {
                self.broadcast(message);
            }
        }
        let status = Message::Status {
            replica: self.id,
            view: self.view,
            last_executed: self.last_executed,
            fingerprint: *self.committee.fingerprint(),
        };
        self.broadcast(status);
        // The newest own checkpoint tells lagging replicas where the others are.
        let newest = self
            .checkpoints
            .own
            .values()
            .rev()
            .find_map(|own| own.message.clone());
        if let Some(checkpoint) = newest {
            self.broadcast(Message::Checkpoint(checkpoint));
        }
        self.retransmit_state_fetch();
        self.probe_if_stranded();
    }
}

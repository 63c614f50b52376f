//! Checkpoints and garbage collection (section 4.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use pbft_crypto::Digest;

use super::{BatchBody, Entry, Replica};
use crate::messages::{Checkpoint, Message, ReplicaId, Seq, Vote};
use crate::protocol::state_image::{SavedState, StateImage};
use crate::protocol::votes::{Added, VoteSet};
use crate::protocol::{Durable, Ignored};

/// Own checkpoints, checkpoint votes, and the stable checkpoint (§4.3).
#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    pub(super) stable_seq: Seq,
    pub(super) stable_digest: Digest,
    pub(super) stable_proof: Vec<Checkpoint>,
    /// Own checkpoints at or above the stable one.
    pub(super) own: BTreeMap<Seq, OwnCheckpoint>,
    /// Checkpoint votes above the stable checkpoint.
    pub(super) votes: BTreeMap<Seq, VoteSet<Checkpoint>>,
    /// The stable checkpoint before this one, still served: a peer fetching its state when a
    /// newer checkpoint becomes stable finishes the fetch instead of starting over.
    pub(super) previous: Option<PreviousStable>,
    /// Committed batches below the stable checkpoint, with their commit certificates: a peer
    /// that is a few batches behind, or that installed the previous stable state, catches up
    /// from these instead of fetching the whole state. At most [`ARCHIVE_BYTES`] of batches,
    /// none at or below the previous stable checkpoint.
    pub(super) archive: BTreeMap<Seq, (Arc<BatchBody>, Vec<Vote>)>,
    pub(super) archive_bytes: usize,
    /// The partition last encoded for a peer: a large one is asked for a piece at a time.
    pub(super) encoded: Option<(Seq, u32, Arc<Vec<u8>>)>,
}

/// Bytes of committed batches kept below the stable checkpoint (see [`Checkpoints::archive`]).
pub(super) const ARCHIVE_BYTES: usize = 64 << 20;

/// A stable checkpoint that a newer one replaced, with the state to serve it.
#[derive(Debug)]
pub(super) struct PreviousStable {
    pub(super) seq: Seq,
    pub(super) own: OwnCheckpoint,
}

/// A checkpoint this replica holds the state of.
#[derive(Debug)]
pub(super) struct OwnCheckpoint {
    pub(super) image: StateImage,
    /// Its signed CHECKPOINT, if it took the checkpoint itself.
    pub(super) message: Option<Checkpoint>,
}

impl OwnCheckpoint {
    pub(super) fn digest(&self) -> Digest {
        self.image.digest()
    }
}

/// What the storage holds of the state: the image last written, against which the next stable
/// checkpoint is written as a delta, and the bytes of the deltas since the base.
#[derive(Debug, Default)]
pub(super) struct Saved {
    pub(super) image: Option<StateImage>,
    pub(super) delta_bytes: u64,
}

impl Replica {
    /// The state now: a copy-on-write image whose cost is what changed since the last one.
    pub(super) fn take_image(&self) -> StateImage {
        StateImage::take(self.app.as_ref(), &self.clients)
    }

    pub(super) fn take_checkpoint(&mut self, seq: Seq) {
        let image = self.take_image();
        let digest = image.digest();
        if self.silent() {
            // Kept to compare with the stable checkpoint and to serve, but not vouched for.
            let own = OwnCheckpoint {
                image,
                message: None,
            };
            self.checkpoints.own.insert(seq, own);
            return;
        }
        let checkpoint = Checkpoint::new(&self.key, seq, digest, self.id);
        let own = OwnCheckpoint {
            image,
            message: Some(checkpoint.clone()),
        };
        self.checkpoints.own.insert(seq, own);
        self.ready
            .persist
            .push(Durable::Checkpoint(checkpoint.clone()));
        self.broadcast(Message::Checkpoint(checkpoint.clone()));
        self.on_checkpoint(checkpoint);
    }

    pub(super) fn on_checkpoint(&mut self, checkpoint: Checkpoint) {
        if checkpoint.seq <= self.checkpoints.stable_seq
            || !checkpoint
                .seq
                .is_multiple_of(self.config.checkpoint_interval)
        {
            self.ignore(Ignored::StaleCheckpoint);
            return;
        }
        let seq = checkpoint.seq;
        let from = checkpoint.replica;
        // Bound memory: keep a few of each replica's newest checkpoints.
        let per_replica = (self.config.log_window / self.config.checkpoint_interval + 2) as usize;
        let held: Vec<Seq> = self
            .checkpoints
            .votes
            .iter()
            .filter(|(_, by)| by.get(from).is_some())
            .map(|(s, _)| *s)
            .collect();
        if let Some(by) = self.checkpoints.votes.get_mut(&seq) {
            if by.get(from).is_some() {
                if let Added::Conflict(conflict) = by.add(checkpoint) {
                    self.record_evidence(conflict);
                }
                return;
            }
        }
        if held.len() >= per_replica {
            if held[0] > seq {
                return;
            }
            if let Some(by) = self.checkpoints.votes.get_mut(&held[0]) {
                by.remove(from);
            }
        }
        let by = self.checkpoints.votes.entry(seq).or_default();
        by.add(checkpoint);
        if let Some(proof) = by.certificate(self.committee.quorum(), None) {
            let digest = proof[0].state_digest;
            self.make_stable(seq, digest, proof);
        }
    }

    /// A checkpoint with a 2f+1 proof becomes stable: move the low watermark, discard the log
    /// below it, and fetch the state if this replica has not reached it.
    pub(super) fn make_stable(&mut self, seq: Seq, digest: Digest, proof: Vec<Checkpoint>) {
        if seq <= self.checkpoints.stable_seq {
            return;
        }
        tracing::debug!(replica = self.id, seq, "checkpoint stable");
        // A few batches behind, and not fetching: keep the slots not executed yet and catch up
        // from commit certificates (peers keep the batches below their stable checkpoint).
        let catch_up = self.last_executed < seq
            && self.state_fetch.is_none()
            && seq - self.last_executed <= self.config.checkpoint_interval;
        let c = &mut self.checkpoints;
        let old_stable = std::mem::replace(&mut c.stable_seq, seq);
        c.stable_proof = proof;
        c.stable_digest = digest;
        c.votes = c.votes.split_off(&(seq + 1));
        if let Some(own) = c.own.remove(&old_stable).filter(|_| old_stable > 0) {
            c.previous = Some(PreviousStable {
                seq: old_stable,
                own,
            });
        }
        c.own = c.own.split_off(&seq);
        let keep_from = if catch_up {
            self.last_executed + 1
        } else {
            seq + 1
        };
        let kept = self.log.split_off(&keep_from);
        let dropped = std::mem::replace(&mut self.log, kept);
        self.archive_committed(dropped);
        self.next_seq = self.next_seq.max(seq + 1);
        let fetch_continues = (self.state_fetch.as_ref())
            .is_some_and(|fetch| fetch.seq >= old_stable && fetch.manifest.is_some());
        // No own snapshot at it: nothing to do when this replica executed past it (after a
        // state transfer), when it catches up from batches (compared when execution reaches
        // it), or when a fetch of the state just replaced is under way (its peers still serve
        // it, and the batches since). Otherwise the certified state is fetched.
        if !self.settle_own_stable() && self.last_executed < seq && !catch_up && !fetch_continues {
            let sources = self.stable_sources();
            self.start_state_fetch(seq, sources);
        }
        self.maybe_end_silence();
    }

    /// Keeps the committed batches of slots leaving the log for peers that catch up, within
    /// [`ARCHIVE_BYTES`] and above the previous stable checkpoint.
    fn archive_committed(&mut self, dropped: BTreeMap<Seq, Entry>) {
        let c = &mut self.checkpoints;
        for (seq, entry) in dropped {
            if let (true, Some(body), Some(commits)) =
                (entry.is_committed(), entry.batch, entry.commit_cert)
            {
                c.archive_bytes += body.batch.encoded_len();
                if let Some((old, _)) = c.archive.insert(seq, (body, commits)) {
                    c.archive_bytes -= old.batch.encoded_len();
                }
            }
        }
        let floor = c.previous.as_ref().map_or(0, |p| p.seq);
        while let Some(entry) = c.archive.first_entry() {
            if *entry.key() > floor && c.archive_bytes <= ARCHIVE_BYTES {
                break;
            }
            let (body, _) = entry.remove();
            c.archive_bytes -= body.batch.encoded_len();
        }
    }

    /// Execution reached the stable checkpoint from below (catching up): its own snapshot must
    /// match the certified digest.
    pub(super) fn reached_stable(&mut self, seq: Seq) {
        if seq == self.checkpoints.stable_seq {
            self.settle_own_stable();
        }
    }

    /// Compares the own snapshot at the stable checkpoint, if there is one, with the certified
    /// digest: a match is persisted, a mismatch makes this replica fetch the certified state.
    /// Returns whether there was an own snapshot to compare.
    fn settle_own_stable(&mut self) -> bool {
        let c = &self.checkpoints;
        let seq = c.stable_seq;
        match c.own.get(&seq).map(|own| own.digest() == c.stable_digest) {
            Some(true) => self.persist_stable(),
            Some(false) => {
                tracing::error!(
                    replica = self.id,
                    seq,
                    "own state differs from the stable checkpoint; fetching it"
                );
                self.checkpoints.own.remove(&seq);
                let sources = self.stable_sources();
                self.start_state_fetch(seq, sources);
            }
            None => return false,
        }
        true
    }

    /// The signers of the stable checkpoint's proof other than this replica.
    pub(super) fn stable_sources(&self) -> Vec<ReplicaId> {
        (self.checkpoints.stable_proof.iter())
            .map(|c| c.replica)
            .filter(|r| *r != self.id)
            .collect()
    }

    /// Writes the stable checkpoint and the state at it; older records are then released. The
    /// state is written as the changes since the state last written, or whole (a new base) once
    /// the changes since the base would outgrow it.
    pub(super) fn persist_stable(&mut self) {
        let c = &self.checkpoints;
        let Some(own) = c.own.get(&c.stable_seq) else {
            return;
        };
        let image = own.image.clone();
        let delta = (self.saved.image.as_ref())
            .and_then(|saved| image.delta_since(saved))
            .filter(|delta| self.saved.delta_bytes + delta.delta_bytes() <= image.bytes());
        let state = match delta {
            Some(delta) => {
                self.saved.delta_bytes += delta.delta_bytes();
                delta
            }
            None => {
                self.saved.delta_bytes = 0;
                SavedState::Base(image.clone())
            }
        };
        self.saved.image = Some(image);
        self.ready.persist.push(Durable::Stable {
            seq: c.stable_seq,
            proof: c.stable_proof.clone(),
            state,
        });
        // The records of the current view may sit in segments released after this one; carry
        // them forward so a restart never forgets which views this replica has left.
        if let Some(new_view) = self.last_new_view.clone() {
            self.ready.persist.push(Durable::NewView(new_view));
        }
        if !self.view_active {
            if let Some(own) = self.view_changes.get(self.id).cloned() {
                self.ready.persist.push(Durable::ViewChange(own));
            }
        }
        if let Some(rejoin) = self.rejoin_to_carry() {
            self.ready.persist.push(Durable::Rejoin(rejoin));
        }
    }
}

//! Coming back after a crash: rebuilding a replica from the records it persisted.

use std::collections::BTreeMap;

use pbft_crypto::KeyPair;

use super::checkpoints::Saved;
use super::{BatchBody, Entry, Replica};
use crate::app::StateMachine;
use crate::committee::Committee;
use crate::messages::{Checkpoint, Phase, ReplicaId, Seq, View};
use crate::protocol::new_view::plan_new_view;
use crate::protocol::{Durable, ProtocolConfig, RecoveryReport, Rejoin, ReplicaError, SavedState};

impl Replica {
    /// Rebuilds a replica after a crash from the records it persisted, in the order they were
    /// written. The state comes from the newest stable checkpoint among them, the log and the
    /// view from the records after it, and committed batches above the snapshot execute again.
    /// Call [`Replica::start`] next; the replica then catches up with its peers. The records are
    /// this replica's own and trusted; a snapshot that does not match its proof is an error.
    pub fn recover(
        id: ReplicaId,
        committee: Committee,
        config: ProtocolConfig,
        key: KeyPair,
        app: Box<dyn StateMachine>,
        records: Vec<Durable>,
    ) -> Result<(Replica, RecoveryReport), ReplicaError> {
        let mut replica = Replica::new(id, committee, config, key, app)?;
        // Known before the state is installed, which would otherwise sign a checkpoint.
        replica.rejoin = records.iter().fold(None, |rejoin, record| match record {
            Durable::Created { rejoining: true } => Some(Rejoin::started()),
            Durable::Rejoin(state) => Some(*state),
            _ => rejoin,
        });
        let mut report = RecoveryReport {
            records: records.len(),
            ..RecoveryReport::default()
        };
        // The state is the newest base with the deltas written after it applied in order.
        let stables: Vec<(Seq, &Vec<Checkpoint>, &SavedState)> = (records.iter())
            .filter_map(|record| match record {
                Durable::Stable { seq, proof, state } => Some((*seq, proof, state)),
                _ => None,
            })
            .collect();
        let from = stables.iter().rposition(|(_, _, state)| state.is_base());
        let newest = stables
            .last()
            .map(|(seq, proof, _)| (*seq, (*proof).clone()));
        // The silence ended at a stable checkpoint above the point whose state may not have
        // been written yet: until one is stable again, it is silent again.
        let stable = newest.as_ref().map_or(0, |(seq, _)| *seq);
        if let Some(rejoin) = &mut replica.rejoin {
            if rejoin.point.is_some_and(|point| stable <= point.seq) {
                rejoin.silent = true;
            }
        }
        if let Some((seq, proof)) = newest {
            let mut delta_bytes = 0;
            for (_, _, state) in &stables[from.unwrap_or(0)..] {
                delta_bytes += state.delta_bytes();
                state
                    .apply_to(replica.app.as_mut(), &mut replica.clients)
                    .map_err(|source| ReplicaError::SavedStateRefused { seq, source })?;
            }
            let digest = proof
                .first()
                .map(|c| c.state_digest)
                .ok_or(ReplicaError::SnapshotMismatch { seq })?;
            replica.install_state(seq, digest, BTreeMap::new())?;
            let c = &mut replica.checkpoints;
            c.stable_seq = seq;
            c.stable_digest = digest;
            c.stable_proof = proof;
            c.own = c.own.split_off(&seq);
            replica.saved = Saved {
                image: c.own.get(&seq).map(|own| own.image.clone()),
                delta_bytes,
            };
            report.snapshot_seq = seq;
        }
        for record in records {
            replica.replay(record);
        }
        for entry in replica.log.values_mut() {
            // A body of an older view stays among the voted ones; the slot's own is looked up.
            match entry.digest {
                Some(digest) => entry.bind_body(digest),
                None => entry.batch = None,
            }
        }
        let highest = replica.log.keys().next_back().copied().unwrap_or(0);
        replica.next_seq = highest.max(replica.last_executed) + 1;
        replica.rebuild_in_log();
        let before = replica.last_executed;
        replica.execute_committed();
        report.reexecuted = replica.last_executed - before;
        report.view = replica.view;
        report.last_executed = replica.last_executed;
        Ok((replica, report))
    }

    /// Applies one persisted record during [`Replica::recover`].
    pub(super) fn replay(&mut self, record: Durable) {
        if record
            .slot()
            .is_some_and(|seq| seq <= self.checkpoints.stable_seq)
        {
            return;
        }
        match record {
            Durable::Vote(vote) | Durable::PrePrepare(vote) => {
                let own = vote.replica == self.id;
                let Some(entry) = replay_slot(&mut self.log, vote.view, vote.seq) else {
                    return;
                };
                match vote.phase {
                    Phase::PrePrepare => {
                        if entry.is_committed() && entry.digest != Some(vote.digest) {
                            return;
                        }
                        entry.digest = Some(vote.digest);
                        entry.pre_prepare = Some(vote);
                    }
                    Phase::Prepare if own => {
                        entry.signed = entry.signed.with_prepare();
                        entry.prepares.add(vote);
                    }
                    Phase::Commit if own => {
                        entry.signed = entry.signed.with_commit();
                        entry.commits.add(vote);
                    }
                    Phase::Prepare | Phase::Commit => {}
                }
            }
            Durable::Batch { seq, batch } => {
                let body = BatchBody::new(batch);
                // Written before the vote that needed it: a body this replica voted for.
                let entry = self.log.entry(seq).or_default();
                entry.durable_batch = Some(body.digest);
                entry.keep_voted(body.clone());
                entry.batch = Some(body);
            }
            Durable::Prepared(cert) => {
                let entry = self.log.entry(cert.seq()).or_default();
                let newer = entry
                    .prepared_cert
                    .as_ref()
                    .is_none_or(|held| held.pre_prepare.view <= cert.pre_prepare.view);
                if newer {
                    entry.prepared_cert = Some(cert);
                }
            }
            Durable::Committed(commits) => {
                self.commit_slot(commits, "a commit certificate in the log");
            }
            // Executing again signs the same checkpoint; the stable one was loaded first.
            Durable::Checkpoint(_) | Durable::Stable { .. } => {}
            // Read before the replay.
            Durable::Created { .. } | Durable::Rejoin(_) => {}
            Durable::ViewChange(view_change) => {
                if view_change.new_view > self.view {
                    self.view = view_change.new_view;
                    self.view_active = false;
                }
                self.store_view_change(view_change);
            }
            Durable::NewView(new_view) => {
                // A view is entered once; later copies only carry it past released segments.
                if new_view.view < self.view || (new_view.view == self.view && self.view_active) {
                    return;
                }
                for view_change in &new_view.view_changes {
                    self.store_view_change(view_change.clone());
                }
                let plan = plan_new_view(&new_view.view_changes);
                self.enter_view(new_view, plan);
            }
        }
    }
}

/// The slot a replayed vote of `view` belongs to, reset if the vote is from a newer view than
/// what the slot holds; `None` for a vote from an older view.
fn replay_slot(log: &mut BTreeMap<Seq, Entry>, view: View, seq: Seq) -> Option<&mut Entry> {
    let entry = log.entry(seq).or_default();
    if view < entry.view {
        return None;
    }
    if view > entry.view {
        entry.reset_for_view(view);
    }
    Some(entry)
}

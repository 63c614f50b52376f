//! State transfer (section 5.3.2): fetching the state at a stable checkpoint from peers and
//! installing it once it matches the 2f+1 signed digest.

use super::*;

impl Replica {
    pub(super) fn start_state_fetch(&mut self, seq: Seq, sources: Vec<ReplicaId>) {
        if sources.is_empty() {
            return;
        }
        tracing::info!(replica = self.id, seq, "fetching state from peers");
        let first = sources[(self.id as usize) % sources.len()];
        self.state_fetch = Some(StateFetch {
            seq,
            next_source: (self.id as usize + 1) % sources.len(),
            sources,
        });
        let replica = self.id;
        self.send(
            Destination::Replica(first),
            Message::FetchState { seq, replica },
        );
    }

    pub(super) fn on_fetch_state(&mut self, seq: Seq, requester: ReplicaId) {
        // Only the stable checkpoint is served: it is the one with a proof to send along.
        let stable = self.checkpoints.stable_seq;
        if stable == 0 || seq > stable || !self.checkpoints.own.contains_key(&stable) {
            self.ignore(Ignored::StateNotHeld);
            return;
        }
        let snapshot_len = self
            .checkpoints
            .own
            .get(&stable)
            .expect("checked above")
            .snapshot
            .len();
        if !self.may_help(requester, Help::State)
            || !self.may_send_help_bytes(requester, snapshot_len)
        {
            return;
        }
        let own = self.checkpoints.own.get(&stable).expect("checked above");
        let message = Message::StateData {
            seq: stable,
            proof: self.checkpoints.stable_proof.clone(),
            snapshot: (*own.snapshot).clone(),
        };
        self.send(Destination::Replica(requester), message);
    }

    pub(super) fn on_state_data(&mut self, seq: Seq, proof: Vec<Checkpoint>, snapshot: Vec<u8>) {
        let Some(expected) = proof.first().map(|c| c.state_digest) else {
            return;
        };
        if seq <= self.last_executed || seq < self.checkpoints.stable_seq {
            self.ignore(Ignored::StateNotNeeded);
            return;
        }
        if snapshot_digest(&snapshot) != expected {
            self.ignore(Ignored::StateMismatch);
            return;
        }
        let snapshot = Arc::new(snapshot);
        if let Err(error) = self.install_state(seq, expected, snapshot) {
            // The digest matched 2f+1 signed checkpoints, so only a broken application gets
            // here; keep the old state.
            tracing::error!(replica = self.id, seq, %error, "certified snapshot failed to install");
            self.ignore(Ignored::StateUndecodable);
            return;
        }
        tracing::info!(replica = self.id, seq, "installed state from a peer");
        self.state_transfers += 1;
        self.state_fetch = None;
        if seq > self.checkpoints.stable_seq {
            self.make_stable(seq, expected, proof);
        } else {
            self.persist_stable();
        }
        let clients = &self.clients;
        self.pending
            .retain(|envelope, _| !clients.is_settled(envelope));
        self.rebuild_in_log();
    }

    /// Replaces the application state and client table with `snapshot`, taken at `seq`, and
    /// drops the log at and below it.
    pub(super) fn install_state(
        &mut self,
        seq: Seq,
        digest: Digest,
        snapshot: Arc<Vec<u8>>,
    ) -> Result<(), ReplicaError> {
        // The limit is the snapshot's own length, so a bad length prefix cannot allocate more.
        let state: ReplicatedState = codec::decode(&snapshot, snapshot.len() as u64)
            .map_err(|source| ReplicaError::SnapshotUndecodable { seq, source })?;
        self.app
            .restore(&state.app)
            .map_err(|source| ReplicaError::SnapshotRefused { seq, source })?;
        self.clients = state.clients;
        self.last_executed = seq;
        // Vouch for the state now held, so that replicas further behind find a quorum for it
        // even if some of those who signed it first have moved on.
        let checkpoint = Checkpoint::new(&self.key, seq, digest, self.id);
        self.ready
            .persist
            .push(Durable::Checkpoint(checkpoint.clone()));
        let own = OwnCheckpoint {
            digest,
            snapshot,
            message: Some(checkpoint),
        };
        self.checkpoints.own.insert(seq, own);
        self.log = self.log.split_off(&(seq + 1));
        self.next_seq = self.next_seq.max(seq + 1);
        Ok(())
    }
}

//! State transfer (section 5.3.2): fetching the state at a stable checkpoint from peers and
//! installing it once it matches the 2f+1 signed digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use pbft_crypto::Digest;

use super::checkpoints::OwnCheckpoint;
use super::retransmission::Help;
use super::{Replica, ReplicatedState};
use crate::codec;
use crate::messages::{state, Checkpoint, Message, ReplicaId, Seq};
use crate::protocol::{Destination, Durable, Ignored, ReplicaError};
use crate::tally::Tally;

/// A state transfer in progress.
#[derive(Debug)]
pub(super) struct StateFetch {
    pub(super) seq: Seq,
    /// Which signer of the proof to ask next.
    pub(super) next_source: usize,
    pub(super) sources: Vec<ReplicaId>,
    /// The layout of the state at `seq`, once a peer sent it, and the chunks so far.
    pub(super) manifest: Option<Manifest>,
    /// Chunks of an earlier fetch that was replaced, by digest: the new layout may list them.
    pub(super) kept_chunks: BTreeMap<Digest, Vec<u8>>,
}

/// A certified state layout being fetched chunk by chunk.
#[derive(Debug)]
pub(super) struct Manifest {
    pub(super) proof: Vec<Checkpoint>,
    pub(super) digest: Digest,
    pub(super) len: u64,
    pub(super) chunks: Vec<Digest>,
    pub(super) received: Vec<Option<Vec<u8>>>,
    pub(super) missing: usize,
    /// The next chunk to ask for; it starts again at the first missing one on every
    /// retransmission.
    pub(super) next_request: u64,
    /// Whether a chunk arrived since the last retransmission.
    pub(super) progressed: bool,
}

/// Chunks asked for at once while fetching state.
const CHUNKS_IN_FLIGHT: usize = 8;

impl Replica {
    pub(super) fn start_state_fetch(&mut self, seq: Seq, sources: Vec<ReplicaId>) {
        if sources.is_empty() {
            return;
        }
        tracing::info!(replica = self.id, seq, "fetching state from peers");
        let first = sources[(self.id as usize) % sources.len()];
        // What an earlier fetch received is kept: the new state may hold the same chunks.
        let mut kept_chunks = BTreeMap::new();
        if let Some(earlier) = self.state_fetch.take() {
            kept_chunks = earlier.kept_chunks;
            if let Some(manifest) = earlier.manifest {
                let received = manifest.chunks.into_iter().zip(manifest.received);
                kept_chunks.extend(received.filter_map(|(d, data)| Some((d, data?))));
            }
        }
        self.state_fetch = Some(StateFetch {
            seq,
            next_source: (self.id as usize + 1) % sources.len(),
            sources,
            manifest: None,
            kept_chunks,
        });
        let replica = self.id;
        self.send(
            Destination::Replica(first),
            Message::FetchState { seq, replica },
        );
    }

    /// The stable checkpoint's own state, if `seq` asks for it (or for an older one).
    fn servable_state(&mut self, seq: Seq) -> Option<Seq> {
        // Only the stable checkpoint is offered: it is the one with a proof to send along.
        let stable = self.checkpoints.stable_seq;
        if stable == 0 || seq > stable || !self.checkpoints.own.contains_key(&stable) {
            self.ignore(Ignored::StateNotHeld);
            return None;
        }
        Some(stable)
    }

    /// The snapshot of checkpoint `seq` if it is served: the stable one, or the one before it
    /// (whose fetch may be under way).
    fn served_snapshot(&self, seq: Seq) -> Option<&Arc<Vec<u8>>> {
        let c = &self.checkpoints;
        if seq == c.stable_seq && seq > 0 {
            return c.own.get(&seq).map(|own| &own.snapshot);
        }
        c.previous
            .as_ref()
            .filter(|previous| previous.seq == seq)
            .map(|previous| &previous.own.snapshot)
    }

    /// Answers with the layout of the stable state; its chunks are fetched one by one.
    pub(super) fn on_fetch_state(&mut self, seq: Seq, requester: ReplicaId) {
        let Some(stable) = self.servable_state(seq) else {
            return;
        };
        if !self.may_help(requester, Help::State) {
            return;
        }
        let own = self.checkpoints.own.get(&stable).expect("checked above");
        let message = Message::StateManifest {
            seq: stable,
            proof: self.checkpoints.stable_proof.clone(),
            len: own.snapshot.len() as u64,
            chunks: own.chunks().to_vec(),
        };
        self.send(Destination::Replica(requester), message);
    }

    pub(super) fn on_fetch_state_chunk(&mut self, seq: Seq, index: u64, requester: ReplicaId) {
        let Some(snapshot) = self.served_snapshot(seq) else {
            self.ignore(Ignored::StateNotHeld);
            return;
        };
        let Some(range) = state::chunk_range(snapshot.len() as u64, index) else {
            self.ignore(Ignored::StateNotHeld);
            return;
        };
        let snapshot = snapshot.clone();
        if !self.may_send_help_bytes(requester, range.len()) {
            return;
        }
        let data = snapshot[range].to_vec();
        self.send(
            Destination::Replica(requester),
            Message::StateChunk { seq, index, data },
        );
    }

    /// A certified layout for the state being fetched (or a newer one): fetch its chunks.
    pub(super) fn on_state_manifest(
        &mut self,
        seq: Seq,
        proof: Vec<Checkpoint>,
        len: u64,
        chunks: Vec<Digest>,
    ) {
        let Some(expected) = proof.first().map(|c| c.state_digest) else {
            return;
        };
        // Unasked for, or answering a probe: the proof makes it stable here, which starts the
        // fetch. The boundary checked the proof.
        if self.state_fetch.is_none()
            && seq > self.last_executed
            && seq > self.checkpoints.stable_seq
        {
            self.make_stable(seq, expected, proof.clone());
        }
        // A newer layout replaces one being fetched; nobody else's is wanted.
        let wanted = match &self.state_fetch {
            Some(fetch) if fetch.manifest.is_some() => seq > fetch.seq,
            Some(fetch) => seq >= fetch.seq,
            None => false,
        };
        if !wanted || seq <= self.last_executed || seq < self.checkpoints.stable_seq {
            self.ignore(Ignored::StateNotNeeded);
            return;
        }
        // The boundary checked this against the proof; a cheap second look keeps the core
        // independent of that.
        if state::chunk_count(len) != chunks.len() as u64
            || state::state_digest(len, &chunks) != expected
        {
            self.ignore(Ignored::StateMismatch);
            return;
        }
        let fetch = self.state_fetch.as_mut().expect("checked above");
        if seq != fetch.seq {
            fetch.seq = seq;
            let signers: Vec<ReplicaId> = proof.iter().map(|c| c.replica).collect();
            fetch.sources = signers.into_iter().filter(|&r| r != self.id).collect();
            fetch.next_source = 0;
        }
        // Chunks of a layout being replaced that the new one lists again need not travel twice.
        let mut had = std::mem::take(&mut fetch.kept_chunks);
        if let Some(old) = fetch.manifest.take() {
            let received = old.chunks.into_iter().zip(old.received);
            had.extend(received.filter_map(|(d, data)| Some((d, data?))));
        }
        let received: Vec<Option<Vec<u8>>> =
            chunks.iter().map(|digest| had.remove(digest)).collect();
        let missing = received.iter().filter(|chunk| chunk.is_none()).count();
        fetch.manifest = Some(Manifest {
            proof,
            digest: expected,
            len,
            received,
            missing,
            chunks,
            next_request: 0,
            progressed: false,
        });
        tracing::info!(replica = self.id, seq, len, "fetching state in chunks");
        self.request_chunks(CHUNKS_IN_FLIGHT);
        self.maybe_finish_state_fetch();
    }

    /// A chunk of the state being fetched: kept if it matches the layout.
    pub(super) fn on_state_chunk(&mut self, seq: Seq, index: u64, data: Vec<u8>) {
        let Some(manifest) = self
            .state_fetch
            .as_mut()
            .filter(|fetch| fetch.seq == seq)
            .and_then(|fetch| fetch.manifest.as_mut())
        else {
            self.ignore(Ignored::StateNotNeeded);
            return;
        };
        let Some(slot) = manifest.received.get_mut(index as usize) else {
            self.ignore(Ignored::StateMismatch);
            return;
        };
        if slot.is_some() {
            return;
        }
        if state::chunk_digest(&data) != manifest.chunks[index as usize] {
            self.ignore(Ignored::StateMismatch);
            return;
        }
        *slot = Some(data);
        manifest.missing -= 1;
        manifest.progressed = true;
        self.request_chunks(1);
        self.maybe_finish_state_fetch();
    }

    /// Asks for up to `count` more missing chunks, each from the next source in turn.
    pub(super) fn request_chunks(&mut self, count: usize) {
        let replica = self.id;
        let Some(fetch) = &mut self.state_fetch else {
            return;
        };
        let Some(manifest) = &mut fetch.manifest else {
            return;
        };
        if fetch.sources.is_empty() {
            return;
        }
        let mut requests = Vec::new();
        while requests.len() < count && (manifest.next_request as usize) < manifest.received.len() {
            let index = manifest.next_request;
            manifest.next_request += 1;
            if manifest.received[index as usize].is_some() {
                continue;
            }
            let source = fetch.sources[fetch.next_source % fetch.sources.len()];
            fetch.next_source += 1;
            requests.push((source, index));
        }
        let seq = fetch.seq;
        for (source, index) in requests {
            self.send(
                Destination::Replica(source),
                Message::FetchStateChunk {
                    seq,
                    index,
                    replica,
                },
            );
        }
    }

    /// On the retransmission timer: a replica that executed nothing for a whole interval while
    /// f+1 replicas report checkpoints past it asks them for their stable state's layout, whose
    /// proof starts a fetch ([`Replica::on_state_manifest`]). Without it a replica could wait
    /// forever: the batches it lacks are collected everywhere once stable, and a faulty replica
    /// (a primary that shuns it, or a twin on the other side of a shared port) can keep the
    /// 2f+1th checkpoint from it.
    pub(super) fn probe_if_stranded(&mut self) {
        let stalled = self.last_executed == self.executed_at_last_probe;
        self.executed_at_last_probe = self.last_executed;
        if !stalled || self.state_fetch.is_some() {
            return;
        }
        // Catching up to the stable checkpoint from batches, and no batch came for an
        // interval: fetch the stable state instead.
        if self.last_executed < self.checkpoints.stable_seq {
            let (seq, sources) = (self.checkpoints.stable_seq, self.stable_sources());
            self.start_state_fetch(seq, sources);
            return;
        }
        // Each peer with a checkpoint past this replica, and the lowest such checkpoint.
        let mut ahead: Tally<Seq> = Tally::new();
        for (seq, by) in self.checkpoints.votes.range(self.last_executed + 1..) {
            for replica in self.committee.ids() {
                if replica != self.id && by.get(replica).is_some() && ahead.get(replica).is_none() {
                    ahead.insert(replica, *seq);
                }
            }
        }
        // At least one of f+1 is correct, so someone is really past this replica.
        if ahead.len() < self.committee.weak_quorum() {
            return;
        }
        // The nearest first.
        let mut sources: Vec<(Seq, ReplicaId)> = ahead.iter().map(|(id, seq)| (*seq, id)).collect();
        sources.sort_unstable();
        tracing::info!(
            replica = self.id,
            last_executed = self.last_executed,
            "stranded; asking for a stable state"
        );
        let (seq, replica) = (self.last_executed + 1, self.id);
        for (_, source) in sources {
            self.send(
                Destination::Replica(source),
                Message::FetchState { seq, replica },
            );
        }
    }

    /// On the retransmission timer: asks again for what has not arrived, from other sources.
    pub(super) fn retransmit_state_fetch(&mut self) {
        let replica = self.id;
        let Some(fetch) = self.state_fetch.as_mut().filter(|f| !f.sources.is_empty()) else {
            return;
        };
        match &mut fetch.manifest {
            None => {
                let source = fetch.sources[fetch.next_source % fetch.sources.len()];
                fetch.next_source += 1;
                let seq = fetch.seq;
                self.send(
                    Destination::Replica(source),
                    Message::FetchState { seq, replica },
                );
            }
            Some(manifest) => {
                // Peers serve only their stable state. When nothing arrived for an interval,
                // they may have moved past this one: ask for a newer layout, which replaces it.
                let newer = !std::mem::replace(&mut manifest.progressed, false);
                manifest.next_request = 0;
                let source = fetch.sources[fetch.next_source % fetch.sources.len()];
                let seq = fetch.seq + 1;
                self.request_chunks(CHUNKS_IN_FLIGHT);
                if newer {
                    self.send(
                        Destination::Replica(source),
                        Message::FetchState { seq, replica },
                    );
                }
            }
        }
    }

    /// Installs the fetched state once every chunk has arrived.
    fn maybe_finish_state_fetch(&mut self) {
        let complete = matches!(
            &self.state_fetch,
            Some(StateFetch { manifest: Some(manifest), .. }) if manifest.missing == 0
        );
        if !complete {
            return;
        }
        let fetch = self.state_fetch.take().expect("checked above");
        let manifest = fetch.manifest.expect("checked above");
        let mut snapshot = Vec::with_capacity(manifest.len as usize);
        for chunk in manifest.received.into_iter().flatten() {
            snapshot.extend_from_slice(&chunk);
        }
        let (seq, digest) = (fetch.seq, manifest.digest);
        if let Err(error) = self.install_state(seq, digest, Arc::new(snapshot)) {
            // Every chunk matched a layout certified by 2f+1 signed checkpoints, so only a
            // broken application gets here; keep the old state.
            tracing::error!(replica = self.id, seq, %error, "certified snapshot failed to install");
            self.ignore(Ignored::StateUndecodable);
            return;
        }
        tracing::info!(replica = self.id, seq, "installed state from peers");
        self.state_transfers += 1;
        if seq > self.checkpoints.stable_seq {
            self.make_stable(seq, digest, manifest.proof);
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
        // even if some of those who signed it first have moved on; a silent replica cannot.
        let checkpoint = (!self.silent()).then(|| Checkpoint::new(&self.key, seq, digest, self.id));
        if let Some(checkpoint) = &checkpoint {
            self.ready
                .persist
                .push(Durable::Checkpoint(checkpoint.clone()));
        }
        let own = OwnCheckpoint::new(digest, snapshot, checkpoint);
        self.checkpoints.own.insert(seq, own);
        self.log = self.log.split_off(&(seq + 1));
        self.next_seq = self.next_seq.max(seq + 1);
        Ok(())
    }
}

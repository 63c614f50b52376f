//! State transfer (section 5.3.2): fetching the state at a stable checkpoint from peers and
//! installing it once it matches the 2f+1 signed digest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pbft_crypto::Digest;

use super::checkpoints::OwnCheckpoint;
use super::retransmission::Help;
use super::Replica;
use crate::codec;
use crate::messages::{state, Checkpoint, Message, ReplicaId, Seq};
use crate::protocol::state_image::StateImage;
use crate::protocol::{Destination, Durable, Ignored, ReplicaError};
use crate::tally::Tally;

/// A state transfer in progress.
#[derive(Debug)]
pub(super) struct StateFetch {
    pub(super) seq: Seq,
    /// Which signer of the proof to ask next.
    pub(super) next_source: usize,
    pub(super) sources: Vec<ReplicaId>,
    /// The layout of the state at `seq`, once a peer sent it, and the partitions so far.
    pub(super) manifest: Option<Manifest>,
    /// Checked partitions of an earlier fetch that was replaced, by index and digest: the new
    /// layout may list them.
    pub(super) kept: BTreeMap<(u32, Digest), Vec<u8>>,
}

/// A certified state layout, fetched partition by partition.
#[derive(Debug)]
pub(super) struct Manifest {
    pub(super) proof: Vec<Checkpoint>,
    pub(super) digest: Digest,
    pub(super) partitions: Vec<Digest>,
    /// Partitions that differ from this replica's own and are not here yet.
    pub(super) wanted: BTreeMap<u32, PartitionFetch>,
    /// Partitions that arrived and matched their digests.
    pub(super) received: BTreeMap<u32, Vec<u8>>,
    /// Requests resume at this partition; it starts again at the first on every
    /// retransmission.
    pub(super) cursor: u32,
    /// Whether a piece arrived since the last retransmission.
    pub(super) progressed: bool,
}

/// One partition being fetched, all of it from one peer.
#[derive(Debug, Default)]
pub(super) struct PartitionFetch {
    source: Option<ReplicaId>,
    /// The encoding's length, from the first piece that arrived.
    len: Option<u64>,
    pieces: BTreeMap<u64, Vec<u8>>,
    asked: BTreeSet<u64>,
}

impl PartitionFetch {
    fn piece_count(&self) -> u64 {
        self.len.map_or(1, state::piece_count)
    }

    /// Forgets what came from its peer, to ask another.
    fn restart(&mut self, source: ReplicaId) {
        *self = PartitionFetch {
            source: Some(source),
            ..PartitionFetch::default()
        };
    }
}

/// Pieces asked for at once while fetching state.
const PIECES_IN_FLIGHT: usize = 16;

impl Replica {
    pub(super) fn start_state_fetch(&mut self, seq: Seq, sources: Vec<ReplicaId>) {
        if sources.is_empty() {
            return;
        }
        tracing::info!(replica = self.id, seq, "fetching state from peers");
        let first = sources[(self.id as usize) % sources.len()];
        // What an earlier fetch received is kept: the new state may hold the same partitions.
        let mut kept = BTreeMap::new();
        if let Some(earlier) = self.state_fetch.take() {
            kept = earlier.kept;
            if let Some(manifest) = earlier.manifest {
                kept.extend(keep_received(manifest));
            }
        }
        self.state_fetch = Some(StateFetch {
            seq,
            next_source: (self.id as usize + 1) % sources.len(),
            sources,
            manifest: None,
            kept,
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

    /// The state of checkpoint `seq` if it is served: the stable one, or the one before it
    /// (whose fetch may be under way).
    fn served_image(&self, seq: Seq) -> Option<&StateImage> {
        let c = &self.checkpoints;
        if seq == c.stable_seq && seq > 0 {
            return c.own.get(&seq).map(|own| &own.image);
        }
        c.previous
            .as_ref()
            .filter(|previous| previous.seq == seq)
            .map(|previous| &previous.own.image)
    }

    /// Answers with the layout of the stable state; its partitions are fetched one by one.
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
            partitions: own.image.partition_digests(),
        };
        self.send(Destination::Replica(requester), message);
    }

    pub(super) fn on_fetch_state_chunk(
        &mut self,
        seq: Seq,
        partition: u32,
        piece: u64,
        requester: ReplicaId,
    ) {
        if self.served_image(seq).is_none() {
            self.ignore(Ignored::StateNotHeld);
            return;
        }
        if !self.may_help(requester, Help::StatePiece) {
            return;
        }
        let Some((encoded, encoded_now)) = self.encoded_partition(seq, partition) else {
            self.ignore(Ignored::StateNotHeld);
            return;
        };
        let len = encoded.len() as u64;
        let Some(range) = state::piece_range(len, piece) else {
            self.ignore(Ignored::StateNotHeld);
            return;
        };
        // Encoding a partition costs its size, whichever piece is sent: a peer that makes this
        // replica encode pays for it from its budget.
        let cost = range.len() + if encoded_now { encoded.len() } else { 0 };
        if !self.may_send_help_bytes(requester, cost) {
            return;
        }
        let message = Message::StateChunk {
            seq,
            replica: self.id,
            partition,
            piece,
            len,
            data: encoded[range].to_vec(),
        };
        self.send(Destination::Replica(requester), message);
    }

    /// The encoding of a served partition, and whether it was encoded just now; the last one is
    /// kept, since a large partition is asked for a piece at a time.
    fn encoded_partition(&mut self, seq: Seq, partition: u32) -> Option<(Arc<Vec<u8>>, bool)> {
        if let Some((at, index, encoded)) = &self.checkpoints.encoded {
            if (*at, *index) == (seq, partition) {
                return Some((encoded.clone(), false));
            }
        }
        let image = self.served_image(seq)?;
        if partition >= image.partition_count() {
            return None;
        }
        let mut encoded = Vec::new();
        image.encode_partition(partition, &mut encoded);
        let encoded = Arc::new(encoded);
        self.checkpoints.encoded = Some((seq, partition, encoded.clone()));
        Some((encoded, true))
    }

    /// The digest of each partition of the state held now, the client table's last.
    fn own_partition_digests(&self) -> Vec<Digest> {
        let mut digests = self.app.partition_digests().to_vec();
        digests.push(state::clients_digest(&codec::encode(&self.clients)));
        digests
    }

    /// A certified layout for the state being fetched (or a newer one): fetch the partitions
    /// that differ from this replica's own.
    pub(super) fn on_state_manifest(
        &mut self,
        seq: Seq,
        proof: Vec<Checkpoint>,
        partitions: Vec<Digest>,
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
        let own = self.own_partition_digests();
        if state::state_digest(&partitions) != expected || partitions.len() != own.len() {
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
        // Partitions of a layout being replaced that the new one lists again need not travel
        // twice.
        let mut kept = std::mem::take(&mut fetch.kept);
        if let Some(old) = fetch.manifest.take() {
            kept.extend(keep_received(old));
        }
        let mut received = BTreeMap::new();
        let mut wanted = BTreeMap::new();
        for (index, digest) in partitions.iter().enumerate() {
            let index = index as u32;
            if own[index as usize] == *digest {
                continue;
            }
            match kept.remove(&(index, *digest)) {
                Some(bytes) => {
                    received.insert(index, bytes);
                }
                None => {
                    wanted.insert(index, PartitionFetch::default());
                }
            }
        }
        tracing::info!(
            replica = self.id,
            seq,
            differing = wanted.len() + received.len(),
            partitions = partitions.len(),
            "fetching the partitions that differ"
        );
        fetch.manifest = Some(Manifest {
            proof,
            digest: expected,
            partitions,
            wanted,
            received,
            cursor: 0,
            progressed: false,
        });
        self.request_chunks(PIECES_IN_FLIGHT);
        self.maybe_finish_state_fetch();
    }

    /// A piece of a partition being fetched, kept if it came from the peer asked; the
    /// partition is checked once it has every piece.
    pub(super) fn on_state_chunk(
        &mut self,
        seq: Seq,
        from: ReplicaId,
        partition: u32,
        piece: u64,
        len: u64,
        data: Vec<u8>,
    ) {
        let Some(manifest) = self
            .state_fetch
            .as_mut()
            .filter(|fetch| fetch.seq == seq)
            .and_then(|fetch| fetch.manifest.as_mut())
        else {
            self.ignore(Ignored::StateNotNeeded);
            return;
        };
        let Some(wanted) = manifest
            .wanted
            .get_mut(&partition)
            .filter(|wanted| wanted.source == Some(from))
        else {
            self.ignore(Ignored::StateNotNeeded);
            return;
        };
        // Only pieces asked for are kept: their number in flight is bounded, whatever a
        // faulty helper sends unasked.
        if wanted.pieces.contains_key(&piece) || !wanted.asked.contains(&piece) {
            self.ignore(Ignored::StateNotNeeded);
            return;
        }
        if wanted.len.is_some_and(|known| known != len)
            || state::piece_range(len, piece).map(|range| range.len()) != Some(data.len())
        {
            self.ignore(Ignored::StateMismatch);
            self.fetch_partition_elsewhere(partition);
            return;
        }
        let first = wanted.len.is_none();
        wanted.len = Some(len);
        wanted.asked.remove(&piece);
        wanted.pieces.insert(piece, data);
        manifest.progressed = true;
        if first && wanted.piece_count() > 1 {
            // Its other pieces can be asked for now.
            manifest.cursor = manifest.cursor.min(partition);
        }
        if wanted.pieces.len() as u64 == wanted.piece_count() {
            self.check_partition(partition);
        }
        self.request_chunks(2);
        self.maybe_finish_state_fetch();
    }

    /// Checks a partition whose every piece arrived against its digest in the layout.
    fn check_partition(&mut self, partition: u32) {
        let Some(manifest) = self.state_fetch.as_mut().and_then(|f| f.manifest.as_mut()) else {
            return;
        };
        let Some(wanted) = manifest.wanted.remove(&partition) else {
            return;
        };
        let expected = manifest.partitions[partition as usize];
        let clients_partition = manifest.partitions.len() as u32 - 1;
        let mut bytes = Vec::with_capacity(wanted.len.unwrap_or(0) as usize);
        for piece in wanted.pieces.into_values() {
            bytes.extend_from_slice(&piece);
        }
        let digest = if partition == clients_partition {
            Ok(state::clients_digest(&bytes))
        } else {
            self.app.partition_digest_of(partition, &bytes)
        };
        let manifest = (self.state_fetch.as_mut())
            .and_then(|fetch| fetch.manifest.as_mut())
            .expect("checked above");
        if digest.is_ok_and(|digest| digest == expected) {
            manifest.received.insert(partition, bytes);
            return;
        }
        manifest
            .wanted
            .insert(partition, wanted_from(wanted.source));
        self.ignore(Ignored::StateMismatch);
        self.fetch_partition_elsewhere(partition);
    }

    /// The partition's peer sent something that does not fit: ask the next one for all of it.
    fn fetch_partition_elsewhere(&mut self, partition: u32) {
        let Some(fetch) = self.state_fetch.as_mut() else {
            return;
        };
        let Some(manifest) = fetch.manifest.as_mut() else {
            return;
        };
        let Some(wanted) = manifest.wanted.get_mut(&partition) else {
            return;
        };
        let at = (wanted.source)
            .and_then(|source| fetch.sources.iter().position(|s| *s == source))
            .map_or(0, |at| at + 1);
        if let Some(next) = fetch.sources.get(at % fetch.sources.len().max(1)) {
            wanted.restart(*next);
        }
        manifest.cursor = manifest.cursor.min(partition);
    }

    /// Asks for up to `count` more missing pieces, each partition's from its own source.
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
        for (&partition, wanted) in manifest.wanted.range_mut(manifest.cursor..) {
            if requests.len() >= count {
                break;
            }
            let source = *wanted.source.get_or_insert_with(|| {
                let source = fetch.sources[fetch.next_source % fetch.sources.len()];
                fetch.next_source += 1;
                source
            });
            for piece in 0..wanted.piece_count() {
                if requests.len() >= count {
                    break;
                }
                if wanted.pieces.contains_key(&piece) || !wanted.asked.insert(piece) {
                    continue;
                }
                requests.push((source, partition, piece));
            }
            let all_asked = wanted.asked.len() + wanted.pieces.len();
            if wanted.len.is_some() && all_asked as u64 == wanted.piece_count() {
                manifest.cursor = partition + 1;
            }
        }
        let seq = fetch.seq;
        for (source, partition, piece) in requests {
            self.send(
                Destination::Replica(source),
                Message::FetchStateChunk {
                    seq,
                    partition,
                    piece,
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
                // they may have moved past this one: ask for a newer layout, which replaces it,
                // and ask another peer for each partition that did not arrive.
                let newer = !std::mem::replace(&mut manifest.progressed, false);
                manifest.cursor = 0;
                for wanted in manifest.wanted.values_mut() {
                    wanted.asked.clear();
                    if newer {
                        let at = (wanted.source)
                            .and_then(|source| fetch.sources.iter().position(|s| *s == source))
                            .map_or(0, |at| at + 1);
                        wanted.restart(fetch.sources[at % fetch.sources.len()]);
                    }
                }
                // Each partition keeps its peer, so the layout is asked of each in turn.
                let source = fetch.sources[fetch.next_source % fetch.sources.len()];
                fetch.next_source += 1;
                let seq = fetch.seq + 1;
                self.request_chunks(PIECES_IN_FLIGHT);
                if newer {
                    self.send(
                        Destination::Replica(source),
                        Message::FetchState { seq, replica },
                    );
                }
            }
        }
    }

    /// Installs the fetched state once every partition that differs has arrived. The replica
    /// may have executed while fetching, so what differs is looked at again first.
    fn maybe_finish_state_fetch(&mut self) {
        let complete = matches!(
            &self.state_fetch,
            Some(StateFetch { manifest: Some(manifest), .. }) if manifest.wanted.is_empty()
        );
        if !complete {
            return;
        }
        let own = self.own_partition_digests();
        let manifest = (self.state_fetch.as_mut())
            .and_then(|fetch| fetch.manifest.as_mut())
            .expect("checked above");
        let differing: Vec<u32> = (manifest.partitions.iter().zip(&own))
            .enumerate()
            .filter(|(_, (theirs, ours))| theirs != ours)
            .map(|(index, _)| index as u32)
            .collect();
        let missing: Vec<u32> = (differing.iter().copied())
            .filter(|index| !manifest.received.contains_key(index))
            .collect();
        if !missing.is_empty() {
            for index in missing {
                manifest.wanted.insert(index, PartitionFetch::default());
            }
            manifest.cursor = 0;
            self.request_chunks(PIECES_IN_FLIGHT);
            return;
        }
        let fetch = self.state_fetch.take().expect("checked above");
        let mut manifest = fetch.manifest.expect("checked above");
        let parts: BTreeMap<u32, Vec<u8>> = (differing.into_iter())
            .filter_map(|index| Some((index, manifest.received.remove(&index)?)))
            .collect();
        let (seq, digest) = (fetch.seq, manifest.digest);
        if let Err(error) = self.install_state(seq, digest, parts) {
            // Every partition matched a layout certified by 2f+1 signed checkpoints, so only a
            // broken application gets here. The state may be half replaced: fetch it again.
            tracing::error!(replica = self.id, seq, %error, "certified state failed to install");
            self.ignore(Ignored::StateUndecodable);
            let sources = fetch.sources;
            self.start_state_fetch(seq, sources);
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

    /// Replaces the partitions in `parts` (the client table's included) with their encodings,
    /// which leaves the state of checkpoint `seq` with digest `digest`, and drops the log at and
    /// below it.
    pub(super) fn install_state(
        &mut self,
        seq: Seq,
        digest: Digest,
        parts: BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), ReplicaError> {
        let clients_partition = self.app.partition_count();
        for (partition, bytes) in &parts {
            if *partition == clients_partition {
                // The limit is the encoding's own length: a bad length prefix allocates no more.
                self.clients = codec::decode(bytes, bytes.len() as u64)
                    .map_err(|source| ReplicaError::SnapshotUndecodable { seq, source })?;
            } else {
                self.app
                    .restore_partition(*partition, bytes)
                    .map_err(|source| ReplicaError::SnapshotRefused { seq, source })?;
            }
        }
        let image = self.take_image();
        if image.digest() != digest {
            return Err(ReplicaError::SnapshotMismatch { seq });
        }
        self.last_executed = seq;
        // Vouch for the state now held, so that replicas further behind find a quorum for it
        // even if some of those who signed it first have moved on; a silent replica cannot.
        let checkpoint = (!self.silent()).then(|| Checkpoint::new(&self.key, seq, digest, self.id));
        if let Some(checkpoint) = &checkpoint {
            self.ready
                .persist
                .push(Durable::Checkpoint(checkpoint.clone()));
        }
        let own = OwnCheckpoint {
            image,
            message: checkpoint,
        };
        self.checkpoints.own.insert(seq, own);
        self.log = self.log.split_off(&(seq + 1));
        self.next_seq = self.next_seq.max(seq + 1);
        Ok(())
    }
}

/// The checked partitions of a layout being replaced, by index and digest.
fn keep_received(manifest: Manifest) -> impl Iterator<Item = ((u32, Digest), Vec<u8>)> {
    let partitions = manifest.partitions;
    (manifest.received.into_iter())
        .map(move |(index, bytes)| ((index, partitions[index as usize]), bytes))
}

/// A partition to fetch again, from the peer after `source`.
fn wanted_from(source: Option<ReplicaId>) -> PartitionFetch {
    PartitionFetch {
        source,
        ..PartitionFetch::default()
    }
}

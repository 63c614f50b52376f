//! State transfer of a large state: only the partitions that differ, each in pieces from one
//! replica and checked against the certified layout, from several replicas, resumed across
//! retransmission intervals when the helpers' byte budgets run out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use std::cell::RefCell;

use pbft_core::app::{FrozenState, KvOp, KvStore, SnapshotError, StateMachine};
use pbft_core::fixtures::{checkpoint_config, TestCluster};
use pbft_core::messages::{self, Batch, ClientRequest, Message, ReplicaId, Sender};
use pbft_core::protocol::{ClientTable, Destination, Ignored, Replica, Timer};
use pbft_crypto::{Digest, Domain, KeyPair};

/// Partitions of [`Blob`].
const BLOB_PARTITIONS: u32 = 4;

/// An application whose state is [`BLOB_PARTITIONS`] byte strings. An operation (a little-endian
/// `u64` and a partition) grows one by that many deterministic bytes: a large state from a few
/// small requests.
#[derive(Default)]
struct Blob {
    parts: [Vec<u8>; BLOB_PARTITIONS as usize],
    /// Each partition's digest, once computed since it last changed.
    digests: RefCell<[Option<Digest>; BLOB_PARTITIONS as usize]>,
}

impl StateMachine for Blob {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        if let (Ok(grow), Some(&partition)) =
            (<[u8; 8]>::try_from(&op[..op.len().min(8)]), op.get(8))
        {
            let grow = u64::from_le_bytes(grow).min(1 << 28) as usize;
            let index = partition as usize % self.parts.len();
            let part = &mut self.parts[index];
            let start = part.len();
            part.extend((start..start + grow).map(|i| (i % 251) as u8));
            self.digests.get_mut()[index] = None;
        }
        (self.state_bytes()).to_le_bytes().to_vec()
    }

    fn query(&self, _op: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        pbft_core::codec::encode(&self.parts)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.parts = pbft_core::codec::decode(snapshot, u64::MAX)
            .map_err(|e| SnapshotError(e.to_string()))?;
        *self.digests.get_mut() = Default::default();
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        self.parts.iter().map(|part| part.len() as u64).sum()
    }

    fn partition_count(&self) -> u32 {
        BLOB_PARTITIONS
    }

    fn partition_digests(&self) -> Arc<Vec<Digest>> {
        let mut cached = self.digests.borrow_mut();
        let digests = (self.parts.iter().zip(cached.iter_mut()))
            .map(|(part, digest)| *digest.get_or_insert_with(|| Digest::of(Domain::Content, part)))
            .collect();
        Arc::new(digests)
    }

    fn freeze(&self) -> Arc<dyn FrozenState> {
        Arc::new(FrozenBlob(self.parts.clone()))
    }

    fn partition_digest_of(&self, partition: u32, bytes: &[u8]) -> Result<Digest, SnapshotError> {
        if partition >= BLOB_PARTITIONS {
            return Err(SnapshotError(format!("no partition {partition}")));
        }
        Ok(Digest::of(Domain::Content, bytes))
    }

    fn restore_partition(&mut self, partition: u32, bytes: &[u8]) -> Result<(), SnapshotError> {
        let part = (self.parts.get_mut(partition as usize))
            .ok_or_else(|| SnapshotError(format!("no partition {partition}")))?;
        *part = bytes.to_vec();
        self.digests.get_mut()[partition as usize] = None;
        Ok(())
    }
}

#[derive(Debug)]
struct FrozenBlob([Vec<u8>; BLOB_PARTITIONS as usize]);

impl FrozenState for FrozenBlob {
    fn encode_partition(&self, partition: u32, out: &mut Vec<u8>) {
        if let Some(part) = self.0.get(partition as usize) {
            out.extend_from_slice(part);
        }
    }
}

/// A batch of one request per partition, each growing it by `bytes`.
fn grow(c: &TestCluster, client: u8, bytes: u64) -> Batch {
    let key = c
        .committee
        .signer(KeyPair::from_seed(&[client; 32]).unwrap());
    let requests = (0..BLOB_PARTITIONS as u8)
        .map(|partition| {
            let mut op = bytes.to_le_bytes().to_vec();
            op.push(partition);
            ClientRequest {
                timestamp: 1 + u64::from(partition),
                op,
            }
        })
        .collect();
    Batch {
        envelopes: vec![messages::RequestEnvelope::new(&key, 1, requests)],
    }
}

#[test]
fn a_200_mb_state_moves_in_pieces_its_partitions_from_several_replicas() {
    let c = TestCluster::new(1);
    let config = checkpoint_config(2, 4);
    let interval = config.retransmit_interval;
    let mut replicas: Vec<Replica> = (0..4)
        .map(|id| {
            let mut replica = Replica::new(
                id,
                c.committee.clone(),
                config.clone(),
                c.keys[id as usize].key_pair().clone(),
                Box::new(Blob::default()),
            )
            .unwrap();
            replica.start(Duration::ZERO);
            replica.poll_ready();
            replica
        })
        .collect();

    // Replicas 0 to 2 execute two batches that grow the state to 200 MiB; replica 3 hears
    // nothing of them.
    let mut now = Duration::from_millis(1);
    let batches = [grow(&c, 1, 25 << 20), grow(&c, 2, 25 << 20)];
    for (seq, batch) in (1..).zip(&batches) {
        for (id, replica) in replicas.iter_mut().enumerate().take(3) {
            let from = 3 - id as ReplicaId;
            c.deliver(replica, now, from, c.committed(0, seq, batch));
        }
    }
    assert!((0..3).all(|id| replicas[id].last_executed() == 2));

    // Then everyone talks: the checkpoint at 2 becomes stable, and replica 3 fetches it.
    let mut chunk_senders = BTreeSet::new();
    let mut chunks = 0;
    let mut intervals = 0;
    while replicas[3].last_executed() < 2 {
        assert!(intervals < 100, "replica 3 never caught up");
        let mut queue: VecDeque<(ReplicaId, ReplicaId, Arc<Message>)> = VecDeque::new();
        loop {
            for (id, replica) in replicas.iter_mut().enumerate() {
                let from = id as ReplicaId;
                for out in replica.poll_ready().messages {
                    let to: Vec<ReplicaId> = match out.to {
                        Destination::AllReplicas => (0..4).filter(|&r| r != from).collect(),
                        Destination::Replica(r) => vec![r],
                    };
                    for r in to {
                        queue.push_back((from, r, out.message.clone()));
                    }
                }
            }
            let Some((from, to, message)) = queue.pop_front() else {
                break;
            };
            if let Message::StateChunk { .. } = &*message {
                chunk_senders.insert(from);
                chunks += 1;
            }
            let verified = c
                .verify(Sender::Replica(from), (*message).clone())
                .unwrap_or_else(|e| panic!("{} refused: {e}", message.kind()));
            replicas[to as usize].handle_message(now, verified);
        }
        now += interval;
        intervals += 1;
        for replica in &mut replicas {
            replica.handle_timer(now, Timer::Retransmit);
        }
    }

    assert_eq!(replicas[3].state_transfers(), 1);
    assert_eq!(replicas[3].state_digest(), replicas[0].state_digest());
    assert!(chunks >= 200, "{chunks} chunks");
    assert!(
        chunk_senders.len() >= 2,
        "chunks came from {chunk_senders:?}"
    );
    // One interval's budget per helper is one message's worth (64 MiB): the transfer had to
    // resume in later intervals.
    assert!(intervals >= 2, "{intervals} intervals");
    let limited: u64 = (0..3)
        .map(|id| {
            let ignored: &BTreeMap<Ignored, u64> = replicas[id].ignored();
            ignored.get(&Ignored::HelpRateLimited).copied().unwrap_or(0)
        })
        .sum();
    assert!(limited > 0);
}

/// The FETCH-STATE requests among `messages`, with whom each goes to.
fn fetch_state_requests(messages: &[pbft_core::protocol::Outgoing]) -> Vec<(Destination, u64)> {
    messages
        .iter()
        .filter_map(|out| match &*out.message {
            Message::FetchState { seq, .. } => Some((out.to, *seq)),
            _ => None,
        })
        .collect()
}

/// A replica that holds f+1 checkpoints past it but never 2f+1 (a faulty primary keeps its own
/// from it) and executes nothing for a whole retransmission interval asks those replicas for
/// their stable state; the layout that answers, with its 2f+1 signed checkpoints, makes the
/// checkpoint stable and starts the fetch.
#[test]
fn a_stranded_replica_asks_for_a_stable_state_and_fetches_it() {
    let c = TestCluster::new(1);
    let config = checkpoint_config(8, 16);
    let interval = config.retransmit_interval;
    let config_for_clients = config.clone();
    let mut replica = c.replica_with(1, config);
    let mut now = Duration::from_millis(1);
    let tick = |replica: &mut Replica, now: &mut Duration| {
        *now += interval;
        replica.handle_timer(*now, Timer::Retransmit);
        fetch_state_requests(&replica.poll_ready().messages)
    };

    // One replica past it proves nothing: it could be the faulty one.
    c.deliver(
        &mut replica,
        now,
        2,
        Message::Checkpoint(c.checkpoint(8, 2)),
    );
    assert_eq!(tick(&mut replica, &mut now), vec![]);
    assert_eq!(tick(&mut replica, &mut now), vec![]);

    // f+1 are: it asks each of them for any stable state past what it executed.
    c.deliver(
        &mut replica,
        now,
        3,
        Message::Checkpoint(c.checkpoint(16, 3)),
    );
    let asked = tick(&mut replica, &mut now);
    assert_eq!(
        asked,
        vec![(Destination::Replica(2), 1), (Destination::Replica(3), 1)]
    );
    assert_eq!(replica.stable_checkpoint(), 0);

    // A layout with its proof answers: stable here, and the three partitions that differ from
    // its own are asked for.
    let mut store = KvStore::new();
    for key in ["a", "b", "c"] {
        store.apply(KvOp::Put {
            key: key.as_bytes().to_vec(),
            value: vec![7; 1 << 20],
        });
    }
    let mut partitions = store.partition_digests().to_vec();
    let clients = ClientTable::new(config_for_clients.client_bounds());
    partitions.push(messages::state::clients_digest(&pbft_core::codec::encode(
        &clients,
    )));
    c.deliver(&mut replica, now, 2, c.manifest(16, partitions));
    assert_eq!(replica.stable_checkpoint(), 16);
    let chunk_requests = replica
        .poll_ready()
        .messages
        .iter()
        .filter(|out| matches!(&*out.message, Message::FetchStateChunk { seq: 16, .. }))
        .count();
    assert_eq!(chunk_requests, 3);
    // No chunk arrived within an interval: the helpers may have moved on, so it also asks one
    // of them for a newer layout.
    let asked = tick(&mut replica, &mut now);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].1, 17);
}

/// A replica a few batches behind when a checkpoint becomes stable keeps the slots it has not
/// executed and catches up from commit certificates, which its peers keep for the batches below
/// their stable checkpoint; no state moves.
#[test]
fn a_replica_a_few_batches_behind_catches_up_from_commit_certificates() {
    let c = TestCluster::new(1);
    let config = checkpoint_config(4, 8);
    let now = Duration::from_millis(10);
    let batches: Vec<Batch> = (1..=4u8).map(|i| grow(&c, i, 64)).collect();
    let committed = |seq: usize| c.committed(0, seq as u64, &batches[seq - 1]);
    let mut replicas: Vec<Replica> = (0..4)
        .map(|id| c.replica_with(id, config.clone()))
        .collect();
    // Replicas 0 to 2 execute 1 to 4 and exchange their checkpoints; replica 3 executes 1 and 2.
    let mut checkpoints = Vec::new();
    for (id, replica) in replicas.iter_mut().enumerate().take(3) {
        for seq in 1..=4 {
            c.deliver(replica, now, 1, committed(seq));
        }
        let ready = replica.poll_ready();
        for out in &ready.messages {
            if let Message::Checkpoint(checkpoint) = &*out.message {
                checkpoints.push((id as ReplicaId, checkpoint.clone()));
            }
        }
    }
    assert_eq!(checkpoints.len(), 3);
    for seq in 1..=2 {
        c.deliver(&mut replicas[3], now, 1, committed(seq));
    }
    let _ = replicas[3].poll_ready();
    for (from, checkpoint) in &checkpoints {
        for (to, replica) in replicas.iter_mut().enumerate() {
            if to as ReplicaId != *from {
                c.deliver(replica, now, *from, Message::Checkpoint(checkpoint.clone()));
            }
        }
    }
    assert_eq!(replicas[0].stable_checkpoint(), 4);
    assert_eq!(replicas[3].stable_checkpoint(), 4);
    let lagging = replicas[3].poll_ready();
    assert!(
        fetch_state_requests(&lagging.messages).is_empty(),
        "two batches behind, no state is fetched"
    );

    // Its status reaches a peer, which answers from the batches below its stable checkpoint.
    let status = Message::Status {
        replica: 3,
        view: 0,
        last_executed: 2,
        fingerprint: *c.committee.fingerprint(),
    };
    let _ = replicas[0].poll_ready();
    c.deliver(&mut replicas[0], now, 3, status);
    let answers: Vec<Message> = (replicas[0].poll_ready().messages.iter())
        .filter(|m| matches!(&*m.message, Message::Committed { .. }))
        .map(|m| (*m.message).clone())
        .collect();
    assert_eq!(answers.len(), 2, "slots 3 and 4");
    for answer in answers {
        c.deliver(&mut replicas[3], now, 0, answer);
    }
    assert_eq!(replicas[3].last_executed(), 4);
    assert_eq!(replicas[3].state_digest(), replicas[0].state_digest());
    assert_eq!(replicas[3].state_transfers(), 0);
}

/// A peer gets at most 1,024 pieces of state per retransmission interval, however small they
/// are: the byte budget alone would let a faulty one draw an answer per tiny partition, each a
/// step of the replica that serves it.
#[test]
fn pieces_of_state_are_counted_per_peer_and_interval() {
    let c = TestCluster::new(1);
    let config = checkpoint_config(2, 4);
    let interval = config.retransmit_interval;
    let mut replica = c.replica_with(0, config);
    let now = Duration::from_millis(5);
    for seq in 1..=2 {
        c.deliver(
            &mut replica,
            now,
            1,
            c.committed(0, seq, &grow(&c, seq as u8, 8)),
        );
    }
    let digest = replica.state_digest();
    for from in 1..3 {
        let checkpoint = messages::Checkpoint::new(c.key(from), 2, digest, from);
        c.deliver(&mut replica, now, from, Message::Checkpoint(checkpoint));
    }
    assert_eq!(replica.stable_checkpoint(), 2);
    let _ = replica.poll_ready();
    let ask = |replica: &mut Replica, now: Duration| {
        for partition in 0..1500 {
            let request = Message::FetchStateChunk {
                seq: 2,
                partition,
                piece: 0,
                replica: 3,
            };
            c.deliver(replica, now, 3, request);
        }
        (replica.poll_ready().messages.iter())
            .filter(|out| matches!(&*out.message, Message::StateChunk { .. }))
            .count()
    };
    assert_eq!(ask(&mut replica, now), 1024);
    assert_eq!(ask(&mut replica, now), 0);
    assert_eq!(ask(&mut replica, now + interval), 1024);
}

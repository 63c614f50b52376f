//! A replica rebuilt from its durable records after a crash keeps the promises it made before.

use std::time::Duration;

use pbft_core::app::{KvOp, KvStore};
use pbft_core::messages::{
    self, Batch, ClientRequest, Limits, Message, Phase, RequestEnvelope, Sender, StrictCheck, Vote,
};
use pbft_core::protocol::{Durable, ProtocolConfig, Ready, Replica};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, Signer};

use pbft_core::fixtures::{checkpoint_config, TestCluster};

fn batch_putting(client: &Signer, value: &[u8]) -> Batch {
    let op = KvOp::Put {
        key: b"k".to_vec(),
        value: value.to_vec(),
    }
    .encode();
    let envelope = RequestEnvelope::new(client, 1, vec![ClientRequest { timestamp: 1, op }]);
    Batch {
        envelopes: vec![envelope],
    }
}

struct Harness {
    keys: Vec<Signer>,
    committee: Committee,
    /// Every record replica 2 persisted, in order, as its disk would hold them.
    disk: Vec<Durable>,
}

impl Harness {
    fn new() -> Harness {
        let cluster = TestCluster::new(1);
        Harness {
            committee: cluster.committee,
            keys: cluster.keys,
            disk: Vec::new(),
        }
    }

    fn fresh_backup(&self) -> Replica {
        let mut replica = Replica::new(
            2,
            self.committee.clone(),
            ProtocolConfig::default(),
            self.keys[2].key_pair().clone(),
            Box::new(KvStore::new()),
        )
        .unwrap();
        replica.start(Duration::ZERO);
        replica
    }

    fn restarted_backup(&self) -> Replica {
        let (mut replica, report) = Replica::recover(
            2,
            self.committee.clone(),
            ProtocolConfig::default(),
            self.keys[2].key_pair().clone(),
            Box::new(KvStore::new()),
            self.disk.clone(),
        )
        .unwrap();
        assert_eq!(report.records, self.disk.len());
        replica.start(Duration::from_secs(10));
        replica
    }

    /// Delivers `message` from `from` and returns the outputs, keeping what had to be persisted.
    fn deliver(&mut self, replica: &mut Replica, from: u32, message: Message) -> Ready {
        let verified = messages::verify(
            message,
            Sender::Replica(from),
            &self.committee,
            &Limits::default(),
            &mut StrictCheck,
        )
        .expect("a valid message");
        replica.handle_message(Duration::from_secs(11), verified);
        let ready = replica.poll_ready();
        self.disk.extend(ready.persist.iter().cloned());
        ready
    }

    fn pre_prepare(&self, seq: u64, batch: &Batch) -> Message {
        let header = Vote::new(&self.keys[0], Phase::PrePrepare, 0, seq, batch.digest(), 0);
        Message::PrePrepare {
            header,
            batch: batch.clone(),
        }
    }

    fn prepare_from(&self, replica: u32, seq: u64, batch: &Batch) -> Message {
        let digest = batch.digest();
        Message::Prepare {
            vote: Vote::new(
                &self.keys[replica as usize],
                Phase::Prepare,
                0,
                seq,
                digest,
                replica,
            ),
            pre_prepare: Vote::new(&self.keys[0], Phase::PrePrepare, 0, seq, digest, 0),
        }
    }
}

/// The PREPAREs replica 2 sent for sequence number `seq`.
fn own_prepares(ready: &Ready, seq: u64) -> Vec<Vote> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &*m.message {
            Message::Prepare { vote, .. } if vote.replica == 2 && vote.seq == seq => {
                Some(vote.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_backup_restarted_after_preparing_never_prepares_a_conflicting_batch() {
    let mut h = Harness::new();
    let client = h.committee.signer(KeyPair::from_seed(&[9; 32]).unwrap());
    let first = batch_putting(&client, b"first");
    let second = batch_putting(&client, b"second");

    let mut backup = h.fresh_backup();
    let ready = h.deliver(&mut backup, 0, h.pre_prepare(1, &first));
    let sent = own_prepares(&ready, 1);
    assert_eq!(sent.len(), 1, "the backup prepares the first batch");
    assert_eq!(sent[0].digest, first.digest());
    assert!(
        h.disk
            .iter()
            .any(|r| matches!(r, Durable::Vote(v) if *v == sent[0])),
        "the PREPARE is among the records to persist before sending"
    );

    // Crash, and restart from what was persisted.
    drop(backup);
    let mut backup = h.restarted_backup();
    let restart = backup.poll_ready();
    assert!(own_prepares(&restart, 1)
        .iter()
        .all(|v| v.digest == first.digest()));

    // An equivocating primary now offers another batch for the same view and number, and the
    // other backups (one of them colluding) vouch for it.
    let mut sent_after = Vec::new();
    for (from, message) in [
        (0, h.pre_prepare(1, &second)),
        (1, h.prepare_from(1, 1, &second)),
        (3, h.prepare_from(3, 1, &second)),
    ] {
        let ready = h.deliver(&mut backup, from, message);
        sent_after.extend(own_prepares(&ready, 1));
        assert!(
            !ready.messages.iter().any(|m| matches!(&*m.message,
                Message::Commit(v) if v.replica == 2 && v.digest == second.digest())),
            "committed to a batch conflicting with its own PREPARE"
        );
    }
    assert!(
        sent_after.iter().all(|v| v.digest == first.digest()),
        "after a restart the backup prepared {:?} at (0, 1), having prepared {:?} before",
        sent_after.iter().map(|v| v.digest).collect::<Vec<_>>(),
        first.digest()
    );
    assert!(
        backup.evidence().contains_key(&0),
        "the second PRE-PREPARE is proof against the primary"
    );
}

#[test]
fn a_replica_restarted_after_a_commit_executes_the_batch_again() {
    let mut h = Harness::new();
    let client = h.committee.signer(KeyPair::from_seed(&[9; 32]).unwrap());
    let batch = batch_putting(&client, b"kept");

    let mut backup = h.fresh_backup();
    h.deliver(&mut backup, 0, h.pre_prepare(1, &batch));
    h.deliver(&mut backup, 1, h.prepare_from(1, 1, &batch));
    for from in [0u32, 1] {
        let commit = Vote::new(
            &h.keys[from as usize],
            Phase::Commit,
            0,
            1,
            batch.digest(),
            from,
        );
        h.deliver(&mut backup, from, Message::Commit(commit));
    }
    assert_eq!(backup.last_executed(), 1);
    let digest_before = backup.state_digest();
    assert!(h.disk.iter().any(|r| matches!(r, Durable::Committed(_))));

    let backup = h.restarted_backup();
    assert_eq!(
        backup.last_executed(),
        1,
        "the committed batch is executed again"
    );
    assert_eq!(backup.state_digest(), digest_before);
}

#[test]
fn a_restart_without_the_last_unsynced_records_stays_consistent() {
    let mut h = Harness::new();
    let client = h.committee.signer(KeyPair::from_seed(&[9; 32]).unwrap());
    let first = batch_putting(&client, b"first");
    let second = batch_putting(&client, b"second");

    let mut backup = h.fresh_backup();
    let ready = h.deliver(&mut backup, 0, h.pre_prepare(1, &first));
    assert_eq!(own_prepares(&ready, 1).len(), 1);
    // The write of that step never reached the disk, so its PREPARE never left either: the
    // restarted replica is free to answer another PRE-PREPARE, and does so exactly once.
    h.disk.clear();
    let mut backup = h.restarted_backup();
    let ready = h.deliver(&mut backup, 0, h.pre_prepare(1, &second));
    let sent = own_prepares(&ready, 1);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].digest, second.digest());
    let ready = h.deliver(&mut backup, 0, h.pre_prepare(1, &first));
    assert!(own_prepares(&ready, 1).is_empty());
}

/// Stable states are written as a base and then as the changes since the state written before,
/// until those outgrow the base; a replica rebuilt from the base and the changes after it holds
/// the same state.
#[test]
fn a_replica_recovers_its_state_from_a_base_and_the_changes_after_it() {
    let c = TestCluster::new(1);
    let config = checkpoint_config(2, 4);
    let mut replica = c.replica_with(3, config.clone());
    let client = c.committee.signer(KeyPair::from_seed(&[9; 32]).unwrap());
    let now = Duration::from_millis(5);
    let mut disk = Vec::new();
    for seq in 1..=24u64 {
        // Mostly new keys of a kilobyte; a few overwrites and deletions.
        let op = match seq % 6 {
            0 => KvOp::Delete {
                key: format!("key-{}", seq - 3).into_bytes(),
            },
            _ => KvOp::Put {
                key: format!("key-{}", seq % 17).into_bytes(),
                value: vec![seq as u8; 1024],
            },
        };
        let envelope = RequestEnvelope::new(
            &client,
            seq,
            vec![ClientRequest {
                timestamp: seq,
                op: op.encode(),
            }],
        );
        let batch = Batch {
            envelopes: vec![envelope],
        };
        c.deliver(&mut replica, now, 0, c.committed(0, seq, &batch));
        if seq % 2 == 0 {
            let digest = replica.state_digest();
            for from in 0..2 {
                let checkpoint = messages::Checkpoint::new(c.key(from), seq, digest, from);
                c.deliver(&mut replica, now, from, Message::Checkpoint(checkpoint));
            }
            assert_eq!(replica.stable_checkpoint(), seq);
        }
        disk.extend(replica.poll_ready().persist);
    }
    let states: Vec<bool> = (disk.iter())
        .filter_map(|record| match record {
            Durable::Stable { state, .. } => Some(state.is_base()),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 12);
    assert!(states[0], "the first is a base");
    assert!(
        states.iter().filter(|base| !**base).count() >= 6,
        "{states:?}"
    );
    assert!(states[1..].iter().any(|base| *base), "{states:?}");

    // Through the storage's encoding, as a restart reads it back.
    let read_back: Vec<Durable> = (disk.iter())
        .map(|record| {
            let bytes = pbft_core::codec::encode(record);
            pbft_core::codec::decode(&bytes, bytes.len() as u64).unwrap()
        })
        .collect();
    let (recovered, report) = Replica::recover(
        3,
        c.committee.clone(),
        config,
        c.key(3).key_pair().clone(),
        Box::new(KvStore::new()),
        read_back,
    )
    .unwrap();
    assert_eq!(report.snapshot_seq, 24);
    assert_eq!(recovered.last_executed(), 24);
    assert_eq!(recovered.state_digest(), replica.state_digest());
}

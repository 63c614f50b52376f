//! A node's durable state on disk: a torn last write is cut off and the node starts; damage
//! before the end stops it with an error naming the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pbft_core::app::{KvOp, KvStore};
use pbft_core::messages::{
    self, Batch, ClientRequest, Limits, Message, Phase, RequestEnvelope, Sender, StrictCheck, Vote,
};
use pbft_core::protocol::{ProtocolConfig, Replica};
use pbft_crypto::{KeyPair, Signer};
use pbft_node::local::loopback_cluster;
use pbft_node::runtime::{NodeSetup, RunningNode};
use pbft_node::storage::{ReplicaStore, StorageError, Wal, WalOptions};

/// Replica 2 of a fresh loopback cluster, with a log holding one executed batch written in
/// three syncs (pre-prepare, prepare, commits), as a crashed replica would leave it.
fn setup_with_log(dir: &Path) -> NodeSetup {
    let setups = loopback_cluster(1, ProtocolConfig::default(), dir).unwrap();
    let setup = setups[2].clone();
    let keys: Vec<Signer> = (setups.iter())
        .map(|s| setup.committee.signer(s.key.clone()))
        .collect();
    let mut replica = Replica::new(
        2,
        setup.committee.clone(),
        setup.protocol.clone(),
        setup.key.clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(Duration::ZERO);
    let mut store = ReplicaStore::open(&setup.data_dir, false, setup.protocol.log_window)
        .unwrap()
        .store;
    let client = setup.committee.signer(KeyPair::generate());
    let op = KvOp::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }
    .encode();
    let batch = Batch {
        envelopes: vec![RequestEnvelope::new(
            &client,
            1,
            vec![ClientRequest { timestamp: 1, op }],
        )],
    };
    let digest = batch.digest();
    let header = Vote::new(&keys[0], Phase::PrePrepare, 0, 1, digest, 0);
    let steps = vec![
        vec![(
            0,
            Message::PrePrepare {
                header: header.clone(),
                batch,
            },
        )],
        vec![(
            1,
            Message::Prepare {
                vote: Vote::new(&keys[1], Phase::Prepare, 0, 1, digest, 1),
                pre_prepare: header,
            },
        )],
        (0..2u32)
            .map(|r| {
                let vote = Vote::new(&keys[r as usize], Phase::Commit, 0, 1, digest, r);
                (r, Message::Commit(vote))
            })
            .collect(),
    ];
    for step in steps {
        for (from, message) in step {
            let verified = messages::verify(
                message,
                Sender::Replica(from),
                &setup.committee,
                &Limits::default(),
                &mut StrictCheck,
            )
            .unwrap();
            replica.handle_message(Duration::from_millis(1), verified);
        }
        store.persist(&replica.poll_ready().persist).unwrap();
    }
    assert_eq!(replica.last_executed(), 1);
    setup
}

fn segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segments.len(), 1);
    segments.pop().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_intact_log_restores_the_executed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup_with_log(dir.path());
    runtime().block_on(async {
        let node = RunningNode::start(setup).await.unwrap();
        let status = node.status().await.unwrap();
        assert_eq!(status.last_executed, 1);
        node.stop().await;
    });
}

#[test]
fn a_torn_last_write_is_cut_off_and_the_node_starts() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup_with_log(dir.path());
    let path = segment(&setup.data_dir);
    let full = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of the last write: its final bytes never reached the disk.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(full - 7).unwrap();
    drop(file);
    runtime().block_on(async {
        let node = RunningNode::start(setup).await.unwrap();
        let status = node.status().await.unwrap();
        // The commits were in the torn write: the batch is prepared, not executed.
        assert_eq!(status.last_executed, 0);
        node.stop().await;
    });
    let cut = std::fs::metadata(&path).unwrap().len();
    assert!(
        cut < full - 7,
        "the partial record was not removed ({cut} bytes of {full})"
    );
}

#[test]
fn a_flipped_bit_before_the_end_stops_the_node_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup_with_log(dir.path());
    let path = segment(&setup.data_dir);
    let mut bytes = std::fs::read(&path).unwrap();
    // Well inside the first record (the batch body), far from the end.
    bytes[40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    runtime().block_on(async {
        let error = match RunningNode::start(setup).await {
            Ok(_) => panic!("a node started on a corrupt log"),
            Err(error) => pbft_node::error::with_causes(&error),
        };
        assert!(error.contains("corrupt"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    });
}

#[test]
fn a_record_that_passes_its_checksum_but_does_not_decode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup_with_log(dir.path());
    let options = WalOptions {
        fsync: false,
        retain_window: setup.protocol.log_window,
    };
    let mut wal = Wal::open(&setup.data_dir, options).unwrap().wal;
    wal.append(&[0xff; 5]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    match ReplicaStore::open(&setup.data_dir, false, setup.protocol.log_window) {
        Err(StorageError::Undecodable { .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an undecodable record was accepted"),
    }
    runtime().block_on(async {
        let error = match RunningNode::start(setup).await {
            Ok(_) => panic!("a node started on an undecodable log"),
            Err(error) => pbft_node::error::with_causes(&error),
        };
        assert!(error.contains("does not decode"), "{error}");
    });
}

//! Arbitrary bytes as the write-ahead log a replica reads back at start.
//!
//! The input becomes the segment files of a fresh log directory: split at the first
//! [`SEGMENT_MARKER`], the part before it is segment 0 and the part after it segment
//! [`SECOND_SEGMENT`]; without the marker the whole input is segment 0. `ReplicaStore::open`
//! reads every frame and decodes every record; whatever it answers, it must not panic, allocate
//! without bound or loop.
//!
//! When the log opens, it must also stay usable: a record persisted after opening (behind a
//! torn tail that was cut off, if there was one) must read back after the records that were
//! there, with nothing discarded.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pbft_core::fixtures::TestCluster;
use pbft_core::messages::Phase;
use pbft_core::protocol::Durable;
use pbft_node::storage::ReplicaStore;

/// Separates the first segment file from the second in the input.
const SEGMENT_MARKER: &[u8] = b"SEGMENT!";
/// The start of the second segment, as if the replica rotated at a checkpoint there.
const SECOND_SEGMENT: u64 = 128;
/// The protocol's log window, which decides how long segments are kept.
const LOG_WINDOW: u64 = 256;

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("segment-{start:020}.wal"))
}

/// A record to append after opening: a signed COMMIT of replica 1.
fn record() -> &'static Durable {
    static RECORD: OnceLock<Durable> = OnceLock::new();
    RECORD.get_or_init(|| {
        let cluster = TestCluster::new(1);
        let digest = pbft_core::fixtures::state_digest(7);
        Durable::Vote(cluster.vote(Phase::Commit, 0, 7, digest, 1))
    })
}

/// Where each run's log directory goes: every run creates, writes and deletes files, which is
/// several times faster on a memory-backed file system when there is one.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in(scratch_root()).expect("a temporary directory");
    let split = data
        .windows(SEGMENT_MARKER.len())
        .position(|window| window == SEGMENT_MARKER);
    match split {
        Some(at) => {
            fs::write(segment_path(dir.path(), 0), &data[..at]).expect("write segment");
            fs::write(
                segment_path(dir.path(), SECOND_SEGMENT),
                &data[at + SEGMENT_MARKER.len()..],
            )
            .expect("write segment");
        }
        None => fs::write(segment_path(dir.path(), 0), data).expect("write segment"),
    }

    let Ok(opened) = ReplicaStore::open(dir.path(), false, LOG_WINDOW) else {
        return;
    };
    let mut records = opened.records;
    let mut store = opened.store;
    store
        .persist(std::slice::from_ref(record()))
        .expect("a record persists after the log opened");
    drop(store);
    records.push(record().clone());

    let reopened = ReplicaStore::open(dir.path(), false, LOG_WINDOW)
        .expect("a log that opened, plus one record, opens again");
    assert!(
        reopened.discarded_tail.is_none(),
        "reopening discarded {:?}",
        reopened.discarded_tail
    );
    assert_eq!(
        reopened.records, records,
        "reopening reads other records than were there plus the one persisted"
    );
});

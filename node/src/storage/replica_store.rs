//! The replica's [`Durable`] records on top of the [`Wal`]: one frame per record, a new segment
//! at every stable checkpoint, and old segments released behind it.

use std::path::Path;

use super::wal::{DiscardedTail, StorageError, Wal, WalOptions};
use pbft_core::codec;
use pbft_core::messages::Seq;
use pbft_core::protocol::{newest_base, release_point, Durable};

/// A replica's durable state. See [`pbft_core::protocol::Durable`] for what it holds.
pub struct ReplicaStore {
    wal: Wal,
    log_window: u64,
    /// Where the newest base of the state was written: segments from there on are kept.
    base: Seq,
}

/// A store just opened, with the records it held in the order they were written.
pub struct OpenedStore {
    pub store: ReplicaStore,
    pub records: Vec<Durable>,
    pub discarded_tail: Option<DiscardedTail>,
}

impl ReplicaStore {
    /// Opens (or creates) the store in `dir` and reads it back. `log_window` is the protocol's
    /// L, which decides how long segments are kept.
    pub fn open(dir: &Path, fsync: bool, log_window: u64) -> Result<OpenedStore, StorageError> {
        let options = WalOptions {
            fsync,
            retain_window: log_window,
        };
        let opened = Wal::open(dir, options)?;
        let mut records = Vec::with_capacity(opened.records.len());
        for (index, bytes) in opened.records.iter().enumerate() {
            let record = codec::decode(bytes, bytes.len() as u64).map_err(|error| {
                StorageError::Undecodable {
                    dir: dir.to_path_buf(),
                    index,
                    reason: error.to_string(),
                }
            })?;
            records.push(record);
        }
        Ok(OpenedStore {
            store: ReplicaStore {
                wal: opened.wal,
                log_window,
                base: newest_base(&records),
            },
            records,
            discarded_tail: opened.discarded_tail,
        })
    }

    /// Writes `records` and waits until they are on disk (when syncing is on), in one write and
    /// one sync. Nothing produced in the same step may leave the replica before this returns
    /// `Ok`; after an error the store refuses every later write.
    pub fn persist(&mut self, records: &[Durable]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut stable = None;
        for record in records {
            if let Durable::Stable { seq, state, .. } = record {
                self.wal.rotate(*seq);
                stable = Some(*seq);
                // A stable state is encoded in one pass: sizing it first would encode it twice.
                self.wal
                    .append_with(|frames| codec::append_unsized(frames, record))?;
                if state.is_base() {
                    self.base = *seq;
                }
                continue;
            }
            self.wal
                .append_with(|frames| codec::encode_into(frames, record))?;
        }
        self.wal.sync()?;
        if let Some(seq) = stable {
            self.wal
                .release(release_point(seq, self.base, self.log_window))?;
        }
        Ok(())
    }

    /// Bytes written since the store was opened.
    pub fn bytes_written(&self) -> u64 {
        self.wal.bytes_written()
    }

    /// Bytes of the log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.wal.disk_bytes()
    }

    /// Syncs done since the store was opened.
    pub fn syncs(&self) -> u64 {
        self.wal.syncs()
    }

    /// Makes the next write fail, as a full or failing disk would.
    #[doc(hidden)]
    pub fn fail_next_write(&mut self) {
        self.wal.fail_next_write();
    }
}

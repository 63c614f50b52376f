//! Durable storage for a replica.
//!
//! [`Wal`] is an append-only log of opaque, checksummed records kept in segment files. A replica
//! writes what it signed into the log and syncs it before sending, so that after a crash it does
//! not sign something that contradicts what it already sent; on restart it reads the records back.
//!
//! # File format
//!
//! The log lives in one directory as segment files named `segment-{start:020}.wal`, where
//! `start` is the sequence number passed to [`Wal::rotate`] (0 for the first segment). Other
//! files in the directory are ignored. A segment is a sequence of frames:
//!
//! | bytes | field                                              |
//! |-------|----------------------------------------------------|
//! | 4     | magic `F7 57 4C 31`                                |
//! | 4     | payload length, u32 little-endian                  |
//! | 4     | CRC-32 (IEEE) of the payload, u32 little-endian    |
//! | len   | payload                                            |
//!
//! A bad frame with no valid frame after it in the newest segment is a torn last write and is cut
//! off; any other bad frame is corruption and [`Wal::open`] refuses the log.

mod replica_store;
mod wal;

pub use replica_store::{OpenedStore, ReplicaStore};

/// How a replica keeps its durable state: the `[storage]` table of a node's configuration, every
/// field optional (durable, with fsync).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Keep durable state at all. Without it a restarted replica forgets what it signed and
    /// may contradict itself: only for measurements on clusters that never restart.
    pub durable: bool,
    /// Wait for each write to reach the disk (fsync) before sending what depends on it.
    /// Without it a power loss, but not a process crash, can lose the last writes.
    pub fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durable: true,
            fsync: true,
        }
    }
}
pub use wal::{DiscardedTail, Opened, StorageError, Wal, WalOptions};

#[cfg(test)]
mod tests;

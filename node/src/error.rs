//! Why a replica node fails to start or stops.

use std::net::SocketAddr;
use std::path::PathBuf;

use pbft_core::protocol::{Halt, ReplicaError};
use pbft_net::NetError;

use crate::storage::StorageError;

/// Why a node could not start, or why it stopped by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The protocol parameters or the key do not make a replica.
    #[error("invalid replica setup")]
    Setup(#[source] ReplicaError),
    /// The data directory is not this replica's to run on, or is in use.
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    /// The durable state cannot be opened or read.
    #[error("durable state in {}", .dir.display())]
    Storage {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
    /// The durable state was read but does not rebuild a replica.
    #[error("durable state in {}", .dir.display())]
    Recovery {
        dir: PathBuf,
        #[source]
        source: ReplicaError,
    },
    /// The QUIC endpoint could not be set up.
    #[error("listen address {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: NetError,
    },
    /// The metrics endpoint could not be bound.
    #[error("metrics address {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A write to the durable state failed; the replica stopped before sending anything that
    /// depended on it.
    #[error("durable write failed, replica stopped")]
    DurableWrite(#[source] StorageError),
    /// The replica saw proof of more than f faulty replicas and stopped.
    #[error("replica halted")]
    Halted(#[source] Halt),
    /// The thread that writes the log could not be started.
    #[error("cannot start the thread writing the log")]
    Thread(#[source] std::io::Error),
    /// The replica's task ended abnormally.
    #[error("replica task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// An error and its chain of causes, on one line: `a: b: c`.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

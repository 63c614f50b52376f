//! The PBFT replica node around the pure core of [`pbft_core`]: durable storage ([`storage`]),
//! the tokio driver ([`runtime`]), configuration ([`config`]) and metrics ([`metrics`]). The
//! `pbft-node` binary runs one replica from a configuration file.

pub mod config;
pub mod data_dir;
pub mod error;
#[cfg(feature = "test-util")]
pub mod local;
pub mod metrics;
pub mod runtime;
pub mod storage;

pub use error::NodeError;

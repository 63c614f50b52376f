//! The PBFT replica node around the pure core of [`pbft_core`]: durable storage ([`storage`]),
//! the tokio driver ([`runtime`]), configuration ([`config`]), the log ([`logging`]), metrics ([`metrics`]) and the file descriptors the log needs
//! ([`fds`]). The
//! `pbft-node` binary runs one replica of the key-value store from a configuration file; [`cli`]
//! is that binary for any application.

pub mod cli;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod fds;
#[cfg(feature = "test-util")]
pub mod local;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod storage;

pub use error::NodeError;

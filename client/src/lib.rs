//! The client of the PBFT key-value service: a library ([`Client`]) and the `pbft-client` CLI.
//!
//! A client signs its requests, sends them to the primary of the view it believes in, and
//! accepts a result once f+1 distinct replicas sent the same one: at most f replicas are faulty,
//! so at least one correct replica vouches for it.
//!
//! - [`Client::connect`] opens QUIC connections to every replica, each pinning the replica's
//!   listed key; [`load_client_config`] builds its [`ClientSetup`] from a `client.toml`.
//! - [`Client::submit`] runs one operation; many may be outstanding at once, from many tasks.
//!   A background task signs every request waiting to be sent into one [`RequestEnvelope`], so
//!   one signature covers many requests. An unanswered envelope is sent again, unchanged, to
//!   every replica after 1 s, then 2, 4 and 8 s.
//! - Timestamps start at the wall clock in microseconds and grow by one per request, so a new
//!   process with the same key continues above earlier runs; replicas execute each timestamp at
//!   most once. A key must not be used by two processes at the same time: replicas refuse
//!   timestamps more than their client window below the highest they executed, so one
//!   process's requests would be refused (and time out) once the other's ran ahead.
//! - [`Client::put`], [`Client::get`], [`Client::delete`] and [`Client::cas`] are the key-value
//!   operations; [`Client::status_all`] asks every replica for its [`NodeStatus`].
//!
//! The logic that decides what to believe ([`quorum`]) and the request bookkeeping
//! ([`session`]) do no IO and are tested without a network.
//!
//! [`RequestEnvelope`]: pbft_core::messages::RequestEnvelope
//! [`NodeStatus`]: pbft_core::messages::NodeStatus

#![deny(missing_docs)]

pub mod bench;
mod client;
mod config;
mod error;
mod kv;
pub mod quorum;
pub mod session;

pub use client::{Client, ClientSetup};
pub use config::{load_client_config, ClientConfigFile};
pub use error::{ClientError, StatusUnavailable};
pub use kv::CasOutcome;

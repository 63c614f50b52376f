//! The client of the PBFT key-value service: a library ([`Client`]) and the `pbft-client` CLI.
//!
//! A client signs its requests, sends them to the primary of the view it believes in, and
//! accepts a result once 2f+1 distinct replicas sent the same one (f+1 would identify a correct
//! answer; 2f+1 keeps unordered reads linearizable, see [`session`]).
//!
//! - [`Client::connect`] opens QUIC connections to every replica, each pinning the replica's
//!   listed key; [`load_client_config`] builds its [`ClientSetup`] from a `client.toml`.
//! - [`Client::submit`] runs one operation; many may be outstanding at once, from many tasks.
//!   A background task signs every request waiting to be sent into one [`RequestEnvelope`], so
//!   one signature covers many requests. Until f+1 replicas have told it the view, a client
//!   sends envelopes to every replica, so a fresh process reaches the current primary at once.
//!   An unanswered envelope is sent again, unchanged, to every replica after 1 s, then 2, 4
//!   and 8 s.
//! - Each [`Client`] runs its own session (a session id in every envelope; timestamps count
//!   from 1 within it), so any number of processes may use one key and one configuration file at
//!   the same time; replicas execute each (session, timestamp) at most once.
//! - [`Client::put`], [`Client::get`] (a read-only request to every replica, ordered if 2f+1
//!   do not agree), [`Client::delete`] and [`Client::cas`] are the key-value operations;
//!   [`Client::status_all`] asks every replica for its [`NodeStatus`].
//!
//! The logic that decides what to believe ([`quorum`]) and the request bookkeeping
//! ([`session`]) do no IO and are tested without a network.
//!
//! [`RequestEnvelope`]: pbft_core::messages::RequestEnvelope
//! [`NodeStatus`]: pbft_core::messages::NodeStatus

#![deny(missing_docs)]

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

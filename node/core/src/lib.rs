//! The PBFT replica (Castro and Liskov) with signed messages, as a pure state machine.
//!
//! This crate contains no networking code, no storage and no clock: it does not depend on tokio,
//! quinn or any socket, and it never reads the time or draws OS randomness. Time is an input of
//! every call, and every effect (messages, durable records, replies, timers) is an output that a
//! driver carries out. The tokio runtime of `pbft-node` and the deterministic simulator of
//! `testnet` drive the same code.
//!
//! - [`messages`]: the wire format, canonical signing digests, limits and boundary validation.
//! - [`committee`]: the replicas of a cluster and its quorums.
//! - [`tally`]: counting each replica once toward a quorum.
//! - [`codec`]: the one bounded, canonical encoding.
//! - [`protocol`]: the replica state machine.
//! - [`driver`]: carrying out the replica's outputs in the required order, for every driver.
//! - [`byzantine`]: named faulty behaviours that wrap a correct replica's outputs.
//! - [`app`]: the replicated application trait and the built-in key-value store.

// Time and randomness are inputs here: clippy refuses clocks, OS randomness and IO types.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod app;
pub mod byzantine;
pub mod codec;
pub mod committee;
pub mod driver;
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
pub mod ids;
pub mod messages;
pub mod protocol;
pub mod tally;

pub use committee::Committee;

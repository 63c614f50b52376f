//! A PBFT replica (Castro and Liskov) with signed messages.
//!
//! - [`messages`]: the wire format, canonical signing digests and boundary validation.
//! - [`protocol`]: the replica as a pure, deterministic state machine.
//! - [`app`]: the replicated application and the built-in key-value store.
//! - [`byzantine`]: named faulty behaviours that wrap a correct replica's outputs.

pub mod app;
pub mod byzantine;
pub mod codec;
pub mod committee;
pub mod config;
pub mod local;
pub mod messages;
pub mod metrics;
pub mod protocol;
pub mod runtime;
pub mod storage;

pub use committee::Committee;

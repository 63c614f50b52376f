//! `pbft-node`: runs a PBFT replica of the key-value store, and makes and inspects its keys.
//! The exit codes are [`pbft_node::cli`]'s.

use std::process::ExitCode;

use pbft_core::app::KvStore;

fn main() -> ExitCode {
    pbft_node::cli::main("pbft-node", "A PBFT replica", KvStore::factory())
}

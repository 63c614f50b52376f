//! Local PBFT clusters: the deterministic simulator ([`sim`]) and the process launcher behind
//! the `testnet` binary ([`launcher`]).

pub mod launcher;
pub mod sim;

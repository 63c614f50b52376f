//! Local PBFT clusters: the deterministic simulator ([`sim`]), the process launcher behind
//! the `testnet` binary ([`launcher`]), and the nemesis that injects faults into a running
//! cluster and checks its history ([`nemesis`]).

pub mod launcher;
pub mod nemesis;
pub mod sim;

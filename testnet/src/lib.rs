//! Local PBFT clusters: the deterministic simulator ([`sim`]).

pub mod sim;

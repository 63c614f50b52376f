//! Fixtures shared by the protocol tests: a fixed four-replica committee (f = 1).

use pbft_core::Committee;
use pbft_crypto::KeyPair;

/// The keys of replicas 0 to 3, the same in every run.
pub fn keys() -> Vec<KeyPair> {
    (0..4u8)
        .map(|i| KeyPair::from_seed(&[i + 1; 32]).unwrap())
        .collect()
}

pub fn committee(keys: &[KeyPair]) -> Committee {
    Committee::new(keys.iter().map(KeyPair::public).collect(), 1).unwrap()
}

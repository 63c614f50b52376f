//! The built-in key-value store.

use std::collections::BTreeMap;

use pbft_crypto::{Digest, DigestBuilder, Domain};
use serde::{Deserialize, Serialize};

use super::{SnapshotError, StateMachine};
use crate::codec;

/// An operation on the key-value store, as clients encode it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if its current value is `expected` (`None`: the key is absent).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

impl KvOp {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// A put or a successful compare-and-swap.
    Done,
    /// The value of a get, or the value a delete removed.
    Value(Option<Vec<u8>>),
    /// A compare-and-swap that did not match; carries the current value.
    CasFailed(Option<Vec<u8>>),
    /// The operation bytes did not decode.
    Invalid,
}

impl KvResult {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<KvResult, codec::CodecError> {
        codec::decode(bytes, MAX_SNAPSHOT_BYTES)
    }
}

/// Largest snapshot accepted by [`KvStore::restore`].
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// An ordered map from byte strings to byte strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn apply(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                self.entries.insert(key, value);
                KvResult::Done
            }
            KvOp::Get { key } => KvResult::Value(self.entries.get(&key).cloned()),
            KvOp::Delete { key } => KvResult::Value(self.entries.remove(&key)),
            KvOp::Cas { key, expected, new } => {
                let current = self.entries.get(&key);
                if current == expected.as_ref() {
                    self.entries.insert(key, new);
                    KvResult::Done
                } else {
                    KvResult::CasFailed(current.cloned())
                }
            }
        }
    }
}

impl StateMachine for KvStore {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let result = match codec::decode::<KvOp>(op, op.len() as u64) {
            Ok(op) => self.apply(op),
            Err(_) => KvResult::Invalid,
        };
        result.encode()
    }

    fn digest(&self) -> Digest {
        // Iteration over a BTreeMap is in key order, the same on every replica.
        let mut builder = DigestBuilder::new(Domain::Content)
            .u8(b'K')
            .u64(self.entries.len() as u64);
        for (key, value) in &self.entries {
            builder = builder.bytes(key).bytes(value);
        }
        builder.finish()
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.entries)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.entries = codec::decode(snapshot, MAX_SNAPSHOT_BYTES)
            .map_err(|e| SnapshotError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&store.execute(&op.encode())).unwrap()
    }

    #[test]
    fn put_get_delete_cas() {
        let mut store = KvStore::new();
        let key = b"k".to_vec();
        assert_eq!(
            run(&mut store, KvOp::Get { key: key.clone() }),
            KvResult::Value(None)
        );
        assert_eq!(
            run(
                &mut store,
                KvOp::Put {
                    key: key.clone(),
                    value: b"1".to_vec()
                }
            ),
            KvResult::Done
        );
        assert_eq!(
            run(
                &mut store,
                KvOp::Cas {
                    key: key.clone(),
                    expected: Some(b"0".to_vec()),
                    new: b"2".to_vec()
                }
            ),
            KvResult::CasFailed(Some(b"1".to_vec()))
        );
        assert_eq!(
            run(
                &mut store,
                KvOp::Cas {
                    key: key.clone(),
                    expected: Some(b"1".to_vec()),
                    new: b"2".to_vec()
                }
            ),
            KvResult::Done
        );
        assert_eq!(
            run(&mut store, KvOp::Get { key: key.clone() }),
            KvResult::Value(Some(b"2".to_vec()))
        );
        assert_eq!(
            run(&mut store, KvOp::Delete { key: key.clone() }),
            KvResult::Value(Some(b"2".to_vec()))
        );
        assert_eq!(
            run(
                &mut store,
                KvOp::Cas {
                    key: key.clone(),
                    expected: None,
                    new: b"3".to_vec()
                }
            ),
            KvResult::Done
        );
        assert_eq!(store.get(&key), Some(&b"3".to_vec()));
    }

    #[test]
    fn garbage_operations_are_invalid_not_fatal() {
        let mut store = KvStore::new();
        assert_eq!(
            KvResult::decode(&store.execute(&[0xff; 9])).unwrap(),
            KvResult::Invalid
        );
        assert!(store.is_empty());
    }

    #[test]
    fn equal_states_have_equal_digests_whatever_the_order() {
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        a.apply(KvOp::Put {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
        });
        a.apply(KvOp::Put {
            key: b"y".to_vec(),
            value: b"2".to_vec(),
        });
        b.apply(KvOp::Put {
            key: b"y".to_vec(),
            value: b"2".to_vec(),
        });
        b.apply(KvOp::Put {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
        });
        assert_eq!(a.digest(), b.digest());
        b.apply(KvOp::Put {
            key: b"x".to_vec(),
            value: b"3".to_vec(),
        });
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn snapshot_restores_the_same_state() {
        let mut a = KvStore::new();
        a.apply(KvOp::Put {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
        });
        let mut b = KvStore::new();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a, b);
        assert!(b.restore(&[1, 2, 3]).is_err());
    }
}

//! The built-in key-value store.

use std::collections::BTreeMap;
use std::sync::Arc;

use pbft_crypto::{Digest, DigestBuilder, Domain};
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

use super::{AppFactory, SnapshotError, StateMachine};
use crate::codec;

/// An operation on the key-value store, as clients encode it. Byte strings are (de)serialized
/// as byte strings (`serde_bytes`): the encoding is the same as a sequence of bytes, and
/// decoding is one copy instead of one call per byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if its current value is `expected` (`None`: the key is absent).
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
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
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A compare-and-swap that did not match; carries the current value.
    CasFailed(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
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

/// The store's entries encoded as a map of byte strings: the same bytes as the plain map, written
/// a string at a time rather than a byte at a time.
struct EntriesRef<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(key, value)| (Bytes::new(key), Bytes::new(value))),
        )
    }
}

/// An ordered map from byte strings to byte strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Makes empty stores: the application `pbft-node` replicates.
    pub fn factory() -> AppFactory {
        Arc::new(|| Box::new(KvStore::new()))
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

    fn query(&self, op: &[u8]) -> Option<Vec<u8>> {
        match codec::decode::<KvOp>(op, op.len() as u64) {
            Ok(KvOp::Get { key }) => {
                Some(KvResult::Value(self.entries.get(&key).cloned()).encode())
            }
            _ => None,
        }
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
        codec::encode(&EntriesRef(&self.entries))
    }

    fn snapshot_into(&self, out: &mut Vec<u8>) {
        codec::encode_into(out, &EntriesRef(&self.entries));
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let entries: BTreeMap<ByteBuf, ByteBuf> = codec::decode(snapshot, MAX_SNAPSHOT_BYTES)
            .map_err(|e| SnapshotError(e.to_string()))?;
        self.entries = entries
            .into_iter()
            .map(|(key, value)| (key.into_vec(), value.into_vec()))
            .collect();
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
    fn byte_strings_encode_as_plain_byte_sequences() {
        let mut store = KvStore::new();
        store.apply(KvOp::Put {
            key: b"key".to_vec(),
            value: vec![0, 1, 255],
        });
        assert_eq!(store.snapshot(), codec::encode(&store.entries));
        let mut restored = KvStore::new();
        restored.restore(&store.snapshot()).unwrap();
        assert_eq!(restored, store);
        #[derive(Serialize)]
        enum PlainOp {
            Put { key: Vec<u8>, value: Vec<u8> },
        }
        let plain = PlainOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let op = KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        assert_eq!(op.encode(), codec::encode(&plain));
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
        let mut appended = vec![1, 2];
        a.snapshot_into(&mut appended);
        assert_eq!(appended[2..], a.snapshot()[..]);
        assert_eq!(a, b);
        assert!(b.restore(&[1, 2, 3]).is_err());
    }
}

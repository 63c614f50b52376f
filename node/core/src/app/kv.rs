//! The built-in key-value store.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use pbft_crypto::{Digest, DigestBuilder, Domain};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

use super::{AppFactory, FrozenState, SnapshotError, StateMachine};
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

/// How many partitions (hash buckets of keys) a [`KvStore`] made by [`KvStore::new`] has. With
/// many, a partition holds few entries even in a large state, so a checkpoint re-hashes and a
/// state transfer moves little more than what changed.
pub const KV_PARTITIONS: u32 = 16384;

/// Where an entry lives: its partition first, so that each partition is one range of the map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    partition: u32,
    key: Arc<[u8]>,
}

/// A value and the digest of its entry, computed once when it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    value: Arc<Vec<u8>>,
    digest: Digest,
}

impl Stored {
    fn new(key: &[u8], value: Vec<u8>) -> Stored {
        let digest = DigestBuilder::new(Domain::Content)
            .u8(b'E')
            .bytes(key)
            .bytes(&value)
            .finish();
        Stored {
            value: Arc::new(value),
            digest,
        }
    }
}

type Entries = OrdMap<Slot, Stored>;

/// The entries of one partition, encoded as a map of byte strings.
struct PartitionRef<'a>(&'a Entries, u32);

impl Serialize for PartitionRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A range does not know its length, which the encoding writes first.
        let len = partition_range(self.0, self.1).count();
        let mut map = serializer.serialize_map(Some(len))?;
        for (slot, stored) in partition_range(self.0, self.1) {
            map.serialize_entry(Bytes::new(&slot.key), Bytes::new(&stored.value))?;
        }
        map.end()
    }
}

/// Every entry, encoded as a map of byte strings.
struct EntriesRef<'a>(&'a Entries);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(slot, stored)| (Bytes::new(&slot.key), Bytes::new(&stored.value))),
        )
    }
}

fn partition_range(entries: &Entries, partition: u32) -> impl Iterator<Item = (&Slot, &Stored)> {
    let empty: Arc<[u8]> = Arc::from(&[][..]);
    let from = Slot {
        partition,
        key: empty.clone(),
    };
    let to = Slot {
        partition: partition + 1,
        key: empty,
    };
    entries.range(from..to)
}

/// The digest of a partition from the digests of its entries, in key order.
fn partition_digest<'a>(entry_digests: impl Iterator<Item = &'a Digest>) -> Digest {
    let (builder, count) = entry_digests.fold(
        (DigestBuilder::new(Domain::Content).u8(b'P'), 0u64),
        |(builder, count), digest| (builder.digest(digest), count + 1),
    );
    builder.u64(count).finish()
}

/// Partition digests, brought up to date when asked for.
#[derive(Clone, Debug)]
struct DigestCache {
    digests: Arc<Vec<Digest>>,
    /// Partitions written since the digests were last brought up to date.
    stale: BTreeSet<u32>,
}

/// An ordered map from byte strings to byte strings, cut into hash partitions.
///
/// The map is copy-on-write ([`imbl::OrdMap`]): [`StateMachine::freeze`] shares it, and a later
/// write copies only the nodes on its path. Each entry's digest is computed when it is written,
/// and a partition's digest from its entries' digests when a checkpoint asks after a change, so
/// a checkpoint costs what changed.
#[derive(Clone, Debug)]
pub struct KvStore {
    partitions: u32,
    entries: Entries,
    /// The bytes of every key and value.
    bytes: u64,
    cache: RefCell<DigestCache>,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::with_partitions(KV_PARTITIONS)
    }
}

impl PartialEq for KvStore {
    fn eq(&self, other: &Self) -> bool {
        self.partitions == other.partitions && self.entries == other.entries
    }
}

impl Eq for KvStore {}

/// The frozen state of a [`KvStore`]: a shared copy of its map.
#[derive(Debug)]
struct FrozenKv(Entries);

impl FrozenState for FrozenKv {
    fn encode_partition(&self, partition: u32, out: &mut Vec<u8>) {
        codec::encode_into(out, &PartitionRef(&self.0, partition));
    }

    /// The entries written or removed since `older`. The maps share every node neither
    /// changed, and the walk skips those.
    fn encode_changes_since(&self, older: &dyn FrozenState, out: &mut Vec<u8>) -> bool {
        let Some(older) = (older as &dyn Any).downcast_ref::<FrozenKv>() else {
            return false;
        };
        let changes: Vec<(&Bytes, Option<&Bytes>)> = (older.0.diff(&self.0))
            .map(|item| match item {
                DiffItem::Add(slot, stored)
                | DiffItem::Update {
                    new: (slot, stored),
                    ..
                } => (Bytes::new(&slot.key), Some(Bytes::new(&stored.value))),
                DiffItem::Remove(slot, _) => (Bytes::new(&slot.key), None),
            })
            .collect();
        codec::encode_into(out, &changes);
        true
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// A store of `partitions` partitions (at least one). Every replica of a cluster must use
    /// the same number: it shapes the state digest.
    pub fn with_partitions(partitions: u32) -> KvStore {
        let partitions = partitions.max(1);
        let empty = partition_digest(std::iter::empty());
        KvStore {
            partitions,
            entries: Entries::new(),
            bytes: 0,
            cache: RefCell::new(DigestCache {
                digests: Arc::new(vec![empty; partitions as usize]),
                stale: BTreeSet::new(),
            }),
        }
    }

    /// Makes empty stores: the application `pbft-node` replicates.
    pub fn factory() -> AppFactory {
        Arc::new(|| Box::new(KvStore::new()))
    }

    fn slot(&self, key: &[u8]) -> Slot {
        let hash = Digest::of(Domain::Content, key);
        let bucket = u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
        Slot {
            partition: bucket % self.partitions,
            key: Arc::from(key),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        (self.entries.get(&self.slot(key))).map(|stored| stored.value.as_slice())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, slot: Slot, value: Vec<u8>) {
        self.cache.get_mut().stale.insert(slot.partition);
        let stored = Stored::new(&slot.key, value);
        self.bytes += (slot.key.len() + stored.value.len()) as u64;
        if let Some(old) = self.entries.insert(slot.clone(), stored) {
            self.bytes -= (slot.key.len() + old.value.len()) as u64;
        }
    }

    fn remove(&mut self, slot: &Slot) -> Option<Vec<u8>> {
        let stored = self.entries.remove(slot)?;
        self.cache.get_mut().stale.insert(slot.partition);
        self.bytes -= (slot.key.len() + stored.value.len()) as u64;
        Some(Arc::unwrap_or_clone(stored.value))
    }

    fn value(&self, slot: &Slot) -> Option<Vec<u8>> {
        (self.entries.get(slot)).map(|stored| stored.value.as_ref().clone())
    }

    pub fn apply(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                let slot = self.slot(&key);
                self.insert(slot, value);
                KvResult::Done
            }
            KvOp::Get { key } => KvResult::Value(self.value(&self.slot(&key))),
            KvOp::Delete { key } => {
                let slot = self.slot(&key);
                KvResult::Value(self.remove(&slot))
            }
            KvOp::Cas { key, expected, new } => {
                let slot = self.slot(&key);
                let current = self
                    .entries
                    .get(&slot)
                    .map(|stored| stored.value.as_slice());
                if current == expected.as_deref() {
                    self.insert(slot, new);
                    KvResult::Done
                } else {
                    KvResult::CasFailed(current.map(<[u8]>::to_vec))
                }
            }
        }
    }

    /// Decodes an encoded partition, refusing keys that belong to another one.
    fn decode_partition(
        &self,
        partition: u32,
        bytes: &[u8],
    ) -> Result<BTreeMap<ByteBuf, ByteBuf>, SnapshotError> {
        if partition >= self.partitions {
            return Err(SnapshotError(format!("no partition {partition}")));
        }
        let entries: BTreeMap<ByteBuf, ByteBuf> =
            codec::decode(bytes, MAX_SNAPSHOT_BYTES).map_err(|e| SnapshotError(e.to_string()))?;
        if let Some(key) = (entries.keys()).find(|key| self.slot(key).partition != partition) {
            return Err(SnapshotError(format!(
                "key {:?} is not in partition {partition}",
                String::from_utf8_lossy(key)
            )));
        }
        Ok(entries)
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
            Ok(KvOp::Get { key }) => Some(KvResult::Value(self.value(&self.slot(&key))).encode()),
            _ => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&EntriesRef(&self.entries))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let entries: BTreeMap<ByteBuf, ByteBuf> = codec::decode(snapshot, MAX_SNAPSHOT_BYTES)
            .map_err(|e| SnapshotError(e.to_string()))?;
        *self = KvStore::with_partitions(self.partitions);
        for (key, value) in entries {
            let slot = self.slot(&key);
            self.insert(slot, value.into_vec());
        }
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        self.bytes
    }

    fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn partition_digests(&self) -> Arc<Vec<Digest>> {
        let mut cache = self.cache.borrow_mut();
        let stale = std::mem::take(&mut cache.stale);
        if !stale.is_empty() {
            let digests = Arc::make_mut(&mut cache.digests);
            for partition in stale {
                let entries = partition_range(&self.entries, partition).map(|(_, s)| &s.digest);
                digests[partition as usize] = partition_digest(entries);
            }
        }
        cache.digests.clone()
    }

    fn freeze(&self) -> Arc<dyn FrozenState> {
        Arc::new(FrozenKv(self.entries.clone()))
    }

    fn partition_digest_of(&self, partition: u32, bytes: &[u8]) -> Result<Digest, SnapshotError> {
        let entries = self.decode_partition(partition, bytes)?;
        let digests: Vec<Digest> = (entries.into_iter())
            .map(|(key, value)| Stored::new(&key, value.into_vec()).digest)
            .collect();
        Ok(partition_digest(digests.iter()))
    }

    fn apply_changes(&mut self, changes: &[u8]) -> Result<(), SnapshotError> {
        let changes: Vec<(ByteBuf, Option<ByteBuf>)> =
            codec::decode(changes, MAX_SNAPSHOT_BYTES).map_err(|e| SnapshotError(e.to_string()))?;
        for (key, value) in changes {
            let slot = self.slot(&key);
            match value {
                Some(value) => self.insert(slot, value.into_vec()),
                None => {
                    self.remove(&slot);
                }
            }
        }
        Ok(())
    }

    fn restore_partition(&mut self, partition: u32, bytes: &[u8]) -> Result<(), SnapshotError> {
        let entries = self.decode_partition(partition, bytes)?;
        let old: Vec<Slot> = partition_range(&self.entries, partition)
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in old {
            self.remove(&slot);
        }
        self.cache.get_mut().stale.insert(partition);
        for (key, value) in entries {
            let slot = self.slot(&key);
            self.insert(slot, value.into_vec());
        }
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
        let plain: BTreeMap<Vec<u8>, Vec<u8>> = [(b"key".to_vec(), vec![0, 1, 255])].into();
        assert_eq!(store.snapshot(), codec::encode(&plain));
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
        assert_eq!(store.get(&key), Some(&b"3"[..]));
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
        let mut a = KvStore::with_partitions(8);
        let mut b = KvStore::with_partitions(8);
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
        assert_eq!(a.partition_digests(), b.partition_digests());
        b.apply(KvOp::Put {
            key: b"x".to_vec(),
            value: b"3".to_vec(),
        });
        assert_ne!(a.partition_digests(), b.partition_digests());
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
        assert_eq!(a.partition_digests(), b.partition_digests());
        assert!(b.restore(&[1, 2, 3]).is_err());
    }

    fn put(store: &mut KvStore, key: &str, value: &str) {
        store.apply(KvOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        });
    }

    #[test]
    fn a_write_changes_only_its_own_partition_digest() {
        let mut store = KvStore::with_partitions(16);
        for i in 0..100 {
            put(&mut store, &format!("key-{i}"), "v");
        }
        let before = store.partition_digests();
        put(&mut store, "key-7", "changed");
        let after = store.partition_digests();
        let changed: Vec<usize> = (0..16).filter(|&p| before[p] != after[p]).collect();
        assert_eq!(changed, vec![store.slot(b"key-7").partition as usize]);
        store.apply(KvOp::Delete {
            key: b"key-7".to_vec(),
        });
        put(&mut store, "key-7", "v");
        assert_eq!(store.partition_digests(), before);
    }

    #[test]
    fn partitions_travel_and_are_checked_against_their_digests() {
        let mut source = KvStore::with_partitions(4);
        for i in 0..50 {
            put(&mut source, &format!("key-{i}"), &format!("value-{i}"));
        }
        let frozen = source.freeze();
        let digests = source.partition_digests();
        // Later writes do not reach the frozen copy.
        put(&mut source, "key-1", "later");
        let mut target = KvStore::with_partitions(4);
        put(&mut target, "stale", "gone");
        for partition in 0..4 {
            let mut bytes = Vec::new();
            frozen.encode_partition(partition, &mut bytes);
            let digest = target.partition_digest_of(partition, &bytes).unwrap();
            assert_eq!(digest, digests[partition as usize]);
            target.restore_partition(partition, &bytes).unwrap();
            let other = (partition + 1) % 4;
            assert!(target.partition_digest_of(other, &bytes).is_err() || bytes.len() == 8);
        }
        assert_eq!(target.partition_digests(), digests);
        assert_eq!(target.get(b"key-1"), Some(&b"value-1"[..]));
        assert_eq!(target.get(b"stale"), None);
        assert!(target.partition_digest_of(4, &[0; 8]).is_err());
        assert!(target.partition_digest_of(0, &[1, 2, 3]).is_err());
    }

    #[test]
    fn changes_since_an_older_copy_turn_it_into_the_newer() {
        let mut store = KvStore::with_partitions(4);
        for i in 0..200 {
            put(&mut store, &format!("key-{i}"), "v");
        }
        let older_store = store.clone();
        let older = store.freeze();
        put(&mut store, "key-1", "changed");
        put(&mut store, "new", "n");
        store.apply(KvOp::Delete {
            key: b"key-2".to_vec(),
        });
        let newer = store.freeze();
        let mut changes = Vec::new();
        assert!(newer.encode_changes_since(older.as_ref(), &mut changes));
        // Three entries' worth, not the whole store.
        assert!(changes.len() < 100, "{} bytes", changes.len());
        let mut replayed = older_store;
        replayed.apply_changes(&changes).unwrap();
        assert_eq!(replayed, store);
        assert_eq!(replayed.partition_digests(), store.partition_digests());
        assert!(replayed.apply_changes(&[9; 3]).is_err());
    }
}

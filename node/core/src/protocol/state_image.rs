//! The replicated state at a checkpoint, as checkpoints sign it, peers fetch it and the storage
//! keeps it: the application's partitions, then the client table (see [`crate::messages::state`]).

use std::sync::Arc;

use pbft_crypto::Digest;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use super::clients::ClientTable;
use crate::app::{FrozenState, StateMachine};
use crate::codec;
use crate::messages::state;

/// The state at a checkpoint. Taking one costs what changed since the last: the application's
/// copy is copy-on-write and its partition digests are kept up to date as it executes; only the
/// client table, which is bounded, is encoded whole.
#[derive(Clone, Debug)]
pub struct StateImage {
    app: Arc<dyn FrozenState>,
    app_partitions: Arc<Vec<Digest>>,
    clients: Arc<Vec<u8>>,
    clients_digest: Digest,
    digest: Digest,
    bytes: u64,
}

impl StateImage {
    pub(crate) fn take(app: &dyn StateMachine, clients: &ClientTable) -> StateImage {
        let app_partitions = app.partition_digests();
        let clients = Arc::new(codec::encode(clients));
        let clients_digest = state::clients_digest(&clients);
        let digest = digest_of(&app_partitions, &clients_digest);
        StateImage {
            app: app.freeze(),
            bytes: app.state_bytes() + clients.len() as u64,
            app_partitions,
            clients,
            clients_digest,
            digest,
        }
    }

    /// About how many bytes the state holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest checkpoints sign.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The application's partitions and the client table's.
    pub fn partition_count(&self) -> u32 {
        self.app_partitions.len() as u32 + 1
    }

    /// The index of the client table's partition.
    pub fn clients_partition(&self) -> u32 {
        self.app_partitions.len() as u32
    }

    pub fn partition_digests(&self) -> Vec<Digest> {
        let mut digests = Vec::with_capacity(self.partition_count() as usize);
        digests.extend_from_slice(&self.app_partitions);
        digests.push(self.clients_digest);
        digests
    }

    pub fn partition_digest(&self, partition: u32) -> Option<Digest> {
        match (partition as usize).cmp(&self.app_partitions.len()) {
            std::cmp::Ordering::Less => Some(self.app_partitions[partition as usize]),
            std::cmp::Ordering::Equal => Some(self.clients_digest),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Appends partition `partition`'s encoding to `out`; nothing past the last partition.
    pub fn encode_partition(&self, partition: u32, out: &mut Vec<u8>) {
        match (partition as usize).cmp(&self.app_partitions.len()) {
            std::cmp::Ordering::Less => self.app.encode_partition(partition, out),
            std::cmp::Ordering::Equal => out.extend_from_slice(&self.clients),
            std::cmp::Ordering::Greater => {}
        }
    }

    /// This state as the changes since `older`, if the application can tell them.
    pub fn delta_since(&self, older: &StateImage) -> Option<SavedState> {
        if older.partition_count() != self.partition_count() {
            return None;
        }
        let mut app = Vec::new();
        if !self.app.encode_changes_since(older.app.as_ref(), &mut app) {
            return None;
        }
        Some(SavedState::Delta {
            app: Arc::new(app),
            clients: self.clients.clone(),
        })
    }
}

/// The digest of the state held now, without an image of it.
pub(crate) fn current_digest(app: &dyn StateMachine, clients: &ClientTable) -> Digest {
    let clients_digest = state::clients_digest(&codec::encode(clients));
    digest_of(&app.partition_digests(), &clients_digest)
}

fn digest_of(app_partitions: &[Digest], clients_digest: &Digest) -> Digest {
    state::state_digest(app_partitions.iter().chain([clients_digest]))
}

/// A stable checkpoint's state as the storage keeps it: a base that holds every partition, or
/// the changes since the stable state written before it.
#[derive(Clone, Debug)]
pub enum SavedState {
    /// Just taken: every partition, encoded when the record is written.
    Base(StateImage),
    /// Read back from storage: every partition's encoding.
    EncodedBase(Vec<(u32, ByteBuf)>),
    /// What changed: the application's changes
    /// ([`crate::app::FrozenState::encode_changes_since`]) and the client table, whole.
    Delta {
        app: Arc<Vec<u8>>,
        clients: Arc<Vec<u8>>,
    },
}

impl SavedState {
    /// Whether it holds every partition rather than the changes since the previous.
    pub fn is_base(&self) -> bool {
        !matches!(self, SavedState::Delta { .. })
    }

    /// Applies it to `app` and `clients`: a base onto a fresh state, a delta onto the state of
    /// the records before it.
    pub fn apply_to(
        &self,
        app: &mut dyn StateMachine,
        clients: &mut ClientTable,
    ) -> Result<(), SavedStateError> {
        let clients_partition = app.partition_count();
        let mut restore = |partition: u32, bytes: &[u8]| {
            if partition == clients_partition {
                *clients = codec::decode(bytes, bytes.len() as u64)?;
            } else {
                app.restore_partition(partition, bytes)?;
            }
            Ok::<(), SavedStateError>(())
        };
        match self {
            SavedState::Base(image) => {
                let mut bytes = Vec::new();
                for partition in 0..image.partition_count() {
                    bytes.clear();
                    image.encode_partition(partition, &mut bytes);
                    restore(partition, &bytes)?;
                }
            }
            SavedState::EncodedBase(partitions) => {
                for (partition, bytes) in partitions {
                    restore(*partition, bytes)?;
                }
            }
            SavedState::Delta {
                app: changes,
                clients: table,
            } => {
                app.apply_changes(changes)?;
                *clients = codec::decode(table, table.len() as u64)?;
            }
        }
        Ok(())
    }

    /// The bytes it takes in the log, roughly.
    pub fn delta_bytes(&self) -> u64 {
        match self {
            SavedState::Delta { app, clients } => (app.len() + clients.len()) as u64,
            _ => 0,
        }
    }
}

/// Why a saved state could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SavedStateError {
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error(transparent)]
    App(#[from] crate::app::SnapshotError),
}

impl PartialEq for SavedState {
    fn eq(&self, other: &Self) -> bool {
        crate::codec::encode(self) == crate::codec::encode(other)
    }
}

impl Eq for SavedState {}

/// One partition of an image, written as a byte string.
struct EncodedPartition<'a>(&'a StateImage, u32);

impl Serialize for EncodedPartition<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        self.0.encode_partition(self.1, &mut bytes);
        serializer.serialize_bytes(&bytes)
    }
}

/// Every partition of an image, as `(index, bytes)` pairs.
struct BaseRef<'a>(&'a StateImage);

impl Serialize for BaseRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.0.partition_count();
        let mut seq = serializer.serialize_seq(Some(count as usize))?;
        for partition in 0..count {
            seq.serialize_element(&(partition, EncodedPartition(self.0, partition)))?;
        }
        seq.end()
    }
}

/// How a [`SavedState`] is written; [`SavedOwned`] reads the same bytes back.
#[derive(Serialize)]
enum SavedRef<'a> {
    Base(BaseRef<'a>),
    EncodedBase(&'a Vec<(u32, ByteBuf)>),
    Delta {
        #[serde(with = "serde_bytes")]
        app: &'a [u8],
        #[serde(with = "serde_bytes")]
        clients: &'a [u8],
    },
}

#[derive(Deserialize)]
enum SavedOwned {
    Base(Vec<(u32, ByteBuf)>),
    EncodedBase(Vec<(u32, ByteBuf)>),
    Delta { app: ByteBuf, clients: ByteBuf },
}

impl Serialize for SavedState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SavedState::Base(image) => SavedRef::Base(BaseRef(image)),
            SavedState::EncodedBase(partitions) => SavedRef::EncodedBase(partitions),
            SavedState::Delta { app, clients } => SavedRef::Delta { app, clients },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SavedState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match SavedOwned::deserialize(deserializer)? {
            SavedOwned::Base(partitions) | SavedOwned::EncodedBase(partitions) => {
                SavedState::EncodedBase(partitions)
            }
            SavedOwned::Delta { app, clients } => SavedState::Delta {
                app: Arc::new(app.into_vec()),
                clients: Arc::new(clients.into_vec()),
            },
        })
    }
}

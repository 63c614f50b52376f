//! The replicated application: what the replicas agree to execute.

mod kv;

pub use kv::{KvOp, KvResult, KvStore, KV_PARTITIONS};

use std::any::Any;
use std::sync::Arc;

use pbft_crypto::{Digest, Domain};

/// Makes the replicated application in its initial state. A replica needs a fresh instance
/// whenever it starts, recovers from its disk or rejoins, and restores snapshots onto it.
pub type AppFactory = Arc<dyn Fn() -> Box<dyn StateMachine> + Send + Sync>;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot: {0}")]
pub struct SnapshotError(pub String);

/// A deterministic state machine replicated by PBFT.
///
/// Every correct replica applies the same operations in the same order, so every method must be a
/// pure function of the state and its arguments: no clock, randomness or iteration over unordered
/// containers.
///
/// The state is cut into a fixed number of partitions (the TOCS paper's partition tree, one level
/// deep). A checkpoint hashes, persists and transfers only the partitions that changed, so an
/// application with a large state overrides the partition methods; the defaults treat the whole
/// state as one partition, which suits a small one.
pub trait StateMachine: Send {
    /// Applies one operation and returns its result. Invalid operations must still produce a
    /// (deterministic) result rather than panic: the bytes come from clients.
    fn execute(&mut self, op: &[u8]) -> Vec<u8>;

    /// Answers a read-only operation from the current state without changing it (TOCS 2002,
    /// section 5.1.3); `None` if `op` is not read-only, so it must be ordered.
    fn query(&self, op: &[u8]) -> Option<Vec<u8>>;

    /// Applies a batch of operations in order.
    fn execute_batch(&mut self, ops: &[&[u8]]) -> Vec<Vec<u8>> {
        ops.iter().map(|op| self.execute(op)).collect()
    }

    /// The whole state as bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot taken by [`StateMachine::snapshot`]. It must not
    /// panic, whatever the bytes.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;

    /// About how many bytes the state holds, for metrics.
    fn state_bytes(&self) -> u64 {
        self.snapshot().len() as u64
    }

    /// How many partitions the state is cut into; fixed for the application's life and the
    /// same on every replica.
    fn partition_count(&self) -> u32 {
        1
    }

    /// The digest of every partition, in order. Equal partitions give equal digests on every
    /// replica. It should cost what changed since the last call, not the size of the state.
    fn partition_digests(&self) -> Arc<Vec<Digest>> {
        Arc::new(vec![whole_state_digest(&self.snapshot())])
    }

    /// An immutable copy of the state, to encode partitions from while execution goes on.
    /// It should cost little: the copy is taken at every checkpoint.
    fn freeze(&self) -> Arc<dyn FrozenState> {
        Arc::new(WholeState(self.snapshot()))
    }

    /// The digest partition `partition` has when it holds `bytes`, an encoding written by
    /// [`FrozenState::encode_partition`]; an error for bytes no such partition encodes to.
    /// The bytes come from peers, of which some may be faulty.
    fn partition_digest_of(&self, partition: u32, bytes: &[u8]) -> Result<Digest, SnapshotError> {
        if partition != 0 {
            return Err(SnapshotError(format!("no partition {partition}")));
        }
        Ok(whole_state_digest(bytes))
    }

    /// Replaces partition `partition` with `bytes`, already checked with
    /// [`StateMachine::partition_digest_of`]; afterwards its digest is the one checked.
    fn restore_partition(&mut self, partition: u32, bytes: &[u8]) -> Result<(), SnapshotError> {
        if partition != 0 {
            return Err(SnapshotError(format!("no partition {partition}")));
        }
        self.restore(bytes)
    }

    /// Applies changes written by [`FrozenState::encode_changes_since`] to the state they were
    /// taken against. Only the replica's own storage gives them.
    fn apply_changes(&mut self, _changes: &[u8]) -> Result<(), SnapshotError> {
        Err(SnapshotError("this application writes no changes".into()))
    }
}

/// The state as it was at a checkpoint, shared by whoever still needs it: peers fetching it,
/// and the storage writing it.
pub trait FrozenState: Any + Send + Sync + std::fmt::Debug {
    /// Appends the canonical encoding of partition `partition` to `out`.
    fn encode_partition(&self, partition: u32, out: &mut Vec<u8>);

    /// Appends what turns `older`, an earlier copy of the same state, into this one, for
    /// [`StateMachine::apply_changes`]; `false`, writing nothing, when it cannot (the storage
    /// then writes the whole state). It should cost what changed.
    fn encode_changes_since(&self, _older: &dyn FrozenState, _out: &mut Vec<u8>) -> bool {
        false
    }
}

/// The digest of a one-partition state by its snapshot bytes.
fn whole_state_digest(snapshot: &[u8]) -> Digest {
    Digest::of(Domain::Content, snapshot)
}

/// The frozen state of an application that is one partition: its snapshot.
#[derive(Debug)]
struct WholeState(Vec<u8>);

impl FrozenState for WholeState {
    fn encode_partition(&self, partition: u32, out: &mut Vec<u8>) {
        if partition == 0 {
            out.extend_from_slice(&self.0);
        }
    }
}

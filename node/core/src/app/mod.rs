//! The replicated application: what the replicas agree to execute.

mod kv;

pub use kv::{KvOp, KvResult, KvStore};

use std::sync::Arc;

use pbft_crypto::Digest;

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

    /// A digest of the whole state; equal states give equal digests on every replica.
    fn digest(&self) -> Digest;

    /// The whole state as bytes, for checkpoints and state transfer.
    fn snapshot(&self) -> Vec<u8>;

    /// Appends [`StateMachine::snapshot`] to `out`; a state machine with a large state can
    /// write it there directly instead of into a buffer that is then copied.
    fn snapshot_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.snapshot());
    }

    /// Replaces the state with a snapshot taken by [`StateMachine::snapshot`]. The caller has
    /// already checked the snapshot against a certified digest, but it must still not panic.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
}

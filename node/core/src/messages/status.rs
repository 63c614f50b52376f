//! What a replica reports about itself to a status query.

use pbft_crypto::Digest;
use serde::{Deserialize, Serialize};

use super::{ReplicaId, Seq, View};

/// What a replica reports about itself to a status query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Echo of the query's nonce.
    pub nonce: u64,
    pub replica: ReplicaId,
    pub view: View,
    /// False while a view change is in progress.
    pub view_active: bool,
    pub primary: ReplicaId,
    pub last_executed: Seq,
    pub stable_checkpoint: Seq,
    pub state_digest: Digest,
    /// Replicas this one currently has a working link to.
    pub connected_peers: Vec<ReplicaId>,
    /// Messages refused, by reason label, at the boundary and in the core.
    pub rejected: Vec<(String, u64)>,
    /// Replicas this one holds signed proof of equivocation against.
    pub evidence_against: Vec<ReplicaId>,
    /// The named faulty behaviour this node runs, if any.
    pub behavior: Option<String>,
    pub pending_requests: u64,
    pub committed_requests: u64,
}

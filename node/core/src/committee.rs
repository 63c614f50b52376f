//! Who the replicas are and the quorum arithmetic of n = 3f+1.

use pbft_crypto::PublicKey;

use crate::messages::{ReplicaId, View};

/// The replicas of a cluster: replica `i` has key `replicas[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committee {
    replicas: Vec<PublicKey>,
    f: usize,
}

/// Why a committee cannot be formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommitteeError {
    #[error("the cluster has {n} replicas but f = {f} needs n = 3f+1 = {}", 3 * f + 1)]
    WrongSize { n: usize, f: usize },
    #[error("replicas {0} and {1} have the same public key")]
    DuplicateKey(ReplicaId, ReplicaId),
    #[error("f must be at least 1")]
    NoFaultTolerance,
}

impl Committee {
    /// Forms a committee of `3f+1` distinct keys.
    pub fn new(replicas: Vec<PublicKey>, f: usize) -> Result<Committee, CommitteeError> {
        if f == 0 {
            return Err(CommitteeError::NoFaultTolerance);
        }
        if replicas.len() != 3 * f + 1 {
            return Err(CommitteeError::WrongSize {
                n: replicas.len(),
                f,
            });
        }
        for (i, a) in replicas.iter().enumerate() {
            if let Some(j) = replicas[..i].iter().position(|b| b == a) {
                return Err(CommitteeError::DuplicateKey(j as ReplicaId, i as ReplicaId));
            }
        }
        Ok(Committee { replicas, f })
    }

    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    pub fn f(&self) -> usize {
        self.f
    }

    /// 2f+1: any two quorums share a correct replica.
    pub fn quorum(&self) -> usize {
        2 * self.f + 1
    }

    /// f+1: at least one of them is correct.
    pub fn weak_quorum(&self) -> usize {
        self.f + 1
    }

    /// The primary of view `v` is `v mod n`.
    pub fn primary(&self, view: View) -> ReplicaId {
        (view % self.n() as u64) as ReplicaId
    }

    pub fn key(&self, id: ReplicaId) -> Option<&PublicKey> {
        self.replicas.get(id as usize)
    }

    /// The replica that has `key`, if any.
    pub fn id_of(&self, key: &PublicKey) -> Option<ReplicaId> {
        self.replicas
            .iter()
            .position(|k| k == key)
            .map(|i| i as ReplicaId)
    }

    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.n()).map(|i| i as ReplicaId)
    }
}

//! Who the replicas are, which clients they serve, and the quorum arithmetic of n = 3f+1.

use std::collections::BTreeSet;

use pbft_crypto::{ClusterId, Digest, DigestBuilder, Domain, KeyPair, PublicKey, Signer};
use serde::{Deserialize, Serialize};

use crate::ids::{ReplicaId, View};

/// Which client keys the cluster serves. Part of the replicated configuration: every correct
/// replica checks it for every request envelope it accepts (in a REQUEST, a PRE-PREPARE, a
/// fetched batch, a commit certificate), so all must hold the same one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientPolicy {
    /// Anyone holding any ed25519 key.
    Open,
    /// Only these keys.
    Allow(BTreeSet<PublicKey>),
}

impl ClientPolicy {
    /// Whether a client presenting `key` is admitted.
    pub fn admits(&self, key: &PublicKey) -> bool {
        match self {
            ClientPolicy::Open => true,
            ClientPolicy::Allow(keys) => keys.contains(key),
        }
    }

    fn digest(&self) -> Digest {
        let builder = DigestBuilder::new(Domain::Configuration);
        match self {
            ClientPolicy::Open => builder.u8(0),
            ClientPolicy::Allow(keys) => (keys.iter())
                .fold(builder.u8(1).u64(keys.len() as u64), |b, key| {
                    b.public_key(key)
                }),
        }
        .finish()
    }
}

/// Digests of the parts of the configuration that replicas of one cluster must share, sent in
/// every status message so that replicas whose configurations differ find out which part does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// f and the replicas' keys, in id order.
    pub replicas: Digest,
    /// The client policy.
    pub clients: Digest,
}

impl Fingerprint {
    /// The first part in which `other` differs from `self`, named for a log line.
    pub fn difference(&self, other: &Fingerprint) -> Option<&'static str> {
        if self.replicas != other.replicas {
            Some("the replicas' keys or f")
        } else if self.clients != other.clients {
            Some("the client list")
        } else {
            None
        }
    }
}

/// The replicas of a cluster: replica `i` has key `replicas[i]`; and the clients it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committee {
    replicas: Vec<PublicKey>,
    f: usize,
    clients: ClientPolicy,
    fingerprint: Fingerprint,
    cluster_id: ClusterId,
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
    /// Forms a committee of `3f+1` distinct keys that serves any client (see
    /// [`Committee::with_clients`]).
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
        let replicas_digest = (replicas.iter())
            .fold(
                DigestBuilder::new(Domain::Configuration).u64(f as u64),
                |b, key| b.public_key(key),
            )
            .finish();
        let clients = ClientPolicy::Open;
        let fingerprint = Fingerprint {
            replicas: replicas_digest,
            clients: clients.digest(),
        };
        Ok(Committee {
            replicas,
            f,
            clients,
            fingerprint,
            cluster_id: ClusterId(replicas_digest),
        })
    }

    /// The same committee, serving only the clients `policy` admits.
    pub fn with_clients(mut self, policy: ClientPolicy) -> Committee {
        self.fingerprint.clients = policy.digest();
        self.clients = policy;
        self
    }

    pub fn clients(&self) -> &ClientPolicy {
        &self.clients
    }

    /// Whether requests signed by `client` may be ordered and executed.
    pub fn admits_client(&self, client: &PublicKey) -> bool {
        self.clients.admits(client)
    }

    /// Digests of what replicas of this cluster must share.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// What every signature in this cluster binds: the digest of f and the replicas' keys. The
    /// client list is left out so that clients, which do not know it, can sign.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// `key`, signing for this cluster.
    pub fn signer(&self, key: KeyPair) -> Signer {
        key.for_cluster(self.cluster_id)
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

    /// 2f: the PREPAREs from distinct backups that, with the primary's PRE-PREPARE, make 2f+1
    /// replicas behind one batch.
    pub fn prepared_quorum(&self) -> usize {
        2 * self.f
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

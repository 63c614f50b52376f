//! The tokio driver around the pure replica core.

use std::net::SocketAddr;
use std::path::PathBuf;

use pbft_crypto::KeyPair;
use pbft_net::{PeerInfo, TransportConfig};

use crate::byzantine::BehaviorKind;
use crate::committee::Committee;
use crate::messages::ReplicaId;
use crate::protocol::ProtocolConfig;

/// Everything a node needs to run, already validated (see [`crate::config`]).
#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub id: ReplicaId,
    pub key: KeyPair,
    /// The UDP address the replica's QUIC endpoint listens on.
    pub listen: SocketAddr,
    pub committee: Committee,
    /// Every replica's id, address and key (this one included).
    pub peers: Vec<PeerInfo>,
    pub protocol: ProtocolConfig,
    pub transport: TransportConfig,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// Where Prometheus metrics are served over HTTP, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// A named faulty behaviour, for test clusters only.
    pub behavior: Option<BehaviorKind>,
}

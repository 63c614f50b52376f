//! Clusters on this machine's loopback interface, for tests and benchmarks.

use std::net::{SocketAddr, UdpSocket};

use pbft_crypto::KeyPair;
use pbft_net::{PeerInfo, TransportConfig};

use crate::runtime::NodeSetup;
use pbft_core::committee::Committee;
use pbft_core::protocol::ProtocolConfig;

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_addr() -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.local_addr()
}

/// Setups for the 3f+1 replicas of a loopback cluster with fresh keys and free ports. Each
/// replica keeps its state under `data_dir/replica-N`, initialised.
pub fn loopback_cluster(
    f: usize,
    protocol: ProtocolConfig,
    data_dir: &std::path::Path,
) -> std::io::Result<Vec<NodeSetup>> {
    let n = 3 * f + 1;
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate()).collect();
    let mut peers = Vec::with_capacity(n);
    for (id, key) in keys.iter().enumerate() {
        peers.push(PeerInfo {
            id: id as u32,
            addr: free_udp_addr()?,
            public_key: key.public(),
        });
    }
    let committee = Committee::new(keys.iter().map(KeyPair::public).collect(), f)
        .expect("3f+1 fresh keys form a committee");
    let setups: Vec<NodeSetup> = keys
        .into_iter()
        .enumerate()
        .map(|(id, key)| NodeSetup {
            id: id as u32,
            key,
            listen: peers[id].addr,
            committee: committee.clone(),
            peers: peers.clone(),
            protocol: protocol.clone(),
            transport: TransportConfig::default(),
            data_dir: data_dir.join(format!("replica-{id}")),
            storage: Default::default(),
            metrics: None,
            metrics_server: Default::default(),
            behavior: None,
        })
        .collect();
    for setup in &setups {
        crate::data_dir::init(setup, false).map_err(std::io::Error::other)?;
    }
    Ok(setups)
}

//! The client against four real replicas in this process, over QUIC on 127.0.0.1.

use std::time::Duration;

use pbft_client::{CasOutcome, Client, ClientError, ClientSetup};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::protocol::ProtocolConfig;
use pbft_core::Committee;
use pbft_crypto::KeyPair;
use pbft_net::{PeerInfo, TransportConfig};
use pbft_node::runtime::{NodeSetup, RunningNode};

const F: usize = 1;
const N: usize = 3 * F + 1;

struct Cluster {
    f: usize,
    nodes: Vec<Option<RunningNode>>,
    peers: Vec<PeerInfo>,
    _dirs: tempfile::TempDir,
}

/// A port that was free a moment ago: the cluster list needs every address before any replica
/// starts.
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

impl Cluster {
    async fn start(behaviors: &[(u32, BehaviorKind)]) -> Cluster {
        Cluster::start_with(F, behaviors).await
    }

    async fn start_with(f: usize, behaviors: &[(u32, BehaviorKind)]) -> Cluster {
        let keys: Vec<KeyPair> = (0..3 * f + 1).map(|_| KeyPair::generate()).collect();
        let peers: Vec<PeerInfo> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| PeerInfo {
                id: i as u32,
                addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                public_key: key.public(),
            })
            .collect();
        let committee = Committee::new(keys.iter().map(KeyPair::public).collect(), f).unwrap();
        let dirs = tempfile::tempdir().unwrap();
        let protocol = ProtocolConfig {
            view_change_timeout: Duration::from_millis(1000),
            ..ProtocolConfig::default()
        };
        let mut nodes = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let id = i as u32;
            let setup = NodeSetup {
                id,
                key,
                listen: peers[i].addr,
                committee: committee.clone(),
                peers: peers.clone(),
                protocol: protocol.clone(),
                transport: TransportConfig::default(),
                data_dir: dirs.path().join(format!("replica-{i}")),
                storage: Default::default(),
                metrics: None,
                metrics_server: Default::default(),
                behavior: behaviors.iter().find(|(b, _)| *b == id).map(|(_, k)| *k),
            };
            pbft_node::data_dir::init(&setup, false).unwrap();
            nodes.push(Some(RunningNode::start(setup).await.unwrap()));
        }
        Cluster {
            f,
            nodes,
            peers,
            _dirs: dirs,
        }
    }

    fn client_setup(&self) -> ClientSetup {
        let mut setup = ClientSetup::new(KeyPair::generate(), self.f, self.peers.clone());
        setup.request_timeout = Duration::from_secs(30);
        setup.retransmit_interval = Duration::from_millis(300);
        setup
    }

    async fn client(&self) -> Client {
        Client::connect(self.client_setup()).await.unwrap()
    }

    async fn stop(&mut self, id: usize) {
        if let Some(node) = self.nodes[id].take() {
            node.stop().await;
        }
    }

    /// Waits until every running replica reports the same last executed sequence number and
    /// state digest.
    async fn await_agreement(&self) {
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let mut positions = Vec::new();
                for node in self.nodes.iter().flatten() {
                    let status = node.status().await.unwrap();
                    positions.push((status.last_executed, status.state_digest));
                }
                if positions.windows(2).all(|w| w[0] == w[1]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("replicas agree on their state");
    }

    /// Stops every replica at once.
    async fn shutdown(self) {
        let mut stopping = tokio::task::JoinSet::new();
        for node in self.nodes.into_iter().flatten() {
            stopping.spawn(node.stop());
        }
        while stopping.join_next().await.is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_operations_and_status() {
    let cluster = Cluster::start(&[]).await;
    let client = cluster.client().await;

    assert_eq!(client.get("k").await.unwrap(), None);
    client.put("k", "1").await.unwrap();
    assert_eq!(
        client.get("k").await.unwrap().map(|v| v.to_vec()),
        Some(b"1".to_vec())
    );
    assert_eq!(
        client.cas("k", Some(b"0".to_vec()), "2").await.unwrap(),
        CasOutcome::Mismatch(Some(bytes::Bytes::from_static(b"1")))
    );
    assert_eq!(
        client.cas("k", Some(b"1".to_vec()), "2").await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(
        client.delete("k").await.unwrap().map(|v| v.to_vec()),
        Some(b"2".to_vec())
    );
    assert_eq!(client.delete("k").await.unwrap(), None);
    assert_eq!(
        client.cas("k", None, "3").await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(
        client.get("k").await.unwrap().map(|v| v.to_vec()),
        Some(b"3".to_vec())
    );
    // Bytes that are no operation still get an agreed (invalid) result.
    assert!(client.submit(vec![0xff; 3]).await.is_ok());

    let statuses = client.status_all(Duration::from_secs(5)).await;
    assert_eq!(statuses.len(), N);
    for (id, status) in &statuses {
        let status = status.as_ref().unwrap();
        assert_eq!(status.replica, *id);
        assert_eq!(status.view, 0);
        assert_eq!(status.primary, 0);
    }
    // At least the f+1 replicas whose replies were accepted have executed requests.
    let executed = statuses
        .iter()
        .filter(|(_, s)| s.as_ref().unwrap().last_executed > 0)
        .count();
    assert!(executed > F, "{statuses:?}");

    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_from_one_client() {
    let cluster = Cluster::start(&[]).await;
    let client = cluster.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    // More than the client keeps outstanding at once, so some wait for room.
    for i in 0..700u32 {
        let client = client.clone();
        tasks.spawn(async move { client.put(format!("key-{i}"), i.to_string()).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    for i in [0u32, 349, 699] {
        assert_eq!(
            client
                .get(format!("key-{i}"))
                .await
                .unwrap()
                .map(|v| v.to_vec()),
            Some(i.to_string().into_bytes())
        );
    }
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sending_junk_replies_cannot_fool_the_client() {
    let cluster = Cluster::start(&[(3, BehaviorKind::Corrupt)]).await;
    let client = cluster.client().await;
    for i in 0..20u32 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    for i in 0..20u32 {
        assert_eq!(
            client
                .get(format!("k{i}"))
                .await
                .unwrap()
                .map(|v| v.to_vec()),
            Some(format!("v{i}").into_bytes())
        );
    }
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_complete_after_the_primary_crashes() {
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client().await;
    client.put("before", "1").await.unwrap();
    cluster.stop(0).await;
    // Retransmission to every replica makes the backups suspect the primary and change view.
    client.put("after", "2").await.unwrap();
    assert_eq!(
        client.get("before").await.unwrap().map(|v| v.to_vec()),
        Some(b"1".to_vec())
    );
    assert_eq!(
        client.get("after").await.unwrap().map(|v| v.to_vec()),
        Some(b"2".to_vec())
    );
    let statuses = client.status_all(Duration::from_secs(2)).await;
    assert!(statuses[0].1.is_err());
    for (_, status) in &statuses[1..] {
        assert!(status.as_ref().unwrap().view >= 1);
    }
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_out_without_a_quorum() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.stop(1).await;
    cluster.stop(2).await;
    let mut setup = cluster.client_setup();
    setup.request_timeout = Duration::from_secs(2);
    let client = Client::connect(setup).await.unwrap();
    let result = client.put("k", "v").await;
    assert!(matches!(result, Err(ClientError::Timeout)), "{result:?}");
    client.close().await;
    cluster.shutdown().await;
}

/// Several clients, each with many requests outstanding, against `f`.
async fn concurrent_clients_commit(f: usize) {
    let cluster = Cluster::start_with(f, &[]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4u32 {
        let client = cluster.client().await;
        tasks.spawn(async move {
            let mut puts = tokio::task::JoinSet::new();
            for i in 0..250u32 {
                let client = client.clone();
                puts.spawn(async move { client.put(format!("c{c}/{i}"), format!("v{i}")).await });
            }
            while let Some(result) = puts.join_next().await {
                result.unwrap().unwrap();
            }
            for i in [0u32, 124, 249] {
                let value = client.get(format!("c{c}/{i}")).await.unwrap();
                assert_eq!(
                    value.map(|v| v.to_vec()),
                    Some(format!("v{i}").into_bytes())
                );
            }
            client.close().await;
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    cluster.await_agreement().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_from_several_clients_with_four_replicas() {
    concurrent_clients_commit(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_from_several_clients_with_seven_replicas() {
    concurrent_clients_commit(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_stopped_mid_load_changes_the_view_and_every_request_completes() {
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client().await;
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let client = client.clone();
        puts.spawn(async move { client.put(format!("k{i}"), format!("v{i}")).await });
        if i == 100 {
            cluster.stop(0).await;
        }
    }
    while let Some(result) = puts.join_next().await {
        result.unwrap().unwrap();
    }
    for i in (0..300u32).step_by(37) {
        assert_eq!(
            client
                .get(format!("k{i}"))
                .await
                .unwrap()
                .map(|v| v.to_vec()),
            Some(format!("v{i}").into_bytes())
        );
    }
    cluster.await_agreement().await;
    for node in cluster.nodes.iter().flatten() {
        assert!(node.status().await.unwrap().view >= 1);
    }
    client.close().await;
    cluster.shutdown().await;
}

//! The runtime over real QUIC on 127.0.0.1: replicas in this process, a raw client transport.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pbft_core::app::{KvOp, KvResult};
use pbft_core::messages::{ClientRequest, Limits, Message, Outcome, RequestEnvelope};
use pbft_core::protocol::ProtocolConfig;
use pbft_core::Committee;
use pbft_crypto::KeyPair;
use pbft_net::{ClientTransport, TransportConfig};
use pbft_node::local::loopback_cluster;
use pbft_node::runtime::RunningNode;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);

struct Cluster {
    nodes: Vec<RunningNode>,
    peers: Vec<pbft_net::PeerInfo>,
    committee: Committee,
    _dir: tempfile::TempDir,
}

async fn start_cluster(f: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let setups = loopback_cluster(f, ProtocolConfig::default(), dir.path()).unwrap();
    let peers = setups[0].peers.clone();
    let committee = setups[0].committee.clone();
    let mut nodes = Vec::new();
    for setup in setups {
        nodes.push(RunningNode::start(setup).await.unwrap());
    }
    Cluster {
        nodes,
        peers,
        committee,
        _dir: dir,
    }
}

async fn connect(
    cluster: &Cluster,
    key: &KeyPair,
) -> (ClientTransport, mpsc::Receiver<(u32, Bytes)>) {
    ClientTransport::connect(key, cluster.peers.clone(), TransportConfig::default())
        .await
        .unwrap()
}

fn put(key: &str, value: &str) -> Vec<u8> {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
    }
    .encode()
}

/// Waits until f+1 replicas answered every timestamp of `envelope` alike; returns the results.
async fn await_results(
    replies: &mut mpsc::Receiver<(u32, Bytes)>,
    envelope: &RequestEnvelope,
    f: usize,
) -> BTreeMap<u64, Vec<u8>> {
    let mut answers: BTreeMap<u64, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    let mut accepted = BTreeMap::new();
    let wanted = envelope.requests.len();
    tokio::time::timeout(PATIENCE, async {
        while accepted.len() < wanted {
            let (from, frame) = replies.recv().await.expect("transport open");
            let Ok(Message::Reply(reply)) = Message::decode(&frame, &Limits::default()) else {
                continue;
            };
            assert_eq!(reply.replica, from);
            for result in reply.results {
                let Outcome::Done(value) = result.outcome else {
                    continue;
                };
                let by = answers.entry(result.timestamp).or_default();
                by.insert(from, value.clone());
                if by.values().filter(|r| **r == value).count() > f {
                    accepted.insert(result.timestamp, value);
                }
            }
        }
    })
    .await
    .expect("results within the deadline");
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_commit_over_quic_and_bad_input_is_refused() {
    let cluster = start_cluster(1).await;
    let client = KeyPair::generate();
    let (transport, mut replies) = connect(&cluster, &client).await;

    let envelope = RequestEnvelope::new(
        &cluster.committee.signer(client.clone()),
        1,
        (1..=20)
            .map(|t| ClientRequest {
                timestamp: t,
                op: put(&format!("k{t}"), "v"),
            })
            .collect(),
    );
    let frame = Bytes::from(Message::Request(envelope.clone()).encode());
    transport.broadcast(frame);
    let results = await_results(&mut replies, &envelope, 1).await;
    assert_eq!(results.len(), 20);
    assert!(results
        .values()
        .all(|r| KvResult::decode(r).unwrap() == KvResult::Done));

    // A request with a broken signature, random bytes, and a frame as large as a client may
    // send but undecodable, each from a client of its own: each is refused and counted, and
    // each sender's connection is cut off.
    let forger = KeyPair::generate();
    let (forging, _) = connect(&cluster, &forger).await;
    let mut forged = RequestEnvelope::new(
        &cluster.committee.signer(forger.clone()),
        1,
        vec![ClientRequest {
            timestamp: 50,
            op: put("x", "y"),
        }],
    );
    forged.signature.0[0] ^= 1;
    forging.send(0, Bytes::from(Message::Request(forged).encode()));
    let mut garbage_senders = Vec::new();
    for garbage in [
        Bytes::from_static(b"\x07\x00\x00\x00garbage"),
        Bytes::from(vec![0xAB; 1 << 20]),
    ] {
        let (sender, _) = connect(&cluster, &KeyPair::generate()).await;
        sender.send(0, garbage);
        garbage_senders.push(sender);
    }

    // The node keeps serving: a new request still commits.
    let next = RequestEnvelope::new(
        &cluster.committee.signer(client.clone()),
        1,
        vec![ClientRequest {
            timestamp: 60,
            op: put("after", "garbage"),
        }],
    );
    transport.broadcast(Bytes::from(Message::Request(next.clone()).encode()));
    await_results(&mut replies, &next, 1).await;

    // Refusals are counted by the verifiers, which may still be busy with them.
    let count = |status: &pbft_core::messages::NodeStatus, label: &str| {
        status
            .rejected
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0, |(_, c)| *c)
    };
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            let status = cluster.nodes[0].status().await.unwrap();
            if count(&status, "bad_signature") >= 1
                && count(&status, "undecodable") >= 2
                && count(&status, "client_banned") >= 3
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("refusals counted");
    assert!(status.last_executed >= 2);

    // Every replica reaches the same state.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut statuses = Vec::new();
            for node in &cluster.nodes {
                statuses.push(node.status().await.unwrap());
            }
            let first = (&statuses[0].last_executed, &statuses[0].state_digest);
            if statuses
                .iter()
                .all(|s| (&s.last_executed, &s.state_digest) == first)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("replicas converge");
    for node in cluster.nodes {
        node.stop().await;
    }
}

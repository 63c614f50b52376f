//! End-to-end tests over real QUIC on 127.0.0.1. Timeouts only guard against hangs; nothing
//! asserts on timing.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::KeyPair;
use pbft_net::{
    ClientPolicy, ClientTransport, Inbox, Incoming, NetError, Peer, PeerInfo, ReplicaTransport,
    TransportConfig,
};
use tokio::sync::mpsc;

/// How long any single expectation may take before the test fails as hung.
const PATIENCE: Duration = Duration::from_secs(60);

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32]).unwrap()
}

/// `n` distinct free UDP ports on 127.0.0.1 (held together so they differ, then released).
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn cluster(keys: &[KeyPair], addrs: &[SocketAddr]) -> Vec<PeerInfo> {
    (keys.iter().zip(addrs).enumerate())
        .map(|(id, (key, addr))| PeerInfo {
            id: id as u32,
            addr: *addr,
            public_key: key.public(),
        })
        .collect()
}

fn config() -> TransportConfig {
    TransportConfig {
        handshake_timeout: Duration::from_secs(2),
        backoff_max: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

async fn bind(
    id: u32,
    keys: &[KeyPair],
    addrs: &[SocketAddr],
    cfg: TransportConfig,
) -> (ReplicaTransport, Inbox) {
    let cluster = cluster(keys, addrs);
    ReplicaTransport::bind(
        id,
        &keys[id as usize],
        addrs[id as usize],
        cluster,
        ClientPolicy::Open,
        cfg,
    )
    .await
    .unwrap()
}

/// A client with key `seed` dialing `peers`.
async fn client(seed: u8, peers: &[PeerInfo]) -> (ClientTransport, mpsc::Receiver<(u32, Bytes)>) {
    ClientTransport::connect(&key(seed), peers.to_vec(), config())
        .await
        .unwrap()
}

/// A one-replica cluster with `cfg`: its transport, inbox and listing.
async fn lone_replica(cfg: TransportConfig) -> (ReplicaTransport, Inbox, Vec<PeerInfo>) {
    let keys = vec![key(1)];
    let addrs = free_addrs(1);
    let (replica, inbox) = bind(0, &keys, &addrs, cfg).await;
    (replica, inbox, cluster(&keys, &addrs))
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Where received frames come from: a replica's inbox or a client's channel.
trait Frames {
    type Item;
    fn next(&mut self) -> impl Future<Output = Option<Self::Item>>;
}

impl Frames for Inbox {
    type Item = Incoming;
    fn next(&mut self) -> impl Future<Output = Option<Incoming>> {
        self.recv()
    }
}

impl<T> Frames for mpsc::Receiver<T> {
    type Item = T;
    fn next(&mut self) -> impl Future<Output = Option<T>> {
        self.recv()
    }
}

async fn recv<F: Frames>(rx: &mut F) -> F::Item {
    within("a frame", rx.next()).await.expect("channel open")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends with `send` every 100 ms until `rx` yields a frame accepted by `wanted`: links may
/// lose frames while they come up, like the protocol above expects.
async fn resend_until<F: Frames>(
    what: &str,
    rx: &mut F,
    mut send: impl FnMut(),
    mut wanted: impl FnMut(&F::Item) -> bool,
) -> F::Item {
    within(what, async {
        loop {
            send();
            let deadline = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    item = rx.next() => {
                        let item = item.expect("channel open");
                        if wanted(&item) {
                            return item;
                        }
                    }
                    () = &mut deadline => break,
                }
            }
        }
    })
    .await
}

fn frame(text: String) -> Bytes {
    Bytes::from(text.into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_exchange_frames_in_order() {
    let keys: Vec<KeyPair> = (1..=4).map(key).collect();
    let addrs = free_addrs(4);
    let mut nodes = Vec::new();
    for id in 0..4 {
        nodes.push(bind(id, &keys, &addrs, config()).await);
    }
    const PER_LINK: usize = 300;
    for (from, (node, _)) in nodes.iter().enumerate() {
        for to in 0..4u32 {
            if to as usize != from {
                for seq in 0..PER_LINK {
                    node.send_to_replica(to, frame(format!("{from}->{to} #{seq}")));
                }
            }
        }
    }
    for (to, (node, rx)) in nodes.iter_mut().enumerate() {
        let mut next = [0usize; 4];
        for _ in 0..3 * PER_LINK {
            let Incoming { from, frame, .. } = recv(rx).await;
            let Peer::Replica(from) = from else {
                panic!("replica {to} got a frame from {from:?}")
            };
            let expected = format!("{from}->{to} #{}", next[from as usize]);
            assert_eq!(frame, expected.as_bytes(), "frames arrive once, in order");
            next[from as usize] += 1;
        }
        assert!(next
            .iter()
            .enumerate()
            .all(|(i, n)| *n == if i == to { 0 } else { PER_LINK }));
        wait_until("all links up", || node.connected_replicas().len() == 3).await;
        let stats = node.stats();
        assert_eq!(stats.frames_in, 3 * PER_LINK as u64);
        assert_eq!(stats.dropped_queue_full, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_key_is_refused() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let (honest, _honest_rx) = bind(0, &keys, &addrs, config()).await;
    // Replica 1's address is served by a node with another key.
    let impostor_keys = vec![keys[0].clone(), key(99)];
    let (impostor, mut impostor_rx) = bind(1, &impostor_keys, &addrs, config()).await;

    honest.send_to_replica(1, Bytes::from_static(b"secret"));
    wait_until("failed dials", || honest.stats().dial_failures >= 3).await;
    wait_until("refused handshakes", || {
        impostor.stats().handshake_failures >= 3
    })
    .await;
    assert!(honest.connected_replicas().is_empty());
    assert!(
        impostor_rx.try_recv().is_none(),
        "nothing reaches the impostor"
    );
    assert_eq!(impostor.stats().frames_in, 0);

    // A client pinning replica 1's listed key refuses the impostor too.
    let (client, _client_rx) = ClientTransport::connect(&key(50), cluster(&keys, &addrs), config())
        .await
        .unwrap();
    client.send(1, Bytes::from_static(b"request"));
    wait_until("client dial failures", || client.stats().dial_failures >= 2).await;
    assert!(!client.connected_replicas().contains(&1));
    assert!(impostor_rx.try_recv().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_key_is_a_client_never_a_replica() {
    let keys: Vec<KeyPair> = (1..=4).map(key).collect();
    let addrs = free_addrs(4);
    let (honest, mut honest_rx) = bind(0, &keys, &addrs, config()).await;
    // A node claiming to be replica 3 with a key the cluster does not list for it.
    let rogue_key = key(66);
    let mut rogue_keys = keys.clone();
    rogue_keys[3] = rogue_key.clone();
    let (rogue, _rogue_rx) = bind(3, &rogue_keys, &addrs, config()).await;

    rogue.send_to_replica(0, Bytes::from_static(b"i am replica 3"));
    let Incoming { from, frame, .. } = recv(&mut honest_rx).await;
    assert_eq!(from, Peer::Client(rogue_key.public()));
    assert_eq!(frame, &b"i am replica 3"[..]);
    assert!(honest.connected_clients().contains(&rogue_key.public()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_its_connection() {
    let keys = vec![key(1)];
    let addrs = free_addrs(1);
    let cfg = TransportConfig {
        max_frame: Some(1024),
        ..config()
    };
    let (replica, mut rx) = bind(0, &keys, &addrs, cfg).await;
    let cluster = cluster(&keys, &addrs);

    let big_sender = key(10);
    let (client, _client_rx) = ClientTransport::connect(&big_sender, cluster.clone(), config())
        .await
        .unwrap();
    client.send(0, Bytes::from(vec![7u8; 4096]));
    wait_until("the oversized frame", || {
        replica.stats().rejected_oversized_in == 1
    })
    .await;

    // The listener keeps serving other clients, and the offender once it behaves.
    let (other, _other_rx) = ClientTransport::connect(&key(11), cluster, config())
        .await
        .unwrap();
    other.send(0, Bytes::from_static(b"small"));
    let incoming = recv(&mut rx).await;
    assert_eq!(incoming.from, Peer::Client(key(11).public()));
    assert_eq!(incoming.frame, &b"small"[..]);
    let incoming = resend_until(
        "the offender's next frame",
        &mut rx,
        || client.send(0, Bytes::from_static(b"sorry")),
        |incoming| incoming.from == Peer::Client(big_sender.public()),
    )
    .await;
    assert_eq!(incoming.frame, &b"sorry"[..]);

    // Frames above the limit are not sent at all.
    replica.send_to_session(&key(11).public(), 0, Bytes::from(vec![0u8; 2048]));
    assert_eq!(replica.stats().rejected_oversized_out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_udp_datagrams_do_not_hurt() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let (replica, _rx0) = bind(0, &keys, &addrs, config()).await;
    let noise = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..2000 {
        let len = [1, 7, 40, 1200, 1350, 1500][round % 6];
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut datagram = datagram;
        if round % 2 == 0 {
            // Make it look like a QUIC long-header Initial packet.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
        }
        noise.send_to(&datagram, addrs[0]).unwrap();
    }
    let (other, mut rx1) = bind(1, &keys, &addrs, config()).await;
    replica.send_to_replica(1, Bytes::from_static(b"still alive"));
    let incoming = recv(&mut rx1).await;
    assert_eq!(incoming.from, Peer::Replica(0));
    assert_eq!(incoming.frame, &b"still alive"[..]);
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_reconnected() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let (zero, mut rx0) = bind(0, &keys, &addrs, config()).await;
    let (one, mut rx1) = bind(1, &keys, &addrs, config()).await;
    zero.send_to_replica(1, Bytes::from_static(b"before"));
    assert_eq!(recv(&mut rx1).await.frame, &b"before"[..]);
    one.send_to_replica(0, Bytes::from_static(b"before"));
    assert_eq!(recv(&mut rx0).await.frame, &b"before"[..]);

    one.shutdown().await;
    drop(rx1);
    let cluster = cluster(&keys, &addrs);
    let (one, mut rx1) = within("rebinding", async {
        loop {
            match ReplicaTransport::bind(
                1,
                &keys[1],
                addrs[1],
                cluster.clone(),
                ClientPolicy::Open,
                config(),
            )
            .await
            {
                Ok(bound) => return bound,
                Err(NetError::AddressInUse(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;

    let incoming = resend_until(
        "a frame to the restarted replica",
        &mut rx1,
        || zero.send_to_replica(1, Bytes::from_static(b"after")),
        |_| true,
    )
    .await;
    assert_eq!(incoming.from, Peer::Replica(0));
    assert_eq!(incoming.frame, &b"after"[..]);
    one.send_to_replica(0, Bytes::from_static(b"back"));
    let incoming = recv(&mut rx0).await;
    assert_eq!(
        (incoming.from, &incoming.frame[..]),
        (Peer::Replica(1), &b"back"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_exchanges_frames_with_every_replica() {
    let keys: Vec<KeyPair> = (1..=4).map(key).collect();
    let addrs = free_addrs(4);
    let mut nodes = Vec::new();
    for id in 0..4 {
        nodes.push(bind(id, &keys, &addrs, config()).await);
    }
    let client_key = key(42);
    let (client, mut replies) =
        ClientTransport::connect(&client_key, cluster(&keys, &addrs), config())
            .await
            .unwrap();
    client.broadcast(Bytes::from_static(b"request"));
    for (id, (node, rx)) in nodes.iter_mut().enumerate() {
        let incoming = recv(rx).await;
        assert_eq!(incoming.from, Peer::Client(client_key.public()));
        assert_eq!(incoming.frame, &b"request"[..]);
        node.send_to_session(&client_key.public(), 0, frame(format!("reply from {id}")));
    }
    let mut seen = [false; 4];
    for _ in 0..4 {
        let (replica, reply) = recv(&mut replies).await;
        assert_eq!(reply, format!("reply from {replica}").as_bytes());
        assert!(!seen[replica as usize], "one reply per replica");
        seen[replica as usize] = true;
    }
    assert_eq!(client.connected_replicas(), vec![0, 1, 2, 3]);
    assert_eq!(client.stats().frames_in, 4);

    // A client that is not connected gets nothing, and that is counted.
    nodes[0]
        .0
        .send_to_session(&key(43).public(), 0, Bytes::from_static(b"nobody"));
    assert_eq!(nodes[0].0.stats().dropped_not_connected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_newest_frames() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cfg = TransportConfig {
        queue_capacity: 4,
        ..config()
    };
    // Replica 1 is not running yet, so nothing drains the queue.
    let (zero, _rx0) = bind(0, &keys, &addrs, cfg).await;
    for seq in 0..10 {
        zero.send_to_replica(1, frame(format!("#{seq}")));
    }
    assert_eq!(zero.stats().dropped_queue_full, 6);
    let (_one, mut rx1) = bind(1, &keys, &addrs, config()).await;
    for seq in 0..4 {
        assert_eq!(recv(&mut rx1).await.frame, format!("#{seq}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_bounded_in_bytes_but_takes_one_large_frame_when_empty() {
    let keys: Vec<KeyPair> = (1..=3).map(key).collect();
    let addrs = free_addrs(3);
    let cfg = TransportConfig {
        queue_bytes: 1000,
        ..config()
    };
    // Replicas 1 and 2 are not running yet, so nothing drains the queues.
    let (zero, _rx0) = bind(0, &keys, &addrs, cfg).await;
    for i in 0..3 {
        zero.send_to_replica(1, Bytes::from(vec![i; 400]));
    }
    assert_eq!(
        zero.stats().dropped_queue_full,
        1,
        "two 400-byte frames fit, not three"
    );
    zero.send_to_replica(1, Bytes::from(vec![9; 5000]));
    assert_eq!(
        zero.stats().dropped_queue_full,
        2,
        "no large frame into a queue in use"
    );
    zero.send_to_replica(2, Bytes::from(vec![7; 5000]));
    zero.send_to_replica(2, Bytes::from(vec![8; 10]));
    assert_eq!(
        zero.stats().dropped_queue_full,
        3,
        "a large frame fills an empty queue"
    );

    let (_one, mut rx1) = bind(1, &keys, &addrs, config()).await;
    let (_two, mut rx2) = bind(2, &keys, &addrs, config()).await;
    assert_eq!(recv(&mut rx1).await.frame, vec![0; 400]);
    assert_eq!(recv(&mut rx1).await.frame, vec![1; 400]);
    assert_eq!(recv(&mut rx2).await.frame, vec![7; 5000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_a_clear_error() {
    let keys = vec![key(1)];
    let addrs = free_addrs(1);
    let (_first, _rx) = bind(0, &keys, &addrs, config()).await;
    let second = ReplicaTransport::bind(
        0,
        &keys[0],
        addrs[0],
        cluster(&keys, &addrs),
        ClientPolicy::Open,
        config(),
    )
    .await;
    let error = second.err().expect("the port is taken");
    assert!(matches!(error, NetError::AddressInUse(addr) if addr == addrs[0]));
    assert!(error.to_string().contains("already in use"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cluster = cluster(&keys, &addrs);
    let wrong_key = ReplicaTransport::bind(
        0,
        &keys[1],
        addrs[0],
        cluster.clone(),
        ClientPolicy::Open,
        config(),
    )
    .await;
    assert!(matches!(wrong_key.err(), Some(NetError::Cluster(_))));
    let unknown_id = ReplicaTransport::bind(
        7,
        &keys[0],
        addrs[0],
        cluster.clone(),
        ClientPolicy::Open,
        config(),
    )
    .await;
    assert!(matches!(unknown_id.err(), Some(NetError::Cluster(_))));
    let zero_queue = TransportConfig {
        queue_capacity: 0,
        ..config()
    };
    let bad = ReplicaTransport::bind(
        0,
        &keys[0],
        addrs[0],
        cluster,
        ClientPolicy::Open,
        zero_queue,
    )
    .await;
    assert!(matches!(bad.err(), Some(NetError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_is_reconnected_after_restart() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let (zero, mut rx0) = bind(0, &keys, &addrs, config()).await;
    // Replica 1 runs on its own runtime, so that it can stop without saying goodbye.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (keys1, addrs1) = (keys.clone(), addrs.clone());
    let (one, mut rx1) = doomed
        .spawn(async move { bind(1, &keys1, &addrs1, config()).await })
        .await
        .unwrap();
    zero.send_to_replica(1, Bytes::from_static(b"before"));
    assert_eq!(recv(&mut rx1).await.frame, &b"before"[..]);
    one.send_to_replica(0, Bytes::from_static(b"before"));
    assert_eq!(recv(&mut rx0).await.frame, &b"before"[..]);

    doomed.shutdown_background();
    drop((one, rx1));
    let (one, mut rx1) = within("rebinding", async {
        loop {
            let cluster = cluster(&keys, &addrs);
            match ReplicaTransport::bind(
                1,
                &keys[1],
                addrs[1],
                cluster,
                ClientPolicy::Open,
                config(),
            )
            .await
            {
                Ok(bound) => return bound,
                Err(NetError::AddressInUse(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let incoming = resend_until(
        "a frame to the restarted replica",
        &mut rx1,
        || zero.send_to_replica(1, Bytes::from_static(b"after")),
        |_| true,
    )
    .await;
    assert_eq!(incoming.from, Peer::Replica(0));
    let incoming = resend_until(
        "a frame from the restarted replica",
        &mut rx0,
        || one.send_to_replica(0, Bytes::from_static(b"back")),
        |incoming| incoming.from == Peer::Replica(1),
    )
    .await;
    assert_eq!(incoming.frame, &b"back"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let keys = vec![key(1)];
    let addrs = free_addrs(1);
    let cfg = TransportConfig {
        max_connections: 1,
        // The first client never counts as silent here.
        client_idle_eviction: Duration::from_secs(3600),
        ..config()
    };
    let (replica, mut rx) = bind(0, &keys, &addrs, cfg).await;
    let cluster = cluster(&keys, &addrs);
    let (first, _first_rx) = ClientTransport::connect(&key(20), cluster.clone(), config())
        .await
        .unwrap();
    first.send(0, Bytes::from_static(b"first"));
    assert_eq!(recv(&mut rx).await.frame, &b"first"[..]);

    let (second, _second_rx) = ClientTransport::connect(&key(21), cluster, config())
        .await
        .unwrap();
    second.send(0, Bytes::from_static(b"second"));
    wait_until("a refusal", || replica.stats().connections_refused >= 1).await;
    wait_until("a failed dial", || second.stats().dial_failures >= 1).await;
    assert!(second.connected_replicas().is_empty());

    first.send(0, Bytes::from_static(b"still served"));
    assert_eq!(recv(&mut rx).await.frame, &b"still served"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_clients_do_not_hold_back_replicas() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cfg = TransportConfig {
        incoming_capacity: 4,
        ..config()
    };
    let (zero, mut inbox) = bind(0, &keys, &addrs, cfg).await;
    let (client, _replies) = ClientTransport::connect(&key(30), cluster(&keys, &addrs), config())
        .await
        .unwrap();
    for seq in 0..100 {
        client.send(0, frame(format!("request #{seq}")));
    }
    // Four requests buffered and one more read and waiting for room.
    wait_until("the client buffer to fill", || zero.stats().frames_in >= 5).await;
    let (one, _inbox1) = bind(1, &keys, &addrs, config()).await;
    one.send_to_replica(0, Bytes::from_static(b"prepare"));
    wait_until("the replica frame", || zero.stats().frames_in >= 6).await;
    let first_two = [recv(&mut inbox).await, recv(&mut inbox).await];
    assert!(
        first_two
            .iter()
            .any(|incoming| incoming.from == Peer::Replica(1)),
        "{first_two:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_to_the_connection_its_session_last_sent_from() {
    let keys: Vec<KeyPair> = (1..=4).map(key).collect();
    let addrs = free_addrs(4);
    let (node, mut inbox) = bind(0, &keys, &addrs, config()).await;
    let client_key = key(42);
    let client = client_key.public();
    let one_replica = cluster(&keys, &addrs)[..1].to_vec();
    let (first, mut first_rx) =
        ClientTransport::connect(&client_key, one_replica.clone(), config())
            .await
            .unwrap();
    let (second, mut second_rx) = ClientTransport::connect(&client_key, one_replica, config())
        .await
        .unwrap();
    // Both connections are up once the replica heard from each.
    let mut connections = Vec::new();
    for (name, transport) in [("first", &first), ("second", &second)] {
        let incoming = resend_until(
            name,
            &mut inbox,
            || transport.send(0, Bytes::from(name.as_bytes().to_vec())),
            |incoming| incoming.frame == name.as_bytes(),
        )
        .await;
        connections.push(incoming.connection);
    }
    // A session never seen: every process sharing the key gets the reply.
    node.send_to_session(&client, 7, Bytes::from_static(b"unknown"));
    assert_eq!(recv(&mut first_rx).await.1, &b"unknown"[..]);
    assert_eq!(recv(&mut second_rx).await.1, &b"unknown"[..]);
    // Frames on one connection arrive in order, so the frame after a reply that was not for a
    // connection is the next one sent to all.
    node.note_session(&client, 7, connections[0]);
    node.send_to_session(&client, 7, Bytes::from_static(b"to seven"));
    node.send_to_session(&client, 8, Bytes::from_static(b"to all"));
    assert_eq!(recv(&mut first_rx).await.1, &b"to seven"[..]);
    assert_eq!(recv(&mut first_rx).await.1, &b"to all"[..]);
    assert_eq!(recv(&mut second_rx).await.1, &b"to all"[..]);
    // The session moves with its next request.
    node.note_session(&client, 7, connections[1]);
    node.send_to_session(&client, 7, Bytes::from_static(b"moved"));
    node.send_to_session(&client, 8, Bytes::from_static(b"to all again"));
    assert_eq!(recv(&mut second_rx).await.1, &b"moved"[..]);
    assert_eq!(recv(&mut second_rx).await.1, &b"to all again"[..]);
    assert_eq!(recv(&mut first_rx).await.1, &b"to all again"[..]);
    // An answer to what a connection asked goes to that connection.
    node.send_to_connection(&client, connections[0], Bytes::from_static(b"status"));
    node.send_to_session(&client, 8, Bytes::from_static(b"last"));
    assert_eq!(recv(&mut first_rx).await.1, &b"status"[..]);
    assert_eq!(recv(&mut first_rx).await.1, &b"last"[..]);
    assert_eq!(recv(&mut second_rx).await.1, &b"last"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_not_admitted_is_refused_at_the_handshake_and_counted() {
    let keys: Vec<KeyPair> = (1..=4).map(key).collect();
    let addrs = free_addrs(4);
    let admitted = key(42);
    let stranger = key(43);
    let policy = ClientPolicy::Allow([admitted.public()].into_iter().collect());
    let (node, mut inbox) = ReplicaTransport::bind(
        0,
        &keys[0],
        addrs[0],
        cluster(&keys, &addrs),
        policy,
        config(),
    )
    .await
    .unwrap();
    let one_replica = cluster(&keys, &addrs)[..1].to_vec();
    let (good, _good_rx) = ClientTransport::connect(&admitted, one_replica.clone(), config())
        .await
        .unwrap();
    let (bad, _bad_rx) = ClientTransport::connect(&stranger, one_replica, config())
        .await
        .unwrap();
    resend_until(
        "the admitted client's frame",
        &mut inbox,
        || good.send(0, Bytes::from_static(b"hello")),
        |incoming| incoming.from == Peer::Client(admitted.public()),
    )
    .await;
    wait_until("the stranger refused", || node.stats().clients_refused > 0).await;
    for _ in 0..5 {
        bad.send(0, Bytes::from_static(b"let me in"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bad.connected_replicas().is_empty());
    while let Some(incoming) = inbox.try_recv() {
        assert_ne!(incoming.from, Peer::Client(stranger.public()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_get_in_when_clients_hold_every_other_place() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cfg = TransportConfig {
        max_connections: 1,
        max_connections_per_address: 1,
        client_idle_eviction: Duration::from_secs(3600),
        ..config()
    };
    let (zero, mut inbox) = bind(0, &keys, &addrs, cfg).await;
    let (client, _replies) =
        ClientTransport::connect(&key(30), cluster(&keys, &addrs)[..1].to_vec(), config())
            .await
            .unwrap();
    resend_until(
        "the client's frame",
        &mut inbox,
        || client.send(0, Bytes::from_static(b"held")),
        |incoming| incoming.from == Peer::Client(key(30).public()),
    )
    .await;
    let (other, _other_rx) =
        ClientTransport::connect(&key(31), cluster(&keys, &addrs)[..1].to_vec(), config())
            .await
            .unwrap();
    wait_until("the other client's refusal", || {
        zero.stats().connections_refused >= 1
    })
    .await;
    assert!(other.connected_replicas().is_empty());

    let (one, _inbox1) = bind(1, &keys, &addrs, config()).await;
    resend_until(
        "the replica's frame",
        &mut inbox,
        || one.send_to_replica(0, Bytes::from_static(b"prepare")),
        |incoming| incoming.from == Peer::Replica(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_makes_way_when_the_room_is_full() {
    let quiet = Duration::from_millis(200);
    let cfg = TransportConfig {
        max_connections: 1,
        client_idle_eviction: quiet,
        ..config()
    };
    let (replica, mut rx, cluster) = lone_replica(cfg).await;
    let (first, _first_rx) = client(20, &cluster).await;
    resend_until(
        "the first client's frame",
        &mut rx,
        || first.send(0, Bytes::from_static(b"first")),
        |incoming| incoming.frame == b"first"[..],
    )
    .await;
    // Silent for longer than the eviction threshold.
    tokio::time::sleep(quiet * 2).await;
    let (second, _second_rx) = client(21, &cluster).await;
    resend_until(
        "the second client's frame",
        &mut rx,
        || second.send(0, Bytes::from_static(b"second")),
        |incoming| incoming.frame == b"second"[..],
    )
    .await;
    assert!(replica.stats().clients_evicted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_client_is_disconnected_and_refused_others_are_not() {
    let cfg = TransportConfig {
        client_ban: Duration::from_secs(3600),
        ..config()
    };
    let (replica, mut rx, cluster) = lone_replica(cfg).await;
    let (bad, _bad_rx) = client(20, &cluster).await;
    let garbage = resend_until(
        "the client's frame",
        &mut rx,
        || bad.send(0, Bytes::from_static(b"garbage")),
        |incoming| incoming.frame == b"garbage"[..],
    )
    .await;
    replica.ban_client(&key(20).public(), garbage.connection);
    replica.ban_client(&key(1).public(), garbage.connection);
    assert_eq!(
        replica.stats().clients_banned,
        1,
        "a replica's key is never banned"
    );
    wait_until("the ban to refuse a redial", || {
        replica.stats().banned_refused >= 1
    })
    .await;
    assert!(!replica.connected_clients().contains(&key(20).public()));

    let (good, _good_rx) = client(21, &cluster).await;
    resend_until(
        "another client's frame",
        &mut rx,
        || good.send(0, Bytes::from_static(b"fine")),
        |incoming| incoming.frame == b"fine"[..],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_have_their_own_limit() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cfg = TransportConfig {
        max_client_frame: Some(1024),
        ..config()
    };
    let (zero, mut inbox) = bind(0, &keys, &addrs, cfg).await;
    let (one, _inbox1) = bind(1, &keys, &addrs, config()).await;
    let big = Bytes::from(vec![7u8; 4096]);
    let from_replica = resend_until(
        "a replica's large frame",
        &mut inbox,
        || one.send_to_replica(0, big.clone()),
        |incoming| incoming.from == Peer::Replica(1),
    )
    .await;
    assert_eq!(from_replica.frame.len(), 4096);

    let (client, _replies) =
        ClientTransport::connect(&key(30), cluster(&keys, &addrs)[..1].to_vec(), config())
            .await
            .unwrap();
    client.send(0, Bytes::from(vec![7u8; 1025]));
    wait_until("the client's connection to close", || {
        zero.stats().rejected_oversized_in >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_frames_are_bounded_in_bytes() {
    let cfg = TransportConfig {
        incoming_bytes: 1000,
        ..config()
    };
    let (replica, mut inbox, cluster) = lone_replica(cfg).await;
    let (client, _replies) = client(30, &cluster).await;
    wait_until("the client's link", || {
        !client.connected_replicas().is_empty()
    })
    .await;
    for i in 0..10u8 {
        client.send(0, Bytes::from(vec![i; 600]));
    }
    // One frame fits in the budget; the second is read and waits for room.
    wait_until("two frames read", || replica.stats().frames_in >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        replica.stats().frames_in,
        2,
        "reading stops at the byte budget"
    );
    for i in 0..10u8 {
        assert_eq!(recv(&mut inbox).await.frame, vec![i; 600]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_prove_their_address_once_handshakes_pile_up() {
    let cfg = TransportConfig {
        // Every client handshake counts as piling up.
        retry_above_handshakes: 0,
        ..config()
    };
    let (replica, mut rx, cluster) = lone_replica(cfg).await;
    let (client, _replies) = client(30, &cluster).await;
    resend_until(
        "the client's frame",
        &mut rx,
        || client.send(0, Bytes::from_static(b"after retry")),
        |incoming| incoming.frame == b"after retry"[..],
    )
    .await;
    assert!(replica.stats().retries_sent >= 1);
}

/// QUIC Initials to `to` from the address `from` is bound to, each starting a new handshake,
/// by a party that never reads what comes back: what a forger of `from`'s address can send.
fn forged_initials(from: &UdpSocket, to: SocketAddr, count: usize) {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    // The protocol replicas speak, so that the server goes on with the handshake.
    tls.alpn_protocols = vec![b"pbft/1".to_vec()];
    let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn_proto::ClientConfig::new(std::sync::Arc::new(quic));
    let mut endpoint = quinn_proto::Endpoint::new(Default::default(), None, false, None);
    let now = std::time::Instant::now();
    for _ in 0..count {
        let (_, mut conn) = endpoint.connect(now, config.clone(), to, "pbft").unwrap();
        let mut buf = Vec::new();
        while let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) {
            from.send_to(&buf[..transmit.size], to).unwrap();
            buf.clear();
        }
    }
}

/// Forged Initials from a replica's listed address cannot take its reserved places: each gets
/// a Retry, which the forger never sees. A forged handshake holding the one place would keep
/// the real replica out until it timed out; instead the real replica gets in and nothing from
/// its address is ever refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_initials_from_a_replica_address_take_none_of_its_places() {
    let keys: Vec<KeyPair> = (1..=2).map(key).collect();
    let addrs = free_addrs(2);
    let cfg = TransportConfig {
        connections_per_replica: 1,
        handshake_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        ..config()
    };
    let (zero, mut inbox) = bind(0, &keys, &addrs, cfg).await;
    let forger = UdpSocket::bind(addrs[1]).unwrap();
    forged_initials(&forger, addrs[0], 8);
    wait_until("a Retry for every forged Initial", || {
        zero.stats().retries_sent >= 8
    })
    .await;
    assert_eq!(zero.stats().connections_refused, 0);
    drop(forger);

    let (one, _inbox1) = bind(1, &keys, &addrs, config()).await;
    resend_until(
        "the replica's frame",
        &mut inbox,
        || one.send_to_replica(0, Bytes::from_static(b"prepare")),
        |incoming| incoming.from == Peer::Replica(1),
    )
    .await;
    assert_eq!(zero.stats().connections_refused, 0);
}

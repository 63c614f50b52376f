//! Tests that need raw connections: impostors that copy a public certificate without holding
//! its key, and malformed frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_crypto::KeyPair;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::frame::{ACK, CLOSE_FRAME_TOO_LARGE, HELLO};
use crate::stats::Counters;
use crate::tls::{self, provider, AdmittedPeer, Identity, PinnedServerKey, SERVER_NAME};
use crate::{ClientPolicy, PeerInfo, ReplicaTransport, TransportConfig};

const PATIENCE: Duration = Duration::from_secs(60);

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32]).unwrap()
}

/// Presents one certificate but signs handshakes with another identity's key.
#[derive(Debug)]
struct Mismatched(Arc<CertifiedKey>);

impl Mismatched {
    fn new(shown: &Identity, signer: &Identity) -> Self {
        let signing = provider()
            .key_provider
            .load_private_key(signer.private_key())
            .unwrap();
        Mismatched(Arc::new(CertifiedKey::new(shown.chain(), signing)))
    }
}

impl ResolvesServerCert for Mismatched {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Mismatched {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn client_endpoint() -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn quic_client(crypto: rustls::ClientConfig) -> quinn::ClientConfig {
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()))
}

/// A one-replica cluster: its transport, inbox, key and address.
async fn replica_with_inbox(
    seed: u8,
    cfg: TransportConfig,
) -> (ReplicaTransport, crate::Inbox, KeyPair, SocketAddr) {
    let pair = key(seed);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let cluster = vec![PeerInfo {
        id: 0,
        addr,
        public_key: pair.public(),
    }];
    let (transport, inbox) =
        ReplicaTransport::bind(0, &pair, addr, cluster, ClientPolicy::Open, cfg)
            .await
            .unwrap();
    (transport, inbox, pair, addr)
}

async fn replica(seed: u8, cfg: TransportConfig) -> (ReplicaTransport, KeyPair, SocketAddr) {
    let (transport, _inbox, pair, addr) = replica_with_inbox(seed, cfg).await;
    (transport, pair, addr)
}

/// A raw client connection with key `seed` to the replica holding `server` at `addr`, past
/// the hello exchange, and its stream.
async fn raw_client(
    seed: u8,
    server: &KeyPair,
    addr: SocketAddr,
) -> (Connection, quinn::SendStream) {
    let me = Identity::new(&key(seed)).unwrap();
    let config = quic_client(tls::client_config(&me, server.public()).unwrap());
    let conn = client_endpoint()
        .connect_with(config, addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let send = hello(&conn).await.unwrap();
    (conn, send)
}

/// Dials, sends the hello and waits for the acknowledgement, as a correct dialer does.
async fn hello(conn: &Connection) -> Result<quinn::SendStream, Box<dyn std::error::Error>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&HELLO).await?;
    let mut ack = [0u8; ACK.len()];
    recv.read_exact(&mut ack).await?;
    assert_eq!(ack, ACK);
    Ok(send)
}

#[tokio::test]
async fn a_server_showing_a_copied_certificate_is_refused() {
    let victim = Identity::new(&key(1)).unwrap();
    let impostor = Identity::new(&key(2)).unwrap();
    let crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(AdmittedPeer::new(
            Default::default(),
            ClientPolicy::Open,
            Default::default(),
            Arc::new(Counters::default()),
        )))
        .with_cert_resolver(Arc::new(Mismatched::new(&victim, &impostor)));
    let mut crypto = crypto;
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto).unwrap()));
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });

    let me = Identity::new(&key(3)).unwrap();
    let config = quic_client(tls::client_config(&me, key(1).public()).unwrap());
    let connecting = client_endpoint()
        .connect_with(config, addr, SERVER_NAME)
        .unwrap();
    let result = tokio::time::timeout(PATIENCE, connecting).await.unwrap();
    assert!(result.is_err(), "the handshake signature must be checked");
}

#[tokio::test]
async fn a_client_showing_a_copied_certificate_is_refused() {
    let (transport, replica_key, addr) = replica(1, TransportConfig::default()).await;
    let victim = Identity::new(&key(5)).unwrap();
    let impostor = Identity::new(&key(6)).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerKey::new(replica_key.public())))
        .with_client_cert_resolver(Arc::new(Mismatched::new(&victim, &impostor)));
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
    let endpoint = client_endpoint();
    let attempt = async {
        let conn = endpoint
            .connect_with(quic_client(crypto), addr, SERVER_NAME)?
            .await?;
        hello(&conn).await
    };
    let result = tokio::time::timeout(PATIENCE, attempt).await.unwrap();
    assert!(
        result.is_err(),
        "the replica must not acknowledge an impostor"
    );
    assert_eq!(transport.stats().handshake_failures, 1);
    assert!(transport.connected_clients().is_empty());
}

#[tokio::test]
async fn a_huge_length_prefix_closes_the_connection_without_allocating() {
    let (transport, replica_key, addr) = replica(1, TransportConfig::default()).await;
    let (conn, mut send) = raw_client(7, &replica_key, addr).await;
    send.write_all(&[0xff; 4]).await.unwrap();
    let reason = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_FRAME_TOO_LARGE)
        }
        other => panic!("unexpected close: {other}"),
    }
    assert_eq!(transport.stats().rejected_oversized_in, 1);
}

#[tokio::test]
async fn an_unfinished_client_frame_holds_the_room_only_until_its_deadline() {
    let cfg = TransportConfig {
        max_client_frame: Some(1 << 20),
        client_assembly_bytes: 1 << 20,
        client_frame_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    };
    let (transport, mut inbox, pair, addr) = replica_with_inbox(1, cfg).await;

    // Claims a frame as large as all the room, sends ten bytes of it, and stops.
    let (slow, mut send) = raw_client(7, &pair, addr).await;
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    send.write_all(&[0; 10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A small frame does not wait for the room.
    let (_small, mut send) = raw_client(8, &pair, addr).await;
    send.write_all(&5u32.to_be_bytes()).await.unwrap();
    send.write_all(b"small").await.unwrap();
    let arrived = tokio::time::timeout(PATIENCE, inbox.recv())
        .await
        .expect("a small frame arrives at once")
        .unwrap();
    assert_eq!(arrived.frame, &b"small"[..]);
    assert_eq!(transport.stats().frames_too_slow, 0);

    // A large one waits until the unfinished frame is given up.
    let (_large, mut send) = raw_client(9, &pair, addr).await;
    let large = vec![1u8; (1 << 20) - 1];
    send.write_all(&(large.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&large).await.unwrap();
    let arrived = tokio::time::timeout(PATIENCE, inbox.recv())
        .await
        .expect("the large frame arrives once the unfinished one is given up")
        .unwrap();
    assert_eq!(arrived.frame.len(), large.len());
    // Counted before the room was given back, so before the large frame could be read.
    assert_eq!(
        transport.stats().frames_too_slow,
        1,
        "the large frame waited for room"
    );
    match tokio::time::timeout(PATIENCE, slow.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, crate::frame::CLOSE_TOO_SLOW)
        }
        other => panic!("unexpected close: {other}"),
    }
}

/// While a client's frame waits for room, QUIC flow control stops its sender after
/// `client_receive_window` bytes: the replica buffers no more for it.
#[tokio::test]
async fn a_client_waiting_for_room_can_send_no_more_than_its_window() {
    let cfg = TransportConfig {
        max_client_frame: Some(4 << 20),
        client_assembly_bytes: 4 << 20,
        client_frame_timeout: Duration::from_secs(30),
        client_receive_window: 64 << 10,
        ..TransportConfig::default()
    };
    let (_transport, _inbox, pair, addr) = replica_with_inbox(1, cfg).await;
    // Takes all the room and stalls.
    let (_hog, mut send) = raw_client(7, &pair, addr).await;
    send.write_all(&(4u32 << 20).to_be_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (_waiting, mut send) = raw_client(8, &pair, addr).await;
    let frame = vec![0u8; 2 << 20];
    let written = tokio::time::timeout(Duration::from_secs(2), async {
        send.write_all(&(frame.len() as u32).to_be_bytes()).await?;
        send.write_all(&frame).await
    })
    .await;
    assert!(
        written.is_err(),
        "2 MiB went through a 64 KiB window while nothing was read"
    );
}

/// A faulty replica that completes the handshake and then never reads: what is sent to it
/// stops at its send queue's byte bound (plus QUIC's flow-control windows), and the rest is
/// dropped and counted, however long it goes on.
#[tokio::test]
async fn a_replica_that_never_reads_pins_no_more_than_its_queue() {
    let (zero, one) = (key(1), key(2));
    let addrs: Vec<SocketAddr> = (0..2)
        .map(|_| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        })
        .collect();
    let cluster = vec![
        PeerInfo {
            id: 0,
            addr: addrs[0],
            public_key: zero.public(),
        },
        PeerInfo {
            id: 1,
            addr: addrs[1],
            public_key: one.public(),
        },
    ];
    let identity = Identity::new(&one).unwrap();
    let admitted = AdmittedPeer::new(
        [zero.public()].into_iter().collect(),
        ClientPolicy::Open,
        Default::default(),
        Arc::new(Counters::default()),
    );
    let crypto = tls::server_config(&identity, admitted).unwrap();
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto).unwrap()));
    let server = Endpoint::server(server_config, addrs[1]).unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut hello = [0u8; HELLO.len()];
        recv.read_exact(&mut hello).await.unwrap();
        send.write_all(&ACK).await.unwrap();
        // Keeps everything open and reads nothing more.
        held_tx.send(()).await.unwrap();
        std::future::pending::<()>().await;
        drop((conn, send, recv, server));
    });
    let cfg = TransportConfig {
        queue_bytes: 4 << 20,
        ..TransportConfig::default()
    };
    let (transport, _inbox) =
        ReplicaTransport::bind(0, &zero, addrs[0], cluster, ClientPolicy::Open, cfg)
            .await
            .unwrap();
    tokio::time::timeout(PATIENCE, held.recv()).await.unwrap();
    let frame = bytes::Bytes::from(vec![5u8; 1 << 20]);
    let mut offered = 0u64;
    for _round in 0..20 {
        for _ in 0..50 {
            transport.send_to_replica(1, frame.clone());
            offered += 1;
        }
        // Lets the link write what flow control allows.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = transport.stats();
    let kept = offered - stats.dropped_queue_full;
    // 4 frames in the queue, and QUIC's windows (a few MiB) in flight.
    assert!(
        kept <= 4 + 16,
        "{kept} of {offered} MiB frames kept: {stats:?}"
    );
}

/// A peer of another wire format version fails the handshake, and the dialer can tell why.
#[tokio::test]
async fn a_peer_of_another_wire_version_is_refused_and_named() {
    let (_transport, replica_key, addr) = replica(1, TransportConfig::default()).await;
    let me = Identity::new(&key(3)).unwrap();
    let mut older = tls::client_config(&me, replica_key.public()).unwrap();
    older.alpn_protocols = vec![b"pbft/1".to_vec()];
    let refused = crate::link::dial(&client_endpoint(), quic_client(older), addr, PATIENCE)
        .await
        .expect_err("a peer of another version is refused");
    assert!(refused.is_version_mismatch(), "{refused:?}");

    let current = tls::client_config(&me, replica_key.public()).unwrap();
    let accepted =
        crate::link::dial(&client_endpoint(), quic_client(current), addr, PATIENCE).await;
    assert!(accepted.is_ok(), "{:?}", accepted.err());
}

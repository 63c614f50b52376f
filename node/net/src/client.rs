//! The client side: one link to every replica, each pinning that replica's key.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use pbft_crypto::KeyPair;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::Endpoint;
use tokio::sync::mpsc;

use crate::frame::CLOSE_SHUTDOWN;
use crate::link::Link;
use crate::stats::{bump, Counters};
use crate::tls::{self, Identity};
use crate::{
    endpoint, validate_cluster, NetError, PeerInfo, TlsSetupError, TransportConfig, TransportStats,
};

/// A client's transport: dials every replica, presenting the client's key, and receives what
/// the replicas send back through the channel returned by [`ClientTransport::connect`].
///
/// Dropping it closes every connection.
pub struct ClientTransport {
    endpoint: Endpoint,
    links: HashMap<u32, Link>,
    counters: Arc<Counters>,
}

impl ClientTransport {
    /// Starts dialing every replica in `cluster` from an ephemeral local port, as the holder of
    /// `key`. Returns at once; links come up in the background (see
    /// [`ClientTransport::connected_replicas`]) and frames sent meanwhile wait in their queues.
    /// Frames from replica `i` arrive on the channel as `(i, frame)`.
    ///
    /// Must be called within a tokio runtime. All replicas must use the same address family.
    pub async fn connect(
        key: &KeyPair,
        cluster: Vec<PeerInfo>,
        cfg: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<(u32, Bytes)>), NetError> {
        cfg.validate()?;
        validate_cluster(&cluster)?;
        let first = cluster
            .first()
            .ok_or_else(|| NetError::Cluster("the cluster is empty".into()))?;
        let local = if first.addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        if let Some(other) = cluster
            .iter()
            .find(|peer| peer.addr.is_ipv4() != first.addr.is_ipv4())
        {
            return Err(NetError::Cluster(format!(
                "replicas {} and {} use different address families",
                first.id, other.id
            )));
        }
        let identity = Identity::new(key)?;
        let endpoint = endpoint(key, None, local, false)?;
        let cfg = Arc::new(cfg);
        let counters = Arc::new(Counters::default());
        let transport = Arc::new(cfg.quic(0)?);
        let (inbound, received) = mpsc::channel(cfg.incoming_capacity);
        let mut links = HashMap::new();
        for peer in &cluster {
            let crypto =
                QuicClientConfig::try_from(tls::client_config(&identity, peer.public_key)?)
                    .map_err(TlsSetupError::Quic)?;
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            client.transport_config(transport.clone());
            let link = Link::spawn(
                endpoint.clone(),
                client,
                peer.addr,
                peer.id,
                cfg.clone(),
                counters.clone(),
                Some(inbound.clone()),
            );
            links.insert(peer.id, link);
        }
        let transport = ClientTransport {
            endpoint,
            links,
            counters,
        };
        Ok((transport, received))
    }

    /// Queues `frame` for `replica` without waiting; dropped and counted when the queue is full,
    /// the frame is too large, or the replica is not in the cluster. Requests are retransmitted
    /// by the client, so nothing is resent here.
    pub fn send(&self, replica: u32, frame: Bytes) {
        match self.links.get(&replica) {
            Some(link) => {
                link.queue.push(frame, &self.counters);
            }
            None => bump(&self.counters.dropped_not_connected, 1),
        }
    }

    /// Queues `frame` for every replica, as [`ClientTransport::send`] does.
    pub fn broadcast(&self, frame: Bytes) {
        for link in self.links.values() {
            link.queue.push(frame.clone(), &self.counters);
        }
    }

    /// The replicas whose link is up, in increasing order.
    pub fn connected_replicas(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (self.links.iter())
            .filter(|(_, link)| link.is_connected())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The local address of the client's endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The counters since [`ClientTransport::connect`].
    pub fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }

    /// Closes every connection and waits until the replicas were told.
    pub async fn shutdown(self) {
        self.close();
        self.endpoint.wait_idle().await;
    }

    fn close(&self) {
        for link in self.links.values() {
            link.stop();
        }
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
    }
}

impl Drop for ClientTransport {
    fn drop(&mut self) {
        self.close();
    }
}

//! `testnet attack`: a faulty client against a running testnet.
//!
//! Runs one of the named strategies of [`pbft_core::byzantine::clients`] (the ones the
//! simulator runs) over real QUIC connections: the strategy's own identity is the key of the
//! testnet's `client.toml`, a client the replicas admit; fresh identities get connections of
//! their own, which a testnet that lists its clients refuses at the handshake.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pbft_client::session::new_session_id;
use pbft_core::byzantine::{ClientAttack, FaultyClient};
use pbft_core::messages::Limits;
use pbft_crypto::PublicKey;
use pbft_net::ClientTransport;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::layout::{Layout, State};
use super::report::fresh_client_setup;
use super::LaunchError;

/// Connections kept open at once for fresh identities; older ones are closed.
const MAX_OPEN_IDENTITIES: usize = 64;

/// How an attack is run.
#[derive(Clone, Debug)]
pub struct AttackOptions {
    /// The strategy.
    pub attack: ClientAttack,
    /// How long to keep attacking.
    pub duration: Duration,
    /// How often the strategy acts.
    pub interval: Duration,
}

/// What an attack sent, printed as one JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AttackReport {
    /// The strategy's name.
    pub attack: String,
    /// How many times the strategy acted.
    pub ticks: u64,
    /// Messages handed to the transport, each to every replica.
    pub messages: u64,
    /// Distinct client keys used.
    pub identities: u64,
    /// Frames the transports dropped (queues full, connections refused or closed).
    pub dropped: u64,
    /// Handshakes that failed, as when replicas refuse a key they do not admit.
    pub handshake_failures: u64,
}

impl AttackReport {
    fn count(&mut self, transport: &ClientTransport) {
        let stats = transport.stats();
        self.dropped += stats.dropped_queue_full
            + stats.dropped_not_connected
            + stats.lost_on_disconnect
            + stats.rejected_oversized_out;
        self.handshake_failures += stats.handshake_failures;
    }
}

/// Runs `options.attack` against the testnet in `layout` and reports what it sent.
pub async fn attack(layout: &Layout, options: AttackOptions) -> Result<AttackReport, LaunchError> {
    let state = State::load(layout)?;
    let setup = fresh_client_setup(layout, &state)?;
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let session = new_session_id(micros, rng.random());
    let mut client = FaultyClient::new(
        options.attack,
        setup.key.clone(),
        session,
        Limits::default(),
    );
    let mut transports: HashMap<PublicKey, ClientTransport> = HashMap::new();
    let mut opened: VecDeque<PublicKey> = VecDeque::new();
    let mut report = AttackReport {
        attack: options.attack.name().to_string(),
        ..AttackReport::default()
    };
    let own = setup.key.public();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    while start.elapsed() < options.duration {
        ticker.tick().await;
        report.ticks += 1;
        for sent in client.tick(&mut rng) {
            let key = sent.from.public();
            if let Entry::Vacant(slot) = transports.entry(key) {
                let (transport, mut replies) = ClientTransport::connect(
                    &sent.from,
                    setup.replicas.clone(),
                    setup.transport.clone(),
                )
                .await
                .map_err(|e| LaunchError::Failure(format!("cannot start a connection: {e}")))?;
                // Replies are read and dropped, so that replicas never wait on this client.
                tokio::spawn(async move { while replies.recv().await.is_some() {} });
                slot.insert(transport);
                report.identities += 1;
                if key != own {
                    opened.push_back(key);
                }
            }
            if opened.len() > MAX_OPEN_IDENTITIES {
                let oldest = opened.pop_front().expect("longer than the cap");
                if let Some(transport) = transports.remove(&oldest) {
                    report.count(&transport);
                    transport.shutdown().await;
                }
            }
            transports[&key].broadcast(Bytes::from(sent.message.encode()));
            report.messages += 1;
        }
    }
    // Let the queued frames leave before closing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, transport) in transports {
        report.count(&transport);
        transport.shutdown().await;
    }
    Ok(report)
}

//! What a simulation run is made from.

use std::time::Duration;

use pbft_core::byzantine::ClientAttack;
use pbft_core::messages::Limits;
use pbft_core::protocol::ProtocolConfig;

use super::kv::Workload;
use super::network::NetworkConfig;

/// Everything a simulation run is made from.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub f: usize,
    pub clients: usize,
    pub requests_per_client: usize,
    /// Requests a client keeps outstanding.
    pub client_window: usize,
    /// What clients of the key-value store ask for ([`super::Simulation::new`]); another
    /// application brings its own operations.
    pub workload: Workload,
    pub client_retransmit: Duration,
    /// How often clients issue requests.
    pub client_tick: Duration,
    pub network: NetworkConfig,
    pub protocol: ProtocolConfig,
    /// Faulty clients (see [`ClientAttack`]), each acting every `attack_interval` until
    /// `attack_until`.
    pub attackers: Vec<ClientAttack>,
    pub attack_interval: Duration,
    pub attack_until: Duration,
    /// Serve any client key; otherwise only the honest clients' and the attackers' own keys
    /// are listed.
    pub open_clients: bool,
}

impl SimConfig {
    /// A small, quick cluster: checkpoints every 8, a window of 32, short timeouts.
    pub fn new(seed: u64, f: usize) -> SimConfig {
        let checkpoint_interval = 8;
        let log_window = 32;
        SimConfig {
            seed,
            f,
            clients: 3,
            requests_per_client: 30,
            client_window: 4,
            workload: Workload::UniquePuts,
            client_retransmit: Duration::from_millis(600),
            client_tick: Duration::from_millis(10),
            network: NetworkConfig::default(),
            protocol: ProtocolConfig {
                checkpoint_interval,
                log_window,
                max_batch_requests: 8,
                max_outstanding: 4,
                view_change_timeout: Duration::from_millis(500),
                max_view_change_timeout: Duration::from_secs(8),
                retransmit_interval: Duration::from_millis(200),
                // A churning attacker reaches the bound of its own key; fresh-key attackers
                // stay below the total, so honest sessions are never idle long enough to go.
                max_client_sessions: 4096,
                max_sessions_per_client: 32,
                limits: Limits {
                    log_window,
                    ..Limits::default()
                },
                ..ProtocolConfig::default()
            },
            attackers: Vec::new(),
            attack_interval: Duration::from_millis(250),
            attack_until: Duration::from_secs(20),
            open_clients: false,
        }
    }
}

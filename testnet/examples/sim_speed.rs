//! Measures how many client requests per second of wall time the simulator runs.
//!
//! `cargo run --release -p testnet --example sim_speed [f]`

use std::time::{Duration, Instant};

use testnet::sim::{SimConfig, Simulation};

fn main() {
    let f: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut config = SimConfig::new(1, f);
    config.clients = 8;
    config.requests_per_client = 2_000;
    config.client_window = 16;
    config.protocol.max_batch_requests = 64;
    config.protocol.checkpoint_interval = 64;
    config.protocol.log_window = 128;
    config.protocol.limits.log_window = 128;
    let requests = config.clients * config.requests_per_client;
    let mut sim = Simulation::new(config);
    let started = Instant::now();
    sim.run_until_clients_done(Duration::from_secs(3600))
        .expect("run completes");
    let wall = started.elapsed();
    println!(
        "n = {}: {requests} requests in {:.2} s wall ({:.0} requests/s), {:.1} s simulated, {} events",
        sim.n(),
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64(),
        sim.now().as_secs_f64(),
        sim.stats.events
    );
}

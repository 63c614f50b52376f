//! Randomized simulation over many seeds: up to f Byzantine replicas of random kinds, a lossy
//! network with partitions, and crashes; then the network heals and every request must commit.
//!
//! `PBFT_SIM_SEEDS=N` sets how many seeds run (default 1000); `PBFT_SIM_SEED=S` replays one.

use std::time::Duration;

use pbft_node::byzantine::BehaviorKind;
use testnet::sim::{NetworkConfig, SimConfig, Simulation, Violation};

/// Builds and runs the scenario of one seed.
fn run_seed(seed: u64) -> Result<(), Violation> {
    // The scenario's own choices come from a generator separate from the simulation's.
    let mut choose = Simulation::new(SimConfig::new(seed ^ 0x9e37_79b9_7f4a_7c15, 1));
    let f = if choose.random_range(0..10) < 8 { 1 } else { 2 };
    let mut config = SimConfig::new(seed, f);
    config.clients = 1 + choose.random_range(0..3) as usize;
    config.requests_per_client = 10 + choose.random_range(0..20) as usize;
    config.client_window = 1 + choose.random_range(0..6) as usize;
    config.network = NetworkConfig {
        drop_probability: choose.random_range(0..8) as f64 / 100.0,
        duplicate_probability: choose.random_range(0..5) as f64 / 100.0,
        reorder_probability: choose.random_range(0..10) as f64 / 100.0,
        max_delay: Duration::from_millis(2 + choose.random_range(0..20)),
        ..NetworkConfig::default()
    };
    let mut sim = Simulation::new(config);
    let n = sim.n() as u64;

    // Up to f Byzantine replicas of random kinds.
    let byzantine = choose.random_range(0..f as u64 + 1) as usize;
    let mut faulty = Vec::new();
    while faulty.len() < byzantine {
        let id = choose.random_range(0..n) as u32;
        if !faulty.contains(&id) {
            faulty.push(id);
            let kind =
                BehaviorKind::ALL[choose.random_range(0..BehaviorKind::ALL.len() as u64) as usize];
            sim.set_behavior(id, kind);
        }
    }

    // A few rounds of trouble: partitions and crashes of correct replicas. Crashes stay within
    // the f - byzantine budget so that liveness can be demanded after healing.
    for _ in 0..choose.random_range(1..4) {
        sim.run_for(Duration::from_millis(choose.random_range(50..800)))?;
        match choose.random_range(0..4) {
            0 => sim.isolate(choose.random_range(0..n) as u32),
            1 => {
                let cut = choose.random_range(1..n) as u32;
                let a: Vec<u32> = (0..cut).collect();
                let b: Vec<u32> = (cut..n as u32).collect();
                sim.split(&a, &b);
            }
            2 => {
                let id = choose.random_range(0..n) as u32;
                let crashed = (0..n as u32).filter(|r| sim.is_crashed(*r)).count();
                if sim.is_correct(id) && byzantine + crashed < f {
                    // Between two steps, or in the middle of a write that then never syncs.
                    if choose.random_range(0..2) == 0 {
                        sim.crash(id);
                    } else {
                        let kept = choose.random_range(0..5) as f64 / 4.0;
                        sim.crash_during_next_write(id, kept);
                    }
                }
            }
            _ => {
                let from = choose.random_range(0..n) as u32;
                let to = choose.random_range(0..n) as u32;
                sim.network.cut(
                    testnet::sim::Node::Replica(from),
                    testnet::sim::Node::Replica(to),
                );
            }
        }
        sim.run_for(Duration::from_millis(choose.random_range(100..3000)))?;
        if choose.random_range(0..2) == 0 {
            sim.heal();
        }
    }

    // Heal everything; every request must then commit.
    sim.heal();
    for id in 0..n as u32 {
        sim.recover(id)?;
    }
    sim.network.config = NetworkConfig::default();
    sim.run_until_clients_done(Duration::from_secs(900))?;
    sim.run_for(Duration::from_secs(3))?;
    if std::env::var_os("PBFT_SIM_VERBOSE").is_some() {
        for id in 0..sim.n() as u32 {
            eprintln!("replica {id} ignored {:?}", sim.replica(id).ignored());
        }
    }
    sim.check_final_state()
}

#[test]
fn randomized_faults_over_many_seeds() {
    if let Ok(seed) = std::env::var("PBFT_SIM_SEED") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let seed: u64 = seed.parse().expect("PBFT_SIM_SEED is a number");
        if let Err(violation) = run_seed(seed) {
            panic!("seed {seed}: {}", violation.0);
        }
        return;
    }
    let seeds: u64 = std::env::var("PBFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    let first: u64 = std::env::var("PBFT_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        if std::env::var_os("PBFT_SIM_VERBOSE").is_some() {
            eprintln!("seed {seed}");
        }
        if let Err(violation) = run_seed(seed) {
            eprintln!(
                "seed {seed} failed (replay with PBFT_SIM_SEED={seed}): {}",
                violation.0
            );
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed: {failures:?}",
        failures.len()
    );
}

//! The randomized search over 1000 seeds (see [`testnet::sim::campaign`] for the mix), in four
//! parts so that the test harness spreads them over the cores. A failing seed prints the command
//! that replays it; `PBFT_SIM_SEED=S` replays one seed here, with `RUST_LOG` for its log. Larger
//! searches run with `testnet sim --seeds FIRST..END`.

use testnet::sim::campaign::{replay_command, Scenario};

const SEEDS: u64 = 1000;
const PARTS: u64 = 4;

fn run_part(part: u64) {
    if let Ok(seed) = std::env::var("PBFT_SIM_SEED") {
        if part != 0 {
            return;
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let seed: u64 = seed.parse().expect("PBFT_SIM_SEED is a number");
        let scenario = Scenario::generate(seed);
        if let Err(violation) = scenario.run() {
            panic!("{}\n{}", scenario.describe(), violation.0);
        }
        return;
    }
    let per_part = SEEDS / PARTS;
    let mut failures = Vec::new();
    for seed in part * per_part..(part + 1) * per_part {
        if let Err(violation) = Scenario::generate(seed).run() {
            eprintln!("seed {seed} failed: {}", violation.0);
            eprintln!("  replay: {}", replay_command(seed));
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {per_part} seeds failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn randomized_faults_seeds_0_to_249() {
    run_part(0);
}

#[test]
fn randomized_faults_seeds_250_to_499() {
    run_part(1);
}

#[test]
fn randomized_faults_seeds_500_to_749() {
    run_part(2);
}

#[test]
fn randomized_faults_seeds_750_to_999() {
    run_part(3);
}

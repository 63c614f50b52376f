//! Runs the protocol core of 4 replicas (see `pbft_benches::pure_core`) for a number of batches
//! and prints the time per batch; a target for `perf record` without criterion's analysis.
//!
//! `cargo run --release -p pbft-benches --example core_loop [batches]`

use std::time::{Duration, Instant};

use pbft_benches::pure_core::CoreCluster;

fn main() {
    let batches: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000);
    let mut cluster = CoreCluster::new(1, 4, 16, 512);
    let envelopes = cluster.envelopes();
    cluster.commit(envelopes);
    let mut busy = Duration::ZERO;
    let mut requests = 0;
    for _ in 0..batches {
        let envelopes = cluster.envelopes();
        let started = Instant::now();
        requests += cluster.commit(envelopes);
        busy += started.elapsed();
    }
    println!(
        "{batches} batches, {requests} requests: {:.1} µs per batch, {:.2} µs per request",
        busy.as_secs_f64() * 1e6 / batches as f64,
        busy.as_secs_f64() * 1e6 / requests as f64
    );
}

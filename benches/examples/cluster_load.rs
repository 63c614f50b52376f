//! Runs the loopback cluster of the `throughput_vs_f` benchmark under its closed-loop load for a
//! while and prints what it observed; a target for `perf record` without criterion's analysis.
//!
//! `cargo run --release -p pbft-benches --example cluster_load [f] [payload] [seconds]`
//! (`PBFT_BENCH_CLIENTS`, `PBFT_BENCH_WINDOW` and `PBFT_BENCH_MAX_OUTSTANDING` apply.)

use std::time::Duration;

use pbft_benches::cluster::{describe, LoadSpec, LoadedCluster};

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: u64| -> u64 {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (f, payload, seconds) = (arg(1, 1) as usize, arg(2, 512) as usize, arg(3, 10));
    let mut cluster = LoadedCluster::start(LoadSpec::new(f, payload))?;
    cluster.warm_up(Duration::from_secs(2), |_| true, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let o = cluster.observed();
    println!(
        "f={f} payload={payload}: {:.0} requests/s, {:.1} requests/batch, p50 {:.1} ms, p99 {:.1} ms, \
         {:.2} cores used, {:.2} cores runnable but waiting, {} failed",
        o.throughput,
        o.requests_per_batch,
        o.p50.as_secs_f64() * 1e3,
        o.p99.as_secs_f64() * 1e3,
        o.cpu.as_secs_f64() / o.elapsed.as_secs_f64(),
        o.runnable_wait.as_secs_f64() / o.elapsed.as_secs_f64(),
        o.failed
    );
    // Totals since the start, to relate counts of signatures (perf probes) to requests.
    let statuses: Vec<_> = cluster.statuses().into_iter().flatten().collect();
    println!(
        "{} requests completed; {}",
        o.completed,
        describe(&statuses)
    );
    cluster.stop();
    Ok(())
}

//! Latency of `get` (read-only, answered by 2f+1 replicas without ordering) against `put` and
//! `get --ordered`, one request at a time (light load), on a loopback cluster of real nodes.
//!
//! `cargo run --release -p pbft-benches --example read_latency [f] [requests]`

use std::time::{Duration, Instant};

use pbft_client::{Client, ClientSetup};
use pbft_crypto::KeyPair;
use pbft_node::local::loopback_cluster;
use pbft_node::runtime::RunningNode;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (f, requests) = (arg(1, 1), arg(2, 1000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    runtime.block_on(async {
        let setups = loopback_cluster(f, Default::default(), dir.path())?;
        let peers = setups[0].peers.clone();
        let mut nodes = Vec::new();
        for setup in setups {
            nodes.push(RunningNode::start(setup).await?);
        }
        let client = Client::connect(ClientSetup::new(KeyPair::generate(), f, peers)).await?;
        client
            .wait_connected(3 * f + 1, Duration::from_secs(10))
            .await?;
        let value = vec![b'v'; 512];
        let (mut puts, mut gets, mut ordered) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..requests {
            let key = format!("k{}", i % 64);
            let started = Instant::now();
            client.put(key.clone(), value.clone()).await?;
            puts.push(started.elapsed());
            let started = Instant::now();
            client.get(key.clone()).await?;
            gets.push(started.elapsed());
            let started = Instant::now();
            client.get_ordered(key).await?;
            ordered.push(started.elapsed());
        }
        for (name, samples) in [
            ("put", &mut puts),
            ("get", &mut gets),
            ("get --ordered", &mut ordered),
        ] {
            println!(
                "f={f} {name:<14} p50 {:.2} ms  p99 {:.2} ms  ({requests} one at a time)",
                percentile(samples, 0.5),
                percentile(samples, 0.99)
            );
        }
        client.close().await;
        for node in nodes {
            node.stop().await;
        }
        anyhow::Ok(())
    })
}

//! Committed requests per second of a loopback cluster: `throughput_vs_f` for f = 1, 2, 3 and
//! value sizes 64 B and 512 B, and `faults` for f = 1 with a silent backup or a silent primary.
//!
//! One iteration is [`REQUESTS_PER_ITERATION`] puts completed with f+1 matching replies, so
//! criterion's throughput is requests per second. Each configuration starts its own cluster once,
//! warms it up, and measures while the closed-loop load keeps running. After each configuration
//! a line on stderr gives the batch size, the view and the client-side latency percentiles.

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use pbft_benches::cluster::{LoadSpec, LoadedCluster};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::messages::NodeStatus;

const REQUESTS_PER_ITERATION: u64 = 1_000;

/// How long the load runs before criterion's own warm-up starts.
const WARM_UP: Duration = Duration::from_secs(2);

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .nresamples(10_000)
        .throughput(Throughput::Elements(REQUESTS_PER_ITERATION));
}

/// Runs one configuration, starting its cluster only if criterion's filter selects it.
fn bench_cluster(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    function: &str,
    spec: LoadSpec,
    ready: fn(&[NodeStatus]) -> bool,
) {
    let label = format!("{function}/{}", spec.f);
    let mut cluster: Option<LoadedCluster> = None;
    group.bench_function(BenchmarkId::new(function, spec.f), |b| {
        let cluster = cluster.get_or_insert_with(|| {
            let mut cluster = LoadedCluster::start(spec.clone()).expect("cluster starts");
            cluster
                .warm_up(WARM_UP, ready, Duration::from_secs(60))
                .expect("warm-up");
            cluster
        });
        b.iter_custom(|iters| cluster.time_requests(iters * REQUESTS_PER_ITERATION));
    });
    if let Some(cluster) = cluster {
        let o = cluster.observed();
        let spec = cluster.spec();
        eprintln!(
            "{label}: n={} clients={}x{} view={} requests/batch={:.1} throughput={:.0}/s \
             p50={:.2}ms p99={:.2}ms cpu={:.2} cores runnable-wait={:.2} cores failed={}{}",
            3 * spec.f + 1,
            spec.clients,
            spec.window,
            o.view,
            o.requests_per_batch,
            o.throughput,
            o.p50.as_secs_f64() * 1e3,
            o.p99.as_secs_f64() * 1e3,
            o.cpu.as_secs_f64() / o.elapsed.as_secs_f64(),
            o.runnable_wait.as_secs_f64() / o.elapsed.as_secs_f64(),
            o.failed,
            o.first_error
                .map(|e| format!(" first error: {e}"))
                .unwrap_or_default(),
        );
        cluster.stop();
    }
}

fn any_progress(_: &[NodeStatus]) -> bool {
    true
}

/// Every correct replica is in an active view above 0 and has executed something there.
fn view_changed(statuses: &[NodeStatus]) -> bool {
    !statuses.is_empty()
        && statuses
            .iter()
            .all(|s| s.view >= 1 && s.view_active && s.last_executed > 0)
}

fn throughput_vs_f(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput_vs_f");
    configure(&mut group);
    for size in [64, 512] {
        for f in [1, 2, 3] {
            bench_cluster(
                &mut group,
                &format!("{size}B"),
                LoadSpec::new(f, size),
                any_progress,
            );
        }
    }
    group.finish();
}

fn faults(c: &mut Criterion) {
    let mut group = c.benchmark_group("faults");
    configure(&mut group);
    let f = 1;
    bench_cluster(&mut group, "none", LoadSpec::new(f, 512), any_progress);
    let mut backup = LoadSpec::new(f, 512);
    backup.faulty = Some((3, BehaviorKind::Silent));
    bench_cluster(&mut group, "silent_backup", backup, any_progress);
    // The view-0 primary is silent: measured once the backups moved to view 1.
    let mut primary = LoadSpec::new(f, 512);
    primary.faulty = Some((0, BehaviorKind::Silent));
    bench_cluster(&mut group, "silent_primary", primary, view_changed);
    group.finish();
}

criterion_group!(benches, throughput_vs_f, faults);
criterion_main!(benches);

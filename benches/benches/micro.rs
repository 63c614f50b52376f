//! Micro benchmarks: ed25519 sign and strict verify, SHA-256, the wire codec, the boundary check
//! with real signature checks, the protocol core per committed batch without network or
//! signature verification, and how the core's cost grows with n.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pbft_benches::pure_core::{CoreCluster, Signatures};
use pbft_benches::thread_cpu_time;
use pbft_core::app::KvOp;
use pbft_core::messages::{
    self, Batch, ClientRequest, Limits, Message, Phase, RequestEnvelope, Sender, StrictCheck, Vote,
};
use pbft_core::Committee;
use pbft_crypto::{Digest, Domain, KeyPair, Signer};

/// The batch the codec, boundary and core benchmarks use: 4 client envelopes of 16 puts each,
/// 64 requests of 512-byte values.
const ENVELOPES: usize = 4;
const PER_ENVELOPE: usize = 16;
const VALUE: usize = 512;

fn pair(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32]).expect("valid seed")
}

/// The committee of 4 with the keys of seeds 1 to 4.
fn committee() -> Committee {
    Committee::new((1..=4).map(|seed| pair(seed).public()).collect(), 1).expect("committee")
}

/// The key of `seed`, signing for [`committee`].
fn key(seed: u8) -> Signer {
    committee().signer(pair(seed))
}

/// A committee of 4 and a signed PRE-PREPARE from its view-0 primary with the batch above.
fn pre_prepare() -> (Committee, Message) {
    let committee = committee();
    let envelopes = (0..ENVELOPES)
        .map(|c| {
            let requests = (0..PER_ENVELOPE)
                .map(|i| ClientRequest {
                    timestamp: i as u64 + 1,
                    op: KvOp::Put {
                        key: format!("client-{c}-key-{i}").into_bytes(),
                        value: vec![b'v'; VALUE],
                    }
                    .encode(),
                })
                .collect();
            RequestEnvelope::new(&key(100 + c as u8), 1, requests)
        })
        .collect();
    let batch = Batch { envelopes };
    let header = Vote::new(&key(1), Phase::PrePrepare, 0, 1, batch.digest(), 0);
    (committee, Message::PrePrepare { header, batch })
}

fn crypto(c: &mut Criterion) {
    let mut group = c.benchmark_group("crypto");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let pair = key(7);
    let digest = Digest::of(Domain::Content, b"a vote's signing digest");
    group.bench_function("sign", |b| b.iter(|| pair.sign(Domain::Prepare, &digest)));
    let signature = pair.sign(Domain::Prepare, &digest);
    let public = pair.public();
    group.bench_function("verify_strict", |b| {
        b.iter(|| public.verify(pair.cluster(), Domain::Prepare, &digest, &signature))
    });
    group.finish();

    // The same, counting the thread's CPU time instead of wall time: robust to other processes
    // competing for the cores. The crypto-bound limit in the README uses these.
    let mut group = c.benchmark_group("crypto_cpu_time");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("sign", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu_time();
            for _ in 0..iters {
                black_box(pair.sign(Domain::Prepare, black_box(&digest)));
            }
            thread_cpu_time() - started
        })
    });
    group.bench_function("verify_strict", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu_time();
            for _ in 0..iters {
                black_box(public.verify(
                    pair.cluster(),
                    Domain::Prepare,
                    black_box(&digest),
                    &signature,
                ))
                .expect("valid");
            }
            thread_cpu_time() - started
        })
    });
    group.finish();
}

fn sha256(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let bytes = vec![7u8; 512];
    group.throughput(Throughput::Bytes(512));
    group.bench_function("512B", |b| b.iter(|| Digest::of(Domain::Content, &bytes)));
    // ring's assembly SHA-256 (already linked in through rustls), for comparison.
    group.bench_function("512B_ring", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, &bytes))
    });
    let (_, message) = pre_prepare();
    let Message::PrePrepare { batch, .. } = &message else {
        unreachable!()
    };
    let payload: usize = batch
        .envelopes
        .iter()
        .flat_map(|e| &e.requests)
        .map(|r| r.op.len() + 8)
        .sum();
    // Every envelope's signing digest (all of its operations), then the batch digest over them.
    group.throughput(Throughput::Bytes(payload as u64));
    group.bench_function(
        BenchmarkId::new("batch_digest", ENVELOPES * PER_ENVELOPE),
        |b| b.iter(|| batch.digest()),
    );
    let concatenated: Vec<u8> = batch
        .envelopes
        .iter()
        .flat_map(|e| &e.requests)
        .flat_map(|r| r.op.iter().copied())
        .collect();
    group.bench_function(
        BenchmarkId::new("batch_payload_ring", ENVELOPES * PER_ENVELOPE),
        |b| b.iter(|| ring::digest::digest(&ring::digest::SHA256, &concatenated)),
    );
    let digests = batch.envelope_digests();
    group.throughput(Throughput::Bytes((digests.len() * 32) as u64));
    group.bench_function(
        BenchmarkId::new("batch_digest_of_envelope_digests", ENVELOPES),
        |b| b.iter(|| Batch::digest_of(&digests)),
    );
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let (_, message) = pre_prepare();
    let bytes = message.encode();
    let limits = Limits::default();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let id = ENVELOPES * PER_ENVELOPE;
    group.bench_function(BenchmarkId::new("encode_pre_prepare", id), |b| {
        b.iter(|| message.encode())
    });
    group.bench_function(BenchmarkId::new("decode_pre_prepare", id), |b| {
        b.iter(|| Message::decode(&bytes, &limits).expect("decodes"))
    });
    group.finish();
}

fn boundary(c: &mut Criterion) {
    let mut group = c.benchmark_group("boundary");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let (committee, message) = pre_prepare();
    let limits = Limits::default();
    // A fresh checker each time: the header and every envelope signature are really verified.
    group.bench_function(
        BenchmarkId::new("verify_pre_prepare", ENVELOPES * PER_ENVELOPE),
        |b| {
            b.iter_batched(
                || message.clone(),
                |m| {
                    messages::verify(m, Sender::Replica(0), &committee, &limits, &mut StrictCheck)
                        .expect("valid")
                },
                BatchSize::SmallInput,
            )
        },
    );
    let Message::PrePrepare { header, batch } = &message else {
        unreachable!()
    };
    let commit = Message::Commit(Vote::new(&key(2), Phase::Commit, 0, 1, header.digest, 1));
    group.bench_function("verify_commit", |b| {
        b.iter_batched(
            || commit.clone(),
            |m| {
                messages::verify(m, Sender::Replica(1), &committee, &limits, &mut StrictCheck)
                    .expect("valid")
            },
            BatchSize::SmallInput,
        )
    });
    let envelope = Message::Request(batch.envelopes[0].clone());
    let client = batch.envelopes[0].client;
    group.bench_function(BenchmarkId::new("verify_envelope", PER_ENVELOPE), |b| {
        b.iter_batched(
            || envelope.clone(),
            |m| {
                messages::verify(
                    m,
                    Sender::Client(client),
                    &committee,
                    &limits,
                    &mut StrictCheck,
                )
                .expect("valid")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Thread CPU time per committed batch (one thread, so CPU time is the cost).
fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let requests = (ENVELOPES * PER_ENVELOPE) as u64;
    group.throughput(Throughput::Elements(requests));
    let mut cluster = CoreCluster::new(1, ENVELOPES, PER_ENVELOPE, VALUE);
    // Past the priming batch, so every timed batch is a full one.
    let envelopes = cluster.envelopes();
    cluster.commit(envelopes);
    group.bench_function(BenchmarkId::new("commit_batch_n4", requests), |b| {
        b.iter_custom(|iters| cpu_per_batch(&mut cluster, iters, requests))
    });
    group.finish();
}

/// How the core's CPU per committed request grows with n: batches of 64 requests, with every
/// signature taken as valid (the core alone) and with every signature verified once by each
/// replica that receives it (the core plus the boundary's checks, as deployed, without network).
fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let requests = (ENVELOPES * PER_ENVELOPE) as u64;
    group.throughput(Throughput::Elements(requests));
    for (name, signatures) in [
        ("core_trusted_signatures", Signatures::Trusted),
        ("core_verified_signatures", Signatures::Verified),
    ] {
        for f in [1, 2, 3, 4, 5, 10] {
            let n = 3 * f + 1;
            let mut cluster =
                CoreCluster::with_signatures(f, ENVELOPES, PER_ENVELOPE, VALUE, signatures);
            let envelopes = cluster.envelopes();
            cluster.commit(envelopes);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| cpu_per_batch(&mut cluster, iters, requests))
            });
        }
    }
    group.finish();
}

/// Thread CPU time of `iters` committed batches, each of `requests` requests.
fn cpu_per_batch(cluster: &mut CoreCluster, iters: u64, requests: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let envelopes = cluster.envelopes();
        let started = thread_cpu_time();
        let committed = cluster.commit(envelopes);
        total += thread_cpu_time() - started;
        assert_eq!(committed, requests);
    }
    total
}

criterion_group!(micro, crypto, sha256, codec, boundary, core, scaling);
criterion_main!(micro);

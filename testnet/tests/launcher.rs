//! End-to-end tests of the `testnet` launcher: real replica processes on 127.0.0.1, started,
//! inspected, crashed and stopped through the `testnet` binary, with a client workload from
//! this process. Each cluster is stopped when its guard drops, even when the test fails.
//! Clusters run one at a time; nothing here asserts timing.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_client::Client;
use serde_json::Value;
use testnet::launcher::{self, Layout, State};

mod common;
use common::{serial, testnet, text, BIN};

/// Generous: the CI machine has two cores for all the replicas.
const CONVERGENCE: Duration = Duration::from_secs(90);

/// Runs `test` on a runtime of its own, alone.
fn one_at_a_time(test: impl std::future::Future<Output = ()>) {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A testnet started with `up --detach`; dropping it stops every replica.
struct Testnet {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Testnet {
    /// `testnet up --detach` with small protocol timeouts, plus `extra` flags.
    fn up(f: usize, extra: &[&str]) -> Testnet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net");
        let shown = path.to_str().unwrap().to_string();
        let f = f.to_string();
        let mut args = vec![
            "up",
            "--f",
            &f,
            "--detach",
            "--dir",
            &shown,
            "--node-bin",
            BIN,
            "--view-change-timeout-ms",
            "1000",
            "--checkpoint-interval",
            "16",
            "--up-timeout",
            "120",
        ];
        args.extend_from_slice(extra);
        let testnet_guard = Testnet { _dir: dir, path };
        let output = testnet(&args);
        assert!(output.status.success(), "up failed: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("primary"), "no table: {stdout}");
        testnet_guard
    }

    fn dir(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn run(&self, command: &[&str]) -> Output {
        let mut args = command.to_vec();
        args.extend(["--dir", self.dir()]);
        testnet(&args)
    }

    /// `testnet status --json`, parsed.
    fn status(&self) -> Value {
        let output = self.run(&["status", "--json"]);
        assert!(
            matches!(output.status.code(), Some(0 | 1 | 3)),
            "status failed: {}",
            text(&output)
        );
        let status: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&output)));
        let expected_code = match status["agreement"].as_str() {
            Some("yes") => 0,
            Some("no") => 1,
            Some("unknown") => 3,
            other => panic!("agreement is {other:?}"),
        };
        assert_eq!(output.status.code(), Some(expected_code), "{status}");
        assert_eq!(status["agree"] == true, expected_code == 0, "{status}");
        status
    }

    async fn client(&self) -> Client {
        self.client_with(None).await
    }

    /// A client with `key` instead of the testnet's (admitted by an open testnet).
    async fn client_with(&self, key: Option<pbft_crypto::KeyPair>) -> Client {
        let layout = Layout::new(&self.path).unwrap();
        let state = State::load(&layout).unwrap();
        let mut setup = launcher::report::fresh_client_setup(&layout, &state).unwrap();
        if let Some(key) = key {
            setup.key = key;
        }
        Client::connect(setup).await.unwrap()
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = launcher::down(&self.path);
    }
}

/// The live correct replicas of a status report.
fn correct(status: &Value) -> Vec<&Value> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["behavior"].is_null() && n["alive"] == true)
        .collect()
}

/// Puts `count` distinct keys `{prefix}-{i}` with `concurrency` requests outstanding; every
/// one must be acknowledged.
async fn workload(client: &Client, prefix: &str, count: usize, concurrency: usize) {
    let (running, _) = background_workload(client, prefix, count, concurrency);
    running.await.unwrap();
}

fn value(key: &str) -> String {
    format!("value of {key}")
}

/// Reads back every `step`-th key of a workload.
async fn check_values(client: &Client, prefix: &str, count: usize, step: usize) {
    for i in (0..count).step_by(step) {
        let key = format!("{prefix}-{i}");
        let got = client.get(key.clone()).await.unwrap();
        assert_eq!(
            got.map(|v| v.to_vec()),
            Some(value(&key).into_bytes()),
            "{key}"
        );
    }
}

/// Waits until every live correct replica reports the same last executed sequence number and
/// `status --json` says they agree, putting a value now and then so that laggards hear of
/// progress. Returns that status.
async fn converged(net: &Testnet, client: &Client) -> Value {
    let start = Instant::now();
    let mut nudges = 0;
    loop {
        let status = net.status();
        let replicas = correct(&status);
        let same = replicas
            .windows(2)
            .all(|w| w[0]["last_executed"] == w[1]["last_executed"]);
        if same && status["agree"] == true && !replicas.is_empty() {
            assert!(status["compared_pairs"].as_u64().unwrap() > 0);
            return status;
        }
        assert!(
            start.elapsed() < CONVERGENCE,
            "the correct replicas did not converge: {status:#}"
        );
        if nudges % 4 == 0 {
            client.put(format!("nudge-{nudges}"), "x").await.unwrap();
        }
        nudges += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Keeps a light workload going until every live correct replica is past view 0.
async fn until_view_changed(net: &Testnet, client: &Client) {
    let start = Instant::now();
    for round in 0.. {
        let status = net.status();
        if correct(&status)
            .iter()
            .all(|n| n["view"].as_u64() >= Some(1))
        {
            return;
        }
        assert!(
            start.elapsed() < CONVERGENCE,
            "the view did not change: {status:#}"
        );
        workload(client, &format!("more-{round}"), 20, 4).await;
    }
}

struct Expect {
    view_change: bool,
    /// Replicas some correct replica must hold proof of equivocation against.
    evidence_against: &'static [u64],
}

/// f, B Byzantine replicas of `behavior`: 500 puts complete with the right results, the
/// correct replicas end at the same sequence number and agree, and nobody correct is accused.
async fn scenario(f: usize, byzantine: usize, behavior: &str, expect: Expect) {
    let b = byzantine.to_string();
    let net = Testnet::up(f, &["--byzantine", &b, "--behavior", behavior]);
    let status = net.status();
    assert_eq!(status["f"], f as u64);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3 * f + 1);
    let faulty: Vec<u64> = nodes
        .iter()
        .filter(|n| !n["behavior"].is_null())
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        faulty,
        (0..byzantine as u64).collect::<Vec<_>>(),
        "{status:#}"
    );

    // A twinned replica runs as two processes; both must still be running.
    let layout = Layout::new(&net.path).unwrap();
    let state = State::load(&layout).unwrap();
    let twins = if behavior == "twin" { byzantine } else { 0 };
    assert_eq!(state.twins.len(), twins, "{state:?}");

    let client = net.client().await;
    workload(&client, "key", 500, 16).await;
    for twin in &state.twins {
        assert!(
            launcher::process::node_alive(&layout, twin),
            "replica {}'s twin exited",
            twin.id
        );
    }
    if expect.view_change {
        until_view_changed(&net, &client).await;
    }
    check_values(&client, "key", 500, 7).await;
    let status = converged(&net, &client).await;
    let replicas = correct(&status);
    assert_eq!(replicas.len(), 3 * f + 1 - byzantine, "{status:#}");
    assert!(replicas[0]["last_executed"].as_u64().unwrap() > 0);
    if expect.view_change {
        for node in &replicas {
            assert!(node["view"].as_u64().unwrap() >= 1, "{status:#}");
        }
    }
    let correct_ids: Vec<u64> = replicas.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    let mut accused = Vec::new();
    for node in &replicas {
        for id in node["evidence_against"].as_array().unwrap() {
            let id = id.as_u64().unwrap();
            assert!(
                !correct_ids.contains(&id),
                "correct replica {id} accused: {status:#}"
            );
            accused.push(id);
        }
    }
    for id in expect.evidence_against {
        assert!(accused.contains(id), "no evidence against {id}: {status:#}");
    }
    client.close().await;
}

#[test]
fn an_equivocating_primary_splitting_the_backups_is_replaced() {
    let expect = Expect {
        view_change: true,
        evidence_against: &[0],
    };
    one_at_a_time(scenario(1, 1, "equivocate", expect));
}

#[test]
fn a_minority_misled_by_an_equivocating_primary_catches_up() {
    let expect = Expect {
        view_change: false,
        evidence_against: &[0],
    };
    one_at_a_time(scenario(1, 1, "equivocate-minority", expect));
}

#[test]
fn a_silent_primary_is_replaced() {
    let expect = Expect {
        view_change: true,
        evidence_against: &[],
    };
    one_at_a_time(scenario(1, 1, "silent", expect));
}

#[test]
fn a_corrupt_primary_is_replaced() {
    let expect = Expect {
        view_change: true,
        evidence_against: &[],
    };
    one_at_a_time(scenario(1, 1, "corrupt", expect));
}

#[test]
fn a_slow_primary_is_replaced_once_past_the_timeout() {
    let expect = Expect {
        view_change: true,
        evidence_against: &[],
    };
    one_at_a_time(scenario(1, 1, "slow", expect));
}

#[test]
fn two_mixed_byzantine_replicas_of_seven() {
    let expect = Expect {
        view_change: true,
        evidence_against: &[0],
    };
    one_at_a_time(scenario(2, 2, "mixed", expect));
}

/// Two processes hold the primary's key and share its port: each peer's and client's packets
/// reach one of them, so each runs the protocol with part of the cluster, in replica 0's name.
#[test]
fn twins_sharing_the_primarys_key_and_port_do_not_stop_the_service() {
    let expect = Expect {
        view_change: false,
        evidence_against: &[],
    };
    one_at_a_time(scenario(1, 1, "twin", expect));
}

/// The primary sends replica 1 nothing, and replica 1 is stopped (SIGSTOP) while 400 writes
/// complete without it. Once it runs again it is further behind than the others' logs reach,
/// and it holds f+1 checkpoints past it but never the 2f+1 of a stable one: it must notice
/// that it is stranded and fetch a stable state. The correct replicas then agree.
#[test]
fn a_backup_shunned_by_the_primary_catches_up_after_a_pause() {
    use nix::sys::signal::Signal;
    one_at_a_time(async {
        let net = Testnet::up(1, &["--byzantine", "1", "--behavior", "shun"]);
        let client = net.client().await;
        workload(&client, "before", 20, 4).await;
        let layout = Layout::new(&net.path).unwrap();
        let state = State::load(&layout).unwrap();
        let pid = state.node(1).unwrap().pid.unwrap();
        launcher::process::send_signal(pid, Signal::SIGSTOP).unwrap();
        workload(&client, "paused", 400, 16).await;
        launcher::process::send_signal(pid, Signal::SIGCONT).unwrap();
        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 3, "{status:#}");
        check_values(&client, "paused", 400, 7).await;
        client.close().await;
    });
}

/// Puts keys `{prefix}-{i}` in the background with `concurrency` requests outstanding, and
/// counts how many have been acknowledged so far.
fn background_workload(
    client: &Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let done = acknowledged.clone();
    let client = client.clone();
    let prefix = prefix.to_string();
    let task = tokio::spawn(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, next, done) = (client.clone(), next.clone(), done.clone());
            let prefix = prefix.clone();
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let key = format!("{prefix}-{i}");
                    if let Err(e) = client.put(key.clone(), value(&key)).await {
                        panic!("put {key} failed: {e}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(joined) = workers.join_next().await {
            joined.unwrap();
        }
    });
    (task, acknowledged)
}

async fn until_acknowledged(acknowledged: &AtomicUsize, count: usize) {
    until_acknowledged_within(acknowledged, count, CONVERGENCE).await
}

async fn until_acknowledged_within(acknowledged: &AtomicUsize, count: usize, patience: Duration) {
    let start = Instant::now();
    while acknowledged.load(Ordering::Relaxed) < count {
        assert!(start.elapsed() < patience, "the workload is stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_backup_killed_mid_workload_restarts_and_catches_up_without_losing_writes() {
    one_at_a_time(async {
        let net = Testnet::up(1, &[]);
        let client = net.client().await;
        let (running, acknowledged) = background_workload(&client, "load", 600, 16);
        until_acknowledged(&acknowledged, 150).await;

        // SIGKILL in the middle of the workload: whatever it had not written is gone.
        let output = net.run(&["kill", "2"]);
        assert!(output.status.success(), "{}", text(&output));
        let status = net.status();
        assert_eq!(status["nodes"][2]["alive"], false, "{status:#}");
        until_acknowledged(&acknowledged, 350).await;

        let output = net.run(&["restart", "2"]);
        assert!(output.status.success(), "{}", text(&output));
        running.await.unwrap();

        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        check_values(&client, "load", 600, 1).await;
        let log = std::fs::read_to_string(net.path.join("logs/node-2.log")).unwrap();
        assert_eq!(
            log.matches("--- testnet: starting node 2").count(),
            2,
            "the restart appends to the same log"
        );
        assert!(
            log.contains("recovered from durable state"),
            "the restarted replica did not load its durable state: {log}"
        );
        client.close().await;
    });
}

#[test]
fn every_replica_killed_at_once_keeps_every_acknowledged_write() {
    one_at_a_time(async {
        let net = Testnet::up(1, &[]);
        let client = net.client().await;
        let (running, acknowledged) = background_workload(&client, "load", 500, 16);
        until_acknowledged(&acknowledged, 200).await;

        for id in ["0", "1", "2", "3"] {
            let output = net.run(&["kill", id]);
            assert!(output.status.success(), "{}", text(&output));
        }
        let acknowledged_before = acknowledged.load(Ordering::Relaxed);
        let status = net.status();
        assert!(
            status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["alive"] == false),
            "{status:#}"
        );
        for id in ["0", "1", "2", "3"] {
            let output = net.run(&["restart", id]);
            assert!(output.status.success(), "{}", text(&output));
        }
        // Requests in flight during the outage are retransmitted and complete; each key is
        // written once, so every acknowledged value must be there.
        running.await.unwrap();
        assert!(acknowledged_before >= 200);

        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        check_values(&client, "load", 500, 1).await;
        for node in correct(&status) {
            assert!(
                node["last_executed"].as_u64().unwrap() > 0,
                "a replica lost its log: {status:#}"
            );
        }
        client.close().await;
    });
}

/// A process started by a test, killed when the test ends, whether it passes or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_replica_whose_disk_fills_up_stops_with_a_clear_error() {
    one_at_a_time(async {
        let net = Testnet::up(1, &[]);
        let client = net.client().await;
        workload(&client, "before", 100, 8).await;
        let output = net.run(&["kill", "3"]);
        assert!(output.status.success(), "{}", text(&output));

        // Start replica 3 again by hand with a file size limit of 8 KiB, below what its log
        // segments (each starting with a snapshot) need, so that its writes fail as on a full
        // disk. SIGXFSZ is ignored so that the write returns an error instead of killing the
        // process.
        let blocks = 16;
        let config = net.path.join("node-3.toml");
        let script = format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" node --config \"$1\"");
        let stderr_path = net.path.join("logs/node-3-full-disk.log");
        let mut node = KillOnDrop(
            Command::new("sh")
                .args(["-c", &script, BIN, config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap(),
        );
        let (running, _) = background_workload(&client, "after", 400, 16);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = node.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < CONVERGENCE,
                "replica 3 kept running on a full disk"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("durable write failed"), "{stderr}");
        // The other three carry on.
        running.await.unwrap();
        check_values(&client, "after", 400, 7).await;
        client.close().await;
    });
}

/// Every faulty-client strategy at once, as separate `testnet attack` processes, while an
/// honest client writes: every honest write completes with its value, every replica refuses
/// the oversized envelopes itself (the primary never proposes one: their frames are longer than
/// a client may send), the unlisted identities at the handshake, and cut off the client whose
/// signatures fail; and the correct replicas agree.
#[test]
fn faulty_clients_do_not_keep_the_honest_client_from_being_served() {
    one_at_a_time(async {
        let net = Testnet::up(1, &["--byzantine", "0"]);
        let client = net.client().await;
        workload(&client, "before", 20, 4).await;
        let attack = |strategy: &str| {
            Command::new(BIN)
                .args(["attack", strategy, "--dir", net.dir(), "--duration", "6"])
                .args(["--interval-ms", "200"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("testnet attack starts")
        };
        let report = |attack: std::process::Child| {
            let output = attack.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", text(&output));
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
            report
        };
        let attacks: Vec<_> = [
            "oversized-envelope",
            "reused-timestamps",
            "many-identities",
            "flood",
        ]
        .into_iter()
        .map(attack)
        .collect();
        workload(&client, "honest", 200, 8).await;
        for attack in attacks {
            report(attack);
        }
        // The attacks use the testnet's client key; a ban of it must not wait for the others.
        let forger = attack("bad-signatures");
        workload(&client, "while-banned", 50, 8).await;
        report(forger);
        check_values(&client, "honest", 200, 1).await;
        check_values(&client, "while-banned", 50, 1).await;

        for (id, status) in client.status_all(Duration::from_secs(10)).await {
            let status = status.unwrap_or_else(|e| panic!("replica {id}: {e}"));
            let count = |label: &str| {
                status
                    .rejected
                    .iter()
                    .find(|(l, _)| l == label)
                    .map_or(0, |(_, n)| *n)
            };
            // Each replica refuses the oversized envelopes itself, at the transport: none is
            // left for a primary to propose and the backups to refuse.
            assert!(
                count("frame_too_large") > 0,
                "replica {id} refused no oversized envelope: {:?}",
                status.rejected
            );
            assert!(
                count("client_not_admitted") > 0,
                "replica {id}: {:?}",
                status.rejected
            );
            // The connection whose signatures fail is cut off, not served on.
            assert!(
                count("client_banned") > 0 && count("bad_signature") > 0,
                "replica {id}: {:?}",
                status.rejected
            );
        }
        converged(&net, &client).await;
        client.close().await;
    });
}

/// The most memory (peak resident set) a replica may reach in the transport attack tests.
const REPLICA_MEMORY_BOUND_MIB: u64 = 1024;

/// Replica `id`'s peak resident set so far, in MiB (`VmHWM`), or `None` off Linux.
fn peak_memory_mib(net: &Testnet, id: u32) -> Option<u64> {
    let layout = Layout::new(&net.path).unwrap();
    let state = State::load(&layout).unwrap();
    let pid = state.node(id).unwrap().pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn assert_memory_bounded(net: &Testnet) {
    for id in 0..4 {
        if let Some(peak) = peak_memory_mib(net, id) {
            assert!(
                peak < REPLICA_MEMORY_BOUND_MIB,
                "replica {id} peaked at {peak} MiB"
            );
        }
    }
}

/// Starts `testnet attack STRATEGY` for `secs` seconds in the background.
fn start_attack(net: &Testnet, strategy: &str, secs: u64) -> std::process::Child {
    Command::new(BIN)
        .args(["attack", strategy, "--dir", net.dir()])
        .args(["--duration", &secs.to_string(), "--interval-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("testnet attack starts")
}

/// Waits for an attack process and returns its report, which must show it got connections in.
fn attack_report(attack: std::process::Child) -> Value {
    let output = attack.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        report["connections_opened"].as_u64().unwrap() > 0,
        "{report}"
    );
    report
}

/// Anonymous parties hold every connection they can get at every replica while a backup
/// crashes and restarts: the restarted replica gets in (connections from replicas' addresses
/// have room of their own), catches up, the honest client's writes keep completing, nothing
/// committed is lost, and no replica's memory passes the bound.
#[test]
fn a_connection_flood_while_a_replica_restarts() {
    one_at_a_time(async {
        let net = Testnet::up(1, &["--open-clients"]);
        let client = net.client().await;
        let (running, acknowledged) = background_workload(&client, "flood", 400, 8);
        until_acknowledged(&acknowledged, 50).await;
        let attack = start_attack(&net, "connection-flood", 25);
        tokio::time::sleep(Duration::from_secs(3)).await;

        let output = net.run(&["kill", "2"]);
        assert!(output.status.success(), "{}", text(&output));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let output = net.run(&["restart", "2", "--timeout", "60"]);
        assert!(
            output.status.success(),
            "the restarted replica did not get in: {}",
            text(&output)
        );
        let report = attack_report(attack);
        running.await.unwrap();

        check_values(&client, "flood", 400, 1).await;
        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        assert!(
            report["connections_failed"].as_u64().unwrap() > 0,
            "the connection limits refused nothing: {report}"
        );
        assert_memory_bounded(&net);
        client.close().await;
    });
}

/// `GET /metrics` of `addr`, or what went wrong.
fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// 20,000 connections to replica 0's metrics endpoint, held open and silent, while the honest
/// client writes past several checkpoints: the endpoint serves a few and closes the rest at
/// once, so no replica runs out of file descriptors for its log; every replica stays up,
/// every write completes, and the endpoint counts what it closed.
#[test]
fn a_metrics_connection_flood_stops_no_replica() {
    one_at_a_time(async {
        let net = Testnet::up(1, &[]);
        let client = net.client().await;
        let mut attack = start_attack(&net, "metrics-flood", 10);
        // Writes, and so checkpoints, go on for as long as the flood does.
        let mut rounds = 0;
        while attack.try_wait().unwrap().is_none() {
            workload(&client, &format!("metrics-{rounds}"), 50, 8).await;
            rounds += 1;
        }
        let report = attack_report(attack);
        let attempts = report["connections_opened"].as_u64().unwrap()
            + report["connections_failed"].as_u64().unwrap();
        assert_eq!(attempts, 20_000, "{report}");
        assert!(
            report["connections_closed"].as_u64().unwrap() > 0,
            "the endpoint closed nothing: {report}"
        );
        workload(&client, "after", 50, 8).await;
        for round in 0..rounds {
            check_values(&client, &format!("metrics-{round}"), 50, 7).await;
        }

        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        let layout = Layout::new(&net.path).unwrap();
        let state = State::load(&layout).unwrap();
        let target = state.node(0).unwrap().metrics.unwrap();
        let scraped = scrape(target).unwrap();
        let over = scraped
            .lines()
            .find_map(|line| {
                line.strip_prefix(r#"pbft_metrics_connections_closed_total{reason="over_limit"} "#)
            })
            .and_then(|n| n.parse::<u64>().ok());
        assert!(over.is_some_and(|n| n > 0), "{scraped}");
        for id in 0..4 {
            let log =
                std::fs::read_to_string(net.path.join(format!("logs/node-{id}.log"))).unwrap();
            assert!(!log.contains("durable write failed"), "replica {id}: {log}");
        }
        client.close().await;
    });
}

/// Many connections each announce the longest frame a client may send, send 1 MiB of it and
/// stop: the honest client's small requests do not wait behind them, and the replicas' memory
/// stays bounded.
#[test]
fn unfinished_frames_from_many_connections_do_not_stall_honest_writes() {
    one_at_a_time(async {
        let net = Testnet::up(1, &["--open-clients"]);
        let client = net.client().await;
        let attack = start_attack(&net, "unfinished-frames", 15);
        tokio::time::sleep(Duration::from_secs(3)).await;
        workload(&client, "unfinished", 300, 8).await;
        let report = attack_report(attack);
        assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
        check_values(&client, "unfinished", 300, 1).await;
        converged(&net, &client).await;
        assert_memory_bounded(&net);
        client.close().await;
    });
}

/// A replica process that stops reading (SIGSTOP: it neither reads its socket nor acknowledges
/// anything) while the honest client writes: the others' queues to it stop at their byte
/// bounds, the writes complete without it, and once it reads again it catches up.
#[test]
fn a_replica_that_stops_reading_does_not_stall_the_others() {
    use nix::sys::signal::Signal;
    one_at_a_time(async {
        let net = Testnet::up(1, &[]);
        let client = net.client().await;
        workload(&client, "before", 20, 4).await;
        let layout = Layout::new(&net.path).unwrap();
        let state = State::load(&layout).unwrap();
        let pid = state.node(3).unwrap().pid.unwrap();
        launcher::process::send_signal(pid, Signal::SIGSTOP).unwrap();
        let stopped = Instant::now();
        workload(&client, "stopped", 400, 16).await;
        // Long enough for the others' connections to it to time out.
        let idle = Duration::from_secs(8).saturating_sub(stopped.elapsed());
        tokio::time::sleep(idle).await;
        assert_memory_bounded(&net);
        launcher::process::send_signal(pid, Signal::SIGCONT).unwrap();
        check_values(&client, "stopped", 400, 1).await;
        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        client.close().await;
    });
}

#[test]
fn a_second_up_in_a_used_directory_is_refused_clearly() {
    let _serial = serial();
    let net = Testnet::up(1, &[]);
    let again = ["up", "--detach", "--dir", net.dir(), "--node-bin", BIN];
    let output = testnet(&again);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("running"), "{stderr}");
    assert!(stderr.contains("-- down --dir"), "{stderr}");

    let output = net.run(&["down"]);
    assert!(output.status.success(), "{}", text(&output));
    let status = net.status();
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == false),
        "{status:#}"
    );
    // With every replica down nothing can be compared: unknown, not agreement (exit code 3).
    assert_eq!(status["agreement"], "unknown", "{status:#}");
    assert_eq!(status["compared_pairs"], 0, "{status:#}");
    assert!(net.path.join("logs/node-0.log").exists(), "logs are kept");

    let output = testnet(&again);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("earlier run") && stderr.contains("--force"),
        "{stderr}"
    );

    let mut forced = again.to_vec();
    forced.push("--force");
    let output = testnet(&forced);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn a_missing_node_binary_is_named_with_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let output = testnet(&[
        "up",
        "--detach",
        "--dir",
        net.to_str().unwrap(),
        "--node-bin",
        "/nonexistent/pbft-node",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/pbft-node"), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p pbft-node"),
        "{stderr}"
    );
    assert!(!net.join("testnet.json").exists(), "nothing was written");
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    if port > u16::MAX - 200 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let base = port.to_string();
    let output = testnet(&[
        "up",
        "--detach",
        "--dir",
        net.to_str().unwrap(),
        "--node-bin",
        BIN,
        "--base-port",
        &base,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!net.join("testnet.json").exists(), "nothing was started");
}

#[test]
fn more_byzantine_replicas_than_f_need_allow_unsafe() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let output = testnet(&[
        "up",
        "--detach",
        "--f",
        "1",
        "--byzantine",
        "2",
        "--dir",
        net.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-unsafe"), "{stderr}");
}

#[test]
fn status_of_a_directory_without_a_testnet_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = testnet(&["status", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no testnet"));
}

/// A foreground `up` with a load shows commits, and Ctrl-C stops every replica it started.
#[test]
fn ctrl_c_stops_a_foreground_testnet() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--f",
            "1",
            "--byzantine",
            "1",
            "--load",
            "100",
            "--dir",
            net.to_str().unwrap(),
            "--node-bin",
            BIN,
            "--view-change-timeout-ms",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stops the replicas if anything below fails.
    struct Guard<'a>(&'a Path);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.0.join("testnet.json").exists() {
                let _ = launcher::down(self.0);
            }
        }
    }
    let _guard = Guard(&net);
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let remaining = CONVERGENCE.saturating_sub(start.elapsed());
        let line = received
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("no commits shown: {seen:#?}"));
        // One line per refresh when stdout is not a terminal: "[  3s] committed 120 requests".
        let committed = line
            .strip_prefix('[')
            .and_then(|rest| rest.split("committed ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        seen.push(line);
        if committed.is_some_and(|n| n > 0) {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let exit = child.wait().unwrap();
    drop(received);
    let _ = reader.join();
    assert!(exit.success(), "{exit:?}: {seen:#?}");
    let layout = Layout::new(&net).unwrap();
    let state = State::load(&layout).unwrap();
    for node in &state.nodes {
        assert!(
            !launcher::process::node_alive(&layout, node),
            "replica {} still runs",
            node.id
        );
    }
}

/// A client that opens one session with the largest id, then thousands of one-request
/// sessions, expires only its own key's sessions: afterwards another key's fresh sessions
/// execute, while the churning key's new sessions are refused as expired.
#[test]
fn a_session_churning_client_locks_out_only_its_own_key() {
    one_at_a_time(async {
        let net = Testnet::up(1, &["--byzantine", "0", "--open-clients"]);
        let output = Command::new(BIN)
            .args(["attack", "session-churn", "--dir", net.dir()])
            .args(["--duration", "8", "--interval-ms", "50"])
            .output()
            .expect("testnet attack runs");
        assert!(output.status.success(), "{}", text(&output));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        // More sessions than one key may hold (1024), so the largest id expired.
        assert!(report["messages"].as_u64().unwrap() > 2048, "{report}");

        let other = net
            .client_with(Some(pbft_crypto::KeyPair::generate()))
            .await;
        workload(&other, "after-churn", 50, 4).await;
        check_values(&other, "after-churn", 50, 1).await;

        let churner = net.client().await;
        let refused = churner.put("churner", "x").await;
        assert!(
            matches!(refused, Err(pbft_client::ClientError::SessionExpired)),
            "{refused:?}"
        );
        churner.close().await;
        converged(&net, &other).await;
        other.close().await;
    });
}

/// A backup killed and restarted while the cluster holds about 100 MB of state and a steady
/// load goes on catches up before the load stops: its fetch is not restarted by each newer
/// stable checkpoint (its peers keep serving the previous one), and it then catches up from
/// the committed batches its peers keep. Prints how long it took, in checkpoints and seconds.
#[test]
fn a_replica_restarted_under_load_with_a_large_state_catches_up_while_the_load_goes_on() {
    one_at_a_time(async {
        let net = Testnet::up(1, &["--byzantine", "0"]);
        let client = net.client().await;
        // About 100 MB of state: 1,700 values of 60 KiB.
        let mut writers = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let client = client.clone();
            writers.spawn(async move {
                for i in (worker..1_700).step_by(16) {
                    let value = vec![(i % 251) as u8; 60 << 10];
                    client.put(format!("big-{i}"), value).await.unwrap();
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }

        let output = net.run(&["kill", "3"]);
        assert!(output.status.success(), "{}", text(&output));
        let (running, acknowledged) = background_workload(&client, "steady", 1_000_000, 8);
        // Every checkpoint copies, hashes and writes the whole 100 MB state at each replica, so
        // on a loaded machine this takes minutes.
        until_acknowledged_within(&acknowledged, 3_000, 4 * CONVERGENCE).await;
        let output = net.run(&["restart", "3"]);
        assert!(output.status.success(), "{}", text(&output));

        let restarted = Instant::now();
        let mut first_stable = None;
        let caught_up = loop {
            assert!(
                restarted.elapsed() < 4 * CONVERGENCE,
                "replica 3 did not catch up while the load went on"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let statuses = client.status_all(Duration::from_secs(5)).await;
            let position = |id: u32| {
                statuses
                    .iter()
                    .find(|(r, _)| *r == id)
                    .and_then(|(_, s)| s.as_ref().ok())
                    .map(|s| (s.last_executed, s.stable_checkpoint))
            };
            let (Some((_, stable)), Some((executed, _))) = (position(0), position(3)) else {
                continue;
            };
            let first = *first_stable.get_or_insert(stable);
            if executed >= stable && stable > first {
                break (first, stable, restarted.elapsed());
            }
        };
        assert!(
            !running.is_finished(),
            "the load was still going when replica 3 caught up"
        );
        running.abort();
        let (first, stable, took) = caught_up;
        eprintln!(
            "replica 3 caught up {:.1} s after its restart, while the cluster's stable checkpoint \
             moved from {first} to {stable}",
            took.as_secs_f64()
        );
        let status = converged(&net, &client).await;
        assert_eq!(correct(&status).len(), 4, "{status:#}");
        let log = std::fs::read_to_string(net.path.join("logs/node-3.log")).unwrap();
        eprintln!(
            "replica 3 started {} state fetches",
            log.matches("fetching state in chunks").count()
        );
        client.close().await;
    });
}

/// `testnet hosts` writes what four machines need; started from those files alone (here on
/// four loopback ports), the replicas form a cluster that the written client configuration
/// reaches.
#[test]
fn the_files_testnet_hosts_writes_run_a_cluster() {
    one_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cluster");
        let ports: Vec<u16> = (0..4)
            .map(|_| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.local_addr().unwrap().port()
            })
            .collect();
        let mut args = vec![
            "hosts".to_string(),
            "--f".into(),
            "1".into(),
            "--out".into(),
            out.display().to_string(),
            "--metrics-port".into(),
            "0".into(),
        ];
        args.extend(ports.iter().map(|port| format!("127.0.0.1:{port}")));
        let output = Command::new(BIN).args(&args).output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let printed = String::from_utf8_lossy(&output.stdout);
        for port in &ports {
            assert!(
                printed.contains(&format!("open UDP {port} inbound")),
                "{printed}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(out.join("host-2")), 0o700);
            assert_eq!(mode(out.join("host-2/replica.key")), 0o600);
            assert_eq!(mode(out.join("client/client.key")), 0o600);
        }

        let mut replicas: Vec<std::process::Child> = (0..4)
            .map(|i| {
                let host = out.join(format!("host-{i}"));
                Command::new(BIN)
                    .args(["node", "--config"])
                    .arg(host.join("node.toml"))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(host.join("node.log")).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let setup = pbft_client::load_client_config(out.join("client/client.toml")).unwrap();
        let client = Client::connect(setup).await.unwrap();
        let result = tokio::time::timeout(CONVERGENCE, async {
            client.put("across", "hosts").await.unwrap();
            client.get("across").await.unwrap()
        })
        .await;
        client.close().await;
        for replica in &mut replicas {
            let _ = replica.kill();
            let _ = replica.wait();
        }
        let logs: String = (0..4)
            .map(|i| std::fs::read_to_string(out.join(format!("host-{i}/node.log"))).unwrap())
            .collect();
        let value = result.unwrap_or_else(|_| panic!("no answer within the deadline:\n{logs}"));
        assert_eq!(value.as_deref(), Some(&b"hosts"[..]), "{logs}");
    });
}

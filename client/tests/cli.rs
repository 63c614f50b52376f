//! The `pbft-client` binary as scripts use it: many processes sharing one configuration file,
//! their histories linearizable; exit codes that tell a negative answer from an unavailable
//! cluster; a key the replicas do not admit. The replicas run in this process (real QUIC on
//! 127.0.0.1); every client is a real process. Nothing here asserts timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pbft_config::ReplicaEntry;
use pbft_core::app::{KvOp, KvResult};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::fixtures::history::{self, Operation};
use pbft_core::protocol::ProtocolConfig;
use pbft_crypto::KeyPair;
use pbft_net::ClientPolicy;
use pbft_node::local::loopback_cluster;
use pbft_node::runtime::RunningNode;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_pbft-client");

/// One cluster at a time: the machine may have two cores for everything.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Four replicas admitting only the key of `client.toml`, replica 0 (the view-0 primary) with
/// `primary_behavior`, and a directory holding the client's configuration.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    nodes: Vec<RunningNode>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(primary_behavior: Option<BehaviorKind>) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let protocol = ProtocolConfig {
            view_change_timeout: Duration::from_millis(1000),
            ..ProtocolConfig::default()
        };
        let mut setups = loopback_cluster(1, protocol, &dir.path().join("data")).unwrap();
        let client_key = KeyPair::generate();
        client_key.save(&dir.path().join("client.key")).unwrap();
        let config = pbft_client::ClientConfigFile {
            key_file: "client.key".into(),
            f: 1,
            replicas: setups[0]
                .peers
                .iter()
                .map(|peer| ReplicaEntry {
                    id: peer.id,
                    address: peer.addr,
                    public_key: peer.public_key.to_hex(),
                })
                .collect(),
        };
        std::fs::write(
            dir.path().join("client.toml"),
            toml::to_string(&config).unwrap(),
        )
        .unwrap();
        for setup in &mut setups {
            setup.committee = (setup.committee.clone()).with_clients(ClientPolicy::Allow(
                [client_key.public()].into_iter().collect(),
            ));
        }
        setups[0].behavior = primary_behavior;
        let nodes = runtime.block_on(async {
            let mut nodes = Vec::new();
            for setup in setups {
                nodes.push(RunningNode::start(setup).await.unwrap());
            }
            nodes
        });
        Cluster {
            runtime,
            nodes,
            dir,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// Stops every replica; the configuration stays.
    fn stop(self) -> tempfile::TempDir {
        let Cluster {
            runtime,
            nodes,
            dir,
        } = self;
        runtime.block_on(async {
            for node in nodes {
                node.stop().await;
            }
        });
        dir
    }
}

fn client(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("pbft-client runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs one operation as a `pbft-client` process and reads its answer back as the store's
/// result. Anything but an answer (exit 2 or 3, or output that does not parse) fails the test.
fn run_operation(config: &Path, op: &KvOp) -> KvResult {
    let show = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    let args: Vec<String> = match op {
        KvOp::Put { key, value } => vec!["put".into(), show(key), show(value)],
        KvOp::Get { key } => vec!["get".into(), show(key)],
        KvOp::Cas {
            key,
            expected: Some(expected),
            new,
        } => vec!["cas".into(), show(key), show(expected), show(new)],
        KvOp::Cas {
            key,
            expected: None,
            new,
        } => vec!["cas".into(), "--absent".into(), show(key), show(new)],
        KvOp::Delete { .. } => unreachable!("not used here"),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = client(config, &args);
    let stdout = String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string();
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    match (op, output.status.code()) {
        (KvOp::Put { .. }, Some(0)) if stdout == "ok" => KvResult::Done,
        (KvOp::Get { .. }, Some(0)) => KvResult::Value(Some(stdout.into_bytes())),
        (KvOp::Get { .. }, Some(1)) if stderr.starts_with("not found:") => KvResult::Value(None),
        (KvOp::Cas { .. }, Some(0)) if stdout == "ok" => KvResult::Done,
        (KvOp::Cas { .. }, Some(1)) if stderr == "mismatch: the key is absent" => {
            KvResult::CasFailed(None)
        }
        (KvOp::Cas { .. }, Some(1)) => match stderr.strip_prefix("mismatch: current value is ") {
            Some(current) => KvResult::CasFailed(Some(current.as_bytes().to_vec())),
            None => panic!("{op:?}: {}", text(&output)),
        },
        _ => panic!("{op:?}: {}", text(&output)),
    }
}

/// `workers` processes at a time, each running `per_worker` random puts, gets and compare-and-
/// swaps on three shared keys; returns the history.
fn concurrent_history(config: &Path, workers: usize, per_worker: usize) -> Vec<Operation> {
    let start = Instant::now();
    let since = move || start.elapsed().as_nanos() as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(worker as u64);
                    let mut history = Vec::new();
                    let mut last_seen: Option<Vec<u8>> = None;
                    for i in 0..per_worker {
                        let key = format!("k{}", rng.random_range(0..3)).into_bytes();
                        let value = format!("w{worker}-{i}").into_bytes();
                        let op = match rng.random_range(0..3) {
                            0 => KvOp::Put { key, value },
                            1 => KvOp::Get { key },
                            _ => KvOp::Cas {
                                key,
                                expected: last_seen.clone(),
                                new: value,
                            },
                        };
                        let invoked = since();
                        let result = run_operation(config, &op);
                        let returned = since();
                        if let KvResult::Value(value) | KvResult::CasFailed(value) = &result {
                            last_seen = value.clone();
                        }
                        history.push(Operation {
                            op,
                            result: Some(result),
                            invoked,
                            returned,
                        });
                    }
                    history
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a worker panicked"))
            .collect()
    })
}

#[test]
fn eight_processes_sharing_one_config_stay_linearizable_under_an_equivocating_primary() {
    let _serial = serial();
    let cluster = Cluster::start(Some(BehaviorKind::Equivocate));
    let history = concurrent_history(&cluster.config(), 8, 12);
    assert_eq!(history.len(), 96, "every operation got an answer");
    if let Err(violation) = history::check(&history) {
        panic!("not linearizable: {violation:#?}");
    }
    cluster.stop();
}

#[test]
fn exit_codes_tell_a_negative_answer_from_an_unavailable_cluster() {
    let _serial = serial();
    let cluster = Cluster::start(None);
    let config = cluster.config();
    let code = |output: &Output| output.status.code();

    let put = client(&config, &["put", "k", "v"]);
    assert_eq!(code(&put), Some(0), "{}", text(&put));
    let get = client(&config, &["get", "k"]);
    assert_eq!((code(&get), get.stdout.as_slice()), (Some(0), &b"v\n"[..]));
    let ordered = client(&config, &["get", "--ordered", "k"]);
    assert_eq!(code(&ordered), Some(0), "{}", text(&ordered));

    let missing = client(&config, &["get", "missing"]);
    assert_eq!(code(&missing), Some(1), "{}", text(&missing));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr),
        "not found: missing\n"
    );
    let mismatch = client(&config, &["cas", "k", "other", "new"]);
    assert_eq!(code(&mismatch), Some(1), "{}", text(&mismatch));

    let usage = client(&config, &["cas", "k"]);
    assert_eq!(code(&usage), Some(2), "{}", text(&usage));
    let no_config = client(Path::new("/nonexistent/client.toml"), &["get", "k"]);
    assert_eq!(code(&no_config), Some(2), "{}", text(&no_config));

    // A key the replicas do not admit gets nothing, and every replica counts the refusal.
    let stranger = KeyPair::generate();
    stranger
        .save(&cluster.dir.path().join("stranger.key"))
        .unwrap();
    let stranger_config = cluster.dir.path().join("stranger.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &stranger_config,
        original.replace("client.key", "stranger.key"),
    )
    .unwrap();
    let refused = client(&stranger_config, &["--timeout", "3", "put", "x", "y"]);
    assert_eq!(code(&refused), Some(3), "{}", text(&refused));
    let statuses = cluster.runtime.block_on(async {
        let mut statuses = Vec::new();
        for node in &cluster.nodes {
            statuses.push(node.status().await.unwrap());
        }
        statuses
    });
    for status in statuses {
        let refusals = (status.rejected.iter())
            .find(|(reason, _)| reason == "client_not_admitted")
            .map_or(0, |(_, count)| *count);
        assert!(refusals > 0, "replica {} did not count it", status.replica);
    }

    let _dir = cluster.stop();
    let down = client(&config, &["--timeout", "2", "get", "k"]);
    assert_eq!(code(&down), Some(3), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stderr).starts_with("unavailable:"),
        "{}",
        text(&down)
    );
}

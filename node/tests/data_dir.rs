//! The data directory: `pbft-node run` refuses one never initialised, one whose log is gone,
//! one of another replica, and one another process holds; `init --rejoin` brings back a
//! replica that lost its data, silent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pbft_config::{ClientAccess, ReplicaEntry};
use pbft_core::app::KvStore;
use pbft_core::protocol::{Durable, ProtocolConfig, Replica};
use pbft_crypto::KeyPair;
use pbft_net::TransportConfig;
use pbft_node::config::{load_node_config, NodeConfigFile};
use pbft_node::data_dir::{self, DataDirError};
use pbft_node::storage::ReplicaStore;

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i + 1; 32]).unwrap()
}

/// Keys and a configuration file for each replica of a four-replica cluster, in a temporary
/// directory; replica i keeps its data in `data/replica-i`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        for i in 0..4u8 {
            key(i)
                .save(&dir.path().join(format!("keys/replica-{i}.key")))
                .unwrap();
            let config = NodeConfigFile {
                id: i.into(),
                key_file: format!("keys/replica-{i}.key").into(),
                listen: format!("127.0.0.1:{}", 7000 + u16::from(i))
                    .parse()
                    .unwrap(),
                data_dir: format!("data/replica-{i}").into(),
                metrics: None,
                metrics_server: Default::default(),
                log: Default::default(),
                behavior: None,
                f: 1,
                protocol: ProtocolConfig::default(),
                transport: TransportConfig::default(),
                storage: Default::default(),
                clients: ClientAccess::open(),
                replicas: (0..4u8)
                    .map(|j| ReplicaEntry {
                        id: j.into(),
                        address: format!("127.0.0.1:{}", 7000 + u16::from(j))
                            .parse()
                            .unwrap(),
                        public_key: key(j).public().to_hex(),
                    })
                    .collect(),
            };
            std::fs::write(
                dir.path().join(format!("node-{i}.toml")),
                toml::to_string(&config).unwrap(),
            )
            .unwrap();
        }
        Fixture { dir }
    }

    fn config(&self, i: u8) -> PathBuf {
        self.dir.path().join(format!("node-{i}.toml"))
    }

    fn data(&self, i: u8) -> PathBuf {
        self.dir.path().join(format!("data/replica-{i}"))
    }

    fn run(&self, i: u8) -> Output {
        pbft_node(&["run", "--config", self.config(i).to_str().unwrap()])
    }

    fn init(&self, i: u8, rejoin: bool) -> Output {
        let config = self.config(i);
        let mut args = vec!["init", "--config", config.to_str().unwrap()];
        if rejoin {
            args.push("--rejoin");
        }
        pbft_node(&args)
    }
}

fn pbft_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbft-node"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The output failed with exit code 2 and an error naming `dir` and saying `what`.
fn refused(output: &Output, dir: &Path, what: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(text.contains(what), "{text}");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wal"))
        .collect()
}

#[test]
fn run_refuses_a_data_directory_never_initialised() {
    let fixture = Fixture::new();
    // Missing altogether, then present and empty.
    let output = fixture.run(0);
    refused(&output, &fixture.data(0), "was never initialised");
    assert!(stderr(&output).contains("pbft-node init --config"));
    std::fs::create_dir_all(fixture.data(0)).unwrap();
    refused(&fixture.run(0), &fixture.data(0), "was never initialised");
    // Nothing was written that would let a second attempt pass.
    refused(&fixture.run(0), &fixture.data(0), "was never initialised");
}

#[test]
fn init_writes_the_first_record_and_refuses_to_run_twice() {
    let fixture = Fixture::new();
    let output = fixture.init(1, false);
    assert!(output.status.success(), "{}", stderr(&output));
    let opened = ReplicaStore::open(&fixture.data(1), false, 256).unwrap();
    assert_eq!(opened.records, vec![Durable::Created { rejoining: false }]);
    refused(
        &fixture.init(1, false),
        &fixture.data(1),
        "already initialised",
    );
    // A replica's directory is not another's.
    let mut config: NodeConfigFile =
        toml::from_str(&std::fs::read_to_string(fixture.config(2)).unwrap()).unwrap();
    config.data_dir = "data/replica-1".into();
    std::fs::write(fixture.config(2), toml::to_string(&config).unwrap()).unwrap();
    refused(&fixture.run(2), &fixture.data(1), "belongs to replica 1");
    // A directory holding anything else is not taken over.
    std::fs::create_dir_all(fixture.data(3)).unwrap();
    std::fs::write(fixture.data(3).join("notes.txt"), "mine").unwrap();
    refused(&fixture.init(3, false), &fixture.data(3), "is not empty");
}

#[test]
fn run_refuses_a_data_directory_whose_log_was_lost() {
    let fixture = Fixture::new();
    assert!(fixture.init(0, false).status.success());
    assert!(fixture.init(1, false).status.success());
    // Replica 0's segments are deleted; replica 1's are emptied.
    for path in segments(&fixture.data(0)) {
        std::fs::remove_file(path).unwrap();
    }
    let emptied = segments(&fixture.data(1));
    assert!(!emptied.is_empty());
    for path in emptied {
        std::fs::write(path, b"").unwrap();
    }
    for i in [0, 1] {
        let output = fixture.run(i);
        refused(&output, &fixture.data(i), "its write-ahead log is gone");
        assert!(stderr(&output).contains("init --rejoin"));
    }
}

/// A directory written by a release of another format version (a marker without a version is
/// version 1) is refused with both versions named, before anything of it is read.
#[test]
fn run_refuses_a_data_directory_of_another_format_version() {
    let fixture = Fixture::new();
    assert!(fixture.init(0, false).status.success());
    let marker_path = fixture.data(0).join(data_dir::MARKER_FILE);
    let marker = std::fs::read_to_string(&marker_path).unwrap();
    assert!(
        marker.contains(&format!("format = {}", data_dir::DATA_FORMAT)),
        "{marker}"
    );
    let unversioned: String = (marker.lines())
        .filter(|line| !line.starts_with("format"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&marker_path, unversioned).unwrap();
    let output = fixture.run(0);
    refused(&output, &fixture.data(0), "holds format version 1");
    assert!(
        stderr(&output).contains(&format!("reads version {}", data_dir::DATA_FORMAT)),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_second_process_on_a_locked_data_directory_is_refused() {
    let fixture = Fixture::new();
    assert!(fixture.init(0, false).status.success());
    let held = data_dir::lock(&fixture.data(0)).unwrap();
    refused(
        &fixture.run(0),
        &fixture.data(0),
        "in use by another process",
    );
    refused(
        &fixture.init(0, true),
        &fixture.data(0),
        "in use by another process",
    );
    // Within one process too: a lock is held per open file.
    match data_dir::lock(&fixture.data(0)) {
        Err(DataDirError::Locked(dir)) => assert_eq!(dir, fixture.data(0)),
        other => panic!("expected the lock to be refused, got {other:?}"),
    }
    drop(held);
    // Released: another test's child process may still hold a copy of the descriptor for the
    // instant between its fork and its exec, so the lock is taken again within a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match data_dir::lock(&fixture.data(0)) {
            Ok(_) => break,
            Err(DataDirError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("the released lock could not be taken again: {e}"),
        }
    }
}

#[test]
fn init_rejoin_brings_back_a_replica_that_lost_its_data_silent() {
    let fixture = Fixture::new();
    assert!(fixture.init(2, false).status.success());
    // A directory that still has its log needs no rejoin.
    refused(
        &fixture.init(2, true),
        &fixture.data(2),
        "still holds a write-ahead log",
    );
    for path in segments(&fixture.data(2)) {
        std::fs::remove_file(path).unwrap();
    }
    let output = fixture.init(2, true);
    assert!(output.status.success(), "{}", stderr(&output));
    let opened = ReplicaStore::open(&fixture.data(2), false, 256).unwrap();
    assert_eq!(opened.records, vec![Durable::Created { rejoining: true }]);
    let marker = std::fs::read_to_string(fixture.data(2).join(data_dir::MARKER_FILE)).unwrap();
    assert!(marker.contains("rejoin = true"), "{marker}");

    // What `run` rebuilds from it is a replica that signs nothing yet.
    let setup = load_node_config(&fixture.config(2)).unwrap();
    data_dir::check(&setup.data_dir, setup.id, &setup.committee).unwrap();
    let (replica, _) = Replica::recover(
        setup.id,
        setup.committee.clone(),
        setup.protocol.clone(),
        setup.key.clone(),
        Box::new(KvStore::new()),
        opened.records,
    )
    .unwrap();
    assert!(replica.status().silent);
    assert_eq!(replica.rejoin().unwrap().point, None);
}

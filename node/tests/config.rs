//! Loading replica configuration files: a valid file gives the expected setup, and every
//! mistake gives a message naming the file and the field. Also the `pbft-node` binary's key
//! commands and its configuration errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pbft_config::{ClientAccess, ClusterConfig, ConfigError, ReplicaEntry};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::protocol::ProtocolConfig;
use pbft_crypto::KeyPair;
use pbft_net::ClientPolicy;
use pbft_net::TransportConfig;
use pbft_node::config::{load_node_config, NodeConfigFile};

/// The encoding of the identity point, which has small order.
const WEAK_KEY: &str = "0100000000000000000000000000000000000000000000000000000000000000";

/// Writes `text` to a new file readable by its owner only, as key files must be.
fn write_key_file(path: &Path, text: &str) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path).unwrap(), text.as_bytes()).unwrap();
}

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i + 1; 32]).unwrap()
}

/// A directory holding `keys/replica-{i}.key` for four replicas.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        for i in 0..4 {
            key(i)
                .save(&dir.path().join(format!("keys/replica-{i}.key")))
                .unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid configuration for replica 0 of a four-replica cluster.
    fn config(&self) -> NodeConfigFile {
        NodeConfigFile {
            id: 0,
            key_file: "keys/replica-0.key".into(),
            listen: "127.0.0.1:7000".parse().unwrap(),
            data_dir: "data/replica-0".into(),
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
                .map(|i| ReplicaEntry {
                    id: i.into(),
                    address: format!("127.0.0.1:{}", 7000 + u16::from(i))
                        .parse()
                        .unwrap(),
                    public_key: key(i).public().to_hex(),
                })
                .collect(),
        }
    }

    fn write(&self, config: &NodeConfigFile) -> PathBuf {
        self.write_text(&toml::to_string(config).unwrap())
    }

    fn write_text(&self, text: &str) -> PathBuf {
        let path = self.path("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Loads `config` and returns the error, which must name `field`.
    fn error(&self, config: &NodeConfigFile, field: &str) -> String {
        let path = self.write(config);
        let error = load_node_config(&path).expect_err("the configuration should be refused");
        assert_eq!(error.field(), Some(field), "{error}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}: {field}: ", path.display())),
            "{message}"
        );
        message
    }
}

#[test]
fn a_valid_config_loads_into_the_expected_setup() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.id = 2;
    config.key_file = "keys/replica-2.key".into();
    config.listen = "0.0.0.0:7002".parse().unwrap();
    config.data_dir = "data/replica-2".into();
    config.metrics = Some("127.0.0.1:9002".parse().unwrap());
    config.behavior = Some("silent".into());
    config.replicas.reverse(); // order in the file does not matter
                               // Tables may follow the [[replicas]] array.
    let text = format!(
        "{}\n[protocol]\ncheckpoint_interval = 64\nlog_window = 192\nmax_outstanding = 4\n\
         view_change_timeout_ms = 1500\nretransmit_interval_ms = 250\nclient_window = 99\n\
         [protocol.limits]\nmax_op_bytes = 1000\n\
         [transport]\nqueue_capacity = 77\nkeep_alive_ms = 300\nidle_timeout_ms = 900\n",
        toml::to_string(&config).unwrap()
    );
    let path = fixture.write_text(&text);

    let setup = load_node_config(&path).unwrap();
    assert_eq!(setup.id, 2);
    assert_eq!(setup.key.public(), key(2).public());
    assert_eq!(setup.listen, "0.0.0.0:7002".parse().unwrap());
    assert_eq!(setup.committee.n(), 4);
    assert_eq!(setup.committee.f(), 1);
    for i in 0..4u8 {
        assert_eq!(setup.committee.key(i.into()), Some(&key(i).public()));
        let peer = &setup.peers[usize::from(i)];
        assert_eq!(peer.id, u32::from(i));
        assert_eq!(peer.public_key, key(i).public());
        assert_eq!(peer.addr.port(), 7000 + u16::from(i));
    }
    assert_eq!(setup.data_dir, fixture.path("data/replica-2"));
    assert_eq!(setup.metrics, Some("127.0.0.1:9002".parse().unwrap()));
    assert_eq!(setup.behavior, Some(BehaviorKind::Silent));

    let defaults = ProtocolConfig::default();
    let protocol = &setup.protocol;
    assert_eq!(protocol.checkpoint_interval, 64);
    assert_eq!(protocol.log_window, 192);
    assert_eq!(protocol.limits.log_window, 192);
    assert_eq!(protocol.max_outstanding, 4);
    assert_eq!(protocol.view_change_timeout, Duration::from_millis(1500));
    assert_eq!(protocol.retransmit_interval, Duration::from_millis(250));
    assert_eq!(protocol.client_window, 99);
    assert_eq!(protocol.limits.max_op_bytes, 1000);
    assert_eq!(protocol.max_batch_requests, defaults.max_batch_requests);
    assert_eq!(
        protocol.limits.max_message_bytes,
        defaults.limits.max_message_bytes
    );

    assert_eq!(setup.transport.queue_capacity, 77);
    assert_eq!(setup.transport.keep_alive, Duration::from_millis(300));
    assert_eq!(setup.transport.idle_timeout, Duration::from_millis(900));
    assert_eq!(
        setup.transport.max_frame() as u64,
        defaults.limits.max_message_bytes
    );
    assert_eq!(
        setup.transport.max_client_frame() as u64,
        protocol.limits.max_client_message_bytes()
    );
}

#[test]
fn omitted_sections_take_the_defaults() {
    let fixture = Fixture::new();
    let path = fixture.write(&fixture.config());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("[protocol]") && !text.contains("behavior"),
        "{text}"
    );
    let setup = load_node_config(&path).unwrap();
    assert_eq!(setup.protocol, ProtocolConfig::default());
    assert_eq!(setup.behavior, None);
    assert_eq!(setup.metrics, None);
    let transport = TransportConfig::default();
    assert_eq!(setup.transport.queue_capacity, transport.queue_capacity);
    assert_eq!(setup.transport.idle_timeout, transport.idle_timeout);
}

#[test]
fn the_file_format_round_trips() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.metrics = Some("127.0.0.1:9000".parse().unwrap());
    config.behavior = Some("equivocate-split".into());
    config.protocol.log_window = 512;
    config.protocol.limits.max_op_bytes = 10;
    config.transport.max_connections = 5;
    let text = toml::to_string(&config).unwrap();
    let parsed: NodeConfigFile = toml::from_str(&text).unwrap();
    assert_eq!(parsed, config);
}

#[test]
fn a_missing_config_file_is_reported() {
    let fixture = Fixture::new();
    let path = fixture.path("nowhere.toml");
    let error = load_node_config(&path).unwrap_err();
    assert!(matches!(error, ConfigError::NotFound { .. }));
    assert_eq!(
        error.to_string(),
        format!("config file {} does not exist", path.display())
    );
}

#[test]
fn a_toml_syntax_error_gives_its_line() {
    let fixture = Fixture::new();
    let path = fixture.write_text("id = 0\nkey_file = \"k\"\nlisten = \n");
    let error = load_node_config(&path).unwrap_err();
    let ConfigError::Parse { line, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*line, Some(3), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}: line 3, column ", path.display())),
        "{message}"
    );
}

#[test]
fn a_missing_field_is_named() {
    let fixture = Fixture::new();
    let text = toml::to_string(&fixture.config()).unwrap();
    let text: String = text
        .lines()
        .filter(|line| !line.starts_with("listen"))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = fixture.write_text(&text);
    let message = load_node_config(&path).unwrap_err().to_string();
    assert_eq!(
        message,
        format!("{}: missing field `listen`", path.display())
    );
}

#[test]
fn a_misspelt_field_is_refused() {
    let fixture = Fixture::new();
    let text = toml::to_string(&fixture.config()).unwrap();
    let path = fixture.write_text(&format!("metric = \"127.0.0.1:9000\"\n{text}"));
    let message = load_node_config(&path).unwrap_err().to_string();
    assert!(message.contains("line 1"), "{message}");
    assert!(message.contains("unknown field `metric`"), "{message}");
}

#[test]
fn a_bad_address_gives_its_line() {
    let fixture = Fixture::new();
    let text = toml::to_string(&fixture.config()).unwrap();
    let text = text.replace("listen = \"127.0.0.1:7000\"", "listen = \"localhost:7000\"");
    let line = text.lines().position(|l| l.starts_with("listen")).unwrap() + 1;
    let path = fixture.write_text(&text);
    let message = load_node_config(&path).unwrap_err().to_string();
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(message.contains("socket address"), "{message}");
}

#[test]
fn a_missing_key_file_is_reported() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.key_file = "keys/absent.key".into();
    let message = fixture.error(&config, "key_file");
    assert!(
        message.contains("keys/absent.key does not exist"),
        "{message}"
    );
    assert!(message.contains("pbft-node keygen"), "{message}");
}

#[test]
fn a_garbage_key_file_is_reported() {
    let fixture = Fixture::new();
    write_key_file(&fixture.path("keys/garbage.key"), "hello\nworld\n");
    let mut config = fixture.config();
    config.key_file = "keys/garbage.key".into();
    let message = fixture.error(&config, "key_file");
    assert!(message.contains("not a key file"), "{message}");
}

#[cfg(unix)]
#[test]
fn a_key_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    let path = fixture.path("keys/replica-0.key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let message = fixture.error(&fixture.config(), "key_file");
    assert!(message.contains("keys/replica-0.key"), "{message}");
    assert!(message.contains("mode 0644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn a_non_loopback_metrics_address_must_be_public() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.metrics = Some("0.0.0.0:9000".parse().unwrap());
    let message = fixture.error(&config, "metrics_server.public");
    assert!(message.contains("0.0.0.0:9000"), "{message}");
    config.metrics_server.public = true;
    let path = fixture.write(&config);
    assert!(load_node_config(&path).is_ok());
}

#[test]
fn an_unreadable_key_file_is_reported() {
    let fixture = Fixture::new();
    std::fs::create_dir(fixture.path("keys/dir.key")).unwrap();
    let mut config = fixture.config();
    config.key_file = "keys/dir.key".into();
    let message = fixture.error(&config, "key_file");
    assert!(message.contains("cannot use"), "{message}");
}

#[test]
fn a_key_file_of_another_replica_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.key_file = "keys/replica-1.key".into();
    let message = fixture.error(&config, "key_file");
    assert!(message.contains(&key(1).public().to_hex()), "{message}");
    assert!(
        message.contains(&format!(
            "but replicas[0].public_key lists {} for replica 0",
            key(0).public().to_hex()
        )),
        "{message}"
    );
}

#[test]
fn a_weak_key_in_the_cluster_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[2].public_key = WEAK_KEY.into();
    let message = fixture.error(&config, "replicas[2].public_key");
    assert!(message.contains("weak (small-order)"), "{message}");
}

#[test]
fn an_invalid_key_in_the_cluster_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[3].public_key = "abcd".into();
    let message = fixture.error(&config, "replicas[3].public_key");
    assert!(message.contains("64 hex digits"), "{message}");
}

#[test]
fn a_duplicate_id_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[2].id = 1;
    let message = fixture.error(&config, "replicas[2].id");
    assert!(
        message.ends_with("replica id 1 is listed twice (also replicas[1])"),
        "{message}"
    );
}

#[test]
fn a_duplicate_key_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[3].public_key = config.replicas[1].public_key.clone();
    let message = fixture.error(&config, "replicas[3].public_key");
    assert!(
        message.contains("the same key as replicas[1] (replica 1)"),
        "{message}"
    );
}

#[test]
fn a_duplicate_address_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[3].address = config.replicas[2].address;
    let message = fixture.error(&config, "replicas[3].address");
    assert!(
        message.contains("also the address of replicas[2]"),
        "{message}"
    );
}

#[test]
fn an_undialable_address_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[1].address = "0.0.0.0:7001".parse().unwrap();
    let message = fixture.error(&config, "replicas[1].address");
    assert!(message.contains("cannot be dialed"), "{message}");
}

#[test]
fn a_cluster_of_the_wrong_size_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas.push(ReplicaEntry {
        id: 4,
        address: "127.0.0.1:7004".parse().unwrap(),
        public_key: key(4).public().to_hex(),
    });
    let message = fixture.error(&config, "replicas");
    assert!(
        message.ends_with("the cluster lists 5 replicas but f = 1 needs 3f+1 = 4"),
        "{message}"
    );
}

#[test]
fn f_zero_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.f = 0;
    let message = fixture.error(&config, "f");
    assert!(message.contains("at least 1"), "{message}");
}

#[test]
fn ids_must_be_zero_to_n_minus_one() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[3].id = 9;
    let message = fixture.error(&config, "replicas[3].id");
    assert!(
        message.contains("replica id 9 is out of range: with 4 replicas the ids are 0 to 3"),
        "{message}"
    );
}

#[test]
fn an_id_not_in_the_cluster_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.id = 7;
    let message = fixture.error(&config, "id");
    assert!(
        message.ends_with("replica 7 is not in the cluster, whose ids are 0 to 3"),
        "{message}"
    );
}

#[test]
fn a_listen_port_other_than_the_listed_one_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.listen = "127.0.0.1:7100".parse().unwrap();
    let message = fixture.error(&config, "listen");
    assert!(
        message.contains("port 7100 differs from replicas[0].address 127.0.0.1:7000"),
        "{message}"
    );
}

#[test]
fn an_unknown_behavior_is_refused() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.behavior = Some("sneaky".into());
    let message = fixture.error(&config, "behavior");
    assert!(
        message.contains("unknown behaviour \"sneaky\""),
        "{message}"
    );
}

#[test]
fn bad_protocol_and_transport_values_are_named() {
    let cases: [(&str, &str, &str); 18] = [
        (
            "[protocol]\ncheckpoint_interval = 0",
            "protocol.checkpoint_interval",
            "must be positive",
        ),
        (
            "[protocol]\ncheckpoint_interval = 100\nlog_window = 250",
            "protocol.log_window",
            "250 must be a multiple of protocol.checkpoint_interval (100) and at least twice it",
        ),
        (
            "[protocol]\nlog_window = 128",
            "protocol.log_window",
            "at least twice",
        ),
        (
            "[protocol]\nmax_batch_requests = 0",
            "protocol.max_batch_requests",
            "must be positive",
        ),
        (
            "[protocol]\nmax_outstanding = 0",
            "protocol.max_outstanding",
            "must be positive",
        ),
        (
            "[protocol]\nview_change_timeout_ms = 0",
            "protocol.view_change_timeout_ms",
            "must be positive",
        ),
        (
            "[protocol]\nview_change_timeout_ms = 5000\nmax_view_change_timeout_ms = 1000",
            "protocol.max_view_change_timeout_ms",
            "below protocol.view_change_timeout_ms (5000)",
        ),
        (
            "[protocol]\nmax_batch_bytes = 9000000\n[protocol.limits]\nmax_batch_bytes = 1000000",
            "protocol.max_batch_bytes",
            "exceeds protocol.limits.max_batch_bytes (1000000)",
        ),
        (
            "[protocol]\nmax_batch_bytes = 2000000\n[protocol.limits]\nmax_batch_bytes = 2000000\nmax_message_bytes = 2000500",
            "protocol.limits.max_batch_bytes",
            "exceeds protocol.limits.max_message_bytes (2000500)",
        ),
        (
            "[protocol.limits]\nmax_op_bytes = 0",
            "protocol.limits.max_op_bytes",
            "must be positive",
        ),
        (
            "[transport]\nmax_frame = 1024",
            "transport.max_frame",
            "smaller than protocol.limits.max_message_bytes",
        ),
        (
            "[transport]\nqueue_capacity = 0",
            "transport.queue_capacity",
            "must be positive",
        ),
        (
            "[transport]\nkeep_alive_ms = 5000\nidle_timeout_ms = 5000",
            "transport.idle_timeout_ms",
            "must exceed transport.keep_alive_ms (5000)",
        ),
        (
            "[transport]\nmax_client_frame = 4096",
            "transport.max_client_frame",
            "smaller than the 8388672 bytes one request envelope",
        ),
        (
            "[transport]\nmax_connections_per_address = 0",
            "transport.max_connections_per_address",
            "must be positive",
        ),
        (
            "[transport]\nconnections_per_replica = 0",
            "transport.connections_per_replica",
            "must be positive",
        ),
        (
            "[transport]\nincoming_bytes = 0",
            "transport.incoming_bytes",
            "must be positive",
        ),
        (
            "[transport]\nclient_receive_window = 0",
            "transport.client_receive_window",
            "must be positive",
        ),
    ];
    let fixture = Fixture::new();
    let base = toml::to_string(&fixture.config()).unwrap();
    for (section, field, expected) in cases {
        let path = fixture.write_text(&format!("{base}\n{section}\n"));
        let error = load_node_config(&path).unwrap_err();
        assert_eq!(error.field(), Some(field), "{section}: {error}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}: {field}: ", path.display())),
            "{message}"
        );
        assert!(message.contains(expected), "{section}: {message}");
    }
}

#[test]
fn a_negative_value_is_a_type_error_with_its_line() {
    let fixture = Fixture::new();
    let base = toml::to_string(&fixture.config()).unwrap();
    let path = fixture.write_text(&format!("{base}\n[protocol]\nlog_window = -5\n"));
    let line = base.lines().count() + 3;
    let message = load_node_config(&path).unwrap_err().to_string();
    assert!(message.contains(&format!("line {line}")), "{message}");
}

#[test]
fn a_cluster_alone_validates_without_a_file_name() {
    let fixture = Fixture::new();
    let mut cluster: ClusterConfig = fixture.config().cluster();
    let peers = cluster.validate().unwrap();
    assert_eq!(
        peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );

    cluster.replicas[0].public_key = WEAK_KEY.into();
    let error = cluster.validate().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("replicas[0].public_key: a weak (small-order) ed25519 key"),
        "{error}"
    );
    let error = error.in_file(Path::new("client.toml"));
    assert!(
        error
            .to_string()
            .starts_with("client.toml: replicas[0].public_key: a weak"),
        "{error}"
    );
}

// The binary.

fn pbft_node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pbft-node"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keygen_writes_a_key_prints_it_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.key");
    let out = path.to_str().unwrap();

    let output = pbft_node(&["keygen", "--out", out]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let printed = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(printed.len(), 64, "{stdout}");
    assert!(printed.bytes().all(|b| b.is_ascii_hexdigit()), "{stdout}");
    let key = KeyPair::load(&path).unwrap();
    assert_eq!(key.public().to_hex(), printed);

    let output = pbft_node(&["pubkey", "--key", out]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim_end(), printed);

    let before = std::fs::read(&path).unwrap();
    let output = pbft_node(&["keygen", "--out", out]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn pubkey_of_a_garbage_file_fails_with_usage_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.key");
    write_key_file(&path, "nope");
    let output = pbft_node(&["pubkey", "--key", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not a key file"));
}

#[test]
fn run_with_a_bad_config_prints_the_error_and_exits_2() {
    let fixture = Fixture::new();
    let mut config = fixture.config();
    config.replicas[2].public_key = WEAK_KEY.into();
    let path = fixture.write(&config);
    let output = pbft_node(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}: replicas[2].public_key: a weak (small-order)",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = pbft_node(&["run"]);
    assert_eq!(output.status.code(), Some(2));
    let output = pbft_node(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn run_on_a_port_in_use_names_the_listen_field() {
    let fixture = Fixture::new();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = fixture.config();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.replicas[0].address = config.listen;
    config.data_dir = "data".into();
    let path = fixture.write(&config);
    let output = pbft_node(&["init", "--config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = pbft_node(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}: listen = \"127.0.0.1:{port}\": address already in use",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_clients_admitted_are_a_choice_written_down() {
    let fixture = Fixture::new();
    let open = fixture.config();
    let setup = load_node_config(&fixture.write(&open)).unwrap();
    assert_eq!(setup.committee.clients(), &ClientPolicy::Open);

    let client = key(9).public();
    let mut listed = fixture.config();
    listed.clients = ClientAccess::listed([client]);
    let setup = load_node_config(&fixture.write(&listed)).unwrap();
    assert_eq!(
        setup.committee.clients(),
        &ClientPolicy::Allow([client].into_iter().collect())
    );

    // No default: a file without `clients` is refused, naming the field.
    let text = toml::to_string(&open).unwrap();
    let without: String = text
        .lines()
        .filter(|line| !line.starts_with("clients"))
        .map(|line| format!("{line}\n"))
        .collect();
    let error = load_node_config(&fixture.write_text(&without)).unwrap_err();
    assert!(error.to_string().contains("clients"), "{error}");

    let mut word = fixture.config();
    word.clients = ClientAccess::Named("everyone".into());
    let error = load_node_config(&fixture.write(&word)).unwrap_err();
    assert_eq!(error.field(), Some("clients"), "{error}");

    let mut bad_key = fixture.config();
    bad_key.clients = ClientAccess::Listed(vec![WEAK_KEY.into()]);
    let error = load_node_config(&fixture.write(&bad_key)).unwrap_err();
    assert_eq!(error.field(), Some("clients[0]"), "{error}");
}

//! End-to-end tests of `testnet nemesis` and `testnet compose`: a short nemesis against replica
//! processes, and, where a Docker engine runs, a cluster of containers that a client on this
//! host uses, then a short nemesis against containers. Clusters run one at a time; nothing
//! here asserts timing (the nemesis waits minutes for recovery).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{serial, testnet, text, BIN};

/// The JSON object on the last line of stdout.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

/// A 40 s nemesis at f = 1 with one Byzantine replica, faults of up to 6 s, in `dir`.
fn short_nemesis(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "nemesis",
        "--f",
        "1",
        "--byzantine",
        "1",
        "--duration",
        "40",
        "--fault-secs",
        "6",
        "--quiet-secs",
        "4",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend(extra);
    testnet(&args)
}

/// Checks what every passing nemesis report must say.
fn assert_passed(output: &Output, target: &str) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", text(output));
    let report = report(output);
    assert_eq!(report["target"], target, "{report}");
    assert_eq!(report["verdict"], "linearizable", "{report}");
    assert_eq!(report["recovered"], true, "{report}");
    assert_eq!(report["agreement"], "yes", "{report}");
    let faults: u64 = (report["faults"].as_object().unwrap().values())
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert!(faults >= 2, "{report}");
    assert!(
        report["operations"]["ok"].as_u64().unwrap() >= 100,
        "{report}"
    );
    assert!(report["checked"].as_u64().unwrap() >= 100, "{report}");
    report
}

/// Makes one read of `history` see a value that was written only after it completed: a
/// history no order can explain. Returns the key.
fn corrupt(history: &Path) -> String {
    let mut ops: Vec<Value> = std::fs::read_to_string(history)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (read, later) = (0..ops.len())
        .filter(|&i| ops[i]["op"] == "get" && ops[i]["outcome"] == "ok")
        .find_map(|i| {
            let done = ops[i]["completed_ns"].as_u64()?;
            let later = (i + 1..ops.len()).find(|&j| {
                ops[j]["key"] == ops[i]["key"]
                    && ops[j]["op"] == "put"
                    && ops[j]["invoked_ns"].as_u64().unwrap() > done
            })?;
            Some((i, later))
        })
        .expect("the history has a read followed by a write of its key");
    ops[read]["result"] = ops[later]["value"].clone();
    let text: String = ops.iter().map(|op| format!("{op}\n")).collect();
    std::fs::write(history, text).unwrap();
    ops[read]["key"].as_str().unwrap().to_string()
}

#[test]
fn a_nemesis_on_processes_finds_a_linearizable_history_and_the_checker_catches_a_forged_read() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = short_nemesis(&run, &["--seed", "7"]);
    let report = assert_passed(&output, "processes");
    assert_eq!(report["byzantine"], serde_json::json!([0]), "{report}");
    // The schedule is on stderr as it happens.
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("healed"),
        "{}",
        text(&output)
    );
    // Its replicas are stopped.
    let status = testnet(&["status", "--dir", run.to_str().unwrap()]);
    assert_ne!(status.status.code(), Some(0), "{}", text(&status));

    let history = PathBuf::from(report["history"].as_str().unwrap());
    let again = testnet(&["check-history", history.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let key = corrupt(&history);
    let forged = testnet(&["check-history", history.to_str().unwrap()]);
    assert_eq!(forged.status.code(), Some(1), "{}", text(&forged));
    let verdict = self::report(&forged);
    assert_eq!(verdict["verdict"], "not-linearizable", "{verdict}");
    assert_eq!(verdict["keys_not_linearizable"], serde_json::json!([key]));
}

/// Why containers cannot be tested here, if they cannot.
fn containers_unavailable() -> Option<String> {
    if let Some(why) = testnet::launcher::compose::engine_unavailable() {
        return Some(why);
    }
    let node = node_binary();
    (!node.is_file()).then(|| {
        format!(
            "{} is not built (`cargo build -p pbft-node`, which `cargo test --workspace` does)",
            node.display()
        )
    })
}

/// The pbft-node binary built beside the testnet binary.
fn node_binary() -> PathBuf {
    Path::new(BIN).with_file_name("pbft-node")
}

/// A compose cluster; dropping it brings it down.
struct ComposeCluster {
    file: PathBuf,
    project: String,
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let _ = testnet::launcher::compose::compose(&self.file, &self.project, &["down"]);
    }
}

fn health(container: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Health.Status}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_container_cluster_comes_up_healthy_serves_this_host_and_survives_a_nemesis() {
    if let Some(why) = containers_unavailable() {
        eprintln!("skipped: containers cannot run here: {why}");
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let project = "pbft-test";
    let node = node_binary();
    let written = testnet(&[
        "compose",
        "--f",
        "1",
        "--byzantine",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--subnet",
        "172.30.201.0/24",
        "--project",
        project,
        "--node-bin",
        node.to_str().unwrap(),
    ]);
    assert_eq!(written.status.code(), Some(0), "{}", text(&written));
    let instructions = String::from_utf8_lossy(&written.stdout);
    assert!(
        instructions.contains("172.30.201.13:7000"),
        "{instructions}"
    );
    let file = out.join("docker-compose.yml");
    let cluster = ComposeCluster {
        file: file.clone(),
        project: project.into(),
    };
    for id in 0..4 {
        let _ = Command::new("docker")
            .args(["rm", "-f", &format!("{project}-replica-{id}")])
            .output();
    }
    testnet::launcher::compose::compose(&file, project, &["up", "-d", "--build"]).unwrap();

    // Every container reports healthy: its replica is ready (/readyz).
    let start = Instant::now();
    let containers: Vec<String> = (0..4).map(|id| format!("{project}-replica-{id}")).collect();
    while !containers.iter().all(|c| health(c) == "healthy") {
        let states: Vec<String> = containers.iter().map(|c| health(c)).collect();
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "not all healthy: {states:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // A client on this host reaches the replicas through the network's bridge; the
    // equivocating primary of view 0 does not stop it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let setup = pbft_client::load_client_config(out.join("client/client.toml")).unwrap();
        let client = pbft_client::Client::connect(setup).await.unwrap();
        client.put("greeting", "hello from the host").await.unwrap();
        let value = client.get("greeting").await.unwrap();
        assert_eq!(value.as_deref(), Some(&b"hello from the host"[..]));
        client.close().await;
    });
    drop(cluster);

    let run = dir.path().join("nemesis");
    let output = short_nemesis(
        &run,
        &[
            "--containers",
            "--subnet",
            "172.30.202.0/24",
            "--project",
            "pbft-nemesis-test",
            "--seed",
            "11",
            "--node-bin",
            node.to_str().unwrap(),
        ],
    );
    assert_passed(&output, "containers");
    // The containers' logs are kept, and the containers are gone.
    let log = std::fs::read_to_string(run.join("logs/replica-1.log")).unwrap();
    assert!(log.contains("starting replica"), "{log}");
    assert_eq!(health("pbft-nemesis-test-replica-1"), "");
}

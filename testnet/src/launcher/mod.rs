//! The process launcher behind the `testnet` binary: a real cluster of replica processes on
//! 127.0.0.1, some of them Byzantine, in one command.
//!
//! - [`up`] writes keys and configurations for 3f+1 replicas and a client into a directory
//!   (see [`layout`]), starts one process per replica, waits until they are all connected,
//!   and then returns (`--detach`) or shows a live view until Ctrl-C, optionally with a client
//!   workload ([`Load`]).
//! - [`status`] asks every replica for its status and judges whether the correct ones agree
//!   ([`report::AGREE_RULE`]).
//! - [`attack::attack`] runs a named faulty-client strategy against a running testnet.
//! - [`hosts::generate_hosts`] and [`compose::generate_compose`] write the files of a cluster
//!   on separate machines, or in containers that each are a host of their own.
//! - [`kill`], [`restart`] and [`down`] crash, restart and stop replicas of a running testnet,
//!   found through the state file that `up` wrote.
//!
//! A Byzantine replica is an ordinary node whose configuration names a behaviour of
//! `pbft_core::byzantine`, the same strategies the simulator drives.

#![deny(missing_docs)]

pub mod attack;
pub mod compose;
pub mod hosts;
pub mod layout;
mod live;
mod load;
pub mod process;
pub mod report;
pub mod setup;
mod up;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use pbft_core::messages::ReplicaId;

pub use layout::{Layout, NodeRecord, State, DEFAULT_DIR};
pub use load::{Load, LoadStats};
pub use process::NodeProgram;
pub use report::{status, ClusterReport};
pub use setup::{BehaviorChoice, Durability, NodeOverrides};
pub use up::{up, wait_until_up, UpOptions};

/// Why a command failed. Usage errors (exit code 2) are the caller's to fix: a bad flag, a
/// directory in the way, a port in use, a missing binary. Failures (exit code 1) happened
/// while running: replicas that did not come up, a disagreement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// The command cannot run as given.
    Usage(String),
    /// The command ran and failed.
    Failure(String),
}

impl LaunchError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Usage(_) => 2,
            LaunchError::Failure(_) => 1,
        }
    }
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Usage(message) | LaunchError::Failure(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for LaunchError {}

/// Completes on Ctrl-C, SIGTERM or SIGHUP (a closed terminal: the nodes, in process groups of
/// their own, would not hear of it). A signal that cannot be watched never completes, rather
/// than being taken as a request to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let other = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = other(SignalKind::terminate()) => {}
        () = other(SignalKind::hangup()) => {}
    }
}

/// Crashes replica `id` of the testnet in `dir` with SIGKILL. A replica that is not running is
/// left as it is.
pub fn kill(dir: &Path, id: ReplicaId) -> Result<(), LaunchError> {
    let layout = Layout::new(dir)?;
    let state = State::load(&layout)?;
    let node = state.node(id)?;
    if !process::node_alive(&layout, node) {
        println!("replica {id} is not running");
        return Ok(());
    }
    let pid = node.pid.expect("a live node has a pid");
    process::send_signal(pid, Signal::SIGKILL)?;
    process::wait_dead(&layout, std::slice::from_ref(node), Duration::from_secs(5));
    println!(
        "replica {id} (pid {pid}) killed; `{} restart {id} --dir {}` starts it again",
        commands().1,
        layout.shown.display()
    );
    Ok(())
}

/// Starts replica `id` of the testnet in `dir` again, with the same configuration, appending to
/// the same log, and waits up to `timeout` until it is connected to the others that are running.
/// It recovers from its durable state in its data directory and catches up from the others.
pub async fn restart(dir: &Path, id: ReplicaId, timeout: Duration) -> Result<(), LaunchError> {
    let layout = Layout::new(dir)?;
    let mut state = State::load(&layout)?;
    let node = state.node(id)?.clone();
    if process::node_alive(&layout, &node) {
        return Err(LaunchError::Usage(format!(
            "replica {id} is running (pid {}): crash it first with `{} kill {id} --dir {}`",
            node.pid.unwrap_or(0),
            commands().1,
            layout.shown.display()
        )));
    }
    let child = process::spawn(&layout, &state.program, &node)?;
    let pid = child.id();
    // The child is not waited for: it belongs to the testnet, not to this command.
    drop(child);
    for record in &mut state.nodes {
        if record.id == id {
            record.pid = Some(pid);
        }
    }
    state.save(&layout)?;
    let client = report::connect(&layout, &state, Duration::from_secs(1)).await?;
    let start = std::time::Instant::now();
    let result = loop {
        let report = report::query(&client, &layout, &state, Duration::from_millis(500)).await;
        let node = &report.nodes[id as usize];
        if !node.alive {
            break Err(format!("replica {id} exited after starting"));
        }
        // Replicas still down (the whole testnet may be restarting) are not waited for.
        let running = report.nodes.iter().filter(|n| n.alive).count();
        if let Ok(status) = &node.status {
            if status.connected_peers.len() + 1 >= running {
                break Ok(());
            }
        }
        if start.elapsed() >= timeout {
            break Err(format!(
                "replica {id} was not connected to every other running replica within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    client.close().await;
    let log = layout.show(&node.log);
    match result {
        Ok(()) => {
            println!("replica {id} restarted (pid {pid}); its log continues in {log}");
            Ok(())
        }
        Err(message) => {
            let tail = process::log_tail(&layout.path(&node.log), 3).join("\n    ");
            Err(LaunchError::Failure(format!(
                "{message}; see {log}:\n    {tail}"
            )))
        }
    }
}

/// Stops every replica of the testnet in `dir` (SIGTERM, then SIGKILL after a grace period),
/// keeping its directory: logs, keys and configurations.
pub fn down(dir: &Path) -> Result<(), LaunchError> {
    let layout = Layout::new(dir)?;
    let state = State::load(&layout)?;
    let processes = state.processes();
    let outcomes = process::stop(&layout, &processes, process::STOP_GRACE);
    let mut stopped = 0;
    for (node, (id, outcome)) in processes.iter().zip(outcomes) {
        let which = if node.config == Layout::twin_config(id) {
            format!("replica {id}'s twin")
        } else {
            format!("replica {id}")
        };
        match outcome {
            process::Stopped::Terminated => println!("{which} stopped"),
            process::Stopped::Killed => println!("{which} killed (it ignored SIGTERM)"),
            process::Stopped::NotRunning => continue,
        }
        stopped += 1;
    }
    if stopped == 0 {
        println!("no replica of {} was running", layout.shown.display());
    }
    println!(
        "logs kept in {}; {}",
        layout.show(Path::new("logs")),
        afresh_hint(&layout)
    );
    Ok(())
}

/// Runs one replica from its configuration file until Ctrl-C or SIGTERM, as `pbft-node run`
/// does: the `testnet node` subcommand, so that a testnet needs no other binary.
pub async fn run_node(config: &Path) -> Result<(), LaunchError> {
    let setup = pbft_node::config::load_node_config(config)
        .map_err(|e| LaunchError::Usage(e.to_string()))?;
    tracing::info!(
        config = %config.display(),
        listen = %setup.listen,
        n = setup.committee.n(),
        f = setup.committee.f(),
        "starting replica"
    );
    pbft_node::runtime::run(setup, shutdown_signal())
        .await
        .map_err(|e| {
            LaunchError::Failure(format!(
                "replica failed: {}",
                pbft_node::error::with_causes(&e)
            ))
        })?;
    tracing::info!("replica stopped");
    Ok(())
}

/// The command that starts a fresh testnet in the directory of `layout`, as the user can paste it.
pub(crate) fn afresh_hint(layout: &Layout) -> String {
    format!(
        "`{} up --force --dir {}` starts afresh",
        commands().1,
        layout.shown.display()
    )
}

/// How to run `pbft-client` and `testnet` from where the user is: through cargo when this
/// binary was built in a workspace's `target` directory (the binaries are not on the PATH
/// then), by name otherwise. The client is built together with `testnet`, so that its shared
/// dependencies keep the features of the testnet build and nothing is compiled twice.
pub(crate) fn commands() -> (String, String) {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile = exe
        .parent()
        .filter(|dir| dir.parent().and_then(Path::file_name) == Some("target".as_ref()))
        .and_then(Path::file_name)
        .and_then(|name| name.to_str());
    match profile {
        Some(profile) => {
            let flag = match profile {
                "release" => " --release",
                "debug" => "",
                other => {
                    return (
                        format!("target/{other}/pbft-client"),
                        format!("target/{other}/testnet"),
                    )
                }
            };
            (
                format!(
                    "cargo build{flag} -p testnet -p pbft-client && target/{profile}/pbft-client"
                ),
                format!("cargo run{flag} -p testnet --"),
            )
        }
        None => ("pbft-client".into(), "testnet".into()),
    }
}

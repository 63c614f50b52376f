//! Node processes: which program runs a node, starting one in its own process group, telling
//! whether it is alive, and stopping it.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::layout::{Layout, NodeRecord};
use super::LaunchError;

/// How a node process is started: `program args... --config FILE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgram {
    /// The executable, as an absolute path.
    pub program: PathBuf,
    /// The arguments before `--config FILE`: `run` for `pbft-node`, `node` for `testnet`.
    pub args: Vec<String>,
}

/// What to build when the node binary is missing.
const BUILD_HINT: &str = "build it with `cargo build --release -p pbft-node` (it lands in \
                          target/release/pbft-node), or leave out --node-bin to run the nodes \
                          from the testnet binary itself";

impl NodeProgram {
    /// The `testnet` binary at `path` running nodes through its hidden `node` subcommand.
    pub fn testnet(path: PathBuf) -> NodeProgram {
        NodeProgram {
            program: path,
            args: vec!["node".into()],
        }
    }

    /// A `pbft-node` binary at `path`.
    pub fn pbft_node(path: PathBuf) -> NodeProgram {
        NodeProgram {
            program: path,
            args: vec!["run".into()],
        }
    }

    /// Chooses the program for `testnet up`. With `node_bin`, that binary, which must exist (if
    /// it is this very executable, its `node` subcommand). Without, the `pbft-node` built next
    /// to this executable if it is at least as new (an older one may predate the code this
    /// launcher was built from), else this executable's `node` subcommand, which runs the same
    /// replica code. Only the `testnet` binary has that subcommand: library callers pass
    /// `node_bin`.
    pub fn resolve(node_bin: Option<&Path>) -> Result<NodeProgram, LaunchError> {
        let own = std::env::current_exe()
            .map_err(|e| LaunchError::Failure(format!("cannot locate this executable: {e}")))?;
        let Some(path) = node_bin else {
            let sibling = own.with_file_name(format!("pbft-node{}", std::env::consts::EXE_SUFFIX));
            let fresh = match (modified(&sibling), modified(&own)) {
                (Some(node), Some(own)) => node >= own,
                _ => false,
            };
            return Ok(if fresh && is_executable(&sibling) {
                NodeProgram::pbft_node(sibling)
            } else {
                NodeProgram::testnet(own)
            });
        };
        if !path.exists() {
            return Err(LaunchError::Usage(format!(
                "node binary {} does not exist: {BUILD_HINT}",
                path.display()
            )));
        }
        if !path.is_file() || !is_executable(path) {
            return Err(LaunchError::Usage(format!(
                "node binary {} is not an executable file: {BUILD_HINT}",
                path.display()
            )));
        }
        let path = std::path::absolute(path).map_err(|e| {
            LaunchError::Usage(format!("cannot use node binary {}: {e}", path.display()))
        })?;
        let same = match (path.canonicalize(), own.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        Ok(if same {
            NodeProgram::testnet(path)
        } else {
            NodeProgram::pbft_node(path)
        })
    }

    /// The command line, for messages.
    pub fn describe(&self) -> String {
        let mut words = vec![self.program.display().to_string()];
        words.extend(self.args.iter().cloned());
        words.push("--config FILE".into());
        words.join(" ")
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Starts `node` with `program`, appending its output to its log file. The process gets its own
/// process group, so a Ctrl-C meant for the launcher does not reach it and it outlives a
/// launcher that detached.
pub fn spawn(
    layout: &Layout,
    program: &NodeProgram,
    node: &NodeRecord,
) -> Result<Child, LaunchError> {
    let log_path = layout.path(&node.log);
    let failure = |what: &str, e: std::io::Error| {
        LaunchError::Failure(format!("cannot start node {}: {what}: {e}", node.id))
    };
    if let Some(parent) = log_path.parent() {
        super::layout::create_private_dir(parent)
            .map_err(|e| failure("cannot create the log directory", e))?;
    }
    let mut log = super::layout::open_private(&log_path, true)
        .map_err(|e| failure(&format!("cannot open {}", log_path.display()), e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let _ = writeln!(
        log,
        "--- testnet: starting node {} at unix time {stamp}: {} ---",
        node.id,
        program.describe()
    );
    let stderr = log
        .try_clone()
        .map_err(|e| failure("cannot share the log file", e))?;
    let mut command = Command::new(&program.program);
    command
        .args(&program.args)
        .arg("--config")
        .arg(layout.path(&node.config))
        .current_dir(&layout.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LaunchError::Usage(format!(
                "node binary {} does not exist: {BUILD_HINT}",
                program.program.display()
            ))
        } else {
            failure(&format!("cannot run {}", program.program.display()), e)
        }
    })
}

/// Whether process `pid` is running and is the node started with `config`. A pid reused by an
/// unrelated process, and a process that exited but was not yet reaped, count as not alive.
pub fn is_alive(pid: u32, config: &Path) -> bool {
    if Path::new("/proc/self/stat").exists() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses and may contain spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X') | Some('x')) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let needle = config.as_os_str().as_encoded_bytes();
        return cmdline.windows(needle.len()).any(|w| w == needle);
    }
    match i32::try_from(pid) {
        Ok(raw) => signal::kill(Pid::from_raw(raw), None).is_ok(),
        Err(_) => false,
    }
}

/// Whether `node`'s recorded process is alive.
pub fn node_alive(layout: &Layout, node: &NodeRecord) -> bool {
    node.pid
        .is_some_and(|pid| is_alive(pid, &layout.path(&node.config)))
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn send_signal(pid: u32, sig: Signal) -> Result<(), LaunchError> {
    let raw = i32::try_from(pid)
        .map_err(|_| LaunchError::Failure(format!("pid {pid} is out of range")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(LaunchError::Failure(format!(
            "cannot send {sig} to process {pid}: {e}"
        ))),
    }
}

/// How long nodes get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a node process ended under [`stop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the grace period and got SIGKILL.
    Killed,
    /// It was not running.
    NotRunning,
}

/// Stops the nodes' processes: SIGTERM to each, then SIGKILL to those still alive after
/// `grace`. Returns each node's outcome, in the order given.
pub fn stop(layout: &Layout, nodes: &[NodeRecord], grace: Duration) -> Vec<(u32, Stopped)> {
    let mut outcomes: Vec<(u32, Stopped)> = Vec::new();
    let mut running: Vec<(usize, &NodeRecord)> = Vec::new();
    for node in nodes {
        if node_alive(layout, node) {
            let pid = node.pid.expect("alive nodes have a pid");
            if send_signal(pid, Signal::SIGTERM).is_ok() {
                running.push((outcomes.len(), node));
            }
            outcomes.push((node.id, Stopped::Terminated));
        } else {
            outcomes.push((node.id, Stopped::NotRunning));
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && running.iter().any(|(_, n)| node_alive(layout, n)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (index, node) in &running {
        if node_alive(layout, node) {
            let _ = send_signal(node.pid.expect("running"), Signal::SIGKILL);
            outcomes[*index].1 = Stopped::Killed;
        }
    }
    wait_dead(layout, nodes, Duration::from_secs(2));
    outcomes
}

/// Waits up to `limit` for every one of `nodes` to be gone.
pub fn wait_dead(layout: &Layout, nodes: &[NodeRecord], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && nodes.iter().any(|n| node_alive(layout, n)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` non-empty lines of `path`, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut tail: Vec<String> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .map(|l| l.chars().take(300).collect())
        .collect();
    tail.reverse();
    tail
}

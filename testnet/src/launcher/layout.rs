//! What a testnet directory holds, and the state file that records what was started in it.
//!
//! ```text
//! DIR/
//!   testnet.json          the state file: f, and per node its address, pid, behaviour, files
//!   node-N.toml           replica N's configuration (`pbft-node run --config DIR/node-N.toml`)
//!   keys/replica-N.key    replica N's secret key
//!   client.toml           a client configuration (`pbft-client --config DIR/client.toml`)
//!   client.key            the client's secret key
//!   logs/node-N.log       replica N's output, appended to across restarts
//!   data/replica-N/       replica N's data directory
//! ```
//! Paths in the state file are relative to DIR, so a testnet directory can be moved while
//! its nodes are stopped.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pbft_core::messages::ReplicaId;
use serde::{Deserialize, Serialize};

use super::process::NodeProgram;
use super::LaunchError;

/// Creates `path` and its missing parents, for this user only (mode 0700 on unix): a testnet
/// directory holds secret keys and the replicas' state.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Opens `path` for writing, creating it for this user only (mode 0600 on unix); a file that
/// exists is made so too. Truncates it unless `append`.
pub fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// The directory used when `--dir` is not given.
pub const DEFAULT_DIR: &str = "testnet-data";

/// The state file's name inside DIR.
pub const STATE_FILE: &str = "testnet.json";

/// The files of one testnet directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The directory as an absolute path: nodes and files are addressed by it.
    pub dir: PathBuf,
    /// The directory as the user gave it, for messages.
    pub shown: PathBuf,
}

impl Layout {
    /// The layout of `dir`, which need not exist yet.
    pub fn new(dir: &Path) -> Result<Layout, LaunchError> {
        let absolute = std::path::absolute(dir).map_err(|e| {
            LaunchError::Usage(format!("cannot use directory {}: {e}", dir.display()))
        })?;
        Ok(Layout {
            dir: absolute,
            shown: dir.to_path_buf(),
        })
    }

    /// `relative` inside DIR, as an absolute path.
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.dir.join(relative)
    }

    /// `relative` inside DIR, as the user would type it.
    pub fn show(&self, relative: &Path) -> String {
        self.shown.join(relative).display().to_string()
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Replica `id`'s configuration file, relative to DIR.
    pub fn node_config(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("node-{id}.toml"))
    }

    /// Replica `id`'s key file, relative to DIR.
    pub fn key_file(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("keys/replica-{id}.key"))
    }

    /// Replica `id`'s log file, relative to DIR.
    pub fn log_file(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("logs/node-{id}.log"))
    }

    /// Replica `id`'s data directory, relative to DIR.
    pub fn data_dir(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("data/replica-{id}"))
    }

    /// The configuration file of the second process of twinned replica `id`, relative to DIR.
    pub fn twin_config(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("node-{id}-twin.toml"))
    }

    /// The log file of the second process of twinned replica `id`, relative to DIR.
    pub fn twin_log_file(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("logs/node-{id}-twin.log"))
    }

    /// The data directory of the second process of twinned replica `id`, relative to DIR.
    pub fn twin_data_dir(id: ReplicaId) -> PathBuf {
        PathBuf::from(format!("data/replica-{id}-twin"))
    }

    /// The client configuration file, relative to DIR.
    pub fn client_config() -> PathBuf {
        PathBuf::from("client.toml")
    }

    /// The client key file, relative to DIR.
    pub fn client_key() -> PathBuf {
        PathBuf::from("client.key")
    }

    /// Every entry of DIR that a testnet creates and that exists now. Anything else in DIR is
    /// not the launcher's, and `--force` leaves it alone.
    pub fn existing_entries(&self) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = [STATE_FILE, "keys", "logs", "data", "client.toml"]
            .iter()
            .map(PathBuf::from)
            .chain([Layout::client_key()])
            .map(|p| self.dir.join(p))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        if let Ok(read) = std::fs::read_dir(&self.dir) {
            for entry in read.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("node-") && name.ends_with(".toml") {
                    entries.push(entry.path());
                }
            }
        }
        entries
    }
}

/// One node as the state file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The replica id.
    pub id: ReplicaId,
    /// The UDP address replicas and clients dial.
    pub address: SocketAddr,
    /// Where its Prometheus metrics are served.
    pub metrics: Option<SocketAddr>,
    /// The process last started for it; it may have exited since.
    pub pid: Option<u32>,
    /// Its Byzantine behaviour by name; `None` for a correct replica.
    pub behavior: Option<String>,
    /// Its configuration file, relative to DIR.
    pub config: PathBuf,
    /// Its log file, relative to DIR.
    pub log: PathBuf,
}

/// What `testnet up` started, read by the other commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The number of Byzantine replicas the cluster tolerates; it has 3f+1.
    pub f: usize,
    /// Whether more than f replicas were made Byzantine on purpose.
    #[serde(default)]
    pub allow_unsafe: bool,
    /// How node processes are started (and restarted).
    pub program: NodeProgram,
    /// Every replica, in id order.
    pub nodes: Vec<NodeRecord>,
    /// The second process of each replica with the `twin` behaviour: the same key and port,
    /// its own data directory, configuration and log.
    #[serde(default)]
    pub twins: Vec<NodeRecord>,
    /// The client configuration file, relative to DIR.
    pub client_config: PathBuf,
}

impl State {
    /// Reads the state file of `layout`. A directory without one holds no testnet.
    pub fn load(layout: &Layout) -> Result<State, LaunchError> {
        let path = layout.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LaunchError::Usage(format!(
                    "{} holds no testnet (no {STATE_FILE}): start one with `{} up --dir {}`, or \
                     name the directory of a running one with --dir",
                    layout.shown.display(),
                    super::commands().1,
                    layout.shown.display()
                )))
            }
            Err(e) => {
                return Err(LaunchError::Usage(format!(
                    "cannot read {}: {e}",
                    layout.show(Path::new(STATE_FILE))
                )))
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            LaunchError::Usage(format!(
                "{} is not a testnet state file: {e}",
                layout.show(Path::new(STATE_FILE))
            ))
        })
    }

    /// Writes the state file, replacing it at once so a reader never sees half of it.
    pub fn save(&self, layout: &Layout) -> Result<(), LaunchError> {
        let path = layout.state_file();
        let temporary = layout.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the state serializes");
        let write = || -> std::io::Result<()> {
            let mut file = open_private(&temporary, false)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(|e| LaunchError::Failure(format!("cannot write {}: {e}", path.display())))
    }

    /// Replica `id`'s record, or a usage error naming the valid ids.
    pub fn node(&self, id: ReplicaId) -> Result<&NodeRecord, LaunchError> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            LaunchError::Usage(format!(
                "no replica {id}: this testnet has replicas 0 to {}",
                self.nodes.len().saturating_sub(1)
            ))
        })
    }

    /// The number of replicas.
    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Every process of the testnet: the replicas, then the twins.
    pub fn processes(&self) -> Vec<NodeRecord> {
        self.nodes.iter().chain(&self.twins).cloned().collect()
    }
}

//! The data directory: initialised once by `pbft-node init`, locked while a replica runs.
//!
//! A replica that starts on an empty directory believes it never signed anything. If it did
//! (its disk was wiped, or `data_dir` points at the wrong place), it could contradict what it
//! sent before, which is Byzantine behaviour nobody intended. So a directory must be initialised
//! before a replica runs on it:
//! - `init` writes the log's first record ([`Durable::Created`]) and then a marker file naming
//!   the replica and a digest of the cluster, both synced to disk;
//! - `run` refuses a directory without the marker, with a marker for another replica or
//!   cluster, or with a marker but no log records (the log was lost);
//! - `init --rejoin` initialises a directory for a replica that lost its data: it then runs
//!   silent until it has caught up past anything it could have signed (see the core's
//!   `rejoin` rules).
//!
//! While a replica runs, it holds an exclusive advisory lock on the directory's lock file, so a
//! second process on the same directory stops at once instead of writing the same log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use pbft_core::committee::Committee;
use pbft_core::messages::ReplicaId;
use pbft_core::protocol::Durable;
use serde::{Deserialize, Serialize};

use crate::runtime::NodeSetup;
use crate::storage::{ReplicaStore, StorageError};

/// The marker file `init` writes.
pub const MARKER_FILE: &str = "replica.toml";
/// The file locked while a replica runs.
pub const LOCK_FILE: &str = "LOCK";

/// The version of what a data directory holds: the log's records and snapshots, and the signed
/// bytes of the votes among them. A directory of another version is refused, never read.
pub const DATA_FORMAT: u32 = 2;

/// What the marker file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// [`DATA_FORMAT`] when the directory was initialised; markers without one are version 1.
    #[serde(default = "first_format")]
    pub format: u32,
    /// The replica this directory belongs to.
    pub replica: ReplicaId,
    /// The cluster id ([`Committee::cluster_id`]) of the cluster it belongs to, in hex.
    pub cluster: String,
    /// Initialised for a replica that lost its data (informational; the log says it too).
    pub rejoin: bool,
}

fn first_format() -> u32 {
    1
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {} was never initialised; run `pbft-node init --config FILE` first \
         (or `pbft-node init --rejoin --config FILE` if this replica ran before and lost its \
         data)",
        .0.display()
    )]
    NotInitialised(PathBuf),
    #[error(
        "data directory {} is initialised but its write-ahead log is gone: this replica may \
         have signed messages it no longer remembers. Bring it back with `pbft-node init \
         --rejoin --config FILE` (it then stays silent until it has caught up), or point \
         data_dir at the right directory",
        .0.display()
    )]
    LogLost(PathBuf),
    #[error(
        "data directory {} belongs to replica {found}, not replica {expected}; check data_dir \
         and id",
        .dir.display()
    )]
    WrongReplica {
        dir: PathBuf,
        found: ReplicaId,
        expected: ReplicaId,
    },
    #[error(
        "data directory {} belongs to another cluster (its [[replicas]] keys or f differ); \
         check data_dir",
        .0.display()
    )]
    WrongCluster(PathBuf),
    #[error(
        "data directory {} holds format version {found}, and this build reads version \
         {DATA_FORMAT} only: run the release that wrote it, or start this replica afresh (see \
         the README on upgrades)",
        .dir.display()
    )]
    OtherFormat { dir: PathBuf, found: u32 },
    #[error("{} is not a valid marker file: {reason}", .path.display())]
    BadMarker { path: PathBuf, reason: String },
    #[error(
        "data directory {} is already initialised (it holds {MARKER_FILE}); a replica that \
         lost its data is brought back with `init --rejoin` on a directory without its log",
        .0.display()
    )]
    AlreadyInitialised(PathBuf),
    #[error(
        "data directory {} is not empty; `init` only initialises an empty or missing directory",
        .0.display()
    )]
    NotEmpty(PathBuf),
    #[error(
        "data directory {} still holds a write-ahead log; `init --rejoin` is only for a replica \
         whose log is gone",
        .0.display()
    )]
    HasLog(PathBuf),
    #[error(
        "data directory {} is in use by another process (its {LOCK_FILE} file is locked); two \
         replicas must never share one",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The cluster id as the marker writes it.
fn cluster_hex(committee: &Committee) -> String {
    committee.cluster_id().0.to_hex()
}

/// An exclusive lock on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the directory's lock, creating the directory and the lock file if missing.
pub fn lock(dir: &Path) -> Result<DirLock, DataDirError> {
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs4::TryLockError::WouldBlock) => Err(DataDirError::Locked(dir.to_path_buf())),
        Err(fs4::TryLockError::Error(source)) => Err(DataDirError::Io {
            op: "lock",
            path,
            source,
        }),
    }
}

/// Reads the marker, if there is one.
fn read_marker(dir: &Path) -> Result<Option<Marker>, DataDirError> {
    let path = dir.join(MARKER_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataDirError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|error| DataDirError::BadMarker {
            path,
            reason: error.to_string(),
        })
}

/// Checks that `dir` was initialised for this replica and cluster, and that its log has not
/// been lost. Called with the directory locked.
pub fn check(dir: &Path, id: ReplicaId, committee: &Committee) -> Result<(), DataDirError> {
    let Some(marker) = read_marker(dir)? else {
        return Err(DataDirError::NotInitialised(dir.to_path_buf()));
    };
    if marker.format != DATA_FORMAT {
        return Err(DataDirError::OtherFormat {
            dir: dir.to_path_buf(),
            found: marker.format,
        });
    }
    if marker.replica != id {
        return Err(DataDirError::WrongReplica {
            dir: dir.to_path_buf(),
            found: marker.replica,
            expected: id,
        });
    }
    if marker.cluster != cluster_hex(committee) {
        return Err(DataDirError::WrongCluster(dir.to_path_buf()));
    }
    Ok(())
}

/// The refusal for an initialised directory whose log holds no record.
pub fn log_lost(dir: &Path) -> DataDirError {
    DataDirError::LogLost(dir.to_path_buf())
}

/// Initialises `setup`'s data directory: the log's first record, then the marker, each synced.
/// Without `rejoin` the directory must be empty or missing. With it, it may hold what is left
/// of a lost one (a marker, a lock file, empty segments), but no log record.
pub fn init(setup: &NodeSetup, rejoin: bool) -> Result<(), DataDirError> {
    let dir = &setup.data_dir;
    let _lock = lock(dir)?;
    let marker = read_marker(dir);
    let opened = ReplicaStore::open(dir, true, setup.protocol.log_window)?;
    if !opened.records.is_empty() {
        return Err(if rejoin {
            DataDirError::HasLog(dir.clone())
        } else {
            DataDirError::AlreadyInitialised(dir.clone())
        });
    }
    if !rejoin {
        if marker.is_err() || marker?.is_some() {
            return Err(DataDirError::AlreadyInitialised(dir.clone()));
        }
        for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
            let entry = entry.map_err(io_error("list directory", dir))?;
            if entry.file_name() != LOCK_FILE {
                return Err(DataDirError::NotEmpty(dir.clone()));
            }
        }
    }
    let mut store = opened.store;
    store.persist(&[Durable::Created { rejoining: rejoin }])?;
    let marker = Marker {
        format: DATA_FORMAT,
        replica: setup.id,
        cluster: cluster_hex(&setup.committee),
        rejoin,
    };
    let text = format!(
        "# Written by `pbft-node init`: this directory holds replica {}'s durable state.\n{}",
        setup.id,
        toml::to_string(&marker).expect("a marker serializes")
    );
    write_durably(dir, MARKER_FILE, text.as_bytes())
}

/// Writes `name` in `dir` through a temporary file, synced and renamed into place.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DataDirError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("rename", &path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("fsync directory", dir))
}

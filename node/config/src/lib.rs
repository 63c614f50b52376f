//! What replica and client configuration files share: the cluster's membership as they list it
//! (`f` and `[[replicas]]`), and the reading of those files and of the key files they name.
//! Every error names the file and the field at fault.
//!
//! The transport takes the validated result ([`PeerInfo`], [`ClientPolicy`]) and reads no files.

#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pbft_core::committee::ClientPolicy;
use pbft_crypto::{CryptoError, KeyPair, PublicKey};
use pbft_net::PeerInfo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a configuration cannot be used. The message names the file (where known) and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("config file {} does not exist", .path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The configuration file exists but cannot be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Unreadable {
        /// The path as given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected fields and types (a missing
    /// field, an unknown field, a string where a number belongs, an unparsable address).
    #[error("{}: {message}", .path.display())]
    Parse {
        /// The path as given.
        path: PathBuf,
        /// The 1-based line the parser pointed at, if it pointed at one.
        line: Option<usize>,
        /// The parser's message, prefixed with the line and column where known.
        message: String,
    },
    /// A field has a value that cannot be used, or values disagree with each other.
    #[error("{}{field}: {reason}", file_prefix(.file.as_deref()))]
    Invalid {
        /// The file, once known: [`ClusterConfig::validate`] does not know it, and
        /// [`ConfigError::in_file`] adds it.
        file: Option<PathBuf>,
        /// The field at fault, as written in the file: `listen`, `replicas[2].public_key`,
        /// `protocol.log_window`.
        field: String,
        /// What is wrong, and where it helps, what to do.
        reason: String,
    },
}

fn file_prefix(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    }
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] without a file yet.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: None,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Attributes a [`ConfigError::Invalid`] error to `path`, unless it already names a file.
    /// For callers that validate a [`ClusterConfig`] read from their own file.
    pub fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid {
                file: None,
                field,
                reason,
            } => ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                field,
                reason,
            },
            other => other,
        }
    }

    /// The field at fault, for [`ConfigError::Invalid`].
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Which clients the replicas admit, as a node's configuration file says it: `clients = "open"`
/// for anyone, or `clients = ["<64 hex digits>", ...]` for the listed keys only. There is no
/// default: an open cluster is a choice written down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientAccess {
    /// The public keys admitted.
    Listed(Vec<String>),
    /// `"open"`.
    Named(String),
}

impl ClientAccess {
    /// Everyone.
    pub fn open() -> ClientAccess {
        ClientAccess::Named("open".into())
    }

    /// Only `keys`.
    pub fn listed(keys: impl IntoIterator<Item = PublicKey>) -> ClientAccess {
        ClientAccess::Listed(keys.into_iter().map(|k| k.to_hex()).collect())
    }

    /// The transport's policy; refuses any word but `open` and keys that are not valid
    /// ed25519 public keys.
    pub fn policy(&self) -> Result<ClientPolicy, ConfigError> {
        match self {
            ClientAccess::Named(word) if word == "open" => Ok(ClientPolicy::Open),
            ClientAccess::Named(word) => Err(ConfigError::invalid(
                "clients",
                format!("{word:?} is neither \"open\" nor a list of client public keys"),
            )),
            ClientAccess::Listed(keys) => keys
                .iter()
                .enumerate()
                .map(|(i, hex)| {
                    PublicKey::from_hex(hex)
                        .map_err(|e| ConfigError::invalid(format!("clients[{i}]"), key_problem(&e)))
                })
                .collect::<Result<_, _>>()
                .map(ClientPolicy::Allow),
        }
    }
}

/// The cluster's membership: `f` and every replica. Shared by replica and client configuration
/// files, as the top-level `f` field and the `[[replicas]]` array of tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The number of Byzantine replicas tolerated; the cluster must list exactly 3f+1.
    pub f: usize,
    /// The replicas, in any order; their ids must be exactly `0..n`.
    pub replicas: Vec<ReplicaEntry>,
}

/// One replica as listed in `[[replicas]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// The replica's id, `0..n`; the primary of view `v` is replica `v mod n`.
    pub id: u32,
    /// The UDP address other nodes dial, an IP address and port (host names are not resolved).
    pub address: SocketAddr,
    /// The replica's ed25519 public key, 64 hex digits.
    pub public_key: String,
}

impl ClusterConfig {
    /// Checks the membership and returns the peers in id order (the committee's keys, in that
    /// order, with `f`). Refuses: `f = 0`; a public key that is not 64 hex digits, not a curve point, or
    /// weak (small order); a repeated id, key or address; an address no one can dial; a count
    /// other than 3f+1; ids other than exactly `0..n`. Errors carry no file name: add it with
    /// [`ConfigError::in_file`].
    pub fn validate(&self) -> Result<Vec<PeerInfo>, ConfigError> {
        if self.f == 0 {
            return Err(ConfigError::invalid(
                "f",
                "must be at least 1 (n = 3f+1 replicas tolerate f Byzantine ones)",
            ));
        }
        let mut peers: Vec<PeerInfo> = Vec::with_capacity(self.replicas.len());
        for (i, entry) in self.replicas.iter().enumerate() {
            let field = |name: &str| format!("replicas[{i}].{name}");
            let public_key = PublicKey::from_hex(&entry.public_key)
                .map_err(|e| ConfigError::invalid(field("public_key"), key_problem(&e)))?;
            if let Some(j) = peers.iter().position(|p| p.id == entry.id) {
                return Err(ConfigError::invalid(
                    field("id"),
                    format!(
                        "replica id {} is listed twice (also replicas[{j}])",
                        entry.id
                    ),
                ));
            }
            if let Some(j) = peers.iter().position(|p| p.public_key == public_key) {
                return Err(ConfigError::invalid(
                    field("public_key"),
                    format!(
                        "the same key as replicas[{j}] (replica {}); every replica needs its own key",
                        peers[j].id
                    ),
                ));
            }
            if let Some(j) = peers.iter().position(|p| p.addr == entry.address) {
                return Err(ConfigError::invalid(
                    field("address"),
                    format!(
                        "{} is also the address of replicas[{j}] (replica {})",
                        entry.address, peers[j].id
                    ),
                ));
            }
            if entry.address.ip().is_unspecified() || entry.address.port() == 0 {
                return Err(ConfigError::invalid(
                    field("address"),
                    format!(
                        "{} cannot be dialed: list the replica's reachable IP address and port",
                        entry.address
                    ),
                ));
            }
            peers.push(PeerInfo {
                id: entry.id,
                addr: entry.address,
                public_key,
            });
        }
        let n = peers.len();
        if n != 3 * self.f + 1 {
            return Err(ConfigError::invalid(
                "replicas",
                format!(
                    "the cluster lists {n} replicas but f = {} needs 3f+1 = {}",
                    self.f,
                    3 * self.f + 1
                ),
            ));
        }
        if let Some(i) = peers.iter().position(|p| p.id as usize >= n) {
            return Err(ConfigError::invalid(
                format!("replicas[{i}].id"),
                format!(
                    "replica id {} is out of range: with {n} replicas the ids are 0 to {}",
                    peers[i].id,
                    n - 1
                ),
            ));
        }
        peers.sort_by_key(|p| p.id);
        Ok(peers)
    }
}

fn key_problem(error: &CryptoError) -> String {
    match error {
        CryptoError::WeakPublicKey => {
            "a weak (small-order) ed25519 key, refused: anyone can forge signatures for it"
                .to_string()
        }
        CryptoError::InvalidPublicKey => "not a valid ed25519 public key".to_string(),
        CryptoError::Hex(reason) => format!("not a public key in hex: {reason}"),
        other => other.to_string(),
    }
}

/// `path` as given if absolute, else relative to the directory holding `config_path`.
pub fn resolve(config_path: &Path, path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Reads and parses a TOML file into `T`, reporting a missing file, an unreadable one, or a
/// syntax or type error with its line.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    toml::from_str(&text).map_err(|error| {
        let message = error.message().trim_end().to_string();
        // A missing top-level field comes with an empty span at the start: no line to point at.
        let line = error
            .span()
            .filter(|span| !(span.start == 0 && (span.end == 0 || span.end >= text.len())))
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, column)
            });
        match line {
            Some((line, column)) => ConfigError::Parse {
                path: path.to_path_buf(),
                line: Some(line),
                message: format!("line {line}, column {column}: {message}"),
            },
            None => ConfigError::Parse {
                path: path.to_path_buf(),
                line: None,
                message,
            },
        }
    })
}

/// Loads the key file `key_file` named in the configuration file `config_path` (relative to its
/// directory). Errors name the `key_file` field, and not the file: add it with
/// [`ConfigError::in_file`].
pub fn load_key_file(config_path: &Path, key_file: &Path) -> Result<KeyPair, ConfigError> {
    let path = resolve(config_path, key_file);
    if !path.exists() {
        return Err(ConfigError::invalid(
            "key_file",
            format!(
                "{} does not exist (create one with `pbft-node keygen --out {}`)",
                path.display(),
                path.display()
            ),
        ));
    }
    KeyPair::load(&path).map_err(|e| {
        let reason = match e {
            CryptoError::KeyFile { path, reason } => format!("cannot use {path}: {reason}"),
            other => format!("cannot use {}: {other}", path.display()),
        };
        ConfigError::invalid("key_file", reason)
    })
}

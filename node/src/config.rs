//! A replica's TOML configuration, loaded into a validated [`NodeSetup`].
//!
//! ```toml
//! id = 0
//! key_file = "keys/replica-0.key"   # relative paths are relative to this file's directory
//! listen = "127.0.0.1:7000"         # UDP; its port must be this replica's listed port
//! data_dir = "data/replica-0"
//! metrics = "127.0.0.1:9000"        # optional: serve Prometheus metrics here (loopback
//!                                   # unless metrics_server.public = true)
//! behavior = "silent"               # optional: a Byzantine behaviour, test clusters only
//! f = 1
//!
//! [protocol]                        # optional; every field defaults to ProtocolConfig::default()
//! checkpoint_interval = 128
//! log_window = 256
//!
//! [protocol.limits]                 # optional: what this replica accepts from others
//! max_message_bytes = 67108864
//!
//! [transport]                       # optional; defaults to TransportConfig::default()
//! queue_capacity = 1024
//!
//! [storage]                         # optional: durable state in data_dir, synced before sending
//! fsync = true
//!
//! [metrics_server]                  # optional: bounds of the metrics endpoint's connections
//! max_connections = 64
//!
//! [log]                             # optional: overridden by `run --log-level/--log-format`
//! level = "info"                    # or directives, as in RUST_LOG
//! format = "text"                   # or "json"
//!
//! [[replicas]]                      # one per replica, ids 0..n-1, n = 3f+1
//! id = 0
//! address = "127.0.0.1:7000"
//! public_key = "<64 hex digits>"    # `pbft-node pubkey --key FILE` prints it
//! ```
//!
//! Every field is described on [`NodeConfigFile`], and the tables on the types they are read
//! into: [`ProtocolConfig`] (with [`pbft_core::messages::Limits`]), [`TransportConfig`],
//! [`StorageConfig`] and [`MetricsServerConfig`]. Each is validated once, when the file is loaded. Unknown fields are
//! refused, so a misspelt optional field is an error rather than silently ignored. Each
//! [`ConfigError`] names the file and the field at fault.
//! The cluster part (`f` and `[[replicas]]`) is [`ClusterConfig`], which clients validate the
//! same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use pbft_config::{
    load_key_file, read_toml, resolve, ClientAccess, ClusterConfig, ConfigError, ReplicaEntry,
};
use pbft_net::TransportConfig;
use serde::{Deserialize, Serialize};

use crate::logging::LogConfig;
use crate::metrics::MetricsServerConfig;
use crate::runtime::NodeSetup;
use crate::storage::StorageConfig;
use pbft_core::byzantine::BehaviorKind;
use pbft_core::committee::Committee;
use pbft_core::messages::ReplicaId;
use pbft_core::protocol::ProtocolConfig;

/// A replica's configuration file as written. Load it with [`load_node_config`]; tools that
/// write configuration files (such as a test-cluster launcher) serialize this struct with
/// `toml::to_string`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigFile {
    /// This replica's id; it must be listed in `replicas`.
    pub id: ReplicaId,
    /// The secret key file written by `pbft-node keygen`; its public key must be the one listed
    /// for `id`. Relative to the configuration file's directory.
    pub key_file: PathBuf,
    /// The UDP address to listen on. Its port must be the port of this replica's listed
    /// address; its IP may differ (`0.0.0.0` to listen on every interface, or a local address
    /// behind a NAT), which is logged as a warning unless it is unspecified.
    pub listen: SocketAddr,
    /// The directory for durable state. Relative to the configuration file's directory.
    pub data_dir: PathBuf,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none if absent. A loopback
    /// address unless `metrics_server.public` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// The bounds of the metrics endpoint's connections; absent fields take their defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metrics_server: MetricsServerConfig,
    /// A Byzantine behaviour by name (see [`BehaviorKind`]), for test clusters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    /// The log's level and format; absent fields take their defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub log: LogConfig,
    /// The number of Byzantine replicas tolerated, as in [`ClusterConfig::f`].
    pub f: usize,
    /// Protocol parameters; absent fields take their defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: ProtocolConfig,
    /// Transport parameters; absent fields take their defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub transport: TransportConfig,
    /// Durable state; absent fields take their defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub storage: StorageConfig,
    /// Which clients may connect: `"open"`, or the list of their public keys (see
    /// [`ClientAccess`]). Required, so that an open cluster is a decision.
    pub clients: ClientAccess,
    /// Every replica of the cluster, this one included, as in [`ClusterConfig::replicas`].
    pub replicas: Vec<ReplicaEntry>,
}

impl NodeConfigFile {
    /// The cluster part of the file.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            f: self.f,
            replicas: self.replicas.clone(),
        }
    }

    /// [`NodeConfigFile::to_setup`] with errors naming the file.
    pub fn to_setup_in(&self, config_path: &Path) -> Result<NodeSetup, ConfigError> {
        self.to_setup(config_path)
            .map_err(|e| e.in_file(config_path))
    }

    /// Validates the configuration, reads the key file, and builds the [`NodeSetup`].
    /// `config_path` is the file this came from: relative paths are resolved against its
    /// directory. Errors do not name the file; [`load_node_config`] adds it.
    pub fn to_setup(&self, config_path: &Path) -> Result<NodeSetup, ConfigError> {
        let peers = self.cluster().validate()?;
        let committee = Committee::new(peers.iter().map(|p| p.public_key).collect(), self.f)
            .map_err(|e| ConfigError::invalid("replicas", e.to_string()))?;
        let Some(listed) = peers.iter().find(|p| p.id == self.id) else {
            return Err(ConfigError::invalid(
                "id",
                format!(
                    "replica {} is not in the cluster, whose ids are 0 to {}",
                    self.id,
                    peers.len() - 1
                ),
            ));
        };
        let index = self
            .replicas
            .iter()
            .position(|r| r.id == self.id)
            .expect("validated ids are listed");
        if self.listen.port() != listed.addr.port() {
            return Err(ConfigError::invalid(
                "listen",
                format!(
                    "port {} differs from replicas[{index}].address {}, where the other replicas \
                     will dial replica {}",
                    self.listen.port(),
                    listed.addr,
                    self.id
                ),
            ));
        }
        if self.listen.ip() != listed.addr.ip() && !self.listen.ip().is_unspecified() {
            tracing::warn!(
                listen = %self.listen,
                listed = %listed.addr,
                "listening on an address other than the listed one; the other replicas dial the \
                 listed one, so it must reach this one"
            );
        }
        let clients = self.clients.policy()?;
        self.log
            .check()
            .map_err(|reason| ConfigError::invalid("log.level", reason))?;
        self.metrics_server
            .check(self.metrics)
            .map_err(|(field, reason)| {
                ConfigError::invalid(format!("metrics_server.{field}"), reason)
            })?;
        let protocol = self
            .protocol
            .clone()
            .checked()
            .map_err(|e| ConfigError::invalid(format!("protocol.{}", e.field), e.reason))?;
        let mut transport = self
            .transport
            .clone()
            .checked(&protocol.limits)
            .map_err(|e| ConfigError::invalid(format!("transport.{}", e.field), e.reason))?;
        let behavior = self
            .behavior
            .as_deref()
            .map(BehaviorKind::from_str)
            .transpose()
            .map_err(|e| ConfigError::invalid("behavior", e.to_string()))?;
        // A twin's port is shared with the other process that holds the replica's key.
        transport.share_port = behavior == Some(BehaviorKind::Twin);

        let key = load_key_file(config_path, &self.key_file)?;
        if key.public() != listed.public_key {
            return Err(ConfigError::invalid(
                "key_file",
                format!(
                    "{} holds public key {}, but replicas[{index}].public_key lists {} for \
                     replica {}: is this replica {}'s key file?",
                    resolve(config_path, &self.key_file).display(),
                    key.public().to_hex(),
                    listed.public_key.to_hex(),
                    self.id,
                    self.id
                ),
            ));
        }
        Ok(NodeSetup {
            id: self.id,
            key,
            listen: self.listen,
            committee: committee.with_clients(clients),
            peers,
            protocol,
            transport,
            data_dir: resolve(config_path, &self.data_dir),
            storage: self.storage,
            metrics: self.metrics,
            metrics_server: self.metrics_server.clone(),
            behavior,
        })
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Reads, validates and resolves a replica's configuration file (see the module docs for the
/// format): the cluster, the key file and its match with the listed key, the listen port, the
/// protocol and transport parameters and the behaviour. Binding the listen address happens
/// later, when the node starts.
pub fn load_node_config(path: &Path) -> Result<NodeSetup, ConfigError> {
    read_node_config(path)?.to_setup_in(path)
}

/// Reads a replica's configuration file without validating it; [`NodeConfigFile::to_setup`]
/// validates. Errors name the file.
pub fn read_node_config(path: &Path) -> Result<NodeConfigFile, ConfigError> {
    read_toml(path)
}

//! The client's TOML configuration file.
//!
//! ```toml
//! key_file = "client.key"     # the client's secret key; relative to this file's directory
//! f = 1
//!
//! [[replicas]]                # one per replica, ids 0..n-1, n = 3f+1
//! id = 0
//! address = "127.0.0.1:7000"
//! public_key = "<64 hex digits>"
//! ```
//!
//! The cluster part (`f` and `[[replicas]]`) is the replicas' own [`ClusterConfig`], validated
//! the same way. Unknown fields are refused, so a misspelt field is an error.

use std::path::{Path, PathBuf};

use pbft_config::{load_key_file, read_toml, ClusterConfig, ConfigError, ReplicaEntry};
use serde::{Deserialize, Serialize};

use crate::client::ClientSetup;
use crate::error::ClientError;

/// A client configuration file as written. Tools that write one (such as a test-cluster
/// launcher) serialize this struct with `toml::to_string`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    /// The client's secret key file (as written by `pbft-node keygen`). Relative to the
    /// configuration file's directory.
    pub key_file: PathBuf,
    /// The number of Byzantine replicas tolerated, as in [`ClusterConfig::f`].
    pub f: usize,
    /// Every replica of the cluster, as in [`ClusterConfig::replicas`].
    pub replicas: Vec<ReplicaEntry>,
}

impl ClientConfigFile {
    /// The cluster part of the file.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            f: self.f,
            replicas: self.replicas.clone(),
        }
    }

    /// Validates the cluster, reads the key file and builds a [`ClientSetup`] with default
    /// timings. `config_path` is the file this came from: `key_file` is resolved against its
    /// directory.
    pub fn to_setup(&self, config_path: &Path) -> Result<ClientSetup, ClientError> {
        let config_error = |e: ConfigError| ClientError::Config(e.in_file(config_path));
        let replicas = self.cluster().validate().map_err(config_error)?;
        let key = load_key_file(config_path, &self.key_file).map_err(config_error)?;
        if let Some(replica) = replicas.iter().find(|r| r.public_key == key.public()) {
            let reason = format!(
                "holds the key of replica {}; a client needs its own key",
                replica.id
            );
            return Err(ConfigError::invalid("key_file", reason)
                .in_file(config_path)
                .into());
        }
        Ok(ClientSetup::new(key, self.f, replicas))
    }
}

/// Reads a client configuration file (see the module docs) into a [`ClientSetup`] with default
/// timings. Errors name the file and the field at fault.
pub fn load_client_config(path: impl AsRef<Path>) -> Result<ClientSetup, ClientError> {
    let path = path.as_ref();
    let file: ClientConfigFile = read_toml(path)?;
    file.to_setup(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;

    fn keys(n: usize) -> Vec<KeyPair> {
        (0..n)
            .map(|i| KeyPair::from_seed(&[i as u8 + 1; 32]).unwrap())
            .collect()
    }

    fn write_config(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("client.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    fn replicas_toml(keys: &[KeyPair]) -> String {
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                format!(
                    "[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n\n",
                    7000 + i,
                    key.public().to_hex()
                )
            })
            .collect()
    }

    #[test]
    fn loads_a_valid_file_with_a_relative_key_path() {
        let dir = tempfile::tempdir().unwrap();
        let client = KeyPair::from_seed(&[42; 32]).unwrap();
        client.save(&dir.path().join("client.key")).unwrap();
        let replicas = keys(4);
        let body = format!(
            "key_file = \"client.key\"\nf = 1\n\n{}",
            replicas_toml(&replicas)
        );
        let setup = load_client_config(write_config(dir.path(), &body)).unwrap();
        assert_eq!(setup.key.public(), client.public());
        assert_eq!(setup.f, 1);
        assert_eq!(setup.replicas.len(), 4);
        assert_eq!(setup.replicas[2].public_key, replicas[2].public());
        assert_eq!(setup.replicas[3].addr.port(), 7003);
    }

    #[test]
    fn round_trips_through_toml() {
        let file = ClientConfigFile {
            key_file: "k.key".into(),
            f: 1,
            replicas: vec![ReplicaEntry {
                id: 0,
                address: "127.0.0.1:1".parse().unwrap(),
                public_key: keys(1)[0].public().to_hex(),
            }],
        };
        let text = toml::to_string(&file).unwrap();
        assert_eq!(toml::from_str::<ClientConfigFile>(&text).unwrap(), file);
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        KeyPair::from_seed(&[42; 32])
            .unwrap()
            .save(&dir.path().join("client.key"))
            .unwrap();
        let good = replicas_toml(&keys(4));
        let cases = [
            (
                format!(
                    "key_file = \"client.key\"\nf = 1\n\n{}",
                    good.replacen("id = 2", "id = 1", 1)
                ),
                "replicas[2].id",
            ),
            (
                format!(
                    "key_file = \"client.key\"\nf = 1\n\n{}",
                    good.replacen("public_key = \"", "public_key = \"zz", 1)
                ),
                "replicas[0].public_key",
            ),
            (
                format!("key_file = \"client.key\"\nf = 2\n\n{good}"),
                "replicas",
            ),
            (
                format!("key_file = \"missing.key\"\nf = 1\n\n{good}"),
                "key_file",
            ),
            (
                format!("key_file = \"client.key\"\nf = 1\ncolour = 3\n\n{good}"),
                "colour",
            ),
            (format!("key_file = \"client.key\"\n\n{good}"), "`f`"),
        ];
        for (body, field) in cases {
            let error = load_client_config(write_config(dir.path(), &body)).unwrap_err();
            let ClientError::Config(config) = &error else {
                panic!("not a config error: {error:?}");
            };
            let message = config.to_string();
            assert!(message.contains(field), "{message:?} does not name {field}");
        }
    }

    #[test]
    fn a_missing_file_is_a_config_error() {
        let error = load_client_config("/nonexistent/client.toml").unwrap_err();
        assert!(
            matches!(&error, ClientError::Config(ConfigError::NotFound { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn refuses_a_replica_key_as_the_client_key() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = keys(4);
        replicas[1].save(&dir.path().join("client.key")).unwrap();
        let body = format!(
            "key_file = \"client.key\"\nf = 1\n\n{}",
            replicas_toml(&replicas)
        );
        let error = load_client_config(write_config(dir.path(), &body)).unwrap_err();
        assert!(
            matches!(&error, ClientError::Config(c) if c.field() == Some("key_file")
                && c.to_string().contains("replica 1")),
            "{error:?}"
        );
    }
}

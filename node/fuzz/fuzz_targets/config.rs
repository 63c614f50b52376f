//! Arbitrary text as a replica's configuration file and as a `[protocol]` table.
//!
//! The input is parsed as TOML into `NodeConfigFile`, which is then validated into a setup as
//! `load_node_config` does, and into `ProtocolConfig`, which is checked. Neither may panic,
//! allocate without bound or loop. A parsed value that serializes must also parse back equal,
//! since tools write configuration files with `toml::to_string`.

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pbft_core::fixtures::replica_key;
use pbft_core::protocol::ProtocolConfig;
use pbft_node::config::NodeConfigFile;

/// A directory holding `keys/replica-{i}.key` for the four test replicas, so a file that lists
/// their public keys can pass validation all the way.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("keys")).expect("create keys/");
        for i in 0..4 {
            replica_key(i)
                .save(&dir.path().join(format!("keys/replica-{i}.key")))
                .expect("write a key file");
        }
        dir
    })
    .path()
}

/// Whether `path` stays inside the configuration's directory. Paths in a configuration file
/// are trusted (an operator may point `key_file` anywhere, `/dev/zero` included), so only paths
/// that cannot leave the temporary directory are followed here.
fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|component| matches!(component, Component::Normal(_)))
}

/// `text` parses back into a value equal to `value`.
fn round_trips<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    // Values TOML cannot hold (integers above i64::MAX) do not serialize; that is not a bug.
    let Ok(text) = toml::to_string(value) else {
        return;
    };
    let again: T = toml::from_str(&text)
        .unwrap_or_else(|error| panic!("{text:?} was written but does not parse: {error}"));
    assert_eq!(&again, value, "{text:?} parses back to another value");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(file) = toml::from_str::<NodeConfigFile>(text) {
        round_trips(&file);
        if stays_inside(&file.key_file) {
            let path: PathBuf = config_dir().join("node.toml");
            let _ = file.to_setup(&path);
        }
    }

    if let Ok(protocol) = toml::from_str::<ProtocolConfig>(text) {
        round_trips(&protocol);
        let _ = protocol.checked();
    }
});

//! `testnet hosts`: the files for a cluster whose replicas run on separate machines. For each
//! host it writes a directory to copy there (the node's configuration, its key and an
//! initialised data directory), and one client directory for the cluster; then it says what to
//! copy where and which ports to open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use pbft_client::ClientConfigFile;
use pbft_config::{ClientAccess, ReplicaEntry};
use pbft_core::messages::ReplicaId;
use pbft_crypto::KeyPair;
use pbft_node::config::NodeConfigFile;
use pbft_node::metrics::MetricsServerConfig;

use super::layout::{create_private_dir, open_private};
use super::setup::init_data_dir_at;
use super::LaunchError;

/// The UDP port of a host given without one.
pub const DEFAULT_PORT: u16 = 7000;
/// The metrics port on every host.
pub const DEFAULT_METRICS_PORT: u16 = 9000;

/// What `testnet hosts` is asked for.
#[derive(Clone, Debug)]
pub struct HostsOptions {
    /// Byzantine replicas tolerated.
    pub f: usize,
    /// One address per replica, in id order; a host without a port gets [`DEFAULT_PORT`].
    pub hosts: Vec<String>,
    /// Where to write; it must not exist yet.
    pub out: PathBuf,
    /// The TCP port of the metrics endpoint on every host ([`DEFAULT_METRICS_PORT`]; 0 picks a
    /// free one at start).
    pub metrics_port: u16,
    /// Serve metrics on every interface (for a Prometheus on another machine) instead of on
    /// loopback.
    pub public_metrics: bool,
    /// Admit any client key instead of the one created here.
    pub open_clients: bool,
    /// Per replica, the behaviour it runs (`None`: correct); empty for all correct.
    pub behaviors: Vec<Option<String>>,
    /// `peers[i][j]`: where replica i's configuration lists replica j, when the links between
    /// replicas run through a relay (see [`crate::nemesis::relay`]); `None` for the hosts'
    /// own addresses.
    pub peers: Option<Vec<Vec<SocketAddr>>>,
}

impl HostsOptions {
    /// Correct replicas on `hosts`, listing each other by their own addresses, metrics on
    /// loopback at [`DEFAULT_METRICS_PORT`], admitting the client key created with them.
    pub fn new(f: usize, hosts: Vec<String>, out: PathBuf) -> HostsOptions {
        HostsOptions {
            f,
            hosts,
            out,
            metrics_port: DEFAULT_METRICS_PORT,
            public_metrics: false,
            open_clients: false,
            behaviors: Vec::new(),
            peers: None,
        }
    }
}

/// One host's part, as [`generate_hosts`] wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFiles {
    /// The replica the host runs.
    pub id: ReplicaId,
    /// Where the other replicas and the clients reach it (UDP).
    pub address: SocketAddr,
    /// The directory to copy to the host.
    pub dir: PathBuf,
    /// Where it serves metrics, health and readiness (TCP).
    pub metrics: SocketAddr,
}

/// Parses `host` as an IP address with an optional port (`10.0.0.1`, `10.0.0.1:7100`, `::1`,
/// `[::1]:7100`).
fn parse_host(host: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Ok(addr);
    }
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            format!(
                "{host:?} is not an IP address with an optional port (replicas dial each other \
                 by address, so names are not resolved)"
            )
        })
}

/// The address that listens on every interface of `addr`'s family, at `port`.
fn any_interface(addr: &SocketAddr, port: u16) -> SocketAddr {
    let ip = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, port)
}

/// Writes, under `options.out`, `host-N/` for each replica (`node.toml`, `replica.key` and an
/// initialised `data/`) and `client/` (`client.toml` and `client.key`). Keys are 0600 and
/// directories 0700.
pub fn generate_hosts(options: &HostsOptions) -> Result<Vec<HostFiles>, LaunchError> {
    let n = 3 * options.f + 1;
    if options.f == 0 {
        return Err(LaunchError::Usage("--f must be at least 1".into()));
    }
    if options.hosts.len() != n {
        return Err(LaunchError::Usage(format!(
            "f = {} needs 3f+1 = {n} hosts, one per replica; {} given",
            options.f,
            options.hosts.len()
        )));
    }
    let addresses = (options.hosts.iter())
        .map(|host| parse_host(host))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LaunchError::Usage)?;
    for (i, addr) in addresses.iter().enumerate() {
        if let Some(j) = addresses[..i].iter().position(|other| other == addr) {
            return Err(LaunchError::Usage(format!(
                "replicas {j} and {i} have the same address {addr}"
            )));
        }
    }
    if options.peers.as_ref().is_some_and(|peers| peers.len() != n) || options.behaviors.len() > n {
        return Err(LaunchError::Usage(format!(
            "the peer table and the behaviours must have at most one row per replica ({n})"
        )));
    }
    if options.out.exists() {
        return Err(LaunchError::Usage(format!(
            "{} exists; choose a new --out, so that no key is overwritten",
            options.out.display()
        )));
    }
    let failure = |what: String| LaunchError::Failure(what);
    let write = |path: &Path, text: &str| {
        open_private(path, false)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
            .map_err(|e| failure(format!("cannot write {}: {e}", path.display())))
    };
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate()).collect();
    let client_key = KeyPair::generate();
    let replicas: Vec<ReplicaEntry> = (keys.iter().zip(&addresses))
        .enumerate()
        .map(|(id, (key, addr))| ReplicaEntry {
            id: id as ReplicaId,
            address: *addr,
            public_key: key.public().to_hex(),
        })
        .collect();
    let mut hosts = Vec::with_capacity(n);
    for (id, (key, addr)) in keys.iter().zip(&addresses).enumerate() {
        let mut listed = replicas.clone();
        if let Some(peers) = &options.peers {
            for entry in listed.iter_mut().filter(|entry| entry.id as usize != id) {
                entry.address = peers[id][entry.id as usize];
            }
        }
        let dir = options.out.join(format!("host-{id}"));
        create_private_dir(&dir)
            .map_err(|e| failure(format!("cannot create {}: {e}", dir.display())))?;
        let key_path = dir.join("replica.key");
        key.save(&key_path)
            .map_err(|e| failure(format!("cannot write {}: {e}", key_path.display())))?;
        let metrics = if options.public_metrics {
            any_interface(addr, options.metrics_port)
        } else {
            let loopback = match addr {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(loopback, options.metrics_port)
        };
        let config = NodeConfigFile {
            id: id as ReplicaId,
            key_file: "replica.key".into(),
            listen: any_interface(addr, addr.port()),
            data_dir: "data".into(),
            metrics: Some(metrics),
            metrics_server: MetricsServerConfig {
                public: options.public_metrics,
                ..MetricsServerConfig::default()
            },
            log: Default::default(),
            behavior: options.behaviors.get(id).cloned().flatten(),
            f: options.f,
            protocol: Default::default(),
            transport: Default::default(),
            storage: Default::default(),
            clients: if options.open_clients {
                ClientAccess::open()
            } else {
                ClientAccess::listed([client_key.public()])
            },
            replicas: listed,
        };
        let config_path = dir.join("node.toml");
        let text = toml::to_string(&config).expect("a node configuration serializes");
        write(&config_path, &text)?;
        init_data_dir_at(&config_path)?;
        hosts.push(HostFiles {
            id: id as ReplicaId,
            address: *addr,
            dir,
            metrics,
        });
    }
    let client_dir = options.out.join("client");
    create_private_dir(&client_dir)
        .map_err(|e| failure(format!("cannot create {}: {e}", client_dir.display())))?;
    let client_key_path = client_dir.join("client.key");
    client_key
        .save(&client_key_path)
        .map_err(|e| failure(format!("cannot write {}: {e}", client_key_path.display())))?;
    let client = ClientConfigFile {
        key_file: "client.key".into(),
        f: options.f,
        replicas,
    };
    let text = toml::to_string(&client).expect("a client configuration serializes");
    write(&client_dir.join("client.toml"), &text)?;
    Ok(hosts)
}

/// What to do with the files: per host, what to copy and which ports to open.
pub fn instructions(options: &HostsOptions, hosts: &[HostFiles]) -> String {
    let mut out = String::new();
    let peers: Vec<String> = hosts.iter().map(|h| h.address.ip().to_string()).collect();
    for host in hosts {
        out.push_str(&format!(
            "replica {id} on {ip}:\n  copy {dir}/ to the host (as /var/lib/pbft, owned by the \
             user that runs the replica; it holds the key)\n  run: pbft-node run --config \
             /var/lib/pbft/node.toml (or deploy/pbft-node.service)\n  open UDP {port} inbound \
             from the other replicas ({others}) and from the clients\n",
            id = host.id,
            ip = host.address.ip(),
            dir = host.dir.display(),
            port = host.address.port(),
            others = (peers.iter())
                .enumerate()
                .filter(|(i, _)| *i != host.id as usize)
                .map(|(_, ip)| ip.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ));
        if options.public_metrics {
            out.push_str(&format!(
                "  open TCP {} inbound from Prometheus only (/metrics, /healthz, /readyz)\n",
                host.metrics.port()
            ));
        } else {
            out.push_str(&format!(
                "  metrics, /healthz and /readyz on {} (this host only)\n",
                host.metrics
            ));
        }
    }
    out.push_str(&format!(
        "clients: copy {}/ to each client machine and run `pbft-client --config client.toml \
         ...`; {}\n",
        options.out.join("client").display(),
        if options.open_clients {
            "the replicas admit any client key"
        } else {
            "the replicas admit its key only; add others to `clients` in every node.toml"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_addresses_with_an_optional_port() {
        assert_eq!(
            parse_host("10.0.0.1").unwrap(),
            "10.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(
            parse_host("10.0.0.1:7100").unwrap(),
            "10.0.0.1:7100".parse().unwrap()
        );
        assert_eq!(parse_host("::1").unwrap(), "[::1]:7000".parse().unwrap());
        assert_eq!(
            parse_host("[::1]:7100").unwrap(),
            "[::1]:7100".parse().unwrap()
        );
        let error = parse_host("db.example").unwrap_err();
        assert!(error.contains("not an IP address"), "{error}");
    }

    #[test]
    fn the_count_and_the_addresses_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cluster");
        let options = |hosts: &[&str]| {
            HostsOptions::new(
                1,
                hosts.iter().map(|h| h.to_string()).collect(),
                out.clone(),
            )
        };
        let three = generate_hosts(&options(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        assert!(matches!(three, Err(LaunchError::Usage(m)) if m.contains("needs 3f+1 = 4")));
        let twice = generate_hosts(&options(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1"]));
        assert!(matches!(twice, Err(LaunchError::Usage(m)) if m.contains("same address")));
        assert!(!out.exists(), "nothing is written for a refused request");
    }
}

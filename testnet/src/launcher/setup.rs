//! What `testnet up` prepares before anything runs: which replicas are Byzantine and how, the
//! ports, and the keys and configuration files in DIR.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use pbft_client::ClientConfigFile;
use pbft_config::{ClientAccess, ReplicaEntry};
use pbft_core::byzantine::BehaviorKind;
use pbft_core::messages::ReplicaId;
use pbft_core::protocol::ProtocolConfig;
use pbft_crypto::KeyPair;
use pbft_node::config::NodeConfigFile;
use pbft_node::storage::StorageConfig;

use super::layout::{create_private_dir, open_private, Layout, NodeRecord};
use super::LaunchError;

/// The behaviours `mixed` cycles through, in this order over the faulty replicas.
pub const MIXED: [BehaviorKind; 4] = [
    BehaviorKind::Equivocate,
    BehaviorKind::Silent,
    BehaviorKind::Corrupt,
    BehaviorKind::Slow,
];

/// What `--behavior` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BehaviorChoice {
    /// Every faulty replica runs this behaviour.
    Same(BehaviorKind),
    /// The faulty replicas cycle through [`MIXED`].
    Mixed,
}

impl BehaviorChoice {
    /// The default for `byzantine` faulty replicas: an equivocator alone, a mix for several.
    pub fn default_for(byzantine: usize) -> BehaviorChoice {
        if byzantine > 1 {
            BehaviorChoice::Mixed
        } else {
            BehaviorChoice::Same(BehaviorKind::Equivocate)
        }
    }

    /// The behaviour of the `index`-th faulty replica.
    pub fn kind(self, index: usize) -> BehaviorKind {
        match self {
            BehaviorChoice::Same(kind) => kind,
            BehaviorChoice::Mixed => MIXED[index % MIXED.len()],
        }
    }
}

impl fmt::Display for BehaviorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BehaviorChoice::Same(kind) => write!(f, "{kind}"),
            BehaviorChoice::Mixed => f.write_str("mixed"),
        }
    }
}

/// The names `--behavior` documents; every [`BehaviorKind`] name is accepted too.
pub const BEHAVIOR_NAMES: &str = "equivocate (the same as equivocate-split), equivocate-minority, \
                                  silent, corrupt, slow, twin, shun, mixed";

impl FromStr for BehaviorChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<BehaviorChoice, String> {
        if text == "mixed" {
            return Ok(BehaviorChoice::Mixed);
        }
        BehaviorKind::from_str(text).map(BehaviorChoice::Same).map_err(|_| {
            let others: Vec<&str> = BehaviorKind::ALL
                .iter()
                .map(|k| k.name())
                .filter(|name| !BEHAVIOR_NAMES.contains(name))
                .collect();
            format!(
                "unknown behaviour {text:?}: choose one of {BEHAVIOR_NAMES} (or the simulator's {})",
                others.join(", ")
            )
        })
    }
}

/// The replicas' roles: which are Byzantine, with which behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Byzantine replicas tolerated.
    pub f: usize,
    /// Each replica's behaviour, `None` for a correct one; indexed by id.
    pub behaviors: Vec<Option<BehaviorKind>>,
}

impl Plan {
    /// Decides the roles. By default the Byzantine replicas are the first ids, so the view-0
    /// primary is one of them: the worst case. More than f of them is refused unless
    /// `allow_unsafe`.
    pub fn new(
        f: usize,
        byzantine: Option<usize>,
        ids: Option<&[ReplicaId]>,
        behavior: Option<BehaviorChoice>,
        allow_unsafe: bool,
    ) -> Result<Plan, LaunchError> {
        let usage = |m: String| Err(LaunchError::Usage(m));
        if f == 0 {
            return usage(
                "--f must be at least 1: n = 3f+1 replicas tolerate f faulty ones".into(),
            );
        }
        if f > 33 {
            return usage(format!(
                "--f {f} would start {} replicas; at most f = 33 (100 replicas) is supported",
                3 * f + 1
            ));
        }
        let n = 3 * f + 1;
        let ids: Vec<ReplicaId> = match (ids, byzantine) {
            (Some(ids), count) => {
                if let Some(count) = count.filter(|c| *c != ids.len()) {
                    return usage(format!(
                        "--byzantine {count} disagrees with --byzantine-ids, which lists {} \
                         replicas",
                        ids.len()
                    ));
                }
                let mut seen = Vec::new();
                for &id in ids {
                    if id as usize >= n {
                        return usage(format!(
                            "--byzantine-ids: replica {id} does not exist; with f = {f} the ids \
                             are 0 to {}",
                            n - 1
                        ));
                    }
                    if seen.contains(&id) {
                        return usage(format!("--byzantine-ids lists replica {id} twice"));
                    }
                    seen.push(id);
                }
                seen
            }
            (None, count) => {
                let count = count.unwrap_or(0);
                if count > n {
                    return usage(format!(
                        "--byzantine {count} exceeds the {n} replicas of a cluster with f = {f}"
                    ));
                }
                (0..count as ReplicaId).collect()
            }
        };
        let count = ids.len();
        if count > f && !allow_unsafe {
            return usage(format!(
                "--byzantine {count} exceeds f = {f}: {n} replicas stay safe and live with at \
                 most {f} Byzantine ones. Raise --f, or pass --allow-unsafe to watch what breaks"
            ));
        }
        if count == 0 && behavior.is_some() {
            return usage("--behavior needs at least one Byzantine replica (--byzantine B)".into());
        }
        let choice = behavior.unwrap_or(BehaviorChoice::default_for(count));
        let mut behaviors = vec![None; n];
        for (index, id) in ids.iter().enumerate() {
            behaviors[*id as usize] = Some(choice.kind(index));
        }
        Ok(Plan { f, behaviors })
    }

    /// The number of replicas.
    pub fn n(&self) -> usize {
        self.behaviors.len()
    }

    /// The number of Byzantine replicas.
    pub fn byzantine(&self) -> usize {
        self.behaviors.iter().filter(|b| b.is_some()).count()
    }
}

/// A port reserved by a socket bound to it, until dropped.
#[derive(Debug)]
#[allow(dead_code)] // Held only to keep the port.
enum Holder {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

/// The addresses of a new cluster: each replica's UDP address and metrics TCP address. The
/// ports stay reserved until this is dropped, just before the nodes start.
#[derive(Debug)]
pub struct Ports {
    /// The replicas' QUIC (UDP) addresses, by id.
    pub replicas: Vec<SocketAddr>,
    /// The replicas' metrics (TCP) addresses, by id.
    pub metrics: Vec<SocketAddr>,
    _held: Vec<Holder>,
}

/// Offset of the metrics ports from the replica ports with `--base-port`.
pub const METRICS_OFFSET: u16 = 100;

impl Ports {
    /// Free ports on 127.0.0.1, or with `base` the ports `base + id` (UDP) and
    /// `base + 100 + id` (TCP, metrics), each checked to be free.
    pub fn allocate(n: usize, base: Option<u16>) -> Result<Ports, LaunchError> {
        let localhost = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut ports = Ports {
            replicas: Vec::with_capacity(n),
            metrics: Vec::with_capacity(n),
            _held: Vec::new(),
        };
        let Some(base) = base else {
            for _ in 0..n {
                let udp = UdpSocket::bind(localhost(0)).map_err(no_free_port)?;
                let tcp = TcpListener::bind(localhost(0)).map_err(no_free_port)?;
                ports.replicas.push(udp.local_addr().map_err(no_free_port)?);
                ports.metrics.push(tcp.local_addr().map_err(no_free_port)?);
                ports._held.push(Holder::Udp(udp));
                ports._held.push(Holder::Tcp(tcp));
            }
            return Ok(ports);
        };
        let last = u32::from(base) + u32::from(METRICS_OFFSET) + n as u32 - 1;
        if base == 0 || last > u32::from(u16::MAX) {
            return Err(LaunchError::Usage(format!(
                "--base-port {base}: the {n} replicas need ports {base} to {} and {} to {last}; \
                 choose a base port between 1 and {}",
                u32::from(base) + n as u32 - 1,
                u32::from(base) + u32::from(METRICS_OFFSET),
                u32::from(u16::MAX) - u32::from(METRICS_OFFSET) - n as u32 + 1
            )));
        }
        for id in 0..n as u16 {
            let port = base + id;
            let udp = UdpSocket::bind(localhost(port)).map_err(|e| port_in_use(port, id, "", e))?;
            let metrics = port + METRICS_OFFSET;
            let tcp = TcpListener::bind(localhost(metrics))
                .map_err(|e| port_in_use(metrics, id, " (metrics, TCP)", e))?;
            ports.replicas.push(localhost(port));
            ports.metrics.push(localhost(metrics));
            ports._held.push(Holder::Udp(udp));
            ports._held.push(Holder::Tcp(tcp));
        }
        Ok(ports)
    }
}

fn no_free_port(e: std::io::Error) -> LaunchError {
    LaunchError::Failure(format!("cannot find a free port on 127.0.0.1: {e}"))
}

fn port_in_use(port: u16, id: u16, what: &str, e: std::io::Error) -> LaunchError {
    let reason = if e.kind() == std::io::ErrorKind::AddrInUse {
        "is already in use".to_string()
    } else {
        format!("cannot be bound: {e}")
    };
    LaunchError::Usage(format!(
        "port {port} on 127.0.0.1 (replica {id}{what}) {reason}: choose another --base-port, \
         or leave it out to use free ports"
    ))
}

/// Replica settings a testnet may override; `None` keeps the replica's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    /// The view-change timeout in milliseconds.
    pub view_change_timeout_ms: Option<u64>,
    /// The checkpoint interval K; the log window becomes 2K.
    pub checkpoint_interval: Option<u64>,
    /// How long the primary lets a batch fill while another is in flight, in microseconds.
    pub batch_delay_us: Option<u64>,
    /// How replicas keep their durable state.
    pub storage: Durability,
    /// Admit any client key (`clients = "open"`), as a public service does; otherwise only the
    /// testnet's client key.
    pub open_clients: bool,
}

/// How replicas keep their durable state (the `[storage]` table of their configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Written and synced to disk before anything that depends on it is sent.
    #[default]
    Fsync,
    /// Written before sending, not synced: survives process crashes, not power loss.
    NoFsync,
    /// Nothing kept: a restarted replica forgets what it signed. For measurements only.
    Off,
}

impl NodeOverrides {
    fn storage_section(&self) -> StorageConfig {
        match self.storage {
            Durability::Fsync => StorageConfig::default(),
            Durability::NoFsync => StorageConfig {
                fsync: false,
                ..StorageConfig::default()
            },
            Durability::Off => StorageConfig {
                durable: false,
                ..StorageConfig::default()
            },
        }
    }

    fn protocol_section(&self) -> ProtocolConfig {
        let mut protocol = ProtocolConfig::default();
        if let Some(ms) = self.view_change_timeout_ms {
            protocol.view_change_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(k) = self.checkpoint_interval {
            protocol.checkpoint_interval = k;
            protocol.log_window = 2 * k;
            protocol.limits.log_window = 2 * k;
        }
        if let Some(us) = self.batch_delay_us {
            protocol.batch_delay = std::time::Duration::from_micros(us);
        }
        protocol
    }
}

/// The processes a new testnet runs, as [`generate`] wrote them (without pids).
#[derive(Clone, Debug)]
pub struct Generated {
    /// One per replica, in id order.
    pub nodes: Vec<NodeRecord>,
    /// The second process of each replica with the `twin` behaviour.
    pub twins: Vec<NodeRecord>,
}

/// Initialises the data directory of the node configured in `config` (relative to DIR), as
/// `pbft-node init` does.
fn init_data_dir(layout: &Layout, config: &std::path::Path) -> Result<(), LaunchError> {
    init_data_dir_at(&layout.path(config))
}

/// Initialises the data directory of the node configured in the file at `path`, as
/// `pbft-node init` does.
pub(crate) fn init_data_dir_at(path: &std::path::Path) -> Result<(), LaunchError> {
    let setup = pbft_node::config::load_node_config(path)
        .map_err(|e| LaunchError::Failure(format!("cannot read back {}: {e}", path.display())))?;
    pbft_node::data_dir::init(&setup, false).map_err(|e| {
        LaunchError::Failure(format!(
            "cannot initialise {}: {}",
            setup.data_dir.display(),
            pbft_node::error::with_causes(&e)
        ))
    })
}

/// Where each replica dials the others when the links between replicas run through a relay
/// (see [`crate::nemesis::relay`]). Clients still reach the replicas directly.
#[derive(Clone, Debug)]
pub struct PeerLinks {
    /// `table[i][j]`: where replica i's configuration lists replica j (`i != j`).
    pub table: Vec<Vec<SocketAddr>>,
    /// Set to the replicas' own addresses once they are chosen.
    pub targets: Arc<OnceLock<Vec<SocketAddr>>>,
}

/// Writes keys and configuration files for `plan` into DIR and returns the processes' records
/// (without pids). DIR must hold none of a testnet's files. With `links`, each replica lists the
/// others where the links say.
pub fn generate(
    layout: &Layout,
    plan: &Plan,
    ports: &Ports,
    protocol: NodeOverrides,
    links: Option<&PeerLinks>,
) -> Result<Generated, LaunchError> {
    let failure = |what: String| LaunchError::Failure(what);
    for sub in ["keys", "logs", "data"] {
        let path = layout.dir.join(sub);
        create_private_dir(&path)
            .map_err(|e| failure(format!("cannot create {}: {e}", path.display())))?;
    }
    let n = plan.n();
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate()).collect();
    for (id, key) in keys.iter().enumerate() {
        let path = layout.path(&Layout::key_file(id as ReplicaId));
        key.save(&path)
            .map_err(|e| failure(format!("cannot write {}: {e}", path.display())))?;
    }
    let replicas: Vec<ReplicaEntry> = keys
        .iter()
        .enumerate()
        .map(|(id, key)| ReplicaEntry {
            id: id as ReplicaId,
            address: ports.replicas[id],
            public_key: key.public().to_hex(),
        })
        .collect();
    let write = |relative: &std::path::Path, text: String| {
        let path = layout.path(relative);
        open_private(&path, false)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
            .map_err(|e| failure(format!("cannot write {}: {e}", path.display())))
    };
    // The testnet's clients all use the one key it creates; replicas admit no other.
    let client_key = KeyPair::generate();
    let mut records = Vec::with_capacity(n);
    let mut twins = Vec::new();
    for id in 0..n {
        let rid = id as ReplicaId;
        let mut listed = replicas.clone();
        if let Some(links) = links {
            for entry in listed.iter_mut().filter(|entry| entry.id != rid) {
                entry.address = links.table[id][entry.id as usize];
            }
        }
        let config = NodeConfigFile {
            id: rid,
            key_file: Layout::key_file(rid),
            listen: ports.replicas[id],
            data_dir: Layout::data_dir(rid),
            metrics: Some(ports.metrics[id]),
            metrics_server: Default::default(),
            log: Default::default(),
            behavior: plan.behaviors[id].map(|k| k.name().to_string()),
            f: plan.f,
            protocol: protocol.protocol_section(),
            transport: Default::default(),
            storage: protocol.storage_section(),
            clients: if protocol.open_clients {
                ClientAccess::open()
            } else {
                ClientAccess::listed([client_key.public()])
            },
            replicas: listed,
        };
        let text = toml::to_string(&config).expect("a node configuration serializes");
        write(&Layout::node_config(rid), text)?;
        init_data_dir(layout, &Layout::node_config(rid))?;
        if plan.behaviors[id] == Some(BehaviorKind::Twin) {
            // The same key and port; a state, log and configuration of its own.
            let twin = NodeConfigFile {
                data_dir: Layout::twin_data_dir(rid),
                metrics: None,
                ..config
            };
            let text = toml::to_string(&twin).expect("a node configuration serializes");
            write(&Layout::twin_config(rid), text)?;
            init_data_dir(layout, &Layout::twin_config(rid))?;
            twins.push(NodeRecord {
                id: rid,
                address: ports.replicas[id],
                metrics: None,
                pid: None,
                behavior: Some(BehaviorKind::Twin.name().to_string()),
                config: Layout::twin_config(rid),
                log: Layout::twin_log_file(rid),
            });
        }
        records.push(NodeRecord {
            id: rid,
            address: ports.replicas[id],
            metrics: Some(ports.metrics[id]),
            pid: None,
            behavior: plan.behaviors[id].map(|k| k.name().to_string()),
            config: Layout::node_config(rid),
            log: Layout::log_file(rid),
        });
    }
    let key_path = layout.path(&Layout::client_key());
    client_key
        .save(&key_path)
        .map_err(|e| failure(format!("cannot write {}: {e}", key_path.display())))?;
    let client = ClientConfigFile {
        key_file: Layout::client_key(),
        f: plan.f,
        replicas,
    };
    let text = toml::to_string(&client).expect("a client configuration serializes");
    write(&Layout::client_config(), text)?;
    Ok(Generated {
        nodes: records,
        twins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ids_are_byzantine_by_default_and_mixed_cycles() {
        let plan = Plan::new(2, Some(2), None, None, false).unwrap();
        assert_eq!(plan.n(), 7);
        assert_eq!(plan.behaviors[0], Some(BehaviorKind::Equivocate));
        assert_eq!(plan.behaviors[1], Some(BehaviorKind::Silent));
        assert!(plan.behaviors[2..].iter().all(Option::is_none));
        let plan = Plan::new(1, Some(1), None, None, false).unwrap();
        assert_eq!(plan.behaviors[0], Some(BehaviorKind::Equivocate));
        let plan = Plan::new(
            3,
            None,
            Some(&[0, 3, 5]),
            Some(BehaviorChoice::Mixed),
            false,
        );
        let behaviors = plan.unwrap().behaviors;
        assert_eq!(behaviors[3], Some(BehaviorKind::Silent));
        assert_eq!(behaviors[5], Some(BehaviorKind::Corrupt));
    }

    #[test]
    fn more_than_f_byzantine_needs_allow_unsafe() {
        let error = Plan::new(1, Some(2), None, None, false).unwrap_err();
        assert!(error.to_string().contains("--allow-unsafe"), "{error}");
        assert_eq!(error.exit_code(), 2);
        assert_eq!(
            Plan::new(1, Some(2), None, None, true).unwrap().byzantine(),
            2
        );
    }

    #[test]
    fn bad_ids_and_counts_are_refused() {
        assert!(Plan::new(1, None, Some(&[4]), None, false).is_err());
        assert!(Plan::new(1, None, Some(&[1, 1]), None, true).is_err());
        assert!(Plan::new(1, Some(2), Some(&[1]), None, true).is_err());
        assert!(Plan::new(0, None, None, None, false).is_err());
        assert!(Plan::new(1, Some(0), None, Some(BehaviorChoice::Mixed), false).is_err());
    }

    #[test]
    fn behavior_names_parse() {
        assert_eq!(
            "equivocate-split".parse::<BehaviorChoice>(),
            Ok(BehaviorChoice::Same(BehaviorKind::Equivocate))
        );
        assert_eq!(
            "slow".parse::<BehaviorChoice>(),
            Ok(BehaviorChoice::Same(BehaviorKind::Slow))
        );
        assert_eq!("mixed".parse::<BehaviorChoice>(), Ok(BehaviorChoice::Mixed));
        let error = "sneaky".parse::<BehaviorChoice>().unwrap_err();
        assert!(
            error.contains("equivocate-minority") && error.contains("replay"),
            "{error}"
        );
    }

    #[test]
    fn a_base_port_in_use_is_named() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        if port > u16::MAX - METRICS_OFFSET - 8 {
            return;
        }
        let error = Ports::allocate(4, Some(port)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("port {port}")), "{message}");
        assert!(message.contains("in use"), "{message}");
    }
}

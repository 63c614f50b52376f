//! `testnet compose`: a cluster of containers, each replica its own host with its own address
//! on a private network, its own data directory mounted as a volume, and a health check. The
//! image is built from the project's own `pbft-node` binary alone (`FROM scratch`, with the
//! shared libraries it links), so no registry is needed.
//!
//! The files are those of `testnet hosts` for the containers' addresses, plus `image/` (the
//! build context) and `docker-compose.yml`. Clients on the host reach the replicas at their
//! addresses on the network, through the bridge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use pbft_core::byzantine::BehaviorKind;

use super::hosts::{generate_hosts, HostFiles, HostsOptions, DEFAULT_PORT};
use super::layout::open_private;
use super::setup::{BehaviorChoice, Plan};
use super::LaunchError;
use crate::nemesis::relay::{fixed_table, RelayConfig};

/// The metrics port in every container; the network is private, so it listens on every
/// interface and the host reaches it at the container's address.
pub const METRICS_PORT: u16 = 9000;
/// The subnet of a cluster's network unless one is given.
pub const DEFAULT_SUBNET: &str = "172.30.0.0/24";
/// Where each container mounts its replica's directory.
const MOUNT: &str = "/node";
/// Where the image holds the node binary.
const NODE_IN_IMAGE: &str = "/usr/local/bin/pbft-node";

/// An IPv4 network of at least 256 addresses: the gateway is its first address, replica i is
/// at the tenth plus i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Subnet, String> {
        let bad =
            || format!("{text:?} is not an IPv4 subnet of at least 256 addresses (a.b.c.0/24)");
        let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=24).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// The host's address on the network (the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Replica `id`'s address.
    pub fn replica(&self, id: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 10 + id as u32)
    }
}

/// What `testnet compose` is asked for.
#[derive(Clone, Debug)]
pub struct ComposeOptions {
    /// Byzantine replicas tolerated; the cluster has 3f+1 containers.
    pub f: usize,
    /// How many replicas are Byzantine (the first ids).
    pub byzantine: usize,
    /// What the Byzantine replicas do.
    pub behavior: Option<BehaviorChoice>,
    /// Where to write; it must not exist yet.
    pub out: PathBuf,
    /// The network's subnet.
    pub subnet: Subnet,
    /// The compose project: it names the network (`PROJECT-net`), the image (`PROJECT-node`)
    /// and the containers (`PROJECT-replica-N`).
    pub project: String,
    /// The `pbft-node` binary to put in the image (default: the one next to this binary).
    pub node_bin: Option<PathBuf>,
    /// Route the links between replicas through a relay on the host (`testnet relay`), which
    /// serves the link from replica i to replica j on the gateway's port `base + i * n + j`.
    pub relay_base: Option<u16>,
}

/// The first port of the relay's links unless another is given.
pub const DEFAULT_RELAY_BASE: u16 = 17000;
/// The relay's file in the cluster's directory.
pub const RELAY_CONFIG: &str = "relay.toml";

impl ComposeOptions {
    /// A cluster of correct replicas on [`DEFAULT_SUBNET`] in project `pbft`.
    pub fn new(f: usize, out: PathBuf) -> ComposeOptions {
        ComposeOptions {
            f,
            byzantine: 0,
            behavior: None,
            out,
            subnet: DEFAULT_SUBNET.parse().expect("the default subnet parses"),
            project: "pbft".into(),
            node_bin: None,
            relay_base: None,
        }
    }

    /// The network's name.
    pub fn network(&self) -> String {
        format!("{}-net", self.project)
    }

    /// Replica `id`'s container name.
    pub fn container(&self, id: usize) -> String {
        format!("{}-replica-{id}", self.project)
    }
}

/// What [`generate_compose`] wrote.
#[derive(Clone, Debug)]
pub struct ComposeFiles {
    /// The compose file.
    pub compose_file: PathBuf,
    /// Each replica's directory and addresses.
    pub hosts: Vec<HostFiles>,
    /// The client configuration for the host.
    pub client_config: PathBuf,
    /// Each replica's behaviour, by id (`None`: correct).
    pub behaviors: Vec<Option<String>>,
    /// The relay's addresses, if the links run through one.
    pub relay: Option<RelayConfig>,
}

/// Writes the cluster's files under `options.out`: `host-N/` per replica (as `testnet hosts`
/// writes them), `client/`, `image/` (Dockerfile, the node binary and its libraries) and
/// `docker-compose.yml`.
pub fn generate_compose(options: &ComposeOptions) -> Result<ComposeFiles, LaunchError> {
    let plan = Plan::new(
        options.f,
        Some(options.byzantine),
        None,
        options.behavior,
        false,
    )?;
    if plan.behaviors.contains(&Some(BehaviorKind::Twin)) {
        return Err(LaunchError::Usage(
            "twin needs two processes on one host and port; containers have a host each".into(),
        ));
    }
    if !valid_project(&options.project) {
        return Err(LaunchError::Usage(format!(
            "project {:?}: use lowercase letters, digits and dashes, starting with a letter",
            options.project
        )));
    }
    let node_bin = node_binary(options.node_bin.as_deref())?;
    let n = plan.n();
    let behaviors: Vec<Option<String>> = (plan.behaviors.iter())
        .map(|kind| kind.map(|k| k.name().to_string()))
        .collect();
    let addresses: Vec<SocketAddr> = (0..n)
        .map(|id| SocketAddr::new(IpAddr::V4(options.subnet.replica(id)), DEFAULT_PORT))
        .collect();
    let relay = match options.relay_base {
        Some(base) => Some(RelayConfig {
            links: fixed_table(IpAddr::V4(options.subnet.gateway()), n, base)
                .map_err(LaunchError::Usage)?,
            replicas: addresses.clone(),
        }),
        None => None,
    };
    let written = generate_hosts(&HostsOptions {
        metrics_port: METRICS_PORT,
        public_metrics: true,
        behaviors: behaviors.clone(),
        peers: relay.as_ref().map(|relay| relay.links.clone()),
        ..HostsOptions::new(
            options.f,
            addresses.iter().map(ToString::to_string).collect(),
            options.out.clone(),
        )
    })?;
    write_image(&options.out.join("image"), &node_bin)?;
    let compose_file = options.out.join("docker-compose.yml");
    write_file(&compose_file, &compose_yaml(options, &written))?;
    if let Some(relay) = &relay {
        let text = toml::to_string(relay).expect("a relay configuration serializes");
        write_file(&options.out.join(RELAY_CONFIG), &text)?;
    }
    Ok(ComposeFiles {
        compose_file,
        hosts: written,
        client_config: options.out.join("client").join("client.toml"),
        behaviors,
        relay,
    })
}

fn valid_project(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.len() <= 40
        && (name.chars()).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn write_file(path: &Path, text: &str) -> Result<(), LaunchError> {
    open_private(path, false)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .map_err(|e| LaunchError::Failure(format!("cannot write {}: {e}", path.display())))
}

/// The `pbft-node` binary for the image: `node_bin`, or the one built next to this binary.
fn node_binary(node_bin: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let path = match node_bin {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| LaunchError::Failure(format!("cannot locate this executable: {e}")))?
            .with_file_name(format!("pbft-node{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        return Err(LaunchError::Usage(format!(
            "the image needs the pbft-node binary, and {} is not one: build it with `cargo build \
             --release -p pbft-node`, or name it with --node-bin",
            path.display()
        )));
    }
    Ok(path)
}

/// The shared libraries `binary` loads, as `ldd` lists them (none for a static binary).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, LaunchError> {
    let output = Command::new("ldd").arg(binary).output().map_err(|e| {
        LaunchError::Failure(format!("cannot run ldd to list the node's libraries: {e}"))
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`;
    // the vDSO has no file.
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Writes the build context: the node binary, the libraries it loads at their paths, and a
/// Dockerfile `FROM scratch`.
fn write_image(dir: &Path, node_bin: &Path) -> Result<(), LaunchError> {
    let failure = |what: &Path, e: std::io::Error| {
        LaunchError::Failure(format!("cannot write {}: {e}", what.display()))
    };
    let root = dir.join("root");
    let copy = |from: &Path, inside: &Path| -> Result<(), LaunchError> {
        let to = root.join(inside.strip_prefix("/").unwrap_or(inside));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failure(parent, e))?;
        }
        std::fs::copy(from, &to).map_err(|e| failure(&to, e))?;
        Ok(())
    };
    copy(node_bin, Path::new(NODE_IN_IMAGE))?;
    // Debug information is most of a release binary; the image does without. Where no strip
    // is installed, the image is larger and works the same.
    let _ = Command::new("strip")
        .arg(root.join(NODE_IN_IMAGE.trim_start_matches('/')))
        .output();
    for library in libraries(node_bin)? {
        // The path inside the image is the one the binary asks for; the copy follows links.
        copy(&library, &library)?;
    }
    let dockerfile = format!(
        "# The replica alone: its binary and the libraries it loads, nothing else.\n\
         FROM scratch\n\
         COPY root/ /\n\
         ENTRYPOINT [\"{NODE_IN_IMAGE}\"]\n\
         CMD [\"--help\"]\n"
    );
    write_file(&dir.join("Dockerfile"), &dockerfile)
}

/// The compose file: one service per replica with its address, its directory mounted, and a
/// health check on `/readyz`.
fn compose_yaml(options: &ComposeOptions, hosts: &[HostFiles]) -> String {
    let mut yaml = format!(
        "# A PBFT cluster of {n} replicas (f = {f}), each its own host on {subnet}.\n\
         # Written by `testnet compose`; bring it up with `docker compose up -d` here.\n\
         version: \"2.4\"\n\
         services:\n",
        n = hosts.len(),
        f = options.f,
        subnet = options.subnet,
    );
    for host in hosts {
        let id = host.id;
        let dir = host
            .dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        yaml.push_str(&format!(
            "  replica-{id}:\n\
             \x20   build: ./image\n\
             \x20   image: {project}-node\n\
             \x20   container_name: {container}\n\
             \x20   command: [\"run\", \"--config\", \"{MOUNT}/node.toml\"]\n\
             \x20   volumes:\n\
             \x20     - ./{dir}:{MOUNT}\n\
             \x20   networks:\n\
             \x20     cluster:\n\
             \x20       ipv4_address: {ip}\n\
             \x20   healthcheck:\n\
             \x20     test: [\"CMD\", \"{NODE_IN_IMAGE}\", \"probe\", \"--ready\", \"--config\", \"{MOUNT}/node.toml\"]\n\
             \x20     interval: 2s\n\
             \x20     timeout: 3s\n\
             \x20     retries: 3\n\
             \x20     start_period: 10s\n\
             \x20   stop_grace_period: 10s\n",
            project = options.project,
            container = options.container(id as usize),
            ip = host.address.ip(),
        ));
    }
    yaml.push_str(&format!(
        "networks:\n\
         \x20 cluster:\n\
         \x20   name: {}\n\
         \x20   driver: bridge\n\
         \x20   ipam:\n\
         \x20     config:\n\
         \x20       - subnet: {}\n\
         \x20         gateway: {}\n",
        options.network(),
        options.subnet,
        options.subnet.gateway()
    ));
    yaml
}

/// What to do with the files.
pub fn instructions(options: &ComposeOptions, files: &ComposeFiles) -> String {
    let dir = options.out.display();
    let mut out = format!(
        "wrote a cluster of {} containers (f = {}) on {} to {dir}\n",
        files.hosts.len(),
        options.f,
        options.subnet
    );
    for (host, behavior) in files.hosts.iter().zip(&files.behaviors) {
        out.push_str(&format!(
            "  {}: {} (metrics {}:{METRICS_PORT}){}\n",
            options.container(host.id as usize),
            host.address,
            host.address.ip(),
            behavior
                .as_ref()
                .map(|b| format!(", Byzantine: {b}"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "start it:   cd {dir} && docker compose up -d   (or docker-compose up -d)\n\
         watch it:   docker compose ps   (healthy = /readyz answers 200)\n\
         use it:     pbft-client --config {} put greeting hello\n\
         stop it:    docker compose down   (the data stays in {dir}/host-N/data)\n",
        files.client_config.display()
    ));
    if files.relay.is_some() {
        out.push_str(&format!(
            "the replicas reach each other through a relay on this host: once the network \
             exists (after `up`), run `testnet relay --config {dir}/{RELAY_CONFIG} \
             [--delay-ms MS]` and keep it running\n"
        ));
    }
    out
}

/// The command that runs Compose here: `docker compose` or `docker-compose`, whichever works.
pub fn compose_command() -> Option<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if works("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// Why containers cannot run here, or `None` if a Docker engine answers and Compose is
/// installed.
pub fn engine_unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Err(e) => return Some(format!("cannot run docker: {e}")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "the Docker engine does not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    compose_command()
        .is_none()
        .then(|| "neither `docker compose` nor `docker-compose` works".into())
}

/// Runs `docker ARGS...` (or the compose command, with `compose`), returning its stdout.
pub fn docker(args: &[&str]) -> Result<String, LaunchError> {
    run_command("docker", args)
}

fn run_command(program: &str, args: &[&str]) -> Result<String, LaunchError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LaunchError::Failure(format!("cannot run {program}: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LaunchError::Failure(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Runs Compose on `compose_file` in project `project`.
pub fn compose(compose_file: &Path, project: &str, args: &[&str]) -> Result<String, LaunchError> {
    let command = compose_command().ok_or_else(|| {
        LaunchError::Failure("neither `docker compose` nor `docker-compose` works".into())
    })?;
    let file = compose_file.display().to_string();
    let mut full: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    full.extend(["-f", &file, "-p", project]);
    full.extend(args);
    run_command(&command[0], &full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_name_the_gateway_and_the_replicas() {
        let subnet: Subnet = "10.9.8.77/24".parse().unwrap();
        assert_eq!(subnet.to_string(), "10.9.8.0/24");
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 9, 8, 1));
        assert_eq!(subnet.replica(3), Ipv4Addr::new(10, 9, 8, 13));
        assert!("10.9.8.0/28".parse::<Subnet>().is_err());
        assert!("10.9.8.0".parse::<Subnet>().is_err());
    }

    #[test]
    fn the_compose_file_gives_each_replica_its_address_volume_and_health_check() {
        let dir = tempfile::tempdir().unwrap();
        // Any executable stands in for the node binary here; the image is not built.
        let node_bin = std::env::current_exe().unwrap();
        let options = ComposeOptions {
            byzantine: 1,
            node_bin: Some(node_bin),
            ..ComposeOptions::new(1, dir.path().join("cluster"))
        };
        let files = generate_compose(&options).unwrap();
        let yaml = std::fs::read_to_string(&files.compose_file).unwrap();
        for id in 0..4 {
            assert!(
                yaml.contains(&format!("ipv4_address: 172.30.0.{}", 10 + id)),
                "{yaml}"
            );
            assert!(yaml.contains(&format!("./host-{id}:/node")), "{yaml}");
            assert!(
                yaml.contains(&format!("container_name: pbft-replica-{id}")),
                "{yaml}"
            );
        }
        assert_eq!(yaml.matches("probe\", \"--ready\"").count(), 4, "{yaml}");
        assert!(yaml.contains("subnet: 172.30.0.0/24"), "{yaml}");
        let node0 = std::fs::read_to_string(dir.path().join("cluster/host-0/node.toml")).unwrap();
        assert!(node0.contains("behavior = \"equivocate\""), "{node0}");
        let node1 = std::fs::read_to_string(dir.path().join("cluster/host-1/node.toml")).unwrap();
        assert!(!node1.contains("behavior"), "{node1}");
        let image = dir.path().join("cluster/image");
        assert!(image.join("root/usr/local/bin/pbft-node").is_file());
        let dockerfile = std::fs::read_to_string(image.join("Dockerfile")).unwrap();
        assert!(dockerfile.contains("FROM scratch"), "{dockerfile}");
        let client = std::fs::read_to_string(&files.client_config).unwrap();
        assert!(client.contains("172.30.0.13:7000"), "{client}");
    }

    #[test]
    fn a_relayed_cluster_lists_the_others_at_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let options = ComposeOptions {
            node_bin: Some(std::env::current_exe().unwrap()),
            relay_base: Some(40000),
            project: "pbft-test".into(),
            ..ComposeOptions::new(1, dir.path().join("cluster"))
        };
        let files = generate_compose(&options).unwrap();
        let yaml = std::fs::read_to_string(&files.compose_file).unwrap();
        assert!(yaml.contains("name: pbft-test-net"), "{yaml}");
        let node2 = std::fs::read_to_string(dir.path().join("cluster/host-2/node.toml")).unwrap();
        // Replica 2 lists itself where it listens, and replica j at port 40000 + 2 * 4 + j.
        assert!(node2.contains("172.30.0.12:7000"), "{node2}");
        for port in [40008, 40009, 40011] {
            assert!(
                node2.contains(&format!("172.30.0.1:{port}")),
                "{port}: {node2}"
            );
        }
        let relay = std::fs::read_to_string(dir.path().join("cluster").join(RELAY_CONFIG)).unwrap();
        let relay: RelayConfig = toml::from_str(&relay).unwrap();
        assert_eq!(Some(relay), files.relay);
    }
}

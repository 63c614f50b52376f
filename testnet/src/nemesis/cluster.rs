//! The replicas the nemesis works on: processes on loopback (as `testnet up` starts them) or
//! containers (as `testnet compose` writes them), with their links through the relay.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pbft_client::{load_client_config, Client, ClientSetup};
use pbft_core::messages::{NodeStatus, ReplicaId};

use super::relay::{LinkFaults, Relay};
use super::NemesisOptions;
use crate::launcher::compose::{self, ComposeFiles, ComposeOptions, Subnet};
use crate::launcher::layout::{Layout, NodeRecord, State};
use crate::launcher::process::{self, STOP_GRACE};
use crate::launcher::report::{self, Agreement, NodeReport};
use crate::launcher::setup::PeerLinks;
use crate::launcher::{self, LaunchError, UpOptions};

/// Where the replicas run.
enum Hosts {
    Processes {
        layout: Layout,
        state: State,
    },
    Containers {
        options: ComposeOptions,
        files: ComposeFiles,
    },
}

/// The replicas, their links, and the faults in force.
pub struct Cluster {
    hosts: Hosts,
    pub relay: Relay,
    killed: BTreeSet<ReplicaId>,
    paused: BTreeSet<ReplicaId>,
    disconnected: BTreeSet<ReplicaId>,
    records: Vec<NodeRecord>,
    /// Where the history and the logs go.
    pub dir: PathBuf,
}

/// The compose project of the nemesis's containers unless another is given: it names the
/// containers, their network and their image.
pub const CONTAINER_PROJECT: &str = "pbft-nemesis";
/// Their subnet unless another is given.
pub const CONTAINER_SUBNET: &str = "172.30.100.0/24";

/// Where containers run: their subnet and compose project.
#[derive(Clone, Debug)]
pub struct ContainerTarget {
    pub subnet: Subnet,
    pub project: String,
}

impl Cluster {
    /// Starts 3f+1 replica processes on loopback, their links through a relay in this process.
    pub async fn processes(options: &NemesisOptions) -> Result<Cluster, LaunchError> {
        let n = 3 * options.f + 1;
        let relay = Relay::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), n)
            .await
            .map_err(|e| LaunchError::Failure(format!("cannot bind the link relay: {e}")))?;
        let mut up = UpOptions::new(options.f);
        up.byzantine = Some(options.byzantine);
        up.behavior = options.behavior;
        up.dir = options.dir.clone();
        up.force = options.force;
        up.node_bin = options.node_bin.clone();
        up.detach = true;
        up.quiet = true;
        up.links = Some(PeerLinks {
            table: relay.table(),
            targets: relay.targets(),
        });
        launcher::up(up).await?;
        let layout = Layout::new(&options.dir)?;
        let state = State::load(&layout)?;
        Ok(Cluster {
            records: state.nodes.clone(),
            dir: layout.dir.clone(),
            hosts: Hosts::Processes { layout, state },
            relay,
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            disconnected: BTreeSet::new(),
        })
    }

    /// Writes a cluster of 3f+1 containers into the nemesis's directory, brings it up with
    /// Compose, and relays its links on the network's gateway.
    pub async fn containers(
        options: &NemesisOptions,
        target: &ContainerTarget,
    ) -> Result<Cluster, LaunchError> {
        if let Some(why) = compose::engine_unavailable() {
            return Err(LaunchError::Usage(format!(
                "containers cannot run here: {why}"
            )));
        }
        prepare_container_dir(&options.dir, options.force)?;
        let compose_options = ComposeOptions {
            byzantine: options.byzantine,
            behavior: options.behavior,
            subnet: target.subnet,
            project: target.project.clone(),
            node_bin: options.node_bin.clone(),
            relay_base: Some(compose::DEFAULT_RELAY_BASE),
            ..ComposeOptions::new(options.f, options.dir.clone())
        };
        // Containers of an earlier run that was not brought down would hold the names.
        for id in 0..3 * options.f + 1 {
            let _ = compose::docker(&["rm", "-f", &compose_options.container(id)]);
        }
        let _ = compose::docker(&["network", "rm", &compose_options.network()]);
        let files = compose::generate_compose(&compose_options)?;
        let relay_config = files.relay.clone().expect("the relay was asked for");
        compose::compose(
            &files.compose_file,
            &target.project,
            &["up", "-d", "--build"],
        )?;
        let relay = Relay::bind_at(relay_config.links.clone())
            .await
            .map_err(|e| LaunchError::Failure(format!("cannot bind the link relay: {e}")))?;
        relay.set_targets(relay_config.replicas.clone());
        let records = (files.hosts.iter().zip(&files.behaviors))
            .map(|(host, behavior)| NodeRecord {
                id: host.id,
                address: host.address,
                metrics: Some(host.metrics),
                pid: None,
                behavior: behavior.clone(),
                config: host.dir.join("node.toml"),
                log: Path::new("logs").join(format!("replica-{}.log", host.id)),
            })
            .collect();
        Ok(Cluster {
            records,
            dir: options.dir.clone(),
            hosts: Hosts::Containers {
                options: compose_options,
                files,
            },
            relay,
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            disconnected: BTreeSet::new(),
        })
    }

    pub fn n(&self) -> usize {
        self.records.len()
    }

    /// The Byzantine replicas' ids.
    pub fn byzantine(&self) -> Vec<ReplicaId> {
        (self.records.iter())
            .filter(|node| node.behavior.is_some())
            .map(|node| node.id)
            .collect()
    }

    /// `processes` or `containers`.
    pub fn kind(&self) -> &'static str {
        match self.hosts {
            Hosts::Processes { .. } => "processes",
            Hosts::Containers { .. } => "containers",
        }
    }

    /// A client of the cluster with the key its replicas admit.
    pub fn client_setup(&self) -> Result<ClientSetup, LaunchError> {
        match &self.hosts {
            Hosts::Processes { layout, state } => report::fresh_client_setup(layout, state),
            Hosts::Containers { files, .. } => load_client_config(&files.client_config)
                .map_err(|e| LaunchError::Failure(e.to_string())),
        }
    }

    fn signal(&self, id: ReplicaId, signal: Signal) -> Result<(), LaunchError> {
        match &self.hosts {
            Hosts::Processes { state, .. } => match state.nodes[id as usize].pid {
                Some(pid) => process::send_signal(pid, signal),
                None => Ok(()),
            },
            Hosts::Containers { options, .. } => {
                let name = options.container(id as usize);
                let signal = signal.as_str().trim_start_matches("SIG");
                compose::docker(&["kill", "--signal", signal, &name]).map(|_| ())
            }
        }
    }

    /// Crashes replica `id` (SIGKILL); [`Cluster::heal`] starts it again.
    pub fn kill(&mut self, id: ReplicaId) -> Result<(), LaunchError> {
        self.signal(id, Signal::SIGKILL)?;
        if let Hosts::Processes { layout, state } = &self.hosts {
            let node = &state.nodes[id as usize];
            process::wait_dead(layout, std::slice::from_ref(node), STOP_GRACE);
        }
        self.killed.insert(id);
        Ok(())
    }

    /// Stops replica `id` (SIGSTOP); [`Cluster::heal`] continues it.
    pub fn pause(&mut self, id: ReplicaId) -> Result<(), LaunchError> {
        self.signal(id, Signal::SIGSTOP)?;
        self.paused.insert(id);
        Ok(())
    }

    /// Takes replica `id`'s container off its network; [`Cluster::heal`] puts it back at its
    /// address. Only containers can be.
    pub fn disconnect(&mut self, id: ReplicaId) -> Result<(), LaunchError> {
        let Hosts::Containers { options, .. } = &self.hosts else {
            return Err(LaunchError::Usage(
                "only containers can be taken off a network".into(),
            ));
        };
        let name = options.container(id as usize);
        compose::docker(&["network", "disconnect", &options.network(), &name])?;
        self.disconnected.insert(id);
        Ok(())
    }

    /// Undoes every fault: links healed, paused replicas continued, killed ones restarted,
    /// containers put back on their network.
    pub fn heal(&mut self) -> Result<(), LaunchError> {
        self.relay.set(LinkFaults::healed());
        if let Hosts::Containers { options, files } = &self.hosts {
            for id in std::mem::take(&mut self.disconnected) {
                let ip = files.hosts[id as usize].address.ip().to_string();
                let name = options.container(id as usize);
                compose::docker(&["network", "connect", "--ip", &ip, &options.network(), &name])?;
            }
        }
        for id in std::mem::take(&mut self.paused) {
            self.signal(id, Signal::SIGCONT)?;
        }
        for id in std::mem::take(&mut self.killed) {
            match &mut self.hosts {
                Hosts::Processes { layout, state } => {
                    let node = &mut state.nodes[id as usize];
                    let child = process::spawn(layout, &state.program, node)?;
                    node.pid = Some(child.id());
                    // The replica belongs to the testnet; `down` stops it.
                    drop(child);
                    state.save(layout)?;
                }
                Hosts::Containers { options, .. } => {
                    compose::docker(&["start", &options.container(id as usize)])?;
                }
            }
        }
        Ok(())
    }

    fn alive(&self, id: ReplicaId) -> bool {
        match &self.hosts {
            Hosts::Processes { layout, state } => {
                process::node_alive(layout, &state.nodes[id as usize])
            }
            Hosts::Containers { options, .. } => {
                let name = options.container(id as usize);
                compose::docker(&["inspect", "--format", "{{.State.Running}}", &name])
                    .is_ok_and(|out| out.trim() == "true")
            }
        }
    }

    /// Every replica's status through `client`, and the correct replicas' agreement.
    pub async fn report(&self, client: &Client) -> (Vec<NodeReport>, Agreement, usize) {
        let mut answers: BTreeMap<ReplicaId, Result<NodeStatus, String>> =
            (client.status_all(Duration::from_secs(1)).await)
                .into_iter()
                .map(|(id, status)| (id, status.map_err(|e| e.to_string())))
                .collect();
        let nodes: Vec<NodeReport> = (self.records.iter())
            .map(|record| {
                let alive = self.alive(record.id);
                NodeReport {
                    record: record.clone(),
                    alive,
                    status: answers
                        .remove(&record.id)
                        .filter(|_| alive)
                        .unwrap_or_else(|| Err("not running".into())),
                }
            })
            .collect();
        let (agreement, pairs) = report::agreement(&nodes);
        (nodes, agreement, pairs)
    }

    /// Waits up to `patience` until every replica is connected to all others.
    pub async fn wait_connected(
        &self,
        client: &Client,
        patience: Duration,
    ) -> Result<(), LaunchError> {
        let start = Instant::now();
        loop {
            let (nodes, _, _) = self.report(client).await;
            let missing: Vec<ReplicaId> = (nodes.iter())
                .filter(|node| {
                    !(node.status.as_ref()).is_ok_and(|s| s.connected_peers.len() + 1 == self.n())
                })
                .map(|node| node.record.id)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= patience {
                return Err(LaunchError::Failure(format!(
                    "replicas {missing:?} were not connected to every other within {patience:?}; \
                     see the logs in {}",
                    self.dir.join("logs").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every replica, keeping the directory; containers' logs are saved first.
    pub fn stop(&self) {
        match &self.hosts {
            Hosts::Processes { layout, state } => {
                process::stop(layout, &state.processes(), STOP_GRACE);
            }
            Hosts::Containers { options, files } => {
                let logs = self.dir.join("logs");
                let _ = std::fs::create_dir_all(&logs);
                for record in &self.records {
                    let name = options.container(record.id as usize);
                    if let Ok(out) = std::process::Command::new("docker")
                        .args(["logs", &name])
                        .output()
                    {
                        let mut text = out.stdout;
                        text.extend(out.stderr);
                        let _ = std::fs::write(self.dir.join(&record.log), text);
                    }
                }
                if let Err(e) = compose::compose(&files.compose_file, &options.project, &["down"]) {
                    eprintln!("warning: {e}");
                }
            }
        }
    }
}

/// Refuses a directory in the way unless `force`, which removes an earlier run's.
fn prepare_container_dir(dir: &Path, force: bool) -> Result<(), LaunchError> {
    if !dir.exists() {
        return Ok(());
    }
    if !force {
        return Err(LaunchError::Usage(format!(
            "{} exists; choose another --dir, or --force to replace an earlier run's",
            dir.display()
        )));
    }
    if !dir.join("docker-compose.yml").exists() {
        return Err(LaunchError::Usage(format!(
            "{} holds no earlier run's cluster (no docker-compose.yml); refusing to remove it",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir)
        .map_err(|e| LaunchError::Failure(format!("cannot remove {}: {e}", dir.display())))
}

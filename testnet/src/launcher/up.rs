//! `testnet up`: prepare DIR, start the replicas, wait until they are connected, and either
//! return (`--detach`) or stay in the foreground with a live view until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use pbft_client::Client;
use pbft_core::byzantine::BehaviorKind;
use pbft_core::messages::ReplicaId;

use super::layout::{Layout, NodeRecord, State};
use super::process::{self, NodeProgram, STOP_GRACE};
use super::report::{self, ClusterReport};
use super::setup::{self, BehaviorChoice, NodeOverrides, PeerLinks, Plan, Ports};
use super::{afresh_hint, commands, live, LaunchError};

/// Everything `testnet up` takes.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Byzantine replicas tolerated; the cluster has 3f+1.
    pub f: usize,
    /// How many replicas are Byzantine (default: as many as `byzantine_ids` lists, else 0).
    pub byzantine: Option<usize>,
    /// What the Byzantine replicas do (default: `equivocate` for one, `mixed` for more).
    pub behavior: Option<BehaviorChoice>,
    /// Which replicas are Byzantine (default: the first ids, so the view-0 primary is one).
    pub byzantine_ids: Option<Vec<ReplicaId>>,
    /// Refuse nothing about the number of Byzantine replicas.
    pub allow_unsafe: bool,
    /// The testnet directory.
    pub dir: PathBuf,
    /// Wipe a testnet left in `dir` by an earlier run, if its nodes are stopped.
    pub force: bool,
    /// Use ports from here (replicas) and from here + 100 (metrics) instead of free ones.
    pub base_port: Option<u16>,
    /// The node binary; see [`NodeProgram::resolve`].
    pub node_bin: Option<PathBuf>,
    /// Protocol settings for the replicas.
    pub protocol: NodeOverrides,
    /// How long to wait for every replica to be connected to all others.
    pub up_timeout: Duration,
    /// Return once the cluster is up, leaving it running.
    pub detach: bool,
    /// Requests per second of a client workload run in the foreground.
    pub load: Option<f64>,
    /// Route the links between replicas through a relay.
    pub links: Option<PeerLinks>,
    /// Print nothing but errors (for a caller that reports on its own).
    pub quiet: bool,
}

impl UpOptions {
    /// The defaults of `testnet up --f f`.
    pub fn new(f: usize) -> UpOptions {
        UpOptions {
            f,
            byzantine: None,
            behavior: None,
            byzantine_ids: None,
            allow_unsafe: false,
            dir: PathBuf::from(super::layout::DEFAULT_DIR),
            force: false,
            base_port: None,
            node_bin: None,
            protocol: NodeOverrides::default(),
            up_timeout: Duration::from_secs(60),
            detach: false,
            load: None,
            links: None,
            quiet: false,
        }
    }
}

/// Runs `testnet up`. With `detach`, returns once every replica is connected to all others;
/// otherwise runs until Ctrl-C or SIGTERM and then stops every node it started.
pub async fn up(options: UpOptions) -> Result<(), LaunchError> {
    let plan = Plan::new(
        options.f,
        options.byzantine,
        options.byzantine_ids.as_deref(),
        options.behavior,
        options.allow_unsafe,
    )?;
    if let Some(rate) = options.load {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LaunchError::Usage(
                "--load must be a positive number of requests per second".into(),
            ));
        }
    }
    if options.protocol.view_change_timeout_ms == Some(0)
        || options.protocol.checkpoint_interval == Some(0)
    {
        return Err(LaunchError::Usage(
            "--view-change-timeout-ms and --checkpoint-interval must be positive".into(),
        ));
    }
    let program = NodeProgram::resolve(options.node_bin.as_deref())?;
    let layout = Layout::new(&options.dir)?;
    prepare_dir(&layout, options.force)?;
    let ports = Ports::allocate(plan.n(), options.base_port)?;
    if let Some(links) = &options.links {
        let _ = links.targets.set(ports.replicas.clone());
    }
    let say = |line: String| {
        if !options.quiet {
            println!("{line}");
        }
    };

    say(format!("testnet directory: {}", layout.shown.display()));
    if plan.byzantine() > plan.f {
        eprintln!(
            "warning: {} Byzantine replicas exceed f = {}: safety is no longer guaranteed \
             (correct replicas may execute different requests), nor is progress",
            plan.byzantine(),
            plan.f
        );
    }
    let generated = setup::generate(
        &layout,
        &plan,
        &ports,
        options.protocol,
        options.links.as_ref(),
    )?;
    let mut state = State {
        f: plan.f,
        allow_unsafe: options.allow_unsafe,
        program,
        nodes: generated.nodes,
        twins: generated.twins,
        client_config: Layout::client_config(),
    };
    // The nodes bind the ports themselves.
    drop(ports);
    let children = start_all(&layout, &mut state)?;
    say(format!(
        "started {} replicas (f = {}) with `{}`; waiting until they are connected...",
        state.n(),
        state.f,
        state.program.describe()
    ));

    let connected = match report::fresh_client_setup(&layout, &state) {
        Ok(setup) => Client::connect(setup)
            .await
            .map_err(|e| format!("cannot connect to the testnet: {e}")),
        Err(e) => Err(e.to_string()),
    };
    let up = match connected {
        Ok(client) => match wait_until_up(&client, &layout, &state, options.up_timeout).await {
            Ok(report) => Ok((client, report)),
            Err(message) => {
                client.close().await;
                Err(message)
            }
        },
        Err(message) => Err(message),
    };
    let (client, first) = match up {
        Ok(up) => up,
        Err(message) => {
            process::stop(&layout, &state.processes(), STOP_GRACE);
            reap(children);
            return Err(LaunchError::Failure(format!(
                "{message}\nstopped the replicas; their logs are in {} ({})",
                layout.show(Path::new("logs")),
                afresh_hint(&layout)
            )));
        }
    };
    if !options.quiet {
        print!("{}", nodes_table(&layout, &first));
        print_hints(&layout);
    }
    if options.detach {
        client.close().await;
        return Ok(());
    }
    live::foreground(&layout, state, client, options.load, children).await
}

/// Refuses a DIR that holds a running testnet, and one left by an earlier run unless `force`,
/// which removes that run's files (and only those).
fn prepare_dir(layout: &Layout, force: bool) -> Result<(), LaunchError> {
    let shown = layout.shown.display();
    if layout.state_file().exists() {
        if let Ok(state) = State::load(layout) {
            let running: Vec<String> = (state.nodes.iter())
                .filter(|n| process::node_alive(layout, n))
                .map(|n| n.id.to_string())
                .collect();
            if !running.is_empty() {
                return Err(LaunchError::Usage(format!(
                    "{shown} holds a running testnet (replicas {} are running): stop it with \
                     `{} down --dir {shown}`, or choose another --dir",
                    running.join(", "),
                    commands().1
                )));
            }
        }
    }
    let existing = layout.existing_entries();
    if existing.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(LaunchError::Usage(format!(
            "{shown} holds a testnet from an earlier run (its nodes are stopped): pass --force \
             to wipe it (keys, configurations, logs and data), or choose another --dir"
        )));
    }
    for path in existing {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed
            .map_err(|e| LaunchError::Failure(format!("cannot remove {}: {e}", path.display())))?;
    }
    println!("wiped the earlier testnet in {shown}");
    Ok(())
}

/// Starts every node (and twin) and records the pids; on a failure stops those already started.
fn start_all(layout: &Layout, state: &mut State) -> Result<Vec<Child>, LaunchError> {
    let mut children = Vec::with_capacity(state.n());
    let program = state.program.clone();
    for twins in [false, true] {
        let records = if twins {
            &mut state.twins
        } else {
            &mut state.nodes
        };
        let mut failed = None;
        for record in records.iter_mut() {
            match process::spawn(layout, &program, record) {
                Ok(child) => {
                    record.pid = Some(child.id());
                    children.push(child);
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            let _ = state.save(layout);
            process::stop(layout, &state.processes(), STOP_GRACE);
            reap(children);
            return Err(error);
        }
    }
    state.save(layout)?;
    Ok(children)
}

/// Collects the exit status of children that ended, so that none lingers as a zombie.
pub(super) fn reap(children: Vec<Child>) {
    for mut child in children {
        let _ = child.try_wait();
    }
}

/// Why a node is not up yet, or `None` if it is connected to every other replica. A twinned
/// replica's two processes share its peers (each peer's packets reach one of them), so it is up
/// once it answers.
fn not_up(report: &report::NodeReport, n: usize) -> Option<String> {
    if !report.alive {
        return Some("its process exited".into());
    }
    let twinned = report.record.behavior.as_deref() == Some(BehaviorKind::Twin.name());
    match &report.status {
        Err(reason) => Some(format!("does not answer status queries ({reason})")),
        Ok(_) if twinned => None,
        Ok(status) if status.connected_peers.len() + 1 < n => Some(format!(
            "connected to {} of its {} peers",
            status.connected_peers.len(),
            n - 1
        )),
        Ok(_) => None,
    }
}

/// Polls until every replica answers and is connected to all others. Fails at once if a node
/// process exits, else after `timeout`, naming each laggard and its log.
pub async fn wait_until_up(
    client: &Client,
    layout: &Layout,
    state: &State,
    timeout: Duration,
) -> Result<ClusterReport, String> {
    let start = Instant::now();
    loop {
        let report = report::query(client, layout, state, Duration::from_millis(500)).await;
        let problems: Vec<(&NodeRecord, String)> = (report.nodes.iter())
            .filter_map(|r| not_up(r, state.n()).map(|why| (&r.record, why)))
            .collect();
        if problems.is_empty() {
            return Ok(report);
        }
        let exited = report.nodes.iter().any(|r| !r.alive);
        if exited || start.elapsed() >= timeout {
            let mut message = if exited {
                "a replica exited while starting:".to_string()
            } else {
                format!("the replicas were not all connected within {timeout:?}:")
            };
            for (record, why) in problems {
                message.push_str(&format!(
                    "\n  replica {}: {why}; see {}",
                    record.id,
                    layout.show(&record.log)
                ));
                for line in process::log_tail(&layout.path(&record.log), 3) {
                    message.push_str(&format!("\n      {line}"));
                }
            }
            return Err(message);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The table printed once the cluster is up.
fn nodes_table(layout: &Layout, report: &ClusterReport) -> String {
    let mut rows = vec![["id", "address", "pid", "role", "behaviour", "log"]
        .map(String::from)
        .to_vec()];
    for node in &report.nodes {
        let r = &node.record;
        let role = match &node.status {
            Ok(status) => report::role(status, r.id),
            Err(_) => "-",
        };
        rows.push(vec![
            r.id.to_string(),
            r.address.to_string(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            role.to_string(),
            r.behavior.clone().unwrap_or_else(|| "correct".into()),
            layout.show(&r.log),
        ]);
    }
    report::table(&rows)
}

fn print_hints(layout: &Layout) {
    let dir = layout.shown.display();
    let (client, testnet) = commands();
    println!(
        "\nclient:  {client} --config {} put greeting hello\n\
         status:  {testnet} status --dir {dir}\n\
         stop:    {testnet} down --dir {dir}",
        layout.show(Path::new("client.toml"))
    );
}

//! `testnet up`: prepare DIR, start the replicas, wait until they are connected, and either
//! return (`--detach`) or stay in the foreground with a live view until Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_client::Client;
use pbft_core::byzantine::BehaviorKind;
use pbft_core::messages::ReplicaId;
use tokio::sync::Semaphore;

use super::layout::{Layout, NodeRecord, State};
use super::process::{self, NodeProgram, Stopped, STOP_GRACE};
use super::report::{self, ClusterReport};
use super::setup::{self, BehaviorChoice, NodeOverrides, PeerLinks, Plan, Ports};
use super::{afresh_hint, commands, shutdown_signal, LaunchError};

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
    foreground(&layout, state, client, options.load, children).await
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
fn reap(children: Vec<Child>) {
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

/// The live view: refreshes about once a second until Ctrl-C or SIGTERM, then stops the nodes.
async fn foreground(
    layout: &Layout,
    state: State,
    client: Client,
    load: Option<f64>,
    children: Vec<Child>,
) -> Result<(), LaunchError> {
    let load = match load {
        Some(rate) => {
            let setup = report::fresh_client_setup(layout, &state)?;
            let load_client = Client::connect(setup)
                .await
                .map_err(|e| LaunchError::Failure(format!("cannot start the load: {e}")))?;
            Some(Load::start(load_client, rate))
        }
        None => None,
    };
    println!("\nlive view, refreshed every second; Ctrl-C stops every replica\n");
    let mut view = LiveView::new(std::io::stdout().is_terminal());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                // Re-read: `testnet restart` from another shell changes pids.
                let current = State::load(layout).unwrap_or_else(|_| state.clone());
                let report =
                    report::query(&client, layout, &current, Duration::from_millis(800)).await;
                view.draw(&report, load.as_ref().map(|l| &*l.stats));
            }
        }
    }
    // Stop the nodes before printing anything: after SIGHUP the terminal may be gone.
    let current = State::load(layout).unwrap_or(state);
    let outcomes = process::stop(layout, &current.nodes, STOP_GRACE);
    reap(children);
    if let Some(load) = load {
        load.stop().await;
    }
    client.close().await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    for (id, outcome) in outcomes {
        let _ = match outcome {
            Stopped::Terminated => writeln!(out, "replica {id} stopped"),
            Stopped::Killed => writeln!(out, "replica {id} killed (it ignored SIGTERM)"),
            Stopped::NotRunning => writeln!(out, "replica {id} was not running"),
        };
    }
    let _ = writeln!(
        out,
        "logs kept in {}; {}",
        layout.show(Path::new("logs")),
        afresh_hint(layout)
    );
    Ok(())
}

/// Counters of the client workload.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests submitted.
    pub sent: AtomicU64,
    /// Requests whose result f+1 replicas agreed on.
    pub ok: AtomicU64,
    /// Requests that timed out or failed.
    pub failed: AtomicU64,
}

/// A client workload: puts to distinct keys at a fixed rate.
pub struct Load {
    /// Its counters.
    pub stats: Arc<LoadStats>,
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// Most workload requests outstanding; beyond, the workload waits.
const MAX_IN_FLIGHT: usize = 1024;

impl Load {
    /// Starts putting `rate` values per second through `client`, each to a new key.
    pub fn start(client: Client, rate: f64) -> Load {
        let stats = Arc::new(LoadStats::default());
        let task = tokio::spawn(run_load(client.clone(), rate, stats.clone()));
        Load {
            stats,
            client,
            task,
        }
    }

    /// Stops issuing requests and closes the client.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.client.close().await;
    }
}

async fn run_load(client: Client, rate: f64, stats: Arc<LoadStats>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let prefix: String = client.public_key().to_hex().chars().take(8).collect();
    let start = Instant::now();
    let mut issued: u64 = 0;
    loop {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let client = client.clone();
            let stats = stats.clone();
            let key = format!("load-{prefix}-{issued}");
            let value = format!("value-{issued}");
            stats.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let counter = match client.put(key, value).await {
                    Ok(()) => &stats.ok,
                    Err(_) => &stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            issued += 1;
        }
        let next = Duration::from_secs_f64((issued + 1) as f64 / rate);
        tokio::time::sleep(
            next.saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        )
        .await;
    }
}

/// Draws the live view: redrawn in place on a terminal, one line per refresh otherwise.
struct LiveView {
    terminal: bool,
    started: Instant,
    /// Lines drawn last time, to move back over them.
    drawn: usize,
    /// The committed count and when it was seen, for the rate.
    last: Option<(u64, Instant)>,
    /// What happened, each said once: replicas caught, and views the correct replicas
    /// entered.
    events: Vec<String>,
    caught: BTreeSet<ReplicaId>,
    view: u64,
}

impl LiveView {
    fn new(terminal: bool) -> LiveView {
        LiveView {
            terminal,
            started: Instant::now(),
            drawn: 0,
            last: None,
            events: Vec::new(),
            caught: BTreeSet::new(),
            view: 0,
        }
    }

    /// Lines for what newly happened: a replica that correct replicas now hold proof of
    /// equivocation against, and a view that a correct replica entered.
    fn new_events(&mut self, report: &ClusterReport, elapsed: u64) -> Vec<String> {
        let correct: Vec<_> = (report.nodes.iter())
            .filter(|n| n.record.behavior.is_none())
            .filter_map(|n| n.status.as_ref().ok())
            .collect();
        let mut accusers: BTreeMap<ReplicaId, usize> = BTreeMap::new();
        for status in &correct {
            for &accused in &status.evidence_against {
                *accusers.entry(accused).or_default() += 1;
            }
        }
        let mut lines = Vec::new();
        for (accused, accusers) in accusers {
            if self.caught.insert(accused) {
                lines.push(format!(
                    "[{elapsed:>4}s] replica {accused} caught equivocating: {accusers} correct \
                     replica(s) hold its conflicting signed messages as evidence"
                ));
            }
        }
        let entered = (correct.iter())
            .filter(|s| s.view_active)
            .max_by_key(|s| s.view);
        if let Some(status) = entered.filter(|s| s.view > self.view) {
            self.view = status.view;
            lines.push(format!(
                "[{elapsed:>4}s] a correct replica entered view {} (primary: replica {})",
                status.view, status.primary
            ));
        }
        self.events.extend(lines.iter().cloned());
        lines
    }

    fn draw(&mut self, report: &ClusterReport, load: Option<&LoadStats>) {
        let committed = committed(report);
        let now = Instant::now();
        let rate = match self.last {
            Some((before, at)) if now > at => {
                committed.saturating_sub(before) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((committed, now));
        let elapsed = self.started.elapsed().as_secs();
        let load = load.map(|l| {
            format!(
                "; load: {} sent, {} ok, {} failed",
                l.sent.load(Ordering::Relaxed),
                l.ok.load(Ordering::Relaxed),
                l.failed.load(Ordering::Relaxed)
            )
        });
        let summary = format!(
            "[{elapsed:>4}s] committed {committed} requests ({rate:.0}/s){}",
            load.unwrap_or_default()
        );
        let events = self.new_events(report, elapsed);
        let mut out = std::io::stdout().lock();
        if !self.terminal {
            for line in &events {
                let _ = writeln!(out, "{line}");
            }
            let nodes: Vec<String> = report
                .nodes
                .iter()
                .map(|n| match (&n.status, n.alive) {
                    (Ok(s), true) => format!(
                        "{}: view {} exec {} stable {}",
                        n.record.id, s.view, s.last_executed, s.stable_checkpoint
                    ),
                    (_, true) => format!("{}: no answer", n.record.id),
                    (_, false) => format!("{}: down", n.record.id),
                })
                .collect();
            let _ = writeln!(out, "{summary} | {}", nodes.join(" | "));
            let _ = out.flush();
            return;
        }
        let mut rows = vec![[
            "id",
            "alive",
            "role",
            "behaviour",
            "view",
            "executed",
            "stable",
            "evidence against",
        ]
        .map(String::from)
        .to_vec()];
        for n in &report.nodes {
            let mut row = vec![
                n.record.id.to_string(),
                if n.alive { "yes" } else { "no" }.to_string(),
            ];
            let behavior = n.record.behavior.clone().unwrap_or_else(|| "-".into());
            match &n.status {
                Ok(s) => row.extend([
                    report::role(s, n.record.id).to_string(),
                    behavior,
                    format!("{}{}", s.view, if s.view_active { "" } else { "*" }),
                    s.last_executed.to_string(),
                    s.stable_checkpoint.to_string(),
                    report::ids(&s.evidence_against),
                ]),
                Err(_) => row.extend(["-".to_string(), behavior]),
            }
            rows.push(row);
        }
        let mut lines: Vec<String> = vec![summary];
        lines.extend(report::table(&rows).lines().map(String::from));
        lines.extend(self.events.iter().cloned());
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for line in &lines {
            let _ = writeln!(out, "\x1b[2K{line}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }
}

/// Requests committed so far: the most any live correct replica reports (a restarted replica
/// counts from zero again), or any replica's if none is correct.
fn committed(report: &ClusterReport) -> u64 {
    let counts = |correct_only: bool| {
        (report.nodes.iter())
            .filter(|n| !correct_only || n.record.behavior.is_none())
            .filter_map(|n| n.status.as_ref().ok())
            .map(|s| s.committed_requests)
            .max()
    };
    counts(true).or_else(|| counts(false)).unwrap_or(0)
}

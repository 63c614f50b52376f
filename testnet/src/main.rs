//! `testnet`: a local PBFT cluster of real replica processes, some of them Byzantine.
//!
//! Exit codes: 0 success, 1 a failure while running (replicas that did not come up, correct
//! replicas that disagree), 2 bad usage (flags, a directory in the way, a port in use, a
//! missing binary), 3 from `status` when agreement is unknown (no two correct replicas could
//! be compared).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pbft_core::messages::ReplicaId;
use testnet::launcher::attack::{self, AttackOptions, Strategy};
use testnet::launcher::report::{Agreement, AGREE_RULE};
use testnet::launcher::setup::BEHAVIOR_NAMES;
use testnet::launcher::{self, BehaviorChoice, LaunchError, NodeOverrides, UpOptions};
use testnet::nemesis::{self, Fault, NemesisOptions};

#[derive(Parser)]
#[command(
    name = "testnet",
    version,
    about = "Run a local PBFT cluster of real replica processes, some of them Byzantine",
    long_about = "Run a local PBFT cluster of real replica processes on 127.0.0.1, some of them \
                  Byzantine, and watch the service keep working.\n\n\
                  `testnet up --f 1 --byzantine 1 --load 200` starts 4 replicas, the view-0 \
                  primary equivocating, with a client workload and a live view; Ctrl-C stops \
                  it. With --detach it keeps running; then use `status`, `kill`, `restart` and \
                  `down`, and `pbft-client --config DIR/client.toml`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Debug)]
struct DirArg {
    /// The testnet directory: keys, configurations, logs and the state file.
    #[arg(long, value_name = "DIR", default_value = launcher::DEFAULT_DIR)]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Generate keys and configurations for 3f+1 replicas and a client, start the replicas,
    /// wait until they are connected, and show them working.
    Up(UpArgs),
    /// Show every replica's status, and whether the correct replicas agree.
    #[command(long_about = status_help())]
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print one JSON object: {"f", "nodes": [{"id", "address", "pid", "alive",
        /// "behavior", "view", "last_executed", "stable_checkpoint", "state_digest",
        /// "evidence_against", ...}], "agree", "compared_pairs"}.
        #[arg(long)]
        json: bool,
    },
    /// Run a faulty client against the testnet: one of the named strategies the simulator
    /// also runs, or an attack on the transport. Prints one JSON line of what it sent:
    /// {"attack", "ticks", "messages", "identities", "dropped", "handshake_failures",
    /// "connections_opened", "connections_failed"}.
    Attack {
        /// oversized-envelope (envelopes larger than a batch may be), reused-timestamps (one
        /// timestamp with different operations, and stale ones), many-identities (a fresh key
        /// per request), flood (64 envelopes per tick without waiting for replies),
        /// bad-signatures (envelopes whose signature fails: the replicas cut the client off for
        /// a while); on the transport, with 16 fresh identities (admitted only by a testnet
        /// started with --open-clients): connection-flood (new connections every tick, held
        /// open and silent, up to 4,096), unfinished-frames (a new connection per replica every
        /// tick announcing the longest frame a client may send, sending 1 MiB of it, then
        /// nothing); on the metrics endpoint: metrics-flood (20,000 TCP connections to replica
        /// 0's, held open and silent; it runs until all were tried, at least --duration).
        strategy: Strategy,
        #[command(flatten)]
        dir: DirArg,
        /// Seconds to keep attacking.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        duration: f64,
        /// Milliseconds between two actions of the strategy.
        #[arg(long, value_name = "MS", default_value_t = 100)]
        interval_ms: u64,
    },
    /// Write the files of a cluster whose replicas run on separate machines: for each host a
    /// directory to copy there (node.toml, the replica's key, an initialised data directory),
    /// and a client directory; then print what to copy where and which ports to open.
    Hosts {
        /// Byzantine replicas tolerated; 3f+1 hosts are needed.
        #[arg(long, default_value_t = 1)]
        f: usize,
        /// One IP address per replica, in id order, each with an optional port (UDP, default
        /// 7000): `10.0.0.1`, `10.0.0.2:7100`, `[fd00::3]:7000`.
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// The directory to write; it must not exist.
        #[arg(long, value_name = "DIR", default_value = "cluster")]
        out: PathBuf,
        /// The metrics endpoint's TCP port on every host (0 picks a free one at start).
        #[arg(long, value_name = "PORT", default_value_t = launcher::hosts::DEFAULT_METRICS_PORT)]
        metrics_port: u16,
        /// Serve metrics on every interface (for a Prometheus elsewhere) instead of on
        /// loopback.
        #[arg(long)]
        public_metrics: bool,
        /// Admit any client key, as a public service does, instead of the one created here.
        #[arg(long)]
        open_clients: bool,
    },
    /// Run clients (put, get and cas on shared keys) against a new testnet while faults are
    /// injected on a random schedule, then check the history for linearizability and the
    /// correct replicas for agreement.
    #[command(long_about = NEMESIS_HELP)]
    Nemesis(NemesisArgs),
    /// Write a cluster of containers, each replica its own host on a private network: the
    /// image's build context (FROM scratch, the pbft-node binary and its libraries), a
    /// docker-compose.yml with each replica's address, volume and health check, and a client
    /// configuration for this host; then print how to start it.
    Compose {
        #[command(flatten)]
        replicas: ReplicasArgs,
        /// The directory to write; it must not exist.
        #[arg(long, value_name = "DIR", default_value = "cluster")]
        out: PathBuf,
        /// The network's IPv4 subnet: the host is its first address, replica N the tenth
        /// plus N.
        #[arg(long, value_name = "CIDR", default_value = launcher::compose::DEFAULT_SUBNET)]
        subnet: launcher::compose::Subnet,
        /// The compose project: it names the network, the image and the containers.
        #[arg(long, default_value = "pbft")]
        project: String,
        /// The pbft-node binary to put in the image (default: the one next to this binary).
        #[arg(long, value_name = "PATH")]
        node_bin: Option<PathBuf>,
        /// Route the links between replicas through `testnet relay` on this host (to add
        /// latency or cut links); clients still reach the replicas directly.
        #[arg(long)]
        relay: bool,
        /// The relay's first port: it serves the link from replica i to j on BASE + i*n + j.
        #[arg(long, value_name = "BASE", default_value_t = launcher::compose::DEFAULT_RELAY_BASE)]
        relay_base_port: u16,
    },
    /// Relay the links between the replicas of a cluster written by `compose --relay`, with
    /// an added one-way delay, until Ctrl-C.
    Relay {
        /// The relay.toml that `compose --relay` wrote.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Milliseconds added to every datagram between two replicas.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        delay_ms: u64,
    },
    /// Check a history that `nemesis` wrote (DIR/history.jsonl) for linearizability again,
    /// key by key. Prints one JSON object: {"verdict", "checked", "keys",
    /// "keys_not_linearizable", "keys_unknown"}. Exit status: 0 linearizable, 1 not (or the
    /// search gave up), 2 bad usage.
    CheckHistory {
        /// The history file, one operation a line.
        file: PathBuf,
    },
    /// Crash a replica (SIGKILL).
    Kill {
        /// The replica id.
        id: ReplicaId,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Start a crashed replica again, with the same configuration, appending to its log. It
    /// recovers from its durable state in DIR/data/replica-N and catches up from the others
    /// (with `up --storage off` it starts from an empty state).
    Restart {
        /// The replica id.
        id: ReplicaId,
        #[command(flatten)]
        dir: DirArg,
        /// Seconds to wait until it is connected to the other running replicas.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        timeout: f64,
    },
    /// Stop every replica the testnet started (SIGTERM, then SIGKILL after 5 s); keep its
    /// directory and logs.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Run the randomized simulation: each seed draws a scenario (f from 1 to 3, Byzantine
    /// replicas, a lossy network, partitions, crashes and restarts), runs it deterministically
    /// in this process, and checks agreement, equal state, client validity, accountability
    /// and liveness after healing.
    #[command(long_about = SIM_HELP)]
    Sim(SimArgs),
    /// Run one replica from its configuration file (what `pbft-node run` does); `up` starts
    /// replicas this way when no fresh pbft-node binary is next to this one.
    #[command(hide = true)]
    Node {
        /// The replica's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

const SIM_HELP: &str = "Run the randomized simulation of the PBFT core.\n\n\
Each seed draws a whole scenario: f from 1 to 3; up to f Byzantine replicas of random kinds, \
often the primaries of consecutive views; a network that drops, duplicates, reorders and delays; \
isolated replicas, splits, one-way cuts, clogged links, crashes and restarts of correct replicas; \
correct replicas that lose their disk and rejoin; in some seeds faulty clients (oversized envelopes, reused timestamps, many identities, floods, bad signatures, session churn). \
Then everything heals and every request must complete. After every step the checkers test agreement, \
equal state at checkpoints and after state transfers, client validity, at-most-once execution, \
execution order, accountability, and that no correct replica signs two different messages for one \
kind, view and sequence number across its crashes and lost disks. A seed replays exactly.\n\n\
Exit status: 0 when every seed passed, 1 when one failed, 2 on bad usage.";

const NEMESIS_HELP: &str = "Run a nemesis against a new testnet, as Jepsen does.\n\n\
Starts 3f+1 replica processes on 127.0.0.1 (with --containers, 3f+1 containers on a private \
network, each its own host) whose links to each other run through a relay in this process, and \
clients (each a session of its own) that run put, get and cas on shared keys \
at a steady pace. Meanwhile, on a random schedule drawn from --seed, one fault at a time: \
partition-halves, partition-bridge (two halves and one replica in both), isolate-primary (the \
current primary cut off), one-way (some replicas stop hearing others), kill (SIGKILL, restarted \
at the heal), pause (SIGSTOP, SIGCONT at the heal), latency (every link delayed by --latency-ms), and with --containers disconnect (a container taken off \
its network: no replica and no client reaches it). \
Each fault lasts up to --fault-secs, then heals, and the cluster runs up to --quiet-secs without \
one.\n\n\
Every operation is recorded with its invocation and completion time (DIR/history.jsonl) and \
the history is checked key by key for linearizability. An operation whose client timed out may \
or may not have taken effect; the checker allows both. After the last fault heals, an ordered \
read of every key must complete (recovered) and the correct replicas must agree.\n\n\
Prints one JSON object: {\"f\", \"n\", \"byzantine\", \"seed\", \"seconds\", \"faults\": {name: count}, \
\"faults_per_minute\", \"operations\": {\"ok\", \"failed\", \"unknown\"}, \"checked\", \"keys\", \
\"verdict\" (\"linearizable\", \"not-linearizable\" or \"unknown\": the search gave up on a key), \
\"keys_not_linearizable\", \"keys_unknown\", \"recovered\", \"agreement\", \"latency_ms\": {\"p50\", \
\"p99\", \"max\"}, \"target\" (\"processes\" or \"containers\"), \"history\"}; the schedule goes to \
stderr as it happens.\n\n\
Exit status: 0 when the history is linearizable, the cluster recovered and the correct replicas \
agree; 1 otherwise; 2 on bad usage.";

/// The replicas of a cluster that `compose` and `nemesis` make.
#[derive(Args, Debug)]
struct ReplicasArgs {
    /// Byzantine replicas tolerated; the cluster has 3f+1.
    #[arg(long, default_value_t = 1)]
    f: usize,
    /// How many replicas are Byzantine (the first ids, so the view-0 primary is one).
    #[arg(long, default_value_t = 0)]
    byzantine: usize,
    /// What the Byzantine replicas do (see `testnet up --help`; twin needs one host, so
    /// containers refuse it).
    #[arg(long, value_name = "BEHAVIOR")]
    behavior: Option<BehaviorChoice>,
}

#[derive(Args, Debug)]
struct NemesisArgs {
    #[command(flatten)]
    replicas: ReplicasArgs,
    /// Seconds of clients and faults.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    duration: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Operations per second over all clients.
    #[arg(long, value_name = "OPS", default_value_t = 100.0)]
    rate: f64,
    /// The faults to draw from, comma-separated (default: all that the cluster's kind allows).
    #[arg(long, value_name = "FAULT,...", value_delimiter = ',')]
    faults: Vec<Fault>,
    /// The one-way delay of a latency fault.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    latency_ms: u64,
    /// The longest a fault lasts (each lasts a third of this to all of it).
    #[arg(long, value_name = "SECS", default_value_t = 8.0)]
    fault_secs: f64,
    /// The longest quiet time between two faults (each lasts half of this to all of it).
    #[arg(long, value_name = "SECS", default_value_t = 6.0)]
    quiet_secs: f64,
    /// Seeds the schedule and the clients' choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds a client waits for an operation before its outcome counts as unknown.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    request_timeout: f64,
    /// The testnet directory (keys, configurations, logs, the history).
    #[arg(long, value_name = "DIR", default_value = "nemesis-data")]
    dir: PathBuf,
    /// Wipe an earlier run's directory first.
    #[arg(long)]
    force: bool,
    /// The replica binary (default: pbft-node next to this binary; for --containers, the
    /// pbft-node binary to put in the image).
    #[arg(long, value_name = "PATH")]
    node_bin: Option<PathBuf>,
    /// Run the replicas as containers, each its own host on a private network (as `testnet
    /// compose` writes them), instead of processes on loopback. Needs a Docker engine with
    /// Compose, and the pbft-node binary.
    #[arg(long)]
    containers: bool,
    /// The containers' subnet; the relay binds its first address on this host.
    #[arg(long, value_name = "CIDR", default_value = nemesis::CONTAINER_SUBNET, requires = "containers")]
    subnet: launcher::compose::Subnet,
    /// The containers' compose project: it names them (PROJECT-replica-N), their network and
    /// their image. A container of that name left by an earlier run is removed first.
    #[arg(long, default_value = nemesis::CONTAINER_PROJECT, requires = "containers")]
    project: String,
}

#[derive(Args, Debug)]
struct SimArgs {
    /// Run this one seed (with --verbose, print its scenario and the protocol's log).
    #[arg(long, value_name = "SEED", conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run the seeds FIRST..END (END excluded).
    #[arg(long, value_name = "FIRST..END", value_parser = parse_seed_range, default_value = "0..1000")]
    seeds: std::ops::Range<u64>,
    /// Threads to run seeds on (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Print the scenario and the protocol's debug log (RUST_LOG overrides the filter).
    #[arg(long)]
    verbose: bool,
}

fn parse_seed_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (first, end) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range FIRST..END"))?;
    let first: u64 = first.parse().map_err(|e| format!("{first:?}: {e}"))?;
    let end: u64 = end.parse().map_err(|e| format!("{end:?}: {e}"))?;
    if end <= first {
        return Err(format!("{text:?} is empty"));
    }
    Ok(first..end)
}

fn run_sim(args: SimArgs) -> ExitCode {
    use testnet::sim::campaign::{replay_command, search, Scenario};
    if let Some(seed) = args.seed {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if args.verbose { "debug" } else { "warn" })
        });
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        let scenario = Scenario::generate(seed);
        if args.verbose {
            println!("{}", scenario.describe());
        }
        return match scenario.run() {
            Ok(outcome) => {
                println!(
                    "seed {seed}: ok ({:.1} s simulated, {} events, view {}, executed {})",
                    outcome.simulated.as_secs_f64(),
                    outcome.events,
                    outcome.view,
                    outcome.executed
                );
                ExitCode::SUCCESS
            }
            Err(violation) => {
                println!("seed {seed}: FAILED: {}", violation.0);
                ExitCode::from(1)
            }
        };
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let range = args.seeds.clone();
    let done = std::sync::atomic::AtomicU64::new(0);
    let summary = search(range.clone(), jobs, &|seed, result| {
        if let Err(violation) = result {
            eprintln!("seed {seed} FAILED: {}", violation.0);
            eprintln!("  replay: {}", replay_command(seed));
        }
        let done = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if done.is_multiple_of(1000) {
            eprintln!(
                "{done} seeds run ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    });
    println!(
        "seeds {}..{}: {} run, {} failed {:?}; {:.0} s simulated, {} events, highest view {}; {:.0} s wall clock on {jobs} threads",
        range.start,
        range.end,
        summary.seeds,
        summary.failures.len(),
        summary.failures.iter().map(|(seed, _)| *seed).collect::<Vec<_>>(),
        summary.simulated.as_secs_f64(),
        summary.events,
        summary.max_view,
        started.elapsed().as_secs_f64()
    );
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn status_help() -> String {
    format!(
        "Show, for every replica of the testnet: its id, pid, whether its process is alive, its \
         behaviour, role, view, last executed sequence number, stable checkpoint, state digest, \
         and the replicas it holds signed proof of equivocation against; then the verdict \
         `agree`.\n\n{AGREE_RULE}\n\nExit status: 0 when the correct replicas agree, 1 when \
         they do not, 2 when DIR holds no testnet, 3 when agreement is unknown."
    )
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Byzantine replicas tolerated: the cluster has n = 3f+1 replicas.
    #[arg(long = "f", value_name = "F", default_value_t = 1)]
    f: usize,
    /// How many replicas are Byzantine; more than f is refused without --allow-unsafe.
    #[arg(long, value_name = "B")]
    byzantine: Option<usize>,
    /// What the Byzantine replicas do (default: equivocate for one, mixed for more).
    #[arg(long, value_name = "KIND", long_help = behavior_help())]
    behavior: Option<BehaviorChoice>,
    /// Which replicas are Byzantine, such as 0,3 (default: the first ids, so the view-0
    /// primary is one of them).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    byzantine_ids: Option<Vec<ReplicaId>>,
    /// Allow more than f Byzantine replicas; safety is then no longer guaranteed.
    #[arg(long)]
    allow_unsafe: bool,
    #[command(flatten)]
    dir: DirArg,
    /// Wipe a testnet left in DIR by an earlier run (only if its replicas are stopped).
    #[arg(long)]
    force: bool,
    /// Use UDP ports P, P+1, ... for the replicas and TCP ports P+100, ... for their metrics,
    /// instead of free ports.
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Run a client workload of RATE requests per second (puts to distinct keys), shown in the
    /// live view.
    #[arg(long, value_name = "RATE", conflicts_with = "detach")]
    load: Option<f64>,
    /// Return once the replicas are connected, and leave them running.
    #[arg(long)]
    detach: bool,
    /// The pbft-node binary to run the replicas with (default: a pbft-node next to this
    /// binary if at least as new, else this binary itself).
    #[arg(long, value_name = "PATH")]
    node_bin: Option<PathBuf>,
    /// The replicas' view-change timeout in milliseconds (default: the replica's, 2000).
    #[arg(long, value_name = "MS", help_heading = "Advanced")]
    view_change_timeout_ms: Option<u64>,
    /// The replicas' checkpoint interval K; the log window is 2K (default: the replica's, 128).
    #[arg(long, value_name = "K", help_heading = "Advanced")]
    checkpoint_interval: Option<u64>,
    /// How long the primary lets a batch fill while another is in flight, in microseconds; 0
    /// proposes every batch at once (default: the replica's, 1000).
    #[arg(long, value_name = "US", help_heading = "Advanced")]
    batch_delay_us: Option<u64>,
    /// How the replicas keep their durable state in DIR/data.
    #[arg(long, value_enum, default_value_t, help_heading = "Advanced")]
    storage: launcher::Durability,
    /// Admit any client key, as a public service does (default: only the testnet's client
    /// key, DIR/client.key).
    #[arg(long, help_heading = "Advanced")]
    open_clients: bool,
    /// Seconds to wait until every replica is connected to all others.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60.0,
        help_heading = "Advanced"
    )]
    up_timeout: f64,
}

fn behavior_help() -> String {
    format!(
        "What the Byzantine replicas do: {BEHAVIOR_NAMES}.\n\
         equivocate: as primary, PRE-PREPAREs for different batches to two halves of the \
         backups, so that nothing commits and the view changes; as backup, PREPAREs and COMMITs \
         with conflicting digests to different peers.\n\
         equivocate-minority: as equivocate, but as primary only f backups get the conflicting \
         batch, so the others commit and those f must catch up.\n\
         silent: runs and receives, sends nothing.\n\
         corrupt: sends messages with invalid signatures, wrong digests, and random bytes.\n\
         slow: as primary, delays every PRE-PREPARE just under the view-change timeout, then \
         (after 20 batches) well past it, so that the backups suspect it.\n\
         twin: a second process with the replica's key, its own state and the same port \
         (SO_REUSEPORT): each peer and client reaches one of the two, and both run the \
         protocol in the replica's name.\n\
         shun: runs the protocol honestly but sends the next replica in id order nothing, so \
         that, when primary, the shunned backup cannot commit and must catch up by state \
         transfer.\n\
         mixed: cycles through equivocate, silent, corrupt and slow over the Byzantine \
         replicas.\n\
         Crafting their own signed messages: selective-view-change (VIEW-CHANGEs to f peers, \
         NEW-VIEWs to f+1), wrong-new-view (a NEW-VIEW ordering batches its proof does not \
         name), far-future (votes and VIEW-CHANGEs far beyond the watermarks and views), \
         unsolicited (batch bodies, state chunks and status claims nobody asked for).\n\
         Default: equivocate for one Byzantine replica, mixed for more."
    )
}

fn seconds(value: f64, flag: &str) -> Result<Duration, LaunchError> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(LaunchError::Usage(format!(
            "{flag} must be a positive number of seconds"
        )))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Node { .. } = cli.command {
        init_node_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Client tasks may still be winding down; they must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, LaunchError> {
    match command {
        Command::Up(args) => {
            let options = UpOptions {
                f: args.f,
                byzantine: args.byzantine,
                behavior: args.behavior,
                byzantine_ids: args.byzantine_ids,
                allow_unsafe: args.allow_unsafe,
                dir: args.dir.dir,
                force: args.force,
                base_port: args.base_port,
                node_bin: args.node_bin,
                protocol: NodeOverrides {
                    view_change_timeout_ms: args.view_change_timeout_ms,
                    checkpoint_interval: args.checkpoint_interval,
                    batch_delay_us: args.batch_delay_us,
                    storage: args.storage,
                    open_clients: args.open_clients,
                },
                up_timeout: seconds(args.up_timeout, "--up-timeout")?,
                detach: args.detach,
                load: args.load,
                links: None,
                quiet: false,
            };
            launcher::up(options).await?;
        }
        Command::Status { dir, json } => {
            let layout = launcher::Layout::new(&dir.dir)?;
            match launcher::status(&layout, json).await? {
                Agreement::Yes => {}
                Agreement::No => return Ok(ExitCode::from(1)),
                Agreement::Unknown => return Ok(ExitCode::from(3)),
            }
        }
        Command::Attack {
            strategy,
            dir,
            duration,
            interval_ms,
        } => {
            let layout = launcher::Layout::new(&dir.dir)?;
            if interval_ms == 0 {
                return Err(LaunchError::Usage("--interval-ms must be positive".into()));
            }
            let options = AttackOptions {
                attack: strategy,
                duration: seconds(duration, "--duration")?,
                interval: Duration::from_millis(interval_ms),
            };
            let report = attack::attack(&layout, options).await?;
            println!(
                "{}",
                serde_json::to_string(&report).expect("the report serializes")
            );
        }
        Command::Kill { id, dir } => launcher::kill(&dir.dir, id)?,
        Command::Restart { id, dir, timeout } => {
            launcher::restart(&dir.dir, id, seconds(timeout, "--timeout")?).await?
        }
        Command::Down { dir } => launcher::down(&dir.dir)?,
        Command::Hosts {
            f,
            hosts,
            out,
            metrics_port,
            public_metrics,
            open_clients,
        } => {
            let options = launcher::hosts::HostsOptions {
                metrics_port,
                public_metrics,
                open_clients,
                ..launcher::hosts::HostsOptions::new(f, hosts, out)
            };
            let written = launcher::hosts::generate_hosts(&options)?;
            print!("{}", launcher::hosts::instructions(&options, &written));
        }
        Command::Nemesis(args) => {
            let mut options = NemesisOptions::new(args.replicas.f);
            options.byzantine = args.replicas.byzantine;
            options.behavior = args.replicas.behavior;
            options.duration = seconds(args.duration, "--duration")?;
            options.clients = args.clients;
            options.keys = args.keys;
            options.rate = args.rate;
            if !args.faults.is_empty() {
                options.faults = Some(args.faults);
            }
            options.latency = Duration::from_millis(args.latency_ms);
            options.fault_time = seconds(args.fault_secs, "--fault-secs")?;
            options.quiet_time = seconds(args.quiet_secs, "--quiet-secs")?;
            options.seed = args.seed;
            options.request_timeout = seconds(args.request_timeout, "--request-timeout")?;
            options.dir = args.dir;
            options.force = args.force;
            options.node_bin = args.node_bin;
            options.containers = args.containers.then_some(nemesis::ContainerTarget {
                subnet: args.subnet,
                project: args.project,
            });
            let report = nemesis::run(options).await?;
            println!(
                "{}",
                serde_json::to_string(&report).expect("the report serializes")
            );
            if !report.passed() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Compose {
            replicas,
            out,
            subnet,
            project,
            node_bin,
            relay,
            relay_base_port,
        } => {
            let options = launcher::compose::ComposeOptions {
                byzantine: replicas.byzantine,
                behavior: replicas.behavior,
                subnet,
                project,
                node_bin,
                relay_base: relay.then_some(relay_base_port),
                ..launcher::compose::ComposeOptions::new(replicas.f, out)
            };
            let files = launcher::compose::generate_compose(&options)?;
            print!("{}", launcher::compose::instructions(&options, &files));
        }
        Command::CheckHistory { file } => {
            let history = nemesis::workload::load(&file)?;
            let judgement = nemesis::checker::judge(&history, nemesis::checker::SEARCH_BUDGET);
            println!(
                "{}",
                serde_json::to_string(&judgement).expect("the verdict serializes")
            );
            if !judgement.linearizable() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Relay { config, delay_ms } => {
            nemesis::relay::run_from_file(&config, Duration::from_millis(delay_ms)).await?
        }
        Command::Node { config } => launcher::run_node(&config).await?,
        // CPU-bound and single-threaded per seed; it owns the process while it runs.
        Command::Sim(args) => return Ok(run_sim(args)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Replica logs go to stderr (the launcher points it at the log file), filtered by RUST_LOG.
fn init_node_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

//! The command line of `pbft-node`, for any application: a binary that replicates its own
//! [`StateMachine`](pbft_core::app::StateMachine) is one call to [`main`] with it.
//!
//! Exit codes: 0 success, 1 a failure while running (or writing a key), 2 bad usage, a bad
//! configuration or key file, or a data directory that is not the replica's to use, 3 a halt on
//! proof that more than f replicas are faulty (restarting will not help; see the log's
//! evidence).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pbft_core::app::AppFactory;
use pbft_crypto::{CryptoError, KeyPair};
use pbft_net::NetError;
use tracing::{error, info, warn};

use crate::config::{load_node_config, read_node_config};
use crate::error::{with_causes, NodeError};
use crate::logging::{self, LogFormat};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_HALTED: u8 = 3;

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Initialise the replica's data directory (`data_dir` in the configuration), once, before
    /// its first `run`. The directory must be empty or missing.
    Init {
        /// The replica's TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// For a replica that ran before and lost its data: it runs silent (signs nothing)
        /// until it has caught up past anything it could have signed, then takes part again.
        /// The directory may hold what is left of the lost one, but no log records.
        #[arg(long)]
        rejoin: bool,
    },
    /// Run a replica until Ctrl-C or SIGTERM. The log's filter is the first of --log-level,
    /// RUST_LOG, the configuration's `log.level`, and `info`.
    Run {
        /// The replica's TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A level (error, warn, info, debug, trace) or directives as in RUST_LOG.
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
        /// How log lines are written; overrides the configuration's `log.format`.
        #[arg(long, value_enum, value_name = "FORMAT")]
        log_format: Option<LogFormat>,
    },
    /// Generate a new identity key, write it to a new file (never overwriting one), and print
    /// its public key in hex on stdout.
    Keygen {
        /// Where to write the secret key; the file must not exist yet.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of a key file in hex, as `[[replicas]]` entries list it.
    Pubkey {
        /// A key file written by `keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Ask the replica configured in FILE whether it serves (`/healthz`) or, with --ready,
    /// takes part in agreement (`/readyz`), through its metrics endpoint: exit 0 if it answers
    /// 200, 1 if not (the reasons on stderr), 2 if it has no metrics endpoint. For container
    /// health checks and probes where no HTTP client is installed.
    Probe {
        /// The replica's TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Ask `/readyz` instead of `/healthz`.
        #[arg(long)]
        ready: bool,
    },
}

/// Runs the command line as the binary `name` (described by `about` in its help), replicating
/// the application `app` makes.
pub fn main(name: &'static str, about: &'static str, app: AppFactory) -> ExitCode {
    let matches = Cli::command()
        .name(name)
        .bin_name(name)
        .about(about)
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Init { config, rejoin } => init(&config, rejoin),
        Command::Run {
            config,
            log_level,
            log_format,
        } => run(&config, log_level.as_deref(), log_format, app),
        Command::Keygen { out } => keygen(&out),
        Command::Pubkey { key } => pubkey(&key),
        Command::Probe { config, ready } => probe(&config, ready),
    }
}

fn probe(config_path: &Path, ready: bool) -> ExitCode {
    let metrics = match read_node_config(config_path) {
        Ok(file) => file.metrics,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(mut addr) = metrics.filter(|addr| addr.port() != 0) else {
        eprintln!(
            "error: {} sets no metrics address with a fixed port to ask",
            config_path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = if ready { "/readyz" } else { "/healthz" };
    match crate::metrics::probe(addr, path, std::time::Duration::from_secs(2)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{addr}{path}: {reason}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn keygen(out: &Path) -> ExitCode {
    // `save` refuses to overwrite too; checking first gives the clearer message.
    if out.symlink_metadata().is_ok() {
        eprintln!(
            "error: {} already exists; refusing to overwrite a key (choose another --out)",
            out.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let key = KeyPair::generate();
    if let Err(e) = key.save(out) {
        let reason = match e {
            CryptoError::KeyFile { reason, .. } => reason,
            other => other.to_string(),
        };
        eprintln!("error: cannot write key file {}: {reason}", out.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    println!("{}", key.public().to_hex());
    ExitCode::SUCCESS
}

fn pubkey(path: &Path) -> ExitCode {
    match KeyPair::load(path) {
        Ok(key) => {
            println!("{}", key.public().to_hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init(config_path: &Path, rejoin: bool) -> ExitCode {
    let setup = match load_node_config(config_path) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match crate::data_dir::init(&setup, rejoin) {
        Ok(()) => {
            let how = if rejoin {
                "to rejoin after a lost disk; it stays silent until caught up"
            } else {
                "for a new replica"
            };
            println!(
                "initialised {} for replica {} {how}",
                setup.data_dir.display(),
                setup.id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", with_causes(&e));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run(
    config_path: &Path,
    log_level: Option<&str>,
    log_format: Option<LogFormat>,
    app: AppFactory,
) -> ExitCode {
    let file = match read_node_config(config_path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut log = file.log.clone();
    log.format = log_format.unwrap_or(log.format);
    if let Err(reason) = logging::init(&log, log_level) {
        eprintln!("error: {reason}");
        return ExitCode::from(EXIT_USAGE);
    }
    logging::set_replica_id(file.id);
    let setup = match file.to_setup_in(config_path) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match crate::fds::reserve(setup.metrics_server.max_connections) {
        Ok(limit) => info!(limit, "open files limit"),
        Err(reason) => {
            eprintln!("error: {reason}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    let listen = setup.listen;
    let metrics = setup.metrics;
    info!(
        config = %config_path.display(),
        %listen,
        n = setup.committee.n(),
        f = setup.committee.f(),
        data_dir = %setup.data_dir.display(),
        "starting replica"
    );
    // The runtime itself warns loudly when `behavior` is set, for in-process nodes too.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(crate::runtime::run_app(setup, app, shutdown_signal()));
    match result {
        Ok(()) => {
            info!("replica stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("replica failed: {e:#}");
            eprintln!(
                "error: {}",
                describe_failure(&e, config_path, listen, metrics)
            );
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a replica that failed: a data directory that is not this replica's is a
/// configuration mistake; a halt on proof of more than f faults needs an operator, not a
/// restart.
fn exit_code(error: &NodeError) -> u8 {
    match error {
        NodeError::DataDir(_) => EXIT_USAGE,
        NodeError::Halted(_) => EXIT_HALTED,
        _ => EXIT_FAILURE,
    }
}

/// Names the configuration field behind a failure to bind, the common operator mistake; else
/// the error with its causes.
fn describe_failure(
    error: &NodeError,
    config_path: &Path,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
) -> String {
    let config = config_path.display();
    match error {
        NodeError::Listen {
            source: NetError::AddressInUse(addr),
            ..
        } => format!(
            "{config}: listen = \"{addr}\": address already in use (is another replica running \
             on this port?)"
        ),
        NodeError::Listen {
            source: NetError::Bind { addr, source },
            ..
        } => format!("{config}: listen = \"{addr}\": cannot bind: {source}"),
        NodeError::Metrics { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            let field = match metrics {
                Some(addr) => format!("metrics = \"{addr}\""),
                None => format!("listen = \"{listen}\""),
            };
            format!("{config}: {field}: address already in use")
        }
        other => with_causes(other),
    }
}

/// Completes on Ctrl-C or SIGTERM. A signal that cannot be watched is logged and ignored rather
/// than taken as a request to stop.
async fn shutdown_signal() {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => info!("interrupted; shutting down"),
            Err(error) => {
                warn!(%error, "cannot watch for Ctrl-C");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
                info!("SIGTERM received; shutting down");
            }
            Err(error) => {
                warn!(%error, "cannot watch for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::protocol::Halt;
    use pbft_crypto::{Digest, Domain};

    #[test]
    fn a_halt_on_proof_of_faults_has_an_exit_code_of_its_own() {
        let halt = NodeError::Halted(Halt::ConflictingCommit {
            seq: 7,
            committed: Digest::of(Domain::Request, b"a"),
            other: Digest::of(Domain::Request, b"b"),
            from: "a NEW-VIEW",
        });
        assert_eq!(exit_code(&halt), 3);
        let not_ours =
            NodeError::DataDir(crate::data_dir::DataDirError::NotInitialised("data".into()));
        assert_eq!(exit_code(&not_ours), 2);
        let bind = NodeError::Metrics {
            addr: "127.0.0.1:9000".parse().unwrap(),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        assert_eq!(exit_code(&bind), 1);
    }
}

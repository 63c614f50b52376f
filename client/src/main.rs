//! `pbft-client`: key-value operations, cluster status and benchmarks against a PBFT cluster.
//!
//! Exit codes (a contract for scripts): 0 success; 1 the operation ran and the answer is
//! negative (a missing key for `get`, a mismatch for `cas`); 2 bad usage or configuration;
//! 3 the cluster did not answer in time (no 2f+1 matching replies). Each failure prints one
//! line on stderr.

mod bench;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bench::{BenchOptions, BenchProgress, BenchStop};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pbft_client::{
    load_client_config, CasOutcome, Client, ClientError, ClientSetup, StatusUnavailable,
};
use pbft_core::messages::NodeStatus;

/// A client for the PBFT replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "pbft-client", version)]
struct Cli {
    /// The client configuration file: key_file, f and [[replicas]].
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Seconds to wait for 2f+1 matching replies (or for status reports).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set KEY to VALUE; prints `ok`.
    Put { key: String, value: String },
    /// Print KEY's value; exits 1 if the key is absent. Read without ordering from 2f+1
    /// agreeing replicas, ordered if they do not agree.
    Get {
        key: String,
        /// Order the read through the three phases, like a write.
        #[arg(long)]
        ordered: bool,
    },
    /// Remove KEY; prints the value it had.
    Delete { key: String },
    /// Set KEY to NEW if it holds EXPECTED; exits 1 on a mismatch.
    Cas(CasArgs),
    /// Show every replica's status.
    Status {
        /// Print one JSON array with every field, for machines.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency with many clients putting values to distinct keys (or
    /// overwriting a few with --keys).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct CasArgs {
    key: String,
    /// EXPECTED NEW, or only NEW with --absent.
    #[arg(required = true, num_args = 1..=2, value_names = ["EXPECTED", "NEW"])]
    values: Vec<String>,
    /// Swap only if KEY is absent (then give only NEW).
    #[arg(long)]
    absent: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Concurrent clients, each with its own session and connections (all with the
    /// configuration's key).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests outstanding per client (at most 512).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Total requests to issue.
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds to run instead of a request count.
    #[arg(long)]
    duration: Option<f64>,
    /// Bytes in each value.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Overwrite this many keys per outstanding request in turn, so the replicated state stays
    /// small; by default every put writes a new key.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keys: Option<u64>,
    /// Print one JSON object instead of text, without a progress bar.
    #[arg(long)]
    json: bool,
}

/// How a command failed, which decides the exit code.
enum Failure {
    /// The operation ran and the answer is negative (exit 1).
    Negative(String),
    /// The command could not be run as given (exit 2).
    Usage(String),
    /// The cluster gave no answer in time (exit 3).
    Unavailable(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Negative(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unavailable(_) => 3,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        let message = with_causes(&error);
        match error {
            ClientError::Timeout
            | ClientError::Closed
            | ClientError::ResultForgotten
            | ClientError::SessionExpired
            | ClientError::SessionsFull => Failure::Unavailable(format!("unavailable: {message}")),
            _ => Failure::Usage(format!("error: {message}")),
        }
    }
}

/// An error and its causes, on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (Failure::Negative(message)
            | Failure::Usage(message)
            | Failure::Unavailable(message)) = &failure;
            eprintln!("{message}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        return Err(Failure::Usage(
            "error: --timeout must be a positive number of seconds".into(),
        ));
    }
    let timeout = Duration::from_secs_f64(cli.timeout);
    let mut setup = load_client_config(&cli.config)?;
    setup.request_timeout = timeout;
    if let Command::Bench(args) = &cli.command {
        return run_bench(setup, args).await;
    }
    let client = Client::connect(setup).await?;
    let result = run_command(&client, cli.command, timeout).await;
    client.close().await;
    result
}

async fn run_command(client: &Client, command: Command, timeout: Duration) -> Result<(), Failure> {
    match command {
        Command::Put { key, value } => {
            client.put(key, value).await?;
            println!("ok");
        }
        Command::Get { key, ordered } => {
            let value = if ordered {
                client.get_ordered(key.clone()).await?
            } else {
                client.get(key.clone()).await?
            };
            match value {
                Some(value) => print_value(&value),
                None => return Err(Failure::Negative(format!("not found: {key}"))),
            }
        }
        Command::Delete { key } => match client.delete(key.clone()).await? {
            Some(value) => print_value(&value),
            None => println!("key was absent: {key}"),
        },
        Command::Cas(args) => {
            let (expected, new) = match (args.absent, args.values.as_slice()) {
                (true, [new]) => (None, new.clone()),
                (false, [expected, new]) => (Some(expected.clone().into_bytes()), new.clone()),
                (true, _) => {
                    return Err(Failure::Usage(
                        "error: cas --absent takes KEY NEW (no expected value)".into(),
                    ))
                }
                (false, _) => {
                    return Err(Failure::Usage(
                        "error: cas takes KEY EXPECTED NEW, or --absent KEY NEW".into(),
                    ))
                }
            };
            match client.cas(args.key, expected, new).await? {
                CasOutcome::Swapped => println!("ok"),
                CasOutcome::Mismatch(Some(current)) => {
                    return Err(Failure::Negative(format!(
                        "mismatch: current value is {}",
                        String::from_utf8_lossy(&current)
                    )))
                }
                CasOutcome::Mismatch(None) => {
                    return Err(Failure::Negative("mismatch: the key is absent".into()))
                }
            }
        }
        Command::Status { json } => {
            let statuses = client.status_all(timeout.min(Duration::from_secs(5))).await;
            if json {
                println!("{}", status_json(client, &statuses));
            } else {
                print!("{}", status_table(client, &statuses));
            }
            if statuses.iter().all(|(_, s)| s.is_err()) {
                return Err(Failure::Unavailable(
                    "unavailable: no replica answered".into(),
                ));
            }
        }
        Command::Bench(_) => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// Writes the value's bytes as they are, then a newline.
fn print_value(value: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(value);
    let _ = out.write_all(b"\n");
}

fn address_of(client: &Client, id: u32) -> String {
    (client.replicas().iter())
        .find(|r| r.id == id)
        .map_or_else(String::new, |r| r.addr.to_string())
}

fn ids(list: &[u32]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn status_table(
    client: &Client,
    statuses: &[(u32, Result<NodeStatus, StatusUnavailable>)],
) -> String {
    let header = [
        "ID",
        "ADDRESS",
        "REACHABLE",
        "VIEW",
        "PRIMARY",
        "EXECUTED",
        "CHECKPOINT",
        "DIGEST",
        "PEERS",
        "REJECTED",
        "EVIDENCE",
        "BEHAVIOR",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    let mut notes = Vec::new();
    for (id, status) in statuses {
        let mut row = vec![id.to_string(), address_of(client, *id)];
        match status {
            Ok(s) => {
                let view = if s.view_active {
                    s.view.to_string()
                } else {
                    format!("{} (changing)", s.view)
                };
                row.extend([
                    "yes".to_string(),
                    view,
                    s.primary.to_string(),
                    s.last_executed.to_string(),
                    s.stable_checkpoint.to_string(),
                    s.state_digest.short(),
                    ids(&s.connected_peers),
                    s.rejected.iter().map(|(_, n)| n).sum::<u64>().to_string(),
                    ids(&s.evidence_against),
                    s.behavior.clone().unwrap_or_else(|| "correct".into()),
                ]);
            }
            Err(e) => {
                row.push("no".to_string());
                row.extend(std::iter::repeat_n("-".to_string(), 9));
                notes.push(format!("replica {id}: {e}"));
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = (row.iter().zip(&widths))
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

fn status_json(
    client: &Client,
    statuses: &[(u32, Result<NodeStatus, StatusUnavailable>)],
) -> String {
    let entries: Vec<serde_json::Value> = statuses
        .iter()
        .map(|(id, status)| {
            let address = address_of(client, *id);
            match status {
                Ok(s) => serde_json::json!({
                    "id": id,
                    "address": address,
                    "reachable": true,
                    "view": s.view,
                    "view_active": s.view_active,
                    "primary": s.primary,
                    "last_executed": s.last_executed,
                    "stable_checkpoint": s.stable_checkpoint,
                    "state_digest": s.state_digest.to_hex(),
                    "connected_peers": s.connected_peers,
                    "rejected": rejected_map(&s.rejected),
                    "rejected_total": s.rejected.iter().map(|(_, n)| n).sum::<u64>(),
                    "evidence_against": s.evidence_against,
                    "behavior": s.behavior,
                    "pending_requests": s.pending_requests,
                    "committed_requests": s.committed_requests,
                }),
                Err(e) => serde_json::json!({
                    "id": id,
                    "address": address,
                    "reachable": false,
                    "error": e.to_string(),
                }),
            }
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}

fn rejected_map(rejected: &[(String, u64)]) -> serde_json::Map<String, serde_json::Value> {
    (rejected.iter())
        .map(|(label, count)| (label.clone(), serde_json::Value::from(*count)))
        .collect()
}

async fn run_bench(setup: ClientSetup, args: &BenchArgs) -> Result<(), Failure> {
    if args.clients == 0 || args.window == 0 || args.window > 512 {
        return Err(Failure::Usage(
            "--clients must be positive and --window between 1 and 512".into(),
        ));
    }
    let stop = match (args.requests, args.duration) {
        (_, Some(secs)) if secs.is_finite() && secs > 0.0 => {
            BenchStop::Duration(Duration::from_secs_f64(secs))
        }
        (_, Some(_)) => return Err(Failure::Usage("--duration must be positive".into())),
        (Some(n), None) => BenchStop::Requests(n),
        (None, None) => BenchStop::Requests(10_000),
    };
    let options = BenchOptions {
        clients: args.clients,
        window: args.window,
        stop,
        payload: args.payload,
        keys: args.keys,
    };
    let clients = bench::connect_clients(&setup, &options).await?;
    let progress = Arc::new(BenchProgress::default());
    let bar = progress_bar(&options, args.json);
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let done = progress.completed.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                if matches!(options.stop, BenchStop::Requests(_)) {
                    bar.set_position(done + failed);
                } else {
                    bar.set_position(bar.elapsed().as_secs());
                }
                bar.set_message(format!("{done} ok, {failed} failed"));
            }
        })
    };
    let report = bench::run(&clients, &options, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    for client in clients {
        client.close().await;
    }
    if args.json {
        let json = serde_json::to_string(&report).expect("a report serializes");
        println!("{json}");
    } else {
        println!(
            "{} requests in {:.2} s: {:.0} requests/s ({} clients x {} outstanding, {} B values)",
            report.requests,
            report.seconds,
            report.throughput,
            report.clients,
            report.window,
            report.payload
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
            report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms, report.mean_ms
        );
        if report.errors > 0 {
            println!(
                "errors: {} (first: {})",
                report.errors,
                report.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    if report.requests == 0 && report.errors > 0 {
        return Err(Failure::Unavailable(
            "unavailable: every request failed".into(),
        ));
    }
    Ok(())
}

fn progress_bar(options: &BenchOptions, json: bool) -> ProgressBar {
    let (length, template) = match options.stop {
        BenchStop::Requests(n) => (
            n,
            "{bar:40} {pos}/{len} requests, {per_sec} ({msg}) {elapsed}",
        ),
        BenchStop::Duration(d) => (d.as_secs().max(1), "{bar:40} {pos}/{len} s ({msg})"),
    };
    let bar = ProgressBar::new(length);
    if json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cas_takes_expected_and_new_or_absent_and_new() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(
                ["pbft-client", "--config", "c.toml", "cas"]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            match cli.command {
                Command::Cas(cas) => (cas.key, cas.values, cas.absent),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            parse(&["k", "old", "new"]),
            ("k".into(), vec!["old".into(), "new".into()], false)
        );
        assert_eq!(
            parse(&["--absent", "k", "new"]),
            ("k".into(), vec!["new".into()], true)
        );
        assert!(Cli::try_parse_from(["pbft-client", "--config", "c", "cas", "k"]).is_err());
    }

    #[test]
    fn bench_flags_parse() {
        let cli = Cli::try_parse_from([
            "pbft-client",
            "--config",
            "c",
            "bench",
            "--clients",
            "4",
            "--window",
            "32",
            "--duration",
            "5",
            "--payload",
            "100",
            "--json",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!((args.clients, args.window, args.payload), (4, 32, 100));
        assert_eq!(args.duration, Some(5.0));
        assert!(args.json);
        assert!(Cli::try_parse_from([
            "pbft-client",
            "--config",
            "c",
            "bench",
            "--requests",
            "5",
            "--duration",
            "5",
        ])
        .is_err());
    }
}

//! The foreground of `testnet up`: the live view of the replicas, refreshed every second with
//! the events worth saying (a replica caught equivocating, a new view), and the optional client
//! load, until Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pbft_client::Client;
use pbft_core::messages::ReplicaId;

use super::layout::{Layout, State};
use super::load::{Load, LoadStats};
use super::process::{self, Stopped, STOP_GRACE};
use super::report::{self, ClusterReport};
use super::up::reap;
use super::{afresh_hint, shutdown_signal, LaunchError};

/// The live view: refreshes about once a second until Ctrl-C or SIGTERM, then stops the nodes.
pub(super) async fn foreground(
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

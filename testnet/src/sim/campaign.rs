//! The randomized search: one seed draws a whole scenario (cluster size, workload, network,
//! Byzantine replicas and a timeline of trouble), the simulator runs it, and the checkers judge
//! it. A scenario is a plain list of [`Step`]s, so a failing seed can be printed, read and
//! replayed exactly.
//!
//! The mix, per seed:
//! - f from 1 to 3; 1 to 4 clients with 20 to 140 requests each and 1 to 8 outstanding; in most
//!   runs the clients also write, compare-and-swap and read (read-only) keys they share;
//! - a network that loses up to 20 % of messages, duplicates up to 10 %, reorders up to 30 % and
//!   delays up to 60 ms, changed for a while now and then;
//! - up to f Byzantine replicas of random kinds, often the primaries of consecutive views;
//! - three to ten rounds of trouble: a replica isolated for up to 15 s, the current primary
//!   isolated, random splits, one-way cuts, a replica's links clogged with up to 1.5 s of delay,
//!   correct replicas crashed (between steps or in the middle of a write) and restarted during
//!   the run, several at once;
//! - in runs with fewer than f Byzantine replicas, often a correct replica that loses its disk
//!   and rejoins (at once, or after a while down), which then counts as faulty for liveness;
//! - then everything heals and every request must complete.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::byzantine::{BehaviorKind, ClientAttack};
use pbft_core::messages::ReplicaId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::app::SimApp;
use super::{KvApp, NetworkConfig, Node, SimConfig, Simulation, Violation, Workload};

/// How long, in simulated time, the cluster has after healing to complete every request.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(1800);

/// One thing that happens to the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Let the cluster run.
    Run(Duration),
    /// Cut every link to and from a replica.
    Isolate(ReplicaId),
    /// Cut every link to and from the primary of the highest view a correct replica is in.
    IsolatePrimary,
    /// Restore every link to and from a replica.
    Reconnect(ReplicaId),
    /// Cut every link between two groups of replicas.
    Split(Vec<ReplicaId>, Vec<ReplicaId>),
    /// Cut the link from one replica to another, in that direction only.
    Cut(ReplicaId, ReplicaId),
    /// Delay every message to and from a replica by this much more.
    Clog(ReplicaId, Duration),
    /// Restore every link.
    Heal,
    /// Change how the network treats messages.
    Network(NetworkConfig),
    /// Crash a replica between two steps.
    Crash(ReplicaId),
    /// Crash a replica in its next write, keeping this fraction of its records.
    CrashDuringWrite(ReplicaId, f64),
    /// Restart a crashed replica from its disk.
    Recover(ReplicaId),
    /// A replica loses its disk and comes back with an empty one, initialised to rejoin.
    Rejoin(ReplicaId),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Run(d) => write!(f, "run {} ms", d.as_millis()),
            Step::Isolate(id) => write!(f, "isolate {id}"),
            Step::IsolatePrimary => write!(f, "isolate the current primary"),
            Step::Reconnect(id) => write!(f, "reconnect {id}"),
            Step::Split(a, b) => write!(f, "split {a:?} | {b:?}"),
            Step::Cut(from, to) => write!(f, "cut {from} -> {to}"),
            Step::Clog(id, delay) => write!(f, "clog {id} by {} ms", delay.as_millis()),
            Step::Heal => write!(f, "heal"),
            Step::Network(c) => write!(
                f,
                "network: delay {}..{} ms, drop {:.2}, duplicate {:.2}, reorder {:.2}",
                c.min_delay.as_millis(),
                c.max_delay.as_millis(),
                c.drop_probability,
                c.duplicate_probability,
                c.reorder_probability
            ),
            Step::Crash(id) => write!(f, "crash {id}"),
            Step::CrashDuringWrite(id, kept) => {
                write!(f, "crash {id} in its next write, keeping {kept:.2}")
            }
            Step::Recover(id) => write!(f, "recover {id}"),
            Step::Rejoin(id) => write!(f, "wipe {id}'s disk; it rejoins"),
        }
    }
}

/// A whole run, drawn from one seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub config: SimConfig,
    pub faulty: Vec<(ReplicaId, BehaviorKind)>,
    /// The trouble, in order; healing and the liveness check follow it.
    pub steps: Vec<Step>,
}

/// What a run that passed looked like.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub simulated: Duration,
    pub events: u64,
    /// The highest view a correct replica reached.
    pub view: u64,
    pub executed: u64,
}

/// The command that replays `seed` with its scenario printed.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p testnet -- sim --seed {seed} --verbose")
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn percent(rng: &mut ChaCha8Rng, max: u64) -> f64 {
    rng.random_range(0..=max) as f64 / 100.0
}

/// A network as bad as the mix allows, drawn at random.
fn random_network(rng: &mut ChaCha8Rng) -> NetworkConfig {
    NetworkConfig {
        max_delay: ms(rng.random_range(2..=60)),
        drop_probability: percent(rng, 20),
        duplicate_probability: percent(rng, 10),
        reorder_probability: percent(rng, 30),
        ..NetworkConfig::default()
    }
}

impl Scenario {
    /// Draws the scenario of `seed`. The same seed always gives the same scenario, and the
    /// simulation it runs is seeded with `seed` too.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ca1_ab1e_0dd5_eed5);
        let f = match rng.random_range(0..100) {
            0..45 => 1,
            45..75 => 2,
            _ => 3,
        };
        let n = 3 * f + 1;
        let mut config = SimConfig::new(seed, f);
        config.clients = rng.random_range(1..=4);
        config.requests_per_client = rng.random_range(20..=140);
        config.client_window = rng.random_range(1..=8);
        config.network = if rng.random_bool(0.15) {
            NetworkConfig::lossy()
        } else {
            random_network(&mut rng)
        };

        // Up to f faulty replicas, often the primaries of consecutive views, so that view
        // changes follow one another.
        let count = if rng.random_bool(0.5) {
            f
        } else {
            rng.random_range(0..=f)
        };
        let mut ids: Vec<ReplicaId> = match rng.random_range(0..3) {
            0 => (0..count as ReplicaId).collect(),
            1 => {
                let first = rng.random_range(0..n) as ReplicaId;
                (0..count as ReplicaId)
                    .map(|i| (first + i) % n as ReplicaId)
                    .collect()
            }
            _ => {
                let mut all: Vec<ReplicaId> = (0..n as ReplicaId).collect();
                all.shuffle(&mut rng);
                all.truncate(count);
                all
            }
        };
        ids.sort_unstable();
        let one_kind = rng.random_bool(0.3);
        let pick =
            |rng: &mut ChaCha8Rng| BehaviorKind::ALL[rng.random_range(0..BehaviorKind::ALL.len())];
        let shared = pick(&mut rng);
        let faulty: Vec<(ReplicaId, BehaviorKind)> = ids
            .into_iter()
            .map(|id| (id, if one_kind { shared } else { pick(&mut rng) }))
            .collect();
        // Faulty clients come from their own stream, so that adding them left every other part
        // of a seed's scenario as it was.
        let mut attack_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc11e_47a7_7ac4_0000);
        if attack_rng.random_bool(0.4) {
            for _ in 0..attack_rng.random_range(1..=2) {
                let attack = ClientAttack::ALL[attack_rng.random_range(0..ClientAttack::ALL.len())];
                config.attackers.push(attack);
            }
            config.attack_interval = ms(attack_rng.random_range(100..=500));
            config.attack_until = ms(attack_rng.random_range(2_000..=20_000));
        }

        // So is whether the cluster lists its clients.
        let mut clients_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0c11_e575_0be9_0001);
        config.open_clients = clients_rng.random_bool(0.3);

        // So is the workload.
        let mut workload_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0bad_c0de_5eed_0001);
        if workload_rng.random_bool(0.6) {
            config.workload = Workload::Mixed;
        }

        let correct: Vec<ReplicaId> = (0..n as ReplicaId)
            .filter(|id| !faulty.iter().any(|(f, _)| f == id))
            .collect();

        let mut steps = Vec::new();
        let mut down: Vec<ReplicaId> = Vec::new();
        for _ in 0..rng.random_range(3..=10) {
            steps.push(Step::Run(ms(rng.random_range(50..=2000))));
            match rng.random_range(0..100) {
                0..14 => {
                    let id = rng.random_range(0..n) as ReplicaId;
                    steps.push(Step::Isolate(id));
                    steps.push(Step::Run(ms(rng.random_range(500..=15_000))));
                    steps.push(Step::Reconnect(id));
                }
                14..28 => {
                    steps.push(Step::IsolatePrimary);
                    steps.push(Step::Run(ms(rng.random_range(500..=10_000))));
                    steps.push(Step::Heal);
                }
                28..46 => {
                    let mut all: Vec<ReplicaId> = (0..n as ReplicaId).collect();
                    all.shuffle(&mut rng);
                    let b = all.split_off(rng.random_range(1..n));
                    steps.push(Step::Split(all, b));
                    steps.push(Step::Run(ms(rng.random_range(300..=8000))));
                    if rng.random_bool(0.7) {
                        steps.push(Step::Heal);
                    }
                }
                46..56 => {
                    for _ in 0..rng.random_range(1..=n) {
                        let from = rng.random_range(0..n) as ReplicaId;
                        let to = rng.random_range(0..n) as ReplicaId;
                        if from != to {
                            steps.push(Step::Cut(from, to));
                        }
                    }
                    steps.push(Step::Run(ms(rng.random_range(300..=8000))));
                    if rng.random_bool(0.6) {
                        steps.push(Step::Heal);
                    }
                }
                56..72 => {
                    let up: Vec<ReplicaId> = correct
                        .iter()
                        .copied()
                        .filter(|id| !down.contains(id))
                        .collect();
                    if let Some(&id) = up.get(rng.random_range(0..up.len().max(1))) {
                        steps.push(if rng.random_bool(0.5) {
                            Step::Crash(id)
                        } else {
                            Step::CrashDuringWrite(id, rng.random_range(0..=4u32) as f64 / 4.0)
                        });
                        down.push(id);
                        steps.push(Step::Run(ms(rng.random_range(200..=10_000))));
                        if rng.random_bool(0.8) {
                            steps.push(Step::Recover(id));
                            down.retain(|d| *d != id);
                        }
                    }
                }
                72..78 => {
                    // Several correct replicas at once, possibly all of them.
                    let mut up: Vec<ReplicaId> = correct
                        .iter()
                        .copied()
                        .filter(|id| !down.contains(id))
                        .collect();
                    up.shuffle(&mut rng);
                    up.truncate(rng.random_range(1..=up.len().max(1)));
                    for &id in &up {
                        steps.push(if rng.random_bool(0.5) {
                            Step::Crash(id)
                        } else {
                            Step::CrashDuringWrite(id, rng.random_range(0..=4u32) as f64 / 4.0)
                        });
                    }
                    steps.push(Step::Run(ms(rng.random_range(100..=5000))));
                    for &id in &up {
                        steps.push(Step::Recover(id));
                    }
                }
                78..88 => {
                    let calm = config.network.clone();
                    steps.push(Step::Network(random_network(&mut rng)));
                    steps.push(Step::Run(ms(rng.random_range(500..=10_000))));
                    steps.push(Step::Network(calm));
                }
                88..96 => {
                    let id = rng.random_range(0..n) as ReplicaId;
                    steps.push(Step::Clog(id, ms(rng.random_range(100..=1500))));
                    steps.push(Step::Run(ms(rng.random_range(500..=10_000))));
                    steps.push(Step::Reconnect(id));
                }
                _ => steps.push(Step::Heal),
            }
        }
        steps.push(Step::Run(ms(rng.random_range(0..=2000))));

        // A lost disk comes from a stream of its own too. A rejoining replica is silent for a
        // while, so each one takes one of the f faults liveness allows.
        let mut disk_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd15c_1057_2e70_1000);
        if faulty.len() < f && disk_rng.random_bool(0.8) {
            let mut losers = correct.clone();
            losers.shuffle(&mut disk_rng);
            losers.truncate(disk_rng.random_range(1..=f - faulty.len()));
            for id in losers {
                let mut lost = Vec::new();
                if disk_rng.random_bool(0.5) {
                    lost.push(Step::Crash(id));
                    lost.push(Step::Run(ms(disk_rng.random_range(100..=5000))));
                }
                lost.push(Step::Rejoin(id));
                let at = disk_rng.random_range(0..=steps.len());
                steps.splice(at..at, lost);
            }
        }
        Scenario {
            config,
            faulty,
            steps,
        }
    }

    /// Runs the scenario on the key-value store with the scenario's workload, heals
    /// everything, and demands that every request completes and every invariant holds.
    pub fn run(&self) -> Result<Outcome, Violation> {
        let app = Arc::new(KvApp {
            workload: self.config.workload,
        });
        self.run_app(app)
    }

    /// Runs the scenario on the application `app`, as [`Scenario::run`] does.
    pub fn run_app(&self, app: Arc<dyn SimApp>) -> Result<Outcome, Violation> {
        let mut sim = Simulation::with_app(self.config.clone(), app);
        for (id, kind) in &self.faulty {
            sim.set_behavior(*id, *kind);
        }
        for step in &self.steps {
            tracing::debug!(at = ?sim.now(), %step, "scenario step");
            sim.apply(step)?;
        }
        sim.heal();
        for id in 0..sim.n() as ReplicaId {
            sim.recover(id)?;
        }
        sim.network.config = NetworkConfig::default();
        sim.run_until_clients_done(LIVENESS_LIMIT)?;
        sim.run_for(Duration::from_secs(3))?;
        sim.check_final_state()?;
        Ok(Outcome {
            simulated: sim.now(),
            events: sim.stats.events,
            view: sim
                .correct_ids()
                .iter()
                .map(|id| sim.replica(*id).view())
                .max()
                .unwrap_or(0),
            executed: sim.checker.max_executed(),
        })
    }

    /// A readable account of the scenario, one line per item.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut lines = vec![
            format!(
                "seed {}: f = {}, {} clients x {} requests ({:?}), window {}",
                c.seed, c.f, c.clients, c.requests_per_client, c.workload, c.client_window
            ),
            format!("{}", Step::Network(c.network.clone())),
        ];
        for (id, kind) in &self.faulty {
            lines.push(format!("replica {id} is {kind}"));
        }
        for attack in &c.attackers {
            lines.push(format!(
                "a faulty client runs {attack} every {:?} until {:?}",
                c.attack_interval, c.attack_until
            ));
        }
        lines.extend(self.steps.iter().map(Step::to_string));
        lines.push("heal, recover every replica, and run until every request completes".into());
        lines.join("\n")
    }
}

impl Simulation {
    /// Carries out one step of a scenario.
    pub fn apply(&mut self, step: &Step) -> Result<(), Violation> {
        match step {
            Step::Run(duration) => return self.run_for(*duration),
            Step::Isolate(id) => self.isolate(*id),
            Step::IsolatePrimary => {
                let view = self
                    .correct_ids()
                    .iter()
                    .map(|id| self.replica(*id).view())
                    .max()
                    .unwrap_or(0);
                let primary = (view % self.n() as u64) as ReplicaId;
                self.isolate(primary);
            }
            Step::Reconnect(id) => self.reconnect(*id),
            Step::Split(a, b) => self.split(a, b),
            Step::Cut(from, to) => self.network.cut(Node::Replica(*from), Node::Replica(*to)),
            Step::Clog(id, delay) => {
                let node = Node::Replica(*id);
                for other in (0..self.n() as ReplicaId).filter(|other| other != id) {
                    self.network.clog(node, Node::Replica(other), *delay);
                    self.network.clog(Node::Replica(other), node, *delay);
                }
            }
            Step::Heal => self.heal(),
            Step::Network(config) => self.network.config = config.clone(),
            Step::Crash(id) => self.crash(*id),
            Step::CrashDuringWrite(id, kept) => self.crash_during_next_write(*id, *kept),
            Step::Recover(id) => return self.recover(*id),
            Step::Rejoin(id) => return self.wipe_and_rejoin(*id),
        }
        Ok(())
    }
}

/// The result of a search over many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// Failing seeds with their violation, in seed order.
    pub failures: Vec<(u64, Violation)>,
    pub simulated: Duration,
    pub events: u64,
    /// The highest view any run reached.
    pub max_view: u64,
}

/// Runs the scenarios of `seeds` on `jobs` threads. `progress` is called after each seed with
/// its number and result, from whichever thread ran it.
pub fn search(
    seeds: std::ops::Range<u64>,
    jobs: usize,
    progress: &(dyn Fn(u64, &Result<Outcome, Violation>) + Sync),
) -> Summary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    let next = AtomicU64::new(seeds.start);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let result = Scenario::generate(seed).run();
                progress(seed, &result);
                let mut summary = summary.lock().expect("a search thread panicked");
                summary.seeds += 1;
                match result {
                    Ok(outcome) => {
                        summary.simulated += outcome.simulated;
                        summary.events += outcome.events;
                        summary.max_view = summary.max_view.max(outcome.view);
                    }
                    Err(violation) => summary.failures.push((seed, violation)),
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("a search thread panicked");
    summary.failures.sort_by_key(|(seed, _)| *seed);
    summary
}

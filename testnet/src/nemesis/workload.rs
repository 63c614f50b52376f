//! The nemesis's clients: each a sequential process of its own session, running put, get and
//! cas on shared keys at a steady pace, recording every operation.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_client::{CasOutcome, Client, ClientError, ClientSetup};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::checker::{Action, Operation, Outcome};
use super::NemesisOptions;
use crate::launcher::layout::open_private;
use crate::launcher::LaunchError;

/// The running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    clients: JoinSet<Vec<Operation>>,
}

impl Workload {
    /// Connects `options.clients` clients and starts them; times count from `start`.
    pub async fn start(
        options: &NemesisOptions,
        mut setup: ClientSetup,
        start: Instant,
    ) -> Result<Workload, LaunchError> {
        setup.request_timeout = options.request_timeout;
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        let pace = Duration::from_secs_f64(options.clients as f64 / options.rate);
        for index in 0..options.clients {
            let client = Client::connect(setup.clone())
                .await
                .map_err(|e| LaunchError::Failure(format!("cannot connect a client: {e}")))?;
            let process = Process {
                index,
                client,
                keys: options.keys,
                rng: ChaCha8Rng::seed_from_u64(options.seed ^ (index as u64 + 1) << 32),
                start,
                pace,
                stop: stop.clone(),
            };
            clients.spawn(process.run());
        }
        Ok(Workload { stop, clients })
    }

    /// Stops the clients once their current operation ends and returns every operation,
    /// ordered by invocation.
    pub async fn stop(mut self) -> Vec<Operation> {
        self.stop.store(true, Ordering::Relaxed);
        let mut history = Vec::new();
        while let Some(done) = self.clients.join_next().await {
            if let Ok(ops) = done {
                history.extend(ops);
            }
        }
        history.sort_by_key(|op| op.invoked);
        history
    }
}

/// The name of key `index`.
fn key_name(index: usize) -> String {
    format!("k{index}")
}

struct Process {
    index: usize,
    client: Client,
    keys: usize,
    rng: ChaCha8Rng,
    start: Instant,
    pace: Duration,
    stop: Arc<AtomicBool>,
}

impl Process {
    async fn run(mut self) -> Vec<Operation> {
        let mut history = Vec::new();
        // The value this client last saw on each key: what its cas expects.
        let mut last_seen: HashMap<usize, Option<String>> = HashMap::new();
        let mut next = Instant::now() + self.pace.mul_f64(self.rng.random_range(0.0..1.0));
        let mut written = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(next.into()).await;
            next = Instant::now().max(next) + self.pace;
            let key = self.rng.random_range(0..self.keys);
            let roll = self.rng.random_range(0..10);
            let action = if roll < 4 {
                Action::Get
            } else {
                written += 1;
                let value = format!("c{}-{written}", self.index);
                if roll < 7 {
                    Action::Put { value }
                } else {
                    Action::Cas {
                        expected: last_seen.get(&key).cloned().flatten(),
                        new: value,
                    }
                }
            };
            let invoked = self.now();
            let outcome = self.perform(key, &action).await;
            let completed = self.now();
            match (&action, &outcome) {
                (Action::Put { value }, Outcome::Done)
                | (Action::Cas { new: value, .. }, Outcome::Swapped) => {
                    last_seen.insert(key, Some(value.clone()));
                }
                (_, Outcome::Read(seen) | Outcome::Mismatch(seen)) => {
                    last_seen.insert(key, seen.clone());
                }
                _ => {}
            }
            history.push(Operation {
                client: self.index,
                key: key_name(key),
                action,
                outcome,
                invoked,
                completed,
            });
        }
        self.client.close().await;
        history
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    async fn perform(&self, key: usize, action: &Action) -> Outcome {
        let key = key_name(key);
        let text =
            |bytes: Option<bytes::Bytes>| bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        match action {
            Action::Put { value } => match self.client.put(key, value.as_bytes()).await {
                Ok(()) => Outcome::Done,
                Err(e) => outcome_of(&e),
            },
            Action::Get => match self.client.get(key).await {
                Ok(value) => Outcome::Read(text(value)),
                Err(e) => outcome_of(&e),
            },
            Action::Cas { expected, new } => {
                let expected = expected.as_ref().map(|v| v.as_bytes().to_vec());
                match self.client.cas(key, expected, new.as_bytes()).await {
                    Ok(CasOutcome::Swapped) => Outcome::Swapped,
                    Ok(CasOutcome::Mismatch(seen)) => Outcome::Mismatch(text(seen)),
                    Err(e) => outcome_of(&e),
                }
            }
        }
    }
}

/// Whether an error means the operation certainly did not take effect.
fn outcome_of(error: &ClientError) -> Outcome {
    match error {
        ClientError::Rejected(_) | ClientError::SessionExpired | ClientError::SessionsFull => {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

/// Whether an ordered read of every key completes within `patience`.
pub async fn recovers(client: &Client, keys: usize, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    for key in 0..keys {
        loop {
            match client.get_ordered(key_name(key)).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => continue,
                Err(_) => return false,
            }
        }
    }
    true
}

/// One line of the history file.
#[derive(Serialize, Deserialize)]
struct Line {
    client: usize,
    key: String,
    op: String,
    value: Option<String>,
    expected: Option<String>,
    outcome: String,
    result: Option<String>,
    invoked_ns: u64,
    completed_ns: Option<u64>,
}

impl Line {
    fn operation(self) -> Result<Operation, String> {
        let action = match self.op.as_str() {
            "put" => Action::Put {
                value: self.value.ok_or("a put without a value")?,
            },
            "get" => Action::Get,
            "cas" => Action::Cas {
                expected: self.expected,
                new: self.value.ok_or("a cas without a value")?,
            },
            other => return Err(format!("unknown op {other:?}")),
        };
        let outcome = match (self.outcome.as_str(), &action) {
            ("ok", Action::Put { .. }) => Outcome::Done,
            ("ok", Action::Get) => Outcome::Read(self.result),
            ("ok", Action::Cas { .. }) => Outcome::Swapped,
            ("mismatch", Action::Cas { .. }) => Outcome::Mismatch(self.result),
            ("failed", _) => Outcome::Failed,
            ("unknown", _) => Outcome::Unknown,
            (other, _) => return Err(format!("outcome {other:?} does not fit op {:?}", self.op)),
        };
        Ok(Operation {
            client: self.client,
            key: self.key,
            action,
            outcome,
            invoked: self.invoked_ns,
            completed: self.completed_ns.unwrap_or(self.invoked_ns),
        })
    }
}

/// Reads a history that [`save`] wrote.
pub fn load(path: &Path) -> Result<Vec<Operation>, LaunchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LaunchError::Usage(format!("cannot read {}: {e}", path.display())))?;
    (text.lines().enumerate())
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str::<Line>(line)
                .map_err(|e| e.to_string())
                .and_then(Line::operation)
                .map_err(|e| {
                    LaunchError::Usage(format!("{} line {}: {e}", path.display(), number + 1))
                })
        })
        .collect()
}

/// Writes `history` to `path`, one JSON object a line.
pub fn save(history: &[Operation], path: &Path) -> Result<(), LaunchError> {
    let failure =
        |e: std::io::Error| LaunchError::Failure(format!("cannot write {}: {e}", path.display()));
    let mut file = std::io::BufWriter::new(open_private(path, false).map_err(failure)?);
    for op in history {
        let (name, value, expected) = match &op.action {
            Action::Put { value } => ("put", Some(value.as_str()), None),
            Action::Get => ("get", None, None),
            Action::Cas { expected, new } => ("cas", Some(new.as_str()), expected.as_deref()),
        };
        let (outcome, result) = match &op.outcome {
            Outcome::Done => ("ok", None),
            Outcome::Read(seen) => ("ok", seen.as_deref()),
            Outcome::Swapped => ("ok", None),
            Outcome::Mismatch(seen) => ("mismatch", seen.as_deref()),
            Outcome::Failed => ("failed", None),
            Outcome::Unknown => ("unknown", None),
        };
        let line = Line {
            client: op.client,
            key: op.key.clone(),
            op: name.into(),
            value: value.map(str::to_string),
            expected: expected.map(str::to_string),
            outcome: outcome.into(),
            result: result.map(str::to_string),
            invoked_ns: op.invoked,
            completed_ns: (op.outcome != Outcome::Unknown).then_some(op.completed),
        };
        let text = serde_json::to_string(&line).expect("a history line serializes");
        writeln!(file, "{text}").map_err(failure)?;
    }
    file.flush().map_err(failure)
}

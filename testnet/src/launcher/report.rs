//! `testnet status`: what every replica reports, and whether the correct ones agree.

use std::collections::BTreeMap;
use std::time::Duration;

use pbft_client::{load_client_config, Client, ClientSetup};
use pbft_core::messages::{NodeStatus, ReplicaId};
use serde::Serialize;

use super::layout::{Layout, NodeRecord, State};
use super::process::node_alive;
use super::LaunchError;

/// The exact rule behind `agree`, shown by `testnet status --help`.
pub const AGREE_RULE: &str = "\
`agree` is true when every two correct replicas that are alive, answered, and report the same \
last executed sequence number also report the same state digest. Correct replicas are those \
started without a behaviour. Replicas report their current position, so two of them at \
different sequence numbers are not compared; `compared_pairs` says how many pairs were. With \
none to compare (replicas unreachable, or all at different sequence numbers) agreement is \
unknown: `agreement` is \"unknown\" and `agree` false. The Byzantine replicas' answers are shown \
but never counted.";

/// The verdict of [`AGREE_RULE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    /// At least one pair was compared, and every compared pair agrees.
    Yes,
    /// Two correct replicas at the same sequence number report different states.
    No,
    /// No pair of correct replicas could be compared.
    Unknown,
}

/// One replica: what the state file records and what it answered.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// The state file's record.
    pub record: NodeRecord,
    /// Whether its process is running.
    pub alive: bool,
    /// Its answer to the status query, or why there is none.
    pub status: Result<NodeStatus, String>,
}

/// Every replica of a testnet, and the verdict.
#[derive(Clone, Debug)]
pub struct ClusterReport {
    /// The number of Byzantine replicas tolerated.
    pub f: usize,
    /// Every replica, in id order.
    pub nodes: Vec<NodeReport>,
    /// See [`AGREE_RULE`].
    pub agreement: Agreement,
    /// How many pairs of correct replicas were compared.
    pub compared_pairs: usize,
}

/// The verdict of [`AGREE_RULE`] over `nodes`, and the number of pairs compared.
pub fn agreement(nodes: &[NodeReport]) -> (Agreement, usize) {
    let mut by_seq: BTreeMap<u64, Vec<pbft_crypto::Digest>> = BTreeMap::new();
    for node in nodes {
        if node.record.behavior.is_some() || !node.alive {
            continue;
        }
        if let Ok(status) = &node.status {
            by_seq
                .entry(status.last_executed)
                .or_default()
                .push(status.state_digest);
        }
    }
    let mut pairs = 0;
    let mut agree = true;
    for digests in by_seq.values() {
        pairs += digests.len() * (digests.len() - 1) / 2;
        agree &= digests.windows(2).all(|w| w[0] == w[1]);
    }
    let verdict = match (agree, pairs) {
        (false, _) => Agreement::No,
        (true, 0) => Agreement::Unknown,
        (true, _) => Agreement::Yes,
    };
    (verdict, pairs)
}

/// A client of the testnet with the key of `client.toml` (the only one its replicas admit); it
/// runs its own session, so it never competes with other users of that file.
pub fn fresh_client_setup(layout: &Layout, state: &State) -> Result<ClientSetup, LaunchError> {
    let path = layout.path(&state.client_config);
    load_client_config(&path).map_err(|e| LaunchError::Usage(e.to_string()))
}

/// Connects a fresh client to the testnet and waits (up to `timeout`) until it reaches every
/// live replica.
pub async fn connect(
    layout: &Layout,
    state: &State,
    timeout: Duration,
) -> Result<Client, LaunchError> {
    let setup = fresh_client_setup(layout, state)?;
    let client = Client::connect(setup)
        .await
        .map_err(|e| LaunchError::Failure(format!("cannot connect to the testnet: {e}")))?;
    let live = state.nodes.iter().filter(|n| node_alive(layout, n)).count();
    // Replicas still connecting are reported as unreachable.
    let _ = client.wait_connected(live, timeout).await;
    Ok(client)
}

/// Asks every live replica for its status through `client`.
pub async fn query(
    client: &Client,
    layout: &Layout,
    state: &State,
    timeout: Duration,
) -> ClusterReport {
    let answers: BTreeMap<ReplicaId, Result<NodeStatus, String>> =
        (client.status_all(timeout).await)
            .into_iter()
            .map(|(id, status)| (id, status.map_err(|e| e.to_string())))
            .collect();
    report(layout, state, answers)
}

/// Builds the report from the answers; a replica whose process is gone counts as not running
/// whatever answered.
pub fn report(
    layout: &Layout,
    state: &State,
    mut answers: BTreeMap<ReplicaId, Result<NodeStatus, String>>,
) -> ClusterReport {
    let nodes: Vec<NodeReport> = state
        .nodes
        .iter()
        .map(|record| {
            let alive = node_alive(layout, record);
            let status = if alive {
                answers
                    .remove(&record.id)
                    .unwrap_or_else(|| Err("no answer".to_string()))
            } else {
                Err("not running".to_string())
            };
            NodeReport {
                record: record.clone(),
                alive,
                status,
            }
        })
        .collect();
    let (agreement, compared_pairs) = agreement(&nodes);
    ClusterReport {
        f: state.f,
        nodes,
        agreement,
        compared_pairs,
    }
}

/// One node in `status --json`.
#[derive(Serialize)]
struct NodeJson<'a> {
    id: ReplicaId,
    address: String,
    alive: bool,
    behavior: Option<&'a str>,
    view: Option<u64>,
    last_executed: Option<u64>,
    stable_checkpoint: Option<u64>,
    state_digest: Option<String>,
    evidence_against: Option<Vec<ReplicaId>>,
    pid: Option<u32>,
    role: Option<&'static str>,
    view_active: Option<bool>,
    primary: Option<ReplicaId>,
    connected_peers: Option<Vec<ReplicaId>>,
    committed_requests: Option<u64>,
    pending_requests: Option<u64>,
    log: String,
    error: Option<&'a str>,
}

/// `status --json`.
#[derive(Serialize)]
struct ClusterJson<'a> {
    f: usize,
    nodes: Vec<NodeJson<'a>>,
    agree: bool,
    compared_pairs: usize,
    agreement: Agreement,
}

impl ClusterReport {
    /// The object `testnet status --json` prints, on one line: `f`, `nodes`, `agree`,
    /// `compared_pairs`, `agreement` (`"yes"`, `"no"` or `"unknown"`).
    pub fn to_json(&self, layout: &Layout) -> String {
        let nodes = self
            .nodes
            .iter()
            .map(|node| {
                let status = node.status.as_ref().ok();
                NodeJson {
                    id: node.record.id,
                    address: node.record.address.to_string(),
                    alive: node.alive,
                    behavior: node.record.behavior.as_deref(),
                    view: status.map(|s| s.view),
                    last_executed: status.map(|s| s.last_executed),
                    stable_checkpoint: status.map(|s| s.stable_checkpoint),
                    state_digest: status.map(|s| s.state_digest.to_hex()),
                    evidence_against: status.map(|s| s.evidence_against.clone()),
                    pid: node.record.pid,
                    role: status.map(|s| role(s, node.record.id)),
                    view_active: status.map(|s| s.view_active),
                    primary: status.map(|s| s.primary),
                    connected_peers: status.map(|s| s.connected_peers.clone()),
                    committed_requests: status.map(|s| s.committed_requests),
                    pending_requests: status.map(|s| s.pending_requests),
                    log: layout.show(&node.record.log),
                    error: node.status.as_ref().err().map(String::as_str),
                }
            })
            .collect();
        serde_json::to_string(&ClusterJson {
            f: self.f,
            nodes,
            agree: self.agreement == Agreement::Yes,
            compared_pairs: self.compared_pairs,
            agreement: self.agreement,
        })
        .expect("the report serializes")
    }

    /// The table `testnet status` prints.
    pub fn to_text(&self, layout: &Layout) -> String {
        let mut rows = vec![[
            "id",
            "pid",
            "alive",
            "behaviour",
            "role",
            "view",
            "executed",
            "stable",
            "state digest",
            "evidence against",
        ]
        .map(String::from)
        .to_vec()];
        for node in &self.nodes {
            let r = &node.record;
            let mut row = vec![
                r.id.to_string(),
                r.pid.map_or("-".into(), |p| p.to_string()),
                if node.alive { "yes" } else { "no" }.to_string(),
                r.behavior.clone().unwrap_or_else(|| "-".into()),
            ];
            match &node.status {
                Ok(s) => row.extend([
                    role(s, r.id).to_string(),
                    format!("{}{}", s.view, if s.view_active { "" } else { "*" }),
                    s.last_executed.to_string(),
                    s.stable_checkpoint.to_string(),
                    s.state_digest.to_hex()[..16].to_string(),
                    ids(&s.evidence_against),
                ]),
                Err(e) => row.extend(["-", "-", "-", "-", "-", e.as_str()].map(String::from)),
            }
            rows.push(row);
        }
        let mut out = format!(
            "testnet {}: f = {}, {} replicas (logs in {})\n",
            layout.shown.display(),
            self.f,
            self.nodes.len(),
            layout.show(std::path::Path::new("logs"))
        );
        out.push_str(&table(&rows));
        out.push_str(&format!(
            "agree: {} ({} pair{} of correct replicas at the same sequence number compared)\n",
            match self.agreement {
                Agreement::Yes => "yes",
                Agreement::No => "NO: correct replicas report different states",
                Agreement::Unknown => "unknown: no two correct replicas could be compared",
            },
            self.compared_pairs,
            if self.compared_pairs == 1 { "" } else { "s" }
        ));
        if self
            .nodes
            .iter()
            .any(|n| n.status.as_ref().is_ok_and(|s| !s.view_active))
        {
            out.push_str("* a view change is in progress at this replica\n");
        }
        out
    }
}

/// `primary` or `backup` in the view the replica is in.
pub fn role(status: &NodeStatus, id: ReplicaId) -> &'static str {
    if status.primary == id {
        "primary"
    } else {
        "backup"
    }
}

/// `0,3`, or `-` for none.
pub fn ids(ids: &[ReplicaId]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Runs `testnet status`: prints the report (as JSON if `json`) and returns the verdict.
pub async fn status(layout: &Layout, json: bool) -> Result<Agreement, LaunchError> {
    let state = State::load(layout)?;
    let any_alive = state.nodes.iter().any(|n| node_alive(layout, n));
    let report = if any_alive {
        let client = connect(layout, &state, Duration::from_secs(3)).await?;
        let report = query(&client, layout, &state, Duration::from_secs(2)).await;
        client.close().await;
        report
    } else {
        report(layout, &state, BTreeMap::new())
    };
    if json {
        println!("{}", report.to_json(layout));
    } else {
        print!("{}", report.to_text(layout));
    }
    Ok(report.agreement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{Digest, Domain};

    fn node(
        id: ReplicaId,
        behavior: Option<&str>,
        alive: bool,
        seq: u64,
        state: &[u8],
    ) -> NodeReport {
        NodeReport {
            record: NodeRecord {
                id,
                address: "127.0.0.1:1".parse().unwrap(),
                metrics: None,
                pid: Some(1),
                behavior: behavior.map(String::from),
                config: "node.toml".into(),
                log: "node.log".into(),
            },
            alive,
            status: Ok(NodeStatus {
                nonce: 0,
                replica: id,
                view: 0,
                view_active: true,
                primary: 0,
                last_executed: seq,
                stable_checkpoint: 0,
                state_digest: Digest::of(Domain::Content, state),
                connected_peers: Vec::new(),
                rejected: Vec::new(),
                evidence_against: Vec::new(),
                behavior: None,
                pending_requests: 0,
                committed_requests: 0,
            }),
        }
    }

    #[test]
    fn only_live_correct_replicas_at_the_same_sequence_number_are_compared() {
        let nodes = vec![
            node(0, Some("equivocate"), true, 5, b"lie"),
            node(1, None, true, 5, b"a"),
            node(2, None, true, 5, b"a"),
            node(3, None, true, 4, b"b"),
            node(4, None, false, 5, b"dead"),
        ];
        assert_eq!(agreement(&nodes), (Agreement::Yes, 1));
        let mut nodes = nodes;
        nodes.push(node(5, None, true, 4, b"c"));
        assert_eq!(agreement(&nodes), (Agreement::No, 2));
        assert_eq!(agreement(&[]), (Agreement::Unknown, 0));
    }
}

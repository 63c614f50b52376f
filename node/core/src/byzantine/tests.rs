use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pbft_crypto::{Digest, Domain};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::fixtures::{client_key, TestCluster};
use crate::messages::{
    Batch, ClientRequest, Limits, NewView, Outcome, Phase, Rejection, RequestEnvelope,
    RequestResult, Sender, Seq, Verified, View, ViewChange,
};
use crate::protocol::{Timer, TimerCommand};

type Cluster = TestCluster;

/// What these tests add to the shared fixtures.
trait Local {
    /// Passes `ready` through `behavior` as replica `id` would.
    fn run(
        &self,
        behavior: &mut dyn Behavior,
        id: ReplicaId,
        ready: Ready,
        rng: &mut ChaCha8Rng,
    ) -> FaultyOutput;
    /// What a correct replica's boundary says about `message` arriving from `from`.
    fn verify_from(
        &self,
        from: ReplicaId,
        message: &Message,
    ) -> Result<Verified<Message>, Rejection>;
    /// A view change into `new_view` from the initial state, carrying one prepared certificate.
    fn sample_view_change(&self, new_view: View, replica: ReplicaId) -> ViewChange;
    fn sample_new_view(&self, view: View) -> NewView;
    fn checkpoint_message(&self, seq: Seq) -> Message;
}

impl Local for TestCluster {
    fn run(
        &self,
        behavior: &mut dyn Behavior,
        id: ReplicaId,
        ready: Ready,
        rng: &mut ChaCha8Rng,
    ) -> FaultyOutput {
        let mut ctx = Context {
            id,
            key: self.key(id),
            committee: &self.committee,
            now: Duration::from_secs(1),
            rng,
        };
        behavior.transform(ready, &mut ctx)
    }

    fn verify_from(
        &self,
        from: ReplicaId,
        message: &Message,
    ) -> Result<Verified<Message>, Rejection> {
        self.verify(Sender::Replica(from), message.clone())
    }

    fn sample_view_change(&self, new_view: View, replica: ReplicaId) -> ViewChange {
        let cert = self.prepared(new_view - 1, 1, batch(self, 1).digest());
        self.view_change(replica, new_view, vec![cert])
    }

    fn sample_new_view(&self, view: View) -> NewView {
        let view_changes = (0..self.committee.quorum() as ReplicaId)
            .map(|i| self.sample_view_change(view, i))
            .collect();
        self.new_view(view, view_changes, &[(1, batch(self, 1).digest())])
    }

    fn checkpoint_message(&self, seq: Seq) -> Message {
        Message::Checkpoint(self.checkpoint(seq, 0))
    }
}

/// A batch of `n` one-request envelopes from different clients.
fn batch(cluster: &TestCluster, n: usize) -> Batch {
    Batch {
        envelopes: (0..n)
            .map(|i| {
                let request = ClientRequest {
                    timestamp: 1,
                    op: vec![i as u8; 8],
                };
                RequestEnvelope::new(&cluster.client(i), 1, vec![request])
            })
            .collect(),
    }
}

fn ready(messages: Vec<(Destination, Message)>) -> Ready {
    Ready {
        messages: messages
            .into_iter()
            .map(|(to, message)| Outgoing {
                to,
                message: Arc::new(message),
            })
            .collect(),
        ..Ready::default()
    }
}

fn broadcast(message: Message) -> (Destination, Message) {
    (Destination::AllReplicas, message)
}

fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Every (recipient, payload) pair, with broadcasts expanded to each peer of `from`.
fn deliveries(
    out: &FaultyOutput,
    from: ReplicaId,
    committee: &Committee,
) -> Vec<(ReplicaId, Payload)> {
    let mut result = Vec::new();
    for send in &out.sends {
        let recipients: Vec<ReplicaId> = match send.to {
            Destination::AllReplicas => committee.ids().filter(|&i| i != from).collect(),
            Destination::Replica(id) => vec![id],
        };
        for to in recipients {
            result.push((to, send.payload.clone()));
        }
    }
    result
}

fn message_of(payload: &Payload) -> &Message {
    match payload {
        Payload::Message(message) => message,
        Payload::Garbage(_) => panic!("expected a message, got garbage"),
    }
}

/// The pre-prepares delivered, as digest -> recipients, each checked at a correct boundary.
fn pre_prepares_by_digest(
    cluster: &Cluster,
    out: &FaultyOutput,
    primary: ReplicaId,
) -> BTreeMap<Digest, BTreeSet<ReplicaId>> {
    let mut groups: BTreeMap<Digest, BTreeSet<ReplicaId>> = BTreeMap::new();
    for (to, payload) in deliveries(out, primary, &cluster.committee) {
        let message = message_of(&payload);
        if let Message::PrePrepare { header, batch } = message {
            let key = cluster.committee.key(primary).unwrap();
            key.verify(
                cluster.committee.cluster_id(),
                Domain::PrePrepare,
                &header.signing_digest(),
                &header.signature,
            )
            .expect("both pre-prepares are validly signed by the primary");
            assert_eq!(batch.digest(), header.digest, "batch matches its header");
            cluster
                .verify_from(primary, message)
                .expect("a correct replica accepts either");
            assert!(
                groups.values().all(|g| !g.contains(&to)),
                "replica {to} got two pre-prepares"
            );
            groups.entry(header.digest).or_default().insert(to);
        }
    }
    groups
}

#[test]
fn honest_passes_everything_through_in_order() {
    let cluster = Cluster::new(1);
    let mut input = ready(vec![
        broadcast(cluster.commit(0, 1, batch(&cluster, 1).digest(), 2)),
        (
            Destination::Replica(0),
            Message::FetchState {
                seq: 128,
                replica: 2,
            },
        ),
    ]);
    input
        .persist
        .push(Durable::Checkpoint(cluster.checkpoint(128, 2)));
    input.timers.push(TimerCommand::Cancel(Timer::Retransmit));
    let expected: Vec<Arc<Message>> = input.messages.iter().map(|o| o.message.clone()).collect();
    let out = honest(input);
    assert_eq!(out.persist.len(), 1);
    assert_eq!(out.timers, vec![TimerCommand::Cancel(Timer::Retransmit)]);
    assert_eq!(out.sends.len(), 2);
    assert_eq!(out.sends[1].to, Destination::Replica(0));
    for (send, message) in out.sends.iter().zip(&expected) {
        assert!(Arc::ptr_eq(
            match &send.payload {
                Payload::Message(m) => m,
                Payload::Garbage(_) => panic!("garbage"),
            },
            message
        ));
    }
}

#[test]
fn silent_sends_and_replies_nothing_but_keeps_persisting() {
    let cluster = Cluster::new(1);
    let header = cluster.header(0, 1, batch(&cluster, 2).digest());
    let mut input = ready(vec![
        broadcast(cluster.pre_prepare(0, 1, batch(&cluster, 2))),
        broadcast(Message::Checkpoint(cluster.checkpoint(128, 0))),
    ]);
    input.persist.push(Durable::Vote(header.clone()));
    input.replies.push(Reply {
        view: 0,
        replica: 0,
        client: client_key(0).public(),
        session: 1,
        read_only: false,
        results: vec![RequestResult {
            timestamp: 1,
            outcome: Outcome::Done(b"ok".to_vec()),
        }],
    });
    let at = Duration::from_secs(3);
    input.timers.push(TimerCommand::Set {
        timer: Timer::ViewChange,
        at,
    });
    let out = cluster.run(&mut Silent, 0, input, &mut seeded(1));
    assert!(out.sends.is_empty());
    assert!(out.replies.is_empty());
    assert_eq!(out.persist, vec![Durable::Vote(header)]);
    assert_eq!(
        out.timers,
        vec![TimerCommand::Set {
            timer: Timer::ViewChange,
            at
        }]
    );
}

fn check_primary_equivocation(f: usize, mode: EquivocationMode) {
    let cluster = Cluster::new(f);
    let n = cluster.committee.n() as ReplicaId;
    // A view whose primary is not replica 0, so "the backups" really excludes the primary.
    let view = n as View + 1;
    let primary = cluster.primary(view);
    assert_eq!(primary, 1);
    let real = batch(&cluster, 3);
    let seq = 7;
    let mut behavior = EquivocatingPrimary::new(mode);
    let mut input = ready(vec![broadcast(cluster.pre_prepare(
        view,
        seq,
        real.clone(),
    ))]);
    input
        .persist
        .push(Durable::Vote(cluster.header(view, seq, real.digest())));
    let out = cluster.run(&mut behavior, primary, input, &mut seeded(2));
    assert_eq!(
        out.persist.len(),
        1,
        "its own pre-prepare is still persisted"
    );

    let groups = pre_prepares_by_digest(&cluster, &out, primary);
    assert_eq!(groups.len(), 2, "two conflicting digests");
    let original = groups[&real.digest()].clone();
    let (&other_digest, conflicting) = groups.iter().find(|(d, _)| **d != real.digest()).unwrap();
    let backups: BTreeSet<ReplicaId> = (0..n).filter(|&i| i != primary).collect();
    assert!(original.is_disjoint(conflicting));
    assert_eq!(
        &original | conflicting,
        backups,
        "every backup gets exactly one"
    );
    let expected_conflicting = match mode {
        EquivocationMode::Split => (3 * f).div_ceil(2),
        EquivocationMode::Minority => f,
    };
    assert_eq!(conflicting.len(), expected_conflicting);
    assert_eq!(original.len(), 3 * f - expected_conflicting);
    let highest: BTreeSet<ReplicaId> = backups
        .iter()
        .rev()
        .take(expected_conflicting)
        .copied()
        .collect();
    assert_eq!(
        conflicting, &highest,
        "the conflicting group is the highest ids"
    );
    let reversed = Batch {
        envelopes: real.envelopes.iter().rev().cloned().collect(),
    };
    assert_eq!(other_digest, reversed.digest());

    // A retransmission to one backup repeats what that backup saw.
    let target = *conflicting.iter().next().unwrap();
    let again = ready(vec![(
        Destination::Replica(target),
        cluster.pre_prepare(view, seq, real.clone()),
    )]);
    let out = cluster.run(&mut behavior, primary, again, &mut seeded(3));
    let groups = pre_prepares_by_digest(&cluster, &out, primary);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[&other_digest], BTreeSet::from([target]));

    // Its own commit for the equivocated slot is withheld only when splitting.
    let commits = ready(vec![
        broadcast(cluster.commit(view, seq, real.digest(), primary)),
        broadcast(cluster.commit(view, seq + 1, real.digest(), primary)),
    ]);
    let out = cluster.run(&mut behavior, primary, commits, &mut seeded(4));
    let committed: Vec<Seq> = out
        .sends
        .iter()
        .map(|s| match message_of(&s.payload) {
            Message::Commit(vote) => vote.seq,
            other => panic!("unexpected {}", other.kind()),
        })
        .collect();
    match mode {
        EquivocationMode::Split => assert_eq!(committed, vec![seq + 1]),
        EquivocationMode::Minority => assert_eq!(committed, vec![seq, seq + 1]),
    }
}

#[test]
fn split_equivocation_gives_halves_conflicting_pre_prepares_and_withholds_commits() {
    for f in 1..=3 {
        check_primary_equivocation(f, EquivocationMode::Split);
    }
}

#[test]
fn minority_equivocation_misleads_exactly_f_backups() {
    for f in 1..=3 {
        check_primary_equivocation(f, EquivocationMode::Minority);
    }
}

#[test]
fn equivocating_primary_conflicts_a_single_request_with_the_null_batch() {
    let cluster = Cluster::new(1);
    let mut behavior = EquivocatingPrimary::new(EquivocationMode::Split);
    let input = ready(vec![broadcast(cluster.pre_prepare(
        0,
        1,
        batch(&cluster, 1),
    ))]);
    let out = cluster.run(&mut behavior, 0, input, &mut seeded(5));
    let groups = pre_prepares_by_digest(&cluster, &out, 0);
    assert_eq!(groups.len(), 2);
    assert!(groups.contains_key(&Batch::null().digest()));
}

#[test]
fn equivocating_primary_is_honest_as_a_backup() {
    let cluster = Cluster::new(1);
    let digest = batch(&cluster, 2).digest();
    let mut behavior = EquivocatingPrimary::new(EquivocationMode::Split);
    let input = ready(vec![
        broadcast(cluster.prepare(0, 1, digest, 2)),
        broadcast(cluster.commit(0, 1, digest, 2)),
        // A pre-prepare of the real primary that this backup passes on.
        (
            Destination::Replica(3),
            cluster.pre_prepare(0, 1, batch(&cluster, 2)),
        ),
    ]);
    let expected: Vec<Arc<Message>> = input.messages.iter().map(|o| o.message.clone()).collect();
    let tos: Vec<Destination> = input.messages.iter().map(|o| o.to).collect();
    let out = cluster.run(&mut behavior, 2, input, &mut seeded(6));
    assert_eq!(out.sends.len(), 3);
    for ((send, message), to) in out.sends.iter().zip(&expected).zip(&tos) {
        assert_eq!(send.to, *to);
        assert!(matches!(&send.payload, Payload::Message(m) if Arc::ptr_eq(m, message)));
    }
}

#[test]
fn equivocating_backup_sends_conflicting_votes_to_two_halves() {
    for f in 1..=2 {
        let cluster = Cluster::new(f);
        let id = 2;
        let digest = batch(&cluster, 2).digest();
        let checkpoint = Message::Checkpoint(cluster.checkpoint(128, id));
        let input = ready(vec![
            broadcast(cluster.prepare(0, 1, digest, id)),
            broadcast(cluster.commit(0, 1, digest, id)),
            broadcast(checkpoint.clone()),
        ]);
        let out = cluster.run(&mut EquivocatingBackup, id, input, &mut seeded(7));
        let peers: BTreeSet<ReplicaId> = cluster.committee.ids().filter(|&i| i != id).collect();
        for phase in [Phase::Prepare, Phase::Commit] {
            let mut groups: BTreeMap<Digest, BTreeSet<ReplicaId>> = BTreeMap::new();
            for (to, payload) in deliveries(&out, id, &cluster.committee) {
                let message = message_of(&payload);
                let vote = match message {
                    Message::Prepare { vote, .. } | Message::Commit(vote) => vote,
                    _ => continue,
                };
                if vote.phase != phase {
                    continue;
                }
                let verdict = cluster.verify_from(id, message);
                if vote.digest == digest {
                    verdict.expect("the real vote is valid");
                } else if phase == Phase::Prepare {
                    assert!(
                        matches!(verdict, Err(Rejection::Malformed(_))),
                        "{verdict:?}"
                    );
                } else {
                    verdict.expect("a conflicting commit is validly signed");
                }
                assert!(groups.entry(vote.digest).or_default().insert(to));
            }
            assert_eq!(groups.len(), 2, "{phase:?}: two digests");
            let halves: Vec<&BTreeSet<ReplicaId>> = groups.values().collect();
            assert!(halves[0].is_disjoint(halves[1]));
            assert_eq!(halves[0] | halves[1], peers);
            assert_eq!(groups[&digest].len(), peers.len().div_ceil(2));
        }
        let checkpoints = deliveries(&out, id, &cluster.committee)
            .into_iter()
            .filter(|(_, p)| matches!(message_of(p), Message::Checkpoint(_)))
            .count();
        assert_eq!(checkpoints, peers.len(), "other messages pass unchanged");
    }
}

/// One valid message of every kind, sent by replica 1 (the primary of view 1).
fn every_kind(cluster: &Cluster) -> Vec<(Destination, Message)> {
    let id = 1;
    let digest = batch(cluster, 2).digest();
    let envelope = RequestEnvelope::new(
        &cluster.client(9),
        1,
        vec![ClientRequest {
            timestamp: 5,
            op: b"op".to_vec(),
        }],
    );
    vec![
        (Destination::Replica(3), Message::Request(envelope)),
        broadcast(cluster.pre_prepare(1, 3, batch(cluster, 2))),
        broadcast(cluster.prepare(0, 2, digest, id)),
        broadcast(cluster.commit(0, 2, digest, id)),
        broadcast(Message::Checkpoint(cluster.checkpoint(128, id))),
        broadcast(Message::ViewChange(cluster.sample_view_change(1, id))),
        broadcast(Message::NewView(cluster.sample_new_view(1))),
        broadcast(Message::FetchBatch {
            seq: 2,
            digest,
            replica: id,
        }),
        (
            Destination::Replica(3),
            Message::FetchState {
                seq: 128,
                replica: id,
            },
        ),
        (
            Destination::Replica(3),
            Message::BatchData {
                seq: 2,
                batch: batch(cluster, 2),
            },
        ),
        broadcast(Message::Status {
            replica: id,
            view: 1,
            last_executed: 2,
            fingerprint: *cluster.committee.fingerprint(),
        }),
        (
            Destination::Replica(3),
            Message::Committed {
                batch: batch(cluster, 2),
                commits: (0..3)
                    .map(|i| cluster.vote(Phase::Commit, 0, 2, digest, i))
                    .collect(),
            },
        ),
        (
            Destination::Replica(3),
            cluster.manifest(128, vec![Digest::of(Domain::Content, &[1, 2, 3])]),
        ),
        (
            Destination::Replica(3),
            Message::FetchStateChunk {
                seq: 128,
                partition: 0,
                piece: 0,
                replica: id,
            },
        ),
        (
            Destination::Replica(3),
            Message::StateChunk {
                seq: 128,
                replica: id,
                partition: 0,
                piece: 0,
                len: 3,
                data: vec![1, 2, 3],
            },
        ),
    ]
}

fn is_signed(message: &Message) -> bool {
    !matches!(
        message,
        Message::FetchBatch { .. }
            | Message::FetchState { .. }
            | Message::BatchData { .. }
            | Message::StateManifest { .. }
            | Message::FetchStateChunk { .. }
            | Message::StateChunk { .. }
            | Message::Status { .. }
    )
}

#[test]
fn forged_signatures_are_rejected_at_the_boundary() {
    let cluster = Cluster::new(1);
    let id = 1;
    let messages = every_kind(&cluster);
    for (_, message) in &messages {
        cluster
            .verify_from(id, message)
            .unwrap_or_else(|e| panic!("{} invalid: {e}", message.kind()));
    }
    for seed in 0..16 {
        let out = cluster.run(
            &mut ForgedSignatures,
            id,
            ready(messages.clone()),
            &mut seeded(seed),
        );
        assert_eq!(out.sends.len(), messages.len());
        for (send, (to, original)) in out.sends.iter().zip(&messages) {
            assert_eq!(send.to, *to);
            let sent = message_of(&send.payload);
            if is_signed(original) {
                assert_eq!(
                    cluster.verify_from(id, sent).unwrap_err(),
                    Rejection::BadSignature,
                    "{}",
                    sent.kind()
                );
            } else {
                assert_eq!(sent, original, "{} passes unchanged", sent.kind());
            }
        }
    }
}

#[test]
fn replay_resends_recent_old_messages_to_peers() {
    let cluster = Cluster::new(1);
    let id = 2;
    let digest = batch(&cluster, 1).digest();
    let run = |seed: u64| {
        let mut behavior = Replay::default();
        let mut rng = seeded(seed);
        let mut replayed = Vec::new();
        for step in 1..=600 {
            let input = ready(vec![broadcast(cluster.commit(0, step, digest, id))]);
            let out = cluster.run(&mut behavior, id, input, &mut rng);
            assert!(behavior.remembered() <= replay::REPLAY_WINDOW);
            assert_eq!(out.sends[0].to, Destination::AllReplicas);
            assert!(
                matches!(message_of(&out.sends[0].payload), Message::Commit(v) if v.seq == step)
            );
            for send in &out.sends[1..] {
                let Destination::Replica(to) = send.to else {
                    panic!("replays go to one replica")
                };
                assert!(to != id && (to as usize) < cluster.committee.n());
                let Message::Commit(vote) = message_of(&send.payload) else {
                    panic!("not a sent message")
                };
                assert!(vote.seq < step, "a replay is of an earlier step");
                assert!(
                    step - vote.seq <= replay::REPLAY_WINDOW as u64,
                    "a replay is recent"
                );
                cluster
                    .verify_from(id, message_of(&send.payload))
                    .expect("a replay is a valid old message");
                replayed.push((step, to, vote.seq));
            }
        }
        replayed
    };
    let first = run(8);
    assert!(
        first.len() > 300,
        "about 1.5 replays per step, got {}",
        first.len()
    );
    assert_eq!(first, run(8), "replays are a function of the seed");
    assert_ne!(first, run(9));
}

#[test]
fn stale_view_adds_votes_for_the_previous_view() {
    let cluster = Cluster::new(1);
    let view = 5;
    let primary = cluster.primary(view);
    let digest = batch(&cluster, 2).digest();
    let mut behavior = StaleView::default();

    let out = cluster.run(
        &mut behavior,
        primary,
        ready(vec![broadcast(cluster.pre_prepare(
            view,
            1,
            batch(&cluster, 2),
        ))]),
        &mut seeded(1),
    );
    assert_eq!(out.sends.len(), 2);
    cluster
        .verify_from(primary, message_of(&out.sends[0].payload))
        .unwrap();
    let stale = message_of(&out.sends[1].payload);
    assert!(matches!(stale, Message::PrePrepare { header, .. } if header.view == view - 1));
    assert_eq!(
        cluster.verify_from(primary, stale).unwrap_err(),
        Rejection::NotFromPrimary
    );

    let backup = 2;
    let input = ready(vec![
        broadcast(cluster.prepare(view, 1, digest, backup)),
        broadcast(cluster.commit(view, 1, digest, backup)),
    ]);
    let out = cluster.run(&mut behavior, backup, input, &mut seeded(2));
    assert_eq!(out.sends.len(), 4);
    let stale_prepare = message_of(&out.sends[1].payload);
    assert!(matches!(stale_prepare, Message::Prepare { vote, .. } if vote.view == view - 1));
    assert_eq!(
        cluster.verify_from(backup, stale_prepare).unwrap_err(),
        Rejection::BadSignature
    );
    let stale_commit = message_of(&out.sends[3].payload);
    assert_eq!(stale_commit, &cluster.commit(view - 1, 1, digest, backup));
    cluster
        .verify_from(backup, stale_commit)
        .expect("a stale commit is validly signed");

    let out = cluster.run(
        &mut behavior,
        backup,
        ready(vec![broadcast(cluster.commit(0, 1, digest, backup))]),
        &mut seeded(3),
    );
    assert_eq!(out.sends.len(), 1, "nothing older than view 0");
}

#[test]
fn stale_view_resends_its_older_checkpoints() {
    let cluster = Cluster::new(1);
    let id = 3;
    let mut behavior = StaleView::default();
    let mut rng = seeded(4);
    let mut sent_checkpoints = |seq: Seq| -> Vec<Seq> {
        let input = ready(vec![broadcast(Message::Checkpoint(
            cluster.checkpoint(seq, id),
        ))]);
        let out = cluster.run(&mut behavior, id, input, &mut rng);
        out.sends
            .iter()
            .map(|s| {
                assert_eq!(s.to, Destination::AllReplicas);
                let message = message_of(&s.payload);
                cluster.verify_from(id, message).unwrap();
                match message {
                    Message::Checkpoint(c) => c.seq,
                    other => panic!("unexpected {}", other.kind()),
                }
            })
            .collect()
    };
    assert_eq!(sent_checkpoints(128), vec![128]);
    assert_eq!(sent_checkpoints(256), vec![256, 128]);
    assert_eq!(
        sent_checkpoints(256),
        vec![256, 128],
        "a retransmission is not recorded twice"
    );
    for k in 3..=8 {
        sent_checkpoints(128 * k);
    }
    assert_eq!(
        sent_checkpoints(128 * 9),
        vec![1152, 640, 768, 896, 1024],
        "a bounded history"
    );
}

#[test]
fn corrupt_sends_only_what_a_correct_replica_rejects() {
    let cluster = Cluster::new(1);
    let id = 1;
    let mut rng = seeded(10);
    let mut labels: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut garbage = 0;
    for _ in 0..100 {
        let mut input = ready(every_kind(&cluster));
        input.replies.push(Reply {
            view: 1,
            replica: id,
            client: client_key(0).public(),
            session: 1,
            read_only: false,
            results: vec![RequestResult {
                timestamp: 1,
                outcome: Outcome::Done(b"the real result".to_vec()),
            }],
        });
        let expected = input.messages.len();
        let out = cluster.run(&mut Corrupt, id, input, &mut rng);
        assert_eq!(
            out.sends.len(),
            expected,
            "one broken message for each real one"
        );
        assert_ne!(
            out.replies[0].results[0].outcome,
            Outcome::Done(b"the real result".to_vec())
        );
        for send in &out.sends {
            match &send.payload {
                Payload::Garbage(bytes) => {
                    garbage += 1;
                    assert!(bytes.len() < corrupt::MAX_GARBAGE_BYTES);
                    if let Ok(message) = Message::decode(bytes, &Limits::default()) {
                        assert!(cluster.verify_from(id, &message).is_err());
                    }
                }
                Payload::Message(message) => {
                    let rejection = cluster.verify_from(id, message).expect_err(message.kind());
                    *labels.entry(rejection.label()).or_default() += 1;
                }
            }
        }
    }
    assert!(garbage > 0);
    for label in ["bad_signature", "digest_mismatch", "malformed"] {
        assert!(
            labels.get(label).copied().unwrap_or(0) > 0,
            "no {label} in {labels:?}"
        );
    }
}

#[test]
fn every_behavior_keeps_persistence_and_timers_and_sends_only_to_peers() {
    for f in 1..=2 {
        let cluster = Cluster::new(f);
        for kind in BehaviorKind::ALL {
            for id in [0, 1, 2] {
                let run = |seed: u64| {
                    let mut behavior = kind.build();
                    assert_eq!(behavior.name(), kind.name());
                    let mut rng = seeded(seed);
                    let mut log = Vec::new();
                    for _ in 0..3 {
                        let mut input = ready(every_kind(&cluster));
                        let header = cluster.header(1, 3, batch(&cluster, 2).digest());
                        input.persist.push(Durable::Vote(header.clone()));
                        input.timers.push(TimerCommand::Cancel(Timer::ViewChange));
                        let out = cluster.run(behavior.as_mut(), id, input, &mut rng);
                        assert_eq!(out.persist, vec![Durable::Vote(header)], "{kind}");
                        assert_eq!(
                            out.timers,
                            vec![TimerCommand::Cancel(Timer::ViewChange)],
                            "{kind}"
                        );
                        for (to, payload) in deliveries(&out, id, &cluster.committee) {
                            assert!(
                                to != id && (to as usize) < cluster.committee.n(),
                                "{kind} sent to {to}"
                            );
                            log.push(format!("{to} {payload:?}"));
                        }
                    }
                    log
                };
                assert_eq!(run(11), run(11), "{kind} is a function of its seed");
            }
        }
    }
}

#[test]
fn behavior_names_parse_back() {
    let mut names = BTreeSet::new();
    for kind in BehaviorKind::ALL {
        assert_eq!(kind.to_string().parse::<BehaviorKind>(), Ok(kind));
        assert_eq!(kind.build().name(), kind.name());
        assert!(names.insert(kind.name()), "duplicate name {kind}");
    }
    assert_eq!(
        "equivocate-split".parse::<BehaviorKind>(),
        Ok(BehaviorKind::Equivocate)
    );
    let unknown = "equivocating".parse::<BehaviorKind>().unwrap_err();
    assert_eq!(unknown, UnknownBehavior("equivocating".to_string()));
    assert!(unknown.to_string().contains("slow"), "{unknown}");
}

#[test]
fn equivocator_equivocates_as_primary_and_as_backup() {
    for mode in [EquivocationMode::Split, EquivocationMode::Minority] {
        let cluster = Cluster::new(1);
        let mut behavior = Equivocator::new(mode);
        // As the primary of view 0: conflicting pre-prepares.
        let input = ready(vec![broadcast(cluster.pre_prepare(
            0,
            1,
            batch(&cluster, 2),
        ))]);
        let out = cluster.run(&mut behavior, 0, input, &mut seeded(8));
        let groups = pre_prepares_by_digest(&cluster, &out, 0);
        assert_eq!(groups.len(), 2, "{mode:?}");
        // Its own commit in the view it leads: withheld when splitting, honest in minority
        // mode, so that the majority can commit.
        let input = ready(vec![broadcast(cluster.commit(
            0,
            1,
            batch(&cluster, 2).digest(),
            0,
        ))]);
        let out = cluster.run(&mut behavior, 0, input, &mut seeded(9));
        let commits = deliveries(&out, 0, &cluster.committee);
        match mode {
            EquivocationMode::Split => assert!(commits.is_empty()),
            EquivocationMode::Minority => {
                assert_eq!(commits.len(), 3);
                let digests: BTreeSet<Digest> = commits
                    .iter()
                    .map(|(_, p)| match message_of(p) {
                        Message::Commit(vote) => vote.digest,
                        other => panic!("unexpected {}", other.kind()),
                    })
                    .collect();
                assert_eq!(digests.len(), 1, "one digest to everyone");
            }
        }
        // As a backup of view 1: conflicting prepares and commits.
        let digest = batch(&cluster, 2).digest();
        let input = ready(vec![
            broadcast(cluster.prepare(1, 1, digest, 0)),
            broadcast(cluster.commit(1, 1, digest, 0)),
        ]);
        let out = cluster.run(&mut behavior, 0, input, &mut seeded(10));
        let digests: BTreeSet<Digest> = deliveries(&out, 0, &cluster.committee)
            .iter()
            .filter_map(|(_, p)| match message_of(p) {
                Message::Commit(vote) => Some(vote.digest),
                _ => None,
            })
            .collect();
        assert_eq!(
            digests.len(),
            2,
            "{mode:?}: conflicting commits as a backup"
        );
    }
}

#[test]
fn slow_primary_holds_pre_prepares_until_due_then_stalls_past_the_timeout() {
    let cluster = Cluster::new(1);
    let timeout = Duration::from_secs(1);
    let mut behavior = BehaviorKind::Slow.build_with(&crate::protocol::ProtocolConfig {
        view_change_timeout: timeout,
        ..crate::protocol::ProtocolConfig::default()
    });
    let mut rng = seeded(11);
    let mut run = |behavior: &mut Box<dyn Behavior>, now: Duration, ready: Ready| {
        let mut ctx = Context {
            id: 0,
            key: &cluster.keys[0],
            committee: &cluster.committee,
            now,
            rng: &mut rng,
        };
        behavior.transform(ready, &mut ctx)
    };
    let start = Duration::from_secs(10);
    let gentle = timeout * 4 / 5;
    assert_eq!(behavior.next_wakeup(), None);
    for seq in 1..=slow::GENTLE_BATCHES {
        let input = ready(vec![
            broadcast(cluster.pre_prepare(0, seq, batch(&cluster, 1))),
            broadcast(cluster.checkpoint_message(seq)),
        ]);
        let out = run(&mut behavior, start, input);
        assert_eq!(out.sends.len(), 1, "only the checkpoint leaves at once");
    }
    // A retransmission is held until the same moment, not added.
    let again = ready(vec![broadcast(cluster.pre_prepare(
        0,
        1,
        batch(&cluster, 1),
    ))]);
    assert!(run(&mut behavior, start + gentle / 2, again)
        .sends
        .is_empty());
    assert_eq!(behavior.next_wakeup(), Some(start + gentle));
    assert!(behavior.poll_delayed(start + gentle / 2).is_empty());
    let released = behavior.poll_delayed(start + gentle);
    assert_eq!(released.len() as u64, slow::GENTLE_BATCHES);
    assert_eq!(behavior.next_wakeup(), None);

    // Past the gentle batches, the delay exceeds the timeout.
    let seq = slow::GENTLE_BATCHES + 1;
    let input = ready(vec![broadcast(cluster.pre_prepare(
        0,
        seq,
        batch(&cluster, 1),
    ))]);
    assert!(run(&mut behavior, start, input).sends.is_empty());
    let due = behavior.next_wakeup().unwrap();
    assert_eq!(due, start + timeout * slow::STALL_FACTOR);
    assert!(due > start + timeout);
    assert_eq!(behavior.poll_delayed(due).len(), 1);

    // Pre-prepares of a view it does not lead, and its votes, pass at once.
    let input = ready(vec![
        (
            Destination::Replica(2),
            cluster.pre_prepare(1, 1, batch(&cluster, 1)),
        ),
        broadcast(cluster.prepare(1, 1, batch(&cluster, 1).digest(), 0)),
    ]);
    assert_eq!(run(&mut behavior, start, input).sends.len(), 2);
    assert_eq!(behavior.next_wakeup(), None);
}

/// Feeds everything `kind` makes of `input` (as replica `faulty`) to a fresh correct replica 2,
/// keeping only what passes its boundary, and returns that replica afterwards.
fn crafted_into_a_correct_replica(
    cluster: &Cluster,
    kind: BehaviorKind,
    faulty: ReplicaId,
    input: Vec<(Destination, Message)>,
) -> (crate::protocol::Replica, usize) {
    let mut behavior = kind.build();
    let mut rng = seeded(5);
    let out = cluster.run(behavior.as_mut(), faulty, ready(input), &mut rng);
    let mut correct = cluster.replica(2);
    let mut accepted = 0;
    for (to, payload) in deliveries(&out, faulty, &cluster.committee) {
        if to != 2 {
            continue;
        }
        if let Ok(verified) = cluster.verify_from(faulty, message_of(&payload)) {
            accepted += 1;
            correct.handle_message(Duration::from_secs(1), verified);
            correct.poll_ready();
        }
    }
    (correct, accepted)
}

#[test]
fn crafted_messages_move_no_correct_replica_and_accuse_nobody() {
    let cluster = Cluster::new(1);
    let digest = batch(&cluster, 1).digest();
    let cases = [
        (
            BehaviorKind::FarFuture,
            vec![
                broadcast(cluster.commit(0, 1, digest, 1)),
                broadcast(Message::ViewChange(cluster.sample_view_change(1, 1))),
            ],
        ),
        (
            BehaviorKind::WrongNewView,
            vec![broadcast(Message::NewView(cluster.sample_new_view(1)))],
        ),
        (
            BehaviorKind::Unsolicited,
            vec![broadcast(cluster.commit(0, 1, digest, 1))],
        ),
        (
            BehaviorKind::SelectiveViewChange,
            vec![broadcast(Message::ViewChange(
                cluster.sample_view_change(1, 1),
            ))],
        ),
    ];
    for (kind, input) in cases {
        let (correct, accepted) = crafted_into_a_correct_replica(&cluster, kind, 1, input);
        assert!(
            accepted > 0 || kind == BehaviorKind::SelectiveViewChange,
            "{kind}: nothing valid reached the replica"
        );
        assert_eq!(correct.view(), 0, "{kind} moved a correct replica's view");
        assert_eq!(
            correct.last_executed(),
            0,
            "{kind} made a correct replica execute"
        );
        assert!(
            correct.halted().is_none(),
            "{kind} halted a correct replica"
        );
        assert!(
            correct.evidence().keys().all(|&accused| accused == 1),
            "{kind}: a correct replica accused another correct one: {:?}",
            correct.evidence().keys()
        );
    }
}

#[test]
fn far_future_claims_reach_beyond_every_window_and_view() {
    let cluster = Cluster::new(1);
    let mut behavior = BehaviorKind::FarFuture.build();
    let mut rng = seeded(3);
    let input = ready(vec![
        broadcast(cluster.commit(2, 5, batch(&cluster, 1).digest(), 1)),
        broadcast(Message::ViewChange(cluster.sample_view_change(3, 1))),
    ]);
    let out = cluster.run(behavior.as_mut(), 1, input, &mut rng);
    let mut seqs = BTreeSet::new();
    let mut views = BTreeSet::new();
    for send in &out.sends {
        match message_of(&send.payload) {
            Message::Commit(vote) => {
                seqs.insert(vote.seq);
                views.insert(vote.view);
            }
            Message::ViewChange(view_change) => {
                views.insert(view_change.new_view);
            }
            _ => {}
        }
    }
    assert!(
        seqs.contains(&Seq::MAX) && seqs.contains(&(5 + (1 << 32))),
        "{seqs:?}"
    );
    assert!(
        views.contains(&View::MAX) && views.contains(&(3 + (1 << 20))),
        "{views:?}"
    );
}

#[test]
fn selective_view_change_reaches_only_f_peers() {
    let cluster = Cluster::new(2);
    let mut behavior = BehaviorKind::SelectiveViewChange.build();
    let mut rng = seeded(9);
    let input = ready(vec![broadcast(Message::ViewChange(
        cluster.sample_view_change(1, 3),
    ))]);
    let out = cluster.run(behavior.as_mut(), 3, input, &mut rng);
    let recipients: BTreeSet<ReplicaId> = deliveries(&out, 3, &cluster.committee)
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(recipients.len(), cluster.f(), "{recipients:?}");
    assert!(!recipients.contains(&3));
}

//! A replica that lost its durable state rejoins silent: it signs nothing until a checkpoint
//! above everything it could have signed before is stable, then takes part again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::app::{KvOp, KvStore};
use pbft_core::fixtures::{client_key, TestCluster};
use pbft_core::messages::{ClientRequest, Message, ReplicaId, RequestEnvelope, Sender};
use pbft_core::protocol::{
    signed_statements, Destination, Durable, ProtocolConfig, Rejoin, Replica, Timer,
};

const N: usize = 4;
const WIPED: ReplicaId = 3;

/// Four replicas passing messages in order, with a clock advanced by hand.
struct Cluster {
    c: TestCluster,
    config: ProtocolConfig,
    replicas: Vec<Replica>,
    /// What the wiped replica persisted since it came back.
    disk: Vec<Durable>,
    now: Duration,
    timestamp: u64,
    /// Every message the wiped replica sent, with whether it was silent when it sent it.
    sent_by_wiped: Vec<(Arc<Message>, bool)>,
}

impl Cluster {
    fn new() -> Cluster {
        let c = TestCluster::new(1);
        let config = ProtocolConfig {
            checkpoint_interval: 2,
            log_window: 4,
            view_change_timeout: Duration::from_secs(3600),
            max_view_change_timeout: Duration::from_secs(3600),
            ..ProtocolConfig::default()
        }
        .checked()
        .unwrap();
        let replicas = (0..N as ReplicaId)
            .map(|id| {
                let mut replica = Replica::new(
                    id,
                    c.committee.clone(),
                    config.clone(),
                    c.key(id).key_pair().clone(),
                    Box::new(KvStore::new()),
                )
                .unwrap();
                replica.start(Duration::ZERO);
                replica
            })
            .collect();
        Cluster {
            c,
            config,
            replicas,
            disk: Vec::new(),
            now: Duration::ZERO,
            timestamp: 0,
            sent_by_wiped: Vec::new(),
        }
    }

    /// Replaces the wiped replica with one rebuilt from `records`.
    fn restart_wiped(&mut self, records: Vec<Durable>) {
        let (mut replica, _) = Replica::recover(
            WIPED,
            self.c.committee.clone(),
            self.config.clone(),
            self.c.key(WIPED).key_pair().clone(),
            Box::new(KvStore::new()),
            records,
        )
        .unwrap();
        replica.start(self.now);
        self.replicas[WIPED as usize] = replica;
    }

    /// Delivers everything in flight until the cluster is quiet.
    fn pump(&mut self) {
        let mut queue: VecDeque<(ReplicaId, ReplicaId, Arc<Message>)> = VecDeque::new();
        loop {
            for from in 0..N as ReplicaId {
                let ready = self.replicas[from as usize].poll_ready();
                if from == WIPED {
                    self.disk.extend(ready.persist.iter().cloned());
                }
                let silent = self.replicas[from as usize].status().silent;
                for out in ready.messages {
                    if from == WIPED {
                        self.sent_by_wiped.push((out.message.clone(), silent));
                    }
                    let to: Vec<ReplicaId> = match out.to {
                        Destination::AllReplicas => {
                            (0..N as ReplicaId).filter(|&r| r != from).collect()
                        }
                        Destination::Replica(r) => vec![r],
                    };
                    for r in to {
                        queue.push_back((from, r, out.message.clone()));
                    }
                }
            }
            let Some((from, to, message)) = queue.pop_front() else {
                return;
            };
            let verified = self
                .c
                .verify(Sender::Replica(from), (*message).clone())
                .expect("correct replicas send valid messages");
            self.replicas[to as usize].handle_message(self.now, verified);
        }
    }

    /// One retransmission interval passes.
    fn tick(&mut self) {
        self.now += self.config.retransmit_interval;
        for replica in &mut self.replicas {
            replica.handle_timer(self.now, Timer::Retransmit);
        }
        self.pump();
    }

    /// A client sends one write to every replica; the cluster runs until quiet.
    fn write(&mut self) {
        self.timestamp += 1;
        let op = KvOp::Put {
            key: format!("k{}", self.timestamp).into_bytes(),
            value: b"v".to_vec(),
        }
        .encode();
        let envelope = RequestEnvelope::new(
            &self.c.client(0),
            1,
            vec![ClientRequest {
                timestamp: self.timestamp,
                op,
            }],
        );
        for replica in &mut self.replicas {
            let verified = self
                .c
                .verify(
                    Sender::Client(client_key(0).public()),
                    Message::Request(envelope.clone()),
                )
                .unwrap();
            replica.handle_message(self.now, verified);
        }
        self.pump();
    }

    fn wiped(&self) -> &Replica {
        &self.replicas[WIPED as usize]
    }

    /// The kinds of signed messages the wiped replica sent while it was silent.
    fn signed_while_silent(&self) -> Vec<&'static str> {
        self.sent_by_wiped
            .iter()
            .filter(|(_, silent)| *silent)
            .flat_map(|(message, _)| signed_statements(message))
            .filter(|s| s.replica == WIPED)
            .map(|s| s.kind)
            .collect()
    }
}

#[test]
fn a_rejoining_replica_signs_nothing_until_a_checkpoint_past_its_rejoin_point_is_stable() {
    let mut cluster = Cluster::new();
    for _ in 0..10 {
        cluster.write();
    }
    cluster.tick();
    assert_eq!(cluster.wiped().last_executed(), 10);

    // Replica 3 loses its disk and comes back.
    let mut replica = Replica::rejoining(
        WIPED,
        cluster.c.committee.clone(),
        cluster.config.clone(),
        cluster.c.key(WIPED).key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(cluster.now);
    cluster.replicas[WIPED as usize] = replica;
    cluster.sent_by_wiped.clear();
    assert_eq!(cluster.wiped().rejoin(), Some(&Rejoin::started()));

    // Its peers' status reports give it the rejoin point: 10 executed plus the window of 4.
    cluster.tick();
    cluster.tick();
    let point = cluster
        .wiped()
        .rejoin()
        .unwrap()
        .point
        .expect("point learned");
    assert_eq!((point.seq, point.view), (14, 1));
    assert!(cluster.disk.contains(&Durable::Created { rejoining: true }));

    // The others go on without it; it follows silently, and a restart keeps it silent.
    let mut restarted = false;
    while cluster.wiped().status().silent {
        assert!(cluster.timestamp < 100, "the rejoin never completed");
        cluster.write();
        cluster.tick();
        if !restarted && cluster.wiped().last_executed() > 12 {
            let disk = cluster.disk.clone();
            cluster.restart_wiped(disk);
            assert_eq!(cluster.wiped().rejoin().unwrap().point, Some(point));
            assert!(cluster.wiped().status().silent);
            restarted = true;
        }
    }
    assert!(restarted);
    assert!(cluster.wiped().stable_checkpoint() > point.seq);
    assert_eq!(cluster.signed_while_silent(), Vec::<&str>::new());
    // It executed what the others committed while it listened.
    assert_eq!(
        cluster.wiped().last_executed(),
        cluster.replicas[0].last_executed()
    );

    // A restart now keeps it voting: the stable checkpoint above the point is on its disk.
    let disk = cluster.disk.clone();
    cluster.restart_wiped(disk);
    assert!(!cluster.wiped().status().silent);
    assert_eq!(cluster.wiped().rejoin().unwrap().point, Some(point));

    // Then it takes part again, only above the rejoin point.
    cluster.sent_by_wiped.clear();
    for _ in 0..4 {
        cluster.write();
        cluster.tick();
    }
    let statements: Vec<_> = cluster
        .sent_by_wiped
        .iter()
        .flat_map(|(message, _)| signed_statements(message))
        .filter(|s| s.replica == WIPED)
        .collect();
    for kind in ["prepare", "commit", "checkpoint"] {
        assert!(
            statements.iter().any(|s| s.kind == kind),
            "no {kind} after the rejoin"
        );
    }
    assert!(statements.iter().all(|s| s.seq > point.seq));
    let digests: Vec<_> = (0..N).map(|i| cluster.replicas[i].state_digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn after_rejoining_it_signs_no_view_change_for_a_view_it_may_have_asked_for() {
    let mut cluster = Cluster::new();
    for _ in 0..4 {
        cluster.write();
    }
    let mut replica = Replica::rejoining(
        WIPED,
        cluster.c.committee.clone(),
        cluster.config.clone(),
        cluster.c.key(WIPED).key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(cluster.now);
    cluster.replicas[WIPED as usize] = replica;
    while cluster.wiped().status().silent {
        assert!(cluster.timestamp < 100, "the rejoin never completed");
        cluster.write();
        cluster.tick();
    }
    let point = cluster.wiped().rejoin().unwrap().point.unwrap();
    assert_eq!(point.view, 1);
    cluster.sent_by_wiped.clear();

    // Two peers ask for view 1: it joins them without a VIEW-CHANGE of its own.
    let ask = |cluster: &mut Cluster, view| {
        for from in [0, 1] {
            let view_change = cluster.c.view_change(from, view, Vec::new());
            cluster.c.deliver(
                &mut cluster.replicas[WIPED as usize],
                cluster.now,
                from,
                Message::ViewChange(view_change),
            );
        }
        let ready = cluster.replicas[WIPED as usize].poll_ready();
        ready
            .messages
            .iter()
            .flat_map(|out| signed_statements(&out.message))
            .filter(|s| s.replica == WIPED && s.kind == "view-change")
            .map(|s| s.view)
            .collect::<Vec<_>>()
    };
    assert_eq!(ask(&mut cluster, 1), Vec::<u64>::new());
    assert_eq!(cluster.wiped().view(), 1);
    // View 2 is past anything it could have asked for before.
    assert_eq!(ask(&mut cluster, 2), vec![2]);
}

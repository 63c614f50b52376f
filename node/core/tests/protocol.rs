//! Direct tests of the replica core's view-change rules.

use std::time::Duration;

use pbft_core::app::KvStore;
use pbft_core::messages::{
    self, Batch, Limits, Message, NewView, Phase, Sender, StrictCheck, ViewChange, Vote,
};
use pbft_core::protocol::{plan_new_view, ProtocolConfig, Replica, Timer, TimerCommand};
use pbft_crypto::KeyPair;

use pbft_core::fixtures::TestCluster;

#[test]
fn plan_takes_the_highest_view_certificate_and_fills_gaps_with_null() {
    let c = TestCluster::new(1);
    let a = Batch { envelopes: vec![] };
    let request = messages::RequestEnvelope::new(
        &c.committee.signer(KeyPair::from_seed(&[9; 32]).unwrap()),
        1,
        vec![messages::ClientRequest {
            timestamp: 1,
            op: b"x".to_vec(),
        }],
    );
    let b = Batch {
        envelopes: vec![request],
    };
    let vcs = vec![
        c.view_change(
            0,
            3,
            vec![c.prepared(0, 1, b.digest()), c.prepared(0, 3, b.digest())],
        ),
        c.view_change(2, 3, vec![c.prepared(1, 3, a.digest())]),
        c.view_change(3, 3, vec![]),
    ];
    let plan = plan_new_view(&vcs);
    assert_eq!(plan.min_s, 0);
    assert_eq!(plan.max_s, 3);
    let null = Batch::null().digest();
    // Seq 3: view 1's certificate wins over view 0's; seq 2 is a gap.
    assert_eq!(
        plan.orders,
        vec![(1, b.digest()), (2, null), (3, a.digest())]
    );
}

#[test]
fn a_new_view_with_a_wrong_o_is_rejected_and_the_right_one_accepted() {
    let c = TestCluster::new(1);
    let committee = c.committee.clone();
    let mut replica = Replica::new(
        2,
        committee.clone(),
        ProtocolConfig::default(),
        c.keys[2].key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(Duration::ZERO);
    let vcs: Vec<ViewChange> = [0u32, 2, 3]
        .iter()
        .map(|r| c.view_change(*r, 1, vec![]))
        .collect();
    let bogus = Batch { envelopes: vec![] };
    let deliver = |replica: &mut Replica, nv: NewView| {
        let verified = messages::verify(
            Message::NewView(nv),
            Sender::Replica(1),
            &committee,
            &Limits::default(),
            &mut StrictCheck,
        )
        .expect("signatures are valid");
        replica.handle_message(Duration::from_secs(1), verified);
    };
    // O claims a request at seq 1 that no certificate in V supports.
    deliver(
        &mut replica,
        c.new_view(1, vcs.clone(), &[(1, bogus.digest())]),
    );
    assert_eq!(
        replica.view(),
        0,
        "accepted a NEW-VIEW whose O does not follow from V"
    );
    deliver(&mut replica, c.new_view(1, vcs, &[]));
    let status = replica.status();
    assert_eq!((status.view, status.view_active), (1, true));
}

#[test]
fn f_plus_one_view_changes_make_a_replica_join() {
    let c = TestCluster::new(1);
    let committee = c.committee.clone();
    let mut replica = Replica::new(
        3,
        committee.clone(),
        ProtocolConfig::default(),
        c.keys[3].key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(Duration::ZERO);
    for (i, sender) in [0u32, 2].iter().enumerate() {
        let vc = c.view_change(*sender, 2, vec![]);
        let verified = messages::verify(
            Message::ViewChange(vc),
            Sender::Replica(*sender),
            &committee,
            &Limits::default(),
            &mut StrictCheck,
        )
        .unwrap();
        replica.handle_message(Duration::from_millis(10), verified);
        let status = replica.status();
        if i == 0 {
            assert_eq!(
                (status.view, status.view_active),
                (0, true),
                "joined on one view change"
            );
        } else {
            assert_eq!(
                (status.view, status.view_active),
                (2, false),
                "did not join f+1 view changes"
            );
        }
    }
    let ready = replica.poll_ready();
    assert!(ready.messages.iter().any(
        |m| matches!(&*m.message, Message::ViewChange(vc) if vc.new_view == 2 && vc.replica == 3)
    ));
}

// ----- committed slots, view-change timers and kept bodies -----

/// A batch of one put from a client of its own.
fn batch_of(c: &TestCluster, client: u8, key: &[u8]) -> Batch {
    let op = pbft_core::app::KvOp::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
    };
    let envelope = messages::RequestEnvelope::new(
        &c.committee
            .signer(KeyPair::from_seed(&[100 + client; 32]).unwrap()),
        1,
        vec![messages::ClientRequest {
            timestamp: 1,
            op: pbft_core::codec::encode(&op),
        }],
    );
    Batch {
        envelopes: vec![envelope],
    }
}

fn pre_prepares(ready: &pbft_core::protocol::Ready) -> Vec<u64> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &*m.message {
            Message::PrePrepare { header, .. } => Some(header.seq),
            _ => None,
        })
        .collect()
}

/// The view-0 primary, cut off while the others moved on, learns from a later view's commit
/// certificate that slot 2 is committed. It must neither propose into that slot nor, knowing
/// its view is over, propose at all; and it executes exactly the certified batches.
#[test]
fn a_stale_primary_never_proposes_into_a_slot_committed_in_a_later_view() {
    let c = TestCluster::new(1);
    let mut primary = c.replica(0);
    let (first, second) = (batch_of(&c, 1, b"a"), batch_of(&c, 2, b"b"));
    c.deliver(
        &mut primary,
        Duration::from_millis(100),
        1,
        c.committed(5, 2, &second),
    );
    for client in 3..6 {
        let request = batch_of(&c, client, b"c").envelopes.remove(0);
        c.deliver(
            &mut primary,
            Duration::from_millis(100),
            2,
            Message::Request(request),
        );
    }
    let ready = primary.poll_ready();
    assert_eq!(
        pre_prepares(&ready),
        Vec::<u64>::new(),
        "proposed in a superseded view"
    );
    assert_eq!(primary.last_executed(), 0);

    c.deliver(
        &mut primary,
        Duration::from_millis(100),
        1,
        c.committed(5, 1, &first),
    );
    let executed: Vec<_> = primary
        .poll_ready()
        .executed
        .iter()
        .map(|e| (e.seq, e.digest))
        .collect();
    assert_eq!(
        executed,
        vec![(1, first.digest()), (2, second.digest())],
        "executed something other than the certified batches"
    );
}

/// A NEW-VIEW that re-orders a slot this replica saw committed in an earlier view can only come
/// from more than f faulty replicas: the replica halts and sends nothing more.
#[test]
fn a_new_view_contradicting_a_committed_slot_halts_the_replica() {
    let c = TestCluster::new(1);
    let mut backup = c.replica(2);
    let (a, b) = (batch_of(&c, 1, b"a"), batch_of(&c, 2, b"b"));
    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        1,
        c.committed(0, 1, &a),
    );
    assert_eq!(backup.last_executed(), 1);
    backup.poll_ready();

    // Replicas 0, 1 and 3 forge a view-0 prepared certificate for `b` at the same slot.
    let vcs = vec![
        c.view_change(0, 1, vec![c.prepared(0, 1, b.digest())]),
        c.view_change(1, 1, vec![]),
        c.view_change(3, 1, vec![]),
    ];
    let nv = c.new_view(1, vcs, &[(1, b.digest())]);
    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        1,
        Message::NewView(nv),
    );
    let ready = backup.poll_ready();
    assert!(
        matches!(
            ready.halt,
            Some(pbft_core::protocol::Halt::ConflictingCommit { seq: 1, .. })
        ),
        "did not halt: {:?}",
        ready.halt
    );
    assert!(ready.messages.is_empty() && ready.replies.is_empty());
    assert!(backup.halted().is_some());
    assert_eq!(backup.view(), 0, "entered the contradicting view");
}

/// Replica 2's VIEW-CHANGE for view 1 was lost and it moved on to view 2. Replica 3 then holds
/// VIEW-CHANGEs for view 1 from itself and replica 0, and for view 2 from replica 2: three
/// replicas have left view 0, so its new-view timer must run, or nobody ever moves again.
#[test]
fn view_changes_for_later_views_arm_the_new_view_timer() {
    let c = TestCluster::new(1);
    let mut replica = c.replica(3);
    c.deliver(
        &mut replica,
        Duration::from_millis(100),
        0,
        Message::ViewChange(c.view_change(0, 1, vec![])),
    );
    c.deliver(
        &mut replica,
        Duration::from_millis(100),
        2,
        Message::ViewChange(c.view_change(2, 2, vec![])),
    );
    let status = replica.status();
    assert_eq!((status.view, status.view_active), (1, false));
    let ready = replica.poll_ready();
    let last_view_change_timer = ready
        .timers
        .iter()
        .rev()
        .find(|t| match t {
            TimerCommand::Set { timer, .. } | TimerCommand::Cancel(timer) => {
                *timer == Timer::ViewChange
            }
        })
        .copied();
    assert!(
        matches!(last_view_change_timer, Some(TimerCommand::Set { .. })),
        "new-view timer not armed: {:?}",
        ready.timers
    );
}

/// A backup that PREPAREd a body in view 0 keeps it when view 1 fills the slot with a null
/// request, so when view 2's NEW-VIEW names that body again (from the view-0 certificate) the
/// backup prepares it at once, and can serve it to others.
#[test]
fn a_body_voted_for_in_an_earlier_view_survives_later_views() {
    let c = TestCluster::new(1);
    let mut backup = c.replica(3);
    let (a, x) = (batch_of(&c, 1, b"a"), batch_of(&c, 2, b"x"));
    let header = Vote::new(&c.keys[0], Phase::PrePrepare, 0, 1, a.digest(), 0);
    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        0,
        Message::PrePrepare {
            header,
            batch: a.clone(),
        },
    );
    assert!(backup
        .poll_ready()
        .messages
        .iter()
        .any(|m| matches!(&*m.message, Message::Prepare { vote, .. } if vote.seq == 1)));

    // View 1: no certificate for slot 1, one for slot 2, so slot 1 gets the null request.
    let vcs = vec![
        c.view_change(0, 1, vec![c.prepared(0, 2, x.digest())]),
        c.view_change(1, 1, vec![]),
        c.view_change(2, 1, vec![]),
    ];
    let null = Batch::null().digest();
    let nv = c.new_view(1, vcs, &[(1, null), (2, x.digest())]);
    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        1,
        Message::NewView(nv),
    );
    assert_eq!(backup.view(), 1);
    backup.poll_ready();

    // View 2: replica 0 shows the view-0 certificate for `a` at slot 1.
    let vcs = vec![
        c.view_change(
            0,
            2,
            vec![c.prepared(0, 1, a.digest()), c.prepared(0, 2, x.digest())],
        ),
        c.view_change(1, 2, vec![]),
        c.view_change(2, 2, vec![]),
    ];
    let nv = c.new_view(2, vcs, &[(1, a.digest()), (2, x.digest())]);
    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        2,
        Message::NewView(nv),
    );
    assert_eq!(backup.view(), 2);
    let ready = backup.poll_ready();
    assert!(
        ready.messages.iter().any(|m| matches!(
            &*m.message,
            Message::Prepare { vote, .. } if vote.seq == 1 && vote.view == 2 && vote.digest == a.digest()
        )),
        "did not prepare the body it voted for in view 0"
    );

    c.deliver(
        &mut backup,
        Duration::from_millis(100),
        1,
        Message::FetchBatch {
            seq: 1,
            digest: a.digest(),
            replica: 1,
        },
    );
    assert!(backup.poll_ready().messages.iter().any(|m| matches!(
        &*m.message,
        Message::BatchData { seq: 1, batch } if batch.digest() == a.digest()
    )));
}

/// A primary filling batches up to `max_batch_bytes` equal to the limit backups enforce sends
/// only PRE-PREPAREs that backups accept: both sides size envelopes with one measure.
#[test]
fn a_full_batch_from_the_primary_passes_the_backups_limit() {
    let c = TestCluster::new(1);
    let mut config = ProtocolConfig::default();
    config.limits.max_batch_bytes = 4096;
    config.max_batch_bytes = config.limits.max_batch_bytes;
    // One batch in flight, so the envelopes queue up behind the first and fill the second.
    config.max_outstanding = 1;
    let config = config.checked().unwrap();
    let mut primary = Replica::new(
        0,
        c.committee.clone(),
        config.clone(),
        c.keys[0].key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    primary.start(Duration::ZERO);
    for client in 0..40u8 {
        let key = c
            .committee
            .signer(KeyPair::from_seed(&[client + 1; 32]).unwrap());
        let requests = (1..=3)
            .map(|timestamp| messages::ClientRequest {
                timestamp,
                op: vec![client; 100],
            })
            .collect();
        let envelope = messages::RequestEnvelope::new(&key, 1, requests);
        let verified = messages::verify_envelope(
            envelope,
            c.committee.cluster_id(),
            &config.limits,
            &mut StrictCheck,
        )
        .unwrap();
        primary.handle_request(Duration::from_millis(1), verified);
    }
    let mut batches: Vec<Message> = Vec::new();
    for seq in 1..=2 {
        let ready = primary.poll_ready();
        batches.extend(
            ready
                .messages
                .iter()
                .filter(|m| matches!(&*m.message, Message::PrePrepare { .. }))
                .map(|m| (*m.message).clone()),
        );
        let Some(Message::PrePrepare { header, .. }) = batches.last() else {
            panic!("no PRE-PREPARE for seq {seq}");
        };
        let digest = header.digest;
        for backup in 1..=2 {
            let prepare = c.prepare(0, seq, digest, backup);
            c.deliver(&mut primary, Duration::from_millis(2), backup, prepare);
        }
        for backup in 1..=2 {
            let commit = c.commit(0, seq, digest, backup);
            c.deliver(&mut primary, Duration::from_millis(2), backup, commit);
        }
    }
    assert_eq!(primary.last_executed(), 2);
    let mut largest = 0;
    for message in batches {
        if let Message::PrePrepare { batch, .. } = &message {
            largest = largest.max(batch.envelopes.iter().map(|e| e.encoded_len()).sum());
        }
        messages::verify(
            message,
            Sender::Replica(0),
            &c.committee,
            &config.limits,
            &mut StrictCheck,
        )
        .expect("a backup accepts the primary's batch");
    }
    assert!(
        largest > config.max_batch_bytes - 500,
        "batches filled to {largest} of {} bytes",
        config.max_batch_bytes
    );
}

/// A peer reporting it is far behind gets committed batches back, but no more bytes of them
/// per retransmission interval than one message may hold: asking costs it little, so answers
/// are metered in bytes, not only in number.
#[test]
fn help_to_a_lagging_peer_is_metered_in_bytes() {
    let c = TestCluster::new(1);
    let mut config = ProtocolConfig::default();
    config.limits.max_batch_bytes = 1100;
    config.max_batch_bytes = 1100;
    config.limits.max_message_bytes = 2200;
    let config = config.checked().unwrap();
    let interval = config.retransmit_interval;
    let mut helper = c.replica_with(2, config);
    let batches: Vec<Batch> = (0..6u8)
        .map(|i| {
            let key = c
                .committee
                .signer(KeyPair::from_seed(&[i + 50; 32]).unwrap());
            let request = messages::ClientRequest {
                timestamp: 1,
                op: vec![i; 900],
            };
            Batch {
                envelopes: vec![messages::RequestEnvelope::new(&key, 1, vec![request])],
            }
        })
        .collect();
    let size = batches[0].encoded_len();
    assert!(2 * size <= 2200 && 3 * size > 2200, "{size}");
    let now = Duration::from_millis(10);
    for (i, batch) in batches.iter().enumerate() {
        c.deliver(&mut helper, now, 1, c.committed(0, i as u64 + 1, batch));
    }
    assert_eq!(helper.last_executed(), 6);
    helper.poll_ready();

    let answers = |helper: &mut Replica, at: Duration| {
        let status = Message::Status {
            replica: 3,
            view: 0,
            last_executed: 0,
            fingerprint: *c.committee.fingerprint(),
        };
        c.deliver(helper, at, 3, status);
        helper
            .poll_ready()
            .messages
            .iter()
            .filter(|m| matches!(&*m.message, Message::Committed { .. }))
            .count()
    };
    assert_eq!(
        answers(&mut helper, now),
        2,
        "two batches fit in the budget"
    );
    assert_eq!(
        answers(&mut helper, now),
        0,
        "nothing more in the same interval"
    );
    assert_eq!(
        answers(&mut helper, now + interval),
        2,
        "a new interval, a new budget"
    );
}

/// A backup forwards a client's request to the primary once, however often the request
/// reaches it again (client retransmissions, other backups' forwards). Forwarding every copy
/// let two replicas that each took the other for the primary pass one request back and forth
/// without end, multiplying it whenever the network duplicated a message.
#[test]
fn a_backup_forwards_a_request_to_the_primary_once() {
    let c = TestCluster::new(1);
    let config = ProtocolConfig::default();
    let mut backup = Replica::new(
        1,
        c.committee.clone(),
        config.clone(),
        c.keys[1].key_pair().clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    backup.start(Duration::ZERO);
    let _ = backup.poll_ready();
    let envelope = batch_of(&c, 1, b"k").envelopes.remove(0);
    let mut forwards = 0;
    for copy in 0..5 {
        let verified = messages::verify_envelope(
            envelope.clone(),
            c.committee.cluster_id(),
            &config.limits,
            &mut StrictCheck,
        )
        .unwrap();
        backup.handle_request(Duration::from_millis(copy + 1), verified);
        forwards += backup
            .poll_ready()
            .messages
            .iter()
            .filter(|m| matches!(&*m.message, Message::Request(_)))
            .count();
    }
    assert_eq!(forwards, 1);
}

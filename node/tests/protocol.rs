//! Direct tests of the replica core's view-change rules.

use std::time::Duration;

use pbft_crypto::{KeyPair, Signature};
use pbft_node::app::KvStore;
use pbft_node::messages::{
    self, Batch, Limits, Message, NewView, Phase, PreparedCert, Sender, StrictCheck, ViewChange,
    Vote,
};
use pbft_node::protocol::{plan_new_view, ProtocolConfig, Replica};

mod common;

use common::{committee, keys};

fn view_change(
    key: &KeyPair,
    replica: u32,
    new_view: u64,
    prepared: Vec<PreparedCert>,
) -> ViewChange {
    let mut vc = ViewChange {
        new_view,
        stable_seq: 0,
        checkpoint_proof: Vec::new(),
        prepared,
        replica,
        signature: Signature::EMPTY,
    };
    vc.sign(key);
    vc
}

fn prepared(keys: &[KeyPair], view: u64, seq: u64, batch: &Batch) -> PreparedCert {
    let primary = (view % 4) as u32;
    let digest = batch.digest();
    let pre_prepare = Vote::new(
        &keys[primary as usize],
        Phase::PrePrepare,
        view,
        seq,
        digest,
        primary,
    );
    let prepares = (0..4u32)
        .filter(|r| *r != primary)
        .take(2)
        .map(|r| Vote::new(&keys[r as usize], Phase::Prepare, view, seq, digest, r))
        .collect();
    PreparedCert {
        pre_prepare,
        prepares,
    }
}

fn new_view(
    keys: &[KeyPair],
    view: u64,
    vcs: Vec<ViewChange>,
    orders: &[(u64, pbft_crypto::Digest)],
) -> NewView {
    let primary = (view % 4) as u32;
    let pre_prepares = orders
        .iter()
        .map(|(seq, digest)| {
            Vote::new(
                &keys[primary as usize],
                Phase::PrePrepare,
                view,
                *seq,
                *digest,
                primary,
            )
        })
        .collect();
    let mut nv = NewView {
        view,
        view_changes: vcs,
        pre_prepares,
        replica: primary,
        signature: Signature::EMPTY,
    };
    nv.sign(&keys[primary as usize]);
    nv
}

#[test]
fn plan_takes_the_highest_view_certificate_and_fills_gaps_with_null() {
    let keys = keys();
    let a = Batch { envelopes: vec![] };
    let request = messages::RequestEnvelope::new(
        &KeyPair::from_seed(&[9; 32]).unwrap(),
        vec![messages::ClientRequest {
            timestamp: 1,
            op: b"x".to_vec(),
        }],
    );
    let b = Batch {
        envelopes: vec![request],
    };
    let vcs = vec![
        view_change(
            &keys[0],
            0,
            3,
            vec![prepared(&keys, 0, 1, &b), prepared(&keys, 0, 3, &b)],
        ),
        view_change(&keys[2], 2, 3, vec![prepared(&keys, 1, 3, &a)]),
        view_change(&keys[3], 3, 3, vec![]),
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
    let keys = keys();
    let committee = committee(&keys);
    let mut replica = Replica::new(
        2,
        committee.clone(),
        ProtocolConfig::default(),
        keys[2].clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(Duration::ZERO);
    let vcs: Vec<ViewChange> = [0u32, 2, 3]
        .iter()
        .map(|r| view_change(&keys[*r as usize], *r, 1, vec![]))
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
        new_view(&keys, 1, vcs.clone(), &[(1, bogus.digest())]),
    );
    assert_eq!(
        replica.view(),
        0,
        "accepted a NEW-VIEW whose O does not follow from V"
    );
    deliver(&mut replica, new_view(&keys, 1, vcs, &[]));
    let status = replica.status();
    assert_eq!((status.view, status.view_active), (1, true));
}

#[test]
fn f_plus_one_view_changes_make_a_replica_join() {
    let keys = keys();
    let committee = committee(&keys);
    let mut replica = Replica::new(
        3,
        committee.clone(),
        ProtocolConfig::default(),
        keys[3].clone(),
        Box::new(KvStore::new()),
    )
    .unwrap();
    replica.start(Duration::ZERO);
    for (i, sender) in [0u32, 2].iter().enumerate() {
        let vc = view_change(&keys[*sender as usize], *sender, 2, vec![]);
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

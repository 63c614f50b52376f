//! Scenario tests of the protocol core in the deterministic simulator. Every run checks
//! agreement, equal state and client validity after each step; these tests add liveness and
//! the scenario's own expectations.

use std::time::Duration;

use pbft_core::byzantine::BehaviorKind;
use testnet::sim::{NetworkConfig, SimConfig, Simulation, Workload};

const LIVENESS_LIMIT: Duration = Duration::from_secs(600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn finish(sim: &mut Simulation) {
    sim.run_until_clients_done(LIVENESS_LIMIT).unwrap();
    // Let stragglers catch up, then compare every correct replica with the others.
    sim.run_for(secs(5)).unwrap();
    sim.check_final_state().unwrap();
}

fn assert_correct_replicas_executed_everything(sim: &Simulation) {
    assert!(sim.clients_done());
    assert!(sim
        .clients
        .iter()
        .all(|c| c.accepted.len() >= sim.config.requests_per_client));
    let top = sim
        .correct_ids()
        .iter()
        .map(|id| sim.replica(*id).last_executed())
        .max()
        .unwrap();
    assert!(top > 0);
}

#[test]
fn many_requests_commit_for_f_1_2_3() {
    for f in 1..=3 {
        let mut config = SimConfig::new(10 + f as u64, f);
        config.clients = 4;
        config.requests_per_client = 60;
        let mut sim = Simulation::new(config);
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        // All replicas are correct and connected: they all end at the same state.
        let digests: Vec<_> = (0..sim.n() as u32)
            .map(|id| {
                (
                    sim.replica(id).last_executed(),
                    sim.replica(id).state_digest(),
                )
            })
            .collect();
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "f={f}: {digests:?}"
        );
        assert_eq!(sim.replica(0).view(), 0, "no view change was needed");
        assert!(
            sim.replica(0).stable_checkpoint() > 0,
            "checkpoints became stable"
        );
    }
}

#[test]
fn silent_primary_is_replaced() {
    let mut sim = Simulation::new(SimConfig::new(21, 1));
    sim.set_behavior(0, BehaviorKind::Silent);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
    for id in sim.correct_ids() {
        assert!(sim.replica(id).view() >= 1, "replica {id} stayed in view 0");
    }
}

#[test]
fn equivocating_primary_splitting_backups_is_replaced_and_caught() {
    let mut sim = Simulation::new(SimConfig::new(22, 1));
    sim.set_behavior(0, BehaviorKind::EquivocatePrimarySplit);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
    let correct = sim.correct_ids();
    assert!(
        correct.iter().all(|id| sim.replica(*id).view() >= 1),
        "{}",
        sim.describe()
    );
    assert!(
        correct
            .iter()
            .any(|id| sim.replica(*id).evidence().contains_key(&0)),
        "no correct replica holds proof against the equivocating primary"
    );
    for id in correct {
        assert!(
            sim.replica(id)
                .evidence()
                .keys()
                .all(|culprit| *culprit == 0),
            "a correct replica was accused"
        );
    }
}

#[test]
fn equivocating_primary_leaving_a_minority_behind_is_caught_up() {
    let mut sim = Simulation::new(SimConfig::new(23, 1));
    sim.set_behavior(0, BehaviorKind::EquivocatePrimaryMinority);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
    let correct = sim.correct_ids();
    let top = correct
        .iter()
        .map(|id| sim.replica(*id).last_executed())
        .max()
        .unwrap();
    for id in &correct {
        assert_eq!(
            sim.replica(*id).last_executed(),
            top,
            "replica {id} did not catch up: {}",
            sim.describe()
        );
    }
}

#[test]
fn silent_then_equivocating_primaries_with_f_2() {
    let mut sim = Simulation::new(SimConfig::new(24, 2));
    sim.set_behavior(0, BehaviorKind::Silent);
    sim.set_behavior(1, BehaviorKind::EquivocatePrimarySplit);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
    for id in sim.correct_ids() {
        assert!(
            sim.replica(id).view() >= 2,
            "replica {id} did not pass both faulty primaries"
        );
    }
}

#[test]
fn f_faulty_backups_do_not_stop_progress() {
    for (seed, kinds) in [
        (31, vec![BehaviorKind::Silent]),
        (32, vec![BehaviorKind::EquivocateBackup]),
        (
            33,
            vec![BehaviorKind::Silent, BehaviorKind::EquivocateBackup],
        ),
        (
            34,
            vec![BehaviorKind::ForgeSignatures, BehaviorKind::Replay],
        ),
        (35, vec![BehaviorKind::StaleView, BehaviorKind::Corrupt]),
    ] {
        let f = kinds.len();
        let mut sim = Simulation::new(SimConfig::new(seed, f));
        for (i, kind) in kinds.into_iter().enumerate() {
            // Backups with the highest ids: the primary of view 0 stays correct.
            sim.set_behavior((3 * f - i) as u32, kind);
        }
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        assert_eq!(
            sim.replica(0).view(),
            0,
            "seed {seed}: faulty backups caused a view change"
        );
    }
}

#[test]
fn f_plus_one_silent_replicas_stop_progress_until_they_return() {
    let mut config = SimConfig::new(41, 1);
    config.requests_per_client = 400;
    let mut sim = Simulation::new(config);
    sim.run_for(Duration::from_millis(300)).unwrap();
    let before = sim.checker.accepted_count;
    sim.set_behavior(2, BehaviorKind::Silent);
    sim.set_behavior(3, BehaviorKind::Silent);
    sim.run_for(secs(30)).unwrap();
    let stalled = sim.checker.accepted_count;
    // A few requests already in flight may finish; then nothing can.
    sim.run_for(secs(60)).unwrap();
    assert_eq!(
        sim.checker.accepted_count, stalled,
        "progress without a quorum"
    );
    assert!(
        !sim.clients_done(),
        "the workload finished without a quorum (before: {before})"
    );
    sim.clear_behavior(2);
    sim.clear_behavior(3);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
}

#[test]
fn isolated_primary_is_replaced_and_rejoins_after_healing() {
    let mut config = SimConfig::new(51, 1);
    config.requests_per_client = 80;
    let mut sim = Simulation::new(config);
    sim.run_for(Duration::from_millis(300)).unwrap();
    sim.isolate(0);
    sim.run_for(secs(20)).unwrap();
    assert!(
        (1..4).all(|id| sim.replica(id).view() >= 1),
        "no view change: {}",
        sim.describe()
    );
    sim.heal();
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
    let top = sim.replica(1).last_executed();
    assert_eq!(
        sim.replica(0).last_executed(),
        top,
        "old primary did not catch up: {}",
        sim.describe()
    );
}

#[test]
fn partitioned_replica_catches_up_by_state_transfer() {
    let mut config = SimConfig::new(52, 1);
    config.requests_per_client = 20;
    let mut sim = Simulation::new(config);
    sim.isolate(3);
    // Run until the others are several checkpoints (and a log window) ahead.
    while sim.replica(0).stable_checkpoint() < 3 * sim.config.protocol.log_window {
        for client in 0..sim.clients.len() {
            sim.add_requests(client, 10);
        }
        sim.run_for(Duration::from_millis(500)).unwrap();
        assert!(sim.now() < secs(300), "no progress: {}", sim.describe());
    }
    assert_eq!(sim.replica(3).last_executed(), 0);
    sim.heal();
    finish(&mut sim);
    let top = sim.replica(0).last_executed();
    assert_eq!(sim.replica(3).last_executed(), top, "{}", sim.describe());
    assert_eq!(sim.replica(3).state_digest(), sim.replica(0).state_digest());
    assert!(
        sim.replica(3).state_transfers() > 0,
        "caught up without a state transfer"
    );
}

/// A primary that sends one backup nothing: that backup never commits (it sees 2f votes per
/// slot) and never holds the 2f+1 checkpoints of a stable one, while the others collect the
/// batches it lacks. It falls behind, and catches up: from the committed batches its peers keep
/// below their stable checkpoint, or, further behind, by fetching a stable state with its proof
/// once it notices it is stranded (`node/core/tests/state_transfer.rs` tests that path).
#[test]
fn a_backup_shunned_by_the_primary_catches_up() {
    for (f, seed) in [(1, 54), (2, 55)] {
        let mut config = SimConfig::new(seed, f);
        config.requests_per_client = 20;
        // Batches of one from many clients, and help only every 2 s: the others commit
        // batches faster than they send a lagging replica batches with commit certificates.
        config.clients = 12;
        config.client_window = 8;
        config.protocol.max_batch_requests = 1;
        config.protocol.retransmit_interval = secs(2);
        let mut sim = Simulation::new(config);
        sim.set_behavior(0, BehaviorKind::Shun);
        let shunned = 1;
        let log_window = sim.config.protocol.log_window;
        let mut most_behind = 0;
        while sim.replica(2).stable_checkpoint() < 2 * log_window {
            for client in 0..sim.clients.len() {
                sim.add_requests(client, 10);
            }
            sim.run_for(Duration::from_millis(500)).unwrap();
            let behind = sim.replica(2).last_executed()
                - sim
                    .replica(shunned)
                    .last_executed()
                    .min(sim.replica(2).last_executed());
            most_behind = most_behind.max(behind);
            assert!(sim.now() < secs(300), "no progress: {}", sim.describe());
        }
        finish(&mut sim);
        assert!(
            most_behind > 0,
            "f={f}: the shunned backup was never behind"
        );
        let top = sim.replica(2).last_executed();
        let replica = sim.replica(shunned);
        assert_eq!(replica.last_executed(), top, "f={f}: {}", sim.describe());
        assert_eq!(replica.state_digest(), sim.replica(2).state_digest());
    }
}

#[test]
fn repeated_faulty_primaries_end_in_a_correct_view() {
    for f in 1..=3usize {
        let mut sim = Simulation::new(SimConfig::new(60 + f as u64, f));
        // The primaries of views 0..f are faulty in turn.
        let kinds = [
            BehaviorKind::Silent,
            BehaviorKind::EquivocatePrimarySplit,
            BehaviorKind::Silent,
        ];
        for id in 0..f {
            sim.set_behavior(id as u32, kinds[id % kinds.len()]);
        }
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        for id in sim.correct_ids() {
            let view = sim.replica(id).view();
            assert!(
                sim.is_correct((view % sim.n() as u64) as u32),
                "f={f}: replica {id} ended in view {view} with a faulty primary"
            );
        }
    }
}

#[test]
fn lossy_network_still_commits_everything() {
    let mut config = SimConfig::new(71, 1);
    config.network = NetworkConfig::lossy();
    config.network.drop_probability = 0.1;
    let mut sim = Simulation::new(config);
    finish(&mut sim);
    assert_correct_replicas_executed_everything(&sim);
}

#[test]
fn every_replica_crashing_at_once_loses_no_accepted_write() {
    for seed in 0..8 {
        let mut config = SimConfig::new(seed, 1);
        config.requests_per_client = 60;
        let mut sim = Simulation::new(config);
        sim.run_for(Duration::from_millis(150 + 40 * seed)).unwrap();
        // Two replicas go down between steps, two in the middle of a write.
        sim.crash(0);
        sim.crash(1);
        sim.crash_during_next_write(2, 0.5);
        sim.crash_during_next_write(3, 0.0);
        sim.run_for(secs(1)).unwrap();
        let accepted_before: usize = sim.clients.iter().map(|c| c.accepted.len()).sum();
        for id in 0..4 {
            sim.recover(id).unwrap();
        }
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        assert!(
            accepted_before > 0,
            "seed {seed}: nothing was acknowledged before the crash"
        );
    }
}

#[test]
fn a_crashed_backup_recovers_and_catches_up() {
    let mut config = SimConfig::new(81, 1);
    config.requests_per_client = 100;
    let mut sim = Simulation::new(config);
    sim.run_for(Duration::from_millis(200)).unwrap();
    sim.crash(2);
    sim.run_for(secs(10)).unwrap();
    sim.recover(2).unwrap();
    finish(&mut sim);
    assert_eq!(
        sim.replica(2).last_executed(),
        sim.replica(0).last_executed(),
        "{}",
        sim.describe()
    );
}

/// Two processes with the primary's key; each peer's link reaches one of them in both
/// directions, as a shared port does. Whichever way the links fall, the correct replicas never
/// execute two batches at one sequence number (every step checks it) and the requests
/// complete. Where both processes reach correct replicas, each proposes its own batches and
/// every correct replica ends up holding the conflicting PRE-PREPAREs as proof against the
/// primary; where one reaches nobody, it is simply a replica the others never hear.
#[test]
fn twins_sharing_the_primarys_key_do_not_break_agreement() {
    let (mut split, mut one_sided) = (0, 0);
    for (f, seed) in [(1, 70), (1, 71), (1, 72), (1, 74), (2, 73)] {
        let mut config = SimConfig::new(seed, f);
        config.requests_per_client = 50;
        let mut sim = Simulation::new(config);
        for id in 0..f as u32 {
            sim.set_behavior(id, BehaviorKind::Twin);
        }
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        let (first, twin) = sim.twin_links(0);
        let correct = sim.correct_ids();
        let reaches = |side: &[u32]| side.iter().any(|id| correct.contains(id));
        if !(reaches(&first) && reaches(&twin)) {
            one_sided += 1;
            continue;
        }
        split += 1;
        for id in correct {
            assert!(
                sim.replica(id).evidence().contains_key(&0),
                "f={f}: replica {id} holds no proof against the twinned primary: {}",
                sim.describe()
            );
        }
    }
    assert!(
        split >= 3 && one_sided >= 2,
        "{split} split, {one_sided} one-sided"
    );
}

#[test]
fn shared_keys_reads_and_compare_and_swaps_follow_the_committed_history() {
    for f in 1..=2 {
        let mut config = SimConfig::new(80 + f as u64, f);
        config.workload = Workload::Mixed;
        config.clients = 4;
        config.requests_per_client = 80;
        config.network = NetworkConfig::lossy();
        let mut sim = Simulation::new(config);
        sim.set_behavior(0, BehaviorKind::Equivocate);
        finish(&mut sim);
        assert_correct_replicas_executed_everything(&sim);
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for client in &sim.clients {
            for (op, outcome) in client.accepted.values() {
                let pbft_core::messages::Outcome::Done(bytes) = outcome else {
                    continue;
                };
                let result = pbft_core::app::KvResult::decode(bytes).unwrap();
                let op: pbft_core::app::KvOp = pbft_core::codec::decode(op, u64::MAX).unwrap();
                let kind = match (op, result) {
                    (pbft_core::app::KvOp::Get { .. }, _) => "get",
                    (pbft_core::app::KvOp::Cas { .. }, pbft_core::app::KvResult::Done) => "cas",
                    (pbft_core::app::KvOp::Cas { .. }, _) => "cas failed",
                    _ => "put",
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        for kind in ["get", "cas", "cas failed", "put"] {
            assert!(
                kinds.get(kind).copied().unwrap_or(0) > 0,
                "f={f}: {kinds:?}"
            );
        }
    }
}

#[test]
fn a_replica_that_loses_its_disk_rejoins_silent_then_takes_part_again() {
    let mut config = SimConfig::new(41, 1);
    config.clients = 3;
    config.requests_per_client = 200;
    let window = config.protocol.log_window;
    let mut sim = Simulation::new(config);
    while sim.replica(2).last_executed() < 20 {
        sim.run_for(Duration::from_millis(50)).unwrap();
        assert!(sim.now() < secs(60), "{}", sim.describe());
    }
    let before = sim.replica(2).last_executed();
    sim.wipe_and_rejoin(2).unwrap();
    assert!(sim.replica(2).status().silent);

    // The others' status reports give it a point past anything it could have signed.
    let point = loop {
        if let Some(point) = sim.replica(2).rejoin().and_then(|r| r.point) {
            break point;
        }
        sim.run_for(Duration::from_millis(50)).unwrap();
        assert!(sim.now() < secs(120), "{}", sim.describe());
    };
    assert!(point.seq >= before + window, "{point:?}");

    // It stays silent until a checkpoint above the point is stable; the checkers see every
    // message it signs, in both lives, and would stop the run at a contradiction.
    while sim.replica(2).status().silent {
        assert!(
            sim.replica(2).stable_checkpoint() <= point.seq,
            "{}",
            sim.describe()
        );
        sim.run_for(Duration::from_millis(50)).unwrap();
        assert!(sim.now() < secs(600), "{}", sim.describe());
    }
    assert!(sim.replica(2).stable_checkpoint() > point.seq);

    // Then it votes: with replica 3 cut off, nothing commits without it.
    sim.run_until_clients_done(LIVENESS_LIMIT).unwrap();
    sim.isolate(3);
    let executed = sim.replica(0).last_executed();
    for client in 0..3 {
        sim.add_requests(client, 20);
    }
    sim.run_until_clients_done(LIVENESS_LIMIT).unwrap();
    assert!(sim.replica(0).last_executed() > executed);
    sim.reconnect(3);
    finish(&mut sim);
    assert_eq!(
        sim.replica(2).last_executed(),
        sim.replica(0).last_executed()
    );
}

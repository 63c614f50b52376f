//! Runs the randomized search once found broken, written out step by step. Each one broke
//! agreement or liveness before the fix named in its comment. They replay those runs exactly as
//! long as the simulator draws its randomness in the same order; after that they remain
//! scenarios of the same shape.

use std::time::Duration;

use pbft_core::byzantine::BehaviorKind;
use testnet::sim::campaign::{Scenario, Step};
use testnet::sim::{NetworkConfig, Node, SimConfig, Simulation, Violation};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn network(max_delay: u64, drop: f64, duplicate: f64, reorder: f64) -> NetworkConfig {
    NetworkConfig {
        max_delay: ms(max_delay),
        drop_probability: drop,
        duplicate_probability: duplicate,
        reorder_probability: reorder,
        ..NetworkConfig::default()
    }
}

/// Heals, lets every client finish and checks the final state.
fn finish(sim: &mut Simulation) -> Result<(), Violation> {
    sim.heal();
    sim.network.config = NetworkConfig::default();
    sim.run_until_clients_done(Duration::from_secs(1800))?;
    sim.run_for(Duration::from_secs(3))?;
    sim.check_final_state()
}

fn check(result: Result<(), Violation>) {
    if let Err(violation) = result {
        panic!("{}", violation.0);
    }
}

/// The view-0 primary, cut off while the others went through five views, learned that a slot
/// was committed from a later view's certificate and then proposed its own batch into that very
/// slot. A committed slot is now never overwritten, and a primary that learns of commits from
/// later views stops proposing in its own.
#[test]
fn stale_primary_never_overwrites_a_slot_committed_in_a_later_view() {
    check((|| {
        let mut config = SimConfig::new(7_004_195, 1);
        config.clients = 2;
        config.requests_per_client = 69;
        config.client_window = 1;
        config.network = network(19, 0.18, 0.06, 0.2);
        let mut sim = Simulation::new(config);
        sim.set_behavior(3, BehaviorKind::Slow);
        sim.run_for(ms(517))?;
        sim.split(&[0, 1], &[2, 3]);
        sim.run_for(ms(1637))?;
        sim.heal();
        sim.run_for(ms(625))?;
        sim.split(&[0], &[1, 2, 3]);
        sim.run_for(ms(5475))?;
        sim.heal();
        sim.run_for(ms(345))?;
        finish(&mut sim)
    })());
}

/// The same shape with f = 3 and three replaying replicas: the view-0 primary installed a state
/// transfer and then executed a batch of its own at the next sequence number.
#[test]
fn stale_primary_after_state_transfer_executes_only_committed_batches() {
    check((|| {
        let mut config = SimConfig::new(7_000_863, 3);
        config.clients = 4;
        config.requests_per_client = 112;
        config.client_window = 8;
        config.network = network(42, 0.13, 0.03, 0.28);
        let mut sim = Simulation::new(config);
        for id in [8, 9, 7] {
            sim.set_behavior(id, BehaviorKind::Replay);
        }
        sim.run_for(ms(1206))?;
        sim.split(&[0, 1], &[2, 3, 4, 5, 6, 7, 8, 9]);
        sim.run_for(ms(2249))?;
        sim.heal();
        sim.run_for(ms(971))?;
        finish(&mut sim)
    })());
}

/// Replica 2's VIEW-CHANGE for view 3 was lost and its timer took it on to view 4; the others
/// then held only two VIEW-CHANGEs for exactly view 3 and never armed their timers. VIEW-CHANGEs
/// for higher views now count towards arming it.
#[test]
fn view_changes_stranded_in_different_views_converge_after_healing() {
    check((|| {
        let mut config = SimConfig::new(7_000_344, 1);
        config.clients = 1;
        config.requests_per_client = 39;
        config.client_window = 3;
        config.network = network(48, 0.03, 0.02, 0.29);
        let mut sim = Simulation::new(config);
        sim.set_behavior(0, BehaviorKind::ForgeSignatures);
        sim.run_for(ms(145))?;
        for (from, to) in [(0, 3), (1, 3), (1, 2)] {
            sim.network.cut(Node::Replica(from), Node::Replica(to));
        }
        sim.run_for(ms(881))?;
        sim.split(&[0, 1], &[2, 3]);
        sim.run_for(ms(3865))?;
        sim.heal();
        sim.run_for(ms(1304))?;
        sim.isolate(1);
        sim.run_for(ms(2285))?;
        sim.heal();
        sim.run_for(ms(491))?;
        sim.isolate(3);
        sim.run_for(ms(13902))?;
        sim.heal();
        sim.run_for(ms(42))?;
        sim.isolate(1);
        sim.run_for(ms(6810))?;
        finish(&mut sim)
    })());
}

/// Campaign seed 1891 (f = 2): the view-0 primary, isolated for 12 s and then crashed and
/// restarted while the others went through views 1 to 16, caught up by commit certificates and
/// executed its own proposal at slot 29. Same cause as the first test.
#[test]
fn campaign_seed_1891_stale_primary_after_isolation_and_restart() {
    use Step::*;
    let mut config = SimConfig::new(1891, 2);
    config.clients = 2;
    config.requests_per_client = 135;
    config.client_window = 2;
    config.network = network(17, 0.20, 0.0, 0.0);
    let scenario = Scenario {
        config,
        faulty: vec![
            (2, BehaviorKind::ForgeSignatures),
            (3, BehaviorKind::EquivocateMinority),
        ],
        steps: vec![
            Run(ms(321)),
            Clog(4, ms(1356)),
            Run(ms(9323)),
            Reconnect(4),
            Run(ms(144)),
            Isolate(2),
            Run(ms(5849)),
            Reconnect(2),
            Run(ms(444)),
            Split(vec![3, 2, 0], vec![5, 6, 1, 4]),
            Run(ms(7136)),
            Heal,
            Run(ms(591)),
            Isolate(0),
            Run(ms(11803)),
            Reconnect(0),
            Run(ms(447)),
            Crash(0),
            Run(ms(8458)),
            Recover(0),
            Run(ms(1415)),
            IsolatePrimary,
            Run(ms(6183)),
            Heal,
            Run(ms(1850)),
        ],
    };
    check(scenario.run().map(|_| ()));
}

/// Campaign seed 3217 (f = 1, an equivocating replica 2): replica 0, cut off from the others'
/// messages by one-way cuts, stayed primary of view 0 while views 1 to 3 went on, and executed
/// its own batch at slot 33.
#[test]
fn campaign_seed_3217_stale_primary_behind_one_way_cuts() {
    use Step::*;
    let mut config = SimConfig::new(3217, 1);
    config.clients = 3;
    config.requests_per_client = 82;
    config.client_window = 7;
    config.network = network(49, 0.13, 0.05, 0.24);
    let calm = config.network.clone();
    let scenario = Scenario {
        config,
        faulty: vec![(2, BehaviorKind::EquivocatePrimarySplit)],
        steps: vec![
            Run(ms(1357)),
            IsolatePrimary,
            Run(ms(4400)),
            Heal,
            Run(ms(1517)),
            Crash(0),
            Run(ms(492)),
            Recover(0),
            Run(ms(888)),
            Isolate(1),
            Run(ms(1293)),
            Reconnect(1),
            Run(ms(1015)),
            Split(vec![3, 0, 2], vec![1]),
            Run(ms(678)),
            Heal,
            Run(ms(1791)),
            Cut(1, 2),
            Cut(1, 0),
            Run(ms(4941)),
            Heal,
            Run(ms(1111)),
            Cut(0, 3),
            Run(ms(6261)),
            Heal,
            Run(ms(1672)),
            Network(network(46, 0.07, 0.09, 0.15)),
            Run(ms(7886)),
            Network(calm),
            Run(ms(1884)),
        ],
    };
    check(scenario.run().map(|_| ()));
}

/// Campaign seed 103148 (f = 1, replica 1 twinned, a flooding client): replica 0 in view 13
/// forwarded requests to replica 1, the primary; the twin that received them, still in view 12,
/// forwarded them to its primary, replica 0, which forwarded them again. Every copy was
/// forwarded, and duplicated messages multiplied them past 200,000 in flight. A backup now
/// forwards a request once.
#[test]
fn campaign_seed_103148_requests_forwarded_back_and_forth() {
    use Step::*;
    let mut config = SimConfig::new(103148, 1);
    config.clients = 3;
    config.requests_per_client = 57;
    config.client_window = 6;
    config.network = network(38, 0.10, 0.10, 0.27);
    config.attackers = vec![pbft_core::byzantine::ClientAttack::Flood];
    config.attack_interval = ms(277);
    config.attack_until = ms(14_857);
    let calm = config.network.clone();
    let scenario = Scenario {
        config,
        faulty: vec![(1, BehaviorKind::Twin)],
        steps: vec![
            Run(ms(57)),
            IsolatePrimary,
            Run(ms(8085)),
            Heal,
            Run(ms(1834)),
            Network(NetworkConfig {
                max_delay: ms(2),
                ..network(2, 0.04, 0.07, 0.02)
            }),
            Run(ms(5672)),
            Network(calm),
            Run(ms(1360)),
            Cut(1, 0),
            Run(ms(4122)),
            Heal,
            Run(ms(1289)),
            Isolate(3),
            Run(ms(11824)),
            Reconnect(3),
            Run(ms(370)),
            Split(vec![3], vec![2, 0, 1]),
            Run(ms(5076)),
            Heal,
            Run(ms(1659)),
            Isolate(3),
            Run(ms(9844)),
            Reconnect(3),
            Run(ms(1631)),
        ],
    };
    check(scenario.run().map(|_| ()));
}

/// Campaign seed 1139 (f = 1, replica 0 twinned), once the simulator linked each peer to one
/// twin in both directions, as a shared port does. Replica 1's link reached the twin that the
/// others did not follow, so it saw only 2f votes per slot and f+1 checkpoints past it, while
/// the others collected the batches it lacked. Clients whose link also reached that twin
/// waited forever for a 2f+1th reply. A replica that executes nothing for a retransmission
/// interval while f+1 replicas report checkpoints past it now asks them for a stable state.
#[test]
fn campaign_seed_1139_a_replica_stranded_behind_a_twin() {
    use Step::*;
    let mut config = SimConfig::new(1139, 1);
    config.clients = 4;
    config.requests_per_client = 38;
    config.client_window = 8;
    config.network = network(58, 0.15, 0.05, 0.26);
    let scenario = Scenario {
        config,
        faulty: vec![(0, BehaviorKind::Twin)],
        steps: vec![
            Run(ms(615)),
            Isolate(1),
            Run(ms(11376)),
            Reconnect(1),
            Run(ms(733)),
            Split(vec![3, 0, 2], vec![1]),
            Run(ms(3521)),
            Run(ms(1753)),
            Clog(0, ms(1060)),
            Run(ms(3195)),
            Reconnect(0),
            Run(ms(1878)),
            Isolate(3),
            Run(ms(8322)),
            Reconnect(3),
            Run(ms(1169)),
        ],
    };
    check(scenario.run().map(|_| ()));
}

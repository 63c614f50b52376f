//! The simulated network: delay, loss, duplication, reordering and partitions, all drawn from
//! the simulation's one seeded random number generator.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An endpoint of the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Replica(u32),
    Client(usize),
    /// A faulty client's connection, authenticated with the key of this index in the
    /// simulation's table of attacker identities.
    Attacker(usize),
}

/// How the network treats messages.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// One-way delay is uniform in [min_delay, max_delay].
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Probability that a message is held back by up to `reorder_delay` extra, overtaking others.
    pub reorder_probability: f64,
    pub reorder_delay: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            reorder_probability: 0.0,
            reorder_delay: Duration::from_millis(20),
        }
    }
}

impl NetworkConfig {
    /// A network that loses, duplicates and reorders a few percent of messages.
    pub fn lossy() -> NetworkConfig {
        NetworkConfig {
            drop_probability: 0.02,
            duplicate_probability: 0.02,
            reorder_probability: 0.05,
            ..NetworkConfig::default()
        }
    }
}

/// The links that are cut, and the delivery model.
#[derive(Debug)]
pub struct Network {
    pub config: NetworkConfig,
    /// Directed links (from, to) that deliver nothing.
    cut: BTreeSet<(Node, Node)>,
    /// Directed links that add this much delay to every message: clogged, not cut.
    clogged: BTreeMap<(Node, Node), Duration>,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Network {
        Network {
            config,
            cut: BTreeSet::new(),
            clogged: BTreeMap::new(),
        }
    }

    /// The delays after which copies of one message arrive (none if it is lost).
    pub fn deliveries(&self, from: Node, to: Node, rng: &mut ChaCha8Rng) -> Vec<Duration> {
        if self.cut.contains(&(from, to)) {
            return Vec::new();
        }
        let c = &self.config;
        let clog = self.clogged.get(&(from, to)).copied().unwrap_or_default();
        if c.drop_probability > 0.0 && rng.random_bool(c.drop_probability) {
            return Vec::new();
        }
        let copies = if c.duplicate_probability > 0.0 && rng.random_bool(c.duplicate_probability) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut delay = clog + random_duration(rng, c.min_delay, c.max_delay);
                if c.reorder_probability > 0.0 && rng.random_bool(c.reorder_probability) {
                    delay += random_duration(rng, Duration::ZERO, c.reorder_delay);
                }
                delay
            })
            .collect()
    }

    /// Cuts the directed link from `from` to `to`.
    pub fn cut(&mut self, from: Node, to: Node) {
        self.cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: Node, b: Node) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Delays every message on the directed link from `from` to `to` by `delay` more.
    pub fn clog(&mut self, from: Node, to: Node, delay: Duration) {
        self.clogged.insert((from, to), delay);
    }

    /// Restores every link to and from `node`.
    pub fn restore(&mut self, node: Node) {
        self.cut.retain(|(from, to)| *from != node && *to != node);
        self.clogged
            .retain(|(from, to), _| *from != node && *to != node);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.clogged.clear();
    }

    pub fn is_cut(&self, from: Node, to: Node) -> bool {
        self.cut.contains(&(from, to))
    }
}

pub fn random_duration(rng: &mut ChaCha8Rng, min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    let span = (max - min).as_micros() as u64;
    min + Duration::from_micros(rng.random_range(0..=span))
}

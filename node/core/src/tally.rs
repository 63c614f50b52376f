//! Counting replicas toward the thresholds of n = 3f+1: one value per replica, so that a replica
//! counts once however often it speaks. Every count the protocol and the client make goes
//! through [`Tally`]; the thresholds themselves are [`Committee`](crate::Committee)'s
//! (`quorum`, `weak_quorum`, `prepared_quorum`).

use std::collections::BTreeMap;

use crate::ids::ReplicaId;

/// At most one value per replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally<V> {
    by_replica: BTreeMap<ReplicaId, V>,
}

impl<V> Default for Tally<V> {
    fn default() -> Self {
        Tally {
            by_replica: BTreeMap::new(),
        }
    }
}

impl<V> Tally<V> {
    pub fn new() -> Tally<V> {
        Tally::default()
    }

    /// The value `replica` holds, if any.
    pub fn get(&self, replica: ReplicaId) -> Option<&V> {
        self.by_replica.get(&replica)
    }

    /// Sets `replica`'s value, returning the one it replaces.
    pub fn insert(&mut self, replica: ReplicaId, value: V) -> Option<V> {
        self.by_replica.insert(replica, value)
    }

    /// Forgets `replica`'s value.
    pub fn remove(&mut self, replica: ReplicaId) -> Option<V> {
        self.by_replica.remove(&replica)
    }

    pub fn clear(&mut self) {
        self.by_replica.clear();
    }

    /// How many replicas hold a value.
    pub fn len(&self) -> usize {
        self.by_replica.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_replica.is_empty()
    }

    /// The values with their replicas, in replica order.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &V)> + '_ {
        self.by_replica.iter().map(|(id, value)| (*id, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.by_replica.values()
    }

    /// How many replicas hold a value that `counts`.
    pub fn count(&self, counts: impl Fn(&V) -> bool) -> usize {
        self.values().filter(|value| counts(value)).count()
    }

    /// The highest key that at least `k` replicas reach, i.e. the `k`-th highest of the keys
    /// `key` gives (replicas it gives none count for nothing). With at most f faulty replicas
    /// and `k` = f+1, at least one correct replica reached it.
    pub fn kth_highest<K: Ord>(
        &self,
        k: usize,
        key: impl Fn(ReplicaId, &V) -> Option<K>,
    ) -> Option<K> {
        let mut keys: Vec<K> = self.iter().filter_map(|(id, v)| key(id, v)).collect();
        if k == 0 || keys.len() < k {
            return None;
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.into_iter().nth(k - 1)
    }

    /// The values of `k` replicas that satisfy `counts`: `first`'s, if it does, then the others
    /// in replica order. `None` if fewer than `k` do.
    pub fn pick(
        &self,
        k: usize,
        first: Option<ReplicaId>,
        counts: impl Fn(&V) -> bool,
    ) -> Option<Vec<&V>> {
        let first_value = first.and_then(|id| self.get(id)).filter(|v| counts(v));
        let picked: Vec<&V> = first_value
            .into_iter()
            .chain(
                self.iter()
                    .filter(|(id, v)| Some(*id) != first && counts(v))
                    .map(|(_, v)| v),
            )
            .take(k)
            .collect();
        (picked.len() >= k).then_some(picked)
    }

    /// The smallest key that at least `k` replicas' values agree on, with `k` of those values in
    /// replica order; `None` if no key has `k`.
    pub fn agreed<K: Ord + Copy>(&self, k: usize, key: impl Fn(&V) -> K) -> Option<(K, Vec<&V>)> {
        let mut counts: BTreeMap<K, usize> = BTreeMap::new();
        for value in self.values() {
            *counts.entry(key(value)).or_default() += 1;
        }
        let (chosen, _) = counts.into_iter().find(|(_, n)| *n >= k.max(1))?;
        let values = self.values().filter(|v| key(v) == chosen).take(k).collect();
        Some((chosen, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(values: &[(ReplicaId, u64)]) -> Tally<u64> {
        let mut tally = Tally::new();
        for (id, value) in values {
            tally.insert(*id, *value);
        }
        tally
    }

    #[test]
    fn a_replica_counts_once_with_its_latest_value() {
        let mut t = tally(&[(0, 5), (1, 5)]);
        assert_eq!(t.insert(0, 7), Some(5));
        assert_eq!(t.len(), 2);
        assert_eq!(t.count(|v| *v == 5), 1);
        assert_eq!(t.count(|v| *v >= 5), 2);
        assert_eq!(t.remove(1), Some(5));
        assert_eq!(t.count(|v| *v >= 5), 1);
    }

    #[test]
    fn the_kth_highest_ignores_the_k_minus_one_highest() {
        // f = 1: one faulty replica claims a huge view; the (f+1)-th highest is a real one.
        let t = tally(&[(0, 3), (1, 1_000_000), (2, 4), (3, 2)]);
        assert_eq!(t.kth_highest(2, |_, v| Some(*v)), Some(4));
        assert_eq!(t.kth_highest(4, |_, v| Some(*v)), Some(2));
        assert_eq!(t.kth_highest(5, |_, v| Some(*v)), None);
        assert_eq!(t.kth_highest(0, |_, v| Some(*v)), None);
        // Replicas the key leaves out count for nothing.
        assert_eq!(t.kth_highest(2, |id, v| (id != 1).then_some(*v)), Some(3));
    }

    #[test]
    fn pick_puts_the_preferred_replica_first_and_needs_k() {
        let t = tally(&[(0, 9), (1, 9), (2, 8), (3, 9)]);
        let picked = t.pick(3, Some(3), |v| *v == 9).unwrap();
        assert_eq!(picked, vec![&9, &9, &9]);
        let ids: Vec<ReplicaId> = t
            .iter()
            .filter(|(_, v)| picked.iter().any(|p| std::ptr::eq(*p, *v)))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![0, 1, 3]);
        let first_two = t.pick(2, Some(3), |v| *v == 9).unwrap();
        assert!(std::ptr::eq(first_two[0], t.get(3).unwrap()));
        assert!(std::ptr::eq(first_two[1], t.get(0).unwrap()));
        assert_eq!(t.pick(4, None, |v| *v == 9), None);
        // A preferred replica whose value does not count is not picked.
        let picked = t.pick(3, Some(2), |v| *v == 9).unwrap();
        assert!(picked.iter().all(|v| **v == 9));
    }

    #[test]
    fn agreed_needs_k_replicas_on_one_key() {
        let t = tally(&[(0, 1), (1, 2), (2, 2), (3, 1)]);
        assert_eq!(t.agreed(3, |v| *v), None);
        let (key, values) = t.agreed(2, |v| *v).unwrap();
        assert_eq!((key, values), (1, vec![&1, &1]));
        let t = tally(&[(0, 1), (1, 2), (2, 2), (3, 2)]);
        let (key, values) = t.agreed(3, |v| *v).unwrap();
        assert_eq!((key, values.len()), (2, 3));
    }
}

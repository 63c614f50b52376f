//! Deciding what to believe from replies: a result once enough distinct replicas sent it, and
//! the current view once f+1 distinct replicas reported at least it.
//!
//! At most f replicas are faulty, so any value that f+1 distinct replicas vouch for was vouched
//! for by at least one correct replica; the session waits for 2f+1 (see [`crate::session`] for
//! why). Each replica counts once, whatever it sends.

use pbft_core::messages::{ReplicaId, View};
use pbft_core::tally::Tally;

/// Collects the replies for one request and accepts a result once `needed` distinct replicas
/// sent the same one.
///
/// The first answer of each replica is the one that counts: a replica that answers again (a
/// retransmission, or a faulty replica changing its mind) is ignored, so it can neither vote
/// twice nor withdraw a vote.
#[derive(Clone, Debug)]
pub struct ReplyQuorum<T = Vec<u8>> {
    needed: usize,
    answers: Tally<T>,
    accepted: bool,
}

impl<T: Clone + PartialEq> ReplyQuorum<T> {
    /// A collector that accepts a result `needed` distinct replicas agree on.
    pub fn new(needed: usize) -> ReplyQuorum<T> {
        ReplyQuorum {
            needed,
            answers: Tally::new(),
            accepted: false,
        }
    }

    /// Whether `needed` matching answers are still possible with `n` replicas in all.
    pub fn possible(&self, n: usize) -> bool {
        let best = self
            .answers
            .values()
            .map(|a| self.answers.count(|b| b == a))
            .max()
            .unwrap_or(0);
        best + n.saturating_sub(self.answers.len()) >= self.needed
    }

    /// Records `from`'s result. Returns the accepted result the first time `needed` distinct
    /// replicas agree on it, and `None` before and after that. The caller must have checked that
    /// `from` is a replica of the cluster and that the channel authenticated it.
    pub fn add(&mut self, from: ReplicaId, result: T) -> Option<T> {
        if self.accepted || self.answers.get(from).is_some() {
            return None;
        }
        let matching = 1 + self.answers.count(|r| *r == result);
        if matching >= self.needed {
            self.accepted = true;
            self.answers.clear();
            return Some(result);
        }
        self.answers.insert(from, result);
        None
    }

    /// How many distinct replicas have answered so far (before acceptance).
    pub fn answered(&self) -> usize {
        self.answers.len()
    }

    /// Whether a result was accepted.
    pub fn is_accepted(&self) -> bool {
        self.accepted
    }
}

/// Learns the cluster's view from what replicas report.
///
/// Keeps the highest view each replica reported and believes the (f+1)-th highest of them: at
/// least one correct replica has reached that view, and f faulty replicas reporting huge or
/// stale views cannot move it.
#[derive(Clone, Debug)]
pub struct ViewTracker {
    f: usize,
    reported: Tally<View>,
    view: View,
}

impl ViewTracker {
    /// A tracker for a cluster tolerating `f` faulty replicas, starting at view 0.
    pub fn new(f: usize) -> ViewTracker {
        ViewTracker {
            f,
            reported: Tally::new(),
            view: 0,
        }
    }

    /// Records that `replica` reported `view`. The caller must have authenticated `replica`.
    pub fn observe(&mut self, replica: ReplicaId, view: View) {
        if self
            .reported
            .get(replica)
            .is_some_and(|&known| view < known)
        {
            return;
        }
        self.reported.insert(replica, view);
        // Views only grow, so a belief is never taken back.
        if let Some(candidate) = self.reported.kth_highest(self.f + 1, |_, v| Some(*v)) {
            self.view = self.view.max(candidate);
        }
    }

    /// The view the client believes the cluster is in.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether f+1 replicas reported a view, so that [`ViewTracker::view`] rests on at least
    /// one correct replica's word.
    pub fn is_known(&self) -> bool {
        self.reported.len() > self.f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_once_f_plus_one_distinct_replicas_agree() {
        let mut quorum = ReplyQuorum::new(2);
        assert_eq!(quorum.add(0, b"ok".to_vec()), None);
        assert_eq!(quorum.add(1, b"ok".to_vec()), Some(b"ok".to_vec()));
        assert!(quorum.is_accepted());
        // Accepted exactly once.
        assert_eq!(quorum.add(2, b"ok".to_vec()), None);
    }

    #[test]
    fn a_replica_answering_twice_counts_once() {
        let mut quorum = ReplyQuorum::new(2);
        assert_eq!(quorum.add(3, b"ok".to_vec()), None);
        assert_eq!(quorum.add(3, b"ok".to_vec()), None);
        assert_eq!(quorum.add(3, b"other".to_vec()), None);
        assert_eq!(quorum.answered(), 1);
        assert_eq!(quorum.add(0, b"ok".to_vec()), Some(b"ok".to_vec()));
    }

    #[test]
    fn f_liars_cannot_make_it_accept_a_wrong_result() {
        for f in 1..=3usize {
            let n = 3 * f + 1;
            let mut quorum = ReplyQuorum::new(f + 1);
            // The f liars agree with each other and answer first, repeatedly.
            for _ in 0..3 {
                for liar in 0..f as ReplicaId {
                    assert_eq!(quorum.add(liar, b"lie".to_vec()), None);
                }
            }
            // Correct replicas answer with the true result; it is accepted at the (f+1)-th.
            let mut accepted = None;
            for honest in f as ReplicaId..n as ReplicaId {
                if let Some(result) = quorum.add(honest, b"truth".to_vec()) {
                    accepted = Some((honest, result));
                    break;
                }
            }
            assert_eq!(accepted, Some((2 * f as ReplicaId, b"truth".to_vec())));
        }
    }

    #[test]
    fn different_results_do_not_add_up() {
        let mut quorum = ReplyQuorum::new(2);
        assert_eq!(quorum.add(0, b"a".to_vec()), None);
        assert_eq!(quorum.add(1, b"b".to_vec()), None);
        assert_eq!(quorum.add(2, b"c".to_vec()), None);
        assert_eq!(quorum.add(3, b"b".to_vec()), Some(b"b".to_vec()));
    }

    #[test]
    fn knows_when_a_quorum_is_out_of_reach() {
        // n = 4, 3 needed.
        let mut quorum = ReplyQuorum::new(3);
        quorum.add(0, b"a".to_vec());
        quorum.add(1, b"b".to_vec());
        assert!(quorum.possible(4), "a, a, a still possible from 0, 2, 3");
        quorum.add(2, b"c".to_vec());
        assert!(!quorum.possible(4));
    }

    #[test]
    fn view_is_the_f_plus_one_th_highest_report() {
        let mut views = ViewTracker::new(1);
        assert_eq!(views.view(), 0);
        views.observe(0, 5);
        // One replica alone (possibly a liar) does not move the view.
        assert_eq!(views.view(), 0);
        views.observe(1, 3);
        assert_eq!(views.view(), 3);
        views.observe(2, 5);
        assert_eq!(views.view(), 5);
    }

    #[test]
    fn f_liars_cannot_move_the_view() {
        let f = 2;
        let mut views = ViewTracker::new(f);
        for honest in 0..5 {
            views.observe(honest, 7);
        }
        // Liars claim a far future view, repeatedly.
        for _ in 0..3 {
            views.observe(5, u64::MAX);
            views.observe(6, 1_000_000);
        }
        assert_eq!(views.view(), 7);
        // Nor can they drag it back by reporting old views.
        views.observe(5, 0);
        views.observe(6, 0);
        assert_eq!(views.view(), 7);
    }

    #[test]
    fn a_replica_reporting_twice_counts_once_for_the_view() {
        let mut views = ViewTracker::new(1);
        views.observe(2, 9);
        views.observe(2, 9);
        views.observe(2, 10);
        assert_eq!(views.view(), 0);
        views.observe(0, 9);
        assert_eq!(views.view(), 9);
    }
}

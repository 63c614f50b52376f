//! A linearizability checker for a history of operations on registers, one register per key
//! (Wing and Gong's search with Lowe's cache of configurations, as Knossos and Porcupine run
//! it). Keys are independent, so each key's sub-history is checked alone.
//!
//! An operation whose outcome is unknown (its client timed out) may have taken effect at any
//! moment after its invocation, or never: it never returns, and the search may linearize it
//! anywhere after its invocation or leave it out.

use std::collections::{BTreeMap, HashSet};

/// What a client asked of one key, and what it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the value.
    Put { value: String },
    /// Read the value; `None` in the outcome means absent.
    Get,
    /// Set `new` if the value is `expected` (`None`: absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A put completed.
    Done,
    /// A get returned this value.
    Read(Option<String>),
    /// A cas swapped.
    Swapped,
    /// A cas did not swap: the key held this value.
    Mismatch(Option<String>),
    /// It certainly did not take effect.
    Failed,
    /// It may or may not have taken effect.
    Unknown,
}

/// One operation of the history. Times are on one clock (nanoseconds from the start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (a sequential process) that ran it.
    pub client: usize,
    pub key: String,
    pub action: Action,
    pub outcome: Outcome,
    pub invoked: u64,
    /// When the outcome arrived; ignored for [`Outcome::Unknown`].
    pub completed: u64,
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains what the clients saw.
    NotLinearizable,
    /// The search gave up after this many configurations.
    GaveUp(usize),
}

/// Configurations the search may visit per key before it gives up.
pub const SEARCH_BUDGET: usize = 2_000_000;

/// What the checker found in a whole history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Judgement {
    /// `linearizable`, `not-linearizable` or `unknown` (the search gave up on some key).
    pub verdict: &'static str,
    /// Operations the checker considered: those that completed, and writes of unknown outcome.
    pub checked: usize,
    /// Keys the history touches.
    pub keys: usize,
    pub keys_not_linearizable: Vec<String>,
    pub keys_unknown: Vec<String>,
}

impl Judgement {
    pub fn linearizable(&self) -> bool {
        self.verdict == "linearizable"
    }
}

/// Checks `history` key by key and sums up.
pub fn judge(history: &[Operation], budget: usize) -> Judgement {
    let checked = (history.iter())
        .filter(|op| match op.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => op.action != Action::Get,
            _ => true,
        })
        .count();
    let verdicts = check(history, budget);
    let keys_with = |wanted: fn(&Verdict) -> bool| -> Vec<String> {
        (verdicts.iter())
            .filter(|(_, v)| wanted(v))
            .map(|(key, _)| key.clone())
            .collect()
    };
    let keys_not_linearizable = keys_with(|v| *v == Verdict::NotLinearizable);
    let keys_unknown = keys_with(|v| matches!(v, Verdict::GaveUp(_)));
    let verdict = if !keys_not_linearizable.is_empty() {
        "not-linearizable"
    } else if !keys_unknown.is_empty() {
        "unknown"
    } else {
        "linearizable"
    };
    Judgement {
        verdict,
        checked,
        keys: verdicts.len(),
        keys_not_linearizable,
        keys_unknown,
    }
}

/// Checks every key's sub-history; the result is in key order.
pub fn check(history: &[Operation], budget: usize) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
        .into_iter()
        .map(|(key, ops)| (key.to_string(), check_register(&ops, budget)))
        .collect()
}

/// A register value, interned: `None` is absent.
type Value = Option<u32>;

/// One operation of a key, with its values interned.
#[derive(Clone, Copy, Debug)]
enum Step {
    Put(u32),
    Get(Value),
    CasSwapped {
        expected: Value,
        new: u32,
    },
    CasMismatch {
        expected: Value,
        seen: Value,
    },
    /// A cas whose outcome is unknown: it swaps if the value is `expected`.
    CasUnknown {
        expected: Value,
        new: u32,
    },
}

impl Step {
    /// The register after this step from `state`, or `None` if the step's outcome is
    /// impossible from `state`.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Put(value) => Some(Some(value)),
            Step::Get(seen) => (seen == state).then_some(state),
            Step::CasSwapped { expected, new } => (expected == state).then_some(Some(new)),
            Step::CasMismatch { expected, seen } => {
                (expected != state && seen == state).then_some(state)
            }
            Step::CasUnknown { expected, new } => {
                Some(if expected == state { Some(new) } else { state })
            }
        }
    }
}

#[derive(Default)]
struct Interner(BTreeMap<String, u32>);

impl Interner {
    fn id(&mut self, value: &str) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(value.to_string()).or_insert(next)
    }

    fn value(&mut self, value: &Option<String>) -> Value {
        value.as_deref().map(|v| self.id(v))
    }
}

/// A node of the search's event list: an invocation or a completion of operation `op`.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: its completion's node, if it has one.
    completion: Option<usize>,
}

const NIL: usize = usize::MAX;

fn check_register(ops: &[&Operation], budget: usize) -> Verdict {
    let mut values = Interner::default();
    let mut steps = Vec::new();
    // (time, is_completion, op): invocations sort before completions at the same instant, so
    // operations that touch in time count as concurrent.
    let mut times = Vec::new();
    for op in ops {
        let step = match (&op.action, &op.outcome) {
            // Reads without an answer, and what certainly did not happen, constrain nothing.
            (_, Outcome::Failed) | (Action::Get, Outcome::Unknown) => continue,
            (Action::Put { value }, Outcome::Done | Outcome::Unknown) => {
                Step::Put(values.id(value))
            }
            (Action::Get, Outcome::Read(seen)) => Step::Get(values.value(seen)),
            (Action::Cas { expected, new }, Outcome::Swapped) => Step::CasSwapped {
                expected: values.value(expected),
                new: values.id(new),
            },
            (Action::Cas { expected, .. }, Outcome::Mismatch(seen)) => Step::CasMismatch {
                expected: values.value(expected),
                seen: values.value(seen),
            },
            (Action::Cas { expected, new }, Outcome::Unknown) => Step::CasUnknown {
                expected: values.value(expected),
                new: values.id(new),
            },
            // An outcome that does not fit its action cannot be explained.
            _ => return Verdict::NotLinearizable,
        };
        let index = steps.len();
        steps.push(step);
        times.push((op.invoked, false, index));
        if op.outcome != Outcome::Unknown {
            times.push((op.completed.max(op.invoked), true, index));
        }
    }
    times.sort_unstable();

    // A doubly linked list of events behind a head node at index 0.
    let mut events = vec![Event {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: NIL,
        completion: None,
    }];
    let mut call_node = vec![NIL; steps.len()];
    for &(_, is_completion, op) in &times {
        let index = events.len();
        events[index - 1].next = index;
        events.push(Event {
            op,
            is_call: !is_completion,
            prev: index - 1,
            next: NIL,
            completion: None,
        });
        if is_completion {
            events[call_node[op]].completion = Some(index);
        } else {
            call_node[op] = index;
        }
    }

    let words = steps.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state: Value = None;
    let mut entry = events[0].next;
    loop {
        // The end of the list: only operations of unknown outcome remain, and they may be
        // left out.
        if entry == NIL {
            return Verdict::Linearizable;
        }
        let event = events[entry];
        if event.is_call {
            if let Some(next_state) = steps[event.op].apply(state) {
                linearized[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    if seen.len() > budget {
                        return Verdict::GaveUp(seen.len());
                    }
                    stack.push((entry, state));
                    state = next_state;
                    lift(&mut events, entry);
                    entry = events[0].next;
                    continue;
                }
                linearized[event.op / 64] &= !(1 << (event.op % 64));
            }
            entry = event.next;
        } else {
            // An operation completed before anything explained it: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            state = previous;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, call);
            entry = events[call].next;
        }
    }
}

/// Takes a call and its completion out of the list.
fn lift(events: &mut [Event], call: usize) {
    unlink(events, call);
    if let Some(done) = events[call].completion {
        unlink(events, done);
    }
}

/// Puts back what [`lift`] took out (in reverse order, so the links it kept are right).
fn unlift(events: &mut [Event], call: usize) {
    if let Some(done) = events[call].completion {
        relink(events, done);
    }
    relink(events, call);
}

fn unlink(events: &mut [Event], node: usize) {
    let Event { prev, next, .. } = events[node];
    events[prev].next = next;
    if next != NIL {
        events[next].prev = prev;
    }
}

fn relink(events: &mut [Event], node: usize) {
    let Event { prev, next, .. } = events[node];
    events[prev].next = node;
    if next != NIL {
        events[next].prev = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: usize,
        action: Action,
        outcome: Outcome,
        invoked: u64,
        completed: u64,
    ) -> Operation {
        Operation {
            client,
            key: "k".into(),
            action,
            outcome,
            invoked,
            completed,
        }
    }

    fn put(v: &str) -> Action {
        Action::Put { value: v.into() }
    }

    fn read(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(str::to_string))
    }

    fn verdict(history: &[Operation]) -> Verdict {
        check(history, SEARCH_BUDGET).remove("k").unwrap()
    }

    #[test]
    fn sequential_reads_see_the_last_write() {
        let history = [
            op(0, Action::Get, read(None), 0, 1),
            op(0, put("a"), Outcome::Done, 2, 3),
            op(1, Action::Get, read(Some("a")), 4, 5),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let history = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, put("b"), Outcome::Done, 2, 3),
            op(1, Action::Get, read(Some("a")), 4, 5),
        ];
        assert_eq!(verdict(&history), Verdict::NotLinearizable);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write of b: it may see a or b, but not both orders at once.
        let history = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, put("b"), Outcome::Done, 2, 10),
            op(1, Action::Get, read(Some("b")), 3, 4),
            op(2, Action::Get, read(Some("a")), 5, 6),
        ];
        assert_eq!(verdict(&history), Verdict::NotLinearizable);
        let history = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, put("b"), Outcome::Done, 2, 10),
            op(1, Action::Get, read(Some("a")), 3, 4),
            op(2, Action::Get, read(Some("b")), 5, 6),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let late = [
            op(0, put("a"), Outcome::Unknown, 0, 0),
            op(1, Action::Get, read(None), 5, 6),
            op(1, Action::Get, read(Some("a")), 7, 8),
        ];
        assert_eq!(verdict(&late), Verdict::Linearizable);
        let never = [
            op(0, put("a"), Outcome::Unknown, 0, 0),
            op(1, Action::Get, read(None), 5, 6),
        ];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        // But not before it was invoked.
        let early = [
            op(1, Action::Get, read(Some("a")), 0, 1),
            op(0, put("a"), Outcome::Unknown, 2, 0),
        ];
        assert_eq!(verdict(&early), Verdict::NotLinearizable);
        // Nor twice: once overwritten, it cannot reappear.
        let twice = [
            op(0, put("a"), Outcome::Unknown, 0, 0),
            op(1, Action::Get, read(Some("a")), 1, 2),
            op(1, put("b"), Outcome::Done, 3, 4),
            op(1, Action::Get, read(Some("a")), 5, 6),
        ];
        assert_eq!(verdict(&twice), Verdict::NotLinearizable);
    }

    #[test]
    fn cas_swaps_only_from_the_expected_value() {
        let cas = |expected: Option<&str>, new: &str| Action::Cas {
            expected: expected.map(str::to_string),
            new: new.into(),
        };
        let good = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, cas(Some("a"), "b"), Outcome::Swapped, 2, 3),
            op(
                1,
                cas(Some("a"), "c"),
                Outcome::Mismatch(Some("b".into())),
                4,
                5,
            ),
            op(1, Action::Get, read(Some("b")), 6, 7),
        ];
        assert_eq!(verdict(&good), Verdict::Linearizable);
        // Two swaps from the same value, one after the other, cannot both succeed.
        let double = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, cas(Some("a"), "b"), Outcome::Swapped, 2, 3),
            op(1, cas(Some("a"), "c"), Outcome::Swapped, 4, 5),
        ];
        assert_eq!(verdict(&double), Verdict::NotLinearizable);
        // A mismatch must report the value the key held.
        let lying = [
            op(0, put("a"), Outcome::Done, 0, 1),
            op(
                1,
                cas(Some("x"), "c"),
                Outcome::Mismatch(Some("z".into())),
                2,
                3,
            ),
        ];
        assert_eq!(verdict(&lying), Verdict::NotLinearizable);
    }

    #[test]
    fn failed_operations_and_other_keys_do_not_interfere() {
        let mut history = vec![
            op(0, put("a"), Outcome::Done, 0, 1),
            op(0, put("b"), Outcome::Failed, 2, 3),
            op(1, Action::Get, read(Some("a")), 4, 5),
        ];
        let mut other = op(2, put("b"), Outcome::Done, 0, 1);
        other.key = "j".into();
        history.push(other);
        let verdicts = check(&history, SEARCH_BUDGET);
        assert_eq!(verdicts["k"], Verdict::Linearizable);
        assert_eq!(verdicts["j"], Verdict::Linearizable);
    }

    #[test]
    fn the_search_gives_up_at_its_budget() {
        // Many concurrent unknown writes and no way to order the final read: the search
        // explores many subsets before it could conclude.
        let mut history: Vec<Operation> = (0..20)
            .map(|i| op(i, put(&format!("v{i}")), Outcome::Unknown, 0, 0))
            .collect();
        history.push(op(99, Action::Get, read(Some("never")), 1, 2));
        assert!(matches!(check(&history, 1000)["k"], Verdict::GaveUp(_)));
        assert_eq!(check(&history[..3], 1000)["k"], Verdict::Linearizable);
    }
}

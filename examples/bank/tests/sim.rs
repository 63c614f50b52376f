//! The bank in the deterministic simulator: the randomized campaign's scenarios (Byzantine
//! replicas, crashes, lost disks, partitions, a lossy network) with the bank as the replicated
//! application. The simulator checks agreement among correct replicas as for any application;
//! the model here checks the bank's own rules: every ordered result is what a sequential ledger
//! gives in execution order (so no overdraft is ever accepted), every read-only balance is one
//! the account held, and every correct replica ends with the ledger's balances and with no more
//! and no less money than the accounts were opened with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pbft_bank::{Bank, BankOp, BankResult, Refusal};
use pbft_core::app::StateMachine;
use pbft_core::messages::{Outcome, Seq, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use testnet::sim::app::{AppModel, ClientOps, SimApp};
use testnet::sim::campaign::{Scenario, Step};
use testnet::sim::{Issued, SimClient};

/// Seeds of the campaign run with the bank.
const SEEDS: u64 = 40;

/// Accounts the clients open, pay from and into, and read.
const ACCOUNTS: u64 = 5;

fn account(index: u64) -> String {
    format!("acct-{index}")
}

/// The bank with clients that open accounts, transfer (often more than the payer holds) and
/// read balances; counts what the ledger model saw.
#[derive(Default)]
struct BankSim {
    transfers: Arc<AtomicUsize>,
    overdrafts_refused: Arc<AtomicUsize>,
}

impl SimApp for BankSim {
    fn state_machine(&self) -> Box<dyn StateMachine> {
        Box::new(Bank::new())
    }

    fn client_ops(&self, index: usize, seed: u64) -> Box<dyn ClientOps> {
        Box::new(Customer {
            rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x5851_f42d)),
        })
    }

    fn model(&self) -> Box<dyn AppModel> {
        Box::new(Ledger {
            transfers: self.transfers.clone(),
            overdrafts_refused: self.overdrafts_refused.clone(),
            ..Ledger::default()
        })
    }
}

struct Customer {
    rng: ChaCha8Rng,
}

impl ClientOps for Customer {
    fn next_op(&mut self, _timestamp: Timestamp) -> Issued {
        let rng = &mut self.rng;
        let pick = |rng: &mut ChaCha8Rng| account(rng.random_range(0..ACCOUNTS));
        let (op, read_only) = match rng.random_range(0..10) {
            0 => {
                let account = pick(rng);
                let balance = rng.random_range(0..=500);
                (BankOp::Open { account, balance }, false)
            }
            1..8 => {
                let (from, to) = (pick(rng), pick(rng));
                let amount = rng.random_range(0..=300);
                (BankOp::Transfer { from, to, amount }, false)
            }
            _ => (BankOp::Balance { account: pick(rng) }, true),
        };
        Issued {
            op: op.encode(),
            read_only,
        }
    }

    fn on_accepted(&mut self, _op: &[u8], _outcome: &Outcome) {}
}

/// A sequential ledger written apart from [`Bank`], so a mistake in one shows against the
/// other.
#[derive(Default)]
struct Ledger {
    balances: BTreeMap<String, u64>,
    /// The money the opened accounts brought in.
    opened: u64,
    seq: Seq,
    /// Each account's balance (`None`: not open) after each sequence number that changed it.
    history: BTreeMap<String, Vec<(Seq, Option<u64>)>>,
    transfers: Arc<AtomicUsize>,
    overdrafts_refused: Arc<AtomicUsize>,
}

impl Ledger {
    fn execute(&mut self, op: BankOp) -> BankResult {
        let refused = BankResult::Refused;
        match op {
            BankOp::Open { account, balance } => {
                if self.balances.contains_key(&account) {
                    return refused(Refusal::AccountExists);
                }
                self.opened += balance;
                self.balances.insert(account, balance);
                BankResult::Opened
            }
            BankOp::Transfer { from, to, amount } => {
                if from == to {
                    return refused(Refusal::SameAccount);
                }
                for name in [&from, &to] {
                    if !self.balances.contains_key(name) {
                        return refused(Refusal::NoSuchAccount(name.clone()));
                    }
                }
                let balance = self.balances[&from];
                if balance < amount {
                    self.overdrafts_refused.fetch_add(1, Ordering::Relaxed);
                    return refused(Refusal::InsufficientFunds { balance });
                }
                self.transfers.fetch_add(1, Ordering::Relaxed);
                *self.balances.get_mut(&from).unwrap() -= amount;
                *self.balances.get_mut(&to).unwrap() += amount;
                BankResult::Transferred {
                    from: self.balances[&from],
                    to: self.balances[&to],
                }
            }
            BankOp::Balance { account } => match self.balances.get(&account) {
                Some(balance) => BankResult::Balance(*balance),
                None => refused(Refusal::NoSuchAccount(account)),
            },
        }
    }
}

impl AppModel for Ledger {
    fn apply(&mut self, seq: Seq, op: &[u8]) -> Vec<u8> {
        self.seq = seq;
        let op = BankOp::decode(op).expect("the clients encode their operations");
        let touched: Vec<String> = match &op {
            BankOp::Open { account, .. } => vec![account.clone()],
            BankOp::Transfer { from, to, .. } => vec![from.clone(), to.clone()],
            BankOp::Balance { .. } => Vec::new(),
        };
        let result = self.execute(op);
        for account in touched {
            let balance = self.balances.get(&account).copied();
            let changes = self.history.entry(account).or_default();
            if changes.last().map(|(_, held)| *held) != Some(balance) {
                changes.push((seq, balance));
            }
        }
        result.encode()
    }

    fn check_read(&self, op: &[u8], floor: Seq, outcome: &Outcome) -> Result<(), String> {
        let Ok(BankOp::Balance { account }) = BankOp::decode(op) else {
            return Err(format!("read: {op:?} is not a balance"));
        };
        let Outcome::Done(bytes) = outcome else {
            return Ok(());
        };
        let read = match BankResult::decode(bytes) {
            Ok(BankResult::Balance(balance)) => Some(balance),
            Ok(BankResult::Refused(Refusal::NoSuchAccount(_))) => None,
            other => return Err(format!("read: balance of {account} accepted as {other:?}")),
        };
        let changes = self.history.get(&account).map(Vec::as_slice).unwrap_or(&[]);
        let at_floor = changes
            .iter()
            .rev()
            .find(|(seq, _)| *seq <= floor)
            .and_then(|(_, held)| *held);
        let later = changes
            .iter()
            .any(|(seq, held)| *seq > floor && *held == read);
        if at_floor == read || later {
            return Ok(());
        }
        Err(format!(
            "linearizability: {account}'s balance read as {read:?}, which it did not hold between seq {floor} and seq {}",
            self.seq
        ))
    }

    fn check_final(
        &self,
        state: &dyn StateMachine,
        caught_up: bool,
        _clients: &[SimClient],
    ) -> Result<(), String> {
        let mut bank = Bank::new();
        bank.restore(&state.snapshot())
            .map_err(|e| format!("bank: the replica's own snapshot does not restore: {e}"))?;
        let held: u64 = bank.accounts().values().sum();
        if held != bank.supply() {
            return Err(format!(
                "bank: the balances sum to {held}, the supply is {}",
                bank.supply()
            ));
        }
        if caught_up {
            if bank.accounts() != &self.balances {
                return Err(format!(
                    "bank: the replica holds {:?}, the sequential ledger {:?} after seq {}",
                    bank.accounts(),
                    self.balances,
                    self.seq
                ));
            }
            if held != self.opened {
                return Err(format!(
                    "bank: money not conserved: {held} held, {} brought in",
                    self.opened
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn the_bank_passes_the_simulators_checks_under_byzantine_replicas_and_crashes() {
    let app = Arc::new(BankSim::default());
    let (mut byzantine, mut crashes) = (0, 0);
    for seed in 0..SEEDS {
        let scenario = Scenario::generate(seed);
        byzantine += usize::from(!scenario.faulty.is_empty());
        crashes += usize::from(scenario.steps.iter().any(|step| {
            matches!(
                step,
                Step::Crash(_) | Step::CrashDuringWrite(..) | Step::Rejoin(_)
            )
        }));
        if let Err(violation) = scenario.run_app(app.clone()) {
            panic!("{}\n{}", violation.0, scenario.describe());
        }
    }
    // The campaign put the bank through faults, and the clients through both outcomes of a
    // transfer.
    assert!(
        byzantine > SEEDS as usize / 4,
        "{byzantine} runs with Byzantine replicas"
    );
    assert!(crashes > SEEDS as usize / 4, "{crashes} runs with crashes");
    let transfers = app.transfers.load(Ordering::Relaxed);
    let refused = app.overdrafts_refused.load(Ordering::Relaxed);
    assert!(
        transfers > 100 && refused > 100,
        "{transfers} transfers, {refused} overdrafts refused"
    );
}

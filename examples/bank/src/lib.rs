//! A bank ledger replicated by PBFT: an application of its own that the replicas run through
//! the [`StateMachine`] trait, with no change to the node.
//!
//! Accounts hold `u64` balances. Opening an account brings new money in; a transfer moves money
//! between two accounts and is refused, leaving every balance as it was, when it would overdraw
//! the payer. So no balance goes below zero and the money in the bank is always what the
//! accounts were opened with. `bank-node` is `pbft-node` with this ledger; [`submit`] and the
//! `bank-client` binary talk to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use pbft_client::{Client, ClientError};
use pbft_core::app::{AppFactory, SnapshotError, StateMachine};
use pbft_core::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

/// The longest account name, in bytes: names are kept in the replicated state.
pub const MAX_NAME_BYTES: usize = 64;

/// Largest snapshot [`Bank::restore`] accepts.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// An operation on the ledger, as clients encode it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankOp {
    /// Opens `account` holding `balance` of new money.
    Open { account: String, balance: u64 },
    /// Moves `amount` from `from` to `to`.
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
    /// Reads `account`'s balance; read-only.
    Balance { account: String },
}

impl BankOp {
    /// A transfer of `amount` from `from` to `to`.
    pub fn transfer(from: &str, to: &str, amount: u64) -> BankOp {
        BankOp::Transfer {
            from: from.into(),
            to: to.into(),
            amount,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<BankOp, CodecError> {
        codec::decode(bytes, bytes.len() as u64)
    }

    fn names(&self) -> Vec<&str> {
        match self {
            BankOp::Open { account, .. } | BankOp::Balance { account } => vec![account],
            BankOp::Transfer { from, to, .. } => vec![from, to],
        }
    }
}

/// The result of a [`BankOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankResult {
    Opened,
    /// A transfer that took place, with the payer's and the payee's balances after it.
    Transferred {
        from: u64,
        to: u64,
    },
    Balance(u64),
    /// Nothing changed; why.
    Refused(Refusal),
    /// The bytes did not decode to an operation, or a name is empty or too long.
    Invalid,
}

impl BankResult {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<BankResult, CodecError> {
        codec::decode(bytes, bytes.len() as u64)
    }
}

/// Why the ledger refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the account exists already")]
    AccountExists,
    #[error("no such account: {0}")]
    NoSuchAccount(String),
    #[error("insufficient funds: the balance is {balance}")]
    InsufficientFunds { balance: u64 },
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// All the money in the bank must fit a `u64`, so that no balance can overflow.
    #[error("the bank cannot hold that much money")]
    SupplyOverflow,
}

/// The ledger: balances by account name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bank {
    accounts: BTreeMap<String, u64>,
    /// The sum of all balances.
    supply: u64,
}

impl Bank {
    pub fn new() -> Bank {
        Bank::default()
    }

    /// Makes empty ledgers, for the node.
    pub fn factory() -> AppFactory {
        Arc::new(|| Box::new(Bank::new()))
    }

    pub fn balance(&self, account: &str) -> Option<u64> {
        self.accounts.get(account).copied()
    }

    pub fn accounts(&self) -> &BTreeMap<String, u64> {
        &self.accounts
    }

    /// All the money in the bank: what the accounts were opened with.
    pub fn supply(&self) -> u64 {
        self.supply
    }

    pub fn apply(&mut self, op: BankOp) -> BankResult {
        if !op.names().into_iter().all(valid_name) {
            return BankResult::Invalid;
        }
        let refused = BankResult::Refused;
        match op {
            BankOp::Open { account, balance } => {
                if self.accounts.contains_key(&account) {
                    return refused(Refusal::AccountExists);
                }
                let Some(supply) = self.supply.checked_add(balance) else {
                    return refused(Refusal::SupplyOverflow);
                };
                self.supply = supply;
                self.accounts.insert(account, balance);
                BankResult::Opened
            }
            BankOp::Transfer { from, to, amount } => {
                if from == to {
                    return refused(Refusal::SameAccount);
                }
                let (Some(&payer), Some(&payee)) =
                    (self.accounts.get(&from), self.accounts.get(&to))
                else {
                    let missing = if self.accounts.contains_key(&from) {
                        to
                    } else {
                        from
                    };
                    return refused(Refusal::NoSuchAccount(missing));
                };
                if amount > payer {
                    return refused(Refusal::InsufficientFunds { balance: payer });
                }
                // Cannot overflow: the payee's new balance is at most the supply, a u64.
                let (payer, payee) = (payer - amount, payee + amount);
                self.accounts.insert(from, payer);
                self.accounts.insert(to, payee);
                BankResult::Transferred {
                    from: payer,
                    to: payee,
                }
            }
            BankOp::Balance { account } => self.read(&account),
        }
    }

    fn read(&self, account: &str) -> BankResult {
        if !valid_name(account) {
            return BankResult::Invalid;
        }
        match self.accounts.get(account) {
            Some(balance) => BankResult::Balance(*balance),
            None => BankResult::Refused(Refusal::NoSuchAccount(account.to_string())),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES
}

impl StateMachine for Bank {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        match BankOp::decode(op) {
            Ok(op) => self.apply(op),
            Err(_) => BankResult::Invalid,
        }
        .encode()
    }

    fn query(&self, op: &[u8]) -> Option<Vec<u8>> {
        match BankOp::decode(op) {
            Ok(BankOp::Balance { account }) => Some(self.read(&account).encode()),
            _ => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.accounts)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let accounts: BTreeMap<String, u64> = codec::decode(snapshot, MAX_SNAPSHOT_BYTES)
            .map_err(|e| SnapshotError(e.to_string()))?;
        if let Some(name) = accounts.keys().find(|name| !valid_name(name)) {
            return Err(SnapshotError(format!("invalid account name {name:?}")));
        }
        let supply = accounts
            .values()
            .try_fold(0u64, |sum, balance| sum.checked_add(*balance))
            .ok_or_else(|| SnapshotError("the balances overflow".into()))?;
        *self = Bank { accounts, supply };
        Ok(())
    }
}

/// Why [`submit`] has no result.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the replicas answered with an undecodable result: {0}")]
    Undecodable(CodecError),
}

/// Submits `op` through `client`: a balance as a read-only request, anything else ordered.
pub async fn submit(client: &Client, op: &BankOp) -> Result<BankResult, SubmitError> {
    let bytes = match op {
        BankOp::Balance { .. } => client.submit_read(op.encode()).await?,
        _ => client.submit(op.encode()).await?,
    };
    BankResult::decode(&bytes).map_err(SubmitError::Undecodable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(bank: &mut Bank, account: &str, balance: u64) {
        let op = BankOp::Open {
            account: account.into(),
            balance,
        };
        assert_eq!(bank.apply(op), BankResult::Opened);
    }

    #[test]
    fn a_transfer_that_would_overdraw_is_refused_and_changes_nothing() {
        let mut bank = Bank::new();
        open(&mut bank, "alice", 100);
        open(&mut bank, "bob", 5);
        let before = bank.clone();
        let refused = bank.apply(BankOp::transfer("bob", "alice", 6));
        assert_eq!(
            refused,
            BankResult::Refused(Refusal::InsufficientFunds { balance: 5 })
        );
        assert_eq!(bank, before);
        assert_eq!(
            bank.apply(BankOp::transfer("alice", "bob", 100)),
            BankResult::Transferred { from: 0, to: 105 }
        );
        assert_eq!(bank.supply(), 105);
        assert_eq!(
            bank.apply(BankOp::transfer("alice", "alice", 0)),
            BankResult::Refused(Refusal::SameAccount)
        );
        assert_eq!(
            bank.apply(BankOp::transfer("alice", "carol", 0)),
            BankResult::Refused(Refusal::NoSuchAccount("carol".into()))
        );
    }

    #[test]
    fn the_supply_never_overflows() {
        let mut bank = Bank::new();
        open(&mut bank, "a", u64::MAX - 1);
        let op = BankOp::Open {
            account: "b".into(),
            balance: 2,
        };
        assert_eq!(bank.apply(op), BankResult::Refused(Refusal::SupplyOverflow));
        assert_eq!(bank.supply(), u64::MAX - 1);
    }

    #[test]
    fn hostile_bytes_give_a_result_not_a_panic() {
        let mut bank = Bank::new();
        let invalid = BankResult::Invalid.encode();
        for bytes in [
            &[][..],
            &[0xff; 3][..],
            &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert_eq!(bank.execute(bytes), invalid);
            assert_eq!(bank.query(bytes), None);
        }
        let long = BankOp::Open {
            account: "x".repeat(MAX_NAME_BYTES + 1),
            balance: 1,
        };
        assert_eq!(bank.execute(&long.encode()), invalid);
        let mut op = BankOp::Balance {
            account: "ab".into(),
        }
        .encode();
        // Not UTF-8.
        let last = op.len() - 1;
        op[last] = 0xff;
        assert_eq!(bank.execute(&op), invalid);
        assert_eq!(bank, Bank::new());
    }

    #[test]
    fn balances_are_answered_read_only_and_the_rest_is_ordered() {
        let mut bank = Bank::new();
        open(&mut bank, "alice", 7);
        let read = |account: &str| BankOp::Balance {
            account: account.into(),
        };
        let answer = bank.query(&read("alice").encode()).unwrap();
        assert_eq!(BankResult::decode(&answer).unwrap(), BankResult::Balance(7));
        assert!(bank
            .query(&BankOp::transfer("alice", "bob", 1).encode())
            .is_none());
    }

    #[test]
    fn a_snapshot_restores_the_same_ledger_and_a_bad_one_is_refused() {
        let mut bank = Bank::new();
        open(&mut bank, "alice", 7);
        open(&mut bank, "bob", 9);
        bank.apply(BankOp::transfer("bob", "alice", 4));
        let mut restored = Bank::new();
        restored.restore(&bank.snapshot()).unwrap();
        assert_eq!(restored, bank);
        assert_eq!(restored.partition_digests(), bank.partition_digests());
        assert_ne!(Bank::new().partition_digests(), bank.partition_digests());
        let overflowing: BTreeMap<String, u64> =
            [("a".to_string(), u64::MAX), ("b".to_string(), 1)].into();
        assert!(restored.restore(&codec::encode(&overflowing)).is_err());
        assert!(restored.restore(b"junk").is_err());
        assert_eq!(restored, bank);
    }
}

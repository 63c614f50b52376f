//! The bank on a real testnet: four `bank-node` processes on 127.0.0.1, the view-0 primary
//! Byzantine (it equivocates), started by the `testnet` launcher, driven through the client
//! library. Nothing here asserts timing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pbft_bank::{submit, BankOp, BankResult, Refusal};
use pbft_client::Client;
use testnet::launcher::{self, Layout, State, UpOptions};
use tokio::task::JoinSet;

/// Stops every replica when dropped, even when the test fails.
struct Testnet {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = launcher::down(&self.path);
    }
}

async fn run(client: &Client, op: BankOp) -> BankResult {
    submit(client, &op)
        .await
        .unwrap_or_else(|e| panic!("{op:?}: {e}"))
}

#[test]
fn transfers_on_a_testnet_with_a_byzantine_primary_conserve_money_and_never_overdraw() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let net = Testnet {
            path: dir.path().join("net"),
            _dir: dir,
        };
        let mut options = UpOptions::new(1);
        options.dir = net.path.clone();
        options.byzantine = Some(1);
        options.node_bin = Some(env!("CARGO_BIN_EXE_bank-node").into());
        options.protocol.view_change_timeout_ms = Some(1000);
        options.detach = true;
        options.quiet = true;
        // Generous: the replicas share two cores with whatever else runs.
        options.up_timeout = Duration::from_secs(120);
        launcher::up(options).await.unwrap();

        let layout = Layout::new(&net.path).unwrap();
        let state = State::load(&layout).unwrap();
        let mut setup = launcher::report::fresh_client_setup(&layout, &state).unwrap();
        setup.request_timeout = Duration::from_secs(120);
        let client = Client::connect(setup).await.unwrap();

        for (account, balance) in [("alice", 1000), ("bob", 1000), ("carol", 0)] {
            let open = BankOp::Open {
                account: account.into(),
                balance,
            };
            assert_eq!(run(&client, open).await, BankResult::Opened);
        }
        // Concurrent transfers that all succeed in any order.
        let client = Arc::new(client);
        let mut transfers = JoinSet::new();
        for _ in 0..20 {
            for op in [
                BankOp::transfer("alice", "carol", 10),
                BankOp::transfer("bob", "carol", 5),
            ] {
                let client = client.clone();
                transfers.spawn(async move { run(&client, op).await });
            }
        }
        while let Some(result) = transfers.join_next().await {
            let result = result.unwrap();
            assert!(
                matches!(result, BankResult::Transferred { .. }),
                "{result:?}"
            );
        }
        // Carol holds 300: more is refused and changes nothing.
        assert_eq!(
            run(&client, BankOp::transfer("carol", "alice", 301)).await,
            BankResult::Refused(Refusal::InsufficientFunds { balance: 300 })
        );
        assert_eq!(
            run(&client, BankOp::transfer("carol", "alice", 300)).await,
            BankResult::Transferred { from: 0, to: 1100 }
        );
        let mut total = 0;
        for (account, expected) in [("alice", 1100), ("bob", 900), ("carol", 0)] {
            let read = BankOp::Balance {
                account: account.into(),
            };
            assert_eq!(
                run(&client, read).await,
                BankResult::Balance(expected),
                "{account}"
            );
            total += expected;
        }
        assert_eq!(total, 2000, "money is conserved");
    });
}

//! What the end-to-end tests of the `testnet` binary share.

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub const BIN: &str = env!("CARGO_BIN_EXE_testnet");

/// One cluster at a time: several would starve each other of the two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `testnet ARGS...` to completion.
pub fn testnet(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the testnet binary runs")
}

/// An output's exit code, stdout and stderr, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

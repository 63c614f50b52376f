//! `bank-node`: `pbft-node` replicating the bank ledger instead of the key-value store; the
//! same subcommands, configuration files and exit codes.

use std::process::ExitCode;

use pbft_bank::Bank;

fn main() -> ExitCode {
    pbft_node::cli::main(
        "bank-node",
        "A PBFT replica of the bank ledger",
        Bank::factory(),
    )
}

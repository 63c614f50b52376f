//! `bank-client`: opens accounts, transfers money and reads balances on a cluster of
//! `bank-node` replicas, with `pbft-client`'s configuration file.
//!
//! Exit codes: 0 done; 1 the ledger refused the operation; 2 bad usage or configuration; 3 the
//! cluster did not answer in time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pbft_bank::{submit, BankOp, BankResult, SubmitError, MAX_NAME_BYTES};
use pbft_client::{load_client_config, Client, ClientError};

#[derive(Parser)]
#[command(
    name = "bank-client",
    version,
    about = "A client of the replicated bank ledger"
)]
struct Cli {
    /// The client configuration file, as `pbft-client` reads it.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open ACCOUNT holding BALANCE.
    Open { account: String, balance: u64 },
    /// Move AMOUNT from FROM to TO; refused if FROM holds less. Prints both balances after.
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
    /// Print ACCOUNT's balance.
    Balance { account: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let op = match cli.command {
        Command::Open { account, balance } => BankOp::Open { account, balance },
        Command::Transfer { from, to, amount } => BankOp::Transfer { from, to, amount },
        Command::Balance { account } => BankOp::Balance { account },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: Result<BankResult, SubmitError> = runtime.block_on(async {
        let setup = load_client_config(&cli.config)?;
        let client = Client::connect(setup).await?;
        let result = submit(&client, &op).await;
        client.close().await;
        result
    });
    match result {
        Ok(BankResult::Opened) => println!("ok"),
        Ok(BankResult::Transferred { from, to }) => println!("ok: {from} {to}"),
        Ok(BankResult::Balance(balance)) => println!("{balance}"),
        Ok(BankResult::Refused(refusal)) => {
            eprintln!("refused: {refusal}");
            return ExitCode::from(1);
        }
        Ok(BankResult::Invalid) => {
            eprintln!("error: invalid operation (account names are 1 to {MAX_NAME_BYTES} bytes)");
            return ExitCode::from(2);
        }
        Err(SubmitError::Client(
            error @ (ClientError::Timeout | ClientError::Closed | ClientError::SessionsFull),
        )) => {
            eprintln!("unavailable: {error}");
            return ExitCode::from(3);
        }
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

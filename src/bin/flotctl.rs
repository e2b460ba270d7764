//! flotctl, the flotilla command line.

use std::process::ExitCode;

use clap::Parser;
use flotilla::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

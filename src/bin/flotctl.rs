//! flotctl, the flotilla command line.

use std::process::ExitCode;

use clap::Parser;
use flotilla::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(usage) = cli.check() {
        usage.exit();
    }
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`flotctl list-units | head -1`) is not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

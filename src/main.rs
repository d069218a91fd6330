//! `strata`: the command line of the Strata layer store.

mod cli;
mod commands;
mod logging;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: library errors often repeat
/// their source in their own message.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    strata_daemon::error::chain(e.as_ref())
}

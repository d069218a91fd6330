//! `strata`: the command line of the Strata layer store.

mod cli;
mod commands;
mod logging;
mod output;
mod progress;
mod template;

use std::process::ExitCode;

include!(concat!(env!("OUT_DIR"), "/man_pages.rs"));

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go through stdout as everything else does (a
        // closed pipe ends the process as SIGPIPE would).
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let help = e.render();
            match std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                true => output::write_out(format_args!("{}", help.ansi())),
                false => output::write_out(format_args!("{help}")),
            }
            output::flush();
            output::end_if_closed();
            return ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    let result = commands::run(cli);
    output::end_if_closed();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if matches!(
                e.downcast_ref::<strata_daemon::Error>(),
                Some(strata_daemon::Error::NotStarted { .. })
            ) =>
        {
            eprintln!("error: {}", error_chain(&e));
            let code = match e.downcast_ref::<strata_daemon::Error>() {
                Some(strata_daemon::Error::NotStarted { code, .. }) => *code,
                _ => 1,
            };
            ExitCode::from(code as u8)
        }
        Err(e) if e.is::<commands::Cancelled>() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
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

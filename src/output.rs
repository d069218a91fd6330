//! What commands print: tables for people, and every write to stdout.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`strata
//! images | head -1`): Rust ignores SIGPIPE, so the write fails with EPIPE.
//! [`outln!`] and [`out!`] note it instead and drop what follows; once the
//! command has finished (its mounts, nodes and scratch files cleaned up as
//! it returns), `main` ends the process the way a C tool is ended (killed
//! by SIGPIPE: status 141 in a shell, no message). Any other write error
//! (a full disk under a redirect) is an error naming stdout.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether stdout's reader has gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

pub use strata_daemon::format::bytes;

/// Writes to stdout; see the module doc for how a failed write ends.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        failed(&e);
    }
}

/// Flushes stdout (before the process exits other than by returning).
pub fn flush() {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().flush() {
        failed(&e);
    }
}

fn failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
        return;
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1)
}

/// When stdout's reader went away during the command: ends the process as
/// SIGPIPE would (call once the command has cleaned up after itself).
pub fn end_if_closed() {
    if CLOSED.load(Ordering::Relaxed) {
        // SAFETY: signal(2) and raise(3) have no memory preconditions;
        // SIG_DFL for SIGPIPE terminates the process on delivery.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + libc::SIGPIPE);
    }
}

/// An error that came of stdout's reader going away (EPIPE somewhere in
/// its chain) marks stdout closed: `main` ends the process as SIGPIPE
/// would, rather than print it.
pub fn quiet_on_broken_pipe<E: Into<anyhow::Error>>(e: E) -> anyhow::Error {
    let e = e.into();
    let broken = e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken {
        CLOSED.store(true, Ordering::Relaxed);
    }
    e
}

/// `println!` to stdout, ending quietly when its reader has gone.
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout, ending quietly when its reader has gone.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows) {
        outln!("{line}");
    }
}

/// The lines of [`table`].
pub fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    out
}

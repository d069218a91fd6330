//! `strata run -t`: the container's process gets a pseudo-terminal of its
//! own, as docker gives one, never the caller's terminal itself (a process
//! holding the caller's terminal could push input into the caller's shell
//! with TIOCSTI). Its output is copied to the caller's stdout; with `-i`
//! the caller's stdin goes to it, the caller's terminal in raw mode
//! meanwhile (keys reach the process as typed: ^C is the process's, not
//! `strata run`'s); the caller's window size follows it (SIGWINCH).
//!
//! The copying threads start before `strata run` enters a new PID
//! namespace: a process may not start threads after unshare(CLONE_NEWPID).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::error::{Context, Result};

/// A pseudo-terminal with its copying under way.
pub struct Terminal {
    slave: Option<OwnedFd>,
    output: std::thread::JoinHandle<()>,
    raw: Option<RawMode>,
}

impl Terminal {
    /// Opens a pseudo-terminal the size of the caller's (if the caller has
    /// one), and starts copying its output to stdout and, if `interactive`,
    /// stdin to it.
    ///
    /// Errors: no pseudo-terminal could be opened, or a thread not started.
    pub fn open(interactive: bool) -> Result<Self> {
        let size = caller_size();
        let pty = nix::pty::openpty(size.as_ref(), None).context("opening a pseudo-terminal")?;
        // openpty(3) leaves both open across exec: the container gets the
        // slave as its stdio only (dup2 there clears the flag on those).
        for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
            // SAFETY: fcntl on descriptors this function owns.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("marking the pseudo-terminal close-on-exec");
            }
        }
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().context("duplicating the pseudo-terminal")?;
        let output = std::thread::Builder::new()
            .name("strata-run-tty-out".into())
            .spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let mut stdout = std::io::stdout();
                let mut writing = true;
                // EIO once the process and all it started have closed the
                // terminal. Once stdout fails (its reader gone), the output
                // is still read and dropped: a full terminal would block
                // the process for ever.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    if writing && stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                        writing = false;
                    }
                }
            })
            .context("starting the terminal's output thread")?;
        let raw = if interactive {
            let mut writer = master.try_clone().context("duplicating the pseudo-terminal")?;
            std::thread::Builder::new()
                .name("strata-run-tty-in".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut stdin = std::io::stdin();
                    while let Ok(n @ 1..) = stdin.read(&mut buf) {
                        if writer.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })
                .context("starting the terminal's input thread")?;
            RawMode::enter(std::io::stdin().as_fd())
        } else {
            None
        };
        if size.is_some() {
            follow_window_size(master)?;
        }
        Ok(Self { slave: Some(pty.slave), output, raw })
    }

    /// The terminal's slave side, for the process's stdin, stdout or stderr.
    pub fn slave(&self) -> Result<std::process::Stdio> {
        let slave = self.slave.as_ref().context("the terminal was handed over")?;
        Ok(std::process::Stdio::from(slave.try_clone().context("duplicating the pseudo-terminal")?))
    }

    /// Closes this process's slave side (the process has its own now), so
    /// that the output ends when the process's side closes.
    pub fn handed_over(&mut self) {
        self.slave = None;
    }

    /// Waits for the process's last output to be copied (the terminal's
    /// slave side closed by every process in the container: when its PID 1
    /// ends, the kernel ends them all), then gives the caller's terminal
    /// its mode back.
    pub fn finish(mut self) {
        self.slave = None;
        let _ = self.output.join();
        drop(self.raw);
    }
}

/// The window size of the caller's terminal (stdout's, else stdin's).
fn caller_size() -> Option<nix::pty::Winsize> {
    [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()].into_iter().find_map(|fd| {
        // SAFETY: winsize is plain integers; all zeros is a valid value.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the one given.
        (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0).then_some(size)
    })
}

/// On each SIGWINCH, the caller's window size is given to `master`.
fn follow_window_size(master: std::fs::File) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut winch = runtime.block_on(async { signal(SignalKind::window_change()) })?;
    std::thread::Builder::new()
        .name("strata-run-winch".into())
        .spawn(move || {
            runtime.block_on(async move {
                while winch.recv().await.is_some() {
                    if let Some(size) = caller_size() {
                        // SAFETY: TIOCSWINSZ reads the winsize given.
                        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                    }
                }
            });
        })
        .context("starting the window-size thread")?;
    Ok(())
}

/// The caller's terminal in raw mode until dropped.
struct RawMode {
    fd: OwnedFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal (else `None`).
    fn enter(fd: BorrowedFd<'_>) -> Option<Self> {
        let saved = nix::sys::termios::tcgetattr(fd).ok()?;
        let fd = fd.try_clone_to_owned().ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(fd.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            nix::sys::termios::tcsetattr(self.fd.as_fd(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

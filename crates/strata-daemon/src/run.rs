//! `strata run`: mount an image, start its process inside the mount in new
//! mount, PID and UTS namespaces, pass its exit code through, unmount.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::container::{resolve_user, Entry, ETC_FILES};
use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Result};
use crate::mount::{start_mount, unmount, MountSpec};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `strata run` takes beside the image: docker run's flags for the
/// process, and where the run's writes go.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep the writes in this directory [default: a layer removed after the run].
    pub upper: Option<PathBuf>,
    /// Where to write the mount's read trace when it ends.
    pub trace_reads: Option<PathBuf>,
    /// `-e`: `KEY=VALUE`, or `KEY` for the caller's value of KEY (when the
    /// caller has none, the image's KEY is unset, as docker does); over the
    /// image's `Env` and the env files.
    pub env: Vec<String>,
    /// `--env-file`: files of `KEY=VALUE` or `KEY` lines (blank lines and
    /// lines starting with `#` skipped; values taken as written, quotes
    /// included, as docker reads them), over the image's `Env`.
    pub env_files: Vec<PathBuf>,
    /// `-w`: the working directory, absolute (made if missing, as docker
    /// does), instead of the image's `WorkingDir`.
    pub workdir: Option<String>,
    /// `-u`: `user[:group]`, names or numeric ids, instead of the image's `User`.
    pub user: Option<String>,
    /// `--entrypoint`: the program instead of the image's `Entrypoint`;
    /// as docker, it also drops the image's `Cmd`, and "" drops the
    /// entrypoint (the command then comes from `args` alone).
    pub entrypoint: Option<String>,
    /// `--name`: the run's name, unique among the runs live on this data
    /// dir (its directory is DATA_DIR/run/NAME, its mount's mountpoint
    /// DATA_DIR/run/NAME/rootfs in `strata mounts`).
    pub name: Option<String>,
    /// `-i`: the process reads the caller's stdin (without it: /dev/null, as docker).
    pub interactive: bool,
    /// `-t`: the process gets a terminal of its own (a new pseudo-terminal
    /// whose output is copied to the caller's; with `-i` the caller's
    /// keystrokes go to it, the caller's terminal in raw mode meanwhile).
    /// The pseudo-terminal is the host's (`/dev/pts` of the host): inside,
    /// where `/dev/pts` is a new instance, `tty` finds no name for it, so
    /// programs that reopen their terminal by name do not find it (runc
    /// allocates it inside the container; not done here).
    pub tty: bool,
    /// The command and its arguments, replacing the image's `Cmd`.
    pub args: Vec<String>,
}

/// The process an image starts: its config, with [`RunOptions`] over it.
#[derive(Debug, PartialEq)]
struct Process {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
}

impl Process {
    /// The process from the image's `config` (OCI image config JSON) and
    /// the run's options. `caller_env` gives the caller's variables (for
    /// `-e KEY`), `env_files` the texts of the env files by name.
    fn new(
        config: &[u8],
        options: &RunOptions,
        env_files: &[(String, String)],
        caller_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let value: Value = serde_json::from_slice(config).context("the image config is not JSON")?;
        let c = &value["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        // docker: --entrypoint replaces the image's and drops its Cmd.
        let (mut argv, cmd) = match &options.entrypoint {
            None => (strings(&c["Entrypoint"]), strings(&c["Cmd"])),
            Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
            Some(e) => (vec![e.clone()], Vec::new()),
        };
        argv.extend(if options.args.is_empty() { cmd } else { options.args.clone() });
        if argv.is_empty() {
            match &options.entrypoint {
                Some(_) => refuse!(
                    "--entrypoint \"\" drops the image's Entrypoint and Cmd: give a command after the image"
                ),
                None => refuse!("the image has no Entrypoint or Cmd: give a command after the image"),
            }
        }
        let mut env = strings(&c["Env"]);
        let set = |env: &mut Vec<String>, var: String| {
            let key = var.split('=').next().unwrap_or_default().to_owned();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(var);
        };
        for (file, text) in env_files {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let var = env_var(line, &caller_env)
                    .map_err(|why| crate::error::Error::Refused(format!("{file}, line {}: {why}", n + 1)))?;
                if let Some(var) = var {
                    set(&mut env, var);
                }
            }
        }
        for given in &options.env {
            let var = env_var(given, &caller_env)
                .map_err(|why| crate::error::Error::Refused(format!("-e {given:?}: {why}")))?;
            match var {
                Some(var) => set(&mut env, var),
                // docker: `-e KEY` that the caller lacks unsets the image's KEY
                // (an env file's `KEY` line, by contrast, sets nothing).
                None => env.retain(|e| e.split('=').next() != Some(given.as_str())),
            }
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_owned());
        }
        // As docker: with a terminal, TERM unless the image or -e sets it.
        if options.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".to_owned());
        }
        let cwd = match &options.workdir {
            Some(dir) if !dir.starts_with('/') => {
                refuse!("-w {dir:?}: the working directory must be an absolute path")
            }
            Some(dir) => dir.clone(),
            None => c["WorkingDir"].as_str().unwrap_or("/").to_owned(),
        };
        let user = options.user.clone().unwrap_or_else(|| c["User"].as_str().unwrap_or("").to_owned());
        Ok(Self { argv, env, cwd, user })
    }
}

/// One `-e` or env-file entry as a variable: `KEY=VALUE` as written,
/// `KEY` with the caller's value (`None` when the caller has none).
/// Errors: an empty key, or one with whitespace (docker refuses both).
fn env_var(
    entry: &str,
    caller_env: impl Fn(&str) -> Option<String>,
) -> std::result::Result<Option<String>, String> {
    let (key, value) = match entry.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (entry, None),
    };
    if key.is_empty() {
        return Err("no variable name before '='".into());
    }
    if key.contains(char::is_whitespace) {
        return Err(format!("variable name {key:?} contains whitespace"));
    }
    Ok(match value {
        Some(value) => Some(format!("{key}={value}")),
        None => caller_env(key).map(|value| format!("{key}={value}")),
    })
}

/// Runs the image's process in a writable mount of it (`options.upper`,
/// else a layer made for the run and removed after it) and returns its
/// exit code (128 + signal if killed). SIGINT, SIGTERM and SIGHUP go on to
/// the process; whatever happens, the mount goes.
///
/// Errors: the image's lookup (or its pull), an option the image's process
/// cannot take (a relative `-w`, a user the image's /etc/passwd lacks, an
/// env file that cannot be read or has a bad line), a `--name` a live run
/// has, the mount's.
pub fn run(ctx: &DataDir, image: &str, options: &RunOptions) -> Result<i32> {
    let mut env_files = Vec::new();
    for file in &options.env_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the env file {}", file.display()))?;
        env_files.push((file.display().to_string(), text));
    }
    if let Some(name) = &options.name {
        check_run_name(name)?;
    }
    if options.tty && options.interactive && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // As docker: a terminal's input must come from a terminal (a pipe's
        // end of file would never reach the process through one).
        refuse!("-it: the input device is not a terminal; drop -t to pipe input in");
    }
    // An image only peers or its registry hold is pulled first.
    crate::pull::ensure_known(ctx, image)?;
    let (found_id, config) = {
        let store = ctx.read_store()?;
        let found = strata_oci::find_image(&store, image)?;
        (found.id, found.record.config)
    };
    let process = Process::new(&config, options, &env_files, |key| std::env::var(key).ok())?;
    let runs = ctx.path.join("run");
    // The hostname is not the run's name (docker's is the container's id).
    let hostname = found_id.short();
    let (run_dir, _pid_lock) = match &options.name {
        Some(name) => claim_run_dir(ctx, &runs, name)?,
        None => {
            let dir = runs.join(format!("{}-{}", found_id.short(), std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let lock = lock_pid(&dir)?.with_context(|| format!("{} is taken", dir.display()))?;
            (dir, lock)
        }
    };
    let mut cleanup = Cleanup { ctx, mountpoint: None, layer: None, run_dir, done: false };
    let rootfs = cleanup.run_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let spec = MountSpec {
        image: image.to_owned(),
        mountpoint: rootfs.clone(),
        upper: options.upper.clone(),
        trace_reads: options.trace_reads.clone(),
        ..MountSpec::default()
    };
    let started = start_mount(ctx, &spec)?;
    cleanup.mountpoint = Some(started.mountpoint.clone());
    cleanup.layer = if options.upper.is_none() { started.upper.clone() } else { None };
    let stdio = Stdio { interactive: options.interactive, tty: options.tty };
    let code = run_mounted(
        &started.mountpoint,
        started.upper.as_deref(),
        &cleanup.run_dir,
        &process,
        &hostname,
        stdio,
    )?;
    cleanup.finish()?;
    Ok(code)
}

/// A run name as docker takes container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn check_run_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.len() > 128 {
        refuse!("--name {name:?}: a run name is a letter or digit, then letters, digits, '_', '.' or '-'");
    }
    Ok(())
}

/// Makes DATA_DIR/run/NAME for a run named NAME, its `pid` file locked
/// (flock) for as long as the returned file is open: refused while another
/// run holds that lock; a dead run's directory (its lock free) is taken
/// over, its leftover mount cleared. The directory appears with its lock
/// already held (made aside, locked, then renamed into place), so two runs
/// of one name never both take it.
fn claim_run_dir(ctx: &DataDir, runs: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    let dir = runs.join(name);
    std::fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
    let aside = runs.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&aside);
    std::fs::create_dir(&aside).with_context(|| format!("creating {}", aside.display()))?;
    let lock = lock_pid(&aside)?.with_context(|| format!("{} is taken", aside.display()))?;
    for _ in 0..2 {
        match std::fs::rename(&aside, &dir) {
            Ok(()) => return Ok((dir, lock)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&aside);
                return Err(e).with_context(|| format!("renaming {} into place", aside.display()));
            }
        }
        let Some(dead) = lock_pid(&dir)? else {
            let _ = std::fs::remove_dir_all(&aside);
            let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
            refuse!("a run named {name} is live (strata run, pid {}): choose another --name", pid.trim());
        };
        // A run that was killed: its mount, if any, goes first, and its
        // directory only once nothing is mounted there.
        let rootfs = dir.join("rootfs");
        if crate::mounts::find(&ctx.path, &rootfs).is_some()
            || crate::mounts::mounted_strata_paths().contains(&rootfs)
        {
            if let Err(e) = unmount(ctx, &rootfs, false) {
                let _ = std::fs::remove_dir_all(&aside);
                return Err(e).with_context(|| format!("clearing the dead run {name}'s mount"));
            }
        }
        drop(dead);
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("clearing the dead run's {}", dir.display()))?;
    }
    let _ = std::fs::remove_dir_all(&aside);
    refuse!("a run named {name} is starting beside this one: choose another --name")
}

/// DIR/pid with this process's pid, locked: `None` if another process
/// holds its lock.
fn lock_pid(dir: &Path) -> Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let path = dir.join("pid");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    file.set_len(0)?;
    std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(file))
}

/// Whatever happens to the run, even a panic, the mount goes, and a
/// writable layer made for the run goes with it.
struct Cleanup<'a> {
    ctx: &'a DataDir,
    mountpoint: Option<std::path::PathBuf>,
    layer: Option<std::path::PathBuf>,
    run_dir: std::path::PathBuf,
    done: bool,
}

impl Cleanup<'_> {
    fn finish(&mut self) -> Result<()> {
        self.done = true;
        if let Some(mountpoint) = &self.mountpoint {
            // Still mounted, the run's directory must stay: removing it
            // would delete the image's files through the mount (and a
            // kept --upper's writes with them).
            unmount(self.ctx, mountpoint, false)?;
        }
        if let Some(dir) = &self.layer {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        Ok(())
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.finish() {
                tracing::error!(error = %crate::error::chain(&e), "cleaning up the run");
            }
        }
    }
}

/// The contents docker gives /etc/hostname, /etc/hosts and /etc/resolv.conf
/// of a container sharing the host's network: its hostname, the standard
/// localhost lines with the hostname, the host's resolver configuration.
fn etc_file_contents(name: &str, hostname: &str) -> String {
    match name {
        "hostname" => format!("{hostname}\n"),
        "hosts" => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
        ),
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// Opens `rel` inside the rootfs, symlinks resolved within the rootfs
/// (openat2 RESOLVE_IN_ROOT), never outside. `flags` as open(2).
fn open_in_rootfs(root: &std::fs::File, rel: &str, flags: i32, mode: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let path = std::ffi::CString::new(rel).map_err(|_| std::io::Error::other("NUL in path"))?;
    // SAFETY: open_how is plain data; zeroed is a valid start.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = mode;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2 with a valid descriptor, C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

/// Largest /etc/passwd or /etc/group read from an image.
const MAX_ID_FILE: u64 = 16 << 20;

/// The image's /etc/`name` (passwd, group), read inside the rootfs: ""
/// when missing; an error when it is not a regular file or too large (an
/// image's symlink never reaches the host, a fifo never blocks the run).
fn read_image_file(root: &std::fs::File, name: &str) -> Result<String> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = match open_in_rootfs(root, &format!("etc/{name}"), flags, 0) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(|| format!("opening the image's /etc/{name}")),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        refuse!("the image's /etc/{name} is not a regular file");
    }
    if meta.len() > MAX_ID_FILE {
        refuse!("the image's /etc/{name} is {} bytes, more than {MAX_ID_FILE}", meta.len());
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_ID_FILE), &mut text)
        .with_context(|| format!("reading the image's /etc/{name}"))?;
    Ok(text)
}

/// Where the image's /etc/`name` resolves within the rootfs, made an empty
/// regular file if missing (and then `true`); an error if it is anything
/// but a regular file.
fn etc_target(root: &std::fs::File, name: &str) -> Result<(std::path::PathBuf, bool)> {
    let rel = format!("etc/{name}");
    let mut made = false;
    let found = match open_in_rootfs(root, &rel, libc::O_PATH, 0) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            made = true;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY;
            open_in_rootfs(root, &rel, flags, 0o644)
        }
        other => other,
    }
    .with_context(|| format!("opening /etc/{name} in the image"))?;
    if !found.metadata()?.is_file() {
        refuse!("the image's /etc/{name} is not a regular file: it cannot be bound over");
    }
    // Where it resolved to (the image's symlinks followed inside the
    // rootfs): nothing changes there before the child mounts onto it, as
    // the container has not started.
    let path = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&found)))
        .with_context(|| format!("resolving /etc/{name} in the image"))?;
    Ok((path, made))
}

/// What `strata run` makes in the image for the container's setup, to be
/// marked in the writable layer so that a commit leaves it out (docker
/// keeps such entries in an init layer below the container's).
struct Setup<'a> {
    rootfs: &'a Path,
    made: Vec<std::path::PathBuf>,
}

impl Setup<'_> {
    /// Marks what was made (paths inside the rootfs), once all of it is:
    /// a mark records the entry's mtime, which making its children moves.
    fn mark(self, upper: Option<&Path>) -> Result<()> {
        let Some(upper) = upper else { return Ok(()) };
        for path in &self.made {
            let Ok(rel) = path.strip_prefix(self.rootfs) else {
                refuse!("{} is outside the rootfs {}", path.display(), self.rootfs.display());
            };
            strata_mount::upper::mark_init(upper, std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()))
                .context("marking container setup in the writable layer")?;
        }
        Ok(())
    }
}

/// How the process's stdin, stdout and stderr are given (`-i`, `-t`).
#[derive(Clone, Copy, Debug)]
struct Stdio {
    interactive: bool,
    tty: bool,
}

fn run_mounted(
    rootfs: &Path,
    upper: Option<&Path>,
    run_dir: &Path,
    process: &Process,
    hostname: &str,
    stdio: Stdio,
) -> Result<i32> {
    // Paths the setup makes are compared with the rootfs as the kernel names it.
    let real_rootfs =
        std::fs::canonicalize(rootfs).with_context(|| format!("resolving {}", rootfs.display()))?;
    let mut setup = Setup { rootfs: &real_rootfs, made: Vec::new() };
    for dir in ["proc", "dev", "sys"] {
        let path = rootfs.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::create_dir(&path).with_context(|| format!("creating /{dir} in the image"))?;
            setup.made.push(real_rootfs.join(dir));
        }
    }
    let root = std::fs::File::open(rootfs).with_context(|| format!("opening {}", rootfs.display()))?;
    let user =
        resolve_user(&process.user, &read_image_file(&root, "passwd")?, &read_image_file(&root, "group")?)?;
    // /etc/hostname, /etc/hosts, /etc/resolv.conf: written here, bound over
    // the image's (made empty in the writable layer where missing).
    if open_in_rootfs(&root, "etc", libc::O_PATH | libc::O_DIRECTORY, 0).is_err() {
        nix::sys::stat::mkdirat(
            std::os::fd::AsFd::as_fd(&root),
            "etc",
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .context("creating /etc in the image")?;
        setup.made.push(real_rootfs.join("etc"));
    }
    let mut etc_files = Vec::new();
    for name in ETC_FILES {
        let host = run_dir.join(name);
        std::fs::write(&host, etc_file_contents(name, hostname))
            .with_context(|| format!("writing {}", host.display()))?;
        let (target, made) = etc_target(&root, name)?;
        if made {
            setup.made.push(target.clone());
        }
        etc_files.push((host, target));
    }
    setup.mark(upper)?;
    let entry = Entry::new(rootfs, &process.cwd, hostname, user.clone(), &etc_files)?;

    // Threads cannot be started once the PID namespace is unshared: the
    // signal thread starts first and learns the pid later.
    let child_pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    forward_signals(child_pid.clone());
    let mut terminal =
        if stdio.tty { Some(crate::terminal::Terminal::open(stdio.interactive)?) } else { None };
    // The next child of this process is PID 1 of a new PID namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).context("a new PID namespace")?;
    let mut command = Command::new(&process.argv[0]);
    command.args(&process.argv[1..]).env_clear();
    // As docker: HOSTNAME, then HOME from passwd unless the image sets it.
    command.env("HOSTNAME", hostname);
    if !process.env.iter().any(|e| e.starts_with("HOME=")) {
        command.env("HOME", &user.home);
    }
    for var in &process.env {
        if let Some((k, v)) = var.split_once('=') {
            command.env(k, v);
        }
    }
    match &terminal {
        Some(t) => {
            command.stdin(t.slave()?).stdout(t.slave()?).stderr(t.slave()?);
        }
        None if !stdio.interactive => {
            command.stdin(std::process::Stdio::null());
        }
        None => {}
    }
    let controlling_tty = terminal.is_some();
    // SAFETY: `enter` makes only async-signal-safe system calls, as do
    // setsid(2) and ioctl(2).
    unsafe {
        command.pre_exec(move || {
            if controlling_tty {
                // A session of its own, the terminal (its stdin) its controlling one.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            entry.enter()
        });
    }
    let spawned = command.spawn();
    // This process's copies of the terminal go: its output ends when the
    // container's side closes.
    drop(command);
    if let Some(t) = &mut terminal {
        t.handed_over();
    }
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let program = &process.argv[0];
            let (code, why) = match e.raw_os_error() {
                Some(libc::ENOENT) if !program.contains('/') => (
                    127,
                    format!("{program:?} is not in the image's PATH (or its working directory is missing)"),
                ),
                Some(libc::ENOENT) => (127, format!("{program:?} is not in the image")),
                Some(libc::EACCES) => (126, format!("{program:?} is not executable: {e}")),
                Some(libc::ENOTDIR) | Some(libc::EINVAL) => (
                    126,
                    format!("cannot enter the working directory {:?} or start {program:?}: {e}", process.cwd),
                ),
                _ => (126, format!("starting {program:?} in the image: {e}")),
            };
            return Err(crate::error::Error::NotStarted { code, message: why });
        }
    };
    child_pid.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let status = child.wait();
    if let Some(t) = terminal {
        t.finish();
    }
    let status = status?;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGINT, SIGTERM and SIGHUP to `strata run` go on to the process as
/// SIGTERM (PID 1 of its namespace ignores it unless it has a handler); a
/// second one kills it.
fn forward_signals(pid: std::sync::Arc<std::sync::atomic::AtomicI32>) {
    let forwarded = crate::signals::on_termination(move |count| {
        let target = match pid.load(std::sync::atomic::Ordering::SeqCst) {
            0 => return,
            pid => nix::unistd::Pid::from_raw(pid),
        };
        let sig =
            if count == 1 { nix::sys::signal::Signal::SIGTERM } else { nix::sys::signal::Signal::SIGKILL };
        let _ = nix::sys::signal::kill(target, sig);
    });
    if let Err(e) = forwarded {
        tracing::warn!(error = %e, "signals will not be forwarded to the container");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"config":{"Entrypoint":["/entry"],"Cmd":["serve","--port","80"],
        "Env":["PATH=/bin","MODE=prod","KEEP=1"],"WorkingDir":"/srv","User":"app"}}"#;

    fn process(options: RunOptions, files: &[(&str, &str)]) -> Result<Process> {
        let files: Vec<(String, String)> =
            files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        Process::new(CONFIG.as_bytes(), &options, &files, |key| {
            (key == "HOME_VAR").then(|| "from-shell".into())
        })
    }

    #[test]
    fn the_image_config_when_nothing_is_given() {
        let p = process(RunOptions::default(), &[]).unwrap();
        assert_eq!(p.argv, ["/entry", "serve", "--port", "80"]);
        assert_eq!(p.env, ["PATH=/bin", "MODE=prod", "KEEP=1"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "app"));
    }

    #[test]
    fn env_files_then_flags_override_the_image_as_docker_orders_them() {
        let options = RunOptions {
            env: vec!["MODE=dev".into(), "HOME_VAR".into(), "UNSET_VAR".into(), "EMPTY=".into()],
            ..RunOptions::default()
        };
        let file = "# comment\n\n  MODE=file\nQUOTED=\"a b\"\nKEEP\n";
        let p = process(options, &[("vars.env", file)]).unwrap();
        // KEEP alone: the caller has no KEEP, so the line sets nothing (docker's
        // ParseEnvFile) and the image's KEEP=1 stays.
        assert_eq!(
            p.env,
            ["PATH=/bin", "KEEP=1", "QUOTED=\"a b\"", "MODE=dev", "HOME_VAR=from-shell", "EMPTY="]
        );
    }

    #[test]
    fn bad_variables_are_refused_with_where_they_were() {
        let e = process(RunOptions { env: vec!["=x".into()], ..RunOptions::default() }, &[]).unwrap_err();
        assert!(e.to_string().contains("-e \"=x\""), "{e}");
        let e = process(RunOptions::default(), &[("vars.env", "OK=1\nBAD KEY=2\n")]).unwrap_err();
        assert!(e.to_string().contains("vars.env, line 2") && e.to_string().contains("whitespace"), "{e}");
    }

    #[test]
    fn entrypoint_workdir_and_user_replace_the_image_s() {
        let options = RunOptions {
            entrypoint: Some("/bin/sh".into()),
            workdir: Some("/tmp/work".into()),
            user: Some("1000:1000".into()),
            ..RunOptions::default()
        };
        let p = process(options, &[]).unwrap();
        // docker: --entrypoint drops the image's Cmd.
        assert_eq!(p.argv, ["/bin/sh"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/tmp/work", "1000:1000"));
        let cleared =
            RunOptions { entrypoint: Some(String::new()), args: vec!["ls".into()], ..RunOptions::default() };
        assert_eq!(process(cleared, &[]).unwrap().argv, ["ls"]);
        let nothing = RunOptions { entrypoint: Some(String::new()), ..RunOptions::default() };
        assert!(process(nothing, &[]).is_err());
        let relative = RunOptions { workdir: Some("work".into()), ..RunOptions::default() };
        assert!(process(relative, &[]).unwrap_err().to_string().contains("absolute"));
        let args = RunOptions { args: vec!["migrate".into()], ..RunOptions::default() };
        assert_eq!(process(args, &[]).unwrap().argv, ["/entry", "migrate"]);
    }

    #[test]
    fn run_names_as_docker_takes_container_names() {
        assert!(check_run_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "a b", "..", "é"] {
            assert!(check_run_name(bad).is_err(), "{bad:?}");
        }
    }
}

//! `strata run`: mount an image, start its process inside the mount in new
//! mount, PID and UTS namespaces, pass its exit code through, unmount.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::container::{resolve_user, Entry, ETC_FILES};
use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Result};
use crate::mount::{start_mount, unmount, MountSpec};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process an image starts: from its config, `args` replacing `Cmd`.
struct Process {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
}

impl Process {
    fn from_config(config: &[u8], args: &[String]) -> Result<Self> {
        let value: Value = serde_json::from_slice(config).context("the image config is not JSON")?;
        let c = &value["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let mut argv = strings(&c["Entrypoint"]);
        argv.extend(if args.is_empty() { strings(&c["Cmd"]) } else { args.to_vec() });
        if argv.is_empty() {
            refuse!("the image has no Entrypoint or Cmd: give a command after --");
        }
        let mut env = strings(&c["Env"]);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_owned());
        }
        Ok(Self {
            argv,
            env,
            cwd: c["WorkingDir"].as_str().unwrap_or("/").to_owned(),
            user: c["User"].as_str().unwrap_or("").to_owned(),
        })
    }
}

/// Runs the image's process in a writable mount of it (`upper`, else a
/// layer made for the run and removed after it) and returns its exit code
/// (128 + signal if killed). SIGINT, SIGTERM and SIGHUP go on to the
/// process; whatever happens, the mount goes.
pub fn run(
    ctx: &DataDir,
    image: &str,
    upper: Option<&Path>,
    trace_reads: Option<&Path>,
    args: &[String],
) -> Result<i32> {
    // An image only peers or its registry hold is pulled first.
    crate::pull::ensure_known(ctx, image)?;
    let (found_id, config) = {
        let store = ctx.read_store()?;
        let found = strata_oci::find_image(&store, image)?;
        (found.id, found.record.config)
    };
    let process = Process::from_config(&config, args)?;
    let run_dir = ctx.path.join("run").join(format!("{}-{}", found_id.short(), std::process::id()));
    let rootfs = run_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let spec = MountSpec {
        image: image.to_owned(),
        mountpoint: rootfs.clone(),
        upper: upper.map(Path::to_owned),
        trace_reads: trace_reads.map(Path::to_owned),
        ..MountSpec::default()
    };
    let started = start_mount(ctx, &spec)?;
    let mut cleanup = Cleanup {
        ctx,
        mountpoint: started.mountpoint.clone(),
        layer: if upper.is_none() { started.upper.clone() } else { None },
        run_dir,
        done: false,
    };
    let code = run_mounted(
        &started.mountpoint,
        started.upper.as_deref(),
        &cleanup.run_dir,
        &process,
        &found_id.short(),
    )?;
    cleanup.finish()?;
    Ok(code)
}

/// Whatever happens to the run, even a panic, the mount goes, and a
/// writable layer made for the run goes with it.
struct Cleanup<'a> {
    ctx: &'a DataDir,
    mountpoint: std::path::PathBuf,
    layer: Option<std::path::PathBuf>,
    run_dir: std::path::PathBuf,
    done: bool,
}

impl Cleanup<'_> {
    fn finish(&mut self) -> Result<()> {
        self.done = true;
        let unmounted = unmount(self.ctx, &self.mountpoint, false);
        if let Some(dir) = &self.layer {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        unmounted.map(drop)
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

fn run_mounted(
    rootfs: &Path,
    upper: Option<&Path>,
    run_dir: &Path,
    process: &Process,
    hostname: &str,
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
    // SAFETY: `enter` makes only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || entry.enter());
    }
    let mut child =
        command.spawn().with_context(|| format!("starting {:?} in the image", process.argv[0]))?;
    child_pid.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let status = child.wait()?;
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

//! `strata run`: mount an image, start its process inside the mount in new
//! mount, PID and UTS namespaces, pass its exit code through, unmount.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

use super::mount::{start_mount, unmount};
use super::Ctx;
use crate::container::{resolve_user, Entry};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process an image starts: from its config, `args` replacing `Cmd`.
struct Process {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
}

impl Process {
    fn from_config(config: &[u8], args: &[String]) -> anyhow::Result<Self> {
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
            bail!("the image has no Entrypoint or Cmd: give a command after --");
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

/// Runs the image's process and returns its exit code (128 + signal if killed).
pub fn run(
    ctx: &Ctx,
    image: &str,
    upper: Option<&Path>,
    trace_reads: Option<&Path>,
    args: &[String],
) -> anyhow::Result<i32> {
    // With a node running here, an image only peers hold is pulled first.
    crate::control::pull(&ctx.data_dir, image)?;
    let (found_id, config) = {
        let store = ctx.read_store()?;
        let found = strata_oci::find_image(&store, image)?;
        (found.id, found.record.config)
    };
    let process = Process::from_config(&config, args)?;
    let run_dir = ctx.data_dir.join("run").join(format!("{}-{}", found_id.short(), std::process::id()));
    let rootfs = run_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let started = start_mount(ctx, image, &rootfs, upper, false, trace_reads)?;
    let mut cleanup = Cleanup {
        ctx,
        mountpoint: started.mountpoint.clone(),
        layer: if upper.is_none() { started.upper.clone() } else { None },
        run_dir,
        done: false,
    };
    let code = run_mounted(&started.mountpoint, &process, &found_id.short())?;
    cleanup.finish()?;
    Ok(code)
}

/// Whatever happens to the run, even a panic, the mount goes, and a
/// writable layer made for the run goes with it.
struct Cleanup<'a> {
    ctx: &'a Ctx,
    mountpoint: std::path::PathBuf,
    layer: Option<std::path::PathBuf>,
    run_dir: std::path::PathBuf,
    done: bool,
}

impl Cleanup<'_> {
    fn finish(&mut self) -> anyhow::Result<()> {
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
                eprintln!("cleaning up the run: {}", crate::error_chain(&e));
            }
        }
    }
}

fn run_mounted(rootfs: &Path, process: &Process, hostname: &str) -> anyhow::Result<i32> {
    for dir in ["proc", "dev", "sys"] {
        let path = rootfs.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::create_dir(&path).with_context(|| format!("creating /{dir} in the image"))?;
        }
    }
    let (uid, gid) = resolve_user(&process.user, rootfs)?;
    let entry = Entry::new(rootfs, &process.cwd, hostname, uid, gid)?;

    // Threads cannot be started once the PID namespace is unshared: the
    // signal thread starts first and learns the pid later.
    let child_pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    forward_signals(child_pid.clone());
    // The next child of this process is PID 1 of a new PID namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).context("a new PID namespace")?;
    let mut command = Command::new(&process.argv[0]);
    command.args(&process.argv[1..]).env_clear();
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

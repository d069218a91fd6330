//! One module per command: arguments in, the daemon library's typed
//! results out, formatted here (tables, `--json`, progress bars).

mod cert;
mod demo;
mod demo_cluster;
mod images;
mod mount;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use strata_control::{Command as Routed, Progress};
use strata_daemon::{Cancel, DataDir, Settings};

use crate::cli::{CertCommand, Cli, Command, ConfigCommand, Global, ServeArgs, StoreCommand};
use crate::progress::Bar;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(cli.global)?;
    let log_json = match &cli.command {
        Command::Serve(args) => args.log_json || ctx.dir.settings.node.log_format == "json",
        _ => false,
    };
    crate::logging::init(matches!(cli.command, Command::Serve(_)), log_json);
    match cli.command {
        Command::Import { file, names } => routed(&ctx, Routed::Import { file: absolute(&file)?, names }),
        // Listings are answered by the node when one runs: its store holds
        // what it fetched before that reaches the files a view reads.
        Command::Pull { reference, platform, username, password_stdin, background_fetch, all } => {
            let credentials = match username {
                Some(username) if password_stdin => Some((username, read_password()?)),
                _ => None,
            };
            routed(&ctx, Routed::Pull { reference, platform, credentials, background: background_fetch, all })
        }
        Command::Push { image, reference, username, password_stdin } => {
            let credentials = match username {
                Some(username) if password_stdin => Some((username, read_password()?)),
                _ => None,
            };
            images::push(&ctx, &image, &reference, credentials)
        }
        Command::Images => routed(&ctx, Routed::Images),
        Command::Status => routed(&ctx, Routed::Status),
        Command::Inspect { image } => routed(&ctx, Routed::Inspect { image }),
        Command::Export { image, output, compression } => images::export(&ctx, &image, &output, compression),
        Command::Rm { images } => routed(&ctx, Routed::Rm { images }),
        Command::Gc => routed(&ctx, Routed::Gc),
        Command::Store { command: StoreCommand::Stats } => routed(&ctx, Routed::Stats),
        Command::Mount { image, mountpoint, upper, read_only, trace_reads, peer } => {
            let spec = strata_daemon::mount::MountSpec {
                image,
                mountpoint,
                upper,
                read_only,
                trace_reads: trace_reads.map(|p| absolute(&p)).transpose()?,
                peer: Some(peer.into()),
                layers: None,
            };
            mount::mount(&ctx, &spec)
        }
        Command::Serve(args) => serve(&ctx, &args),
        Command::Peers => routed(&ctx, Routed::Peers),
        Command::Commit { mountpoint, upper, names } => {
            let mountpoint = mountpoint.as_deref().map(absolute).transpose()?;
            let upper = upper.as_deref().map(absolute).transpose()?;
            routed(&ctx, Routed::Commit { mountpoint, upper, names })
        }
        Command::Run { image, upper, trace_reads, command } => {
            let code = strata_daemon::run::run(
                &ctx.dir,
                &image,
                upper.as_deref(),
                trace_reads.as_deref(),
                &command,
            )?;
            std::process::exit(code)
        }
        Command::Cert { command: CertCommand::InitCa { dir, cluster } } => cert::init_ca(&ctx, dir, &cluster),
        Command::Cert { command: CertCommand::Issue { node, dir } } => cert::issue(&ctx, dir, &node),
        Command::Config { command: ConfigCommand::Show } => show_config(&ctx),
        Command::Umount { mountpoint, lazy } => mount::umount(&ctx, &mountpoint, lazy),
        Command::Mounts => mount::list(&ctx),
        Command::MountServe { image, mountpoint, upper, trace_reads, layers, peer } => {
            let spec = strata_daemon::mount::MountSpec {
                image,
                mountpoint,
                upper,
                read_only: false,
                trace_reads,
                peer: Some(peer.into()),
                layers,
            };
            Ok(strata_daemon::mount::serve(&ctx.dir, &spec)?)
        }
        Command::Demo => demo::run(&ctx),
    }
}

/// A command on the store: run by the node on this data dir when one runs
/// (it owns the store then, and holds what it fetched before the store's
/// files do), else here; either way its typed outcome is printed here.
/// Ctrl-C (or SIGTERM, SIGHUP) cancels an import, wherever it runs: the
/// store keeps nothing of it; a second signal exits at once.
fn routed(ctx: &Ctx, command: Routed) -> anyhow::Result<()> {
    let cancellable = command.cancellable();
    let bar = if cancellable { Bar::for_stderr() } else { Bar::hidden() };
    let cancel = Cancel::new();
    if cancellable {
        let cancel = cancel.clone();
        strata_daemon::signals::on_termination(move |n| {
            if n > 1 {
                std::process::exit(130);
            }
            eprintln!("cancelling (a second signal exits at once)");
            cancel.cancel();
        })?;
    }
    let forwarded =
        strata_daemon::client::forward(&ctx.dir.path, command.clone(), &mut |s| bar.step(s), &cancel);
    let result = match forwarded {
        Some(result) => result,
        None => strata_daemon::ops::execute(&ctx.dir, command, &|step: Progress| bar.step(step), &cancel),
    };
    bar.finish();
    match result {
        Ok(outcome) => images::print(ctx, &outcome),
        Err(strata_daemon::Error::Cancelled) => {
            eprintln!("cancelled: nothing was imported");
            std::process::exit(130)
        }
        Err(e) => Err(e.into()),
    }
}

/// `strata serve`: `[node]` settings with the flags laid over them.
fn serve(ctx: &Ctx, args: &ServeArgs) -> anyhow::Result<()> {
    let mut s = ctx.dir.settings.node.clone();
    if let Some(name) = &args.identity.node {
        s.name = Some(name.clone());
    }
    if let Some(dir) = &args.identity.cert_dir {
        s.cert_dir = Some(dir.clone());
    }
    if let Some(listen) = &args.listen {
        s.listen = listen.clone();
    }
    if args.advertise.is_some() {
        s.advertise = args.advertise.clone();
    }
    if !args.seeds.is_empty() {
        s.seeds = args.seeds.clone();
    }
    if let Some(metrics) = &args.metrics {
        s.metrics_listen = metrics.clone();
    }
    if let Some(deadline) = args.fetch_deadline {
        s.fetch_deadline_secs = deadline;
    }
    // Signals are taken from here on: the first stops the node cleanly,
    // a second exits at once.
    let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
    strata_daemon::signals::on_termination(move |n| {
        if n > 1 {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        let _ = stop_tx.try_send(());
    })?;
    let mut snapshotter = ctx.dir.settings.snapshotter.clone();
    if let Some(socket) = &args.snapshotter_socket {
        snapshotter.socket = Some(absolute(socket)?);
    }
    strata_daemon::server::serve_node(&ctx.dir, s, snapshotter, stop, |ready| {
        // What scripts wait for; nobody may be reading any more by the
        // time the node stops, so write errors are not fatal.
        let mut text = format!("listening on {}\n", ready.addr);
        if let Some(addr) = ready.metrics {
            text.push_str(&format!("metrics on http://{addr}/metrics\n"));
        }
        text.push_str(&format!("control socket {}\n", ready.control_socket.display()));
        if let Some(socket) = &ready.snapshotter_socket {
            text.push_str(&format!("snapshotter socket {}\n", socket.display()));
        }
        let mut stdout = std::io::stdout();
        let _ = std::io::Write::write_all(&mut stdout, text.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut stdout));
    })?;
    Ok(())
}

/// The first line of stdin, without its line end: a password piped in
/// (`--password-stdin`, as `docker login` takes it).
fn read_password() -> anyhow::Result<strata_types::Secret> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("--password-stdin: stdin held no password");
    }
    Ok(strata_types::Secret::new(password))
}

/// Paths travel to the node absolute: it does not share the caller's cwd.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// What every command needs: the data dir with its settings, output mode.
pub struct Ctx {
    pub dir: DataDir,
    pub json: bool,
    explicit_data_dir: bool,
}

impl Ctx {
    fn new(global: Global) -> anyhow::Result<Self> {
        let explicit_data_dir = global.data_dir.is_some();
        let path = global.data_dir.unwrap_or_else(strata_daemon::settings::default_data_dir);
        let settings = Settings::load(global.config.as_deref(), &path)?;
        let mut dir = DataDir::new(&path, settings);
        dir.config_file = global.config;
        dir.lock_wait = Duration::from_secs(global.lock_wait);
        Ok(Self { dir, json: global.json, explicit_data_dir })
    }

    /// Prints `value` as the command's JSON output.
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

fn show_config(ctx: &Ctx) -> anyhow::Result<()> {
    let file = ctx.dir.config_file.clone().or_else(|| Settings::default_file(&ctx.dir.path));
    if ctx.json {
        return ctx.print_json(&serde_json::json!({ "file": file, "settings": ctx.dir.settings }));
    }
    match &file {
        Some(file) => println!("# from defaults, {}, and STRATA_* variables", file.display()),
        None => println!("# from defaults and STRATA_* variables (no settings file)"),
    }
    print!("{}", toml::to_string(&ctx.dir.settings).context("printing the settings")?);
    Ok(())
}

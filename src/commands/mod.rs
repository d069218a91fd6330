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
use crate::output::{out, outln};
use crate::progress::Bar;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.global.json && !cli.command.prints_json() {
        anyhow::bail!("--json: this command prints nothing to format (it is for listings and reports)");
    }
    // What needs no settings and no store works whatever they are.
    match &cli.command {
        Command::Completion { shell } => return completion(*shell),
        Command::Man { command } => return man(&command.join("-")),
        _ => {}
    }
    let ctx = Ctx::new(cli.global)?;
    let log_json = match &cli.command {
        Command::Serve(args) => args.log_json || ctx.dir.settings.node.log_format == "json",
        _ => false,
    };
    crate::logging::init(matches!(cli.command, Command::Serve(_)), log_json)?;
    // A data dir in use has a store, or (mounts from fixed peers keep
    // none) mount records or writable layers.
    let in_use = ["store", "mounts", "uppers"].iter().any(|d| ctx.dir.path.join(d).exists());
    if ctx.explicit_data_dir && !in_use && !cli.command.may_create_store() {
        anyhow::bail!(
            "no store in {} (--data-dir or STRATA_DATA_DIR): nothing was imported or pulled there \
             (`strata import`, `pull`, `serve`, and `run` or `mount` of an image they pull, create one)",
            ctx.dir.path.display()
        );
    }
    match cli.command {
        Command::Import { file, names } if file == Path::new("-") => {
            let spooled = spool_stdin(&ctx)?;
            let path = spooled.path().to_owned();
            // Errors name the file: here it is stdin.
            routed(&ctx, Routed::Import { file: path.clone(), names }).map_err(|e| {
                match e.is::<Cancelled>() {
                    true => e,
                    false => anyhow::anyhow!(
                        "{}",
                        crate::error_chain(&e).replace(&path.display().to_string(), "stdin")
                    ),
                }
            })
        }
        Command::Import { file, names } => routed(&ctx, Routed::Import { file: absolute(&file)?, names }),
        // Listings are answered by the node when one runs: its store holds
        // what it fetched before that reaches the files a view reads.
        Command::Pull { reference, platform, username, password_stdin, background_fetch, all } => {
            let credentials = match username {
                Some(username) if password_stdin => Some((username, read_password()?)),
                _ => None,
            };
            let background = background_fetch.map(Into::into);
            routed(&ctx, Routed::Pull { reference, platform, credentials, background, all })
        }
        Command::Push { image, reference, username, password_stdin } => {
            let credentials = match username {
                Some(username) if password_stdin => Some((username, read_password()?)),
                _ => None,
            };
            images::push(&ctx, &image, &reference, credentials)
        }
        Command::Images { cluster: true, .. } => routed(&ctx, Routed::ClusterImages),
        Command::Images { quiet, format, .. } => match routed_outcome(&ctx, Routed::Images)? {
            strata_control::Outcome::Images(list) => images::list(&ctx, &list, quiet, format.as_deref()),
            other => images::print(&ctx, &other),
        },
        Command::Status => routed(&ctx, Routed::Status),
        Command::Inspect { image } => routed(&ctx, Routed::Inspect { image }),
        Command::Export { image, output, compression } => {
            images::export(&ctx, &image, output.as_deref(), compression)
        }
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
        Command::Run(args) => {
            let options = strata_daemon::run::RunOptions {
                upper: args.upper,
                trace_reads: args.trace_reads,
                env: args.env,
                env_files: args.env_files,
                workdir: args.workdir,
                user: args.user,
                entrypoint: args.entrypoint,
                name: args.name,
                interactive: args.interactive,
                tty: args.tty,
                args: args.command,
            };
            let code = strata_daemon::run::run(&ctx.dir, &args.image, &options)?;
            crate::output::flush();
            crate::output::end_if_closed();
            std::process::exit(code)
        }
        Command::Cert { command: CertCommand::InitCa { dir, cluster } } => cert::init_ca(&ctx, dir, &cluster),
        Command::Cert { command: CertCommand::Issue { node, dir } } => cert::issue(&ctx, dir, &node),
        Command::Config { command: ConfigCommand::Show } => show_config(&ctx),
        Command::Umount { mountpoint, lazy } => mount::umount(&ctx, &mountpoint, lazy),
        Command::Mounts => mount::list(&ctx),
        Command::Uppers { command: None } => mount::uppers(&ctx),
        Command::Uppers { command: Some(crate::cli::UppersCommand::Rm { names }) } => {
            mount::remove_uppers(&ctx, &names, false)
        }
        Command::Uppers { command: Some(crate::cli::UppersCommand::Prune) } => {
            mount::remove_uppers(&ctx, &[], true)
        }
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
        Command::Completion { shell } => completion(shell),
        Command::Man { command } => man(&command.join("-")),
    }
}

/// A command on the store: run by the node on this data dir when one runs
/// (it owns the store then, and holds what it fetched before the store's
/// files do), else here; either way its typed outcome is printed here.
/// Ctrl-C (or SIGTERM, SIGHUP) cancels an import, wherever it runs: the
/// store keeps nothing of it; a second signal exits at once.
fn routed(ctx: &Ctx, command: Routed) -> anyhow::Result<()> {
    let outcome = routed_outcome(ctx, command)?;
    images::print(ctx, &outcome)
}

/// [`routed`]'s outcome, not printed.
fn routed_outcome(ctx: &Ctx, command: Routed) -> anyhow::Result<strata_control::Outcome> {
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
        Ok(outcome) => Ok(outcome),
        // Returned, not exited: what the command holds (a spooled stdin)
        // goes as the stack unwinds.
        Err(strata_daemon::Error::Cancelled) => Err(Cancelled.into()),
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

/// `strata completion SHELL`: clap_complete's script for the shell.
fn completion(shell: crate::cli::Shell) -> anyhow::Result<()> {
    let shell = match shell {
        crate::cli::Shell::Bash => clap_complete::Shell::Bash,
        crate::cli::Shell::Zsh => clap_complete::Shell::Zsh,
        crate::cli::Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "strata", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// `strata man [COMMAND]`: the page build.rs made from the command's help.
fn man(command: &str) -> anyhow::Result<()> {
    let name = match command {
        "" => "strata".to_owned(),
        command => format!("strata-{command}"),
    };
    match crate::MAN_PAGES.iter().find(|(page, _)| *page == name) {
        Some((_, text)) => {
            out!("{text}");
            Ok(())
        }
        None => {
            let commands: Vec<&str> =
                crate::MAN_PAGES.iter().filter_map(|(page, _)| page.strip_prefix("strata-")).collect();
            anyhow::bail!("no manual page for {name}; the commands are {}", commands.join(", "))
        }
    }
}

/// A command the user cancelled (Ctrl-C): `main` says so and exits 130.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled: nothing was imported")
    }
}

impl std::error::Error for Cancelled {}

/// `strata import -`: stdin copied to a file under DATA_DIR/tmp (an
/// archive is read out of order, and a node imports by path), removed
/// when dropped; one a killed import left is removed by the next.
fn spool_stdin(ctx: &Ctx) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        anyhow::bail!(
            "import -: stdin is a terminal; pipe an archive in (docker save IMAGE | strata import -)"
        );
    }
    let scratch = ctx.dir.path.join("tmp");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    strata_daemon::ops::sweep_scratch(&scratch);
    let mut file = tempfile::Builder::new()
        .prefix(&format!("stdin-{}-", std::process::id()))
        .suffix(".tar")
        .tempfile_in(&scratch)
        .with_context(|| format!("creating a file in {}", scratch.display()))?;
    std::io::copy(&mut std::io::stdin().lock(), file.as_file_mut())
        .with_context(|| format!("copying stdin to {}", file.path().display()))?;
    Ok(file)
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
        outln!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

fn show_config(ctx: &Ctx) -> anyhow::Result<()> {
    let sources = Settings::sources(ctx.dir.config_file.as_deref(), &ctx.dir.path);
    if ctx.json {
        return ctx.print_json(&serde_json::json!({ "sources": sources, "settings": ctx.dir.settings }));
    }
    outln!("# looked at, in order (later ones override earlier ones):");
    for source in &sources {
        let found = match source.found {
            strata_daemon::settings::Found::Used => "used",
            strata_daemon::settings::Found::Missing => "not there",
            strata_daemon::settings::Found::Skipped => "not read: an earlier file was used",
        };
        outln!("#   {}: {found}", source.place);
    }
    out!("{}", toml::to_string(&ctx.dir.settings).context("printing the settings")?);
    Ok(())
}

impl From<crate::cli::IdentityArgs> for strata_daemon::identity::IdentitySpec {
    fn from(args: crate::cli::IdentityArgs) -> Self {
        Self { node: args.node, cert_dir: args.cert_dir }
    }
}

impl From<crate::cli::PeerArgs> for strata_daemon::mount::PeerMount {
    fn from(args: crate::cli::PeerArgs) -> Self {
        Self { peers: args.peers, fetch_deadline: args.fetch_deadline, identity: args.identity.into() }
    }
}

impl From<crate::cli::BackgroundMode> for strata_types::BackgroundFetch {
    fn from(mode: crate::cli::BackgroundMode) -> Self {
        match mode {
            crate::cli::BackgroundMode::None => Self::None,
            crate::cli::BackgroundMode::Profile => Self::Profile,
            crate::cli::BackgroundMode::All => Self::All,
        }
    }
}

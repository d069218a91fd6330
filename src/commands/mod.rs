//! One module per command; this one resolves the store and settings.

mod cert;
mod commit;
mod demo;
mod demo_cluster;
mod images;
mod import;
mod maintenance;
mod mount;
mod node;
mod run;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use strata_store::{OpenMode, Store, StoreError};

pub use node::serve_node;

use crate::cli::{CertCommand, Cli, Command, ConfigCommand, Global, StoreCommand};
use crate::config::{default_data_dir, Settings};
use crate::control::Forwarded;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(cli.global)?;
    let log_json = match &cli.command {
        Command::Serve(args) => args.log_json || ctx.settings.node.log_format == "json",
        _ => false,
    };
    crate::logging::init(matches!(cli.command, Command::Serve(_)), log_json);
    match cli.command {
        Command::Import { file, names } => routed(&ctx, Forwarded::Import { file: absolute(&file)?, names }),
        // Listings are answered by the node when one runs: its store holds
        // what it fetched before that reaches the files a view reads.
        Command::Images => routed(&ctx, Forwarded::Images),
        Command::Inspect { image } => routed(&ctx, Forwarded::Inspect { image }),
        Command::Export { image, output, compression } => import::export(&ctx, &image, &output, compression),
        Command::Rm { images } => routed(&ctx, Forwarded::Rm { images }),
        Command::Gc => routed(&ctx, Forwarded::Gc),
        Command::Store { command: StoreCommand::Stats } => routed(&ctx, Forwarded::Stats),
        Command::Mount { image, mountpoint, upper, read_only, trace_reads, peer } => mount::mount(
            &ctx,
            &image,
            &mountpoint,
            upper.as_deref(),
            read_only,
            trace_reads.as_deref(),
            &peer,
        ),
        Command::Serve(args) => serve_node(&ctx, &args),
        Command::Peers => routed(&ctx, Forwarded::Peers),
        Command::Commit { mountpoint, upper, names } => {
            let mountpoint = mountpoint.as_deref().map(absolute).transpose()?;
            let upper = upper.as_deref().map(absolute).transpose()?;
            routed(&ctx, Forwarded::Commit { mountpoint, upper, names })
        }
        Command::Run { image, upper, trace_reads, command } => {
            let code = run::run(&ctx, &image, upper.as_deref(), trace_reads.as_deref(), &command)?;
            std::process::exit(code)
        }
        Command::Cert { command: CertCommand::InitCa { dir, cluster } } => cert::init_ca(&ctx, dir, &cluster),
        Command::Cert { command: CertCommand::Issue { node, dir } } => cert::issue(&ctx, dir, &node),
        Command::Config { command: ConfigCommand::Show } => show_config(&ctx),
        Command::Umount { mountpoint, lazy } => mount::umount(&ctx, &mountpoint, lazy),
        Command::Mounts => mount::list(&ctx),
        Command::MountServe { image, mountpoint, upper, trace_reads, peer } => {
            mount::serve(&ctx, &image, &mountpoint, upper.as_deref(), trace_reads.as_deref(), &peer)
        }
        Command::Demo => demo::run(&ctx),
    }
}

/// A command that changes or reads the store: run by the node on this data
/// dir when one runs (it owns the store then, and holds what it fetched
/// before the store's files do), else here.
fn routed(ctx: &Ctx, command: Forwarded) -> anyhow::Result<()> {
    if let Some(result) = crate::control::forward(&ctx.data_dir, command.clone(), ctx.json) {
        return result;
    }
    run_forwarded(ctx, command)
}

/// Runs a routed command against `ctx`'s store (the node's, inside a node).
pub fn run_forwarded(ctx: &Ctx, command: Forwarded) -> anyhow::Result<()> {
    match command {
        Forwarded::Import { file, names } => import::import(ctx, &file, names),
        Forwarded::Rm { images } => maintenance::rm(ctx, &images),
        Forwarded::Gc => maintenance::gc(ctx),
        Forwarded::Commit { mountpoint, upper, names } => {
            commit::commit(ctx, mountpoint.as_deref(), upper.as_deref(), &names)
        }
        Forwarded::Peers => node::peers(ctx),
        Forwarded::Images => images::list(ctx),
        Forwarded::Inspect { image } => images::inspect(ctx, &image),
        Forwarded::Stats => maintenance::stats(ctx),
    }
}

/// Paths travel to the node absolute: it does not share the caller's cwd.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// What every command needs: where the store is, settings, output mode.
pub struct Ctx {
    pub data_dir: PathBuf,
    pub settings: Settings,
    pub json: bool,
    pub config_file: Option<PathBuf>,
    lock_wait: Duration,
    explicit_data_dir: bool,
    /// The node, when this command runs inside `strata serve` for a caller.
    pub node: Option<Arc<strata_node::Node>>,
    /// Where the command's output goes: stdout, or the caller's buffer.
    out: Option<Mutex<Vec<u8>>>,
}

impl Ctx {
    fn new(global: Global) -> anyhow::Result<Self> {
        let explicit_data_dir = global.data_dir.is_some();
        let data_dir = global.data_dir.unwrap_or_else(default_data_dir);
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let settings = Settings::load(global.config.as_deref(), &data_dir)?;
        Ok(Self {
            data_dir,
            settings,
            json: global.json,
            config_file: global.config,
            lock_wait: Duration::from_secs(global.lock_wait),
            explicit_data_dir,
            node: None,
            out: None,
        })
    }

    /// The context of a command the node runs for a caller: the node's
    /// store, output collected for the caller.
    pub fn for_caller(&self, node: Arc<strata_node::Node>, json: bool) -> Self {
        Self {
            data_dir: self.data_dir.clone(),
            settings: self.settings.clone(),
            json,
            config_file: self.config_file.clone(),
            lock_wait: self.lock_wait,
            explicit_data_dir: self.explicit_data_dir,
            node: Some(node),
            out: Some(Mutex::new(Vec::new())),
        }
    }

    /// What a caller's command printed.
    pub fn take_output(&self) -> Vec<u8> {
        self.out
            .as_ref()
            .map(|o| std::mem::take(&mut *o.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// Prints a line of the command's output.
    pub fn println(&self, line: impl std::fmt::Display) {
        match &self.out {
            None => println!("{line}"),
            Some(buffer) => {
                let mut buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
                buffer.extend_from_slice(format!("{line}\n").as_bytes());
            }
        }
    }

    /// Prints `value` as the command's JSON output.
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        self.println(serde_json::to_string_pretty(value)?);
        Ok(())
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The store for reading: a consistent view beside a running writer.
    pub fn read_store(&self) -> anyhow::Result<Arc<Store>> {
        // Inside a node, its own store: what it fetched is there before
        // it reaches the store's files.
        if let Some(node) = &self.node {
            return Ok(node.store().clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        Ok(Arc::new(Store::open(&self.store_dir(), OpenMode::ReadOnly).context("opening the store")?))
    }

    /// The store for changing (the node's, inside a node), waiting while
    /// another process holds it.
    pub fn write_store(&self) -> anyhow::Result<Arc<Store>> {
        if let Some(node) = &self.node {
            return Ok(node.store().clone());
        }
        self.open_write_store().map(Arc::new)
    }

    /// Opens the store for changing, waiting while another process holds it.
    pub fn open_write_store(&self) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match Store::open(&self.store_dir(), OpenMode::ReadWrite) {
                Err(StoreError::Busy { path }) if started.elapsed() < self.lock_wait => {
                    if !told {
                        eprintln!("waiting for another strata process to release {}", path.display());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other.context("opening the store"),
            }
        }
    }
}

fn show_config(ctx: &Ctx) -> anyhow::Result<()> {
    let file = ctx.config_file.clone().or_else(|| Settings::default_file(&ctx.data_dir));
    if ctx.json {
        return crate::output::json(&serde_json::json!({ "file": file, "settings": ctx.settings }));
    }
    match &file {
        Some(file) => println!("# from defaults, {}, and STRATA_* variables", file.display()),
        None => println!("# from defaults and STRATA_* variables (no settings file)"),
    }
    print!("{}", toml::to_string(&ctx.settings).context("printing the settings")?);
    Ok(())
}

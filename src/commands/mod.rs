//! One module per command; this one resolves the store and settings.

mod cert;
mod commit;
mod demo;
mod images;
mod import;
mod maintenance;
mod mount;
mod run;
mod serve;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use strata_store::{OpenMode, Store, StoreError};

use crate::cli::{CertCommand, Cli, Command, ConfigCommand, Global, StoreCommand};
use crate::config::{default_data_dir, Settings};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(cli.global)?;
    match cli.command {
        Command::Import { file, names } => import::import(&ctx, &file, names),
        Command::Images => images::list(&ctx),
        Command::Inspect { image } => images::inspect(&ctx, &image),
        Command::Export { image, output, compression } => import::export(&ctx, &image, &output, compression),
        Command::Rm { images } => maintenance::rm(&ctx, &images),
        Command::Gc => maintenance::gc(&ctx),
        Command::Store { command: StoreCommand::Stats } => maintenance::stats(&ctx),
        Command::Mount { image, mountpoint, upper, read_only, peer } => {
            mount::mount(&ctx, &image, &mountpoint, upper.as_deref(), read_only, &peer)
        }
        Command::Serve { listen, identity } => serve::serve(&ctx, listen, &identity),
        Command::Commit { mountpoint, upper, names } => {
            commit::commit(&ctx, mountpoint.as_deref(), upper.as_deref(), &names)
        }
        Command::Run { image, upper, command } => {
            let code = run::run(&ctx, &image, upper.as_deref(), &command)?;
            std::process::exit(code)
        }
        Command::Cert { command: CertCommand::InitCa { dir, cluster } } => cert::init_ca(&ctx, dir, &cluster),
        Command::Cert { command: CertCommand::Issue { node, dir } } => cert::issue(&ctx, dir, &node),
        Command::Config { command: ConfigCommand::Show } => show_config(&ctx),
        Command::Umount { mountpoint, lazy } => mount::umount(&ctx, &mountpoint, lazy),
        Command::Mounts => mount::list(&ctx),
        Command::MountServe { image, mountpoint, upper, peer } => {
            mount::serve(&ctx, &image, &mountpoint, upper.as_deref(), &peer)
        }
        Command::Demo => demo::run(&ctx),
    }
}

/// What every command needs: where the store is, settings, output mode.
pub struct Ctx {
    pub data_dir: PathBuf,
    pub settings: Settings,
    pub json: bool,
    pub config_file: Option<PathBuf>,
    lock_wait: Duration,
    explicit_data_dir: bool,
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
        })
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The store for reading: a consistent view beside a running writer.
    pub fn read_store(&self) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        Store::open(&self.store_dir(), OpenMode::ReadOnly).context("opening the store")
    }

    /// The store for changing, waiting while another process holds it.
    pub fn write_store(&self) -> anyhow::Result<Store> {
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

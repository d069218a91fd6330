//! Settings: built-in defaults, then a TOML file (`--config FILE`, else
//! DATA_DIR/strata.toml, else /etc/strata/strata.toml), then `STRATA_*`
//! environment variables (for example `STRATA_ZSTD_LEVEL=1`). `strata config
//! show` prints the result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use strata_chunk::Chunking;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// How files are split into chunks.
    pub chunking: Chunking,
    /// zstd level for stored chunks; 0 stores them uncompressed.
    pub zstd_level: i32,
    /// Threads that compress and store chunks during import.
    pub import_workers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let import = strata_oci::ImportOptions::default();
        Self { chunking: import.chunking, zstd_level: import.zstd_level, import_workers: import.workers }
    }
}

impl Settings {
    /// Import options from these settings, naming the image `names`.
    pub fn import_options(&self, names: Vec<String>) -> strata_oci::ImportOptions {
        strata_oci::ImportOptions {
            names,
            chunking: self.chunking,
            zstd_level: self.zstd_level,
            workers: self.import_workers,
        }
    }

    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match explicit {
            Some(file) => {
                anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
                figment = figment.merge(Toml::file(file));
            }
            None => {
                if let Some(file) = Self::default_file(data_dir) {
                    figment = figment.merge(Toml::file(file));
                }
            }
        }
        let settings: Settings = figment
            .merge(Env::prefixed("STRATA_").ignore(&["data_dir", "config", "log"]))
            .extract()
            .context("reading settings")?;
        settings.chunking.validate().context("chunking settings")?;
        Ok(settings)
    }
}

impl Settings {
    /// The settings file used when none is given: DATA_DIR/strata.toml, else
    /// /etc/strata/strata.toml, whichever exists first.
    pub fn default_file(data_dir: &Path) -> Option<PathBuf> {
        [data_dir.join("strata.toml"), PathBuf::from("/etc/strata/strata.toml")]
            .into_iter()
            .find(|f| f.exists())
    }
}

/// The store directory when none is given.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/strata");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("strata");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/strata"),
        None => PathBuf::from(".strata-data"),
    }
}

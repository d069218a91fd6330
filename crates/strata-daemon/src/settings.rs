//! Settings: built-in defaults, then a TOML file (`--config FILE`, else
//! DATA_DIR/strata.toml, else /etc/strata/strata.toml), then `STRATA_*`
//! environment variables (for example `STRATA_ZSTD_LEVEL=1`, or
//! `STRATA_NODE__NAME=node1` for `[node] name`). `strata config show` prints
//! the result.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use strata_chunk::Chunking;

use crate::error::{refuse, Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How files are split into chunks.
    pub chunking: Chunking,
    /// zstd level for stored chunks; 0 stores them uncompressed.
    pub zstd_level: i32,
    /// Threads that compress and store chunks during import.
    pub import_workers: usize,
    /// `strata serve`: the node.
    pub node: NodeSettings,
    /// Mounts (`strata mount`, `strata run`).
    pub mount: MountSettings,
    /// Registries (`strata pull`): TLS, insecure ones, credentials.
    pub registry: strata_registry::RegistrySettings,
    /// `strata serve`: the containerd snapshotter.
    pub snapshotter: SnapshotterSettings,
    /// `strata serve`: the disk cap of the chunk store.
    pub cache: CacheSettings,
}

/// The disk cap a node keeps its chunk store under. It evicts chunks of
/// images no live mount uses, that are not pinned (imported or committed
/// on this node), unused for `grace_secs`, and whose layers another live
/// node holds whole (so they can be fetched again), least recently used
/// first; their layers stay, and reads fetch the chunks again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Stored (compressed) chunk bytes at most; 0 = no cap.
    pub max_bytes: u64,
    /// Free bytes to keep on the store's filesystem; 0 = no floor.
    pub min_free_bytes: u64,
    /// Eviction starts above this fraction of `max_bytes` ...
    pub high_watermark: f64,
    /// ... and stops below this one.
    pub low_watermark: f64,
    /// Seconds after its last use (pull, container start, fetch) during
    /// which an image is never evicted.
    pub grace_secs: f64,
    /// Seconds between checks of the cap (a background fetch about to
    /// cross it also checks).
    pub interval_secs: f64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 0,
            min_free_bytes: 0,
            high_watermark: 0.95,
            low_watermark: 0.80,
            grace_secs: 60.0,
            interval_secs: 30.0,
        }
    }
}

/// The containerd proxy snapshotter `strata serve` runs (containerd's
/// `[proxy_plugins.strata]`, type "snapshot", address = `socket`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterSettings {
    /// The Unix socket containerd's proxy plugin dials; unset: no
    /// snapshotter (`strata serve --snapshotter-socket` sets it too).
    pub socket: Option<PathBuf>,
    /// Where snapshot directories go (upper and work directories of
    /// containers): a local filesystem overlayfs takes as upper, so not
    /// FUSE, NFS or overlayfs [default: DATA_DIR/snapshotter].
    pub root: Option<PathBuf>,
}

/// How mounts are served.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountSettings {
    /// Most the kernel reads ahead of a read, KiB (4 to 1024; the kernel
    /// also holds it to the mount's read_ahead_kb, 128 by default). Smaller
    /// fetches less that nobody reads when chunks come from peers.
    pub readahead_kb: u32,
    /// Seconds from a mount's start whose reads make the image's startup
    /// profile (recorded by mounts through a node, shared with peers that
    /// pull the image, which fetch those chunks ahead of the reads).
    pub profile_window_secs: f64,
    /// Seconds between a mount's reports of its read counters to the node
    /// on its data dir (shown on the node's `/metrics`).
    pub stats_interval_secs: f64,
}

impl Default for MountSettings {
    fn default() -> Self {
        Self {
            readahead_kb: strata_mount::MountOptions::default().readahead_kb,
            profile_window_secs: 60.0,
            stats_interval_secs: 10.0,
        }
    }
}

/// `[node] congestion_control`: a connection's congestion controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC (RFC 9438).
    #[default]
    Cubic,
    /// BBR (draft-cardwell-iccrg-bbr; quinn's BBRv1, experimental there).
    Bbr,
}

/// How `strata serve` runs; its flags override these.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's name (its certificate's); no default.
    pub name: Option<String>,
    /// Where ca.pem and NAME.pem are [default: DATA_DIR/certs].
    pub cert_dir: Option<PathBuf>,
    /// The certificate pair to load, CERT_NAME.pem and CERT_NAME-key.pem
    /// [default: the node's name]. Every node certificate carries the SAN
    /// peers check, so nodes may share one (as the Kubernetes manifest does).
    pub cert_name: Option<String>,
    /// QUIC address for peers.
    pub listen: String,
    /// Address peers reach this node on (host:port).
    pub advertise: Option<String>,
    /// Nodes to join through (host:port).
    pub seeds: Vec<String>,
    /// Prometheus metrics address (host:port); "" for none.
    pub metrics_listen: String,
    /// Seconds a chunk fetch may take, all peers together, before the read
    /// fails with EIO.
    pub fetch_deadline_secs: f64,
    /// Seconds between announcements of what this node holds.
    pub announce_interval_secs: f64,
    /// Directory nodes per key.
    pub directory_replicas: usize,
    /// Bytes per second this node serves to all peers together; 0 = no cap.
    pub max_upload_bytes_per_sec: u64,
    /// Bytes per second this node serves to one peer; 0 = no cap.
    pub max_upload_per_peer_bytes_per_sec: u64,
    /// What the node fetches beyond what containers read: "none", "profile"
    /// (an image's startup profile, ahead of its reads) or "all" (the
    /// profile, then, once a container has read from the image, all of it,
    /// yielding to reads; and on the first start of an image with no
    /// profile, all of it at once at full link speed). `strata pull
    /// --background-fetch` sets it for one image.
    pub background_fetch: strata_types::BackgroundFetch,
    /// Bytes per second background fetching that yields to reads may
    /// take, all images together; 0 = no cap. (A profile, a first start
    /// and `pull --all` go at full speed.)
    pub background_rate_bytes_per_sec: u64,
    /// Batch requests (each for many chunks) one image's background fetch
    /// keeps in flight at most.
    pub background_requests: usize,
    /// The congestion window this node's QUIC connections start with, in
    /// bytes (it bounds what this node sends, so it matters on holders);
    /// 0 = the QUIC default (RFC 9002 §7.2: about 12 KB); else 3000 to
    /// 32 MiB. Near the link's bandwidth-delay product (rate × RTT), a
    /// first start on a long link skips the round trips of slow start; too
    /// large on a shared link, it causes loss.
    pub initial_window_bytes: u64,
    /// The congestion controller of this node's QUIC connections: "cubic"
    /// (the default, as Linux TCP's) or "bbr" (it bounds what this node
    /// sends; both start from `initial_window_bytes`).
    pub congestion_control: CongestionControl,
    /// Log format: "text" or "json".
    pub log_format: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            name: None,
            cert_dir: None,
            cert_name: None,
            listen: "0.0.0.0:7420".into(),
            advertise: None,
            seeds: Vec::new(),
            metrics_listen: "127.0.0.1:9420".into(),
            fetch_deadline_secs: 5.0,
            announce_interval_secs: 30.0,
            directory_replicas: 2,
            max_upload_bytes_per_sec: 0,
            max_upload_per_peer_bytes_per_sec: 0,
            background_fetch: strata_types::BackgroundFetch::All,
            background_rate_bytes_per_sec: 0,
            background_requests: 4,
            initial_window_bytes: 0,
            congestion_control: CongestionControl::Cubic,
            log_format: "text".into(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let import = strata_oci::ImportOptions::default();
        Self {
            chunking: import.chunking,
            zstd_level: import.zstd_level,
            import_workers: import.workers,
            node: NodeSettings::default(),
            mount: MountSettings::default(),
            registry: strata_registry::RegistrySettings::default(),
            snapshotter: SnapshotterSettings::default(),
            cache: CacheSettings::default(),
        }
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
            ..strata_oci::ImportOptions::default()
        }
    }

    /// Defaults, then `explicit` (else the [default file](Self::default_file)),
    /// then `STRATA_*` variables (see [`NOT_SETTINGS`] for those that are not
    /// settings).
    ///
    /// Errors: a given file that does not exist; a key no setting has, in
    /// the file or as a variable (the error names the key and where it was
    /// written: the file's path or the variable's name); a value of the
    /// wrong type (named the same way); chunking settings
    /// `strata_chunk::Chunking::validate` refuses.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> Result<Self> {
        // The defaults are serde's (`#[serde(default)]`), not a layer of
        // data: a file's `[chunking] mode = "fixed"` must not meet the
        // default cdc keys, and every key left is one somebody wrote.
        let mut figment = Figment::new();
        match explicit {
            Some(file) => {
                if !file.exists() {
                    refuse!("config file {} does not exist", file.display());
                }
                figment = figment.merge(Toml::file(file));
            }
            None => {
                if let Some(file) = Self::default_file(data_dir) {
                    figment = figment.merge(Toml::file(file));
                }
            }
        }
        let figment = with_chunking_defaults(figment.merge(settings_env()));
        let settings: Settings = figment.extract().map_err(|e| {
            let problems: Vec<String> = e.into_iter().map(|e| settings_problem(&e)).collect();
            Error::Refused(format!("settings: {}", problems.join("; ")))
        })?;
        if let Err(e) = settings.chunking.validate() {
            refuse!("chunking settings: {e}");
        }
        settings.check_ranges()?;
        Ok(settings)
    }

    /// The settings file used when none is given: DATA_DIR/strata.toml, else
    /// /etc/strata/strata.toml, whichever exists first.
    pub fn default_file(data_dir: &Path) -> Option<PathBuf> {
        Self::default_files(data_dir).into_iter().find(|f| f.exists())
    }

    fn default_files(data_dir: &Path) -> [PathBuf; 2] {
        [data_dir.join("strata.toml"), PathBuf::from(SYSTEM_FILE)]
    }

    /// Every place [`load`](Self::load) looks, in the order it looks
    /// (later ones override earlier ones), and what it found there: what
    /// `strata config show` lists.
    pub fn sources(explicit: Option<&Path>, data_dir: &Path) -> Vec<SettingsSource> {
        let mut out = vec![SettingsSource { place: "built-in defaults".into(), found: Found::Used }];
        let mut taken = false;
        if let Some(file) = explicit {
            let found = if file.exists() { Found::Used } else { Found::Missing };
            taken = true;
            out.push(SettingsSource {
                place: format!("{} (--config or STRATA_CONFIG)", file.display()),
                found,
            });
        }
        for file in Self::default_files(data_dir) {
            let found = match (taken, file.exists()) {
                (true, _) => Found::Skipped,
                (false, true) => {
                    taken = true;
                    Found::Used
                }
                (false, false) => Found::Missing,
            };
            out.push(SettingsSource { place: file.display().to_string(), found });
        }
        let mut vars: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with(ENV_PREFIX) && is_setting_variable(&k[ENV_PREFIX.len()..]))
            .collect();
        vars.sort();
        out.push(match vars.is_empty() {
            true => SettingsSource { place: "STRATA_* variables".into(), found: Found::Missing },
            false => SettingsSource {
                place: format!("STRATA_* variables: {}", vars.join(", ")),
                found: Found::Used,
            },
        });
        out
    }
}

/// The settings file every data dir falls back to.
pub const SYSTEM_FILE: &str = "/etc/strata/strata.toml";

const ENV_PREFIX: &str = "STRATA_";

/// `STRATA_*` variables that are not settings, so never an unknown key:
/// those the command line reads itself (`STRATA_LOG`, `STRATA_DATA_DIR`,
/// `STRATA_CONFIG`), the prefixes of those the project's harnesses read
/// (`STRATA_BENCH_*`, `STRATA_TEST_*`, `STRATA_FAULT_*` in fault-injection
/// builds, `STRATA_DEPLOY_*` in `deploy/`), and the service variables
/// Kubernetes and docker links set for a service named `strata`
/// (`STRATA_SERVICE_HOST`, `STRATA_PORT`, `STRATA_PORT_7420_UDP`, …). Every other `STRATA_*` variable
/// is a setting: `STRATA_ZSTD_LEVEL`, or `STRATA_NODE__NAME` for `[node] name`.
pub const NOT_SETTINGS: [&str; 10] = [
    "STRATA_LOG",
    "STRATA_DATA_DIR",
    "STRATA_CONFIG",
    "STRATA_BENCH_*",
    "STRATA_TEST_*",
    "STRATA_FAULT_*",
    "STRATA_DEPLOY_*",
    // What Kubernetes (and docker's --link) set for a service named strata.
    "STRATA_SERVICE_*",
    "STRATA_PORT",
    "STRATA_PORT_*",
];

/// Whether `STRATA_<rest>` is a setting (see [`NOT_SETTINGS`]).
fn is_setting_variable(rest: &str) -> bool {
    let rest = rest.to_ascii_uppercase();
    !NOT_SETTINGS.iter().any(|n| {
        let n = &n[ENV_PREFIX.len()..];
        match n.strip_suffix('*') {
            Some(prefix) => rest.starts_with(prefix),
            None => rest == n,
        }
    })
}

/// `[chunking]` keys left out take their defaults for the mode written
/// (cdc when none is): `avg = 32768` alone is a cdc chunking with the
/// default min and max. (The defaults are not a layer under the file, or
/// a `mode = "fixed"` would meet cdc's keys.)
fn with_chunking_defaults(figment: Figment) -> Figment {
    use figment::value::{Dict, Value};
    let Ok(Value::Dict(_, written)) = figment.find_value("chunking") else { return figment };
    let mode = written.get("mode").and_then(Value::as_str).unwrap_or("cdc").to_owned();
    let mut defaults = Dict::new();
    defaults.insert("mode".into(), mode.clone().into());
    if let ("cdc", Chunking::Cdc { min, avg, max }) = (mode.as_str(), Chunking::default()) {
        defaults.insert("min".into(), (min as u64).into());
        defaults.insert("avg".into(), (avg as u64).into());
        defaults.insert("max".into(), (max as u64).into());
    }
    // Joined: what was written wins.
    figment.join(figment::providers::Serialized::default("chunking", defaults))
}

impl Settings {
    /// Values outside what they may be: zstd levels 0 to 22, a positive
    /// fetch deadline, read-ahead 4 to 1024 KiB, watermarks in (0, 1] with
    /// low below high.
    fn check_ranges(&self) -> Result<()> {
        if !(0..=22).contains(&self.zstd_level) {
            refuse!("settings: `zstd_level` = {}: zstd levels are 0 (store raw) to 22", self.zstd_level);
        }
        if self.node.fetch_deadline_secs.is_nan() || self.node.fetch_deadline_secs <= 0.0 {
            refuse!(
                "settings: `node.fetch_deadline_secs` = {}: a deadline is positive",
                self.node.fetch_deadline_secs
            );
        }
        if !(4..=1024).contains(&self.mount.readahead_kb) {
            refuse!("settings: `mount.readahead_kb` = {}: 4 to 1024", self.mount.readahead_kb);
        }
        let (low, high) = (self.cache.low_watermark, self.cache.high_watermark);
        if !(low > 0.0 && low < high && high <= 1.0) {
            refuse!("settings: `cache.low_watermark` {low} and `cache.high_watermark` {high}: 0 < low < high <= 1");
        }
        Ok(())
    }
}

/// One settings error as the user wrote the key: `STRATA_NODE__FOO` for a
/// variable, `node.foo in FILE` for a file.
fn settings_problem(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
    let what = match &e.kind {
        // figment names the enclosing key; the field is in the kind.
        figment::error::Kind::UnknownField(field, expected) => {
            let known = expected.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            // The path may or may not end with the field itself.
            let ends_with_field = e.path.last().is_some_and(|last| last.eq_ignore_ascii_case(field));
            let field_key = match (key.is_empty(), ends_with_field) {
                (true, _) => field.clone(),
                (false, true) => key.clone(),
                (false, false) => format!("{key}.{field}"),
            };
            let source = source_of(e, &field_key, from_env);
            return format!("{source}: no such setting (the keys there are {known})");
        }
        kind => kind.to_string(),
    };
    format!("{}: {what}", source_of(e, &key, from_env))
}

/// `STRATA_A__B` for a key from the environment, `a.b in FILE` for one from
/// a file.
fn source_of(e: &figment::Error, key: &str, from_env: bool) -> String {
    if from_env {
        return format!("{ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase());
    }
    let key = if key.is_empty() { String::new() } else { format!("`{key}` in ") };
    match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        // The path as given (figment's own display makes it relative).
        Some(figment::Source::File(path)) => format!("{key}{}", path.display()),
        Some(source) => format!("{key}{source}"),
        None if key.is_empty() => "the settings".to_owned(),
        None => key.trim_end_matches(" in ").to_owned(),
    }
}

/// The `STRATA_*` variables as settings: `__` separates a section from
/// its key (`STRATA_NODE__NAME` is `[node] name`).
fn settings_env() -> Env {
    Env::prefixed(ENV_PREFIX).filter(|key| is_setting_variable(key.as_str())).split("__")
}

/// One place [`Settings::load`] looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SettingsSource {
    /// A file's path, or what else it is ("built-in defaults", the variables).
    pub place: String,
    pub found: Found,
}

/// What [`Settings::load`] found in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Found {
    /// Read, and laid over what came before.
    Used,
    /// Looked for, not there.
    Missing,
    /// Not read: an earlier file was used (only one file is read).
    Skipped,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The dotted key paths of a settings value (`node.name`), maps and
    /// lists as leaves.
    fn keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    keys(v, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn the_reference_documents_every_setting() {
        let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let doc = std::fs::read_to_string(doc_path).expect("docs/configuration.md");
        let mut in_code = Vec::new();
        keys(&serde_json::to_value(Settings::default()).expect("settings serialize"), "", &mut in_code);
        // Keys of variants and maps the defaults do not show.
        in_code.extend(
            ["chunking.size", "node.name", "node.cert_dir", "node.cert_name", "node.advertise"]
                .map(String::from),
        );
        in_code.extend(["snapshotter.socket", "snapshotter.root"].map(String::from));
        in_code.sort();
        in_code.dedup();
        // Each table row's first cell: `key`.
        let documented: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(key, _)| key.to_owned()))
            .collect();
        for key in &in_code {
            assert!(documented.contains(key), "docs/configuration.md lacks `{key}`");
        }
        for key in &documented {
            assert!(in_code.contains(key), "docs/configuration.md documents `{key}`, which no setting has");
        }
    }

    #[test]
    fn variables_that_are_not_settings() {
        for name in [
            "LOG",
            "DATA_DIR",
            "CONFIG",
            "BENCH_LOG",
            "TEST_DEB_CACHE",
            "FAULT_STALL_IMPORT",
            "DEPLOY_IMAGE",
            "SERVICE_HOST",
            "PORT",
            "PORT_7420_UDP_ADDR",
        ] {
            assert!(!is_setting_variable(name), "{name}");
        }
        for name in ["ZSTD_LEVEL", "NODE__NAME", "LOGS", "CONFIGURATION", "BACKGROUND_FETCH"] {
            assert!(is_setting_variable(name), "{name}");
        }
    }
}

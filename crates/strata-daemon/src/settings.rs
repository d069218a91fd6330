//! Settings: built-in defaults, then a TOML file (`--config FILE`, else
//! DATA_DIR/strata.toml, else /etc/strata/strata.toml), then `STRATA_*`
//! environment variables (for example `STRATA_ZSTD_LEVEL=1`, or
//! `STRATA_NODE__NAME=node1` for `[node] name`). `strata config show` prints
//! the result.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use strata_chunk::Chunking;

use crate::error::{refuse, Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
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
#[serde(default)]
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
#[serde(default)]
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
#[serde(default)]
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
#[serde(default)]
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
    /// then `STRATA_*` variables.
    ///
    /// Errors: a given file that does not exist, a value of the wrong type,
    /// chunking settings `strata_chunk::Chunking::validate` refuses.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
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
        let settings: Settings = figment
            .merge(Env::prefixed("STRATA_").ignore(&["data_dir", "config", "log"]).split("__"))
            .extract()
            .map_err(|e| Error::Settings(Box::new(e)))?;
        if let Err(e) = settings.chunking.validate() {
            refuse!("chunking settings: {e}");
        }
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

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Strata: a distributed, lazy-pulling, copy-on-write container layer store.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where the store lives [default: $STRATA_DATA_DIR, else /var/lib/strata
    /// for root, else $XDG_DATA_HOME/strata or ~/.local/share/strata].
    #[arg(long, global = true, env = "STRATA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Settings file [default: DATA_DIR/strata.toml if it exists].
    #[arg(long, global = true, env = "STRATA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for another strata process to release the store.
    #[arg(long, global = true, default_value_t = 300, value_name = "SECS")]
    pub lock_wait: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import images from a docker-save archive or an OCI image layout (dir or tar).
    Import {
        /// The archive or layout directory.
        file: PathBuf,
        /// Name the image NAME (repo:tag) instead of the names in the archive;
        /// repeat for several names. The archive must hold one image.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Pull an image from its registry: busybox, host:port/repo:tag, repo@sha256:…
    /// (as docker writes them). Credentials: --username with --password-stdin,
    /// else `[registry.auth."HOST"]` in the settings, else docker's config.
    Pull {
        /// The image reference.
        reference: String,
        /// OS/ARCH[/VARIANT] to take from a multi-platform image (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// The registry user name; the password comes from stdin (--password-stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input (its first line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// What the node fetches of this image beyond reads, from now on:
        /// none, profile (its startup profile, ahead of reads) or all (then
        /// the whole image once a container reads from it) [default: the
        /// node's [node] background_fetch].
        #[arg(long, value_name = "MODE")]
        background_fetch: Option<strata_types::BackgroundFetch>,
        /// Through a node: fetch every chunk of the image now, at full
        /// speed, and return when it is whole (progress on a terminal).
        #[arg(long)]
        all: bool,
    },
    /// Push an image to a registry: each layer as the blob it was pulled as when
    /// the registry has it or mounts it, else its tar gzip-compressed
    /// deterministically (a second push sends nothing). Credentials as for pull.
    Push {
        /// The image in the store: name, id or unique id prefix.
        image: String,
        /// Where to push it: host:port/repo:tag (as docker writes references).
        reference: String,
        /// The registry user name; the password comes from stdin (--password-stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input (its first line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// List images.
    Images,
    /// Per image: how much is held here, and what the node is fetching of
    /// it in the background (rate, time left).
    Status,
    /// Show an image: config and layers.
    Inspect {
        /// Name, id or unique id prefix.
        image: String,
    },
    /// Write an image as an OCI image layout tar (which `docker load` also reads).
    Export {
        image: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Layer compression.
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compression: Compression,
    },
    /// Remove image names; an image goes with its last name.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Delete layers and chunks no image uses.
    Gc,
    /// Store maintenance and figures.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Mount an image: its layers merged into one tree, file data read from
    /// the store as it is read. Returns once the mount is live; a background
    /// process serves it until `strata umount`.
    Mount {
        /// Name, id or unique id prefix.
        image: String,
        /// An existing directory.
        mountpoint: PathBuf,
        /// Keep the container's writes in DIR (created if missing), so that
        /// they survive umount and remount [default: a new layer under DATA_DIR].
        #[arg(long, value_name = "DIR")]
        upper: Option<PathBuf>,
        /// Refuse every change.
        #[arg(long)]
        read_only: bool,
        /// When the mount ends, write to FILE (JSON) the image bytes it
        /// served: each file read, its distinct bytes read and when it was
        /// first read, in that order.
        #[arg(long, value_name = "FILE")]
        trace_reads: Option<PathBuf>,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Run this node: the store served to peers over QUIC with mutual TLS,
    /// gossip membership, chunks fetched from peers for this node's mounts,
    /// a control socket (DATA_DIR/node.sock) the other commands use while it
    /// runs, and Prometheus metrics. Flags override the [node] settings.
    Serve(ServeArgs),
    /// The cluster's members as this node's gossip sees them.
    Peers,
    /// Turn a mount's writable layer into a new image: the image's layers
    /// and one more holding the changes (whiteouts included).
    Commit {
        /// A writable mount's mountpoint (or give --upper).
        mountpoint: Option<PathBuf>,
        /// Commit this writable layer directory instead.
        #[arg(long, value_name = "DIR", conflicts_with = "mountpoint")]
        upper: Option<PathBuf>,
        /// Name of the new image (repo:tag); repeat for several.
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Run an image's process in a mount of it (new mount, PID and UTS
    /// namespaces; /proc, a minimal /dev, read-only /sys). Exits with the
    /// process's exit code; unmounts afterwards.
    Run {
        image: String,
        /// Keep the writes in DIR [default: a layer removed after the run].
        #[arg(long, value_name = "DIR")]
        upper: Option<PathBuf>,
        /// When the mount ends, write to FILE (JSON) the image bytes it
        /// served: each file read, its distinct bytes read and when it was
        /// first read, in that order.
        #[arg(long, value_name = "FILE")]
        trace_reads: Option<PathBuf>,
        /// The command and its arguments, replacing the image's Cmd.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Unmount a strata mount (also one whose process was killed).
    Umount {
        mountpoint: PathBuf,
        /// Detach now even if files are open; the mount goes when they close.
        #[arg(long)]
        lazy: bool,
    },
    /// List mounts and their state (live, dead: process gone, gone: record left over).
    Mounts,
    /// The cluster's certificates: peers speak only mutual TLS with
    /// certificates of the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Serve a mount in the foreground (what `strata mount` starts).
    #[command(hide = true)]
    MountServe {
        image: String,
        mountpoint: PathBuf,
        #[arg(long)]
        upper: Option<PathBuf>,
        #[arg(long)]
        trace_reads: Option<PathBuf>,
        /// Only the image's first N layers.
        #[arg(long)]
        layers: Option<u32>,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Build a small image, import it, export it, import it again: a tour
    /// that needs no setup. Uses a scratch store unless --data-dir is given.
    Demo,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on for peers [settings: node.listen, default 0.0.0.0:7420].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address peers reach this node on, host:port [default: the listen
    /// address, or the local address that routes to the first seed].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// A node to join the cluster through (host:port); repeat for several.
    #[arg(long = "seed", value_name = "ADDR")]
    pub seeds: Vec<String>,
    /// Serve Prometheus metrics on ADDR (host:port) [settings: node.metrics_listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Seconds a chunk fetch may take before the read fails with EIO.
    #[arg(long, value_name = "SECS")]
    pub fetch_deadline: Option<f64>,
    /// Serve containerd's snapshots API (a proxy snapshotter) on this Unix
    /// socket [settings: snapshotter.socket].
    #[arg(long, value_name = "PATH")]
    pub snapshotter_socket: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// This node's certificate.
#[derive(Args, Debug, Clone, Default)]
pub struct IdentityArgs {
    /// This node's name: its certificate is CERT_DIR/NODE.pem.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Where ca.pem and the node's certificate are [default: DATA_DIR/certs].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

/// Mount an image that a peer holds.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Fetch the image (its record and layer indexes at mount, file chunks
    /// as they are read) from the node at ADDR (host:port), not this store.
    /// Repeat for several: each chunk comes from the first that has it, and
    /// a peer that dies or lies costs a retry at the next.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<std::net::SocketAddr>,
    /// Seconds a chunk fetch may take before the read fails with EIO.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub fetch_deadline: f64,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make the cluster CA: DIR/ca.pem and DIR/ca-key.pem (keep the key safe;
    /// only `cert issue` needs it).
    InitCa {
        /// Where the files go [default: DATA_DIR/certs].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A name for the cluster, shown in the CA's subject.
        #[arg(long, default_value = "strata")]
        cluster: String,
    },
    /// Issue a node certificate signed by the CA: DIR/NODE.pem and DIR/NODE-key.pem.
    Issue {
        /// The node's name (also the name peers check its certificate against).
        #[arg(long, value_name = "NODE")]
        node: String,
        /// Where the CA is and the files go [default: DATA_DIR/certs].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// The effective settings (defaults, then the file, then STRATA_*), as TOML.
    Show,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Chunks, logical and stored bytes, dedup ratio.
    Stats,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl From<IdentityArgs> for strata_daemon::identity::IdentitySpec {
    fn from(args: IdentityArgs) -> Self {
        Self { node: args.node, cert_dir: args.cert_dir }
    }
}

impl From<PeerArgs> for strata_daemon::mount::PeerMount {
    fn from(args: PeerArgs) -> Self {
        Self { peers: args.peers, fetch_deadline: args.fetch_deadline, identity: args.identity.into() }
    }
}

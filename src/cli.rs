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
    /// Print machine-readable JSON instead of tables and reports (images,
    /// status, inspect, peers, mounts, uppers, store stats, config show,
    /// import, pull, push, export to a file, mount, umount, commit, rm, gc,
    /// cert; refused where nothing is printed, and with -q or --format).
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
        /// The archive or layout directory, or - for an archive on stdin
        /// (as `docker save IMAGE | strata import -`).
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
        background_fetch: Option<BackgroundMode>,
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
    /// List images: a row per name (an image with no name: its id).
    Images {
        /// Only the image ids, each image once (`strata rm $(strata images -q)`).
        #[arg(short, long, conflicts_with = "format")]
        quiet: bool,
        /// Print each row through TEMPLATE, as docker's `--format`:
        /// {{.Name}}, {{.Repository}}, {{.Tag}}, {{.Digest}}, {{.ID}}, {{.FullID}},
        /// {{.Layers}}, {{.Size}}, {{.SizeBytes}}, {{json .}}; `\t` and `\n`;
        /// a leading `table ` adds a header and aligns the columns; `json`
        /// alone prints each row as a JSON object on a line.
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
        /// The images every live node of the cluster holds, with the nodes
        /// that hold them (through the node running on the data dir).
        #[arg(long, conflicts_with_all = ["quiet", "format"])]
        cluster: bool,
    },
    /// Per image: how much is held here, and what the node is fetching of
    /// it in the background (rate, time left).
    Status,
    /// Show an image: config and layers.
    Inspect {
        /// Name, id or unique id prefix.
        image: String,
    },
    /// Write an image as an OCI image layout tar (which `docker load` also
    /// reads), to a file or to stdout (as `docker save`; also `strata save`).
    #[command(alias = "save")]
    Export {
        /// Name, id or unique id prefix.
        image: String,
        /// The tar file (it appears whole or not at all), or - for stdout
        /// [default: stdout, unless it is a terminal].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Layer compression.
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compression: Compression,
    },
    /// Remove image names; an image goes with its last name. Also `strata rmi`.
    #[command(alias = "rmi")]
    Rm {
        /// Names (the name goes; the image with its last name), or ids and
        /// unique id prefixes (the image goes with all its names); one
        /// after another, as `docker rmi A B`.
        #[arg(required = true, value_name = "IMAGE")]
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
    /// namespaces; /proc, a minimal /dev, read-only /sys), as `docker run
    /// IMAGE [COMMAND] [ARG...]`. Exits with the process's exit code;
    /// unmounts afterwards. The writable layer goes with the run (docker's
    /// `--rm`) unless --upper keeps it.
    #[command(override_usage = "strata run [OPTIONS] IMAGE [COMMAND] [ARG]...")]
    Run(RunArgs),
    /// Unmount a strata mount (also one whose process was killed).
    Umount {
        /// A mountpoint of this data dir's (`strata mounts` lists them).
        mountpoint: PathBuf,
        /// Detach now even if files are open; the mount goes when they close.
        #[arg(long)]
        lazy: bool,
    },
    /// List mounts and their state (live, dead: process gone, gone: record
    /// left over). Also `strata ps`, as docker's.
    #[command(alias = "ps")]
    Mounts,
    /// List writable layers (those mounts and runs made under
    /// DATA_DIR/uppers, and those mounts name): image, size on disk,
    /// whether a mount holds them; remove those no mount holds.
    Uppers {
        #[command(subcommand)]
        command: Option<UppersCommand>,
    },
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
    /// Print a shell's completion script: `strata completion bash >
    /// /etc/bash_completion.d/strata`, `… zsh > "${fpath[1]}/_strata"`,
    /// `… fish > ~/.config/fish/completions/strata.fish`.
    Completion {
        /// bash, zsh or fish.
        shell: Shell,
    },
    /// Print the manual page of strata or of one command (troff, made
    /// from this help when the binary was built): `strata man | man -l -`,
    /// or `strata man run`.
    Man {
        /// A command, e.g. run, or store stats [default: strata itself].
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
}

impl Command {
    /// Whether `--json` means something for the command: it prints a
    /// listing or a report (the others run a process, serve, or print a
    /// script or a page).
    pub fn prints_json(&self) -> bool {
        !matches!(
            self,
            Command::Run(_)
                | Command::Serve(_)
                | Command::MountServe { .. }
                | Command::Demo
                | Command::Completion { .. }
                | Command::Man { .. }
        )
    }

    /// Whether the command may run on a data dir that has no store: those
    /// that make one, and those that need none (the others, given such a
    /// data dir, refuse: a mistyped `--data-dir` would list an empty store).
    pub fn may_create_store(&self) -> bool {
        matches!(
            self,
            Command::Import { .. }
                | Command::Pull { .. }
                | Command::Serve(_)
                | Command::Run(_)
                | Command::Mount { .. }
                | Command::MountServe { .. }
                | Command::Cert { .. }
                | Command::Config { .. }
                | Command::Demo
                | Command::Completion { .. }
                | Command::Man { .. }
        )
    }
}

/// `strata run`'s flags: docker run's for the process.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Set a variable: KEY=VALUE, or KEY to pass this shell's value of KEY
    /// (left out if unset); over the image's Env and --env-file. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read variables from FILE: KEY=VALUE or KEY lines; blank lines and
    /// lines starting with # are skipped; values are taken as written
    /// (quotes included, as docker does). Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// The working directory in the container, absolute (made if missing)
    /// [default: the image's WorkingDir, else /].
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER[:GROUP], names (from the image's /etc/passwd and
    /// /etc/group) or numeric ids [default: the image's User, else root].
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Run PROGRAM instead of the image's Entrypoint; as docker, the
    /// image's Cmd is dropped too, and "" clears the entrypoint.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Name the run (letters, digits, _ . -): unique among the live runs
    /// on this data dir (a second run of the name is refused while the
    /// first lives); its mount is DATA_DIR/run/NAME/rootfs in `strata mounts`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Keep stdin open for the process [default: it reads /dev/null, as
    /// with docker].
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal of its own (a new pseudo-terminal; with
    /// -i, this terminal's keys go to it in raw mode).
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the writable layer when the run ends: what a run always does
    /// unless --upper is given (accepted for docker's habit).
    #[arg(long, conflicts_with = "upper")]
    pub rm: bool,
    /// Keep the writes in DIR, created if missing, reused if it holds an
    /// earlier run's writes [default: a layer removed after the run].
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// When the mount ends, write to FILE (JSON) the image bytes it
    /// served: each file read, its distinct bytes read and when it was
    /// first read, in that order.
    #[arg(long, value_name = "FILE")]
    pub trace_reads: Option<PathBuf>,
    /// The image: name, id or unique id prefix, or a registry reference
    /// (pulled first if no node and no store holds it).
    pub image: String,
    /// The command and its arguments, replacing the image's Cmd (after the
    /// image, as docker takes them; `--` before them is allowed).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
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
    /// Seconds a read may wait for a chunk (finding its holders included)
    /// before it fails with EIO, at most 0.5 s later [settings:
    /// node.fetch_deadline_secs, default 5].
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
    /// Seconds a read may wait for a chunk before it fails with EIO, at
    /// most 0.5 s later.
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
pub enum UppersCommand {
    /// Remove writable layers by name (as `strata uppers` lists them) or
    /// path; refused for one a mount holds.
    Rm {
        /// A writable layer's NAME as `strata uppers` lists it, or its path.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove every writable layer under DATA_DIR/uppers that no mount holds.
    Prune,
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

/// `strata pull --background-fetch`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum BackgroundMode {
    /// Only what reads ask for.
    None,
    /// The image's startup profile, ahead of the reads.
    Profile,
    /// The profile, then the whole image once a container has read from it.
    All,
}

/// A shell `strata completion` writes completions for.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every visible command says what it is (the help
    /// and the manual pages are made from these).
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "strata", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}

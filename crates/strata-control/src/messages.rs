//! The messages: what a client asks ([`Request`], [`Command`]) and what the
//! node answers ([`Reply`], [`Outcome`], [`Progress`]). Every answer is typed:
//! the CLI formats it (tables, `--json`, progress bars); nothing travels as
//! printed text.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_types::{BackgroundFetch, ChunkId, ImageId, LayerId, ReadStats, Secret};

/// A command run on the node's store for a caller (the node owns the store
/// while it runs, so commands that change it go through here). Paths must
/// be absolute (the node refuses others): it does not share the caller's
/// working directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Import a docker-save archive or OCI layout (`strata import`); names
    /// replace the archive's (which must then hold one image). Cancellable.
    Import { file: PathBuf, names: Vec<String> },
    /// Remove names or images (`strata rm`): references as `find_image`
    /// takes them (name, id, unique id prefix).
    Rm { images: Vec<String> },
    /// Delete what no image uses (`strata gc`).
    Gc,
    /// Turn a writable layer into a new image (`strata commit`): a
    /// writable mount's mountpoint, or the writable layer's directory.
    Commit { mountpoint: Option<PathBuf>, upper: Option<PathBuf>, names: Vec<String> },
    /// The members this node's gossip knows (`strata peers`).
    Peers,
    /// The images in the store (`strata images`).
    Images,
    /// One image in detail (`strata inspect`).
    Inspect { image: String },
    /// The store's totals (`strata store stats`).
    Stats,
    /// Pull an image from its registry (`strata pull REF`): `reference` as
    /// docker writes it, `platform` as `OS/ARCH[/VARIANT]` (default: this
    /// machine's), credentials given on the command line (else the node's
    /// settings, docker's config, or none). Cancellable. (Not
    /// [`Request::Pull`], which takes an image's metadata from peers.)
    /// `background`: the image's background-fetch mode from now on (else
    /// the node's setting); `all`: fetch every chunk now and return when
    /// the image is whole (through a node; a registry pull is whole).
    Pull {
        reference: String,
        platform: Option<String>,
        credentials: Option<(String, Secret)>,
        background: Option<BackgroundFetch>,
        all: bool,
    },
    /// What is local of each image and what the node fetches (`strata
    /// status`).
    Status,
    /// The images the cluster's live nodes hold, and where (`strata
    /// images --cluster`); through a node only.
    ClusterImages,
}

impl Command {
    /// Whether the node stops this command when its caller cancels (an
    /// import or a pull; the others are short or must not stop halfway).
    pub fn cancellable(&self) -> bool {
        matches!(self, Command::Import { .. } | Command::Pull { .. })
    }
}

/// What a client asks the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Run a command on the node's store. Answered by any number of
    /// [`Reply::Progress`], then [`Reply::Done`], [`Reply::Failed`] or
    /// [`Reply::Cancelled`].
    Run { command: Command },
    /// Make an image that peers hold known here (metadata only); answered
    /// by [`Reply::Pulled`].
    Pull { reference: String },
    /// A chunk's stored form, fetched from peers if missing; answered by
    /// [`Reply::Chunk`].
    Chunk { id: ChunkId },
    /// The chunks a mount of `image` read first, in order: the image's
    /// startup profile if it has none yet; answered by [`Reply::Recorded`].
    Profile { image: ImageId, chunks: Vec<ChunkId> },
    /// [`Request::Chunk`] for a mount's read-ahead: asked of peers with
    /// prefetch priority (they answer reads that wait first).
    ChunkAhead { id: ChunkId },
    /// A mount's read counters, sent by its serving process (`pid`) every
    /// `[mount] stats_interval_secs` and when it ends (`ended`), for the
    /// node's `/metrics`; answered by [`Reply::Recorded`].
    MountStats { mountpoint: PathBuf, pid: u32, image: String, stats: ReadStats, ended: bool },
    /// A mount of `image` through the node went live (a container starts):
    /// the node's background fetch of the image goes on past its profile
    /// (`[node] background_fetch = "all"`). Answered by [`Reply::Recorded`].
    Started { image: ImageId },
}

/// The node's answer to one [`Request`]. The first four variants keep the
/// places they had before typed outcomes (`Pulled`, `Chunk` and `Failed`
/// also their shapes), so a mount process started by an older binary reads
/// chunks on through a newer node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A command's result.
    Done(Outcome),
    /// The image a [`Request::Pull`] made known.
    Pulled { image: ImageId },
    /// A chunk's stored form (not yet verified: the caller decodes it
    /// against the id it asked for).
    Chunk { stored: Vec<u8> },
    /// The request could not be carried out: the error and its causes.
    Failed { error: String },
    /// A step of a command still running (more replies follow).
    Progress(Progress),
    /// A startup profile was taken (or the image had one).
    Recorded,
    /// The command was stopped at the caller's request; it changed nothing.
    Cancelled,
}

/// How a long command advances, for a progress bar. Byte counts add up
/// to the `total_bytes` of [`Progress::Start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Before the first layer: the layer blob bytes the command will read.
    Start { total_bytes: u64 },
    /// A layer begins: its archive member (or blob digest) and blob size.
    /// Several layers may be under way at once.
    Layer { member: String, size: u64 },
    /// Another `bytes` of the layer `member`'s blob read (several reads at
    /// once: the node sends one of these per MiB or so, not one per read).
    Advance { member: String, bytes: u64 },
    /// The layer `member` is converted and verified.
    LayerDone { member: String },
}

/// What a [`Command`] produced, one variant per command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// [`Command::Import`].
    Imported(Imported),
    /// [`Command::Rm`]: one entry per reference, in the order given.
    Removed(Vec<Removed>),
    /// [`Command::Gc`].
    Collected(Collected),
    /// [`Command::Commit`].
    Committed(Committed),
    /// [`Command::Peers`].
    Peers(Peers),
    /// [`Command::Images`]: every name, sorted.
    Images(Vec<ImageSummary>),
    /// [`Command::Inspect`].
    Inspected(Box<ImageDetails>),
    /// [`Command::Stats`].
    Stats(StoreStats),
    /// [`Command::Pull`].
    Pulled(Pulled),
    /// [`Command::Status`].
    Status(Status),
    /// [`Command::ClusterImages`].
    ClusterImages(ClusterImages),
}

/// `strata images --cluster`: every image name a live node holds, with
/// the nodes that hold it, and the nodes that did not say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterImages {
    /// By name, then id.
    pub images: Vec<ClusterImage>,
    /// Nodes asked that gave no list, each with why.
    pub unanswered: Vec<Unanswered>,
    /// Nodes whose list was cut at the most a reply carries.
    pub truncated: Vec<String>,
}

/// One image name and where it is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterImage {
    pub name: String,
    pub id: ImageId,
    pub layers: u32,
    /// File bytes of its layers.
    pub size: u64,
    /// The nodes that hold it, sorted.
    pub nodes: Vec<String>,
}

/// A node that gave no image list, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    pub node: String,
    pub reason: String,
}

/// `strata status`: per image, what is held here and what the node is
/// fetching of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Whether a node runs on the data dir (only a node fetches).
    pub node: bool,
    /// Every image, by its first name.
    pub images: Vec<ImageStatus>,
    /// The store's chunk bytes as kept (compressed), and the cap on them
    /// (`[cache] max_bytes`; `None`: no cap).
    pub stored_bytes: u64,
    pub max_bytes: Option<u64>,
}

/// One image's part of [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageStatus {
    pub image: ImageId,
    pub names: Vec<String>,
    /// Distinct chunks of its layers (their tar-splits' included) and
    /// their bytes, uncompressed.
    pub chunks: u64,
    pub bytes: u64,
    /// Of those, held here.
    pub local_chunks: u64,
    pub local_bytes: u64,
    /// The background-fetch mode in effect: the image's own (a pull set
    /// it) or the node's.
    pub background_mode: BackgroundFetch,
    /// Whether the mode is the image's own.
    pub mode_set_by_pull: bool,
    /// The background fetch under way, if any.
    pub fetching: Option<BackgroundJob>,
    /// Imported or committed here: never evicted.
    pub pinned: bool,
    /// A live mount uses it: not evicted while it does.
    pub mounted: bool,
    /// When it was last used (pulled, started, fetched into), seconds
    /// since the Unix epoch; 0 if never recorded. The cache evicts the
    /// least recently used first.
    pub last_used: u64,
    /// What the node's disk cap would do with it now; `None` without a
    /// node (only `strata serve` evicts).
    #[serde(default)]
    pub cache: Option<strata_types::CacheVerdict>,
}

/// A background fetch under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackgroundJob {
    /// "fetching", "paused" (reads wait), "capped" (rate cap), "retrying".
    pub state: String,
    /// Full speed (a profile, a first start, `pull --all`), else yielding.
    pub urgent: bool,
    /// The whole image, not only its startup profile.
    pub whole: bool,
    /// Chunks and stored bytes brought so far.
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks still to ask for, and their bytes uncompressed.
    pub chunks_left: u64,
    pub raw_bytes_left: u64,
    /// Stored bytes per second lately.
    pub bytes_per_sec: f64,
    /// Seconds until done at that pace.
    pub eta_seconds: Option<f64>,
}

/// A registry pull's result (`strata pull`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// The image's name in the store.
    pub name: String,
    /// The image manifest's digest (`sha256:<hex>`), as `@digest` pins it.
    pub manifest_digest: String,
    /// Where the image came from.
    pub source: PullSource,
    /// The node it came from ([`PullSource::Cluster`]).
    pub from_node: Option<String>,
    /// What was added: layer blobs and chunks from the registry; from the
    /// cluster only the layers' indexes (their chunks follow on first read).
    pub imported: Imported,
}

/// Where a pulled image came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullSource {
    /// Its registry: layer blobs downloaded and converted.
    #[default]
    Registry,
    /// A node of the cluster that holds it ([`Pulled::from_node`]): its
    /// metadata only, no layer byte from the registry.
    Cluster,
    /// The store held it already (a tag may have moved to it).
    Store,
}

/// An import's result (`strata import`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub images: Vec<ImportedImage>,
    pub layers_added: u64,
    pub new_chunks: u64,
    /// Bytes of the new chunks, uncompressed.
    pub new_chunk_bytes: u64,
    /// Layer blob bytes read from the archive, as stored there.
    pub blob_bytes: u64,
    /// Regular-file bytes of all layers read.
    pub content_bytes: u64,
}

/// One image an import added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    pub names: Vec<String>,
    pub id: ImageId,
    pub layers: Vec<LayerId>,
}

/// What `strata rm` did for one reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub image: ImageId,
    pub names_removed: Vec<String>,
    /// Whether the image itself went (its last name did, or it was named by id).
    pub image_removed: bool,
}

/// What `strata gc` deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    pub layers_deleted: u64,
    pub chunks_deleted: u64,
    /// Uncompressed bytes of the chunks deleted.
    pub chunk_bytes_deleted: u64,
    /// Stored (compressed) bytes of the chunks deleted.
    pub stored_bytes_deleted: u64,
}

/// A commit's result: the new image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub id: ImageId,
    pub names: Vec<String>,
    /// The writable layer that was committed.
    pub upper: PathBuf,
    pub layer: LayerId,
    /// `sha256:…` of the new layer's tar.
    pub diff_id: String,
    pub entries: u64,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
}

/// The membership a node's gossip sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    #[serde(rename = "self")]
    pub this: Peer,
    pub members: Vec<Member>,
    /// The seeds this node joined through (`[node] seeds`, `--seed`), each
    /// with the member answering at its address, if any.
    #[serde(default)]
    pub seeds: Vec<Seed>,
}

/// A seed and whether a member answers at its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// host:port: the address it resolved to, or the name as written when
    /// it did not resolve.
    pub addr: String,
    /// The live member at that address; `None`: nobody answers there (or
    /// the name does not resolve).
    pub member: Option<String>,
    /// The name did not resolve when the node started.
    #[serde(default)]
    pub unresolved: bool,
}

/// A node's name and QUIC address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
}

/// One member as gossip sees it (SWIM states).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub state: MemberState,
    /// The member's start time in ms: a restarted node has a higher one.
    pub incarnation: u64,
    /// Whether this node joined through it (`seed`) or met it through
    /// gossip (`member`).
    #[serde(default)]
    pub role: String,
    /// How many image names it serves (its answer to a listing); `None`
    /// when it gave none (down, too old, no answer in time).
    #[serde(default)]
    pub images: Option<u64>,
}

/// SWIM's view of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One row of `strata images`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub name: String,
    pub id: ImageId,
    pub layers: u64,
    /// Regular-file bytes of the image's layers.
    pub size: u64,
}

/// `strata inspect`: an image, its config and layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDetails {
    /// The name it was found by (or its first).
    pub name: String,
    pub names: Vec<String>,
    pub id: ImageId,
    pub config_digest: String,
    /// The image config, as stored (JSON text, OCI image spec `config.json`).
    pub config: String,
    /// Regular-file bytes of the image's layers.
    pub size: u64,
    /// What is not in the store yet (an image pulled lazily).
    pub missing: Missing,
    pub layers: Vec<LayerDetails>,
}

/// Chunks an image lacks in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub bytes: u64,
    /// Layers with at least one chunk missing.
    pub layers: u64,
}

/// One layer of [`ImageDetails`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDetails {
    pub id: LayerId,
    pub diff_id: String,
    pub blob_digest: String,
    pub media_type: String,
    /// Tar entries.
    pub files: u64,
    /// Regular-file bytes.
    pub size: u64,
    /// Chunk references (a chunk used twice counts twice).
    pub chunks: u64,
}

/// `strata store stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    pub chunks: u64,
    /// File content of all layers.
    pub logical_bytes: u64,
    /// After dedup (each chunk once, uncompressed).
    pub unique_bytes: u64,
    /// After compression.
    pub stored_bytes: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    pub layers: u64,
    pub images: u64,
    pub names: u64,
    /// The store's files on disk.
    pub disk_bytes: u64,
}

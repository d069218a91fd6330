//! The store commands, run on a data dir's store: by the node for its
//! callers, or by the CLI itself when no node runs. Each returns a typed
//! [`Outcome`]; nothing is printed here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_control::{
    BackgroundJob, Collected, Command, Committed, ImageDetails, ImageStatus, ImageSummary, Imported,
    ImportedImage, LayerDetails, Member, MemberState, Missing, Outcome, Peer, Peers, Progress, Removed,
    Status, StoreStats,
};
use strata_mount::{ChunkReader, UpperDir};
use strata_store::{ImageId, ImageRecord, LayerId, Store};

use crate::cancel::Cancel;
use crate::chunks::ImageChunks;
use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Error, Result};
use crate::mounts;

/// Runs `command` on `dir`'s store. `progress` is told how long work
/// advances (an import); `cancel` stops what can be stopped (an import:
/// nothing is added, [`Error::Cancelled`]).
pub fn execute(
    dir: &DataDir,
    command: Command,
    progress: &(dyn Fn(Progress) + Sync),
    cancel: &Cancel,
) -> Result<Outcome> {
    match command {
        Command::Import { file, names } => import(dir, &file, names, progress, cancel).map(Outcome::Imported),
        Command::Rm { images } => rm(dir, &images).map(Outcome::Removed),
        Command::Gc => gc(dir).map(Outcome::Collected),
        Command::Commit { mountpoint, upper, names } => {
            commit(dir, mountpoint.as_deref(), upper.as_deref(), &names).map(Outcome::Committed)
        }
        Command::Peers => peers(dir).map(Outcome::Peers),
        Command::Images => images(dir).map(Outcome::Images),
        Command::Inspect { image } => inspect(dir, &image).map(|d| Outcome::Inspected(Box::new(d))),
        Command::Stats => stats(dir).map(Outcome::Stats),
        Command::Pull { reference, platform, credentials, background, all } => {
            let options = crate::pull::PullOptions { platform, credentials, background, all };
            crate::pull::pull(dir, &reference, options, progress, cancel).map(Outcome::Pulled)
        }
        Command::Status => status(dir).map(Outcome::Status),
        Command::ClusterImages => cluster_images(dir).map(Outcome::ClusterImages),
    }
}

/// An import's or an export's progress as [`Progress`] steps, and its
/// cancellation.
pub struct Reporter<'a> {
    pub progress: &'a (dyn Fn(Progress) + Sync),
    pub cancel: &'a Cancel,
}

impl strata_oci::ImportProgress for Reporter<'_> {
    fn start(&self, total_bytes: u64) {
        (self.progress)(Progress::Start { total_bytes });
    }
    fn advance(&self, member: &str, bytes: u64) {
        (self.progress)(Progress::Advance { member: member.to_owned(), bytes });
        // Test builds: an import that holds still once it has begun, until
        // cancelled, so a test's cancel lands mid-import every time.
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("STRATA_FAULT_STALL_IMPORT").is_some() {
            while !self.cancel.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    fn layer(&self, member: &str, size: u64) {
        (self.progress)(Progress::Layer { member: member.to_owned(), size });
    }
    fn layer_done(&self, member: &str) {
        (self.progress)(Progress::LayerDone { member: member.to_owned() });
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// `strata import`: every image of the archive, in one transaction.
///
/// Errors: [`Error::Cancelled`] once `cancel` is (nothing added, whether
/// it came while waiting for the store, decompressing, reading a layer or
/// just before the commit); the import's own refusal
/// ([`strata_oci::ImportError`]: not an archive, a digest mismatch, a
/// hostile layer, …), with the file named.
pub fn import(
    dir: &DataDir,
    file: &Path,
    names: Vec<String>,
    progress: &(dyn Fn(Progress) + Sync),
    cancel: &Cancel,
) -> Result<Imported> {
    let store = dir.write_store_unless(cancel)?;
    let options = dir.settings.import_options(names);
    let report = match strata_oci::import_archive(&store, file, &options, &Reporter { progress, cancel }) {
        Err(strata_oci::ImportError::Cancelled) => return Err(Error::Cancelled),
        other => other.with_context(|| format!("importing {}", file.display()))?,
    };
    pin(&store, report.images.iter().map(|i| i.id))?;
    Ok(imported(report))
}

/// Pins images made here (imported, committed): perhaps the only copy in
/// the cluster, the cache never evicts them (`strata rm` does).
pub(crate) fn pin(store: &Store, images: impl IntoIterator<Item = ImageId>) -> Result<()> {
    for image in images {
        store.update_fetch_state(&image, |s| s.pinned = true)?;
    }
    Ok(())
}

pub(crate) fn imported(report: strata_oci::ImportReport) -> Imported {
    Imported {
        images: report
            .images
            .into_iter()
            .map(|i| ImportedImage { names: i.names, id: i.id, layers: i.layers })
            .collect(),
        layers_added: report.layers_added as u64,
        new_chunks: report.new_chunks,
        new_chunk_bytes: report.new_chunk_bytes,
        blob_bytes: report.blob_bytes,
        content_bytes: report.content_bytes,
    }
}

/// `strata rm`: a name removes that name; an id removes every name of the
/// image. Every reference is resolved and checked first, so that a
/// reference that does not resolve, or an image a mount uses, refuses the
/// whole command before anything is removed.
///
/// Errors: [`strata_store::StoreError::NoSuchImage`] (or an ambiguous id
/// prefix) for a reference; [`Error::Refused`] for a mounted image.
pub fn rm(dir: &DataDir, references: &[String]) -> Result<Vec<Removed>> {
    let store = dir.write_store()?;
    let mounted = crate::mount::mounted_image_ids(&dir.path)?;
    let mut out = Vec::new();
    // One after another, as `docker rmi A B`: each sees what the ones
    // before it left (the second of two tags is the image's last).
    for reference in references {
        let found = strata_oci::find_image(&store, reference)?;
        // As `docker rmi`: an image's last tag takes its repo digest names
        // (`REPO@sha256:…`, kept by registry pulls) with it.
        let other_tags =
            found.names.iter().filter(|n| Some(*n) != found.named.as_ref() && !n.contains('@')).count();
        let removes_image = found.named.is_none() || other_tags == 0;
        let mount = mounted.iter().find(|(id, _)| *id == found.id.to_hex());
        if let (true, Some((_, mountpoint))) = (removes_image, mount) {
            refuse!("{reference} is mounted at {}: unmount it first", mountpoint.display());
        }
        let target = match found.named {
            Some(name) if !removes_image => name,
            // By id: every name goes.
            _ => found.id.to_hex(),
        };
        let outcome = store.remove(&target)?;
        out.push(Removed {
            image: outcome.image,
            names_removed: outcome.names_removed,
            image_removed: outcome.image_removed,
        });
    }
    Ok(out)
}

/// `strata gc`.
pub fn gc(dir: &DataDir) -> Result<Collected> {
    let report = dir.write_store()?.gc()?;
    Ok(Collected {
        layers_deleted: report.layers_deleted,
        chunks_deleted: report.chunks_deleted,
        chunk_bytes_deleted: report.chunk_bytes_deleted,
        stored_bytes_deleted: report.stored_bytes_deleted,
    })
}

/// `strata commit`: a writable layer becomes a layer of a new image. The
/// upper tree is streamed as a layer tar through a pipe into the import
/// pipeline (`strata_oci::add_layer`); copied-up files of an image pulled
/// lazily take their lower chunks through the node.
pub fn commit(
    dir: &DataDir,
    mountpoint: Option<&Path>,
    upper: Option<&Path>,
    names: &[String],
) -> Result<Committed> {
    let (upper, image): (PathBuf, ImageId) = match (mountpoint, upper) {
        (Some(mountpoint), None) => {
            let mountpoint = std::fs::canonicalize(mountpoint)
                .or_else(|_| std::path::absolute(mountpoint))
                .with_context(|| format!("resolving {}", mountpoint.display()))?;
            let record = mounts::find(&dir.path, &mountpoint)
                .with_context(|| format!("{} is not a strata mount", mountpoint.display()))?;
            let upper = record.upper.with_context(|| {
                format!("{} is a read-only mount: there is nothing to commit", mountpoint.display())
            })?;
            let id = record.image_id.parse().map_err(|_| {
                Error::Refused(format!("the mount record's image id {:?} is not an id", record.image_id))
            })?;
            (upper, id)
        }
        (None, Some(dir)) => (dir.to_owned(), UpperDir::image_of(dir)?),
        _ => refuse!("give a writable mount's mountpoint, or --upper DIR"),
    };
    let store = dir.write_store()?;
    let base = store.image(&image)?.with_context(|| format!("the writable layer's image {image} is gone"))?;
    let tree = strata_mount::load_lower(&store, &base)?;
    let chunks =
        ImageChunks::new(dir.node.as_ref(), store.clone(), &dir.store_dir(), &dir.path, &image.to_string())?;
    let reader = Arc::new(ChunkReader::new(Arc::new(chunks), 64 << 20));
    let root = upper.join("root");
    let options = dir.settings.import_options(Vec::new());
    // The import sees the end of the tar only if the whole writable layer
    // was read: a failure partway commits nothing.
    let committed = crate::pipe::through_pipe(
        |out| {
            let out = strata_mount::write_upper_layer(&root, &tree, &reader, out)
                .map_err(|e| format!("reading the writable layer {}: {e}", upper.display()))?;
            out.into_inner().map_err(|e| e.into_error().to_string())?.flush().map_err(|e| e.to_string())
        },
        |tar| strata_oci::add_layer(&store, &base, tar, names, &options, "strata commit"),
    )
    .map_err(|e| match e {
        crate::pipe::PipeError::Writer(e) => Error::Refused(e),
        crate::pipe::PipeError::Reader(e) => Error::from(e),
    })?;
    pin(&store, [committed.id])?;
    Ok(Committed {
        id: committed.id,
        names: committed.names,
        upper,
        layer: committed.layer,
        diff_id: committed.diff_id.to_string(),
        entries: committed.layer_entries,
        new_chunks: committed.new_chunks,
        new_chunk_bytes: committed.new_chunk_bytes,
    })
}

/// `strata peers`: the members this node's gossip knows, by name.
pub fn peers(dir: &DataDir) -> Result<Peers> {
    let node = running_node(dir)?;
    let seeds = node.seeds();
    // What each serves: its answer to a listing, asked of all at once.
    let listed = node.runtime().block_on(node.cluster_images(LISTING_PATIENCE));
    let served = |name: &str| {
        listed
            .iter()
            .find(|l| l.node == name)
            .and_then(|l| l.images.as_ref().ok())
            .map(|l| l.images.len() as u64)
    };
    let mut members: Vec<Member> = node
        .members()
        .into_iter()
        .map(|m| Member {
            images: served(&m.name),
            role: if seeds.contains(&m.addr) { "seed" } else { "member" }.to_owned(),
            name: m.name,
            addr: m.addr,
            state: match m.state {
                strata_node::MemberState::Alive => MemberState::Alive,
                strata_node::MemberState::Suspect => MemberState::Suspect,
                strata_node::MemberState::Down => MemberState::Down,
            },
            incarnation: m.incarnation,
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seeds: Vec<strata_control::Seed> = seeds
        .iter()
        .map(|addr| strata_control::Seed {
            addr: addr.to_string(),
            member: members
                .iter()
                .find(|m| m.addr == *addr && m.state != MemberState::Down)
                .map(|m| m.name.clone()),
            unresolved: false,
        })
        .collect();
    seeds.extend(node.unresolved_seeds().into_iter().map(|addr| strata_control::Seed {
        addr,
        member: None,
        unresolved: true,
    }));
    Ok(Peers { this: Peer { name: node.name().to_owned(), addr: node.addr() }, members, seeds })
}

/// How long a listing waits for each node's answer.
const LISTING_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

fn running_node(dir: &DataDir) -> Result<&Arc<strata_node::Node>> {
    dir.node.as_ref().with_context(|| {
        format!(
            "no node runs on {}: start one with `strata --data-dir {} serve`",
            dir.path.display(),
            dir.path.display()
        )
    })
}

/// `strata images --cluster`: the image names every live node holds (this
/// one's included), merged by name and id.
///
/// Errors: no node runs on the data dir.
pub fn cluster_images(dir: &DataDir) -> Result<strata_control::ClusterImages> {
    let node = running_node(dir)?;
    let listed = node.runtime().block_on(node.cluster_images(LISTING_PATIENCE));
    let mut out = strata_control::ClusterImages::default();
    let mut by_name: std::collections::BTreeMap<(String, ImageId), strata_control::ClusterImage> =
        std::collections::BTreeMap::new();
    for node in listed {
        let list = match node.images {
            Ok(list) => list,
            Err(reason) => {
                out.unanswered.push(strata_control::Unanswered { node: node.node, reason });
                continue;
            }
        };
        if list.truncated {
            out.truncated.push(node.node.clone());
        }
        for image in list.images {
            let Ok(id) = ImageId::from_slice(&image.image_id) else { continue };
            let entry =
                by_name.entry((image.name.clone(), id)).or_insert_with(|| strata_control::ClusterImage {
                    name: image.name,
                    id,
                    layers: image.layers,
                    size: image.size,
                    nodes: Vec::new(),
                });
            entry.nodes.push(node.node.clone());
        }
    }
    out.images = by_name.into_values().collect();
    for image in &mut out.images {
        image.nodes.sort();
    }
    Ok(out)
}

/// Logical size of an image: the file bytes of its layers.
fn image_size(store: &Store, record: &ImageRecord) -> Result<u64> {
    let mut size = 0;
    for layer in &record.layers {
        let id = LayerId::from_slice(layer)?;
        size += store.layer(&id)?.map_or(0, |l| l.content_bytes);
    }
    Ok(size)
}

/// `strata images`: every name, sorted.
pub fn images(dir: &DataDir) -> Result<Vec<ImageSummary>> {
    let store = dir.read_store()?;
    let mut out = Vec::new();
    for image in store.images()? {
        let size = image_size(&store, &image.record)?;
        out.push(ImageSummary {
            name: image.name,
            id: image.id,
            layers: image.record.layers.len() as u64,
            size,
        });
    }
    Ok(out)
}

/// `strata status`: per image, what is held here (from the store), the
/// background-fetch mode in effect and, with a node, its fetch under way.
pub fn status(dir: &DataDir) -> Result<Status> {
    let store = dir.read_store()?;
    let jobs: std::collections::HashMap<ImageId, strata_node::JobStatus> = dir
        .node
        .as_ref()
        .map(|node| node.background_status().into_iter().map(|j| (j.image, j)).collect())
        .unwrap_or_default();
    let default_mode =
        dir.node.as_ref().map_or(dir.settings.node.background_fetch, |n| n.background_default());
    let mut by_id: std::collections::BTreeMap<ImageId, (Vec<String>, ImageRecord)> = Default::default();
    for image in store.images()? {
        by_id.entry(image.id).or_insert_with(|| (Vec::new(), image.record)).0.push(image.name);
    }
    let mounted: std::collections::HashSet<String> =
        crate::mount::mounted_image_ids(&dir.path)?.into_iter().map(|(id, _)| id).collect();
    // The cache's own view: its rules, and the directory for other copies.
    let verdicts = match &dir.node {
        Some(node) => node.runtime().block_on(node.cache_verdicts())?,
        None => Default::default(),
    };
    let mut images = Vec::new();
    for (id, (names, record)) in by_id {
        let holding = store.holding(&record)?;
        let state = store.fetch_state(&id)?;
        images.push(ImageStatus {
            image: id,
            names,
            chunks: holding.chunks,
            bytes: holding.bytes,
            local_chunks: holding.local_chunks,
            local_bytes: holding.local_bytes,
            background_mode: state.mode.unwrap_or(default_mode),
            mode_set_by_pull: state.mode.is_some(),
            fetching: jobs.get(&id).map(|j| BackgroundJob {
                state: j.state.as_str().to_owned(),
                urgent: j.urgent,
                whole: j.whole,
                chunks: j.chunks,
                bytes: j.bytes,
                chunks_left: j.chunks_left,
                raw_bytes_left: j.raw_bytes_left,
                bytes_per_sec: j.rate,
                eta_seconds: j.eta_seconds,
            }),
            pinned: state.pinned,
            mounted: mounted.contains(&id.to_hex()),
            last_used: state.last_used,
            cache: verdicts.get(&id).copied(),
        });
    }
    images.sort_by(|a, b| a.names.first().cmp(&b.names.first()));
    Ok(Status {
        node: dir.node.is_some(),
        images,
        stored_bytes: store.stored_bytes()?,
        max_bytes: Some(dir.settings.cache.max_bytes).filter(|b| *b > 0),
    })
}

/// `strata inspect`: an image by name, id or unique id prefix.
pub fn inspect(dir: &DataDir, reference: &str) -> Result<ImageDetails> {
    let store = dir.read_store()?;
    let found = strata_oci::find_image(&store, reference)?;
    let name = found.display_name();
    let strata_oci::FoundImage { id, record, names, .. } = found;
    let mut layers = Vec::new();
    // The diff_ids this image's config names: one file tree (one LayerId)
    // can come in other tars in other images.
    let diff_ids = strata_oci::config_diff_ids(&record.config);
    for (i, raw) in record.layers.iter().enumerate() {
        let layer_id = LayerId::from_slice(raw)?;
        let layer = store.layer(&layer_id)?.with_context(|| format!("layer {layer_id} is missing"))?;
        layers.push(LayerDetails {
            id: layer_id,
            diff_id: diff_ids.get(i).cloned().unwrap_or(layer.diff_id),
            blob_digest: layer.blob_digest,
            media_type: layer.blob_media_type,
            files: layer.entries,
            size: layer.content_bytes,
            chunks: layer.chunk_refs,
        });
    }
    // Pulled lazily through a node: the chunks nobody read are not here.
    let missing = strata_oci::missing_chunks(&store, &record)?;
    Ok(ImageDetails {
        name,
        names,
        id,
        config_digest: record.config_digest,
        config: String::from_utf8_lossy(&record.config).into_owned(),
        size: layers.iter().map(|l| l.size).sum(),
        missing: Missing { chunks: missing.chunks, bytes: missing.bytes, layers: missing.layers },
        layers,
    })
}

/// `strata store stats`.
pub fn stats(dir: &DataDir) -> Result<StoreStats> {
    let s = dir.read_store()?.stats()?;
    Ok(StoreStats {
        chunks: s.chunks,
        logical_bytes: s.logical_bytes,
        unique_bytes: s.unique_bytes,
        stored_bytes: s.stored_bytes,
        dedup_ratio: s.dedup_ratio(),
        compression_ratio: s.compression_ratio(),
        layers: s.layers,
        images: s.images,
        names: s.names,
        disk_bytes: s.disk_bytes,
    })
}

/// `strata export`: the image as an OCI layout tar at `output`. Chunks an
/// image pulled lazily lacks come through the node; with none running,
/// refused before anything is written, saying how much is missing.
pub fn export(
    dir: &DataDir,
    image: &str,
    to: ExportTo,
    compression: strata_oci::LayerCompression,
    progress: &dyn strata_oci::ImportProgress,
) -> Result<strata_oci::ExportReport> {
    let store = dir.read_store()?;
    let found = strata_oci::find_image(&store, image)?;
    let missing = strata_oci::missing_chunks(&store, &found.record)?;
    let chunks = ImageChunks::new(dir.node.as_ref(), store.clone(), &dir.store_dir(), &dir.path, image)?;
    if missing.chunks > 0 && !chunks.fetches() {
        return Err(crate::chunks::missing_error(image, missing, &dir.path));
    }
    let options = strata_oci::ExportOptions { compression };
    let (target, shown) = match to {
        ExportTo::File(path) => (strata_oci::ArchiveTarget::Tar(path.clone()), path.display().to_string()),
        ExportTo::Stdout => {
            // Blobs are staged beside the store (a large image may not fit
            // /tmp), in a directory named for this process: one a killed
            // export left is removed by the next.
            let tmp = dir.path.join("tmp");
            sweep_scratch(&tmp);
            let scratch = tmp.join(format!("export-{}", std::process::id()));
            std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
            let out = Box::new(std::io::stdout());
            (strata_oci::ArchiveTarget::Stream { out, scratch }, "standard output".to_owned())
        }
    };
    let scratch = match &target {
        strata_oci::ArchiveTarget::Stream { scratch, .. } => Some(scratch.clone()),
        _ => None,
    };
    let exported = strata_oci::export_image_from(
        &store,
        image,
        target,
        &options,
        &mut crate::chunks::LayerChunks(&chunks),
        progress,
    )
    .with_context(|| format!("exporting {image} to {shown}"));
    if let Some(scratch) = scratch {
        let _ = std::fs::remove_dir_all(scratch);
    }
    exported
}

/// Removes what killed commands left in a data dir's `tmp/`: entries named
/// `KIND-PID-…` or `KIND-PID` (a spooled stdin, an export's staging) whose
/// process is gone.
pub fn sweep_scratch(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else { continue };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if pid <= 0 || !gone {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// Where `strata export` writes the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTo {
    /// A tar file, which appears whole or not at all.
    File(PathBuf),
    /// A tar stream on this process's stdout (`-o -`).
    Stdout,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::settings::Settings;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("sample.tar");
        strata_sample::write_sample_image(
            &path,
            strata_oci::ArchiveLayout::OciWithDockerManifest,
            strata_oci::LayerCompression::Gzip,
            "sample:1",
        )
        .unwrap();
        path
    }

    /// Cancelled at its first blob bytes, an import adds nothing: the
    /// store's images and totals are as before.
    #[test]
    fn a_cancelled_import_leaves_the_store_as_it_was() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = DataDir::new(&scratch.path().join("data"), Settings::default());
        let archive = sample(scratch.path());
        let before = (images(&dir).unwrap(), stats(&dir).unwrap());
        let cancel = Cancel::new();
        let steps = AtomicUsize::new(0);
        let progress = |step: Progress| {
            steps.fetch_add(1, Ordering::SeqCst);
            if matches!(step, Progress::Advance { .. }) {
                cancel.cancel();
            }
        };
        let result = import(&dir, &archive, vec![], &progress, &cancel);
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert!(steps.load(Ordering::SeqCst) >= 3, "start, a layer and bytes were reported");
        let mut after = (images(&dir).unwrap(), stats(&dir).unwrap());
        after.1.disk_bytes = before.1.disk_bytes;
        assert_eq!(after, before);

        // Not cancelled, the same import goes through, reporting every byte.
        let total = std::sync::Mutex::new((0u64, 0u64));
        let counting = |step: Progress| match step {
            Progress::Start { total_bytes } => total.lock().unwrap().0 = total_bytes,
            Progress::Advance { bytes, .. } => total.lock().unwrap().1 += bytes,
            Progress::Layer { .. } | Progress::LayerDone { .. } => {}
        };
        let imported = import(&dir, &archive, vec![], &counting, &Cancel::new()).unwrap();
        assert_eq!(imported.images[0].names, ["sample:1"]);
        let (announced, advanced) = *total.lock().unwrap();
        assert_eq!((announced, advanced), (imported.blob_bytes, imported.blob_bytes));
    }
}

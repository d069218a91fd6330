//! `strata pull REF`: an image from its registry, or, with a node running,
//! from the cluster when a node there holds it (the cluster as the
//! registry's cache).
//!
//! Through a node, a pull resolves the reference to its platform manifest
//! (small requests; none for an `@digest` reference some node holds), then
//! looks for the image in the cluster by its repo digest name
//! (`REPOSITORY@sha256:…`, [`strata_registry::ImageRef::digest_name`]):
//!
//! - a node holds it: only its metadata comes from that node (checked
//!   against the manifest), its chunks follow on first read, as for any
//!   lazy pull: no layer byte from the registry;
//! - nobody does: the node claims the image at its directory node
//!   ([`strata_node::Node::claim`]); the first claimer pulls it from the
//!   registry and announces it, nodes asked at the same moment wait for
//!   that and then take it from the cluster. So however many nodes are
//!   asked at once, each layer blob leaves the registry once.
//!
//! When the registry does not answer at all (DNS, connection, TLS, a
//! timeout: a cluster with no registry, images imported on one node), a
//! tag some node announces under the same name is taken from it, if its
//! config is for the platform asked for; never a `@digest` reference that
//! no copy proves.

use std::sync::Arc;

use strata_control::{Imported, ImportedImage, Progress, PullSource, Pulled};
use strata_node::{name_key, Claimed, Node};
use strata_registry::{Credentials, ImageRef, Platform, Registry, RegistryError, Resolved};
use strata_store::{ImageId, Store};

use crate::cancel::Cancel;
use crate::data_dir::DataDir;
use crate::error::{Error, Result};
use crate::ops::{imported, Reporter};

/// How often `pull --all` reports progress and asks whether it was cancelled.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a pull waiting on the cluster asks whether it was cancelled.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// How a pull goes beyond the reference.
#[derive(Default)]
pub struct PullOptions {
    /// `OS/ARCH[/VARIANT]` (default: this machine's).
    pub platform: Option<String>,
    /// Given on the command line (else the settings', else docker's).
    pub credentials: Option<(String, strata_types::Secret)>,
    /// The image's background-fetch mode from now on (else the node's).
    pub background: Option<strata_types::BackgroundFetch>,
    /// Fetch every chunk now, returning when the image is whole.
    pub all: bool,
}

/// `strata pull REF` on `dir`: through the node when `dir` is the node's
/// (see the module's doc), else straight from the registry. Credentials
/// from the caller, else the settings' `[registry.auth]`, else docker's
/// config. Through a node, `options.background` is kept for the image and
/// `options.all` fetches all of it now (progress as one layer named by
/// the image id; cancelling leaves the node fetching in the background).
///
/// Errors: a bad reference or platform; the registry's refusals
/// (unauthorized, not found, …); [`Error::Cancelled`]; with `all`, chunks
/// no peer gave (the node goes on trying).
pub fn pull(
    dir: &DataDir,
    reference: &str,
    options: PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
    cancel: &Cancel,
) -> Result<Pulled> {
    let PullOptions { platform, credentials, background, all } = options;
    let image = ImageRef::parse(reference)?;
    let platform = platform.as_deref().map(Platform::parse).transpose()?.unwrap_or_else(Platform::host);
    let explicit = credentials.map(|(username, password)| Credentials::Basic { username, password });
    let credentials = Credentials::lookup(image.registry(), explicit, &dir.settings.registry.auth)?;
    let registry = Registry::new(&dir.settings.registry, &image, &credentials)?;
    let own;
    let runtime = match (&dir.node, tokio::runtime::Handle::try_current()) {
        (Some(node), _) => node.runtime().clone(),
        (None, Ok(handle)) => handle,
        (None, Err(_)) => {
            own = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            own.handle().clone()
        }
    };
    let puller = Puller { dir, runtime, registry, image, progress, cancel };
    let puller = &puller;
    let result = match &dir.node {
        Some(node) => puller.through_node(node, &platform),
        None => puller.resolve(&platform).and_then(|resolved| puller.pull_registry(&resolved)),
    };
    let pulled = match result {
        Err(Error::Registry(RegistryError::Import {
            source: strata_oci::ImportError::Cancelled, ..
        })) => return Err(Error::Cancelled),
        other => other?,
    };
    if let (Some(node), Some(pulled_image)) = (&dir.node, pulled.imported.images.first()) {
        let id = pulled_image.id;
        node.touch(id);
        if let Some(mode) = background {
            node.store().update_fetch_state(&id, |s| s.mode = Some(mode))?;
        }
        if all {
            puller.fetch_whole(node, id)?;
        }
    }
    Ok(pulled)
}

struct Puller<'a> {
    dir: &'a DataDir,
    runtime: tokio::runtime::Handle,
    registry: Registry,
    image: ImageRef,
    progress: &'a (dyn Fn(Progress) + Sync),
    cancel: &'a Cancel,
}

impl Puller<'_> {
    fn reporter(&self) -> Reporter<'_> {
        Reporter { progress: self.progress, cancel: self.cancel }
    }

    fn resolve(&self, platform: &Platform) -> Result<Resolved> {
        Ok(strata_registry::resolve(&self.runtime, &self.registry, &self.image, platform, &self.reporter())?)
    }

    fn pull_registry(&self, resolved: &Resolved) -> Result<Pulled> {
        let store = self.dir.write_store_unless(self.cancel)?;
        let options = self.dir.settings.import_options(Vec::new());
        let report = strata_registry::pull_resolved(
            &self.runtime,
            &store,
            &self.registry,
            &self.image,
            resolved,
            &options,
            &self.reporter(),
        )?;
        Ok(Pulled {
            name: report.name,
            manifest_digest: report.manifest_digest,
            source: PullSource::Registry,
            from_node: None,
            imported: imported(report.import),
        })
    }

    /// The pull as a node runs it: from the store, the cluster, or the
    /// registry, in that order (see the module's doc).
    fn through_node(&self, node: &Arc<Node>, platform: &Platform) -> Result<Pulled> {
        let store = node.store().clone();
        // An @digest reference that the store or a node holds with the
        // manifest it names needs no registry request: the manifest's
        // sha256 proves what the image is, for any platform.
        if let Some(digest) = self.image.digest() {
            let name = self.image.store_name();
            if let Some(id) = store.image_by_name(&name)? {
                let record = store.image(&id)?;
                if record.is_some_and(|r| Resolved::kept_by(digest, &r).is_some()) {
                    return self.named(&store, id, digest, (PullSource::Store, None), 0);
                }
            }
            let holders = self.complete_holders(node, &name);
            if !holders.is_empty() {
                let check = |record: &strata_store::ImageRecord, layers: &[&strata_store::LayerRecord]| {
                    let resolved = Resolved::kept_by(digest, record)
                        .ok_or_else(|| format!("its manifest is not {digest}"))?;
                    resolved.check_image(&self.image, record, layers).map_err(|e| e.to_string())
                };
                if let Some(pulled) = self.take_from_cluster(node, &store, &name, digest, &holders, &check) {
                    return pulled;
                }
            }
        }
        let resolved = match self.resolve(platform) {
            Ok(resolved) => resolved,
            // No registry answers (DNS, a refused connection, TLS, a
            // timeout): an image some node offers under this name (imported
            // there, as in a cluster with no registry) is taken from it.
            Err(Error::Registry(e @ RegistryError::Transport { .. })) => {
                return match self.by_name_from_cluster(node, &store, platform) {
                    Some(pulled) => pulled,
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e),
        };
        let digest_name = self.image.digest_name(&resolved.digest);
        if let Some(id) = store.image_by_name(&digest_name)? {
            return self.named(&store, id, &resolved.digest, (PullSource::Store, None), 0);
        }
        let check = |record: &strata_store::ImageRecord, layers: &[&strata_store::LayerRecord]| {
            resolved.check_image(&self.image, record, layers).map_err(|e| e.to_string())
        };
        let claimed = self.until_cancelled(node.claim(name_key(&digest_name)))?;
        match claimed {
            Claimed::Holders(holders) => {
                if let Some(pulled) =
                    self.take_from_cluster(node, &store, &digest_name, &resolved.digest, &holders, &check)
                {
                    return pulled;
                }
                self.pull_registry(&resolved)
            }
            Claimed::Pull(claim) => {
                // Another pull here may have finished while this one waited.
                if let Some(id) = store.image_by_name(&digest_name)? {
                    return self.named(&store, id, &resolved.digest, (PullSource::Store, None), 0);
                }
                let pulled = self.pull_registry(&resolved)?;
                // Announced before the claim goes, so that nodes waiting
                // on it find the image rather than claim it in turn.
                if let Err(e) = self.runtime.block_on(node.announce_all()) {
                    tracing::warn!(error = %e, "announcing a pulled image");
                }
                drop(claim);
                Ok(pulled)
            }
        }
    }

    /// Every chunk of `id` now, through the node's background fetch at full
    /// speed; progress as one layer (the image id) of its missing bytes.
    fn fetch_whole(&self, node: &Arc<Node>, id: ImageId) -> Result<()> {
        let store = node.store().clone();
        let record = store.image(&id)?.ok_or_else(|| Error::Refused(format!("image {id} vanished")))?;
        let before = store.holding(&record)?;
        if before.whole() {
            return Ok(());
        }
        let member = id.to_string();
        let missing = before.bytes - before.local_bytes;
        (self.progress)(Progress::Start { total_bytes: missing });
        (self.progress)(Progress::Layer { member: member.clone(), size: missing });
        let mut reported = 0u64;
        let report = |reported: &mut u64| {
            let left = node.background_status().into_iter().find(|j| j.image == id).map(|j| j.raw_bytes_left);
            let done = missing.saturating_sub(left.unwrap_or(0));
            if done > *reported {
                (self.progress)(Progress::Advance { member: member.clone(), bytes: done - *reported });
                *reported = done;
            }
        };
        self.runtime.block_on(async {
            let whole = node.fetch_whole(id);
            tokio::pin!(whole);
            loop {
                tokio::select! {
                    done = &mut whole => return done.map_err(Error::from),
                    () = tokio::time::sleep(PROGRESS_EVERY) => {
                        if self.cancel.is_cancelled() {
                            return Err(Error::Cancelled);
                        }
                        report(&mut reported);
                    }
                }
            }
        })?;
        let after = store.holding(&record)?;
        if !after.whole() {
            return Err(Error::Refused(format!(
                "{} of {} of image {id} could not be fetched from any node; the node goes on trying (strata status)",
                after.chunks - after.local_chunks,
                crate::format::plural(after.chunks, "chunk")
            )));
        }
        if missing > reported {
            (self.progress)(Progress::Advance { member: member.clone(), bytes: missing - reported });
        }
        (self.progress)(Progress::LayerDone { member });
        Ok(())
    }

    /// The image the cluster offers under the reference's name, when no
    /// registry answers: taken from a node that announces the name whole,
    /// as [`Node::pull_image`] takes a name `strata run` asks for. A tag
    /// there is that node's word (no registry to check it against); the
    /// manifest digest is the record's own manifest's, when it keeps one.
    /// `None` when no live node announces the name, or none could give it.
    fn by_name_from_cluster(
        &self,
        node: &Arc<Node>,
        store: &Store,
        platform: &Platform,
    ) -> Option<Result<Pulled>> {
        // A digest pins a manifest: only its registry (or a copy that
        // keeps it, tried before) can say which image that is.
        if self.image.digest().is_some() {
            return None;
        }
        let name = self.image.store_name();
        let for_platform = |record: &strata_store::ImageRecord| match config_platform(&record.config) {
            Some((os, architecture))
                if (os.as_str(), architecture.as_str()) != (&*platform.os, &*platform.architecture) =>
            {
                Err(format!("it is for {os}/{architecture}, not {}/{}", platform.os, platform.architecture))
            }
            _ => Ok(()),
        };
        if let Ok(Some(id)) = store.image_by_name(&name) {
            if let Ok(Some(record)) = store.image(&id) {
                if for_platform(&record).is_ok() {
                    return Some(self.named(
                        store,
                        id,
                        &kept_digest(store, id),
                        (PullSource::Store, None),
                        0,
                    ));
                }
            }
        }
        let holders = self.complete_holders(node, &name);
        if holders.is_empty() {
            return None;
        }
        tracing::warn!(image = %name, "the registry does not answer: taking the image the cluster offers under its name");
        let check =
            |record: &strata_store::ImageRecord, _: &[&strata_store::LayerRecord]| for_platform(record);
        let pulled = self.take_from_cluster(node, store, &name, "", &holders, &check)?;
        Some(pulled.map(|mut pulled| {
            if let Ok(Some(id)) = store.image_by_name(&name) {
                pulled.manifest_digest = kept_digest(store, id);
            }
            pulled
        }))
    }

    /// The live nodes other than this one that announce `name` whole.
    fn complete_holders(&self, node: &Arc<Node>, name: &str) -> Vec<strata_node::Holder> {
        self.runtime
            .block_on(node.lookup(&name_key(name)))
            .into_iter()
            .filter(|h| h.complete && h.node != node.name())
            .collect()
    }

    /// The image `name` names on one of `holders`, taken from the first
    /// whose copy `check` accepts (only its metadata: its chunks follow on
    /// first read), named as the reference asks. `None` when every holder
    /// failed or was refused (logged): the caller asks the registry.
    fn take_from_cluster(
        &self,
        node: &Arc<Node>,
        store: &Store,
        name: &str,
        digest: &str,
        holders: &[strata_node::Holder],
        check: &strata_node::ImageCheck<'_>,
    ) -> Option<Result<Pulled>> {
        // Layers this node lacked before: what the pull added.
        let added = std::sync::atomic::AtomicU64::new(0);
        let counted = |record: &strata_store::ImageRecord, layers: &[&strata_store::LayerRecord]| {
            check(record, layers)?;
            let new = record
                .layers
                .iter()
                .filter_map(|l| strata_store::LayerId::from_slice(l).ok())
                .filter(|l| !matches!(store.layer(l), Ok(Some(_))))
                .count();
            added.store(new as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        };
        match self.runtime.block_on(node.pull_image_from(name, holders, &counted)) {
            Ok((id, from)) => {
                let added = added.load(std::sync::atomic::Ordering::Relaxed);
                Some(self.named(store, id, digest, (PullSource::Cluster, Some(from)), added))
            }
            Err(e) => {
                tracing::warn!(image = name, error = %e, "no node's copy could be taken: asking the registry");
                None
            }
        }
    }

    /// The image `id`, named as the reference asks (a tag moves to it).
    fn named(
        &self,
        store: &Store,
        id: ImageId,
        digest: &str,
        (source, from_node): (PullSource, Option<String>),
        layers_added: u64,
    ) -> Result<Pulled> {
        let name = self.image.store_name();
        let record = store.image(&id)?.ok_or_else(|| Error::Refused(format!("image {id} vanished")))?;
        let layers: Vec<strata_store::LayerId> =
            record.layers.iter().map(|l| strata_store::LayerId::from_slice(l)).collect::<Result<_, _>>()?;
        if store.image_by_name(&name)? != Some(id) {
            let mut txn = store.begin_import()?;
            txn.stage_image(record, vec![name.clone()]);
            txn.commit()?;
        }
        let names = store.image_names(&id)?.into_iter().collect();
        Ok(Pulled {
            name,
            manifest_digest: digest.to_owned(),
            source,
            from_node,
            imported: Imported {
                images: vec![ImportedImage { names, id, layers }],
                layers_added,
                ..Imported::default()
            },
        })
    }

    /// Waits on the node's future, given up when the caller cancels.
    fn until_cancelled<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T> {
        self.runtime.block_on(async {
            let cancelled = async {
                while !self.cancel.is_cancelled() {
                    tokio::time::sleep(CANCEL_POLL).await;
                }
            };
            tokio::select! {
                done = work => Ok(done),
                () = cancelled => Err(Error::Cancelled),
            }
        })
    }
}

/// Makes `image` known on `ctx` before a mount or a run uses it: with a
/// node running, the node finds it (in its store, in the cluster by name,
/// else from its registry through the cluster); without one, a registry
/// reference the store does not hold is pulled from its registry, as
/// `docker run` pulls an image it does not have. Returns whether a node
/// runs here.
///
/// Errors: the node's, or the store's lookup and the registry's refusal
/// together.
pub fn ensure_known(ctx: &DataDir, image: &str) -> Result<bool> {
    if crate::client::pull(&ctx.path, image)? {
        return Ok(true);
    }
    let missing = if ctx.store_dir().exists() {
        let store = ctx.read_store()?;
        match strata_oci::find_image(&store, image) {
            Ok(_) => return Ok(false),
            Err(e @ strata_store::StoreError::NoSuchImage { .. }) => e,
            Err(e) => return Err(e.into()),
        }
    } else {
        strata_store::StoreError::no_such_image(image)
    };
    if looks_like_id(image) || ImageRef::parse(image).is_err() {
        return Err(missing.into());
    }
    tracing::info!(image, "not in the store: pulling it from its registry");
    match pull(ctx, image, PullOptions::default(), &|_| {}, &Cancel::new()) {
        Ok(_) => Ok(false),
        Err(e) => Err(Error::Refused(format!("{missing}; from its registry: {}", crate::error::chain(&e)))),
    }
}

/// Whether `reference` reads as an image id or id prefix (`blake3:…`, or
/// four or more hex digits, as `strata images` shows ids): such a reference
/// is never sent to a registry as a repository name.
pub fn looks_like_id(reference: &str) -> bool {
    let hex = reference.strip_prefix("blake3:").unwrap_or(reference);
    reference.starts_with("blake3:") || (hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `strata push NAME REF` on `dir`: the image named `image` to the
/// registry `reference` names ([`strata_registry::push`]). Chunks a lazily
/// pulled image lacks come through the node, as for export; with no node,
/// refused before anything is sent, saying how much is missing.
/// Credentials as for [`pull`]: the caller's, else the settings', else
/// docker's config.
pub fn push(
    dir: &DataDir,
    image: &str,
    reference: &str,
    credentials: Option<(String, strata_types::Secret)>,
) -> Result<strata_registry::PushReport> {
    let target = ImageRef::parse(reference)?;
    let explicit = credentials.map(|(username, password)| Credentials::Basic { username, password });
    let credentials = Credentials::lookup(target.registry(), explicit, &dir.settings.registry.auth)?;
    let registry = Registry::new(&dir.settings.registry, &target, &credentials)?;
    let store = dir.read_store()?;
    let found = strata_oci::find_image(&store, image)?;
    let missing = strata_oci::missing_chunks(&store, &found.record)?;
    let chunks = crate::chunks::ImageChunks::new(
        dir.node.as_ref(),
        store.clone(),
        &dir.store_dir(),
        &dir.path,
        image,
    )?;
    if missing.chunks > 0 && !chunks.fetches() {
        return Err(crate::chunks::missing_error(image, missing, &dir.path));
    }
    let own;
    let runtime = match &dir.node {
        Some(node) => node.runtime().clone(),
        None => {
            own = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            own.handle().clone()
        }
    };
    let image = strata_registry::PushImage { record: &found.record, names: &found.names };
    Ok(strata_registry::push(
        &runtime,
        &store,
        &registry,
        &target,
        image,
        &mut crate::chunks::LayerChunks(&chunks),
    )?)
}

/// The `os` and `architecture` an image config names (OCI image spec,
/// "Properties"), if it parses and names both.
fn config_platform(config: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Config {
        os: String,
        architecture: String,
    }
    serde_json::from_slice::<Config>(config).ok().map(|c| (c.os, c.architecture))
}

/// The digest of the manifest `id`'s record keeps (`sha256:<hex>`), or
/// "" when it keeps none (imported from a docker-save archive).
fn kept_digest(store: &Store, id: ImageId) -> String {
    match store.image(&id) {
        Ok(Some(record)) if !record.manifest.is_empty() => {
            strata_types::OciDigest::sha256_of(&record.manifest).to_string()
        }
        _ => String::new(),
    }
}

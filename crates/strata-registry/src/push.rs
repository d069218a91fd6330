//! `strata push NAME REF`: an image of the store to a registry.
//!
//! Each layer goes up as the blob that costs the least: the blob the image
//! was pulled as, when the layer's tar was kept bit for bit (its tar-split)
//! and the registry has that blob already (`HEAD`) or mounts it from the
//! repository it was pulled from (distribution spec, "Mounting a blob from
//! another repository"); else the tar gzip-compressed deterministically
//! (fixed header: no name, mtime 0; one compression level), so that pushing
//! an image twice, from any node of one Strata build, uploads nothing the
//! second time. The config and the manifest go last. When every layer is
//! the blob the manifest names and the config is unchanged, the manifest is
//! pushed as it was pulled: the pushed image has the upstream digest.

use std::io::{self, Write};

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;
use serde::Deserialize;
use serde_json::json;
use strata_oci::{config_diff_ids, ChunkSource, LayerTar, Tee};
use strata_store::Store;
use strata_types::{LayerId, OciDigest};
use tokio::sync::mpsc;

use crate::{ImageRef, Registry, RegistryError};

/// The gzip level of recompressed layers: part of what makes a push
/// deterministic, so never changed lightly.
const GZIP_LEVEL: u32 = 6;

/// Bytes handed to the upload at a time.
const UPLOAD_PIECE: usize = 1 << 20;

/// Upload pieces buffered between the compressor and the request.
const UPLOAD_QUEUE: usize = 4;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a blob came to be in the target repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// The registry had it.
    Existed,
    /// Mounted from the repository the image was pulled from.
    Mounted,
    /// Sent.
    Uploaded,
}

/// One layer of a push.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushedLayer {
    pub id: LayerId,
    pub diff_id: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub outcome: BlobOutcome,
}

/// What [`push`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    /// The reference pushed to.
    pub reference: String,
    /// The pushed manifest's digest: `REPOSITORY@` it pulls this image.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Whether the manifest is the one the image was pulled with.
    pub upstream_manifest: bool,
    pub layers: Vec<PushedLayer>,
    /// Blob bytes sent (layers and config).
    pub bytes_uploaded: u64,
}

/// The image to push, as the store holds it.
pub struct PushImage<'a> {
    pub record: &'a strata_store::ImageRecord,
    /// The names it has in the store: one in `target`'s registry is where
    /// its blobs can be mounted from.
    pub names: &'a [String],
}

/// Pushes `image` to `target`. Layer tars are written from the store,
/// chunks from `chunks` (which may fetch what a lazily pulled image lacks
/// through a node). Blocking: call it from a thread that is not running
/// async code; requests run on `runtime`.
///
/// Errors: the registry's refusals ([`RegistryError::Unauthorized`] for a
/// repository the credentials may not push to); a chunk that cannot be
/// had; a layer tar that cannot be written.
pub fn push<S: ChunkSource>(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    registry: &Registry,
    target: &ImageRef,
    image: PushImage<'_>,
    chunks: &mut S,
) -> Result<PushReport, RegistryError> {
    let client = &registry.client;
    let target_ref = target.client_ref();
    let client_err = |e: OciDistributionError| registry.error(target, e);
    runtime.block_on(client.auth(target_ref, &registry.auth, RegistryOperation::Push)).map_err(client_err)?;

    let upstream = Upstream::parse(&image.record.manifest);
    let sources: Vec<ImageRef> = image
        .names
        .iter()
        .filter_map(|n| ImageRef::parse(n).ok())
        .filter(|r| r.registry() == target.registry() && r.repository() != target.repository())
        .collect();
    let diff_ids = config_diff_ids(&image.record.config);
    let docker = upstream.as_ref().is_some_and(|u| u.media_type == DOCKER_MANIFEST);
    let layer_type = if docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP };

    let mut layers = Vec::new();
    let mut bytes_uploaded = 0;
    for (i, raw) in image.record.layers.iter().enumerate() {
        let id = LayerId::from_slice(raw).map_err(|e| RegistryError::Push {
            reference: target.to_string(),
            detail: format!("layer id: {e}"),
        })?;
        let mut tar = LayerTar::of(store, &id, diff_ids.get(i).map(String::as_str))
            .map_err(|e| store_err(target, e))?;
        // The blob pulled (or imported) is this very tar, compressed: reuse
        // it when the registry has it or mounts it.
        let reusable = match (tar.is_kept(), upstream.as_ref().and_then(|u| u.layers.get(i))) {
            (false, _) => None,
            (true, Some(blob)) => Some((blob.clone(), sources.clone())),
            (true, None) => {
                stored_blob(store, &id, diff_ids.get(i), target).map_err(|e| store_err(target, e))?
            }
        };
        if let Some((blob, sources)) = reusable {
            let outcome =
                if runtime.block_on(client.blob_exists(target_ref, &blob.digest)).map_err(client_err)? {
                    Some(BlobOutcome::Existed)
                } else {
                    mount(runtime, registry, target, &sources, &blob.digest).then_some(BlobOutcome::Mounted)
                };
            if let Some(outcome) = outcome {
                tracing::info!(layer = %id, digest = %blob.digest, ?outcome, "layer blob reused");
                layers.push(PushedLayer {
                    id,
                    diff_id: diff_ids.get(i).cloned().unwrap_or_default(),
                    digest: blob.digest.clone(),
                    media_type: blob.media_type.clone(),
                    size: blob.size,
                    outcome,
                });
                continue;
            }
        }
        // First pass: the compressed blob's digest, to ask for it.
        let measured = match measure(&tar, chunks) {
            Ok(m) => m,
            Err(e @ (strata_oci::LayerError::Split(_) | strata_oci::LayerError::Source { .. }))
                if tar.is_kept() =>
            {
                tracing::warn!(layer = %id, reason = %e, "kept layer tar not rebuilt; pushing the canonical tar");
                tar = LayerTar::canonical(store, &id).map_err(|e| store_err(target, e))?;
                measure(&tar, chunks).map_err(|e| layer_err(target, &id, e))?
            }
            Err(e) => return Err(layer_err(target, &id, e)),
        };
        let digest = measured.digest.to_string();
        let outcome = if runtime.block_on(client.blob_exists(target_ref, &digest)).map_err(client_err)? {
            BlobOutcome::Existed
        } else {
            upload(runtime, registry, target, &digest, |w| {
                let again = compress(&tar, chunks, w)?;
                if again.digest != measured.digest {
                    return Err(strata_oci::LayerError::Split(format!(
                        "the layer compressed to {} the second time, {} the first",
                        again.digest, measured.digest
                    )));
                }
                Ok(())
            })
            .map_err(|e| match e {
                UploadError::Registry(e) => e,
                UploadError::Layer(e) => layer_err(target, &id, e),
            })?;
            bytes_uploaded += measured.size;
            BlobOutcome::Uploaded
        };
        tracing::info!(layer = %id, %digest, ?outcome, "layer blob pushed");
        layers.push(PushedLayer {
            id,
            diff_id: measured.diff_id.to_string(),
            digest,
            media_type: layer_type.to_owned(),
            size: measured.size,
            outcome,
        });
    }

    // The config as it came when every tar is the one it names.
    let same_tars =
        layers.len() == diff_ids.len() && layers.iter().zip(&diff_ids).all(|(l, d)| l.diff_id == *d);
    let config = if same_tars {
        image.record.config.clone()
    } else {
        let mut config: serde_json::Value = serde_json::from_slice(&image.record.config).map_err(|e| {
            RegistryError::Push { reference: target.to_string(), detail: format!("config: {e}") }
        })?;
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&config).map_err(|e| RegistryError::Push {
            reference: target.to_string(),
            detail: format!("config: {e}"),
        })?
    };
    let config_digest = OciDigest::sha256_of(&config).to_string();
    let config_there =
        runtime.block_on(client.blob_exists(target_ref, &config_digest)).map_err(client_err)?
            || (same_tars && mount(runtime, registry, target, &sources, &config_digest));
    if !config_there {
        runtime.block_on(client.push_blob(target_ref, config.clone(), &config_digest)).map_err(client_err)?;
        bytes_uploaded += config.len() as u64;
    }

    let reused = upstream.as_ref().is_some_and(|u| {
        same_tars
            && u.config_digest == config_digest
            && u.layers.len() == layers.len()
            && u.layers.iter().zip(&layers).all(|(b, l)| b.digest == l.digest)
    });
    let (manifest, media_type) = match (&upstream, reused) {
        (Some(u), true) => (image.record.manifest.clone(), u.media_type.clone()),
        _ => {
            let (manifest_type, config_type) =
                if docker { (DOCKER_MANIFEST, DOCKER_CONFIG) } else { (OCI_MANIFEST, OCI_CONFIG) };
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
                "layers": layers.iter().map(|l| json!({
                    "mediaType": l.media_type, "digest": l.digest, "size": l.size,
                })).collect::<Vec<_>>(),
            });
            let bytes = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Push {
                reference: target.to_string(),
                detail: format!("manifest: {e}"),
            })?;
            (bytes, manifest_type.to_owned())
        }
    };
    let manifest_digest = OciDigest::sha256_of(&manifest).to_string();
    let content_type = media_type.parse().map_err(|e| RegistryError::Push {
        reference: target.to_string(),
        detail: format!("media type: {e}"),
    })?;
    runtime.block_on(client.push_manifest_raw(target_ref, manifest, content_type)).map_err(client_err)?;
    tracing::info!(reference = %target, digest = %manifest_digest, reused, "manifest pushed");
    Ok(PushReport {
        reference: target.to_string(),
        manifest_digest,
        config_digest,
        upstream_manifest: reused,
        layers,
        bytes_uploaded,
    })
}

fn store_err(target: &ImageRef, e: strata_store::StoreError) -> RegistryError {
    RegistryError::Push { reference: target.to_string(), detail: format!("store: {e}") }
}

fn layer_err(target: &ImageRef, id: &LayerId, e: strata_oci::LayerError) -> RegistryError {
    RegistryError::Push { reference: target.to_string(), detail: format!("layer {id}: {e}") }
}

/// Mounts `digest` into `target` from the first of `sources` that has it.
fn mount(
    runtime: &tokio::runtime::Handle,
    registry: &Registry,
    target: &ImageRef,
    sources: &[ImageRef],
    digest: &str,
) -> bool {
    sources.iter().any(|source| match runtime.block_on(registry.mount_blob(target, source, digest)) {
        Ok(mounted) => mounted,
        Err(e) => {
            tracing::debug!(%digest, from = %source, error = %e, "blob not mounted");
            false
        }
    })
}

/// The blob a layer was first stored from, when the image's tar for it
/// (`diff_id`) is that blob's: with the repositories of `target`'s registry
/// that images holding the layer were pulled from, to mount it from.
fn stored_blob(
    store: &Store,
    layer: &LayerId,
    diff_id: Option<&String>,
    target: &ImageRef,
) -> Result<Option<(Blob, Vec<ImageRef>)>, strata_store::StoreError> {
    let Some(record) = store.layer(layer)? else { return Ok(None) };
    if diff_id.is_some_and(|d| *d != record.diff_id) || record.blob_digest.is_empty() {
        return Ok(None);
    }
    let mut sources = Vec::new();
    for image in store.layer_images(layer)? {
        for name in store.image_names(&image)? {
            if let Ok(r) = ImageRef::parse(&name) {
                if r.registry() == target.registry()
                    && r.repository() != target.repository()
                    && !sources.iter().any(|s: &ImageRef| s.repository() == r.repository())
                {
                    sources.push(r);
                }
            }
        }
    }
    let blob =
        Blob { media_type: record.blob_media_type, digest: record.blob_digest, size: record.blob_size };
    Ok(Some((blob, sources)))
}

/// The manifest an image was pulled with, as far as a push reuses it.
struct Upstream {
    media_type: String,
    config_digest: String,
    layers: Vec<Blob>,
}

#[derive(Clone, Deserialize)]
struct Blob {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

impl Upstream {
    fn parse(manifest: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Manifest {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            config: Blob,
            layers: Vec<Blob>,
        }
        if manifest.is_empty() {
            return None;
        }
        let m: Manifest = serde_json::from_slice(manifest).ok()?;
        Some(Self {
            media_type: m.media_type.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
            config_digest: m.config.digest,
            layers: m.layers,
        })
    }
}

/// A compressed layer: blob digest and size, and the tar's sha256.
struct Measured {
    digest: OciDigest,
    size: u64,
    diff_id: OciDigest,
}

fn measure<S: ChunkSource>(tar: &LayerTar, chunks: &mut S) -> Result<Measured, strata_oci::LayerError> {
    compress(tar, chunks, &mut io::sink())
}

/// Writes `tar` gzip-compressed into `out`, deterministically: the same
/// tar gives the same bytes.
fn compress<S: ChunkSource>(
    tar: &LayerTar,
    chunks: &mut S,
    out: &mut dyn Write,
) -> Result<Measured, strata_oci::LayerError> {
    let mut blob = Tee::new(out);
    let diff_id = {
        let gz = flate2::GzBuilder::new().mtime(0).write(&mut blob, flate2::Compression::new(GZIP_LEVEL));
        let mut tar_side = Tee::new(gz);
        tar.write(chunks, &mut tar_side)?;
        let (gz, sha) = tar_side.into_parts();
        gz.finish().map_err(strata_oci::LayerError::Write)?;
        sha.finish().0
    };
    let (digest, size) = blob.into_parts().1.finish();
    Ok(Measured { digest, size, diff_id })
}

enum UploadError {
    Registry(RegistryError),
    Layer(strata_oci::LayerError),
}

/// Uploads what `write` produces as the blob `digest` (a chunked upload;
/// the registry checks the digest when it closes). `write` runs on the
/// calling thread while the request streams on `runtime`.
fn upload(
    runtime: &tokio::runtime::Handle,
    registry: &Registry,
    target: &ImageRef,
    digest: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<(), strata_oci::LayerError>,
) -> Result<(), UploadError> {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, OciDistributionError>>(UPLOAD_QUEUE);
    let client = registry.client.clone();
    let (image, digest_owned) = (target.client_ref().clone(), digest.to_owned());
    let request = runtime.spawn(async move {
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        client.push_blob_stream(&image, stream, &digest_owned).await
    });
    let mut pieces = Pieces { tx: tx.clone(), buf: Vec::with_capacity(UPLOAD_PIECE) };
    let produced = write(&mut pieces).and_then(|()| pieces.send().map_err(strata_oci::LayerError::Write));
    drop(pieces);
    if let Err(e) = &produced {
        // The request must not close the upload with a short blob.
        let _ = tx
            .blocking_send(Err(OciDistributionError::GenericError(Some(format!("layer not written: {e}")))));
    }
    drop(tx);
    let sent = runtime.block_on(request);
    match (produced, sent) {
        // The request ended first (refused, cut): its error is the cause.
        (Err(strata_oci::LayerError::Write(e)), Ok(Err(refused)))
            if e.kind() == io::ErrorKind::BrokenPipe =>
        {
            Err(UploadError::Registry(registry.error(target, refused)))
        }
        (Err(e), _) => Err(UploadError::Layer(e)),
        (Ok(()), Ok(Ok(_))) => Ok(()),
        (Ok(()), Ok(Err(e))) => Err(UploadError::Registry(registry.error(target, e))),
        (Ok(()), Err(join)) => Err(UploadError::Registry(RegistryError::Push {
            reference: target.to_string(),
            detail: format!("upload task: {join}"),
        })),
    }
}

/// Cuts what is written into upload pieces.
struct Pieces {
    tx: mpsc::Sender<Result<Bytes, OciDistributionError>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(UPLOAD_PIECE));
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload request ended"))
    }
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(UPLOAD_PIECE - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == UPLOAD_PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

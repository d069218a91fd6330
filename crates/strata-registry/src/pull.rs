use std::io::Read;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, SizedStream};
use strata_oci::{ImportError, ImportOptions, ImportProgress, ImportReport, LayerBlobs, ManifestImage};
use strata_store::Store;
use strata_types::OciDigest;
use tokio::sync::mpsc;

use crate::client::MAX_CONFIG_BYTES;
use crate::{ImageRef, Platform, Registry, RegistryError, Resolved};

/// What [`pull`] did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The name the image has in the store.
    pub name: String,
    /// The image manifest's digest.
    pub manifest_digest: String,
    pub import: ImportReport,
}

/// How often a pull asks whether it was cancelled while it waits on the
/// registry for the manifest and config.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Stream items buffered between the download and the import, at most.
const BUFFERED_ITEMS: usize = 64;

/// A layer blob's download cut this many times is resumed with a Range
/// request from the bytes received (the whole blob is still checked
/// against its digest by the import); one more cut fails the pull.
const MAX_RESUMES: u32 = 3;

/// Pulls `image` (resolved to `platform`) from `registry` into `store`:
/// the manifest and config first (checked against their digests, within
/// size limits), then each layer blob streamed once from the registry
/// through the import, checked against its digest and diff_id while it
/// streams, in one store transaction. The image appears, named
/// [`ImageRef::store_name`], or the store is as it was. `progress` is told
/// the blob bytes as they stream and can cancel the pull at any point.
///
/// Blocking: call it from a thread that is not running async code (a
/// blocking-pool thread, or any other); requests and downloads run on
/// `runtime`, the import on the calling thread.
///
/// Errors: those of [`Registry::resolve`]; a config over
/// [`MAX_CONFIG_BYTES`] or not matching its digest;
/// [`RegistryError::Import`] for a layer that fails (a digest or diff_id
/// mismatch, a transfer cut, a bad tar, a cancel) or a refused layer media
/// type (foreign, non-distributable, encrypted).
pub fn pull(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    registry: &Registry,
    image: &ImageRef,
    platform: &Platform,
    options: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<PullReport, RegistryError> {
    let resolved = resolve(runtime, registry, image, platform, progress)?;
    pull_resolved(runtime, store, registry, image, &resolved, options, progress)
}

/// [`Registry::resolve`] from a blocking caller, after authenticating:
/// `image` resolved to `platform`'s manifest on `runtime`, given up when
/// `progress` says the pull is cancelled ([`ImportError::Cancelled`]).
pub fn resolve(
    runtime: &tokio::runtime::Handle,
    registry: &Registry,
    image: &ImageRef,
    platform: &Platform,
    progress: &dyn ImportProgress,
) -> Result<Resolved, RegistryError> {
    until_cancelled(runtime, image, progress, async {
        registry.authenticate(image).await?;
        registry.resolve(image, platform).await
    })
}

/// The image [`resolve`] found, pulled as [`pull`] says: its config, then
/// its layers streamed through the import. The image is named both
/// [`ImageRef::store_name`] and [`ImageRef::digest_name`] of its manifest
/// digest (what docker calls its repo digest): the node announces the
/// latter, so that other nodes find this image by the manifest they
/// resolved.
pub fn pull_resolved(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    registry: &Registry,
    image: &ImageRef,
    resolved: &Resolved,
    options: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<PullReport, RegistryError> {
    let pinned = image.pinned(&resolved.digest);
    let config = until_cancelled(runtime, image, progress, async {
        registry.authenticate(image).await?;
        fetch_config(registry, &pinned, &resolved.manifest).await
    })?;
    tracing::info!(image = %image, digest = %resolved.digest, "manifest and config fetched");
    let name = image.store_name();
    let mut names = vec![name.clone()];
    let digest_name = image.digest_name(&resolved.digest);
    if digest_name != name {
        names.push(digest_name);
    }
    let blobs = RegistryBlobs { registry: registry.clone(), image: pinned, runtime: runtime.clone() };
    let import = strata_oci::import_manifest(
        store,
        ManifestImage { manifest: &resolved.manifest, config: &config, names },
        &blobs,
        options,
        progress,
    )
    .map_err(|source| RegistryError::Import { reference: image.to_string(), source })?;
    Ok(PullReport { name, manifest_digest: resolved.digest.clone(), import })
}

/// Runs `work` on `runtime`, given up when `progress` says the pull is
/// cancelled: a cancel (Ctrl-C) is noticed while the registry is asked too.
fn until_cancelled<T>(
    runtime: &tokio::runtime::Handle,
    image: &ImageRef,
    progress: &dyn ImportProgress,
    work: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    runtime.block_on(async {
        let cancel = async {
            while !progress.cancelled() {
                tokio::time::sleep(CANCEL_POLL).await;
            }
        };
        tokio::select! {
            done = work => done,
            () = cancel => Err(RegistryError::Import { reference: image.to_string(), source: ImportError::Cancelled }),
        }
    })
}

/// The image config the manifest names, checked against its digest.
async fn fetch_config(
    registry: &Registry,
    image: &ImageRef,
    manifest: &[u8],
) -> Result<Vec<u8>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Descriptor,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
        size: u64,
    }
    let bad = |detail: String| RegistryError::BadManifest { reference: image.to_string(), detail };
    let parsed: Manifest = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    let expected: OciDigest = parsed
        .config
        .digest
        .parse()
        .map_err(|e| bad(format!("config digest {:?}: {e}", parsed.config.digest)))?;
    if parsed.config.size > MAX_CONFIG_BYTES {
        return Err(RegistryError::TooLarge {
            reference: image.to_string(),
            what: "config".into(),
            size: parsed.config.size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let mut stream = registry
        .client
        .pull_blob_stream(image.client_ref(), expected.to_string().as_str())
        .await
        .map_err(|e| registry.error(image, e))?;
    let mut config = Vec::with_capacity(parsed.config.size as usize);
    while let Some(item) = stream.next().await {
        let bytes = item.map_err(|e| RegistryError::Registry {
            registry: registry.name().to_owned(),
            detail: format!("config of {image}: {e}"),
        })?;
        if (config.len() + bytes.len()) as u64 > parsed.config.size {
            return Err(RegistryError::TooLarge {
                reference: image.to_string(),
                what: "config".into(),
                size: (config.len() + bytes.len()) as u64,
                limit: parsed.config.size,
            });
        }
        config.extend_from_slice(&bytes);
    }
    let actual = OciDigest::sha256_of(&config);
    if actual != expected {
        return Err(RegistryError::DigestMismatch {
            reference: image.to_string(),
            what: "config".into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(config)
}

/// Layer blobs from the registry, for the import (which runs on a
/// blocking thread): each blob's download streams on the runtime into a
/// bounded channel the import reads from.
struct RegistryBlobs {
    registry: Registry,
    image: ImageRef,
    runtime: tokio::runtime::Handle,
}

impl LayerBlobs for RegistryBlobs {
    fn open(
        &self,
        member: &str,
        digest: Option<&OciDigest>,
        size: Option<u64>,
    ) -> Result<(Box<dyn Read + Send>, u64), ImportError> {
        let (Some(digest), Some(size)) = (digest, size) else {
            return Err(ImportError::member(member, "a registry layer needs its digest and size"));
        };
        let digest = digest.to_string();
        let (registry, image) = (&self.registry, &self.image);
        let stream = self
            .runtime
            .block_on(async {
                match registry.client.pull_blob_stream(image.client_ref(), digest.as_str()).await {
                    Ok(stream) => Ok(stream),
                    Err(e) => match registry.error(image, e) {
                        // A token that expired since the pull began (a long
                        // download before this blob): asked for again, once.
                        RegistryError::Unauthorized { .. } => {
                            tracing::info!(%digest, "the registry refused the token: authenticating again");
                            registry.authenticate(image).await?;
                            registry
                                .client
                                .pull_blob_stream(image.client_ref(), digest.as_str())
                                .await
                                .map_err(|e| registry.error(image, e))
                        }
                        other => Err(other),
                    },
                }
            })
            .map_err(|e| ImportError::Blob { digest: digest.clone(), source: Box::new(e) })?;
        let (tx, rx) = mpsc::channel(BUFFERED_ITEMS);
        let (registry, image) = (self.registry.clone(), self.image.clone());
        self.runtime.spawn(async move {
            let mut stream: SizedStream = stream;
            let (mut received, mut resumes) = (0u64, 0u32);
            // Bytes of a resumed response to drop: the registry ignored the
            // Range and sent the blob from its start.
            let mut skip = 0u64;
            loop {
                let item = match stream.next().await {
                    None if received >= size || resumes >= MAX_RESUMES => return,
                    // Ended short of the blob's size without an error: resumed as a cut.
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the blob ended after {received} of {size} bytes"),
                    )),
                    Some(Ok(mut bytes)) => {
                        let dropped = skip.min(bytes.len() as u64);
                        skip -= dropped;
                        let _ = bytes.split_to(dropped as usize);
                        received += bytes.len() as u64;
                        Ok(bytes)
                    }
                    Some(Err(e)) => Err(e),
                };
                let item = match item {
                    Err(e) if resumes < MAX_RESUMES && received < size => {
                        resumes += 1;
                        tracing::warn!(%digest, received, error = %e, resumes, "blob download cut: resuming with a Range request");
                        match registry.client.pull_blob_stream_partial(image.client_ref(), digest.as_str(), received, None).await {
                            // A 206 must hold exactly the rest of the blob.
                            Ok(BlobResponse::Partial(rest))
                                if rest.content_length.is_none_or(|n| n == size - received) =>
                            {
                                stream = rest;
                                continue;
                            }
                            Ok(BlobResponse::Partial(rest)) => Err(std::io::Error::other(format!(
                                "{e}; resuming at byte {received}: the registry sent {:?} bytes, not the {} left",
                                rest.content_length,
                                size - received
                            ))),
                            Ok(BlobResponse::Full(whole)) => {
                                (stream, skip) = (whole, received);
                                continue;
                            }
                            Err(resume) => Err(std::io::Error::other(format!(
                                "{e}; resuming at byte {received} failed: {}",
                                registry.error(&image, resume)
                            ))),
                        }
                    }
                    other => other,
                };
                let failed = item.is_err();
                // The import stopped reading: the download stops too.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        // A registry that sends more than the manifest says is cut off one
        // byte past it (the import then refuses the size) rather than
        // streamed into the store without end.
        Ok((Box::new(ChannelReader { rx, current: bytes::Bytes::new() }.take(size.saturating_add(1))), size))
    }
}

/// Reads what a download task sends.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

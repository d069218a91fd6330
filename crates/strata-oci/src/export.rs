use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use strata_layer::{write_layer, ChunkSource};
use strata_store::{Store, StoreError};
use strata_types::{ChunkId, ImageId, LayerId, OciDigest, Sha256Writer};

use crate::formats::{NAME_ANNOTATION, REF_ANNOTATION};
use crate::{normalize_name, ExportError};

/// How exported layer blobs are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub compression: LayerCompression,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedLayer {
    pub id: LayerId,
    pub digest: OciDigest,
    pub diff_id: OciDigest,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    pub image: ImageId,
    pub name: String,
    pub manifest_digest: OciDigest,
    pub layers: Vec<ExportedLayer>,
    pub bytes: u64,
}

struct StoreChunks<'s>(&'s Store);

impl ChunkSource for StoreChunks<'_> {
    type Error = StoreError;
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.0.get_chunk(id)
    }
}

/// A writer that hashes what it passes on.
struct Tee<W> {
    inner: W,
    sha: Sha256Writer,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn tee<W: Write>(inner: W) -> Tee<W> {
    Tee { inner, sha: Sha256Writer::new() }
}

/// Writes the image as an OCI image layout tar (`oci-layout`, `index.json`,
/// `blobs/sha256/…`, plus a docker-save `manifest.json` so `docker load`
/// takes it too). Layer tars are rebuilt from the indexes, so their digests
/// and diff_ids are new; `strata import` of the result gives the same
/// LayerIds. The output appears whole or not at all.
pub fn export_image(
    store: &Store,
    reference: &str,
    output: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let name = normalize_name(reference).unwrap_or_else(|_| reference.to_owned());
    let (image, record) = match store.resolve(&name) {
        Ok(found) => found,
        Err(StoreError::NoSuchImage(_)) => store.resolve(reference)?,
        Err(e) => return Err(e.into()),
    };
    let names = store.image_names(&image)?;
    let name = if names.contains(&name) { name } else { names.iter().next().cloned().unwrap_or_default() };

    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    let scratch = tempfile::Builder::new().prefix(".strata-export-").tempdir_in(dir).map_err(io_err(dir))?;

    let mut layers = Vec::new();
    let mut blob_files: Vec<(OciDigest, PathBuf)> = Vec::new();
    for (i, raw) in record.layers.iter().enumerate() {
        let id = LayerId::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("image {image}: layer id: {e}")))?;
        let index = store.layer_index(&id)?;
        let path = scratch.path().join(format!("layer-{i}"));
        let file = File::create(&path).map_err(io_err(&path))?;
        let layer_err = |source| ExportError::Layer { layer: id.to_string(), source };
        let outer = tee(BufWriter::new(file));
        let (diff_id, outer) = match options.compression {
            LayerCompression::None => {
                let t = write_layer(&index, &mut StoreChunks(store), outer).map_err(layer_err)?;
                (None, t)
            }
            LayerCompression::Gzip => {
                let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::fast());
                let inner = write_layer(&index, &mut StoreChunks(store), tee(gz)).map_err(layer_err)?;
                let outer = inner.inner.finish().map_err(io_err(&path))?;
                (Some(inner.sha.finish().0), outer)
            }
            LayerCompression::Zstd => {
                let zs = zstd::stream::write::Encoder::new(outer, 3).map_err(io_err(&path))?;
                let inner = write_layer(&index, &mut StoreChunks(store), tee(zs)).map_err(layer_err)?;
                let outer = inner.inner.finish().map_err(io_err(&path))?;
                (Some(inner.sha.finish().0), outer)
            }
        };
        let Tee { inner, sha } = outer;
        inner.into_inner().map_err(|e| ExportError::Io { path: path.clone(), source: e.into_error() })?.sync_all().map_err(io_err(&path))?;
        let (digest, size) = sha.finish();
        layers.push(ExportedLayer { id, digest, diff_id: diff_id.unwrap_or(digest), size });
        blob_files.push((digest, path));
    }

    let mut config: serde_json::Value = serde_json::from_slice(&record.config).map_err(ExportError::Config)?;
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
    let config = serde_json::to_vec(&config).map_err(ExportError::Config)?;
    let config_digest = OciDigest::sha256_of(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": options.compression.media_type(),
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    }))
    .map_err(ExportError::Config)?;
    let manifest_digest = OciDigest::sha256_of(&manifest);
    let tag = name.rsplit_once(':').filter(|(repo, _)| !repo.contains('@')).map(|(_, t)| t.to_owned());
    let mut annotations = serde_json::Map::new();
    if !name.is_empty() {
        annotations.insert(NAME_ANNOTATION.into(), json!(name));
    }
    if let Some(tag) = &tag {
        annotations.insert(REF_ANNOTATION.into(), json!(tag));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": annotations,
        }],
    }))
    .map_err(ExportError::Config)?;
    let blob = |d: &OciDigest| format!("blobs/sha256/{}", d.hex());
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": if name.is_empty() || name.contains('@') { vec![] } else { vec![name.clone()] },
        "Layers": layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
    }]))
    .map_err(ExportError::Config)?;

    let staged = scratch.path().join("image.tar");
    let file = File::create(&staged).map_err(io_err(&staged))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let put = |tar: &mut tar::Builder<BufWriter<File>>, name: &str, bytes: &[u8]| {
        tar.append_data(&mut file_header(bytes.len() as u64), name, bytes)
    };
    (|| -> io::Result<()> {
        put(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        put(&mut tar, "index.json", &index)?;
        put(&mut tar, "manifest.json", &docker_manifest)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, dir, io::empty())?;
        }
        put(&mut tar, &blob(&config_digest), &config)?;
        put(&mut tar, &blob(&manifest_digest), &manifest)?;
        for (digest, path) in &blob_files {
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            tar.append_data(&mut file_header(len), blob(digest), &mut f)?;
        }
        let mut out = tar.into_inner()?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })()
    .map_err(io_err(&staged))?;
    let bytes = std::fs::metadata(&staged).map_err(io_err(&staged))?.len();
    std::fs::rename(&staged, output).map_err(io_err(output))?;
    Ok(ExportReport { image, name, manifest_digest, layers, bytes })
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

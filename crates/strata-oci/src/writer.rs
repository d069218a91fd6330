//! Writing image archives: OCI image layouts (tar or directory), with or
//! without the docker-save `manifest.json`, and legacy docker-save tars.
//! Export uses it, and so do tests, the demo and benchmarks to build images.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use strata_types::{OciDigest, Sha256Writer};

use crate::formats::{NAME_ANNOTATION, REF_ANNOTATION};

/// How layer blobs are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// The shape of the archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveLayout {
    /// OCI image layout plus docker's `manifest.json`, as `docker save` writes
    /// since Docker 25: both OCI tools and `docker load` read it.
    #[default]
    OciWithDockerManifest,
    /// OCI image layout only (`oci-layout`, `index.json`, `blobs/`).
    Oci,
    /// The docker-save format before Docker 25: `manifest.json`,
    /// `<id>/layer.tar`, `<digest>.json`.
    DockerLegacy,
}

/// A layer blob as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenLayer {
    pub digest: OciDigest,
    pub diff_id: OciDigest,
    pub size: u64,
    pub media_type: &'static str,
    member: String,
}

/// Where the archive goes: a tar file, or a directory (OCI layouts only),
/// or a tar stream (`strata export -o -`: stdout).
pub enum ArchiveTarget {
    Tar(PathBuf),
    Dir(PathBuf),
    /// A tar written to `out` as [`ArchiveWriter::finish`] runs (a stream
    /// cannot appear whole: a reader sees it cut short if writing fails);
    /// blobs are staged in a directory made under `scratch` first.
    Stream {
        out: Box<dyn Write + Send>,
        scratch: PathBuf,
    },
}

/// Builds an image archive blob by blob. The archive appears at its target
/// whole when [`ArchiveWriter::finish`] returns, or not at all.
pub struct ArchiveWriter {
    layout: ArchiveLayout,
    target: ArchiveTarget,
    scratch: tempfile::TempDir,
    /// Blobs staged in `scratch`, by member name, in write order.
    members: Vec<(String, PathBuf)>,
    seen: HashSet<String>,
    index_entries: Vec<serde_json::Value>,
    docker_entries: Vec<serde_json::Value>,
    counter: usize,
}

impl ArchiveWriter {
    pub fn new(target: ArchiveTarget, layout: ArchiveLayout) -> io::Result<Self> {
        let parent = match &target {
            ArchiveTarget::Tar(p) | ArchiveTarget::Dir(p) => p.parent().filter(|p| !p.as_os_str().is_empty()),
            ArchiveTarget::Stream { scratch, .. } => Some(scratch.as_path()),
        };
        let scratch = tempfile::Builder::new()
            .prefix(".strata-archive-")
            .tempdir_in(parent.unwrap_or(Path::new(".")))?;
        if layout == ArchiveLayout::DockerLegacy && matches!(target, ArchiveTarget::Dir(_)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "legacy docker-save archives are tar files",
            ));
        }
        Ok(Self {
            layout,
            target,
            scratch,
            members: Vec::new(),
            seen: HashSet::new(),
            index_entries: Vec::new(),
            docker_entries: Vec::new(),
            counter: 0,
        })
    }

    fn stage(&mut self, member: String, bytes: &[u8]) -> io::Result<()> {
        if self.seen.insert(member.clone()) {
            self.counter += 1;
            let path = self.scratch.path().join(format!("blob-{}", self.counter));
            fs::write(&path, bytes)?;
            self.members.push((member, path));
        }
        Ok(())
    }

    /// Adds a layer whose uncompressed tar `write_tar` produces.
    pub fn add_layer(
        &mut self,
        compression: LayerCompression,
        write_tar: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<WrittenLayer> {
        self.counter += 1;
        let path = self.scratch.path().join(format!("blob-{}", self.counter));
        let mut outer = Tee::new(BufWriter::new(File::create(&path)?));
        let diff_id = match compression {
            LayerCompression::None => {
                write_tar(&mut outer)?;
                None
            }
            LayerCompression::Gzip => {
                let mut inner =
                    Tee::new(flate2::write::GzEncoder::new(&mut outer, flate2::Compression::fast()));
                write_tar(&mut inner)?;
                let (gz, sha) = inner.into_parts();
                gz.finish()?;
                Some(sha.finish().0)
            }
            LayerCompression::Zstd => {
                let mut inner = Tee::new(zstd::stream::write::Encoder::new(&mut outer, 3)?);
                write_tar(&mut inner)?;
                let (zs, sha) = inner.into_parts();
                zs.finish()?;
                Some(sha.finish().0)
            }
        };
        let (file, sha) = outer.into_parts();
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let (digest, size) = sha.finish();
        let diff_id = diff_id.unwrap_or(digest);
        let member = match self.layout {
            ArchiveLayout::DockerLegacy => format!("{}/layer.tar", diff_id.hex()),
            _ => blob_member(&digest),
        };
        if self.seen.insert(member.clone()) {
            self.members.push((member.clone(), path));
        }
        Ok(WrittenLayer { digest, diff_id, size, media_type: compression.media_type(), member })
    }

    /// Adds a layer from an uncompressed tar stream.
    pub fn add_layer_from(
        &mut self,
        compression: LayerCompression,
        mut tar: impl Read,
    ) -> io::Result<WrittenLayer> {
        self.add_layer(compression, |w| io::copy(&mut tar, w).map(|_| ()))
    }

    /// Adds an image. `config` is the OCI config without `rootfs`, which is
    /// filled in from `layers`. Returns the manifest digest.
    pub fn add_image(
        &mut self,
        names: &[String],
        mut config: serde_json::Value,
        layers: &[WrittenLayer],
    ) -> io::Result<OciDigest> {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
        self.add_image_with_config(names, serde_json::to_vec(&config)?, layers)
    }

    /// Adds an image whose config is `config` byte for byte (so its digest,
    /// the image ID docker shows, is kept); its `rootfs.diff_ids` must be
    /// those of `layers`. Returns the manifest digest.
    pub fn add_image_with_config(
        &mut self,
        names: &[String],
        config: Vec<u8>,
        layers: &[WrittenLayer],
    ) -> io::Result<OciDigest> {
        let config_digest = OciDigest::sha256_of(&config);
        let config_member = match self.layout {
            ArchiveLayout::DockerLegacy => format!("{}.json", config_digest.hex()),
            _ => blob_member(&config_digest),
        };
        self.stage(config_member.clone(), &config)?;

        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        }))?;
        let manifest_digest = OciDigest::sha256_of(&manifest);
        if self.layout != ArchiveLayout::DockerLegacy {
            self.stage(blob_member(&manifest_digest), &manifest)?;
            let descriptor = |annotations: serde_json::Value| {
                json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest.to_string(),
                    "size": manifest.len(),
                    "annotations": annotations,
                })
            };
            if names.is_empty() {
                self.index_entries.push(descriptor(json!({})));
            }
            for name in names {
                let mut annotations = serde_json::Map::new();
                annotations.insert(NAME_ANNOTATION.into(), json!(name));
                if let Some((_, tag)) = name.rsplit_once(':').filter(|(repo, _)| !repo.contains('@')) {
                    annotations.insert(REF_ANNOTATION.into(), json!(tag));
                }
                self.index_entries.push(descriptor(annotations.into()));
            }
        }
        self.docker_entries.push(json!({
            "Config": config_member,
            "RepoTags": names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
            "Layers": layers.iter().map(|l| l.member.clone()).collect::<Vec<_>>(),
        }));
        Ok(manifest_digest)
    }

    /// Writes the archive out and returns its size in bytes (0 for a directory).
    pub fn finish(self) -> io::Result<u64> {
        let mut small: Vec<(&str, Vec<u8>)> = Vec::new();
        if self.layout != ArchiveLayout::DockerLegacy {
            small.push(("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
            small.push((
                "index.json",
                serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": self.index_entries,
                }))?,
            ));
        }
        if self.layout != ArchiveLayout::Oci {
            small.push(("manifest.json", serde_json::to_vec(&self.docker_entries)?));
        }
        match self.target {
            ArchiveTarget::Dir(dir) => {
                let staged = self.scratch.path().join("layout");
                fs::create_dir_all(staged.join("blobs/sha256"))?;
                for (name, bytes) in &small {
                    fs::write(staged.join(name), bytes)?;
                }
                for (member, path) in &self.members {
                    fs::rename(path, staged.join(member))?;
                }
                fs::rename(&staged, &dir)?;
                Ok(0)
            }
            ArchiveTarget::Tar(out) => {
                let staged = self.scratch.path().join("archive.tar");
                let file = write_tar(BufWriter::new(File::create(&staged)?), &small, &self.members)?;
                let file = file.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                let len = file.metadata()?.len();
                fs::rename(&staged, &out)?;
                Ok(len)
            }
            ArchiveTarget::Stream { out, .. } => {
                let mut counted = Counted { inner: BufWriter::with_capacity(1 << 20, out), bytes: 0 };
                counted = write_tar(counted, &small, &self.members)?;
                counted.inner.flush()?;
                Ok(counted.bytes)
            }
        }
    }
}

/// The archive's tar: the small files, then each staged blob under its
/// member name (with the directories above it first); returns the writer.
fn write_tar<W: Write>(out: W, small: &[(&str, Vec<u8>)], members: &[(String, PathBuf)]) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    for (name, bytes) in small {
        tar.append_data(&mut file_header(bytes.len() as u64), name, bytes.as_slice())?;
    }
    let mut dirs = HashSet::new();
    for (member, path) in members {
        if let Some((dir, _)) = member.rsplit_once('/') {
            for (i, _) in dir.match_indices('/').chain([(dir.len(), "")]) {
                let d = format!("{}/", &dir[..i]);
                if dirs.insert(d.clone()) {
                    let mut h = file_header(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    tar.append_data(&mut h, &d, io::empty())?;
                }
            }
        }
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        tar.append_data(&mut file_header(len), member, &mut f)?;
    }
    tar.into_inner()
}

/// A writer that counts what goes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn blob_member(d: &OciDigest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// A writer that hashes (sha256) what it passes on to `W`.
pub struct Tee<W> {
    inner: W,
    sha: Sha256Writer,
}

impl<W: Write> Tee<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, sha: Sha256Writer::new() }
    }
    /// The inner writer and the hash of what went through.
    pub fn into_parts(self) -> (W, Sha256Writer) {
        (self.inner, self.sha)
    }
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

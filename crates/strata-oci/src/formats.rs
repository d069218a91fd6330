//! What an archive holds: the images of a docker-save `manifest.json` or of
//! an OCI layout's `index.json`, with every manifest and config read and
//! checked against its digest, ready for the layers to be streamed.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use strata_types::OciDigest;

use crate::archive::Archive;
use crate::{normalize_name, ImportError};

/// One image to import.
pub(crate) struct ImagePlan {
    pub names: Vec<String>,
    pub config: Vec<u8>,
    pub config_digest: OciDigest,
    pub layers: Vec<LayerPlan>,
    /// The manifest's bytes, kept with the image (empty for docker-save).
    pub manifest: Vec<u8>,
}

/// One layer blob and what it must hash to.
#[derive(Clone)]
pub(crate) struct LayerPlan {
    pub member: String,
    /// Digest of the blob as stored, when the archive states it.
    pub blob_digest: Option<OciDigest>,
    pub blob_size: Option<u64>,
    pub media_type: String,
    /// sha256 of the uncompressed tar, from the config's rootfs.
    pub diff_id: OciDigest,
}

pub(crate) const NAME_ANNOTATION: &str = "io.containerd.image.name";
pub(crate) const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

pub(crate) fn plan(archive: &Archive, archive_path: &Path) -> Result<Vec<ImagePlan>, ImportError> {
    if archive.contains("manifest.json") {
        docker_save(archive)
    } else if archive.contains("index.json") {
        oci_layout(archive, archive_path)
    } else {
        Err(ImportError::UnknownFormat { path: archive_path.to_owned() })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_save(archive: &Archive) -> Result<Vec<ImagePlan>, ImportError> {
    let bytes = archive.read_small("manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::member("manifest.json", e))?;
    let mut plans = Vec::new();
    for entry in entries {
        let config_digest = digest_from_member_name(&entry.config);
        let config = archive.read_small(&entry.config)?;
        let actual = OciDigest::sha256_of(&config);
        if let Some(expected) = config_digest {
            if expected != actual {
                return Err(ImportError::DigestMismatch { member: entry.config.clone(), expected, actual });
            }
        }
        let diff_ids = diff_ids(&entry.config, &config)?;
        if diff_ids.len() != entry.layers.len() {
            return Err(ImportError::member(
                "manifest.json",
                format!(
                    "{} lists {} layers, its config {} diff_ids",
                    entry.config,
                    entry.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let layers = entry
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(member, diff_id)| LayerPlan {
                member: member.clone(),
                blob_digest: digest_from_member_name(member),
                blob_size: None,
                media_type: String::new(),
                diff_id,
            })
            .collect();
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|n| normalize_name(n))
            .collect::<Result<_, _>>()?;
        plans.push(ImagePlan { names, config, config_digest: actual, layers, manifest: Vec::new() });
    }
    Ok(plans)
}

/// `blobs/sha256/<hex>` and `<hex>.json` name their content's digest.
fn digest_from_member_name(member: &str) -> Option<OciDigest> {
    let hex = member
        .strip_prefix("blobs/sha256/")
        .or_else(|| member.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    format!("sha256:{hex}").parse().ok()
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn diff_ids(member: &str, config: &[u8]) -> Result<Vec<OciDigest>, ImportError> {
    let parsed: ConfigRootfs = serde_json::from_slice(config).map_err(|e| ImportError::member(member, e))?;
    if parsed.rootfs.kind != "layers" {
        return Err(ImportError::member(
            member,
            format!("rootfs type {:?}, expected \"layers\"", parsed.rootfs.kind),
        ));
    }
    parsed
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.parse().map_err(|e| ImportError::member(member, format!("diff_id: {e}"))))
        .collect()
}

fn blob_member(digest: &OciDigest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn descriptor_digest(member: &str, d: &Descriptor) -> Result<OciDigest, ImportError> {
    d.digest().to_string().parse().map_err(|e| ImportError::member(member, format!("descriptor: {e}")))
}

/// Reads a small blob and checks it against its descriptor.
fn read_blob(archive: &Archive, d: &Descriptor, referrer: &str) -> Result<(String, Vec<u8>), ImportError> {
    let digest = descriptor_digest(referrer, d)?;
    let member = blob_member(&digest);
    let bytes = archive.read_small(&member)?;
    if bytes.len() as u64 != d.size() {
        return Err(ImportError::SizeMismatch { member, expected: d.size(), actual: bytes.len() as u64 });
    }
    let actual = OciDigest::sha256_of(&bytes);
    if actual != digest {
        return Err(ImportError::DigestMismatch { member, expected: digest, actual });
    }
    Ok((member, bytes))
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || media_type.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn oci_layout(archive: &Archive, archive_path: &Path) -> Result<Vec<ImagePlan>, ImportError> {
    let layout = archive.read_small("oci-layout")?;
    let version: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| ImportError::member("oci-layout", e))?;
    if version.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(ImportError::member("oci-layout", "imageLayoutVersion is not 1.0.0"));
    }
    let bytes = archive.read_small("index.json")?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::member("index.json", e))?;
    let stem = archive_path.file_stem().map(|s| s.to_string_lossy().to_lowercase());

    // Descriptors in index.json, with nested indexes resolved to a manifest
    // for this machine's platform.
    let mut plans: Vec<ImagePlan> = Vec::new();
    let mut by_manifest: HashMap<OciDigest, usize> = HashMap::new();
    for top in index.manifests() {
        let names = names_of(top, stem.as_deref())?;
        let manifest = select_manifest(archive, top, "index.json")?;
        let digest = descriptor_digest("index.json", &manifest)?;
        if let Some(&i) = by_manifest.get(&digest) {
            plans[i].names.extend(names);
            continue;
        }
        let mut plan = image_from_manifest(archive, &manifest)?;
        plan.names = names;
        by_manifest.insert(digest, plans.len());
        plans.push(plan);
    }
    Ok(plans)
}

fn names_of(d: &Descriptor, archive_stem: Option<&str>) -> Result<Vec<String>, ImportError> {
    let Some(annotations) = d.annotations() else { return Ok(Vec::new()) };
    if let Some(full) = annotations.get(NAME_ANNOTATION) {
        return Ok(vec![normalize_name(full)?]);
    }
    let Some(reference) = annotations.get(REF_ANNOTATION) else { return Ok(Vec::new()) };
    // A bare tag ("latest", "1.36") names the image within the layout; the
    // repository then comes from the archive's file name.
    let bare_tag = !reference.contains([':', '/', '@']);
    let full = match (bare_tag, archive_stem) {
        (true, Some(stem)) => format!("{stem}:{reference}"),
        _ => reference.clone(),
    };
    Ok(vec![normalize_name(&full)?])
}

fn select_manifest(archive: &Archive, d: &Descriptor, referrer: &str) -> Result<Descriptor, ImportError> {
    let mut d = d.clone();
    let mut referrer = referrer.to_owned();
    for _ in 0..4 {
        if !is_index(d.media_type()) {
            return Ok(d);
        }
        let (member, bytes) = read_blob(archive, &d, &referrer)?;
        let nested: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| ImportError::member(&member, e))?;
        let candidates: Vec<&Descriptor> = nested.manifests().iter().collect();
        let arch = host_arch();
        let chosen = candidates
            .iter()
            .find(|m| {
                m.platform()
                    .as_ref()
                    .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
            })
            .or_else(|| if candidates.len() == 1 { candidates.first() } else { None })
            .ok_or_else(|| {
                let platforms: Vec<String> = candidates
                    .iter()
                    .filter_map(|m| m.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
                    .collect();
                ImportError::member(
                    &member,
                    format!("no manifest for linux/{arch}; platforms: {}", platforms.join(", ")),
                )
            })?;
        d = (*chosen).clone();
        referrer = member;
    }
    Err(ImportError::member(&referrer, "image indexes nested too deeply"))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn image_from_manifest(archive: &Archive, d: &Descriptor) -> Result<ImagePlan, ImportError> {
    let (member, bytes) = read_blob(archive, d, "index.json")?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::member(&member, e))?;
    let (config_member, config) = read_blob(archive, manifest.config(), &member)?;
    let mut plan = plan_from_manifest(&member, &manifest, &config_member, config)?;
    plan.manifest = bytes.to_vec();
    Ok(plan)
}

/// The plan of an image from its manifest (read from `member`) and its
/// config (read from `config_member`, already checked against the
/// manifest's config descriptor). Layers named by digest
/// (`blobs/sha256/<hex>`); foreign, non-distributable and encrypted layers
/// refused.
pub(crate) fn plan_from_manifest(
    member: &str,
    manifest: &ImageManifest,
    config_member: &str,
    config: Vec<u8>,
) -> Result<ImagePlan, ImportError> {
    let member = member.to_owned();
    let config_digest = OciDigest::sha256_of(&config);
    let diff_ids = diff_ids(config_member, &config)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImportError::member(
            &member,
            format!("{} layers, but the config has {} diff_ids", manifest.layers().len(), diff_ids.len()),
        ));
    }
    let mut layers = Vec::new();
    for (index, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let media_type = layer.media_type().to_string();
        let why = if media_type.contains("encrypted") {
            Some("encrypted layers are not supported")
        } else if media_type.contains("foreign") || media_type.contains("nondistributable") {
            Some("a foreign (non-distributable) layer: its bytes are not distributed with the image")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ImportError::RefusedLayer {
                index: index + 1,
                digest: layer.digest().to_string(),
                media_type,
                why,
            });
        }
        let digest = descriptor_digest(&member, layer)?;
        layers.push(LayerPlan {
            member: blob_member(&digest),
            blob_digest: Some(digest),
            blob_size: Some(layer.size()),
            media_type,
            diff_id,
        });
    }
    Ok(ImagePlan { names: Vec::new(), config, config_digest, layers, manifest: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_that_carry_digests() {
        let hex = "a".repeat(64);
        assert!(digest_from_member_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_from_member_name(&format!("{hex}.json")).is_some());
        assert!(digest_from_member_name(&format!("{hex}/layer.tar")).is_none());
        assert!(digest_from_member_name("config.json").is_none());
    }
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use serde::{Deserialize, Serialize};

use crate::{ConfiguredCredentials, Credentials, ImageRef, Platform, RegistryError};

/// Largest manifest or index accepted (bytes), as containerd's limit.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted (bytes).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Manifest lists and indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

/// The media types a manifest request accepts: OCI and docker schema 2,
/// images and lists.
const ACCEPTED: [&str; 4] = [
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// How registries are reached (the node's `[registry]` settings).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Registries reached over plain HTTP, as references name them
    /// (`localhost:5000`); every other one over TLS.
    pub insecure: Vec<String>,
    /// A PEM file of CA certificates trusted for a registry, beside the
    /// system roots, by the registry's name as references write it.
    pub ca_files: BTreeMap<String, PathBuf>,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: f64,
    /// Seconds a response may go without a byte before the request fails.
    pub read_timeout_secs: f64,
    /// Credentials per registry (`[registry.auth."HOST[:PORT]"]`).
    pub auth: BTreeMap<String, ConfiguredCredentials>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_files: BTreeMap::new(),
            connect_timeout_secs: 10.0,
            read_timeout_secs: 30.0,
            auth: BTreeMap::new(),
        }
    }
}

/// One registry, as an image reference names it, with the credentials it
/// is asked with.
#[derive(Clone)]
pub struct Registry {
    pub(crate) client: oci_client::Client,
    pub(crate) auth: RegistryAuth,
    name: String,
    /// Manifests are read by hand (`oci-client` buffers a whole body
    /// before its size can be checked): this client has the same TLS
    /// roots, protocol and timeouts.
    http: reqwest::Client,
    scheme: &'static str,
    /// The bearer token [`Registry::authenticate`] got, if the registry
    /// asked for one.
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Tokens for cross-repository mounts, by "TARGET SOURCE" repository.
    mount_tokens: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

/// A reference resolved to one image manifest.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The image manifest's digest (`sha256:<hex>`): what `@digest` pins.
    pub digest: String,
    /// The manifest's bytes as the registry sent them (digest checked).
    pub manifest: Vec<u8>,
    /// The digest of the manifest list or index it was chosen from.
    pub index_digest: Option<String>,
}

impl Resolved {
    /// The manifest `record` keeps, when it hashes to `digest` (the image
    /// manifest's own digest, `sha256:<hex>`): a stored or a peer's image
    /// named `REPOSITORY@digest` proves that it is that manifest's image
    /// without asking the registry. `None` when the record keeps no
    /// manifest (imported before manifests were kept, or from a docker-save
    /// archive) or another one (the name is an index's digest).
    pub fn kept_by(digest: &str, record: &strata_store::ImageRecord) -> Option<Resolved> {
        let kept = !record.manifest.is_empty()
            && strata_types::OciDigest::sha256_of(&record.manifest).to_string() == digest;
        kept.then(|| Resolved {
            digest: digest.to_owned(),
            manifest: record.manifest.clone(),
            index_digest: None,
        })
    }

    /// Checks that an image found elsewhere under this manifest's digest
    /// (a peer's copy) is this manifest's image: its config hashes to the
    /// manifest's config digest, it has as many layers as the manifest and
    /// the config, and each layer was stored from the tar the config names
    /// (the record's diff_id, or one of its tar-splits'); a layer whose
    /// record is that tar's and holds no split must also have the
    /// manifest's blob digest. The layers' indexes are the peer's word
    /// (their chunks are verified as they are read, not their tar against
    /// the diff_id).
    ///
    /// Errors: [`RegistryError::BadManifest`] when the manifest does not
    /// parse; [`RegistryError::DigestMismatch`] naming what differs.
    pub fn check_image(
        &self,
        reference: &ImageRef,
        record: &strata_store::ImageRecord,
        layers: &[&strata_store::LayerRecord],
    ) -> Result<(), RegistryError> {
        #[derive(Deserialize)]
        struct Manifest {
            config: Blob,
            layers: Vec<Blob>,
        }
        #[derive(Deserialize)]
        struct Blob {
            digest: String,
        }
        let manifest: Manifest = serde_json::from_slice(&self.manifest).map_err(|e| {
            RegistryError::BadManifest { reference: reference.to_string(), detail: format!("manifest: {e}") }
        })?;
        let mismatch = |what: String, expected: &str, actual: &str| RegistryError::DigestMismatch {
            reference: reference.to_string(),
            what,
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        };
        let config_digest = strata_types::OciDigest::sha256_of(&record.config).to_string();
        if record.config_digest != manifest.config.digest || config_digest != manifest.config.digest {
            return Err(mismatch("config".into(), &manifest.config.digest, &config_digest));
        }
        #[derive(Deserialize)]
        struct Config {
            rootfs: RootFs,
        }
        #[derive(Deserialize)]
        struct RootFs {
            diff_ids: Vec<String>,
        }
        let config: Config = serde_json::from_slice(&record.config).map_err(|e| {
            RegistryError::BadManifest { reference: reference.to_string(), detail: format!("config: {e}") }
        })?;
        if layers.len() != manifest.layers.len() || layers.len() != config.rootfs.diff_ids.len() {
            return Err(mismatch(
                "layer count".into(),
                &manifest.layers.len().to_string(),
                &layers.len().to_string(),
            ));
        }
        // A layer record keeps the diff_id and blob digest of the tar it
        // was first stored from; the same file tree from another tar (or
        // the same tar compressed otherwise) adds only its tar-split.
        for (i, (layer, diff_id)) in layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let kept = layer.diff_id == *diff_id || layer.tar_splits.iter().any(|s| s.diff_id == *diff_id);
            if !kept {
                return Err(mismatch(format!("diff_id of layer {i}"), diff_id, &layer.diff_id));
            }
        }
        for (i, ((layer, blob), diff_id)) in
            layers.iter().zip(&manifest.layers).zip(&config.rootfs.diff_ids).enumerate()
        {
            if layer.diff_id == *diff_id && layer.blob_digest != blob.digest && layer.tar_splits.is_empty() {
                return Err(mismatch(format!("layer {i}"), &blob.digest, &layer.blob_digest));
            }
        }
        Ok(())
    }
}

impl Registry {
    /// The registry `image` names, reached as `settings` say, asked with
    /// `credentials`.
    ///
    /// Errors: a CA file that cannot be read or holds no certificate.
    pub fn new(
        settings: &RegistrySettings,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Self, RegistryError> {
        let name = image.registry().to_owned();
        let insecure = settings.insecure.iter().any(|r| *r == name || r == image.host());
        let mut http = reqwest::Client::builder()
            .connect_timeout(seconds(settings.connect_timeout_secs))
            .read_timeout(seconds(settings.read_timeout_secs))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
        let mut config = ClientConfig {
            protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(seconds(settings.connect_timeout_secs)),
            read_timeout: Some(seconds(settings.read_timeout_secs)),
            platform_resolver: None,
            ..Default::default()
        };
        if let Some(path) = settings.ca_files.get(&name) {
            let data = std::fs::read(path)
                .map_err(|e| RegistryError::Settings(format!("CA file {} of {name}: {e}", path.display())))?;
            if !String::from_utf8_lossy(&data).contains("-----BEGIN CERTIFICATE-----") {
                return Err(RegistryError::Settings(format!(
                    "CA file {} of {name} holds no PEM certificate",
                    path.display()
                )));
            }
            let certificate = reqwest::Certificate::from_pem(&data)
                .map_err(|e| RegistryError::Settings(format!("CA file {} of {name}: {e}", path.display())))?;
            http = http.tls_certs_merge(vec![certificate]);
            config.extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let client = oci_client::Client::try_from(config)
            .map_err(|e| RegistryError::Settings(format!("a client for {name}: {e}")))?;
        let http = http.build().map_err(|e| RegistryError::Settings(format!("a client for {name}: {e}")))?;
        Ok(Self {
            client,
            auth: credentials.to_client(),
            name,
            http,
            scheme: if insecure { "http" } else { "https" },
            token: Default::default(),
            mount_tokens: Default::default(),
        })
    }

    /// The registry's name, as references write it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Authenticates for pulling from `image`'s repository (the bearer
    /// flow when the registry challenges with one).
    pub(crate) async fn authenticate(&self, image: &ImageRef) -> Result<(), RegistryError> {
        let token = self
            .client
            .auth(image.client_ref(), &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.error(image, e))?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        Ok(())
    }

    /// The manifest (or index) `image` names, and its digest, read within
    /// [`MAX_MANIFEST_BYTES`] as it arrives (a registry that sends more is
    /// cut off there, whatever its `Content-Length` says). An `@digest`
    /// reference must hash to its digest; a `Docker-Content-Digest` header,
    /// when sent, too (distribution spec, "Pulling manifests").
    ///
    /// Errors: [`RegistryError::Unauthorized`] (401, 403),
    /// [`RegistryError::NotFound`] (404), [`RegistryError::TooLarge`],
    /// [`RegistryError::DigestMismatch`], [`RegistryError::Transport`], and
    /// [`RegistryError::Registry`] for any other answer.
    async fn get_manifest(&self, image: &ImageRef) -> Result<(Vec<u8>, String), RegistryError> {
        match self.get_manifest_once(image).await {
            // No token yet, or one that expired: asked for again, once.
            Err(RegistryError::Unauthorized { .. }) => {
                self.authenticate(image).await?;
                self.get_manifest_once(image).await
            }
            other => other,
        }
    }

    async fn get_manifest_once(&self, image: &ImageRef) -> Result<(Vec<u8>, String), RegistryError> {
        let reference = image.client_ref();
        let tag_or_digest = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{tag_or_digest}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository()
        );
        let mut request = self.http.get(&url).header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        request = match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let transport = |e: reqwest::Error| RegistryError::Transport {
            registry: self.name.clone(),
            source: Box::new(e.without_url()),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let too_large = |size: u64| RegistryError::TooLarge {
            reference: image.to_string(),
            what: "manifest".into(),
            size,
            limit: MAX_MANIFEST_BYTES,
        };
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(transport)? {
            if (body.len() + piece.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large((body.len() + piece.len()) as u64));
            }
            body.extend_from_slice(&piece);
        }
        let detail = || {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            format!("{status} for {url}: {}", text.trim())
        };
        match status {
            200 => {}
            401 | 403 => {
                return Err(RegistryError::Unauthorized { registry: self.name.clone(), detail: detail() })
            }
            404 => return Err(RegistryError::NotFound { reference: image.to_string(), detail: detail() }),
            _ => return Err(RegistryError::Registry { registry: self.name.clone(), detail: detail() }),
        }
        let digest = strata_types::OciDigest::sha256_of(&body).to_string();
        let header = response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with("sha256:"))
            .map(str::to_owned);
        for expected in reference.digest().map(str::to_owned).into_iter().chain(header) {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    reference: image.to_string(),
                    what: "manifest".into(),
                    expected,
                    actual: digest,
                });
            }
        }
        Ok((body, digest))
    }

    /// Mounts blob `digest` from `source`'s repository into `target`'s, on
    /// this registry (distribution spec, "Mounting a blob from another
    /// repository": `POST /v2/TARGET/blobs/uploads/?mount=DIGEST&from=SOURCE`,
    /// `201 Created` when mounted). A registry that challenges for a bearer
    /// token gets one asked for with both scopes, `repository:TARGET:pull,push`
    /// and `repository:SOURCE:pull`, as docker asks (a token for the target
    /// alone does not let the registry read the source, and it starts an
    /// upload instead). When the registry answers `202 Accepted` (an upload
    /// session, not a mount), that session is cancelled.
    ///
    /// Returns whether the blob was mounted; a refusal (no such blob, no
    /// right to the source) is `Ok(false)`. Errors: the transport, or a
    /// token server that refuses the credentials.
    pub(crate) async fn mount_blob(
        &self,
        target: &ImageRef,
        source: &ImageRef,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let (target_ref, source_ref) = (target.client_ref(), source.client_ref());
        let base = format!("{}://{}", self.scheme, target_ref.resolve_registry());
        let url = format!("{base}/v2/{}/blobs/uploads/", target_ref.repository());
        let transport = |e: reqwest::Error| RegistryError::Transport {
            registry: self.name.clone(),
            source: Box::new(e.without_url()),
        };
        let cache_key = format!("{} {}", target_ref.repository(), source_ref.repository());
        let mut token = self.mount_tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key).cloned();
        let authorize = |request: reqwest::RequestBuilder, token: &Option<String>| match (token, &self.auth) {
            (Some(token), _) | (None, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, RegistryAuth::Anonymous) => request,
        };
        let post = || {
            self.http
                .post(&url)
                .query(&[("mount", digest), ("from", source_ref.repository())])
                .header(reqwest::header::CONTENT_LENGTH, 0)
        };
        let mut response = authorize(post(), &token).send().await.map_err(transport)?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            if let Some(challenge) = BearerChallenge::of(response.headers()) {
                let scopes = [
                    format!("repository:{}:pull,push", target_ref.repository()),
                    format!("repository:{}:pull", source_ref.repository()),
                ];
                let fresh = self.token_for(&challenge, &scopes).await?;
                self.mount_tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, fresh.clone());
                token = Some(fresh);
                response = authorize(post(), &token).send().await.map_err(transport)?;
            }
        }
        match response.status().as_u16() {
            201 => Ok(true),
            202 => {
                // An upload session the push does not use: cancelled (a
                // registry also purges stale sessions on its own).
                let location =
                    response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
                if let Some(location) = location {
                    let location = if location.starts_with('/') {
                        format!("{base}{location}")
                    } else {
                        location.to_owned()
                    };
                    if let Err(e) = authorize(self.http.delete(&location), &token).send().await {
                        tracing::debug!(error = %e.without_url(), "upload session not cancelled");
                    }
                }
                tracing::debug!(%digest, from = %source, "blob not mounted: the registry started an upload");
                Ok(false)
            }
            status => {
                tracing::debug!(%digest, from = %source, status, "blob not mounted");
                Ok(false)
            }
        }
    }

    /// A bearer token for `scopes` from the token server `challenge` names
    /// (distribution token spec, docs/spec/auth/token.md: `GET REALM?service=
    /// SERVICE&scope=…`, basic credentials when there are any; the answer's
    /// `token`, or `access_token` as OAuth2 servers write it). The answer
    /// is read within 1 MiB.
    ///
    /// Errors: [`RegistryError::Unauthorized`] when the token server refuses
    /// (the credentials are not in the message), the transport.
    async fn token_for(
        &self,
        challenge: &BearerChallenge,
        scopes: &[String],
    ) -> Result<String, RegistryError> {
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = &challenge.service {
            query.push(("service", service));
        }
        let mut request = self.http.get(&challenge.realm).query(&query);
        if let RegistryAuth::Basic(user, password) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let transport = |e: reqwest::Error| RegistryError::Transport {
            registry: self.name.clone(),
            source: Box::new(e.without_url()),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(transport)? {
            if body.len() + piece.len() > 1 << 20 {
                return Err(RegistryError::Registry {
                    registry: self.name.clone(),
                    detail: format!("the token server {} sent over 1 MiB", challenge.realm),
                });
            }
            body.extend_from_slice(&piece);
        }
        if !status.is_success() {
            return Err(RegistryError::Unauthorized {
                registry: self.name.clone(),
                detail: format!("the token server {} answered {status}", challenge.realm),
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| RegistryError::Registry {
            registry: self.name.clone(),
            detail: format!("the token server {} sent no token: {e}", challenge.realm),
        })?;
        answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
            RegistryError::Registry {
                registry: self.name.clone(),
                detail: format!("the token server {} sent no token", challenge.realm),
            }
        })
    }

    pub(crate) fn error(
        &self,
        image: &ImageRef,
        e: oci_client::errors::OciDistributionError,
    ) -> RegistryError {
        RegistryError::from_client(&self.name, &image.to_string(), e)
    }

    /// `image` resolved to `platform`'s image manifest: a manifest list or
    /// OCI index is followed to the entry for the platform (nested at most
    /// four deep); an `@digest` reference must hash to its digest.
    ///
    /// Errors: not found, unauthorized, a digest that does not match, a
    /// manifest over [`MAX_MANIFEST_BYTES`], an index without the platform
    /// (naming those it offers), a document that is neither.
    pub async fn resolve(&self, image: &ImageRef, platform: &Platform) -> Result<Resolved, RegistryError> {
        let mut current = image.clone();
        let mut index_digest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            let (bytes, digest) = self.get_manifest(&current).await?;
            let document: Document =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
                    reference: image.to_string(),
                    detail: format!("not a manifest: {e}"),
                })?;
            if document.schema_version != 2 {
                return Err(RegistryError::BadManifest {
                    reference: image.to_string(),
                    detail: format!("schemaVersion {} (only 2 is supported)", document.schema_version),
                });
            }
            match document.manifests {
                None => return Ok(Resolved { digest, manifest: bytes, index_digest }),
                Some(entries) => {
                    let chosen = choose(&entries, platform).ok_or_else(|| RegistryError::NoPlatform {
                        reference: image.to_string(),
                        platform: platform.to_string(),
                        offered: offered(&entries),
                    })?;
                    index_digest = Some(digest);
                    current = image.pinned(&chosen.digest);
                }
            }
        }
        Err(RegistryError::BadManifest {
            reference: image.to_string(),
            detail: format!("manifest lists nested more than {MAX_INDEX_DEPTH} deep"),
        })
    }
}

/// A `WWW-Authenticate: Bearer realm=…,service=…` challenge.
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    /// The first Bearer challenge among `headers`' `WWW-Authenticate`
    /// values (RFC 7235 syntax), if any.
    fn of(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        headers.get_all(reqwest::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).find_map(
            |value| {
                http_auth::parser::ChallengeParser::new(value).filter_map(Result::ok).find_map(|challenge| {
                    if !challenge.scheme.eq_ignore_ascii_case("bearer") {
                        return None;
                    }
                    let param = |name: &str| {
                        challenge
                            .params
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.to_unescaped())
                    };
                    Some(Self { realm: param("realm")?, service: param("service") })
                })
            },
        )
    }
}

fn seconds(secs: f64) -> Duration {
    Duration::from_secs_f64(if secs.is_finite() { secs.clamp(0.1, 3600.0) } else { 30.0 })
}

/// What tells an image manifest from a list or index.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: u32,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<EntryPlatform>,
}

#[derive(Deserialize)]
struct EntryPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// The entry for `platform` (the first that matches; an index of one entry
/// without a platform is taken as is). Its digest must be well formed: it
/// goes into a URL.
fn choose<'a>(entries: &'a [IndexEntry], platform: &Platform) -> Option<&'a IndexEntry> {
    let well_formed = |e: &&IndexEntry| {
        e.digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    entries
        .iter()
        .filter(well_formed)
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .or_else(|| match entries {
            [only] if only.platform.is_none() => Some(only).filter(well_formed),
            _ => None,
        })
}

fn offered(entries: &[IndexEntry]) -> String {
    let list: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if list.is_empty() {
        "no platforms".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: char, os: &str, arch: &str, variant: Option<&str>) -> IndexEntry {
        IndexEntry {
            digest: format!("sha256:{}", n.to_string().repeat(64)),
            platform: Some(EntryPlatform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn an_index_resolves_to_the_platforms_entry_or_says_what_it_offers() {
        let entries = vec![
            entry('a', "linux", "arm", Some("v7")),
            entry('b', "linux", "arm64", Some("v8")),
            entry('c', "linux", "amd64", None),
        ];
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(choose(&entries, &amd64).unwrap().digest.starts_with("sha256:c"));
        let arm64 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(choose(&entries, &arm64).unwrap().digest.starts_with("sha256:b"));
        let s390x = Platform::parse("linux/s390x").unwrap();
        assert!(choose(&entries, &s390x).is_none());
        assert_eq!(offered(&entries), "linux/arm/v7, linux/arm64/v8, linux/amd64");
        // A digest that is not sha256:<64 hex> is never followed.
        let bad = vec![IndexEntry {
            digest: "sha256:../../x".into(),
            platform: entry('c', "linux", "amd64", None).platform,
        }];
        assert!(choose(&bad, &amd64).is_none());
    }
}

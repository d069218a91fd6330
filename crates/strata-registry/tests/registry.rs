//! Pulls from a real registry: Debian's `docker-registry` (distribution
//! 2.8) on loopback with TLS (a test CA) and htpasswd (bcrypt) auth; images
//! pushed into it with skopeo from archives the tests write.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_oci::{ArchiveLayout, ImportOptions, LayerCompression, NoProgress};
use strata_registry::{Credentials, ImageRef, Platform, Registry, RegistryError, RegistrySettings, Secret};
use strata_sample::registry::{Auth, TestRegistry, PASSWORD, USER};
use strata_store::{OpenMode, Store};

fn settings(registry: &TestRegistry) -> RegistrySettings {
    RegistrySettings {
        ca_files: BTreeMap::from([(registry.host.clone(), registry.ca_file())]),
        ..Default::default()
    }
}

fn basic(password: &str) -> Credentials {
    Credentials::Basic { username: USER.into(), password: Secret::new(password) }
}

/// The sample image as a docker-save archive in `dir`, pushed as `repo:tag`.
fn pushed_sample(registry: &TestRegistry, dir: &Path, repo_tag: &str) -> PathBuf {
    let archive = dir.join("sample.tar");
    strata_sample::write_sample_image(
        &archive,
        ArchiveLayout::DockerLegacy,
        LayerCompression::Gzip,
        "sample:1",
    )
    .expect("archive");
    registry.push(&archive, repo_tag);
    archive
}

/// Pulls on the blocking pool, as the node does.
async fn pull(
    store: &Arc<Store>,
    registry: &TestRegistry,
    reference: &str,
    credentials: Credentials,
) -> Result<strata_registry::PullReport, RegistryError> {
    let image = ImageRef::parse(reference)?;
    let client = Registry::new(&settings(registry), &image, &credentials)?;
    pull_with(store, client, image).await
}

async fn pull_with(
    store: &Arc<Store>,
    client: Registry,
    image: ImageRef,
) -> Result<strata_registry::PullReport, RegistryError> {
    let (store, runtime) = (store.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        strata_registry::pull(
            &runtime,
            &store,
            &client,
            &image,
            &Platform::host(),
            &ImportOptions::default(),
            &NoProgress,
        )
    })
    .await
    .expect("pull task")
}

fn store(dir: &Path, name: &str) -> Arc<Store> {
    Arc::new(Store::open(&dir.join(name), OpenMode::ReadWrite).expect("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pulls_over_tls_with_basic_auth_and_keeps_its_layer_ids() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let archive = pushed_sample(&registry, scratch.path(), "team/sample:1");
    let pulled = store(scratch.path(), "pulled");
    let reference = format!("{}/team/sample:1", registry.host);
    let report = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect("pull");
    assert_eq!(report.name, reference);
    assert!(report.manifest_digest.starts_with("sha256:"));
    // The same image imported from its archive: the same layers, the same
    // config, so the same image id.
    let imported = store(scratch.path(), "imported");
    let local = strata_oci::import_archive(&imported, &archive, &ImportOptions::default(), &NoProgress)
        .expect("import");
    let (id, record) = pulled.resolve(&reference).expect("pulled image");
    assert_eq!(record.layers.len(), local.images[0].layers.len());
    assert_eq!(id, local.images[0].id, "the same image, by content");
    assert_eq!(report.import.images[0].layers, local.images[0].layers);

    // Pinned by the digest the registry gave: the same image again.
    let by_digest = format!("{}/team/sample@{}", registry.host, report.manifest_digest);
    let again = pull(&pulled, &registry, &by_digest, basic(PASSWORD)).await.expect("pull by digest");
    assert_eq!(again.import.images[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_refused_naming_the_registry_and_store_nothing() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    let pulled = store(scratch.path(), "pulled");
    let reference = format!("{}/sample:1", registry.host);
    for credentials in [basic("wrong password"), Credentials::Anonymous] {
        let err = pull(&pulled, &registry, &reference, credentials).await.expect_err("refused");
        let message = err.to_string();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{message}");
        assert!(message.contains(&registry.host), "names the registry: {message}");
        assert!(!message.contains("wrong password") && !message.contains(PASSWORD), "{message}");
    }
    assert!(pulled.images().expect("images").is_empty());
}

/// The bearer-token flow (distribution's token authentication): the
/// registry challenges, the client asks the token server named in the
/// challenge for a token for the repository's pull scope with its basic
/// credentials, and pulls with it. Wrong credentials are refused by the
/// token server, an anonymous token grants nothing: both a clear 401
/// naming the registry, no secret shown, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_flow_asks_for_the_pull_scope_and_refuses_wrong_or_missing_credentials() {
    let registry = TestRegistry::start_with(Auth::Token);
    let tokens = registry.tokens.as_ref().expect("token server");
    let scratch = tempfile::tempdir().expect("tempdir");
    let archive = pushed_sample(&registry, scratch.path(), "team/sample:1");
    let pushed = tokens.requests().len();
    assert!(pushed > 0, "skopeo pushed with a token");

    let pulled = store(scratch.path(), "pulled");
    let reference = format!("{}/team/sample:1", registry.host);
    let report = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect("pull with a token");
    let asked = &tokens.requests()[pushed..];
    assert!(!asked.is_empty(), "the pull asked the token server");
    for request in asked {
        assert_eq!(request.user.as_deref(), Some(USER));
        assert_eq!(
            request.scopes,
            vec!["repository:team/sample:pull".to_owned()],
            "pull only, this repository"
        );
        assert!(request.granted);
    }
    let imported = store(scratch.path(), "imported");
    let local = strata_oci::import_archive(&imported, &archive, &ImportOptions::default(), &NoProgress)
        .expect("import");
    assert_eq!(report.import.images[0].id, local.images[0].id, "the same image as its archive");

    let refused = store(scratch.path(), "refused");
    for credentials in [basic("wrong password"), Credentials::Anonymous] {
        let err = pull(&refused, &registry, &reference, credentials).await.expect_err("refused");
        let message = err.to_string();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{message}");
        assert!(message.contains(&registry.host), "names the registry: {message}");
        assert!(!message.contains("wrong password") && !message.contains(PASSWORD), "{message}");
        assert!(!message.contains("eyJ"), "no token in the message: {message}");
    }
    let last = tokens.requests();
    assert!(last.iter().any(|r| !r.granted), "the wrong password reached the token server and was refused");
    assert!(refused.images().expect("images").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tag_or_repository_is_not_found_and_a_foreign_ca_is_refused() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    let pulled = store(scratch.path(), "pulled");
    for missing in ["sample:2", "nothing-here:1"] {
        let reference = format!("{}/{missing}", registry.host);
        let err = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect_err("not there");
        assert!(matches!(err, RegistryError::NotFound { .. }), "{missing}: {err}");
    }
    // Without the test CA the registry's certificate is not trusted.
    let image = ImageRef::parse(&format!("{}/sample:1", registry.host)).expect("ref");
    let client = Registry::new(&RegistrySettings::default(), &image, &basic(PASSWORD)).expect("client");
    let err = pull_with(&pulled, client, image.clone()).await.expect_err("untrusted");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let causes = causes.join(": ");
    assert!(causes.to_lowercase().contains("certificate"), "says why: {causes}");
    assert!(pulled.images().expect("images").is_empty());
    // A CA file that holds no certificate is refused before any request.
    let not_pem = scratch.path().join("not.pem");
    std::fs::File::create(&not_pem).and_then(|mut f| f.write_all(b"hello")).expect("write");
    let settings = RegistrySettings {
        ca_files: BTreeMap::from([(registry.host.clone(), not_pem)]),
        ..Default::default()
    };
    assert!(matches!(Registry::new(&settings, &image, &basic(PASSWORD)), Err(RegistryError::Settings(_))));
}

/// The directory of the biggest blob in the registry's storage (a layer
/// of the sample image): `…/blobs/sha256/<2 hex>/<hex>`, holding `data`.
fn biggest_blob(registry: &TestRegistry) -> PathBuf {
    let blobs = registry.storage().join("docker/registry/v2/blobs/sha256");
    let mut biggest: Option<(u64, PathBuf)> = None;
    for prefix in std::fs::read_dir(&blobs).expect("blobs") {
        for blob in std::fs::read_dir(prefix.expect("entry").path()).expect("prefix") {
            let dir = blob.expect("entry").path();
            let len = std::fs::metadata(dir.join("data")).expect("blob").len();
            if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
                biggest = Some((len, dir));
            }
        }
    }
    biggest.expect("a layer blob").1
}

/// A layer blob whose bytes the registry serves changed (its storage went
/// bad, or a man in the middle): the pull fails naming the layer, and the
/// store is exactly as before (no image, no layer, no chunk kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_blob_that_does_not_match_its_digest_leaves_the_store_as_it_was() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    // The biggest blob in the registry's storage is a layer: one byte of
    // it flipped, its length kept.
    let data = biggest_blob(&registry).join("data");
    let mut bytes = std::fs::read(&data).expect("read blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).expect("write blob");

    let pulled = store(scratch.path(), "pulled");
    let before = pulled.stats().expect("stats");
    let reference = format!("{}/sample:1", registry.host);
    let err = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect_err("a bad blob");
    assert!(matches!(err, RegistryError::Import { .. }), "{err}");
    assert!(pulled.images().expect("images").is_empty());
    assert!(pulled.layers().expect("layers").is_empty());
    assert_eq!(format!("{:?}", pulled.stats().expect("stats")), format!("{before:?}"), "nothing kept");
}

/// A registry that accepts connections and never answers.
fn stalled_registry() -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let host = listener.local_addr().expect("addr").to_string();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = asked.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (host, asked)
}

/// An import progress that asks to cancel once `flag` is set.
struct CancelWhen(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl strata_oci::ImportProgress for CancelWhen {
    fn cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A registry that stalls: a request fails after the read timeout, naming
/// the registry; a cancel while waiting on it ends the pull at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_times_out_and_a_cancel_does_not_wait_for_it() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let (host, _) = stalled_registry();
    let image = ImageRef::parse(&format!("{host}/app:1")).expect("ref");
    let settings =
        RegistrySettings { insecure: vec![host.clone()], read_timeout_secs: 1.0, ..Default::default() };
    let client = Registry::new(&settings, &image, &Credentials::Anonymous).expect("client");
    let err = pull_with(&pulled, client, image).await.expect_err("stalled");
    assert!(err.to_string().contains(&host), "names the registry: {err}");
    assert!(!matches!(err, RegistryError::NotFound { .. } | RegistryError::Import { .. }), "{err}");

    // With the default read timeout (30 s), a cancel once the registry was
    // asked ends the pull.
    let (host, asked) = stalled_registry();
    let image = ImageRef::parse(&format!("{host}/app:1")).expect("ref");
    let settings = RegistrySettings { insecure: vec![host.clone()], ..Default::default() };
    let client = Registry::new(&settings, &image, &Credentials::Anonymous).expect("client");
    let (store, runtime) = (pulled.clone(), tokio::runtime::Handle::current());
    let err = tokio::task::spawn_blocking(move || {
        strata_registry::pull(
            &runtime,
            &store,
            &client,
            &image,
            &Platform::host(),
            &ImportOptions::default(),
            &CancelWhen(asked),
        )
    })
    .await
    .expect("task")
    .expect_err("cancelled");
    assert!(matches!(err, RegistryError::Import { source: strata_oci::ImportError::Cancelled, .. }), "{err}");
    assert!(pulled.images().expect("images").is_empty());
}

/// A layer blob the registry no longer has: the pull fails naming the
/// blob, as not found, and the store is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_layer_blob_is_not_found_and_nothing_is_kept() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    let dir = biggest_blob(&registry);
    let hex = dir.file_name().expect("name").to_string_lossy().into_owned();
    std::fs::remove_dir_all(&dir).expect("remove the blob");

    let pulled = store(scratch.path(), "pulled");
    let reference = format!("{}/sample:1", registry.host);
    let err = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect_err("a missing blob");
    let RegistryError::Import { source: strata_oci::ImportError::Blob { digest, source }, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(digest, &format!("sha256:{hex}"));
    let cause = source.downcast_ref::<RegistryError>().expect("the registry's answer");
    assert!(matches!(cause, RegistryError::NotFound { .. }), "{cause}");
    assert!(pulled.images().expect("images").is_empty());
    assert!(pulled.layers().expect("layers").is_empty());
}

/// A TCP proxy to `target` that cuts the first connection to carry `cut`
/// bytes toward the client (a connection dropped midway through a blob);
/// every other connection passes whole. Returns its port and
/// whether it cut.
fn cutting_proxy(target: u16, cut: u64) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let did_cut = Arc::new(AtomicBool::new(false));
    let flag = did_cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = std::net::TcpStream::connect(("127.0.0.1", target)).expect("registry");
            let (mut c_in, mut s_out) =
                (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let flag = flag.clone();
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut buf = [0u8; 16 << 10];
                let mut sent = 0u64;
                while let Ok(read) = std::io::Read::read(&mut server, &mut buf) {
                    if read == 0 {
                        break;
                    }
                    // The first connection to carry more than `cut` bytes
                    // is cut (which one depends on how the client spreads
                    // its requests over connections).
                    if sent + read as u64 > cut && !flag.swap(true, Ordering::SeqCst) {
                        break;
                    }
                    if client.write_all(&buf[..read]).is_err() {
                        break;
                    }
                    sent += read as u64;
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, did_cut)
}

/// A connection dropped in the middle of a layer blob: the download
/// resumes with a Range request (the registry answers 206) from the bytes
/// received, and the image is the same as one pulled without a cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_midway_resumes_with_a_range_request() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    let direct = store(scratch.path(), "direct");
    let whole = pull(&direct, &registry, &format!("{}/sample:1", registry.host), basic(PASSWORD))
        .await
        .expect("pull");
    let port: u16 = registry.host.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let biggest = std::fs::metadata(biggest_blob(&registry).join("data")).expect("blob").len();
    let (proxy, did_cut) = cutting_proxy(port, 64 << 10);
    assert!(biggest > 128 << 10, "a blob the cut lands inside: {biggest}");
    let host = format!("localhost:{proxy}");
    let image = ImageRef::parse(&format!("{host}/sample:1")).expect("ref");
    let settings = RegistrySettings {
        ca_files: BTreeMap::from([(host.clone(), registry.ca_file())]),
        ..Default::default()
    };
    let client = Registry::new(&settings, &image, &basic(PASSWORD)).expect("client");
    let resumed = store(scratch.path(), "resumed");
    let report = pull_with(&resumed, client, image).await.expect("a cut pull resumes");
    assert!(did_cut.load(std::sync::atomic::Ordering::SeqCst), "the proxy cut a connection");
    assert!(registry.log().contains("http.response.status=206"), "a Range request was answered");
    assert_eq!(report.import.images[0].layers, whole.import.images[0].layers);
}

/// A manifest whose bytes do not hash to the digest that names it (the
/// registry's storage went bad, or a man in the middle): refused as a
/// digest mismatch, by digest or by tag, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let registry = TestRegistry::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    pushed_sample(&registry, scratch.path(), "sample:1");
    let probe = store(scratch.path(), "probe");
    let good =
        pull(&probe, &registry, &format!("{}/sample:1", registry.host), basic(PASSWORD)).await.expect("pull");
    let hex = good.manifest_digest.strip_prefix("sha256:").expect("sha256");
    let data = registry.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).expect("the manifest's blob");
    // Still a valid manifest, other bytes.
    bytes.push(b'\n');
    std::fs::write(&data, bytes).expect("write");
    let pulled = store(scratch.path(), "pulled");
    for reference in
        [format!("{}/sample@{}", registry.host, good.manifest_digest), format!("{}/sample:1", registry.host)]
    {
        let err = pull(&pulled, &registry, &reference, basic(PASSWORD)).await.expect_err("tampered");
        match &err {
            RegistryError::DigestMismatch { what, expected, .. } => {
                assert_eq!((what.as_str(), expected.as_str()), ("manifest", good.manifest_digest.as_str()))
            }
            other => panic!("{reference}: {other}"),
        }
    }
    assert!(pulled.images().expect("images").is_empty());
}

/// What a scripted registry answers for one path: status, extra headers,
/// body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// A plain-HTTP registry that answers GETs (and HEADs) from `script` by
/// path, 404 otherwise; `/v2/` is 200 (no auth) unless scripted. Returns
/// its `host:port` and the paths it was asked, in order.
fn scripted_registry(
    script: std::collections::HashMap<String, Answer>,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    scripted_registry_with(|_| script.into_iter().map(|(path, answer)| (path, vec![answer])).collect())
}

/// A scripted registry whose script is made knowing its own `host:port`,
/// answering each path with its answers in turn, the last one again and
/// again.
fn scripted_registry_with(
    script: impl FnOnce(&str) -> std::collections::HashMap<String, Vec<Answer>>,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let host = listener.local_addr().expect("addr").to_string();
    let script = Arc::new(std::sync::Mutex::new(script(&host)));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (log, script) = (log.clone(), script.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    let path = path.split('?').next().unwrap_or("").to_owned();
                    log.lock().expect("log").push(path.clone());
                    let scripted = script.lock().expect("script").get_mut(&path).map(|answers| {
                        if answers.len() > 1 {
                            answers.remove(0)
                        } else {
                            answers[0].clone()
                        }
                    });
                    let (status, headers, body) = match (path.as_str(), scripted) {
                        (_, Some(answer)) => answer,
                        ("/v2/", None) => (200, vec![], b"{}".to_vec()),
                        _ => (
                            404,
                            vec![],
                            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
                        ),
                    };
                    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                    for (k, v) in &headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    if out.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if method != "HEAD" && out.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (host, asked)
}

fn json_answer(media_type: &str, body: Vec<u8>) -> Answer {
    let digest = strata_types::OciDigest::sha256_of(&body).to_string();
    (200, vec![("Content-Type".into(), media_type.into()), ("Docker-Content-Digest".into(), digest)], body)
}

async fn pull_from(
    host: &str,
    reference: &str,
    store: &Arc<Store>,
) -> Result<strata_registry::PullReport, RegistryError> {
    let image = ImageRef::parse(reference)?;
    let settings = RegistrySettings { insecure: vec![host.to_owned()], ..Default::default() };
    let client = Registry::new(&settings, &image, &Credentials::Anonymous)?;
    pull_with(store, client, image).await
}

/// A manifest over the limit (containerd's 4 MiB) is refused, naming the
/// limit; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_is_refused() {
    let mut body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', (strata_registry::MAX_MANIFEST_BYTES + 1) as usize));
    body.extend_from_slice(br#""}}"#);
    let script =
        [("/v2/app/manifests/1".to_owned(), json_answer("application/vnd.oci.image.manifest.v1+json", body))];
    let (host, _) = scripted_registry(script.into_iter().collect());
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let err = pull_from(&host, &format!("{host}/app:1"), &pulled).await.expect_err("too large");
    assert!(
        matches!(&err, RegistryError::TooLarge { what, limit, .. } if what == "manifest" && *limit == strata_registry::MAX_MANIFEST_BYTES),
        "{err}"
    );
    assert!(pulled.images().expect("images").is_empty());
}

/// An index without this platform: the error names the platform asked for
/// and those the index offers; nothing is fetched past the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_the_platform_names_what_it_offers() {
    let entry = |arch: &str, n: char| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", n.to_string().repeat(64)),
            "size": 100,
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("s390x", 'a'), entry("riscv64", 'b')],
    }))
    .expect("json");
    let script =
        [("/v2/app/manifests/1".to_owned(), json_answer("application/vnd.oci.image.index.v1+json", index))];
    let (host, asked) = scripted_registry(script.into_iter().collect());
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let err = pull_from(&host, &format!("{host}/app:1"), &pulled).await.expect_err("no platform");
    let message = err.to_string();
    assert!(matches!(err, RegistryError::NoPlatform { .. }), "{message}");
    assert!(message.contains(&Platform::host().to_string()), "{message}");
    assert!(message.contains("linux/s390x") && message.contains("linux/riscv64"), "{message}");
    assert!(!asked.lock().expect("log").iter().any(|p| p.contains("/blobs/")), "nothing past the index");
    assert!(pulled.images().expect("images").is_empty());
}

/// A layer blob answered with a redirect to another host (as registries
/// backed by S3 or a CDN do): followed, checked as always; the image is
/// the one its archive gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirected_to_another_host_is_followed() {
    let layer = strata_sample::base_layer().expect("layer");
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&layer).expect("gzip");
        e.finish().expect("gzip")
    };
    let blob_digest = strata_types::OciDigest::sha256_of(&gz).to_string();
    let image = one_layer_image(&layer, &gz, "application/vnd.oci.image.layer.v1.tar+gzip");
    let (diff_id, config, config_digest, manifest) =
        (image.diff_id, image.config, image.config_digest, image.manifest);

    // The blob store: another host name, another port.
    let (cdn, cdn_asked) =
        scripted_registry([("/signed/layer".to_owned(), (200, vec![], gz.clone()))].into_iter().collect());
    let cdn_port = cdn.rsplit_once(':').expect("port").1.to_owned();
    let location = format!("http://localhost:{cdn_port}/signed/layer?X-Signature=secret");
    let script = [
        (
            "/v2/app/manifests/1".to_owned(),
            json_answer("application/vnd.oci.image.manifest.v1+json", manifest),
        ),
        (format!("/v2/app/blobs/{config_digest}"), (200, vec![], config.clone())),
        (format!("/v2/app/blobs/{blob_digest}"), (307, vec![("Location".into(), location)], Vec::new())),
    ];
    let (host, _) = scripted_registry(script.into_iter().collect());
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let report = pull_from(&host, &format!("{host}/app:1"), &pulled).await.expect("pull through a redirect");
    assert_eq!(
        cdn_asked.lock().expect("log").as_slice(),
        ["/signed/layer"],
        "the blob came from the other host"
    );
    let layers = &report.import.images[0].layers;
    assert_eq!(layers.len(), 1);
    assert_eq!(pulled.layer(&layers[0]).expect("layer").expect("stored").diff_id, diff_id);
}

/// A token that expires in the middle of a pull: the registry refuses the
/// next blob request with 401 and a bearer challenge; the pull asks the
/// token endpoint again and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_pull_is_asked_for_again() {
    let layer = strata_sample::base_layer().expect("layer");
    let image = one_layer_image(&layer, &layer, "application/vnd.oci.image.layer.v1.tar");
    let (diff_id, config, config_digest, manifest) =
        (image.diff_id, image.config, image.config_digest, image.manifest);
    let challenge = |host: &str| -> Answer {
        (
            401,
            vec![(
                "WWW-Authenticate".to_owned(),
                format!(
                    "Bearer realm=\"http://{host}/token\",service=\"test\",scope=\"repository:app:pull\""
                ),
            )],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}"#.to_vec(),
        )
    };
    let token: Answer = (
        200,
        vec![("Content-Type".to_owned(), "application/json".to_owned())],
        br#"{"token":"t","expires_in":300}"#.to_vec(),
    );
    let (host, asked) = scripted_registry_with(|host| {
        [
            ("/v2/".to_owned(), vec![challenge(host)]),
            ("/token".to_owned(), vec![token]),
            (
                "/v2/app/manifests/1".to_owned(),
                vec![json_answer("application/vnd.oci.image.manifest.v1+json", manifest)],
            ),
            (format!("/v2/app/blobs/{config_digest}"), vec![(200, vec![], config)]),
            // Expired: refused once, then served.
            (format!("/v2/app/blobs/{diff_id}"), vec![challenge(host), (200, vec![], layer)]),
        ]
        .into_iter()
        .collect()
    });
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let report =
        pull_from(&host, &format!("{host}/app:1"), &pulled).await.expect("pulled after asking again");
    assert_eq!(report.import.images[0].layers.len(), 1);
    let asked = asked.lock().expect("log").clone();
    let tokens = asked.iter().filter(|p| *p == "/token").count();
    assert!(tokens >= 2, "a token at the start and another after the 401: {asked:?}");
    let blob = format!("/v2/app/blobs/{diff_id}");
    assert_eq!(asked.iter().filter(|p| **p == blob).count(), 2, "the blob asked twice: {asked:?}");
}

/// A registry that sends a manifest without end (1 TiB announced): the
/// read stops at the limit, with the same error, holding no more than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_is_cut_off_at_the_limit() {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let host = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    if path == "/v2/" {
                        let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                        continue;
                    }
                    let head =
                        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                                Content-Length: 1099511627776\r\n\r\n{\"schemaVersion\":2,\"x\":\"";
                    if out.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let filler = vec![b'x'; 64 << 10];
                    while out.write_all(&filler).is_ok() {}
                    return;
                }
            });
        }
    });
    let scratch = tempfile::tempdir().expect("tempdir");
    let pulled = store(scratch.path(), "pulled");
    let err = pull_from(&host, &format!("{host}/app:1"), &pulled).await.expect_err("cut off");
    assert!(
        matches!(&err, RegistryError::TooLarge { what, size, .. } if what == "manifest" && *size <= strata_registry::MAX_MANIFEST_BYTES + (1 << 20)),
        "{err}"
    );
    assert!(pulled.images().expect("images").is_empty());
}

/// An image of one layer (the tar `layer`, sent as `blob` of `blob_type`)
/// as a registry serves it.
struct OneLayerImage {
    diff_id: String,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
}

fn one_layer_image(layer: &[u8], blob: &[u8], blob_type: &str) -> OneLayerImage {
    let diff_id = strata_types::OciDigest::sha256_of(layer).to_string();
    let mut config = strata_sample::sample_config(&["true"]);
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": [diff_id] });
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = strata_types::OciDigest::sha256_of(&config).to_string();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": blob_type, "digest": strata_types::OciDigest::sha256_of(blob).to_string(), "size": blob.len() }],
    }))
    .expect("json");
    OneLayerImage { diff_id, config, config_digest, manifest }
}

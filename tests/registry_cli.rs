//! `strata pull` from a real registry (Debian's docker-registry on
//! loopback, TLS with a test CA, htpasswd auth): the password read from
//! stdin, the CA from the settings, errors that name the registry and never
//! the password; run by the CLI on the store, or by a node on its data dir.

use std::io::Write;
use std::process::Stdio;

use strata_sample::registry::{TestRegistry, PASSWORD, USER};

use crate::common::node::{alive_peers, certs, wait_for, Node};
use crate::common::{busybox_image, trust_registry, Strata};

/// Settings in the data dir (read by the CLI and by a node there): the
/// registry's CA.
fn trust(s: &Strata, registry: &TestRegistry) {
    std::fs::create_dir_all(s.data_dir()).expect("data dir");
    let config = format!("[registry.ca_files]\n{:?} = {:?}\n", registry.host, registry.ca_file());
    std::fs::write(s.data_dir().join("strata.toml"), config).expect("settings");
}

/// `strata --json pull REFERENCE --username USER --password-stdin`, fed `password`.
fn pull(s: &Strata, reference: &str, password: &str) -> std::process::Output {
    let mut child = s
        .command()
        .args(["--json", "pull", reference, "--username", USER, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata pull");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("password");
    child.wait_with_output().expect("strata pull ends")
}

#[test]
fn an_image_pulled_from_an_authenticated_registry_runs() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    registry.push(&busybox_image(&s), "tools/busybox:1");
    trust(&s, &registry);
    let reference = format!("{}/tools/busybox:1", registry.host);
    let out = pull(&s, &reference, PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(pulled["name"], reference.as_str());
    assert!(pulled["manifest_digest"].as_str().expect("digest").starts_with("sha256:"));
    assert_eq!(pulled["imported"]["images"][0]["layers"].as_array().expect("layers").len(), 2);
    assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
}

/// `strata run REF` of an image the store lacks pulls it first, as `docker
/// run` does, with the settings' credentials; a reference no registry
/// serves fails naming both the store and the registry.
#[test]
fn run_pulls_an_image_the_store_lacks() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    registry.push(&busybox_image(&s), "busybox:1");
    trust_registry(&s, &registry);
    let reference = format!("{}/busybox:1", registry.host);
    assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
    assert_eq!(s.json(&["images"]).as_array().expect("images").len(), 2, "the tag and the repo digest");
    // As `docker rmi`: the last tag takes the repo digest name with it.
    s.ok(&["rm", &reference]);
    assert_eq!(s.json(&["images"]), serde_json::json!([]));
    assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
    let missing = format!("{}/busybox:nope", registry.host);
    let stderr = s.fails(&["run", &missing]);
    assert!(stderr.contains("no image") && stderr.contains("not found"), "{stderr}");
}

#[test]
fn a_wrong_password_is_refused_naming_the_registry_not_the_password() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    registry.push(&busybox_image(&s), "busybox:1");
    trust(&s, &registry);
    let out = pull(&s, &format!("{}/busybox:1", registry.host), "not the password");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&registry.host) && stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains("not the password"), "{stderr}");
    // Nothing was stored: no store was even made.
    assert!(s.fails(&["images"]).contains("no store in"));
    // Without a CA in the settings the registry is not trusted.
    std::fs::remove_file(s.data_dir().join("strata.toml")).expect("settings");
    let out = pull(&s, &format!("{}/busybox:1", registry.host), PASSWORD);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&registry.host) && stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// Credentials from docker's config, as the docker CLI keeps them: an
/// `auths` entry (base64 of USER:PASSWORD), or a credential helper
/// (`docker-credential-NAME` on PATH, named by `credHelpers`).
#[test]
fn credentials_come_from_dockers_config_and_its_credential_helpers() {
    let s = Strata::new();
    let docker = s.path("docker");
    std::fs::create_dir_all(&docker).expect("docker config dir");
    // The helpers are written before anything else runs: a script written
    // just before it is run can meet "text file busy" (another thread's
    // fork holding it open for writing until that child execs).
    let helper = |name: &str, script: String| {
        let path = docker.join(format!("docker-credential-{name}"));
        std::fs::write(&path, script).expect("helper");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    };
    // A helper prints the secret for the server asked on stdin.
    helper(
        "strata-test",
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n"
        ),
    );
    // It reads its input first (as real helpers do): one that exits before
    // may not be told the server at all (a broken pipe), a different error.
    helper("strata-fails", "#!/bin/sh\nread server\necho leaked-secret >&2\nexit 1\n".into());
    let registry = TestRegistry::start();
    registry.push(&busybox_image(&s), "busybox:1");
    trust(&s, &registry);
    let pull_with_config = |config: String, reference: &str| {
        std::fs::write(docker.join("config.json"), config).expect("config.json");
        let path = format!("{}:{}", docker.display(), std::env::var("PATH").unwrap_or_default());
        s.command()
            .args(["--json", "pull", reference])
            .env("DOCKER_CONFIG", &docker)
            .env("PATH", path)
            .output()
    };
    let reference = format!("{}/busybox:1", registry.host);
    // No config file: anonymous, refused by this registry.
    let out = s.command().args(["pull", &reference]).env("DOCKER_CONFIG", &docker).output().expect("pull");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("refused the credentials"), "{stderr}");
    // `auths`.
    let auth = base64(format!("{USER}:{PASSWORD}").as_bytes());
    let config = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host);
    let out = pull_with_config(config, &reference).expect("strata pull");
    assert!(out.status.success(), "auths: {}", String::from_utf8_lossy(&out.stderr));
    // `credHelpers`.
    let config = format!(r#"{{"credHelpers": {{"{}": "strata-test"}}}}"#, registry.host);
    let out = pull_with_config(config, &reference).expect("strata pull");
    assert!(out.status.success(), "credHelpers: {}", String::from_utf8_lossy(&out.stderr));
    // A helper that fails: an error naming it, nothing it printed.
    let config = format!(r#"{{"credHelpers": {{"{}": "strata-fails"}}}}"#, registry.host);
    let out = pull_with_config(config, &reference).expect("strata pull");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("docker-credential-strata-fails"), "{stderr}");
    assert!(!stderr.contains("leaked-secret"), "{stderr}");
}

/// Standard base64, as docker's config writes `auth`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn with_a_node_running_the_node_pulls_into_its_store() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    registry.push(&busybox_image(&s), "busybox:1");
    trust(&s, &registry);
    let certs = certs(&s, &["node-a"]);
    let _node = Node::start(&s, "node-a", &certs, &[], &[]);
    let reference = format!("{}/busybox:1", registry.host);
    let out = pull(&s, &reference, PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images = s.json(&["images"]);
    assert_eq!(images[0]["name"], reference.as_str(), "{images}");
    assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
}

/// The cluster as the registry's cache: four nodes asked for one image at
/// the same moment read each layer blob from the registry once (counted in
/// the registry's access log): one node pulls it, the others wait for it
/// and take only its metadata from the cluster, then run it with chunks
/// fetched from their peers. A second tag of the same manifest, run on a
/// node that never pulled it, costs the registry no blob either.
#[test]
fn nodes_asked_at_once_read_each_blob_from_the_registry_once() {
    const NODES: usize = 4;
    let registry = TestRegistry::start();
    let dirs: Vec<Strata> = (0..NODES).map(|_| Strata::new()).collect();
    let archive = busybox_image(&dirs[0]);
    registry.push(&archive, "tools/busybox:1");
    let names: Vec<String> = (0..NODES).map(|i| format!("node-{i}")).collect();
    let certs = certs(&dirs[0], &names.iter().map(String::as_str).collect::<Vec<_>>());
    // Each node finds the CA and the credentials in its settings.
    for s in &dirs {
        std::fs::create_dir_all(s.data_dir()).expect("data dir");
        let config = format!(
            "[registry.ca_files]\n{host:?} = {ca:?}\n[registry.auth.{host:?}]\nusername = {USER:?}\npassword = {PASSWORD:?}\n",
            host = registry.host,
            ca = registry.ca_file(),
        );
        std::fs::write(s.data_dir().join("strata.toml"), config).expect("settings");
    }
    let first = Node::start(&dirs[0], &names[0], &certs, &[], &[]);
    let mut nodes = vec![first];
    for i in 1..NODES {
        let seed = nodes[0].addr.clone();
        nodes.push(Node::start(&dirs[i], &names[i], &certs, &[&seed], &[]));
    }
    for s in &dirs {
        wait_for("every node to see every other", || alive_peers(s).len() == NODES - 1);
    }
    let reference = format!("{}/tools/busybox:1", registry.host);
    let outcomes: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let pulls: Vec<_> = dirs.iter().map(|s| scope.spawn(|| s.json(&["pull", &reference]))).collect();
        pulls.into_iter().map(|p| p.join().expect("pull thread")).collect()
    });
    let sources: Vec<&str> = outcomes.iter().map(|o| o["source"].as_str().expect("source")).collect();
    assert_eq!(sources.iter().filter(|s| **s == "registry").count(), 1, "{outcomes:#?}");
    assert_eq!(sources.iter().filter(|s| **s == "cluster").count(), NODES - 1, "{outcomes:#?}");
    let digest = outcomes[0]["manifest_digest"].as_str().expect("digest");
    assert!(outcomes.iter().all(|o| o["manifest_digest"] == digest), "{outcomes:#?}");
    let image_ids: std::collections::BTreeSet<String> =
        outcomes.iter().map(|o| o["imported"]["images"][0]["id"].to_string()).collect();
    assert_eq!(image_ids.len(), 1, "one image everywhere: {outcomes:#?}");

    let downloads = registry.blob_downloads();
    let count = |log: &[(String, u64)], digest: &str| log.iter().filter(|(d, _)| d == digest).count();
    // The config and two layer blobs, each once.
    let blobs: std::collections::BTreeSet<&String> = downloads.iter().map(|(d, _)| d).collect();
    assert_eq!(blobs.len(), 3, "{downloads:?}");
    for blob in &blobs {
        assert_eq!(count(&downloads, blob), 1, "{blob} read more than once: {downloads:?}");
    }
    for s in &dirs {
        assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
    }

    // Another tag of the same manifest: resolved (a manifest request), then
    // found in the store by its repo digest; no blob comes again.
    registry.push(&archive, "tools/busybox:2");
    let before = registry.blob_downloads().len();
    let second = format!("{}/tools/busybox:2", registry.host);
    assert_eq!(dirs[NODES - 1].ok(&["run", &second]), "strata-busybox\n");
    assert_eq!(registry.blob_downloads().len(), before, "{:?}", registry.blob_downloads());

    // Pinned by digest on a node that no longer has it: the cluster's copy
    // proves itself with the manifest it keeps (its sha256 is the digest),
    // so not even a manifest request reaches the registry.
    let last = &dirs[NODES - 1];
    last.ok(&["rm", &reference, &second]);
    let manifests = |registry: &TestRegistry| {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("response completed") && l.contains("/manifests/"))
            .count()
    };
    let asked = manifests(&registry);
    let pinned = format!("{}/tools/busybox@{digest}", registry.host);
    let by_digest = last.json(&["pull", &pinned]);
    assert_eq!(by_digest["source"], "cluster", "{by_digest:#}");
    assert_eq!(by_digest["manifest_digest"], digest);
    assert_eq!(manifests(&registry), asked, "no manifest request for a digest the cluster holds");
    assert_eq!(last.ok(&["run", &pinned]), "strata-busybox\n");
    drop(nodes);
}

/// `strata push`: an image pulled from the registry goes back as the blobs
/// and manifest it came as (a HEAD per blob; a mount into another
/// repository); an image from an archive goes up recompressed, once: the
/// second push sends nothing. What was pushed pulls back as the same
/// image, and skopeo and umoci see the same files.
#[test]
fn push_sends_each_blob_once_and_keeps_the_image() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    let archive = busybox_image(&s);
    registry.push(&archive, "tools/busybox:1");
    trust_registry(&s, &registry);
    let host = &registry.host;
    let pulled = s.json(&["pull", &format!("{host}/tools/busybox:1")]);
    let upstream = pulled["manifest_digest"].as_str().expect("digest").to_owned();

    // Pulled, pushed back: nothing sent, the manifest is upstream's.
    let before = registry.blob_uploads();
    let same_repo =
        s.json(&["push", &format!("{host}/tools/busybox:1"), &format!("{host}/tools/busybox:again")]);
    assert_eq!(same_repo["manifest_digest"], upstream.as_str());
    assert_eq!(same_repo["upstream_manifest"], true);
    assert_eq!(same_repo["bytes_uploaded"], 0);
    assert!(same_repo["layers"].as_array().expect("layers").iter().all(|l| l["outcome"] == "existed"));
    // Into another repository: mounted, not sent.
    let mirror = s.json(&["push", &format!("{host}/tools/busybox:1"), &format!("{host}/mirror/busybox:1")]);
    assert_eq!(mirror["manifest_digest"], upstream.as_str());
    assert!(
        mirror["layers"].as_array().expect("layers").iter().all(|l| l["outcome"] == "mounted"),
        "{mirror}"
    );
    assert_eq!(registry.blob_uploads(), before, "no blob uploaded");

    // From an archive: recompressed and sent once; the config (the image
    // ID) as imported.
    // (Another store: in this one the archive's image is the pulled one,
    // which keeps its manifest and repository names.)
    let s = Strata::new();
    trust_registry(&s, &registry);
    s.ok(&["import", archive.to_str().expect("utf-8"), "--name", "local/busybox:1"]);
    let local = s.json(&["inspect", "local/busybox:1"]);
    let fresh = format!("{host}/fresh/busybox:1");
    let first = s.json(&["push", "local/busybox:1", &fresh]);
    assert!(
        first["layers"].as_array().expect("layers").iter().all(|l| l["outcome"] == "uploaded"),
        "{first}"
    );
    assert_eq!(first["upstream_manifest"], false);
    let uploads = registry.blob_uploads();
    assert_eq!(uploads, before + 3, "two layers and the config");
    let second = s.json(&["push", "local/busybox:1", &fresh]);
    assert_eq!(second["manifest_digest"], first["manifest_digest"], "a push is deterministic");
    assert_eq!(second["bytes_uploaded"], 0);
    assert_eq!(registry.blob_uploads(), uploads, "the second push sends nothing");
    for (layer, pushed) in
        local["layers"].as_array().expect("layers").iter().zip(first["layers"].as_array().expect("layers"))
    {
        assert_eq!(layer["diff_id"], pushed["diff_id"], "each layer tar as imported");
    }

    // Pulled back elsewhere: the same image and layers.
    let other = Strata::new();
    trust_registry(&other, &registry);
    other.json(&["pull", &fresh]);
    let back = other.json(&["inspect", &fresh]);
    assert_eq!(back["id"], local["id"], "the same image");
    let ids = |v: &serde_json::Value| {
        v["layers"].as_array().expect("layers").iter().map(|l| l["id"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&back), ids(&local));

    // Other tools see the files.
    let oci = s.path("skopeo-oci");
    let creds = format!("{USER}:{PASSWORD}");
    let certs = registry.ca_file().parent().expect("certs dir").to_owned();
    let copy = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-creds", &creds, "--src-cert-dir", certs.to_str().expect("utf-8")])
        .arg(format!("docker://{fresh}"))
        .arg(format!("oci:{}:busybox", oci.display()))
        .output()
        .expect("skopeo");
    assert!(copy.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&copy.stderr));
    let bundle = s.path("bundle");
    let unpack = std::process::Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:busybox", oci.display()), bundle.to_str().expect("utf-8")])
        .output()
        .expect("umoci");
    assert!(unpack.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&unpack.stderr));
    assert_eq!(std::fs::read(bundle.join("rootfs/etc/strata-release")).expect("file"), b"strata-busybox\n");
    assert!(std::fs::metadata(bundle.join("rootfs/bin/busybox")).expect("busybox").len() > 1_900_000);

    // Credentials that may not push are refused, naming the registry.
    let stranger = Strata::new();
    trust(&stranger, &registry);
    stranger.ok(&["import", archive.to_str().expect("utf-8"), "--name", "x/busybox:1"]);
    let err = stranger.fails(&["push", "x/busybox:1", &format!("{host}/denied/busybox:1")]);
    assert!(err.contains(host.as_str()), "{err}");
}

/// Push through the bearer-token flow: the token asked for covers pull and
/// push of the target repository; a mount from another repository asks for
/// one token covering both repositories (as docker does), so every layer is
/// mounted and none uploaded; pulled back, the same image.
#[test]
fn push_through_a_token_registry_asks_for_push_scope_and_arrives_whole() {
    let registry = TestRegistry::start_with(strata_sample::registry::Auth::Token);
    let tokens = registry.tokens.as_ref().expect("token server");
    let s = Strata::new();
    let archive = busybox_image(&s);
    registry.push(&archive, "team/busybox:1");
    trust_registry(&s, &registry);
    let host = &registry.host;
    s.json(&["pull", &format!("{host}/team/busybox:1")]);
    let before = tokens.requests().len();
    let uploads = registry.blob_uploads();
    let target = format!("{host}/copies/busybox:1");
    let pushed = s.json(&["push", &format!("{host}/team/busybox:1"), &target]);
    let asked = &tokens.requests()[before..];
    assert!(
        asked
            .iter()
            .any(|r| r.granted && r.scopes.iter().any(|s| s == "repository:copies/busybox:pull,push")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|r| r.granted
            && r.scopes.iter().any(|s| s == "repository:copies/busybox:pull,push")
            && r.scopes.iter().any(|s| s == "repository:team/busybox:pull")),
        "a token for the mount's two repositories: {asked:?}"
    );
    assert!(asked.iter().all(|r| r.user.as_deref() == Some(USER)));
    let layers = pushed["layers"].as_array().expect("layers");
    assert!(!layers.is_empty() && layers.iter().all(|l| l["outcome"] == "mounted"), "{pushed}");
    assert_eq!(registry.blob_uploads(), uploads, "no layer and no config uploaded: {pushed}");
    let back = Strata::new();
    trust_registry(&back, &registry);
    back.json(&["pull", &target]);
    assert_eq!(
        back.json(&["inspect", &target])["id"],
        s.json(&["inspect", &format!("{host}/team/busybox:1")])["id"]
    );
}

/// A pull reads no blob of a layer the store already holds with the very
/// tar the manifest names (docker's "Already exists"): here every layer,
/// as the image was imported from its archive first; only the config is
/// downloaded, and the image is the archive's.
#[test]
fn a_layer_the_store_holds_is_not_downloaded_again() {
    let registry = TestRegistry::start();
    let s = Strata::new();
    let archive = busybox_image(&s);
    registry.push(&archive, "tools/busybox:1");
    trust_registry(&s, &registry);
    s.ok(&["import", archive.to_str().expect("utf-8"), "--name", "local/busybox:1"]);
    let before = registry.blob_downloads().len();
    let reference = format!("{}/tools/busybox:1", registry.host);
    let pulled = s.json(&["pull", &reference]);
    let downloads = registry.blob_downloads()[before..].to_vec();
    assert_eq!(downloads.len(), 1, "the config only: {downloads:?}");
    assert_eq!(pulled["imported"]["layers_added"], 0);
    assert_eq!(s.json(&["inspect", &reference])["id"], s.json(&["inspect", "local/busybox:1"])["id"]);
    assert_eq!(s.ok(&["run", &reference]), "strata-busybox\n");
}

/// With no registry answering (here: a `.invalid` host, which never
/// resolves, RFC 6761), a pull through a node takes the image some node
/// offers under that name (imported there), metadata only, and `--all`
/// makes it whole; a name no node offers keeps the registry's error.
#[test]
fn with_no_registry_a_pull_takes_the_image_the_cluster_offers_by_name() {
    let (a, b) = (Strata::new(), Strata::new());
    let archive = busybox_image(&a);
    let name = "registry.invalid/tools/busybox:1";
    a.ok(&["import", archive.to_str().expect("utf-8 path"), "--name", name]);
    let certs = certs(&a, &["node-a", "node-b"]);
    let node_a = Node::start(&a, "node-a", &certs, &[], &[]);
    let _node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &[]);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    // Until A's announcement reaches its directory node, no node offers it.
    let mut pulled = serde_json::Value::Null;
    wait_for("the cluster to offer A's image", || {
        let out = b.run(&["--json", "pull", name, "--all"]);
        if out.status.success() {
            pulled = serde_json::from_slice(&out.stdout).expect("JSON");
        }
        out.status.success()
    });
    assert_eq!(pulled["source"], "cluster", "{pulled}");
    assert_eq!(pulled["from_node"], "node-a", "{pulled}");
    let status = b.json(&["status"]);
    let image = &status["images"][0];
    assert_eq!(image["local_chunks"], image["chunks"], "whole once pull --all returns: {status}");
    assert!(image["chunks"].as_u64() > Some(0), "{status}");
    // Again: up to date, from the store.
    assert!(b.ok(&["pull", name]).contains("is up to date"));
    // Another platform's is not what any node offers: the registry's error.
    let err = b.fails(&["pull", name, "--platform", "linux/riscv64"]);
    assert!(err.contains("no answer"), "{err}");
    // Nor is a digest, which only a registry (or a copy keeping that
    // manifest) can vouch for.
    let pinned = format!("registry.invalid/tools/busybox@sha256:{}", "0".repeat(64));
    assert!(b.fails(&["pull", &pinned]).contains("no answer"));
    // A name no node offers: the registry's own error.
    let err = b.fails(&["pull", "registry.invalid/tools/other:1"]);
    assert!(err.contains("registry.invalid") && err.contains("no answer"), "{err}");
    // A gone: B runs it alone.
    drop(node_a);
    assert_eq!(b.ok(&["run", name]), "strata-busybox\n");
}

/// `strata pull --all` through a node takes an image the cluster holds
/// and returns once every chunk is here (no registry blob); `strata
/// status` says so. `--background-fetch none` is kept for its image and
/// shown as the pull's.
#[test]
fn pull_all_makes_the_image_whole_here_and_status_says_so() {
    let registry = TestRegistry::start();
    let (a, b, c) = (Strata::new(), Strata::new(), Strata::new());
    let archive = busybox_image(&a);
    registry.push(&archive, "tools/busybox:1");
    let certs = certs(&a, &["node-a", "node-b", "node-c"]);
    for s in [&a, &b, &c] {
        std::fs::create_dir_all(s.data_dir()).expect("data dir");
        let config = format!(
            "[registry.ca_files]\n{host:?} = {ca:?}\n[registry.auth.{host:?}]\nusername = {USER:?}\npassword = {PASSWORD:?}\n",
            host = registry.host,
            ca = registry.ca_file(),
        );
        std::fs::write(s.data_dir().join("strata.toml"), config).expect("settings");
    }
    let node_a = Node::start(&a, "node-a", &certs, &[], &[]);
    let _node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &[]);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    let reference = format!("{}/tools/busybox:1", registry.host);
    assert_eq!(a.json(&["pull", &reference])["source"], "registry");
    let blobs = registry.blob_downloads().len();

    let pulled = b.json(&["pull", &reference, "--all", "--background-fetch", "none"]);
    assert_eq!(pulled["source"], "cluster", "{pulled}");
    assert_eq!(registry.blob_downloads().len(), blobs, "no blob from the registry");
    let status = b.json(&["status"]);
    let image = &status["images"][0];
    assert_eq!(image["local_chunks"], image["chunks"], "whole once pull --all returns: {status}");
    assert!(image["chunks"].as_u64() > Some(0));
    assert_eq!(image["background_mode"], "none");
    assert_eq!(image["mode_set_by_pull"], true);
    assert_eq!(image["pinned"], false, "a pulled image may be evicted");
    assert_eq!(status["node"], true);
    // People's form: one line per image, its share here.
    let table = b.ok(&["status"]);
    assert!(table.contains("100%") && table.contains("none (pull)") && table.contains("whole"), "{table}");
    // On a terminal (a pty, through script(1)), pull --all draws its
    // progress: the image's line, verified once whole.
    let _node_c = Node::start(&c, "node-c", &certs, &[&node_a.addr], &[]);
    wait_for("C to see A", || alive_peers(&c).iter().any(|p| p == "node-a"));
    let line = format!(
        "{exe} --data-dir {dir} pull {reference} --all",
        exe = env!("CARGO_BIN_EXE_strata"),
        dir = c.data_dir().display(),
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env_remove("STRATA_CONFIG")
        .env("STRATA_LOG", "warn")
        .output()
        .expect("script(1)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pull --all on a pty failed: {transcript}");
    assert!(
        transcript.contains("verified") && transcript.contains("total"),
        "no progress drawn: {transcript:?}"
    );
    let whole = &c.json(&["status"])["images"][0];
    assert_eq!(whole["local_chunks"], whole["chunks"], "whole after pull --all on a pty: {whole}");
    // A gone: B runs it alone.
    drop(node_a);
    assert_eq!(b.ok(&["run", &reference]), "strata-busybox\n");
}

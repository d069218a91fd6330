//! `strata pull` from a real registry (Debian's docker-registry on
//! loopback, TLS with a test CA, htpasswd auth): the password read from
//! stdin, the CA from the settings, errors that name the registry and never
//! the password; run by the CLI on the store, or by a node on its data dir.

use std::io::Write;
use std::process::Stdio;

use strata_sample::registry::{TestRegistry, PASSWORD, USER};

use crate::common::node::{certs, Node};
use crate::common::{busybox_image, Strata};

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
    assert_eq!(s.json(&["images"]), serde_json::json!([]));
    // Without a CA in the settings the registry is not trusted.
    std::fs::remove_file(s.data_dir().join("strata.toml")).expect("settings");
    let out = pull(&s, &format!("{}/busybox:1", registry.host), PASSWORD);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&registry.host), "{stderr}");
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

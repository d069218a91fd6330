//! deploy/kubernetes/strata.yaml, checked offline: every resource against
//! the Kubernetes API schemas (kubernetes-validate, strict: unknown fields
//! are errors; deploy/setup installs it from PyPI into a virtual environment
//! that deploy/test puts first on PATH), and the settings its
//! ConfigMap carries read by strata itself.

use std::path::PathBuf;
use std::process::Command;

use crate::common::Strata;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/strata.yaml")
}

fn validate(file: &std::path::Path) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0", "--quiet"])
        .arg(file)
        .output()
        .expect("kubernetes-validate on PATH (deploy/setup test installs it in /var/cache/strata-tools/venv; deploy/test puts it on PATH)")
}

#[test]
fn the_manifest_validates_against_the_kubernetes_schemas() {
    let out = validate(&manifest());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does refuse what is wrong: a misspelt field.
    let s = Strata::new();
    let bad = s.path("bad.yaml");
    let text = std::fs::read_to_string(manifest()).expect("manifest");
    std::fs::write(&bad, text.replace("mountPropagation:", "mountPropagations:")).expect("write");
    assert!(!validate(&bad).status.success(), "a misspelt field passed");
}

#[test]
fn the_configmap_settings_are_what_strata_reads() {
    let s = Strata::new();
    let config = s.path("strata.toml");
    let extract = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'ConfigMap']\n\
             open(sys.argv[2], 'w').write(docs[0]['data']['strata.toml'])",
        )
        .arg(manifest())
        .arg(&config)
        .output()
        .expect("python3");
    assert!(extract.status.success(), "{}", String::from_utf8_lossy(&extract.stderr));
    let shown = s.json(&["--config", config.to_str().expect("utf-8"), "config", "show"]);
    let node = &shown["settings"]["node"];
    assert_eq!(node["cert_name"], "node");
    assert_eq!(node["cert_dir"], "/etc/strata/certs");
    assert_eq!(node["seeds"][0], "strata-peers.strata.svc.cluster.local:7420");
    assert_eq!(node["metrics_listen"], "0.0.0.0:9420");
    assert_eq!(node["log_format"], "json");
    // The socket the machine's containerd dials (deploy/containerd/strata.toml).
    assert_eq!(shown["settings"]["snapshotter"]["socket"], "/run/strata/snapshotter.sock");
}

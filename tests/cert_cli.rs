//! `strata cert`: a cluster CA and node certificates a node can load.

use std::os::unix::fs::PermissionsExt;

use crate::common::Strata;

#[test]
fn init_ca_then_issue_gives_loadable_node_certificates_with_private_keys() {
    let s = Strata::new();
    let dir = s.path("certs");
    let dir_arg = dir.to_str().expect("utf-8");
    s.ok(&["cert", "init-ca", "--dir", dir_arg, "--cluster", "test"]);
    let issued = s.json(&["cert", "issue", "--node", "node-1", "--dir", dir_arg]);
    assert_eq!(issued["certificate"], dir.join("node-1.pem").to_str().expect("utf-8"));
    for (file, mode) in
        [("ca.pem", 0o644), ("ca-key.pem", 0o600), ("node-1.pem", 0o644), ("node-1-key.pem", 0o600)]
    {
        let meta = std::fs::metadata(dir.join(file)).expect(file);
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let node = strata_tls::CertPair { cert_pem: read("node-1.pem"), key_pem: read("node-1-key.pem") };
    let identity = strata_tls::Identity::from_pem(&read("ca.pem"), &node).expect("loads");
    identity.server_config().expect("server config");
    identity.client_config().expect("client config");

    let err = s.fails(&["cert", "init-ca", "--dir", dir_arg]);
    assert!(err.contains("already holds a CA"), "{err}");
    let err = s.fails(&["cert", "issue", "--node", "no spaces", "--dir", dir_arg]);
    assert!(err.contains("node name"), "{err}");
    let err =
        s.fails(&["cert", "issue", "--node", "n2", "--dir", s.path("nowhere").to_str().expect("utf-8")]);
    assert!(err.contains("init-ca"), "{err}");
}

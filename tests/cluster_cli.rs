//! Mounts from a fixed list of peers, without a node of one's own: node A
//! serves its store over QUIC with mutual TLS; B, with an empty store,
//! mounts A's image lazily and reads it; when A dies, B's reads of chunks it
//! never fetched fail with EIO, not a hang.

use crate::common::node::Node;
use crate::common::{sample_archive, Strata};

fn serve(strata: &Strata, node: &str, certs: &str) -> (Node, String) {
    let node = Node::start(strata, node, certs, &[], &[]);
    let addr = node.addr.clone();
    (node, addr)
}

#[test]
fn with_two_holders_a_read_survives_the_first_one_dying() {
    let (a, b, c) = (Strata::new(), Strata::new(), Strata::new());
    let archive = sample_archive(a.dir.path(), "sample.tar", "sample:1");
    a.import(&archive);
    c.import(&archive);
    let certs = a.path("certs");
    let certs_arg = certs.to_str().expect("utf-8");
    a.ok(&["cert", "init-ca", "--dir", certs_arg]);
    for node in ["node-a", "node-b", "node-c"] {
        a.ok(&["cert", "issue", "--node", node, "--dir", certs_arg]);
    }
    let (mut node_a, addr_a) = serve(&a, "node-a", certs_arg);
    let (mut node_c, addr_c) = serve(&c, "node-c", certs_arg);

    let mountpoint = b.path("mnt");
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    let mp = mountpoint.to_str().expect("utf-8");
    b.ok(&[
        "mount",
        "sample:1",
        mp,
        "--read-only",
        "--peer",
        &addr_a,
        "--peer",
        &addr_c,
        "--node",
        "node-b",
        "--cert-dir",
        certs_arg,
        "--fetch-deadline",
        "4",
    ]);
    assert_eq!(std::fs::read(mountpoint.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");

    // A dies; C holds the same chunks, so B's next reads cost a retry, not an error.
    node_a.kill();
    let motd = std::fs::read(mountpoint.join("etc/motd")).expect("read from the other holder");
    assert!(motd.ends_with(b"one more line\n"));
    assert_eq!(
        std::fs::read(mountpoint.join("bin/app")).expect("read"),
        strata_sample::random_bytes(1, 300_000)
    );

    // With C gone too, what B never read fails with EIO.
    node_c.kill();
    let err = std::fs::read(mountpoint.join("usr/share/doc/README")).expect_err("no holder left");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    b.ok(&["umount", mp]);
}

#[test]
fn a_node_mounts_an_image_only_a_peer_holds_and_fails_cleanly_when_the_peer_dies() {
    let (a, b) = (Strata::new(), Strata::new());
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    let certs = a.path("certs");
    let certs_arg = certs.to_str().expect("utf-8");
    a.ok(&["cert", "init-ca", "--dir", certs_arg]);
    for node in ["node-a", "node-b"] {
        a.ok(&["cert", "issue", "--node", node, "--dir", certs_arg]);
    }

    let (mut node_a, addr) = serve(&a, "node-a", certs_arg);

    let mountpoint = b.path("mnt");
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    let mp = mountpoint.to_str().expect("utf-8");
    let args = [
        "mount",
        "sample:1",
        mp,
        "--read-only",
        "--peer",
        &addr,
        "--node",
        "node-b",
        "--cert-dir",
        certs_arg,
        "--fetch-deadline",
        "1",
    ];
    b.ok(&args);
    assert!(!b.data_dir().join("store").exists(), "B keeps no store: what it reads stays in the mount");
    assert_eq!(std::fs::read(mountpoint.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    assert_eq!(
        std::fs::read(mountpoint.join("bin/app")).expect("read"),
        strata_sample::random_bytes(1, 300_000)
    );

    // A dies; what B never read cannot come from anywhere: EIO, within the deadline.
    node_a.kill();
    let err = std::fs::read(mountpoint.join("etc/motd")).expect_err("no holder left");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Metadata needs no peer.
    assert!(mountpoint.join("usr/share/doc/README").exists());
    b.ok(&["umount", mp]);
}

//! The disk cap (`[cache]`): a node whose store is capped at 100 MiB runs
//! three 80 MiB images a peer holds, one after another. Its store stays
//! under the cap (the images it no longer uses are evicted, least recently
//! used first), each image still reads whole and true (evicted chunks are
//! fetched again), and an image imported on the node itself is never
//! evicted.

use crate::common::node::{alive_peers, certs, wait_for, Node};
use crate::common::Strata;

const MIB: usize = 1 << 20;
const CAP: u64 = 100 << 20;

/// Image `i`: 20 files of 4 MiB of incompressible bytes (80 MiB stored).
fn big_image(s: &Strata, i: u64) -> std::path::PathBuf {
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|f| (format!("data/{f:02}"), strata_sample::random_bytes(i * 100 + f, 4 * MIB)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let archive = s.path(&format!("big{i}.tar"));
    let layer = strata_sample::files_layer(&refs).expect("layer");
    strata_sample::write_layers_image(&archive, &format!("big:{i}"), &[layer]).expect("image");
    archive
}

/// Mounts `image` read-only on `s`, checks every file against what was
/// imported, unmounts.
fn read_whole(s: &Strata, image: &str, i: u64) {
    let mnt = s.path(&format!("mnt-{}", image.replace(':', "-")));
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let mnt_arg = mnt.to_str().expect("utf-8");
    s.ok(&["mount", image, mnt_arg, "--read-only"]);
    for f in 0..20 {
        let got = std::fs::read(mnt.join(format!("data/{f:02}"))).expect("read");
        assert!(got == strata_sample::random_bytes(i * 100 + f, 4 * MIB), "{image} data/{f:02} differs");
    }
    s.ok(&["umount", mnt_arg]);
}

fn stored(s: &Strata) -> u64 {
    s.json(&["status"])["stored_bytes"].as_u64().expect("stored bytes")
}

#[test]
fn a_capped_store_evicts_what_peers_hold_keeps_what_it_imported_and_every_image_still_reads() {
    let (a, b) = (Strata::new(), Strata::new());
    let certs = certs(&a, &["node-a", "node-b"]);
    let node_a = Node::start(&a, "node-a", &certs, &[], &[]);
    let cap = CAP.to_string();
    let capped = [
        ("STRATA_CACHE__MAX_BYTES", cap.as_str()),
        ("STRATA_CACHE__GRACE_SECS", "0"),
        ("STRATA_CACHE__INTERVAL_SECS", "0.2"),
    ];
    let node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &capped);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    for i in 1..=3 {
        a.import(&big_image(&a, i));
    }
    // B's own image: 8 MiB, imported there, pinned.
    let own: Vec<(String, Vec<u8>)> = vec![("own/file".into(), strata_sample::random_bytes(7, 8 * MIB))];
    let refs: Vec<(&str, &[u8])> = own.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let own_archive = b.path("own.tar");
    strata_sample::write_layers_image(
        &own_archive,
        "own:1",
        &[strata_sample::files_layer(&refs).expect("layer")],
    )
    .expect("image");
    b.import(&own_archive);

    for i in 1..=3 {
        read_whole(&b, &format!("big:{i}"), i);
        assert!(stored(&b) <= CAP, "over the cap after big:{i}: {}", stored(&b));
    }
    // The first two went, least recently used first; the last read stays.
    let status = b.json(&["status"]);
    let image = |name: &str| {
        status["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["names"].as_array().is_some_and(|n| n.iter().any(|n| n == name)))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .clone()
    };
    let own = image("own:1");
    assert_eq!(own["local_chunks"], own["chunks"], "the imported image is whole: {own}");
    assert_eq!(own["pinned"], true);
    assert_eq!(own["cache"], "pinned", "{own}");
    assert!(image("big:1")["local_bytes"].as_u64() < image("big:1")["bytes"].as_u64(), "big:1 evicted");
    // What the cap would do next: node-a holds big:2 whole, so it may go.
    assert_eq!(image("big:2")["cache"], "evictable", "{status}");
    assert!(node_b.metric("strata_evicted_chunks_total") > 0.0);

    // Every image still reads whole and true: what went comes again.
    for i in 1..=3 {
        read_whole(&b, &format!("big:{i}"), i);
        assert!(stored(&b) <= CAP, "over the cap re-reading big:{i}: {}", stored(&b));
    }
    let own = b.json(&["status"])["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["names"][0] == "own:1")
        .cloned()
        .expect("own:1");
    assert_eq!(own["local_chunks"], own["chunks"], "still whole after three more evictions: {own}");
    // Its file reads with no peer at all.
    drop(node_a);
    // With node-a gone nothing of the big images may go: no other copy.
    let cache_of = |name: &str| -> String {
        let status = b.json(&["status"]);
        let images = status["images"].as_array().expect("images").clone();
        let found = images.into_iter().find(|i| i["names"][0] == name).expect(name);
        found["cache"].as_str().unwrap_or_default().to_owned()
    };
    wait_for("big:2 to be the only copy", || cache_of("big:2") == "only-copy");
    assert!(b.ok(&["status"]).contains("only-copy"), "the table says so too");
    let mnt = b.path("mnt-own");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    b.ok(&["mount", "own:1", mnt.to_str().expect("utf-8"), "--read-only"]);
    assert!(std::fs::read(mnt.join("own/file")).expect("read") == strata_sample::random_bytes(7, 8 * MIB));
    b.ok(&["umount", mnt.to_str().expect("utf-8")]);
}

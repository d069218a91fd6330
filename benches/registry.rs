//! Pt 3 of the registry work: N nodes asked for one image at the same
//! moment, through their nodes (the cluster as the registry's cache) vs N
//! pulls without a cluster, in one run. Reported: the registry's blob
//! bytes served ÷ the image's blob bytes (its access log), and the time
//! until every pull ended. The registry is Debian's docker-registry on
//! loopback (TLS, htpasswd), the image three gzip layers of a generated
//! tree (`--mib` in all, half text-like, half random files) pushed with
//! skopeo; every process shares the machine's two cores.
//!
//! cargo bench --profile release --bench registry -- [--nodes 8] [--mib 96] [--out benches/results]

mod common;

use std::path::Path;
use std::time::Instant;

use common::cluster::{certs, start_node, NodeSpec};
use common::{scratch, strata};
use serde_json::json;
use strata_sample::registry::TestRegistry;

/// Pulls `reference` into every data dir at once; returns the seconds
/// until the last ended and each pull's `source`.
fn pull_all(dirs: &[std::path::PathBuf], reference: &str) -> (f64, Vec<String>) {
    let started = Instant::now();
    let sources = std::thread::scope(|scope| {
        let pulls: Vec<_> = dirs
            .iter()
            .map(|d| {
                scope.spawn(move || {
                    let out = strata(d).args(["--json", "pull", reference]).output().expect("strata pull");
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                    v["source"].as_str().unwrap_or_default().to_owned()
                })
            })
            .collect();
        pulls.into_iter().map(|p| p.join().expect("pull")).collect()
    });
    (started.elapsed().as_secs_f64(), sources)
}

fn served(registry: &TestRegistry) -> u64 {
    registry.blob_downloads().iter().map(|(_, n)| n).sum()
}

fn main() {
    let n = common::arg("--nodes", 8) as usize;
    let out_dir =
        std::env::args().skip_while(|a| a != "--out").nth(1).unwrap_or_else(|| "benches/results".into());
    let root = scratch("registry");
    let registry = TestRegistry::start();
    let archive = root.join("sample.tar");
    // Three layers of a generated tree (half text-like, half random files).
    let mib = common::arg("--mib", 96);
    let layers: Vec<Vec<u8>> = (0..3)
        .map(|seed| {
            let mut tar = Vec::new();
            strata_sample::write_mixed_tree(&mut tar, seed, (mib << 20) / 3).expect("layer");
            tar
        })
        .collect();
    strata_sample::write_image(
        strata_oci::ArchiveTarget::Tar(archive.clone()),
        strata_oci::ArchiveLayout::OciWithDockerManifest,
        strata_oci::LayerCompression::Gzip,
        &["bench/sample:1".to_owned()],
        strata_sample::sample_config(&["/bin/true"]),
        &layers,
    )
    .expect("bench image");
    registry.push(&archive, "bench/sample:1");
    let reference = format!("{}/bench/sample:1", registry.host);

    // One pull alone: the image's blob bytes (config and layers).
    let one = root.join("one");
    registry.write_settings(&one);
    pull_all(std::slice::from_ref(&one), &reference);
    let image_bytes = served(&registry);

    // Baseline: N pulls without a cluster.
    let alone: Vec<_> = (0..n).map(|i| root.join(format!("alone-{i}"))).collect();
    alone.iter().for_each(|d| registry.write_settings(d));
    let before = served(&registry);
    let (alone_secs, _) = pull_all(&alone, &reference);
    let alone_bytes = served(&registry) - before;

    // Strata: N nodes, each asked at once.
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let certs = certs(&root, &names);
    let dirs: Vec<_> = (0..n).map(|i| root.join(format!("node-{i}"))).collect();
    dirs.iter().for_each(|d| registry.write_settings(d));
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let seed = nodes.first().map(|f: &common::cluster::BenchNode| f.addr.clone());
        nodes.push(start_node(NodeSpec {
            data: dir,
            name: &names[i],
            certs: &certs,
            listen: "127.0.0.1:0".into(),
            seed: seed.as_deref(),
            netns: None,
        }));
    }
    nodes.iter().for_each(|node| node.wait_peers(n - 1));
    let before = served(&registry);
    let (cluster_secs, sources) = pull_all(&dirs, &reference);
    let cluster_bytes = served(&registry) - before;
    let from_registry = sources.iter().filter(|s| *s == "registry").count();

    let result = json!({
        "nodes": n,
        "image_blob_bytes": image_bytes,
        "alone": { "seconds": alone_secs, "registry_bytes": alone_bytes,
                   "egress_ratio": alone_bytes as f64 / image_bytes as f64 },
        "cluster": { "seconds": cluster_secs, "registry_bytes": cluster_bytes,
                     "egress_ratio": cluster_bytes as f64 / image_bytes as f64,
                     "pulled_from_registry": from_registry, "from_cluster": n - from_registry },
    });
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
    std::fs::create_dir_all(&out_dir).expect("out dir");
    std::fs::write(Path::new(&out_dir).join("registry.json"), result.to_string()).expect("results");
    drop(nodes);
}
